//! idle_transaction_timeout inside a relay: a clock that runs only while the client holds a
//! server inside a transaction and has nothing in flight (PgBouncer's "idle in transaction"),
//! and restarts from zero each time that state begins again.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

pub struct IdleTxTimer {
    limit: Duration,
    running: Option<Pin<Box<Sleep>>>,
}

impl IdleTxTimer {
    pub fn new(limit: Duration) -> Self {
        IdleTxTimer {
            limit,
            running: None,
        }
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Ready once the client has been idle in a transaction for the whole limit. `idle` is
    /// the state now; a state that ends stops the clock, so the next idle spell starts anew.
    pub fn poll(&mut self, idle: bool, cx: &mut Context<'_>) -> Poll<()> {
        if !idle {
            self.running = None;
            return Poll::Pending;
        }
        let limit = self.limit;
        let sleep = self
            .running
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        sleep.as_mut().poll(cx)
    }
}
