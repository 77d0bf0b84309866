//! deadpool's Manager for server connections: how one is made and when one is too old,
//! too idle or too stale to hand out again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use deadpool::managed::{Manager, Metrics, RecycleError, RecycleResult};

use super::{CrossPoolLimits, PoolKey};
use crate::backend::{
    BackendError, BackendTarget, CloseReason, ConnectOptions, ServerConn, ServerState, connect,
};
use crate::generation::Generation;
use crate::stats::{Registry, ServerEntry, TlsSummary};

pub struct ServerManager {
    key: PoolKey,
    target: BackendTarget,
    current: Arc<ArcSwap<Generation>>,
    ids: Arc<AtomicU64>,
    limits: CrossPoolLimits,
    /// The pool's key and the registry its connections are listed in (SHOW SERVERS).
    registry: Option<(PoolKey, Arc<Registry<ServerEntry>>)>,
}

/// RECONNECT was issued for this connection: close it rather than reuse it.
pub fn close_needed(conn: &ServerConn) -> bool {
    conn.registration.as_ref().is_some_and(|r| r.close_needed())
}

/// Why a connection must not be lent again, from what pgmoat knows without asking the
/// server: checked at checkout, when it is handed back, and by the janitor for connections
/// nobody takes.
pub fn retire_reason(
    conn: &ServerConn,
    metrics: &Metrics,
    generation: &Generation,
) -> Option<CloseReason> {
    let config = &generation.config;
    if conn.tls_epoch != generation.tls_epoch {
        return Some(CloseReason::TlsReloaded);
    }
    if close_needed(conn) {
        return Some(CloseReason::Reconnect);
    }
    // 0 means "use once", as in PgBouncer: any connection that served a client is too old.
    if metrics.age() > config.server_lifetime.duration() {
        return Some(CloseReason::Lifetime);
    }
    // Measured from when it went idle, so only for connections in the idle set.
    if conn.state() == ServerState::Idle
        && config
            .server_idle_timeout
            .non_zero()
            .is_some_and(|max| conn.idle_since.elapsed() > max)
    {
        return Some(CloseReason::IdleTimeout);
    }
    None
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
            registry: None,
        }
    }

    /// Lists every connection this manager makes under `key` in `registry`.
    pub fn registering_in(mut self, key: PoolKey, registry: Arc<Registry<ServerEntry>>) -> Self {
        self.registry = Some((key, registry));
        self
    }

    pub fn target(&self) -> &BackendTarget {
        &self.target
    }

    pub fn current(&self) -> Arc<ArcSwap<Generation>> {
        self.current.clone()
    }
}

impl Manager for ServerManager {
    type Type = ServerConn;
    type Error = BackendError;

    async fn create(&self) -> Result<ServerConn, BackendError> {
        // Boxed: deadpool's checkout future holds this one inline, and with it every waiting
        // or active client's task would carry the whole connect-and-login state (kilobytes)
        // although connections are made rarely.
        Box::pin(self.connect_new()).await
    }

    async fn recycle(
        &self,
        conn: &mut ServerConn,
        metrics: &Metrics,
    ) -> RecycleResult<BackendError> {
        let generation = self.current.load();
        let config = &generation.config;
        // Only a connection that went through the proof is in the idle set; anything else
        // here is a bug, and is closed rather than lent.
        if conn.state() != ServerState::Idle {
            tracing::error!(server_id = conn.id, state = %conn.state(), "a server in the idle set is not idle; closing it");
            return Err(RecycleError::message(CloseReason::Bug.as_str()));
        }
        if let Some(reason) = retire_reason(conn, metrics, &generation) {
            return Err(RecycleError::message(reason.as_str()));
        }
        let idle = conn.idle_since.elapsed();
        if !conn.is_quiet() {
            return Err(RecycleError::message(CloseReason::StrayData.as_str()));
        }
        let check_query = config.server_check_query.trim();
        if !check_query.is_empty() && idle > config.server_check_delay.duration() {
            // Boxed for the same reason as `create`: rare, and not worth carrying inline.
            Box::pin(conn.simple_query(check_query))
                .await
                .map_err(RecycleError::Backend)?;
        }
        Ok(())
    }
}

impl ServerManager {
    async fn connect_new(&self) -> Result<ServerConn, BackendError> {
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
        let server_tls = generation.tls.server_for_entry(&self.target.entry);
        let mut conn = connect(
            &self.target,
            ConnectOptions {
                sslmode: server_tls.sslmode,
                channel_binding: generation.config.server_channel_binding,
                tls: server_tls.connector.as_ref(),
                tls_epoch: generation.tls_epoch,
                timeout: generation.config.server_connect_timeout.duration(),
                id: self.ids.fetch_add(1, Ordering::Relaxed),
            },
        )
        .await?;
        conn.permits = permits;
        if let Some((key, registry)) = &self.registry {
            // The client certificate on this connection is the one pgmoat presents.
            let own_cert = generation
                .tls
                .certs
                .iter()
                .find(|c| c.setting == "server_tls_cert_file");
            let tls = conn.tls.as_ref().map(|info| TlsSummary {
                version: info.version.clone(),
                cipher: info.cipher.clone(),
                cert_subject: own_cert.map(|c| c.subject.clone()),
                cert_not_after: own_cert.map(|c| c.not_after),
            });
            let entry = ServerEntry::new(
                conn.id,
                key.clone(),
                conn.addr,
                conn.stream.tcp().local_addr().ok(),
                conn.key.pid,
                tls,
            );
            conn.registration = Some(registry.register(conn.id, entry));
        }
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
}
