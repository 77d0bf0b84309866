//! What SHOW STATS / POOLS / CLIENTS / SERVERS and /metrics report: per-pool counters that the
//! hot path bumps with relaxed atomic adds (no locks), and registries of the clients and
//! servers alive right now, which change once per connection and are read when someone asks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use time::OffsetDateTime;

use crate::pool::PoolKey;
use crate::stream::TlsInfo;

/// PgBouncer's default stats_period: averages cover roughly this much recent time.
const STATS_PERIOD: Duration = Duration::from_secs(60);

/// Upper bounds (seconds) of the wait-time histogram: from "a server was idle" to
/// "query_wait_timeout is near".
const WAIT_BUCKETS: [f64; 12] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0,
];

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Microseconds since the Unix epoch, 0 if the clock is before it.
pub fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(micros).unwrap_or(0)
}

/// Counters of one pool since the process started. Relaxed ordering is enough: each counter
/// is independent and only ever read as a snapshot.
#[derive(Debug)]
pub struct PoolStats {
    server_assignment_count: AtomicU64,
    xact_count: AtomicU64,
    query_count: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    xact_time_us: AtomicU64,
    query_time_us: AtomicU64,
    wait_time_us: AtomicU64,
    wait_histogram: Histogram,
}

impl PoolStats {
    fn new(wait_histogram: Histogram) -> Self {
        PoolStats {
            server_assignment_count: AtomicU64::new(0),
            xact_count: AtomicU64::new(0),
            query_count: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            xact_time_us: AtomicU64::new(0),
            query_time_us: AtomicU64::new(0),
            wait_time_us: AtomicU64::new(0),
            wait_histogram,
        }
    }

    /// A client got a server after waiting `waited`.
    pub fn record_wait(&self, waited: Duration) {
        self.server_assignment_count.fetch_add(1, Ordering::Relaxed);
        self.wait_time_us
            .fetch_add(micros(waited), Ordering::Relaxed);
        self.wait_histogram.observe(waited.as_secs_f64());
    }

    /// A ReadyForQuery came back: one query (or one extended-protocol batch) is done.
    #[inline]
    pub fn record_query(&self) {
        self.query_count.fetch_add(1, Ordering::Relaxed);
    }

    /// The server was busy with the client's queries for `busy`.
    #[inline]
    pub fn record_query_time(&self, busy: Duration) {
        self.query_time_us
            .fetch_add(micros(busy), Ordering::Relaxed);
    }

    /// A transaction ended (ReadyForQuery 'I') after `lasted`.
    #[inline]
    pub fn record_xact(&self, lasted: Duration) {
        self.xact_count.fetch_add(1, Ordering::Relaxed);
        self.xact_time_us
            .fetch_add(micros(lasted), Ordering::Relaxed);
    }

    /// Counter for bytes pgmoat received from clients (and forwarded to servers).
    #[inline]
    pub fn bytes_received(&self) -> &AtomicU64 {
        &self.bytes_received
    }

    /// Counter for bytes pgmoat sent to clients.
    #[inline]
    pub fn bytes_sent(&self) -> &AtomicU64 {
        &self.bytes_sent
    }

    pub fn totals(&self) -> Totals {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            server_assignment_count: get(&self.server_assignment_count),
            xact_count: get(&self.xact_count),
            query_count: get(&self.query_count),
            bytes_received: get(&self.bytes_received),
            bytes_sent: get(&self.bytes_sent),
            xact_time: get(&self.xact_time_us),
            query_time: get(&self.query_time_us),
            wait_time: get(&self.wait_time_us),
        }
    }
}

/// A snapshot of a pool's counters (times in microseconds), or the averages derived from two.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub server_assignment_count: u64,
    pub xact_count: u64,
    pub query_count: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub xact_time: u64,
    pub query_time: u64,
    pub wait_time: u64,
}

impl Totals {
    pub fn add(&mut self, other: &Totals) {
        self.server_assignment_count += other.server_assignment_count;
        self.xact_count += other.xact_count;
        self.query_count += other.query_count;
        self.bytes_received += other.bytes_received;
        self.bytes_sent += other.bytes_sent;
        self.xact_time += other.xact_time;
        self.query_time += other.query_time;
        self.wait_time += other.wait_time;
    }

    /// PgBouncer's averages between `old` and `self`, `elapsed` apart: counts and bytes per
    /// second, times per transaction / query / assignment.
    pub fn averages(&self, old: &Totals, elapsed: Duration) -> Totals {
        let us = micros(elapsed);
        if us == 0 {
            return Totals::default();
        }
        let d = |new: u64, old: u64| new.saturating_sub(old);
        let per_second = |new: u64, old: u64| {
            u64::try_from(u128::from(d(new, old)) * 1_000_000 / u128::from(us)).unwrap_or(u64::MAX)
        };
        let per = |time_new: u64, time_old: u64, n: u64| {
            d(time_new, time_old).checked_div(n).unwrap_or(0)
        };
        let xacts = d(self.xact_count, old.xact_count);
        let queries = d(self.query_count, old.query_count);
        let assignments = d(self.server_assignment_count, old.server_assignment_count);
        Totals {
            server_assignment_count: per_second(
                self.server_assignment_count,
                old.server_assignment_count,
            ),
            xact_count: per_second(self.xact_count, old.xact_count),
            query_count: per_second(self.query_count, old.query_count),
            bytes_received: per_second(self.bytes_received, old.bytes_received),
            bytes_sent: per_second(self.bytes_sent, old.bytes_sent),
            xact_time: per(self.xact_time, old.xact_time, xacts),
            query_time: per(self.query_time, old.query_time, queries),
            wait_time: per(self.wait_time, old.wait_time, assignments),
        }
    }
}

/// Label set of per-pool metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct PoolLabels {
    pub database: String,
    pub user: String,
}

fn wait_histogram() -> Histogram {
    Histogram::new(WAIT_BUCKETS)
}

type Snapshot = (Instant, BTreeMap<PoolKey, Totals>);

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
    /// The user of the pool it borrows servers from (the database entry's user, if forced).
    pub pool_user: String,
    pub application_name: String,
    pub connect_time: SystemTime,
    pub tls: Option<TlsSummary>,
    state: AtomicU8,
    /// Id of the server it holds, 0 for none.
    server: AtomicU64,
    /// When it last asked for a server (Unix microseconds), 0 before the first query.
    request_time: AtomicU64,
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
            pool_user,
            application_name,
            connect_time: SystemTime::now(),
            tls,
            state: AtomicU8::new(ClientState::Idle as u8),
            server: AtomicU64::new(0),
            request_time: AtomicU64::new(0),
        }
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
    /// RECONNECT was issued: closed instead of reused when it comes back.
    close_needed: AtomicBool,
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
            close_needed: AtomicBool::new(false),
        }
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

/// All statistics of the process.
#[derive(Debug)]
pub struct Stats {
    pools: Mutex<BTreeMap<PoolKey, Arc<PoolStats>>>,
    pub clients: Arc<Registry<ClientEntry>>,
    pub servers: Arc<Registry<ServerEntry>>,
    /// Wait-time histograms by pool, registered as they are with /metrics.
    pub wait_histograms: Family<PoolLabels, Histogram>,
    /// Two snapshots a stats period apart, for SHOW STATS averages.
    period: Mutex<(Snapshot, Snapshot)>,
}

impl Default for Stats {
    fn default() -> Self {
        let now = Instant::now();
        Stats {
            pools: Mutex::new(BTreeMap::new()),
            clients: Arc::default(),
            servers: Arc::default(),
            wait_histograms: Family::new_with_constructor(wait_histogram),
            period: Mutex::new(((now, BTreeMap::new()), (now, BTreeMap::new()))),
        }
    }
}

impl Stats {
    /// The counters of a pool; the same ones for as long as the process lives, so a pool
    /// rebuilt by a reload keeps counting where it was.
    pub fn pool(&self, key: &PoolKey) -> Arc<PoolStats> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stats) = pools.get(key) {
            return stats.clone();
        }
        let labels = PoolLabels {
            database: key.database.clone(),
            user: key.user.clone(),
        };
        let stats = Arc::new(PoolStats::new(
            self.wait_histograms.get_or_create_owned(&labels),
        ));
        pools.insert(key.clone(), stats.clone());
        stats
    }

    /// Every pool's totals, by pool.
    pub fn totals(&self) -> BTreeMap<PoolKey, Totals> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.iter().map(|(k, s)| (k.clone(), s.totals())).collect()
    }

    /// Totals now and averages over the recent past (one to two stats periods), per pool.
    pub fn totals_and_averages(&self) -> BTreeMap<PoolKey, (Totals, Totals)> {
        let now = Instant::now();
        let current = self.totals();
        let mut period = self.period.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(period.1.0) >= STATS_PERIOD {
            period.0 = std::mem::replace(&mut period.1, (now, current.clone()));
        }
        let (old_time, old) = &period.0;
        let elapsed = now.duration_since(*old_time);
        current
            .into_iter()
            .map(|(key, totals)| {
                let before = old.get(&key).copied().unwrap_or_default();
                let avg = totals.averages(&before, elapsed);
                (key, (totals, avg))
            })
            .collect()
    }

    /// Clients and servers of each pool by state, right now.
    pub fn occupancy(&self) -> BTreeMap<PoolKey, Occupancy> {
        let now = SystemTime::now();
        let mut out: BTreeMap<PoolKey, Occupancy> = BTreeMap::new();
        let mut linked = std::collections::HashSet::new();
        for client in self.clients.list() {
            let key = PoolKey {
                database: client.database.clone(),
                user: client.pool_user.clone(),
            };
            let o = out.entry(key).or_default();
            match client.state() {
                ClientState::Idle => o.cl_idle += 1,
                ClientState::Active => o.cl_active += 1,
                ClientState::Waiting | ClientState::Assigning => {
                    o.cl_waiting += 1;
                    let waited = client
                        .request_time()
                        .and_then(|t| now.duration_since(t).ok())
                        .unwrap_or_default();
                    o.maxwait = o.maxwait.max(waited);
                }
            }
            if let Some(id) = client.server_id() {
                linked.insert(id);
            }
        }
        for server in self.servers.list() {
            let o = out.entry(server.pool.clone()).or_default();
            if linked.contains(&server.id) {
                o.sv_active += 1;
            } else {
                o.sv_idle += 1;
            }
        }
        out
    }
}

/// How many clients and servers of one pool are in which state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Holding a server.
    pub cl_active: usize,
    /// Logged in, nothing to do.
    pub cl_idle: usize,
    /// Waiting for a server.
    pub cl_waiting: usize,
    /// Lent to a client.
    pub sv_active: usize,
    /// In the pool, free.
    pub sv_idle: usize,
    /// How long the longest-waiting client has waited.
    pub maxwait: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(db: &str) -> PoolKey {
        PoolKey {
            database: db.into(),
            user: "u".into(),
        }
    }

    #[test]
    fn pool_counters_add_up_and_survive_a_new_lookup() {
        let stats = Stats::default();
        let a = stats.pool(&key("app"));
        a.record_wait(Duration::from_micros(250));
        a.record_query();
        a.record_query();
        a.record_query_time(Duration::from_micros(40));
        a.record_xact(Duration::from_micros(100));
        a.bytes_received().fetch_add(10, Ordering::Relaxed);
        a.bytes_sent().fetch_add(20, Ordering::Relaxed);
        let again = stats.pool(&key("app"));
        assert!(Arc::ptr_eq(&a, &again));
        let t = stats.totals()[&key("app")];
        assert_eq!(
            t,
            Totals {
                server_assignment_count: 1,
                xact_count: 1,
                query_count: 2,
                bytes_received: 10,
                bytes_sent: 20,
                xact_time: 100,
                query_time: 40,
                wait_time: 250,
            }
        );
    }

    #[test]
    fn averages_are_rates_and_times_per_event() {
        let old = Totals {
            xact_count: 10,
            query_count: 10,
            xact_time: 1000,
            query_time: 500,
            bytes_sent: 0,
            ..Default::default()
        };
        let new = Totals {
            xact_count: 30,
            query_count: 60,
            xact_time: 5000,
            query_time: 2500,
            bytes_sent: 4000,
            server_assignment_count: 4,
            wait_time: 400,
            ..Default::default()
        };
        let avg = new.averages(&old, Duration::from_secs(2));
        assert_eq!(avg.xact_count, 10);
        assert_eq!(avg.query_count, 25);
        assert_eq!(avg.bytes_sent, 2000);
        assert_eq!(avg.xact_time, 200);
        assert_eq!(avg.query_time, 40);
        assert_eq!(avg.wait_time, 100);
        assert_eq!(new.averages(&old, Duration::ZERO), Totals::default());
    }

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

    #[test]
    fn occupancy_counts_linked_servers_as_active() {
        let stats = Stats::default();
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let client = |id: u64| {
            ClientEntry::new(
                id,
                peer,
                None,
                "alice".into(),
                "app".into(),
                "alice".into(),
                String::new(),
                None,
            )
        };
        let c1 = stats.clients.register(1, client(1));
        let c2 = stats.clients.register(2, client(2));
        let _c3 = stats.clients.register(3, client(3));
        let pool = PoolKey {
            database: "app".into(),
            user: "alice".into(),
        };
        let _s1 = stats
            .servers
            .register(10, ServerEntry::new(10, pool.clone(), peer, None, 99, None));
        let _s2 = stats
            .servers
            .register(11, ServerEntry::new(11, pool.clone(), peer, None, 98, None));
        c1.set_active(10);
        c2.set_waiting();
        let o = stats.occupancy()[&pool];
        assert_eq!(
            (o.cl_active, o.cl_waiting, o.cl_idle, o.sv_active, o.sv_idle),
            (1, 1, 1, 1, 1)
        );
    }
}
