//! The guard that lends a server connection to one client. deadpool's `Object` goes back to
//! the pool when dropped, and deadpool checks it only at the next checkout; so the guard
//! detaches the connection (`Object::take`) and closes it on every way out except one:
//! [`Lent::hand_back`], which runs the server's state machine ([`next_step`]) and returns
//! the connection to the pool only with the proof that gives.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool::managed::Object;
use tokio::sync::OwnedSemaphorePermit;

use super::{ServerManager, ServerPool, retire_reason};
use crate::backend::lifecycle::{Facts, ResetNeed, Step, next_step};
use crate::backend::{CloseReason, ServerConn, ServerState};
use crate::generation::Generation;

/// Waits for the cancels in flight for a server, up to cancel_wait_timeout (0: as long as
/// they take; each is bounded by its own connect and close anyway). False when they did not
/// finish in time, or one may have reached PostgreSQL unconfirmed: the server is then
/// closed, not reused.
pub(crate) async fn cancels_settled(
    cancels: std::sync::Arc<crate::backend::CancelFlight>,
    generation: &Generation,
) -> bool {
    let settled = match generation.config.cancel_wait_timeout.non_zero() {
        Some(limit) => tokio::time::timeout(limit, cancels.clone().settled_owned())
            .await
            .is_ok(),
        None => {
            cancels.clone().settled_owned().await;
            true
        }
    };
    // Settled, but one may have reached PostgreSQL unconfirmed: not a clean end either.
    settled && !cancels.in_doubt()
}

pub struct Lent {
    /// `Some` until the connection goes back to the pool or is closed.
    obj: Option<Object<ServerManager>>,
    /// Its share's gate permit: `Some` until the connection is handed back idle.
    permit: Option<OwnedSemaphorePermit>,
    /// The pool (share) it came from: whether it was retired decides whether it may go back.
    share: Arc<ServerPool>,
    /// How long the client waited for it.
    pub waited: Duration,
    /// Taken from the reserve pool.
    pub reserve: bool,
}

impl Lent {
    pub(super) fn new(
        mut obj: Object<ServerManager>,
        permit: OwnedSemaphorePermit,
        share: Arc<ServerPool>,
        client: u64,
        (waited, reserve): (Duration, bool),
    ) -> Self {
        obj.transition(ServerState::Lent { client });
        Lent {
            obj: Some(obj),
            permit: Some(permit),
            share,
            waited,
            reserve,
        }
    }

    pub(crate) fn share(&self) -> &Arc<ServerPool> {
        &self.share
    }

    /// Closes the connection instead of returning it: its pool slot is freed at once.
    pub(crate) fn close(mut self, reason: CloseReason) {
        self.close_now(reason);
    }

    fn close_now(&mut self, reason: CloseReason) {
        if let Some(obj) = self.obj.take() {
            let mut conn = Object::take(obj);
            conn.transition(ServerState::Closing(reason));
            tracing::debug!(
                server_id = conn.id,
                reason = reason.as_str(),
                "closing server connection"
            );
        }
    }

    /// The client is done with the server. `protocol_idle` is the relay's word that it
    /// stopped at ReadyForQuery 'I' with nothing pending; `reset` is what must run before
    /// anyone else may have it. Returns it to the pool only through [`next_step`]'s proof;
    /// with a cancel still in flight it waits (in a task of its own, so the client goes on
    /// meanwhile) until PostgreSQL has closed the cancel connection.
    pub(crate) async fn hand_back(
        mut self,
        protocol_idle: bool,
        reset: ResetNeed,
        generation: &Generation,
    ) {
        let retire = self.retire_reason(generation);
        let Some(obj) = self.obj.as_mut() else { return };
        if let ServerState::Pinned { client, .. } = obj.state() {
            obj.transition(ServerState::Lent { client });
        }
        let facts = Facts {
            protocol_idle: protocol_idle && obj.read_buf.is_empty(),
            cancels_in_flight: obj.cancels.in_flight(),
            cancel_in_doubt: obj.cancels.in_doubt(),
            reset,
            retire,
        };
        match next_step(&facts) {
            Step::AwaitCancels => {
                let client = obj.state().client().unwrap_or(0);
                obj.transition(ServerState::BeingCanceled { client });
                let cancels = obj.cancels.clone();
                let current = self.share.current_generation();
                // The client goes on meanwhile (with another server); this one waits out
                // its cancel in a task of its own.
                tokio::spawn(async move {
                    let generation = current.load_full();
                    if !cancels_settled(cancels, &generation).await {
                        self.close_now(CloseReason::CancelStuck);
                        return;
                    }
                    self.finish(reset, &generation).await;
                });
            }
            Step::Close(reason) => self.close_now(reason),
            Step::ReturnToPool(_) | Step::Reset(_) => {
                self.finish(reset, generation).await;
            }
        }
    }

    /// After any cancel settled: reset if needed, then back to the pool with the proof, or
    /// closed.
    async fn finish(&mut self, mut reset: ResetNeed, generation: &Generation) {
        loop {
            let retire = self.retire_reason(generation);
            let Some(obj) = self.obj.as_mut() else { return };
            let facts = Facts {
                protocol_idle: obj.read_buf.is_empty(),
                cancels_in_flight: obj.cancels.in_flight(),
                cancel_in_doubt: obj.cancels.in_doubt(),
                reset,
                retire,
            };
            match next_step(&facts) {
                Step::ReturnToPool(_) if obj.recheck_role => {
                    // Answered before it goes back; a server that changed role is closed.
                    match Box::pin(obj.role_changed_since_login()).await {
                        Ok(false) => continue,
                        Ok(true) => self.close_now(CloseReason::RoleChanged),
                        Err(e) => {
                            tracing::warn!(server_id = obj.id, error = %e, "asking a server whether it is still a primary failed; closing it");
                            self.close_now(CloseReason::CheckFailed);
                        }
                    }
                    return;
                }
                Step::ReturnToPool(proof) => {
                    obj.return_to_idle(proof);
                    // deadpool's own `last_used` counts from the checkout, which would make a
                    // long transaction look like idle time.
                    obj.idle_since = Instant::now();
                    // Dropping the object returns it to deadpool's idle set; with the
                    // permit released too, another share's waiting client may borrow it.
                    self.obj = None;
                    self.permit = None;
                    self.share.offer_spare();
                    return;
                }
                Step::Reset(need) => {
                    obj.transition(ServerState::Resetting);
                    let (sql, drops_statements) =
                        reset_sql(need, &generation.config.server_reset_query);
                    match Box::pin(obj.reset_session(&sql, drops_statements)).await {
                        Ok(()) => reset = ResetNeed::Nothing,
                        Err(e) => {
                            tracing::warn!(server_id = obj.id, error = %e, "resetting a server connection failed; closing it");
                            self.close_now(CloseReason::ResetFailed);
                            return;
                        }
                    }
                }
                Step::AwaitCancels => {
                    // A cancel cannot start for a server no client holds; should one be in
                    // flight anyway, the server is not proven clean.
                    self.close_now(CloseReason::CancelStuck);
                    return;
                }
                Step::Close(reason) => {
                    self.close_now(reason);
                    return;
                }
            }
        }
    }

    fn retire_reason(&self, generation: &Generation) -> Option<CloseReason> {
        if self.share.is_retired() {
            return Some(CloseReason::PoolRetired);
        }
        let obj = self.obj.as_ref()?;
        retire_reason(obj, Object::metrics(obj), generation)
    }
}

/// The SQL of a reset, and whether it may drop prepared statements. server_reset_query is
/// the operator's; whatever it is, role and session authorization are reset too, which
/// RESET ALL alone does not do.
fn reset_sql(need: ResetNeed, reset_query: &str) -> (String, bool) {
    const IDENTITY: &str = "SET SESSION AUTHORIZATION DEFAULT; RESET ALL";
    let custom = reset_query.trim().trim_end_matches(';').trim();
    match need {
        ResetNeed::DiscardAll => ("DISCARD ALL".into(), true),
        ResetNeed::ResetQuery if custom.eq_ignore_ascii_case("discard all") => {
            ("DISCARD ALL".into(), true)
        }
        ResetNeed::ResetQuery if !custom.is_empty() => (format!("{custom}; {IDENTITY}"), true),
        _ => (IDENTITY.into(), false),
    }
}

impl Drop for Lent {
    /// Every way out that is not `hand_back` closes the connection: nothing is returned to
    /// the pool without proof.
    fn drop(&mut self) {
        self.close_now(CloseReason::Unproven);
    }
}

impl Deref for Lent {
    type Target = ServerConn;

    fn deref(&self) -> &ServerConn {
        self.obj
            .as_ref()
            .expect("a lent connection is present until handed back or closed")
    }
}

impl DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.obj
            .as_mut()
            .expect("a lent connection is present until handed back or closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reset_resets_identity() {
        let sql = |need, query| reset_sql(need, query).0;
        assert_eq!(sql(ResetNeed::DiscardAll, ""), "DISCARD ALL");
        assert_eq!(sql(ResetNeed::ResetQuery, "discard all;"), "DISCARD ALL");
        assert_eq!(
            sql(ResetNeed::ResetQuery, "RESET ALL;"),
            "RESET ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL"
        );
        assert_eq!(
            reset_sql(ResetNeed::ResetQuery, " "),
            ("SET SESSION AUTHORIZATION DEFAULT; RESET ALL".into(), false)
        );
    }
}
