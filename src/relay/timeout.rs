//! The guardrail clocks inside a relay. Each runs while the relay is in one state (a
//! "spell": idle inside a transaction, or the server busy with one batch) and restarts from
//! zero when a new spell begins, so a timeout always measures one uninterrupted spell.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

pub struct StateTimer {
    limit: Duration,
    running: Option<(u64, Pin<Box<Sleep>>)>,
}

impl StateTimer {
    pub fn new(limit: Duration) -> Self {
        StateTimer {
            limit,
            running: None,
        }
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Ready once spell `spell` has lasted the whole limit. `None`: no spell now, which
    /// stops the clock; a different spell number restarts it.
    pub fn poll(&mut self, spell: Option<u64>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(spell) = spell else {
            self.running = None;
            return Poll::Pending;
        };
        if self.running.as_ref().is_none_or(|(s, _)| *s != spell) {
            self.running = Some((spell, Box::pin(tokio::time::sleep(self.limit))));
        }
        let (_, sleep) = self.running.as_mut().expect("set above");
        sleep.as_mut().poll(cx)
    }
}

/// query_timeout: when one batch keeps the server busy past the limit, `on_fire` runs once
/// for that batch (the session cancels the query through the ordinary cancel path).
pub struct QueryTimeout<'a> {
    pub timer: StateTimer,
    fired: Option<u64>,
    pub on_fire: Box<dyn FnMut() + Send + 'a>,
}

impl<'a> QueryTimeout<'a> {
    pub fn new(limit: Duration, on_fire: Box<dyn FnMut() + Send + 'a>) -> Self {
        QueryTimeout {
            timer: StateTimer::new(limit),
            fired: None,
            on_fire,
        }
    }

    /// `busy`: the number of the batch the server is working on, if any.
    pub fn poll(&mut self, busy: Option<u64>, cx: &mut Context<'_>) {
        if busy.is_some() && busy == self.fired {
            return;
        }
        if self.timer.poll(busy, cx).is_ready() {
            self.fired = busy;
            (self.on_fire)();
        }
    }
}
