//! What SHOW STATS / POOLS / CLIENTS / SERVERS and /metrics report: per-pool counters that the
//! hot path bumps with relaxed atomic adds (no locks), and registries of the clients and
//! servers alive right now, which change once per connection and are read when someone asks.

mod conns;
mod events;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

pub use conns::{
    ClientEntry, ClientRegistration, ClientState, Registration, Registry, ServerEntry,
    ServerRegistration, ShownState, TlsSummary,
};
pub use events::{Metrics, handshake_failure_reason};

/// What pools, their counters and their gauges are keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    /// The database name as the client asked for it.
    pub database: String,
    /// The user pgmoat logs in to PostgreSQL as.
    pub user: String,
}

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

    /// Forgets a pool's counters (a `*` pool removed), and its series in /metrics.
    pub fn forget_pool(&self, key: &PoolKey) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.remove(key);
        drop(pools);
        self.wait_histograms.remove(&PoolLabels {
            database: key.database.clone(),
            user: key.user.clone(),
        });
        let mut period = self.period.lock().unwrap_or_else(|e| e.into_inner());
        period.0.1.remove(key);
        period.1.1.remove(key);
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
        for client in self.clients.list() {
            let key = PoolKey {
                database: client.database.clone(),
                user: client.pool_user(),
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
            if client.pinned() != 0 {
                o.cl_pinned += 1;
            }
        }
        for server in self.servers.list() {
            let o = out.entry(server.pool.clone()).or_default();
            match server.shown().pgbouncer {
                "idle" => o.sv_idle += 1,
                "being_canceled" => o.sv_being_canceled += 1,
                "used" => o.sv_used += 1,
                _ => o.sv_active += 1,
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
    /// Of the clients above, those with a server pinned to them.
    pub cl_pinned: usize,
    /// Lent or pinned to a client.
    pub sv_active: usize,
    /// In the pool, free.
    pub sv_idle: usize,
    /// Handed back with a cancel request still on its way to PostgreSQL.
    pub sv_being_canceled: usize,
    /// Being reset or closed.
    pub sv_used: usize,
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
    fn occupancy_counts_linked_servers_as_active() {
        let stats = Stats::default();
        let peer: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
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
        let s1 = stats
            .servers
            .register(10, ServerEntry::new(10, pool.clone(), peer, None, 99, None));
        s1.show(ShownState {
            lifecycle: "lent",
            pgbouncer: "active",
            client: Some(1),
            pinned: 0,
        });
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
