//! Server pools, one per (database, user), on deadpool. deadpool does not check an object
//! when it is dropped back into the pool, so a connection is only returned clean (after
//! ReadyForQuery 'I'); anything doubtful is detached and closed by the caller instead. The
//! checks at checkout (`recycle`) are cheap: TLS epoch, lifetime, idle time, a zero-wait
//! read for stray bytes, and the check query only after server_check_delay.

mod manager;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use deadpool::managed::{Object, Pool, PoolError, QueueMode, TimeoutType, Timeouts};

use crate::backend::{BackendError, BackendTarget};
use crate::config::{Config, PoolMode};
use crate::protocol::{PgError, SqlState};
use crate::state::Generation;
use crate::stats::{Registry, ServerEntry};

pub use manager::{ServerManager, close_needed};

pub type ServerObject = Object<ServerManager>;

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
    pub mode: PoolMode,
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
            },
            size: entry.pool_size.unwrap_or(config.default_pool_size).max(1),
            mode: entry.pool_mode.unwrap_or(config.pool_mode),
        })
    }
}

pub struct ServerPool {
    pub key: PoolKey,
    pub settings: PoolSettings,
    pub pool: Pool<ServerManager>,
    /// ParameterStatus values a new client is told at login (server_version and so on),
    /// learnt from the first server connection.
    startup_params: Mutex<Option<Vec<(String, String)>>>,
}

impl ServerPool {
    /// Waits (FIFO) for a server connection, up to query_wait_timeout.
    pub async fn checkout(&self, generation: &Generation) -> Result<ServerObject, PgError> {
        let config = &generation.config;
        let timeouts = Timeouts {
            wait: config.query_wait_timeout.non_zero(),
            create: Some(config.server_connect_timeout.duration() + Duration::from_secs(1)),
            recycle: Some(config.server_connect_timeout.duration()),
        };
        match self.pool.timeout_get(&timeouts).await {
            Ok(obj) => {
                self.remember_params(&obj.initial_params);
                Ok(obj)
            }
            Err(PoolError::Timeout(TimeoutType::Wait)) => Err(PgError::fatal(
                SqlState::QUERY_CANCELED,
                format!(
                    "query_wait_timeout: no server connection for database \"{}\" became free within {} s",
                    self.key.database, config.query_wait_timeout.0
                ),
            )
            .with_hint("raise default_pool_size or query_wait_timeout, or look for long transactions")),
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
}

/// All pools, created on first use.
pub struct PoolRegistry {
    pools: Mutex<HashMap<PoolKey, Arc<ServerPool>>>,
    current: Arc<ArcSwap<Generation>>,
    ids: Arc<AtomicU64>,
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
            pools: Mutex::new(HashMap::new()),
            current,
            ids,
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
                if existing.settings.size != settings.size {
                    existing.pool.resize(settings.size);
                }
                return existing.clone();
            }
            existing.pool.close();
        }
        let manager = ServerManager::new(
            settings.target.clone(),
            self.current.clone(),
            self.ids.clone(),
        )
        .registering_in(key.clone(), self.servers.clone());
        let pool = Pool::builder(manager)
            .max_size(settings.size)
            .queue_mode(QueueMode::Lifo)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("a runtime is configured, so building the pool cannot fail");
        let server_pool = Arc::new(ServerPool {
            key: key.clone(),
            settings,
            pool,
            startup_params: Mutex::new(None),
        });
        pools.insert(key, server_pool.clone());
        server_pool
    }

    pub fn all(&self) -> Vec<Arc<ServerPool>> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = pools.values().cloned().collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }
}
