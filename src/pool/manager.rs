//! deadpool's Manager for server connections: how one is made and when one is too old,
//! too idle or too stale to hand out again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use deadpool::managed::{Manager, Metrics, RecycleError, RecycleResult};

use super::{CrossPoolLimits, PoolKey};
use crate::backend::{BackendError, BackendTarget, ConnectOptions, ServerConn, connect};
use crate::state::Generation;

pub struct ServerManager {
    key: PoolKey,
    target: BackendTarget,
    current: Arc<ArcSwap<Generation>>,
    ids: Arc<AtomicU64>,
    limits: CrossPoolLimits,
}

impl ServerManager {
    pub fn new(
        key: PoolKey,
        target: BackendTarget,
        current: Arc<ArcSwap<Generation>>,
        ids: Arc<AtomicU64>,
        limits: CrossPoolLimits,
    ) -> Self {
        ServerManager {
            key,
            target,
            current,
            ids,
            limits,
        }
    }

    pub fn target(&self) -> &BackendTarget {
        &self.target
    }
}

impl Manager for ServerManager {
    type Type = ServerConn;
    type Error = BackendError;

    async fn create(&self) -> Result<ServerConn, BackendError> {
        let generation = self.current.load_full();
        let config = &generation.config;
        let max_db = config
            .database(&self.key.database)
            .and_then(|d| d.max_db_connections)
            .unwrap_or(config.max_db_connections);
        let permits = self
            .limits
            .acquire(&self.key, max_db, config.max_user_connections)
            .await?;
        let mut conn = connect(
            &self.target,
            ConnectOptions {
                sslmode: generation.config.server_tls_sslmode,
                tls: generation.tls.connector.as_ref(),
                tls_epoch: generation.tls_epoch,
                timeout: generation.config.server_connect_timeout.duration(),
                id: self.ids.fetch_add(1, Ordering::Relaxed),
            },
        )
        .await?;
        conn.permits = permits;
        tracing::debug!(
            server_id = conn.id,
            server = %self.target.addr_string(),
            database = %self.target.dbname,
            user = %self.target.user,
            tls = conn.tls.as_ref().map(|t| t.version.as_str()).unwrap_or("off"),
            "server connection established"
        );
        Ok(conn)
    }

    async fn recycle(
        &self,
        conn: &mut ServerConn,
        metrics: &Metrics,
    ) -> RecycleResult<BackendError> {
        let generation = self.current.load();
        let config = &generation.config;
        if conn.tls_epoch != generation.tls_epoch {
            return Err(RecycleError::message("TLS configuration reloaded"));
        }
        // 0 means "use once", as in PgBouncer: any connection that served a client is too old.
        if metrics.age() > config.server_lifetime.duration() {
            return Err(RecycleError::message("server_lifetime reached"));
        }
        let idle = metrics.last_used();
        if config
            .server_idle_timeout
            .non_zero()
            .is_some_and(|max| idle > max)
        {
            return Err(RecycleError::message("server_idle_timeout reached"));
        }
        if !conn.is_quiet() {
            return Err(RecycleError::message(
                "server sent data or closed while idle",
            ));
        }
        let check_query = config.server_check_query.trim();
        if !check_query.is_empty() && idle > config.server_check_delay.duration() {
            conn.simple_query(check_query)
                .await
                .map_err(RecycleError::Backend)?;
        }
        Ok(())
    }
}
