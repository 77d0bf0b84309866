//! deadpool's Manager for server connections: how one is made and when one is too old,
//! too idle or too stale to hand out again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use deadpool::managed::{Manager, Metrics, RecycleError, RecycleResult};

use super::hosts::try_order;
use super::{CrossPoolLimits, PoolKey};
use crate::backend::{
    BackendError, BackendTarget, CloseReason, ConnectOptions, HostChange, HostHealth, ServerConn,
    ServerRole, ServerState, connect,
};
use crate::config::{LoadBalanceHosts, TargetSessionAttrs};
use crate::generation::Generation;
use crate::stats::{Registry, ServerEntry, TlsSummary};

tokio::task_local! {
    /// When the client a checkout is for stops waiting (its query_wait_timeout), for the
    /// logins that checkout starts: no round over the hosts begins after it.
    pub(super) static CLIENT_GIVES_UP: Option<Instant>;
    /// Set while a checkout borrows from another worker's share: only an idle server may
    /// be taken, never a new one made (it would be registered on the borrower's event loop
    /// but live in the other share for good).
    pub(super) static IDLE_ONLY: ();
}

pub struct ServerManager {
    key: PoolKey,
    target: BackendTarget,
    /// The entry's hosts: where each logs in (`target` with that host and port) and its
    /// shared health record.
    hosts: Vec<(Arc<BackendTarget>, Arc<HostHealth>)>,
    attrs: TargetSessionAttrs,
    balance: LoadBalanceHosts,
    /// round-robin's position.
    turn: AtomicUsize,
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
    if let Some(reason) = conn.host_retired() {
        if reason == CloseReason::RoleChanged
            && let (Some((host, _)), Some(role)) = (&conn.host, conn.role)
            && let Some(was) = host.role_changed(role)
        {
            tracing::warn!(host = %host.addr_string(), was = %was.name(), "a server's role changed (in_hot_standby): its connections there are retired and the host is checked again");
        }
        return Some(reason);
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
        let host = Arc::new(HostHealth::new(target.host.clone(), target.port));
        ServerManager {
            hosts: vec![(Arc::new(target.clone()), host)],
            attrs: TargetSessionAttrs::Any,
            balance: LoadBalanceHosts::default(),
            turn: AtomicUsize::new(0),
            key,
            target,
            current,
            ids,
            limits,
            registry: None,
        }
    }

    /// Logs in on these hosts (the entry's list, with their shared health records) instead
    /// of the target's one host, picking servers that suit `attrs`.
    pub fn on_hosts(
        mut self,
        hosts: Vec<Arc<HostHealth>>,
        attrs: TargetSessionAttrs,
        balance: LoadBalanceHosts,
    ) -> Self {
        self.hosts = hosts
            .into_iter()
            .map(|h| {
                let target = BackendTarget {
                    host: h.host.clone(),
                    port: h.port,
                    ..self.target.clone()
                };
                (Arc::new(target), h)
            })
            .collect();
        self.attrs = attrs;
        self.balance = balance;
        self
    }

    /// Lists every connection this manager makes under `key` in `registry`.
    pub fn registering_in(mut self, key: PoolKey, registry: Arc<Registry<ServerEntry>>) -> Self {
        self.registry = Some((key, registry));
        self
    }

    /// A host list, or a target_session_attrs to satisfy: logins may take rounds.
    pub fn tries_hosts(&self) -> bool {
        self.hosts.len() > 1 || self.attrs != TargetSessionAttrs::Any
    }

    /// What each host of the entry is, in words (`127.0.0.1:5432 is down, ...`).
    pub fn host_summary(&self) -> String {
        self.hosts
            .iter()
            .map(|(_, h)| format!("{} is {}", h.addr_string(), h.status().0.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// No host gave a server that suits; `found` says what each one was.
    pub fn no_suitable_host(&self, found: String) -> BackendError {
        BackendError::NoSuitableHost {
            hosts: self
                .hosts
                .iter()
                .map(|(t, _)| t.addr_string())
                .collect::<Vec<_>>()
                .join(","),
            wanted: self.attrs.as_str(),
            found,
        }
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
        if IDLE_ONLY.try_with(|_| ()).is_ok() {
            return Err(BackendError::NothingIdle);
        }
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

/// What one round over the hosts ended with.
enum RoundEnd {
    Found(Box<ServerConn>),
    /// Nothing suitable; `answered` when some host logged in but was not what is wanted (a
    /// standby not promoted yet): a failover may be under way, worth another round.
    Failed {
        error: BackendError,
        answered: bool,
    },
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
        // Rounds end when the checkout that asked gives up (deadpool drops this future at
        // its create timeout, which is the client's remaining query_wait_timeout).
        let retry = config.server_login_retry.duration();
        // No round starts after the asking client would have given up waiting (what it has
        // left; a connection made for no client, min_pool_size, gets the whole timeout).
        let give_up = CLIENT_GIVES_UP.try_with(|at| *at).unwrap_or_else(|_| {
            config
                .query_wait_timeout
                .non_zero()
                .map(|limit| Instant::now() + limit)
        });
        let mut round = 0u32;
        let mut conn = loop {
            round += 1;
            match self.round(&generation).await {
                RoundEnd::Found(conn) => break *conn,
                RoundEnd::Failed {
                    error,
                    answered: true,
                } if self.tries_hosts() && give_up.is_none_or(|at| Instant::now() + retry < at) => {
                    tracing::info!(database = %self.key.database, round, error = %error, retry_in = retry.as_secs_f64(), "no suitable server yet; trying the hosts again after server_login_retry");
                    tokio::time::sleep(retry.max(Duration::from_millis(10))).await;
                }
                RoundEnd::Failed { error, .. } => return Err(error),
            }
        };
        conn.permits = permits;
        self.register(&mut conn, &generation);
        tracing::debug!(
            server_id = conn.id,
            server = %conn.endpoint.as_ref().map(|t| t.addr_string()).unwrap_or_default(),
            database = %self.target.dbname,
            user = %self.target.user,
            role = conn.role.map(|r| r.name()).unwrap_or("not asked"),
            tls = conn.tls.as_ref().map(|t| t.version.as_str()).unwrap_or("off"),
            "server connection established"
        );
        Ok(conn)
    }

    /// Tries every host once, likeliest first; a server that does not suit is closed.
    async fn round(&self, generation: &Arc<Generation>) -> RoundEnd {
        let mut second_choice: Option<ServerConn> = None;
        let mut answered = false;
        let mut last_error = None;
        let mut found = Vec::new();
        for index in try_order(
            &self
                .hosts
                .iter()
                .map(|(_, h)| h.clone())
                .collect::<Vec<_>>(),
            self.attrs,
            self.balance,
            &self.turn,
        ) {
            let (target, host) = &self.hosts[index];
            match self.login_at(target, host, generation).await {
                Ok(conn) => {
                    let role = conn.role;
                    let suits = role.is_none_or(|r| r.suits(self.attrs));
                    if suits && !role.is_some_and(|r| r.second_choice(self.attrs)) {
                        return RoundEnd::Found(Box::new(conn));
                    }
                    answered = true;
                    found.push(format!(
                        "{} is {}",
                        host.addr_string(),
                        role.map(|r| r.name()).unwrap_or("unknown")
                    ));
                    if suits && second_choice.is_none() {
                        second_choice = Some(conn);
                    }
                }
                Err(e) => {
                    found.push(format!("{} failed", host.addr_string()));
                    last_error = Some(e);
                }
            }
        }
        if let Some(conn) = second_choice {
            return RoundEnd::Found(Box::new(conn));
        }
        let error = match last_error {
            Some(e) if !answered => e,
            _ => self.no_suitable_host(found.join(", ")),
        };
        RoundEnd::Failed { error, answered }
    }

    /// One login on one host, with its role learnt and its health record updated.
    async fn login_at(
        &self,
        target: &Arc<BackendTarget>,
        host: &Arc<HostHealth>,
        generation: &Arc<Generation>,
    ) -> Result<ServerConn, BackendError> {
        let config = &generation.config;
        // Read before connecting: a failure there while this login runs retires it too.
        let failures = host.failures();
        let server_tls = generation.tls.server_for_entry(&self.target.entry);
        let started = Instant::now();
        let attempt = async {
            let mut conn = connect(
                target,
                ConnectOptions {
                    sslmode: server_tls.sslmode,
                    channel_binding: config.server_channel_binding,
                    tls: server_tls.connector.as_ref(),
                    tls_epoch: generation.tls_epoch,
                    timeout: config.server_connect_timeout.duration(),
                    id: self.ids.fetch_add(1, Ordering::Relaxed),
                },
            )
            .await?;
            // Only pre-14 servers need a question, and only when the answer matters.
            if self.attrs != TargetSessionAttrs::Any
                || crate::backend::ServerRole::from_params(&conn.initial_params).is_some()
            {
                conn.role = Some(conn.learn_role().await?);
            }
            Ok::<_, BackendError>(conn)
        };
        match attempt.await {
            Ok(mut conn) => {
                if let Some(role) = conn.role
                    && let Some(change) = host.logged_in(role, started)
                {
                    log_login_change(host, &change, role);
                }
                conn.endpoint = Some(target.clone());
                conn.host = Some((host.clone(), failures));
                Ok(conn)
            }
            Err(e) => {
                // A refused login (TLS, credentials, settings) says nothing about the host's
                // health; unreachable, or PostgreSQL's own "not now" answers, do.
                if e.is_host_down()
                    && let Some(was) = host.failed(e.to_string())
                {
                    tracing::warn!(host = %host.addr_string(), was = %was.name(), error = %e, "host is down");
                }
                tracing::debug!(host = %host.addr_string(), error = %e, took_ms = started.elapsed().as_millis() as u64, "login attempt failed");
                Err(e)
            }
        }
    }

    fn register(&self, conn: &mut ServerConn, generation: &Generation) {
        let Some((key, registry)) = &self.registry else {
            return;
        };
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
        )
        .on_host(
            conn.endpoint
                .as_ref()
                .map(|t| t.addr_string())
                .unwrap_or_default(),
            conn.role.map(|r| r.name()).unwrap_or("not asked"),
        );
        conn.registration = Some(registry.register(conn.id, entry));
    }
}

/// One log line per change of what a host is: a promotion or demotion (warn), a host up
/// again or seen for the first time (info).
fn log_login_change(host: &HostHealth, change: &HostChange, role: ServerRole) {
    match change {
        HostChange::Role { was } => {
            tracing::warn!(host = %host.addr_string(), was = %was.name(), now = %role.name(), "host role changed")
        }
        HostChange::Up { was } => {
            tracing::info!(host = %host.addr_string(), was = %was.name(), role = %role.name(), "host is up")
        }
    }
}
