//! One server connection towards PostgreSQL: TCP, SSLRequest and TLS by server_tls_sslmode
//! (never a silent fall-back to plaintext), login with SCRAM, md5 or the client certificate,
//! and the parameters the server reported.

mod connect;
mod error;
pub mod hosts;
pub mod lifecycle;
mod probe;
mod query;
pub mod scram_keys;
mod statements;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use crate::stream::{Stream, TlsInfo};

pub use connect::{BackendTarget, ConnectOptions, connect, negotiate_tls};
pub use error::BackendError;
pub use hosts::{Change as HostChange, HostHealth, HostStatus, ServerRole};
pub use lifecycle::{CancelFlight, CleanProof, CloseReason, PinReasons, ResetNeed, ServerState};
pub use probe::SessionSnapshot;
pub use statements::{ConnectionPermits, ServerStatements, SpareBuffers};

/// PostgreSQL's cancel key for one backend process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub pid: i32,
    pub secret: i32,
}

/// A logged-in connection to PostgreSQL.
pub struct ServerConn {
    pub id: u64,
    pub stream: Stream,
    /// Bytes read from the server but not yet forwarded (normally empty between uses); the
    /// server direction's relay buffer while a client holds this connection.
    pub read_buf: BytesMut,
    /// The client direction's relay buffers, lent to the client holding this connection.
    pub spare_buffers: SpareBuffers,
    /// Parameters as the server last reported them (ParameterStatus), in arrival order.
    pub params: Vec<(String, String)>,
    /// The reported parameters right after login, before any client changed anything.
    pub initial_params: Vec<(String, String)>,
    /// Session-level settings on top of the login defaults, as pgmoat set them or read them
    /// back from PostgreSQL (`source = 'session'`, `role`, `session_authorization`): what
    /// the next client's settings are compared with.
    pub session_settings: Vec<(String, String)>,
    /// Where it is in its life; changed only by [`ServerConn::transition`].
    state: ServerState,
    /// Cancel requests for it on their way to PostgreSQL.
    pub cancels: Arc<CancelFlight>,
    pub key: BackendKey,
    pub addr: SocketAddr,
    pub created: Instant,
    /// When it last went back to the pool (or was made): what server_idle_timeout and
    /// server_check_delay measure from.
    pub idle_since: Instant,
    pub tls: Option<TlsInfo>,
    /// Identity of the TLS configuration this connection was made with; a reload that
    /// changes it retires the connection when it comes back to the pool.
    pub tls_epoch: u64,
    /// Between messages, so a Terminate on close cannot land inside an unfinished message.
    /// Cleared when a connection is discarded in the middle of something.
    pub polite_close: bool,
    /// Prepared statements this server holds for pooled clients.
    pub statements: ServerStatements,
    /// max_db_connections / max_user_connections permits, held until the connection closes.
    pub permits: ConnectionPermits,
    /// Its entry in SHOW SERVERS, removed when the connection is dropped.
    pub registration: Option<crate::stats::ServerRegistration>,
    /// Where it logged in (one host of the entry's list), for cancels and health.
    pub endpoint: Option<Arc<BackendTarget>>,
    /// The health record of that host, and its failure count when this connection was made:
    /// a later failure there retires this connection.
    pub host: Option<(Arc<HostHealth>, u64)>,
    /// What the server was at login (`None` when it was not asked: a pre-14 server under
    /// target_session_attrs = any).
    pub role: Option<ServerRole>,
    /// A read-only error (25006) came from this server, which logged in as a writable
    /// primary: before it is reused, its role is asked again (a client's own READ ONLY
    /// transaction raises 25006 too, so the error alone proves nothing).
    pub recheck_role: bool,
}

impl Drop for ServerConn {
    /// Says goodbye properly (Terminate, then TLS close_notify) when that can be done without
    /// waiting, so PostgreSQL logs a clean disconnection instead of a reset connection. One
    /// poll with a no-op waker: a full socket just means the goodbye is skipped.
    fn drop(&mut self) {
        if !self.polite_close {
            return;
        }
        use std::pin::Pin;
        use tokio::io::AsyncWrite;
        const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut stream = Pin::new(&mut self.stream);
        if let std::task::Poll::Ready(Ok(5)) = stream.as_mut().poll_write(&mut cx, &TERMINATE) {
            let _ = stream.as_mut().poll_flush(&mut cx);
            let _ = stream.as_mut().poll_shutdown(&mut cx);
        }
    }
}

impl ServerConn {
    /// Why this connection's host no longer vouches for it: a failure seen there since it
    /// was made, or the server no longer being the standby or primary it was at login.
    pub fn host_retired(&self) -> Option<CloseReason> {
        if let Some((host, failures)) = &self.host
            && host.failures() != *failures
        {
            return Some(CloseReason::HostFailed);
        }
        match (self.role, self.reported_standby()) {
            (Some(role), Some(standby)) if role.standby != standby => {
                Some(CloseReason::RoleChanged)
            }
            _ => None,
        }
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    /// The one place a server connection's state changes: checks the move against the table
    /// in [`lifecycle`], logs it and shows it in SHOW SERVERS. An illegal move is a bug; it
    /// is logged and the connection is closed instead, so nothing unproven is reused.
    pub fn transition(&mut self, to: ServerState) {
        debug_assert!(to != ServerState::Idle, "use return_to_idle");
        let to = if to == ServerState::Idle || !self.state.may_become(to) {
            if matches!(self.state, ServerState::Closing(_)) {
                return;
            }
            tracing::error!(server_id = self.id, from = %self.state, to = %to, "illegal server state transition; closing the connection");
            ServerState::Closing(CloseReason::Bug)
        } else {
            to
        };
        self.set_state(to);
    }

    /// Back to the idle set: only with the proof [`lifecycle::next_step`] gives.
    pub fn return_to_idle(&mut self, _proof: CleanProof) {
        if self.state.may_become(ServerState::Idle) {
            self.set_state(ServerState::Idle);
        } else {
            self.transition(ServerState::Closing(CloseReason::Bug));
        }
    }

    fn set_state(&mut self, to: ServerState) {
        let from = std::mem::replace(&mut self.state, to);
        match to {
            // The common path of every transaction: trace, not debug.
            ServerState::Idle | ServerState::Lent { .. } => {
                tracing::trace!(server_id = self.id, %from, %to, "server state")
            }
            _ => tracing::debug!(server_id = self.id, %from, %to, "server state"),
        }
        if let ServerState::Closing(reason) = to
            && !reason.at_message_boundary()
        {
            // Its state is unknown: no goodbye message that could land mid-message.
            self.polite_close = false;
        }
        if let Some(registration) = &self.registration {
            registration.show(crate::stats::ShownState {
                lifecycle: to.name(),
                pgbouncer: to.pgbouncer_name(),
                client: to.client(),
                pinned: to.pinned().bits(),
            });
        }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn set_param(&mut self, name: &str, value: &str) {
        match self
            .params
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some((_, v)) => *v = value.to_owned(),
            None => self.params.push((name.to_owned(), value.to_owned())),
        }
    }
}
