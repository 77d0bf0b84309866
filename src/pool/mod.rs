//! Server pools, one per (database, user), on deadpool. deadpool does not check an object
//! when it is dropped back into the pool, so a connection is only returned clean (after
//! ReadyForQuery 'I'); anything doubtful is detached and closed by the caller instead. The
//! checks at checkout (`recycle`) are cheap: TLS epoch, lifetime, idle time, a zero-wait
//! read for stray bytes, and the check query only after server_check_delay.

mod janitor;
mod lent;
mod limits;
mod manager;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use deadpool::managed::{Pool, PoolError, QueueMode, TimeoutType, Timeouts};
use tokio::sync::Semaphore;

use crate::backend::{BackendError, BackendTarget};
use crate::config::{Config, PoolMode};
use crate::protocol::{PgError, SqlState};
use crate::state::Generation;
use crate::stats::{Registry, ServerEntry};

pub use janitor::run_janitor;
pub use lent::Lent;
pub use limits::ConnectionPermits;
use limits::NamedLimits;
pub use manager::{ServerManager, close_needed, retire_reason};

pub type ServerObject = Lent;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    /// The database name as the client asked for it.
    pub database: String,
    /// The user pgmoat logs in to PostgreSQL as.
    pub user: String,
}

/// The per-database settings a pool was built with.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub target: BackendTarget,
    pub size: usize,
    pub reserve_size: usize,
    pub mode: PoolMode,
    /// max_db_connections for this database (0 = unlimited).
    pub max_db_connections: usize,
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
        Some(PoolSettings {
            target: BackendTarget {
                host: entry.host.clone(),
                port: entry.port,
                dbname: entry.dbname.clone().unwrap_or_else(|| database.to_owned()),
                user,
                password,
                scram_keys: None,
            },
            size: entry.pool_size.unwrap_or(config.default_pool_size).max(1),
            reserve_size: config.reserve_pool_size,
            mode: entry.pool_mode.unwrap_or(config.pool_mode),
            max_db_connections: entry
                .max_db_connections
                .unwrap_or(config.max_db_connections),
        })
    }
}

pub struct ServerPool {
    pub key: PoolKey,
    pub settings: PoolSettings,
    /// Where cancel requests for this pool's servers go (shared, not cloned per checkout).
    pub cancel_target: Arc<BackendTarget>,
    pub pool: Pool<ServerManager>,
    gates: Mutex<Gates>,
    /// A min_pool_size top-up is running.
    pub(super) prewarming: std::sync::atomic::AtomicBool,
    /// ParameterStatus values a new client is told at login (server_version and so on),
    /// learnt from the first server connection.
    startup_params: Mutex<Option<Vec<(String, String)>>>,
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
    /// Waits (FIFO) for a server connection, up to query_wait_timeout; after
    /// reserve_pool_timeout a waiting client may take one of the reserve connections.
    pub async fn checkout(&self, generation: &Generation) -> Result<Lent, PgError> {
        let config = &generation.config;
        let started = Instant::now();
        let gates = self.gates.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let reserve_after = config.reserve_pool_timeout.duration();
        let acquire = async {
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
        let wait_limit = config.query_wait_timeout.non_zero();
        let acquired = match wait_limit {
            Some(limit) => tokio::time::timeout(limit, acquire)
                .await
                .map_err(|_| self.wait_timeout(config))?,
            None => acquire.await,
        };
        let (permit, reserve) = acquired
            .map_err(|_| PgError::fatal(SqlState::CANNOT_CONNECT_NOW, "server pool is closed"))?;
        if reserve {
            tracing::info!(database = %self.key.database, user = %self.key.user, "pool busy: using a reserve_pool_size connection");
        }
        let timeouts = Timeouts {
            wait: Some(
                wait_limit
                    .map(|l| l.saturating_sub(started.elapsed()))
                    .unwrap_or(Duration::from_secs(3600))
                    .max(Duration::from_millis(100)),
            ),
            create: Some(config.server_connect_timeout.duration() + Duration::from_secs(1)),
            recycle: Some(config.server_connect_timeout.duration()),
        };
        match self.pool.timeout_get(&timeouts).await {
            Ok(obj) => {
                self.remember_params(&obj.initial_params);
                Ok(Lent::new(obj, permit, started.elapsed(), reserve))
            }
            Err(PoolError::Timeout(TimeoutType::Wait)) => Err(self.wait_timeout(config)),
            Err(PoolError::Timeout(_)) => Err(BackendError::Timeout {
                addr: self.settings.target.addr_string(),
                secs: config.server_connect_timeout.0,
            }
            .to_pg_error()),
            Err(PoolError::Backend(e)) => {
                tracing::warn!(pool = %self.key.database, user = %self.key.user, error = %e, "server connection failed");
                Err(e.to_pg_error())
            }
            Err(other) => Err(PgError::fatal(
                SqlState::CANNOT_CONNECT_NOW,
                format!("server pool unavailable: {other:?}"),
            )),
        }
    }

    fn wait_timeout(&self, config: &Config) -> PgError {
        PgError::fatal(
            SqlState::QUERY_CANCELED,
            format!(
                "query_wait_timeout: no server connection for database \"{}\" became free within {} s",
                self.key.database, config.query_wait_timeout.0
            ),
        )
        .with_hint("raise default_pool_size or query_wait_timeout, or look for long transactions")
    }

    /// Applies new sizes from a reload. Connections in use keep their permits; the new
    /// limits hold as they come back.
    pub fn resize(&self, size: usize, reserve_size: usize) {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        if gates.size != size || gates.reserve_size != reserve_size {
            *gates = Gates::new(size, reserve_size);
            self.pool.resize(size + reserve_size);
            tracing::info!(database = %self.key.database, user = %self.key.user, size, reserve_size, "pool resized");
        }
    }

    pub fn startup_params(&self) -> Option<Vec<(String, String)>> {
        self.startup_params.lock().ok()?.clone()
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

type PoolMap = Mutex<HashMap<PoolKey, Arc<ServerPool>>>;

/// All pools, created on first use, and the limits that span them.
pub struct PoolRegistry {
    pools: Arc<PoolMap>,
    current: Arc<ArcSwap<Generation>>,
    ids: Arc<AtomicU64>,
    db_limits: Arc<NamedLimits>,
    user_limits: Arc<NamedLimits>,
    /// Where server connections register for SHOW SERVERS.
    servers: Arc<Registry<ServerEntry>>,
}

impl PoolRegistry {
    pub fn new(
        current: Arc<ArcSwap<Generation>>,
        ids: Arc<AtomicU64>,
        servers: Arc<Registry<ServerEntry>>,
    ) -> Self {
        PoolRegistry {
            pools: Arc::new(Mutex::new(HashMap::new())),
            current,
            ids,
            db_limits: Arc::default(),
            user_limits: Arc::default(),
            servers,
        }
    }

    /// The pool for these settings; replaced when a reload changed where or how it logs in
    /// (its connections then close as they come back), resized when only the size changed.
    pub fn get_or_create(&self, key: PoolKey, settings: PoolSettings) -> Arc<ServerPool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = pools.get(&key) {
            if existing.settings.target == settings.target
                && existing.settings.mode == settings.mode
            {
                existing.resize(settings.size, settings.reserve_size);
                return existing.clone();
            }
            existing.pool.close();
        }
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
        .registering_in(key.clone(), self.servers.clone());
        let pool = Pool::builder(manager)
            .max_size(settings.size + settings.reserve_size)
            .queue_mode(QueueMode::Lifo)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("a runtime is configured, so building the pool cannot fail");
        let server_pool = Arc::new(ServerPool {
            key: key.clone(),
            cancel_target: Arc::new(settings.target.clone()),
            gates: Mutex::new(Gates::new(settings.size, settings.reserve_size)),
            prewarming: Default::default(),
            settings,
            pool,
            startup_params: Mutex::new(None),
        });
        pools.insert(key, server_pool.clone());
        server_pool
    }

    pub fn all(&self) -> Vec<Arc<ServerPool>> {
        all_pools(&self.pools)
    }
}

fn all_pools(pools: &PoolMap) -> Vec<Arc<ServerPool>> {
    let pools = pools.lock().unwrap_or_else(|e| e.into_inner());
    let mut all: Vec<_> = pools.values().cloned().collect();
    all.sort_by(|a, b| a.key.cmp(&b.key));
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
                tracing::debug!(closed_from = %pool.key.database, user = %pool.key.user, "closed an idle server connection to stay within max_db_connections / max_user_connections");
                return;
            }
        }
    }
}
