//! Registries of the connections alive right now, for SHOW CLIENTS / SERVERS and the pool
//! gauges: an entry per client or server, added when it starts and removed by the guard it
//! holds, so nothing is left behind however the connection ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

use super::PoolKey;
use super::unix_micros;
use crate::stream::TlsInfo;

/// Connections alive right now, by id. Entries are added when a connection starts and
/// removed by the guard it holds, so nothing is left behind when it ends in any way.
#[derive(Debug)]
pub struct Registry<T> {
    entries: Mutex<BTreeMap<u64, Arc<T>>>,
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Registry {
            entries: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<T> Registry<T> {
    pub fn register(self: &Arc<Self>, id: u64, entry: T) -> Registration<T> {
        let entry = Arc::new(entry);
        self.lock().insert(id, entry.clone());
        Registration {
            id,
            entry,
            registry: self.clone(),
        }
    }

    /// Every entry, in id (that is, connection) order.
    pub fn list(&self) -> Vec<Arc<T>> {
        self.lock().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<T>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps an entry registered for as long as it lives.
#[derive(Debug)]
pub struct Registration<T> {
    id: u64,
    entry: Arc<T>,
    registry: Arc<Registry<T>>,
}

impl<T> std::ops::Deref for Registration<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.entry
    }
}

impl<T> Drop for Registration<T> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// What a client connection is doing, as SHOW CLIENTS names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Logged in, no query waiting.
    Idle = 0,
    /// Sent a query, has no server yet (queued, or held by PAUSE).
    Waiting = 1,
    /// Sent a query and is being given a server: counted by PAUSE as if active.
    Assigning = 2,
    /// Holds a server.
    Active = 3,
}

impl ClientState {
    fn from_u8(v: u8) -> ClientState {
        match v {
            1 => ClientState::Waiting,
            2 => ClientState::Assigning,
            3 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Waiting | ClientState::Assigning => "waiting",
            ClientState::Active => "active",
        }
    }
}

/// TLS details of one connection as the admin console shows them.
#[derive(Debug, Clone, Default)]
pub struct TlsSummary {
    pub version: String,
    pub cipher: String,
    /// The client certificate on this connection (a client's own; for a server connection,
    /// the one pgmoat presented to PostgreSQL).
    pub cert_subject: Option<String>,
    pub cert_not_after: Option<OffsetDateTime>,
}

impl TlsSummary {
    pub fn new(info: &TlsInfo, cert_der: Option<&[u8]>) -> TlsSummary {
        let cert = cert_der.and_then(|der| x509_parser::parse_x509_certificate(der).ok());
        TlsSummary {
            version: info.version.clone(),
            cipher: info.cipher.clone(),
            cert_subject: cert.as_ref().map(|(_, c)| c.subject().to_string()),
            cert_not_after: cert.map(|(_, c)| c.validity().not_after.to_datetime()),
        }
    }
}

/// One logged-in client (console clients included).
#[derive(Debug)]
pub struct ClientEntry {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    pub user: String,
    pub database: String,
    /// The user of the pool it borrows servers from (the database entry's user, if forced);
    /// a reload may change it.
    pool_user: Mutex<String>,
    pub application_name: String,
    pub connect_time: SystemTime,
    pub tls: Option<TlsSummary>,
    state: AtomicU8,
    /// Id of the server it holds, 0 for none.
    server: AtomicU64,
    /// When it last asked for a server (Unix microseconds), 0 before the first query.
    request_time: AtomicU64,
    /// Why its server is pinned to it, as the bits of `backend::PinReasons` (0 = not pinned).
    pinned: AtomicU8,
}

impl ClientEntry {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        user: String,
        database: String,
        pool_user: String,
        application_name: String,
        tls: Option<TlsSummary>,
    ) -> ClientEntry {
        ClientEntry {
            id,
            peer,
            local,
            user,
            database,
            pool_user: Mutex::new(pool_user),
            application_name,
            connect_time: SystemTime::now(),
            tls,
            state: AtomicU8::new(ClientState::Idle as u8),
            server: AtomicU64::new(0),
            request_time: AtomicU64::new(0),
            pinned: AtomicU8::new(0),
        }
    }

    pub fn pool_user(&self) -> String {
        self.pool_user
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_pool_user(&self, user: &str) {
        let mut current = self.pool_user.lock().unwrap_or_else(|e| e.into_inner());
        if *current != user {
            *current = user.to_owned();
        }
    }

    pub fn set_pinned(&self, bits: u8) {
        self.pinned.store(bits, Ordering::Relaxed);
    }

    /// The bits of `backend::PinReasons` its server is pinned for; 0 when not pinned.
    pub fn pinned(&self) -> u8 {
        self.pinned.load(Ordering::Relaxed)
    }

    /// The client sent a query and now needs a server.
    pub fn set_waiting(&self) {
        self.request_time
            .store(unix_micros(SystemTime::now()), Ordering::Relaxed);
        self.set_state(ClientState::Waiting);
    }

    pub fn set_active(&self, server_id: u64) {
        self.server.store(server_id, Ordering::Relaxed);
        self.set_state(ClientState::Active);
    }

    pub fn set_idle(&self) {
        self.server.store(0, Ordering::Relaxed);
        self.set_state(ClientState::Idle);
    }

    /// SeqCst because PAUSE reads these states right after raising its flag, and a client
    /// checks the flag right after storing its state: one of the two must see the other.
    pub fn set_state(&self, state: ClientState) {
        self.state.store(state as u8, Ordering::SeqCst);
    }

    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::SeqCst))
    }

    pub fn server_id(&self) -> Option<u64> {
        match self.server.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    pub fn request_time(&self) -> Option<SystemTime> {
        match self.request_time.load(Ordering::Relaxed) {
            0 => None,
            us => Some(UNIX_EPOCH + Duration::from_micros(us)),
        }
    }
}

/// One server connection towards PostgreSQL.
#[derive(Debug)]
pub struct ServerEntry {
    pub id: u64,
    pub pool: PoolKey,
    pub addr: SocketAddr,
    pub local: Option<SocketAddr>,
    pub connect_time: SystemTime,
    pub remote_pid: i32,
    pub tls: Option<TlsSummary>,
    /// The host (`name:port` as configured) it is on and the server's role at login.
    pub host: Option<(String, &'static str)>,
    /// RECONNECT was issued: closed instead of reused when it comes back.
    close_needed: AtomicBool,
    /// Its state as the server connection last showed it.
    shown: Mutex<ShownState>,
}

/// A server connection's state as SHOW SERVERS lists it, set at each state transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShownState {
    /// pgmoat's name of the state (`lifecycle` column).
    pub lifecycle: &'static str,
    /// PgBouncer's word for it (`state` column).
    pub pgbouncer: &'static str,
    /// The client it serves, if any.
    pub client: Option<u64>,
    /// Why it is pinned, as the bits of `backend::PinReasons` (0 = not pinned).
    pub pinned: u8,
}

impl Default for ShownState {
    fn default() -> Self {
        ShownState {
            lifecycle: "idle",
            pgbouncer: "idle",
            client: None,
            pinned: 0,
        }
    }
}

impl ServerEntry {
    pub fn new(
        id: u64,
        pool: PoolKey,
        addr: SocketAddr,
        local: Option<SocketAddr>,
        remote_pid: i32,
        tls: Option<TlsSummary>,
    ) -> ServerEntry {
        ServerEntry {
            id,
            pool,
            addr,
            local,
            connect_time: SystemTime::now(),
            remote_pid,
            tls,
            host: None,
            close_needed: AtomicBool::new(false),
            shown: Mutex::default(),
        }
    }

    /// Names the host it is on and the server's role there.
    pub fn on_host(mut self, host: String, role: &'static str) -> ServerEntry {
        self.host = Some((host, role));
        self
    }

    pub fn show(&self, state: ShownState) {
        *self.shown.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    pub fn shown(&self) -> ShownState {
        *self.shown.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn close_needed(&self) -> bool {
        self.close_needed.load(Ordering::Relaxed)
    }

    pub fn set_close_needed(&self) {
        self.close_needed.store(true, Ordering::Relaxed);
    }
}

pub type ClientRegistration = Registration<ClientEntry>;
pub type ServerRegistration = Registration<ServerEntry>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_leave_when_dropped() {
        let registry: Arc<Registry<u32>> = Arc::default();
        let a = registry.register(1, 10);
        let b = registry.register(2, 20);
        assert_eq!(*a, 10);
        assert_eq!(registry.len(), 2);
        drop(a);
        let left: Vec<u32> = registry.list().iter().map(|e| **e).collect();
        assert_eq!(left, vec![20]);
        drop(b);
        assert!(registry.is_empty());
    }

    #[test]
    fn client_states_round_trip() {
        let c = ClientEntry::new(
            7,
            "127.0.0.1:5000".parse().unwrap(),
            None,
            "alice".into(),
            "app".into(),
            "alice".into(),
            String::new(),
            None,
        );
        assert_eq!(c.state(), ClientState::Idle);
        assert!(c.request_time().is_none());
        c.set_waiting();
        assert_eq!(c.state().as_str(), "waiting");
        assert!(c.request_time().is_some());
        c.set_active(42);
        assert_eq!((c.state(), c.server_id()), (ClientState::Active, Some(42)));
        c.set_idle();
        assert_eq!((c.state(), c.server_id()), (ClientState::Idle, None));
    }
}
