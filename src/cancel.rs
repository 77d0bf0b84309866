//! Cancel keys. Each client gets its own BackendKeyData (random, or in session mode the pid of
//! the server it holds with a random secret); a CancelRequest carrying it is forwarded to the
//! server connection that client holds at that moment, over TLS when server_tls_sslmode asks
//! for it. Keys are looked up exactly, so one client cannot reach another's backend.
//!
//! A cancel must never hit the next client of a server (PgBouncer issue 717). So the lookup
//! and the start of the cancel happen under the client's slot lock, which is also what the
//! session takes to clear the slot when it hands its server back: either the cancel starts
//! first, and the server then sees it in flight and stays out of the pool (BeingCanceled)
//! until PostgreSQL has closed the cancel connection, or the slot is empty, and the cancel
//! (for a client that holds no server any more) is dropped. Cancels are bounded per client
//! and in total; the excess is dropped and counted, so a flood cannot fork a PostgreSQL
//! backend per packet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::backend::lifecycle::CancelTicket;
use crate::backend::{BackendKey, BackendTarget, CancelFlight, ConnectOptions, negotiate_tls};
use crate::generation::Generation;
use crate::stats::Metrics;

/// Cancels one client may have on their way at once; one more would only repeat the first.
pub(crate) const MAX_CANCELS_PER_CLIENT: u32 = 1;
/// Cancels on their way at once over all clients: each costs PostgreSQL a process.
pub(crate) const MAX_CANCELS_IN_FLIGHT: usize = 64;
/// How long PostgreSQL gets to close a cancel connection after the request was sent (it
/// does so right after signalling the backend).
const CANCEL_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Where a cancel for a client goes right now.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub target: Arc<BackendTarget>,
    pub server_key: BackendKey,
    /// The server connection's in-flight count, held up while the cancel is on its way.
    pub flight: Arc<CancelFlight>,
}

#[derive(Debug, Default)]
struct SlotState {
    target: Option<CancelTarget>,
    /// This client's cancels on their way.
    in_flight: u32,
    /// The client waits for a server for its query; a cancel then ends the wait instead.
    waiting: bool,
    wait_cancelled: bool,
}

/// One client's cancel target, which its session sets at every checkout and clears when it
/// hands the server back. Each client has its own lock, so a transaction takes no lock
/// another client's transaction takes; only logins, logouts and cancel requests use the
/// registry's.
#[derive(Debug, Default)]
pub struct CancelSlot {
    state: Mutex<SlotState>,
    /// Wakes a client waiting for a server when a cancel for it arrives.
    wait_cancel: tokio::sync::Notify,
}

impl CancelSlot {
    pub fn set(&self, target: Option<CancelTarget>) {
        self.lock().target = target;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The client starts waiting for a server: a cancel from now on ends the wait (its query
    /// never runs), as PostgreSQL would cancel it.
    pub(crate) fn begin_wait(&self) {
        let mut state = self.lock();
        state.waiting = true;
        state.wait_cancelled = false;
    }

    /// Resolves when a cancel arrived for the wait begun with [`begin_wait`](Self::begin_wait).
    pub(crate) async fn wait_cancelled(&self) {
        loop {
            let notified = self.wait_cancel.notified();
            if self.lock().wait_cancelled {
                return;
            }
            notified.await;
        }
    }

    /// The wait is over, with `target` the server the client got (if it got one). Returns
    /// true when a cancel came first: the client's query must not run, and the slot stays
    /// empty.
    pub(crate) fn end_wait(&self, target: Option<CancelTarget>) -> bool {
        let mut state = self.lock();
        state.waiting = false;
        let cancelled = std::mem::take(&mut state.wait_cancelled);
        if !cancelled {
            state.target = target;
        }
        cancelled
    }

    /// Starts a cancel for whatever server the client holds now: the target and the ticket
    /// that keeps that server out of the pool. `Err` says why it is dropped.
    fn start(self: &Arc<Self>) -> Result<(CancelTarget, ClientTicket), &'static str> {
        let mut state = self.lock();
        let Some(target) = state.target.clone() else {
            if state.waiting {
                state.wait_cancelled = true;
                drop(state);
                self.wait_cancel.notify_waiters();
                return Err("wait_cancelled");
            }
            return Err("no_server");
        };
        if state.in_flight >= MAX_CANCELS_PER_CLIENT {
            return Err("client_limit");
        }
        state.in_flight += 1;
        let server = target.flight.start();
        Ok((
            target,
            ClientTicket {
                slot: self.clone(),
                counted: true,
                _server: server,
            },
        ))
    }
}

/// A cancel in flight for one client: ends the client's count (at the latest) and the
/// server's when dropped.
struct ClientTicket {
    slot: Arc<CancelSlot>,
    /// Still counted against the client's limit.
    counted: bool,
    _server: CancelTicket,
}

impl ClientTicket {
    /// The request reached PostgreSQL: the client may send another (its query may already
    /// have ended and a new one begun), while the server stays held until PostgreSQL has
    /// closed the cancel connection, so a cancel never lands on the server's next client.
    fn delivered(&mut self) {
        if std::mem::take(&mut self.counted) {
            let mut state = self.slot.lock();
            state.in_flight = state.in_flight.saturating_sub(1);
        }
    }
}

impl Drop for ClientTicket {
    fn drop(&mut self) {
        self.delivered();
    }
}

pub struct CancelRegistry {
    clients: Mutex<HashMap<BackendKey, Arc<CancelSlot>>>,
    in_flight: Arc<Semaphore>,
    /// This instance's peer id (0: no peers), which every key it issues carries.
    peer_id: u16,
    /// Cancels on their way to each peer.
    peer_limits: crate::peers::PeerLimits,
}

impl Default for CancelRegistry {
    fn default() -> Self {
        CancelRegistry::with_peer_id(0)
    }
}

impl CancelRegistry {
    /// Keys for instance `peer_id` of a set of peers (0: no peers). Fixed for the process:
    /// keys already handed out must keep pointing here.
    pub fn with_peer_id(peer_id: u16) -> Self {
        CancelRegistry {
            clients: Mutex::default(),
            in_flight: Arc::new(Semaphore::new(MAX_CANCELS_IN_FLIGHT)),
            peer_id,
            peer_limits: Default::default(),
        }
    }

    pub fn peer_id(&self) -> u16 {
        self.peer_id
    }

    /// A fresh, unused key for a new client, and the slot its session keeps its target in.
    pub fn register(&self) -> (BackendKey, Arc<CancelSlot>) {
        self.register_inner(None)
    }

    /// A key whose pid is `pid` (the real pid of the server a session-mode client holds),
    /// with a fresh random secret.
    pub fn register_with_pid(&self, pid: i32) -> (BackendKey, Arc<CancelSlot>) {
        self.register_inner(Some(pid))
    }

    fn register_inner(&self, pid: Option<i32>) -> (BackendKey, Arc<CancelSlot>) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // With peers the key must name this instance, so a session-mode client's key
            // is pgmoat's own too, not its server's pid.
            let key = match (self.peer_id, pid) {
                (0, Some(pid)) => BackendKey {
                    pid,
                    secret: rand::random(),
                },
                (0, None) => BackendKey {
                    pid: rand::random::<i32>() & i32::MAX,
                    secret: rand::random(),
                },
                (peer_id, _) => crate::peers::new_key(peer_id),
            };
            if key.pid != 0 && !clients.contains_key(&key) {
                let slot = Arc::new(CancelSlot::default());
                clients.insert(key, slot.clone());
                return (key, slot);
            }
        }
    }

    pub fn unregister(&self, key: BackendKey) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }

    fn slot(&self, key: BackendKey) -> Option<Arc<CancelSlot>> {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
    }

    #[cfg(test)]
    fn lookup(&self, key: BackendKey) -> Option<CancelTarget> {
        self.slot(key)?.lock().target.clone()
    }
}

/// Sends PostgreSQL's CancelRequest for `target` on a new connection, with the same TLS
/// rules as any other server connection, and waits (briefly) until PostgreSQL closes it:
/// by then it has signalled the backend.
pub async fn send_cancel(
    target: &CancelTarget,
    generation: &Generation,
    delivered: impl FnOnce(),
) -> Result<(), crate::backend::BackendError> {
    let addr = target.target.addr_string();
    let io_err = |source| crate::backend::BackendError::Connect {
        addr: addr.clone(),
        source,
    };
    let config = &generation.config;
    let tcp = tokio::time::timeout(
        config.server_connect_timeout.duration(),
        tokio::net::TcpStream::connect((target.target.host.as_str(), target.target.port)),
    )
    .await
    .map_err(|_| crate::backend::BackendError::Timeout {
        addr: addr.clone(),
        secs: config.server_connect_timeout.0,
    })?
    .map_err(io_err)?;
    let server_tls = generation.tls.server_for_entry(&target.target.entry);
    let options = ConnectOptions {
        sslmode: server_tls.sslmode,
        channel_binding: config.server_channel_binding,
        tls: server_tls.connector.as_ref(),
        tls_epoch: generation.tls_epoch,
        timeout: config.server_connect_timeout.duration(),
        id: 0,
    };
    let mut stream = tokio::time::timeout(
        config.server_connect_timeout.duration(),
        negotiate_tls(tcp, (&target.target.host, target.target.port), &options),
    )
    .await
    .map_err(|_| crate::backend::BackendError::Timeout {
        addr: addr.clone(),
        secs: config.server_connect_timeout.0,
    })??;
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(
        target.server_key.pid,
        target.server_key.secret,
        &mut buf,
    );
    // From the first byte written until PostgreSQL closes the connection, the cancel may
    // land at any moment: however this ends (an error, the close wait or
    // cancel_wait_timeout running out and dropping this future), unless confirmed the
    // server connection is in doubt and is closed rather than reused.
    let unconfirmed = target.flight.writing();
    stream.write_all(&buf).await.map_err(io_err)?;
    stream.flush().await.map_err(io_err)?;
    delivered();
    // PostgreSQL answers nothing: it signals the backend and closes. EOF (or an error) is
    // the sign the signal went out; give up waiting after a while.
    let mut sink = [0u8; 64];
    let closed = tokio::time::timeout(CANCEL_CLOSE_WAIT, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    if closed.is_ok() {
        unconfirmed.confirm();
    } else {
        tracing::warn!(server = %addr, "PostgreSQL did not close the cancel connection in time; the server connection will be closed rather than reused");
    }
    Ok(())
}

/// A client's CancelRequest: forwarded to the server it holds right now; for a client waiting
/// for a server, its wait ends and its query never runs; otherwise dropped (and counted).
pub async fn forward_cancel(
    registry: &CancelRegistry,
    metrics: &Metrics,
    generation: &Generation,
    key: BackendKey,
) {
    let mut key = key;
    if registry.peer_id != 0 {
        let owner = crate::peers::owner(key);
        if owner.peer_id != 0 && owner.peer_id != registry.peer_id {
            crate::peers::forward(key, owner, generation, &registry.peer_limits, metrics).await;
            return;
        }
        // Forwarded here by a peer: looked up as it was issued.
        key = crate::peers::as_issued(key);
    }
    let Some(slot) = registry.slot(key) else {
        tracing::debug!("cancel request for an unknown key; ignored");
        metrics.cancel_request("unknown_key");
        return;
    };
    let Ok(_permit) = registry.in_flight.clone().try_acquire_owned() else {
        tracing::warn!(
            limit = MAX_CANCELS_IN_FLIGHT,
            "too many cancel requests in flight; this one is dropped"
        );
        metrics.cancel_request("total_limit");
        return;
    };
    let (target, mut ticket) = match slot.start() {
        Ok(started) => started,
        Err("wait_cancelled") => {
            tracing::info!(
                "cancel request for a client waiting for a server: its query will not run"
            );
            metrics.cancel_request("wait_cancelled");
            return;
        }
        Err(why) => {
            tracing::debug!(
                reason = why,
                "cancel request dropped (the client holds no server, or already has a cancel on its way)"
            );
            metrics.cancel_request(why);
            return;
        }
    };
    let limit = generation.config.cancel_wait_timeout.non_zero();
    let sent = match limit {
        Some(limit) => match tokio::time::timeout(
            limit,
            send_cancel(&target, generation, || ticket.delivered()),
        )
        .await
        {
            Ok(sent) => sent,
            Err(_) => {
                metrics.cancel_request("failed");
                tracing::warn!(
                    seconds = limit.as_secs_f64(),
                    server = %target.target.addr_string(),
                    "cancel_wait_timeout: the cancel request did not reach PostgreSQL in time; dropped"
                );
                return;
            }
        },
        None => send_cancel(&target, generation, || ticket.delivered()).await,
    };
    match sent {
        Ok(()) => {
            metrics.cancel_request("forwarded");
            tracing::info!(
                server_pid = target.server_key.pid,
                "cancel request forwarded"
            );
        }
        Err(e) => {
            metrics.cancel_request("failed");
            tracing::warn!(error = %e, "forwarding a cancel request failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(flight: &Arc<CancelFlight>) -> CancelTarget {
        CancelTarget {
            target: Arc::new(BackendTarget {
                entry: "app".into(),
                host: "localhost".into(),
                port: 5432,
                dbname: "app".into(),
                user: "app".into(),
                password: None,
                scram_keys: None,
            }),
            server_key: BackendKey { pid: 7, secret: 8 },
            flight: flight.clone(),
        }
    }

    #[test]
    fn keys_are_unique_and_unknown_keys_find_nothing() {
        let reg = CancelRegistry::default();
        let (a, slot) = reg.register();
        let (b, _) = reg.register();
        assert_ne!(a, b);
        assert!(reg.lookup(a).is_none());
        let flight = Arc::new(CancelFlight::default());
        slot.set(Some(target(&flight)));
        assert_eq!(
            reg.lookup(a).map(|t| t.server_key),
            Some(BackendKey { pid: 7, secret: 8 })
        );
        assert!(reg.lookup(b).is_none());
        assert!(
            reg.lookup(BackendKey {
                pid: a.pid,
                secret: a.secret.wrapping_add(1)
            })
            .is_none()
        );
        reg.unregister(a);
        assert!(reg.lookup(a).is_none());
        let (c, _) = reg.register_with_pid(4242);
        assert_eq!(c.pid, 4242);
    }

    #[test]
    fn a_cancel_holds_its_server_and_is_bounded_per_client() {
        let slot = Arc::new(CancelSlot::default());
        assert_eq!(slot.start().err(), Some("no_server"));
        let flight = Arc::new(CancelFlight::default());
        slot.set(Some(target(&flight)));
        let (_, ticket) = slot.start().unwrap();
        assert_eq!(flight.in_flight(), 1);
        assert_eq!(slot.start().err(), Some("client_limit"));
        // The session hands the server back: the cancel already started still holds it.
        slot.set(None);
        assert_eq!(flight.in_flight(), 1);
        drop(ticket);
        assert_eq!(flight.in_flight(), 0);
        assert_eq!(slot.start().err(), Some("no_server"));
    }

    #[tokio::test]
    async fn a_cancel_ends_a_wait_for_a_server() {
        let slot = Arc::new(CancelSlot::default());
        slot.begin_wait();
        let waiter = {
            let slot = slot.clone();
            tokio::spawn(async move { slot.wait_cancelled().await })
        };
        assert_eq!(slot.start().err(), Some("wait_cancelled"));
        waiter.await.unwrap();
        let flight = Arc::new(CancelFlight::default());
        assert!(
            slot.end_wait(Some(target(&flight))),
            "the wait was cancelled"
        );
        assert!(slot.start().is_err(), "and no server was set");
        // A wait that ends with a server first: later cancels reach that server.
        slot.begin_wait();
        assert!(!slot.end_wait(Some(target(&flight))));
        assert!(slot.start().is_ok());
    }
}
