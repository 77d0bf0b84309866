//! Server pools, one per (database, user), on deadpool. deadpool returns an object to the pool
//! when it is dropped and checks it only at the next checkout, so connections are lent through
//! [`Lent`], which closes them on every way out but the one that proves them clean (see
//! `backend::lifecycle`). The checks at checkout (`recycle`) are cheap: TLS epoch, lifetime,
//! idle time, a zero-wait read for stray bytes, and the check query only after
//! server_check_delay.
//!
//! A reload that changes where or how a pool logs in (or its mode, or how it is split into
//! shares) retires it: its waiting clients are woken with [`PoolError::Retired`] and ask the
//! current pool, its idle servers close at once and its busy ones when handed back. Sessions
//! look their pool up again after every reload, so nobody is left holding a closed pool.
//!
//! With several worker threads (`worker_threads`), a pool of at least `2 * MIN_SHARE`
//! connections is split into one share per worker: each share is a pool of its own serving
//! the clients of one worker, so a client, its server connections and the queue it waits in
//! stay on one thread. The shares' sizes add up to the configured pool size; a client waits
//! for a connection of its own share first. When its own share is at its limit and another
//! share has a server idle (and no client of its own waiting for it), the client borrows that
//! server for one checkout ([`ServerPool::borrow_idle`]): it goes back to its own share when
//! handed back. The common path (a server of the client's own share) stays on one thread;
//! only a borrowed server's readiness crosses threads. Smaller pools are not split.

mod error;
pub mod hosts;
mod janitor;
mod lent;
mod limits;
mod manager;
mod pause;
mod pins;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use deadpool::managed::{Pool, PoolError as DeadpoolError, QueueMode, TimeoutType, Timeouts};
use tokio::sync::{Notify, Semaphore};

use crate::backend::{BackendError, BackendTarget};
use crate::config::{Config, LoadBalanceHosts, PoolMode, SessionState, TargetSessionAttrs};
use crate::generation::Generation;
use crate::stats::{Registry, ServerEntry};

pub use crate::stats::PoolKey;
pub use error::PoolError;
pub use janitor::run_janitor;
pub use lent::Lent;
pub(crate) use lent::cancels_settled;
pub use limits::ConnectionPermits;
use limits::NamedLimits;
pub use manager::{ServerManager, close_needed, retire_reason};
pub use pause::{PauseError, PauseGate};
pub use pins::{PinSlot, PinSlots};

/// The per-database settings a pool was built with.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    /// How to log in; its host and port are the entry's first (see `hosts`).
    pub target: BackendTarget,
    /// Every host of the entry, with its port, in the configured order.
    pub hosts: Vec<(String, u16)>,
    pub target_session_attrs: TargetSessionAttrs,
    pub load_balance_hosts: LoadBalanceHosts,
    pub size: usize,
    pub reserve_size: usize,
    pub mode: PoolMode,
    /// max_db_connections for this database (0 = unlimited).
    pub max_db_connections: usize,
    /// Pin, or reset, when a client makes session state (transaction mode).
    pub session_state: SessionState,
    /// Servers of the pool (all shares) that may be pinned at once.
    pub max_pinned: usize,
}

impl PoolSettings {
    /// Resolves the `[databases]` entry for a client's database and user. `None` when no
    /// entry (and no `*` entry) exists.
    pub fn resolve(
        config: &Config,
        users: &crate::auth::UserList,
        database: &str,
        client_user: &str,
    ) -> Option<PoolSettings> {
        let entry = config.database(database)?;
        let user = entry.user.clone().unwrap_or_else(|| client_user.to_owned());
        let password = entry.password.clone().or_else(|| match users.get(&user) {
            Some(crate::auth::Secret::Plain(p)) if !p.is_empty() => Some(p.clone()),
            _ => None,
        });
        let size = entry.pool_size.unwrap_or(config.default_pool_size).max(1);
        // Validated when the config was loaded; an empty list cannot come from there.
        let hosts = entry.endpoints().ok().filter(|h| !h.is_empty())?;
        let (host, port) = hosts[0].clone();
        Some(PoolSettings {
            hosts,
            target_session_attrs: entry.target_session_attrs.unwrap_or_default(),
            load_balance_hosts: entry.load_balance_hosts.unwrap_or_default(),
            target: BackendTarget {
                entry: if config.databases.contains_key(database) {
                    database.to_owned()
                } else {
                    "*".to_owned()
                },
                host,
                port,
                dbname: entry.dbname.clone().unwrap_or_else(|| database.to_owned()),
                user,
                password,
                scram_keys: None,
            },
            size,
            reserve_size: config.reserve_pool_size,
            mode: entry.pool_mode.unwrap_or(config.pool_mode),
            max_db_connections: entry
                .max_db_connections
                .unwrap_or(config.max_db_connections),
            session_state: entry.session_state.unwrap_or(config.session_state),
            // Half the pool by default: the other half always multiplexes.
            max_pinned: entry
                .max_pinned_servers
                .or(config.max_pinned_servers)
                .unwrap_or(size / 2),
        })
    }
}

impl PoolSettings {
    /// Whether a pool built with `self` can serve a client resolving to `other`: same place,
    /// same login, same mode. SCRAM keys learnt from a client's proof compare by the verifier
    /// they belong to, not by the client's key, so any client of the same password matches.
    pub fn same_pool(&self, other: &PoolSettings) -> bool {
        let (a, b) = (&self.target, &other.target);
        let keys = |t: &BackendTarget| {
            t.scram_keys
                .as_ref()
                .map(|k| (k.server_key, k.salt.clone(), k.iterations))
        };
        a.entry == b.entry
            && self.hosts == other.hosts
            && self.target_session_attrs == other.target_session_attrs
            && self.load_balance_hosts == other.load_balance_hosts
            && a.dbname == b.dbname
            && a.user == b.user
            && a.password == b.password
            && (keys(a) == keys(b) || keys(a).is_none() || keys(b).is_none())
            && self.mode == other.mode
    }
}

/// Fewest connections a pool's share per worker may have; smaller pools stay whole.
pub const MIN_SHARE: usize = 4;

/// How many shares a pool of `size` connections gets with `workers` worker threads.
pub fn share_count(workers: usize, size: usize) -> usize {
    (size / MIN_SHARE).clamp(1, workers.max(1))
}

/// Which share of a pool this is, of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: usize,
    pub count: usize,
}

impl Share {
    /// This share's part of `total` (a pool size, a reserve, min_pool_size): the parts of
    /// all shares add up to `total`.
    pub fn of(self, total: usize) -> usize {
        total / self.count + usize::from(self.index < total % self.count)
    }
}

pub struct ServerPool {
    pub key: PoolKey,
    /// The pool's settings as configured; sizes are the whole pool's, not this share's.
    pub settings: PoolSettings,
    pub share: Share,
    /// The event loop of the worker this share serves (known from its first checkout), where
    /// the janitor opens min_pool_size connections for it.
    home: std::sync::OnceLock<tokio::runtime::Handle>,
    /// Where cancel requests for this pool's servers go (shared, not cloned per checkout).
    pub cancel_target: Arc<BackendTarget>,
    pub pool: Pool<ServerManager>,
    gates: Mutex<Gates>,
    /// A min_pool_size top-up is running.
    pub(super) prewarming: std::sync::atomic::AtomicBool,
    /// ParameterStatus values a new client is told at login (server_version and so on),
    /// learnt from the first server connection.
    startup_params: Mutex<Option<Vec<(String, String)>>>,
    /// PostgreSQL's spelling of reported settings as clients gave them at login, learnt the
    /// first time a server applied them: (lower-case name, client's value) -> reported value.
    canonical: Mutex<HashMap<(String, String), String>>,
    /// A reload replaced this pool: no checkouts, and servers close when handed back.
    retired: AtomicBool,
    /// Servers pinned to clients, counted over all shares of the pool.
    pub pins: Arc<PinSlots>,
    /// Since when no session has held this share (seen by the janitor), for
    /// autodb_idle_timeout.
    unreferenced_since: Mutex<Option<std::time::Instant>>,
    /// What the other shares see of this one: its waiting clients, and its doorbell.
    signals: Arc<ShareSignals>,
    /// The pool's other shares (weak: the registry owns them) with their signals, set once
    /// when the shares are built; empty for a pool that is not split.
    siblings: std::sync::OnceLock<Vec<(Weak<ServerPool>, Arc<ShareSignals>)>>,
    /// Checkouts of this share served by a server borrowed from another share.
    pub borrowed: AtomicU64,
}

/// How shares of one pool tell each other about idle servers, without holding each other.
#[derive(Default)]
struct ShareSignals {
    /// Checkouts of this share waiting at its gate.
    waiting: AtomicUsize,
    /// Rung when another share has an idle server none of its own clients waits for.
    spare_elsewhere: Notify,
}

/// Counts a checkout as waiting for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a checkout's wait at the gates gave it.
enum Gate {
    /// A permit of its own share (from the reserve when the flag is set).
    Own(tokio::sync::OwnedSemaphorePermit, bool),
    /// A server of another share, borrowed while it waited.
    Borrowed(Box<Lent>),
}

/// Who may take a server: `main` has default_pool_size permits; `reserve` has
/// reserve_pool_size more, for clients that waited reserve_pool_timeout.
#[derive(Clone)]
struct Gates {
    size: usize,
    reserve_size: usize,
    main: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
}

impl Gates {
    fn new(size: usize, reserve_size: usize) -> Gates {
        Gates {
            size,
            reserve_size,
            main: Arc::new(Semaphore::new(size)),
            reserve: Arc::new(Semaphore::new(reserve_size)),
        }
    }
}

impl ServerPool {
    /// Waits (FIFO) for a server connection for client `client`, up to query_wait_timeout;
    /// after reserve_pool_timeout a waiting client may take one of the reserve connections.
    /// A retired pool answers [`PoolError::Retired`], also to clients already waiting.
    pub async fn checkout(
        self: &Arc<Self>,
        generation: &Generation,
        client: u64,
    ) -> Result<Lent, PoolError> {
        let config = &generation.config;
        let started = Instant::now();
        if self.is_retired() {
            return Err(PoolError::Retired);
        }
        if self.home.get().is_none()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let _ = self.home.set(handle);
        }
        let gates = self.gates.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let split = self.siblings.get().is_some_and(|s| !s.is_empty());
        if split
            && gates.main.available_permits() == 0
            && let Some(lent) = self.borrow_idle(config, client, started).await
        {
            return Ok(lent);
        }
        let reserve_after = config.reserve_pool_timeout.duration();
        let own = async {
            if gates.reserve_size == 0 {
                return gates.main.clone().acquire_owned().await.map(|p| (p, false));
            }
            if let Ok(permit) =
                tokio::time::timeout(reserve_after, gates.main.clone().acquire_owned()).await
            {
                return permit.map(|p| (p, false));
            }
            tokio::select! {
                p = gates.main.clone().acquire_owned() => p.map(|p| (p, false)),
                p = gates.reserve.clone().acquire_owned() => p.map(|p| (p, true)),
            }
        };
        let acquire = async {
            if !split {
                return own.await.map(|(p, reserve)| Gate::Own(p, reserve));
            }
            // While it waits, another share that has a server idle and nobody of its own
            // waiting rings this share's bell; the first waiter here tries to borrow it.
            let _waiting = Waiting::new(&self.signals.waiting);
            tokio::pin!(own);
            loop {
                let bell = self.signals.spare_elsewhere.notified();
                tokio::select! {
                    biased;
                    p = &mut own => return p.map(|(p, reserve)| Gate::Own(p, reserve)),
                    () = bell => {
                        if let Some(lent) = self.borrow_idle(config, client, started).await {
                            return Ok(Gate::Borrowed(Box::new(lent)));
                        }
                    }
                }
            }
        };
        let wait_limit = config.query_wait_timeout.non_zero();
        let acquired = match wait_limit {
            Some(limit) => tokio::time::timeout(limit, acquire)
                .await
                .map_err(|_| self.wait_timeout(config))?,
            None => acquire.await,
        };
        // The gates are closed only when the pool is retired.
        let (permit, reserve) = match acquired.map_err(|_| PoolError::Retired)? {
            Gate::Own(permit, reserve) => (permit, reserve),
            Gate::Borrowed(lent) => return Ok(*lent),
        };
        if reserve {
            tracing::info!(database = ?self.key.database, user = ?self.key.user, "pool busy: using a reserve_pool_size connection");
        }
        let timeouts = Timeouts {
            wait: Some(
                wait_limit
                    .map(|l| l.saturating_sub(started.elapsed()))
                    .unwrap_or(Duration::from_secs(3600))
                    .max(Duration::from_millis(100)),
            ),
            create: Some(self.create_limit(config, started.elapsed())),
            recycle: Some(config.server_connect_timeout.duration()),
        };
        let gives_up = wait_limit.map(|limit| started + limit);
        let checked_out =
            manager::CLIENT_GIVES_UP.scope(gives_up, self.pool.timeout_get(&timeouts));
        match checked_out.await {
            Ok(obj) => {
                self.remember_params(&obj.initial_params);
                let lent = Lent::new(
                    obj,
                    permit,
                    self.clone(),
                    client,
                    (started.elapsed(), reserve),
                );
                Ok(lent)
            }
            Err(DeadpoolError::Timeout(TimeoutType::Wait)) => Err(self.wait_timeout(config)),
            Err(DeadpoolError::Timeout(_)) if self.tries_hosts() => {
                // Rounds over the hosts ran until the client would wait no longer: say what
                // each host was, not which login happened to be cut short.
                let manager = self.pool.manager();
                let found = manager.host_summary();
                tracing::warn!(pool = ?self.key.database, hosts = %found, "no suitable server within query_wait_timeout");
                Err(manager.no_suitable_host(found).into())
            }
            Err(DeadpoolError::Timeout(_)) => Err(BackendError::Timeout {
                addr: self.settings.target.addr_string(),
                secs: config.server_connect_timeout.0,
            }
            .into()),
            Err(DeadpoolError::Backend(e)) => {
                tracing::warn!(pool = ?self.key.database, user = ?self.key.user, error = %e, "server connection failed");
                Err(e.into())
            }
            // Closed: retired while this checkout waited for deadpool.
            Err(DeadpoolError::Closed) => Err(PoolError::Retired),
            Err(other) => {
                tracing::error!(error = ?other, "unexpected deadpool error");
                Err(PoolError::Retired)
            }
        }
    }

    /// An idle server of another share of this pool, for a client of this share whose own
    /// share is at its limit: taken with that share's permit, so it counts there and goes
    /// back there. Only a server already idle is taken (none is made for a borrower), and
    /// only from a share with nobody of its own waiting.
    async fn borrow_idle(
        self: &Arc<Self>,
        config: &Config,
        client: u64,
        started: Instant,
    ) -> Option<Lent> {
        for (sibling, signals) in self.siblings.get()? {
            if signals.waiting.load(Ordering::Acquire) > 0 {
                continue;
            }
            let Some(sibling) = sibling.upgrade() else {
                continue;
            };
            if sibling.is_retired() || sibling.pool.status().available == 0 {
                continue;
            }
            let main = sibling
                .gates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .main
                .clone();
            let Ok(permit) = main.try_acquire_owned() else {
                continue;
            };
            let timeouts = Timeouts {
                wait: Some(Duration::ZERO),
                create: None,
                recycle: Some(config.server_connect_timeout.duration()),
            };
            let taken = manager::IDLE_ONLY.scope((), sibling.pool.timeout_get(&timeouts));
            if let Ok(obj) = taken.await {
                tracing::debug!(database = ?self.key.database, user = ?self.key.user, share = self.share.index, from_share = sibling.share.index, "borrowed an idle server of another share");
                self.borrowed.fetch_add(1, Ordering::Relaxed);
                let waited = (started.elapsed(), false);
                return Some(Lent::new(obj, permit, sibling.clone(), client, waited));
            }
        }
        None
    }

    /// A server of this share just went back idle: when none of this share's clients waits
    /// for it, the first share with clients waiting is told it may borrow it.
    pub(super) fn offer_spare(&self) {
        if self.signals.waiting.load(Ordering::Acquire) > 0 {
            return;
        }
        let Some(siblings) = self.siblings.get() else {
            return;
        };
        if let Some((_, signals)) = siblings
            .iter()
            .find(|(_, s)| s.waiting.load(Ordering::Acquire) > 0)
        {
            signals.spare_elsewhere.notify_one();
        }
    }

    /// How long making a new connection may take for a checkout that has waited `waited`.
    /// One host: one login. A host list, or a target_session_attrs to satisfy: a round over
    /// every host, and more rounds (server_login_retry apart) while a failover may be under
    /// way, as long as the client is willing to wait (query_wait_timeout).
    fn create_limit(&self, config: &Config, waited: Duration) -> Duration {
        let one_login = config.server_connect_timeout.duration() + Duration::from_secs(1);
        if !self.tries_hosts() {
            return one_login;
        }
        let one_round = one_login * self.settings.hosts.len() as u32;
        let willing = config
            .query_wait_timeout
            .non_zero()
            .map(|limit| limit.saturating_sub(waited))
            .unwrap_or(Duration::from_secs(3600));
        willing.max(one_round)
    }

    fn tries_hosts(&self) -> bool {
        self.pool.manager().tries_hosts()
    }

    fn wait_timeout(&self, config: &Config) -> PoolError {
        PoolError::WaitTimeout {
            database: self.key.database.clone(),
            secs: config.query_wait_timeout.0,
        }
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Takes the pool out of service: waiting clients are told to look again, idle servers
    /// close now, busy ones when handed back.
    fn retire(&self, why: &str) {
        if self.retired.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(database = ?self.key.database, user = ?self.key.user, share = self.share.index, reason = why, "pool retired");
        let gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates.main.close();
        gates.reserve.close();
        self.pool.close();
    }

    /// The configuration generation in force now (for work done after a wait, such as a
    /// reset after a cancel settled).
    pub(crate) fn current_generation(&self) -> Arc<ArcSwap<Generation>> {
        self.pool.manager().current()
    }

    /// Applies new sizes from a reload (the whole pool's; this share takes its part).
    /// Connections in use keep their permits; the new limits hold as they come back.
    pub fn resize(&self, size: usize, reserve_size: usize) {
        let (size, reserve_size) = (self.share.of(size), self.share.of(reserve_size));
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        if gates.size != size || gates.reserve_size != reserve_size {
            *gates = Gates::new(size, reserve_size);
            self.pool.resize(size + reserve_size);
            tracing::info!(database = ?self.key.database, user = ?self.key.user, size, reserve_size, share = self.share.index, shares = self.share.count, "pool resized");
        }
    }

    /// Runs `task` on the worker this share serves (or here, before it has served anyone).
    pub fn spawn_at_home<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match self.home.get() {
            Some(handle) => drop(handle.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    pub fn startup_params(&self) -> Option<Vec<(String, String)>> {
        self.startup_params.lock().ok()?.clone()
    }

    /// PostgreSQL's spelling of a reported setting's value as a client gave it, if a server
    /// of this pool applied that value before.
    pub(crate) fn canonical(&self, name: &str, value: &str) -> Option<String> {
        let known = self.canonical.lock().unwrap_or_else(|e| e.into_inner());
        known
            .get(&(name.to_ascii_lowercase(), value.to_owned()))
            .cloned()
    }

    /// Remembers how PostgreSQL reported a setting a client gave as `value`. Bounded, so
    /// clients cannot grow it without limit: past the bound, logins just ask a server.
    pub(crate) fn learn_canonical(&self, name: &str, value: &str, reported: &str) {
        const MAX_KNOWN: usize = 1024;
        let mut known = self.canonical.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() < MAX_KNOWN {
            known.insert(
                (name.to_ascii_lowercase(), value.to_owned()),
                reported.to_owned(),
            );
        }
    }

    fn remember_params(&self, params: &[(String, String)]) {
        if let Ok(mut slot) = self.startup_params.lock()
            && slot.is_none()
        {
            *slot = Some(params.to_vec());
        }
    }

    /// Closes up to `n` idle connections; returns how many were closed.
    pub fn close_idle(&self, n: usize) -> usize {
        let mut closed = 0;
        self.pool.retain(|_, _| {
            if closed < n {
                closed += 1;
                false
            } else {
                true
            }
        });
        closed
    }
}

/// How often a connection waiting on max_db_connections / max_user_connections looks for an
/// idle connection of another pool to close.
const LIMIT_RETRY: Duration = Duration::from_millis(100);

/// Each pool's shares, by pool.
type PoolMap = Mutex<HashMap<PoolKey, Vec<Arc<ServerPool>>>>;

/// All pools, created on first use, and the limits that span them.
pub struct PoolRegistry {
    pools: Arc<PoolMap>,
    current: Arc<ArcSwap<Generation>>,
    ids: Arc<AtomicU64>,
    db_limits: Arc<NamedLimits>,
    user_limits: Arc<NamedLimits>,
    /// Where server connections register for SHOW SERVERS.
    servers: Arc<Registry<ServerEntry>>,
    /// Worker threads, so how many shares a large pool is split into.
    workers: usize,
    /// What is known of every host the pools connect to.
    pub hosts: Arc<hosts::HostBook>,
}

impl PoolRegistry {
    pub fn new(
        current: Arc<ArcSwap<Generation>>,
        ids: Arc<AtomicU64>,
        servers: Arc<Registry<ServerEntry>>,
        workers: usize,
    ) -> Self {
        PoolRegistry {
            workers,
            pools: Arc::new(Mutex::new(HashMap::new())),
            current,
            ids,
            db_limits: Arc::default(),
            user_limits: Arc::default(),
            servers,
            hosts: Arc::default(),
        }
    }

    /// The share of the pool for these settings that serves clients of worker `worker`.
    /// The pool is replaced when a reload changed where or how it logs in, or a new size
    /// splits it differently (the old one is retired); resized when only the size changed.
    pub fn get_or_create(
        &self,
        key: PoolKey,
        settings: PoolSettings,
        worker: usize,
    ) -> Arc<ServerPool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let count = share_count(self.workers, settings.size);
        if let Some(shares) = pools.get(&key) {
            let Some(why) = self.replaced(shares, &settings) else {
                for share in shares {
                    share.resize(settings.size, settings.reserve_size);
                }
                return shares[worker % count].clone();
            };
            for share in shares {
                share.retire(why);
            }
        }
        let pins = Arc::new(PinSlots::default());
        let shares: Vec<_> = (0..count)
            .map(|index| self.build(&key, &settings, Share { index, count }, pins.clone()))
            .collect();
        for (i, share) in shares.iter().enumerate() {
            let others = shares
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, other)| (Arc::downgrade(other), other.signals.clone()))
                .collect();
            let _ = share.siblings.set(others);
        }
        let chosen = shares[worker % count].clone();
        pools.insert(key, shares);
        chosen
    }

    /// After a reload: retires and forgets the pools the new configuration no longer
    /// produces (a database entry removed, a forced user changed, another host, port,
    /// dbname, password or pool_mode, another number of shares), so none is orphaned;
    /// resizes the others. Sessions find their current pool at their next checkout.
    pub(crate) fn apply(&self, generation: &Generation) {
        let config = &generation.config;
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|key, shares| {
            let resolved =
                PoolSettings::resolve(config, &generation.users, &key.database, &key.user);
            let why = match &resolved {
                None => Some("its database entry was removed"),
                Some(s) if s.target.user != key.user => Some("its database entry's user changed"),
                Some(s) => self.replaced(shares, s).or_else(|| {
                    stale_scram_keys(&shares[0].settings, generation)
                        .then_some("the auth_file secret it logs in with changed")
                }),
            };
            if let Some(why) = why {
                for share in shares.iter() {
                    share.retire(why);
                }
                return false;
            }
            // Not replaced, so it resolved.
            if let Some(s) = resolved {
                for share in shares.iter() {
                    share.resize(s.size, s.reserve_size);
                }
            }
            true
        });
    }

    /// Why the pool made of `shares` cannot serve clients that resolve to `settings` any
    /// more (another login or mode, or another number of worker shares), if so.
    fn replaced(
        &self,
        shares: &[Arc<ServerPool>],
        settings: &PoolSettings,
    ) -> Option<&'static str> {
        if !shares[0].settings.same_pool(settings) {
            return Some("its database entry changed");
        }
        if share_count(self.workers, settings.size) != shares.len() {
            return Some("a new pool size splits it into another number of shares");
        }
        None
    }

    fn build(
        &self,
        key: &PoolKey,
        settings: &PoolSettings,
        share: Share,
        pins: Arc<PinSlots>,
    ) -> Arc<ServerPool> {
        let (size, reserve_size) = (share.of(settings.size), share.of(settings.reserve_size));
        let manager = ServerManager::new(
            key.clone(),
            settings.target.clone(),
            self.current.clone(),
            self.ids.clone(),
            CrossPoolLimits {
                pools: Arc::downgrade(&self.pools),
                db_limits: self.db_limits.clone(),
                user_limits: self.user_limits.clone(),
            },
        )
        .registering_in(key.clone(), self.servers.clone())
        .on_hosts(
            settings
                .hosts
                .iter()
                .map(|(host, port)| self.hosts.get(host, *port))
                .collect(),
            settings.target_session_attrs,
            settings.load_balance_hosts,
        );
        let pool = Pool::builder(manager)
            .max_size(size + reserve_size)
            .queue_mode(QueueMode::Lifo)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("a runtime is configured, so building the pool cannot fail");
        Arc::new(ServerPool {
            key: key.clone(),
            cancel_target: Arc::new(settings.target.clone()),
            gates: Mutex::new(Gates::new(size, reserve_size)),
            prewarming: Default::default(),
            settings: settings.clone(),
            share,
            home: Default::default(),
            pool,
            startup_params: Mutex::new(None),
            canonical: Mutex::default(),
            retired: AtomicBool::new(false),
            pins,
            unreferenced_since: Mutex::new(None),
            signals: Arc::default(),
            siblings: Default::default(),
            borrowed: AtomicU64::new(0),
        })
    }

    /// A pool made for the `*` entry whose first login failed (a database that does not
    /// exist, a refused user) is forgotten at once, so a loop over random names leaves
    /// nothing behind; unless a server of it did log in (another client made it work).
    /// True when it was removed (its counters should go too).
    pub fn forget_failed_auto_pool(&self, key: &PoolKey) -> bool {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let Some(shares) = pools.get(key) else {
            return false;
        };
        if shares.iter().any(|share| share.pool.status().size > 0) {
            return false;
        }
        for share in shares {
            share.retire("its first login failed");
        }
        pools.remove(key);
        true
    }

    /// The janitor's sweep of pools made for the `*` entry: one that no session has held
    /// for `idle` (autodb_idle_timeout) is retired, which closes its idle servers, and
    /// forgotten. Returns the keys removed (their counters should go too).
    pub(crate) fn expire_auto_pools(
        &self,
        generation: &Generation,
        idle: Duration,
    ) -> Vec<PoolKey> {
        let now = std::time::Instant::now();
        let mut expired = Vec::new();
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|key, shares| {
            if generation.config.databases.contains_key(&key.database) {
                return true;
            }
            let mut all_idle = true;
            for share in shares.iter() {
                // The map's own reference is the only one: no session holds it.
                let held = Arc::strong_count(share) > 1;
                let mut since = share
                    .unreferenced_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if held {
                    *since = None;
                    all_idle = false;
                } else if now.duration_since(*since.get_or_insert(now)) < idle {
                    all_idle = false;
                }
            }
            if all_idle {
                for share in shares.iter() {
                    share.retire("autodb_idle_timeout: no client used it");
                }
                expired.push(key.clone());
            }
            !all_idle
        });
        expired
    }

    /// Every share of every pool, by pool.
    pub fn all(&self) -> Vec<Arc<ServerPool>> {
        all_pools(&self.pools)
    }

    /// The worker threads large pools are split for: the one count the workers are started
    /// with, too.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// How many pools there are (a pool split into shares counts once).
    pub fn count(&self) -> usize {
        self.pools.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The pool logs in with SCRAM keys a client's proof gave, and auth_file now holds another
/// verifier for that user: its new connections would fail.
fn stale_scram_keys(settings: &PoolSettings, generation: &Generation) -> bool {
    let Some(keys) = &settings.target.scram_keys else {
        return false;
    };
    match generation.users.get(&settings.target.user) {
        Some(crate::auth::Secret::Scram(verifier)) => {
            verifier.server_key != keys.server_key
                || verifier.salt != keys.salt
                || verifier.iterations != keys.iterations
        }
        _ => true,
    }
}

fn all_pools(pools: &PoolMap) -> Vec<Arc<ServerPool>> {
    let pools = pools.lock().unwrap_or_else(|e| e.into_inner());
    let mut all: Vec<_> = pools.values().flatten().cloned().collect();
    all.sort_by(|a, b| (&a.key, a.share.index).cmp(&(&b.key, b.share.index)));
    all
}

/// What a pool's manager needs to enforce max_db_connections / max_user_connections.
pub struct CrossPoolLimits {
    pools: Weak<PoolMap>,
    db_limits: Arc<NamedLimits>,
    user_limits: Arc<NamedLimits>,
}

impl CrossPoolLimits {
    /// Permits for one new connection of pool `key`, closing an idle connection of another
    /// pool of the same database or user when a limit is reached.
    pub async fn acquire(
        &self,
        key: &PoolKey,
        max_db: usize,
        max_user: usize,
    ) -> Result<ConnectionPermits, BackendError> {
        let mut permits = Vec::new();
        let wanted = [
            (self.db_limits.get(&key.database, max_db), true),
            (self.user_limits.get(&key.user, max_user), false),
        ];
        for (semaphore, by_db) in wanted {
            let Some(semaphore) = semaphore else { continue };
            let permit = loop {
                if let Ok(p) = semaphore.clone().try_acquire_owned() {
                    break p;
                }
                // Another pool's connection may go idle at any time: keep trying to close
                // one while waiting, as PgBouncer does, rather than only once.
                self.close_one_idle(key, by_db);
                tokio::select! {
                    p = semaphore.clone().acquire_owned() => match p {
                        Ok(p) => break p,
                        Err(_) => return Err(BackendError::NoAddress { host: "limit".into(), port: 0 }),
                    },
                    _ = tokio::time::sleep(LIMIT_RETRY) => {}
                }
            };
            permits.push(permit);
        }
        Ok(ConnectionPermits::new(permits))
    }

    fn close_one_idle(&self, key: &PoolKey, by_db: bool) {
        let Some(pools) = self.pools.upgrade() else {
            return;
        };
        for pool in all_pools(&pools) {
            let same = if by_db {
                pool.key.database == key.database
            } else {
                pool.key.user == key.user
            };
            if same && pool.key != *key && pool.close_idle(1) > 0 {
                tracing::debug!(closed_from = ?pool.key.database, user = ?pool.key.user, "closed an idle server connection to stay within max_db_connections / max_user_connections");
                return;
            }
        }
    }
}

#[cfg(test)]
mod share_tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_configured_size() {
        for total in 0..40 {
            for count in 1..5 {
                let sum: usize = (0..count)
                    .map(|index| Share { index, count }.of(total))
                    .sum();
                assert_eq!(sum, total, "{total} over {count} shares");
            }
        }
        assert_eq!(Share { index: 0, count: 3 }.of(10), 4);
        assert_eq!(Share { index: 2, count: 3 }.of(10), 3);
        assert_eq!(Share { index: 0, count: 1 }.of(7), 7);
    }

    #[test]
    fn small_pools_stay_whole_and_large_ones_get_a_share_per_worker() {
        assert_eq!(share_count(1, 100), 1);
        assert_eq!(share_count(2, 1), 1);
        assert_eq!(share_count(2, 7), 1);
        assert_eq!(share_count(2, 8), 2);
        assert_eq!(share_count(2, 20), 2);
        assert_eq!(share_count(4, 12), 3);
        assert_eq!(share_count(0, 20), 1);
    }
}
