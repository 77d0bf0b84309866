//! Starting and stopping: build the first generation (config, TLS, auth_file), bind the
//! listener, accept clients, reload on SIGHUP (the new generation is fully loaded before it
//! replaces the old; a bad one changes nothing), serve metrics, and stop:
//!
//! - SIGINT or the console's SHUTDOWN drain: stop accepting, let transactions in flight
//!   finish up to shutdown_timeout (idle clients are closed at once), then close;
//! - SIGTERM waits for the clients to leave (PgBouncer 1.23's meaning): stop accepting at
//!   once (with so_reuseport another process on the port takes the new connections), keep
//!   serving the connected clients, transactions and all, until they disconnect or
//!   shutdown_timeout passes; then drain as above, briefly;
//! - a second signal closes at once.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigErrors};
use crate::frontend::Door;
use crate::generation::{LoadError, load_generation, log_certificate_expiry};
use crate::reload::reload;
use crate::state::Shared;
use crate::workers::Workers;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    // Transparent: main prints the whole source chain, so "{0}" plus the source would say
    // everything twice.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
}

const WATCH_PERIOD: Duration = Duration::from_secs(2);

/// Modification times and sizes of every file a reload would re-read.
fn watched_files_stamp(config: &Config) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut files = vec![
        &config.source,
        &config.auth_file,
        &config.auth_hba_file,
        &config.auth_ident_file,
        &config.client_tls_cert_file,
        &config.client_tls_key_file,
        &config.client_tls_ca_file,
        &config.client_tls_crl_file,
        &config.server_tls_ca_file,
        &config.server_tls_cert_file,
        &config.server_tls_key_file,
        &config.server_tls_crl_file,
    ];
    for entry in config.databases.values() {
        files.extend([
            &entry.server_tls_ca_file,
            &entry.server_tls_cert_file,
            &entry.server_tls_key_file,
        ]);
    }
    let stamp = |path: &std::path::Path, hasher: &mut std::collections::hash_map::DefaultHasher| {
        if let Ok(meta) = std::fs::metadata(path) {
            meta.modified().ok().hash(hasher);
            meta.len().hash(hasher);
        }
    };
    for path in files.into_iter().flatten() {
        stamp(path, &mut hasher);
        // A CRL directory: every file in it (a new CRL may replace one in place).
        if path.is_dir()
            && let Ok(entries) = std::fs::read_dir(path)
        {
            let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for file in paths {
                file.hash(&mut hasher);
                stamp(&file, &mut hasher);
            }
        }
    }
    hasher.finish()
}

/// A bound, ready-to-serve pgmoat.
pub struct Server {
    listener: TcpListener,
    /// peer_listen_port's listener: this process only, kept open until it exits, so its
    /// peers can reach it with cancels for the clients it still serves.
    peer_listener: Option<TcpListener>,
    /// The metrics_addr listener, when configured.
    metrics: Option<TcpListener>,
    shared: Arc<Shared>,
}

async fn bind(addr: &str) -> Result<TcpListener, StartError> {
    bind_with(addr, false).await
}

/// How many connections may wait in the kernel for an accept.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds `addr` (its first address), with SO_REUSEPORT when asked. SO_REUSEADDR as always,
/// so a restart does not wait for old connections in TIME_WAIT.
async fn bind_with(addr: &str, reuse_port: bool) -> Result<TcpListener, StartError> {
    let bind_error = |source| StartError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let resolved = tokio::net::lookup_host(addr)
        .await
        .map_err(bind_error)?
        .next()
        .ok_or_else(|| {
            bind_error(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the name resolves to no address",
            ))
        })?;
    let socket = if resolved.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(bind_error)?;
    socket.set_reuseaddr(true).map_err(bind_error)?;
    if reuse_port {
        socket.set_reuseport(true).map_err(bind_error)?;
    }
    socket.bind(resolved).map_err(bind_error)?;
    socket.listen(LISTEN_BACKLOG).map_err(bind_error)
}

/// How long clients still in a transaction get after SIGTERM's wait for clients is over.
const LAST_TRANSACTIONS_GRACE: Duration = Duration::from_secs(5);

/// What ends the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM: wait for the clients to leave first.
    WaitForClients,
    /// SIGINT, SHUTDOWN: let transactions finish, close idle clients now.
    Drain,
}

impl Server {
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        crate::tls::install_default_provider();
        let addr = format!("{}:{}", config.listen_addr, config.listen_port);
        let metrics_addr = config.metrics_addr.clone();
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let generation = load_generation(config, None)?;
        log_certificate_expiry(&generation);
        let listener = bind_with(&addr, generation.config.so_reuseport).await?;
        let peer_listener = match generation.config.peer_listen_port {
            0 => None,
            port => Some(bind(&format!("{}:{port}", generation.config.listen_addr)).await?),
        };
        let metrics = match metrics_addr.as_deref() {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Server {
            listener,
            peer_listener,
            metrics,
            shared: Shared::new(generation),
        })
    }

    /// Where /metrics is served, if metrics_addr is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until SIGTERM / SIGINT (or SHUTDOWN on the console), reloading on SIGHUP.
    pub async fn run(mut self) -> Result<(), StartError> {
        let mut hangup = signal(SignalKind::hangup()).map_err(StartError::Signals)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
        raise_open_file_limit(&self.shared.snapshot().config);
        let addr = self.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(listen = %addr, "pgmoat is accepting connections");
        if let Some(listener) = self.metrics.take() {
            tokio::spawn(crate::metrics::serve(listener, self.shared.clone()));
        }
        let tracker = TaskTracker::new();
        let workers =
            Arc::new(Workers::start(self.shared.pools.workers()).map_err(StartError::Workers)?);
        tracing::info!(worker_threads = workers.count(), "workers started");
        let shared = self.shared.clone();
        tokio::spawn(async move {
            crate::pool::run_janitor(
                &shared.pools,
                &shared.current,
                &shared.shutdown,
                &shared.stats,
            )
            .await
        });
        // Certificates are checked at start, at each reload, and daily.
        let mut daily = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(86_400),
            Duration::from_secs(86_400),
        );
        // watch_files: poll modification times (follows symlinks, so a Kubernetes secret
        // volume's atomic symlink swap is seen too).
        let mut watch = tokio::time::interval(WATCH_PERIOD);
        let mut last_stamp: Option<u64> = None;
        let mut accept_errors = AcceptErrors::default();
        let peer_accepts = self.peer_listener.take().map(|listener| {
            // Its own accept loop: it stays open through SIGTERM's wait for clients.
            let (shared, tracker, workers) =
                (self.shared.clone(), tracker.clone(), workers.clone());
            tokio::spawn(async move {
                let mut errors = AcceptErrors::default();
                loop {
                    match listener.accept().await {
                        Ok((tcp, peer)) => {
                            hand_to_worker(tcp, peer, Door::Peers, &shared, &workers, &tracker)
                        }
                        Err(e) => {
                            errors.note(&e);
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                        }
                    }
                }
            })
        });
        let stop = loop {
            tokio::select! {
                _ = daily.tick() => log_certificate_expiry(&self.shared.snapshot()),
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => hand_to_worker(tcp, peer, Door::Clients, &self.shared, &workers, &tracker),
                    // Out of file descriptors and the like: back off instead of spinning
                    // (connected clients are served meanwhile; new ones wait in the
                    // backlog), and say so at most once a second.
                    Err(e) => {
                        accept_errors.note(&e);
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                _ = hangup.recv() => { let _ = reload(&self.shared); }
                _ = watch.tick() => {
                    let generation = self.shared.snapshot();
                    if generation.config.watch_files {
                        let now = watched_files_stamp(&generation.config);
                        if last_stamp.is_some_and(|last| last != now) {
                            tracing::info!("watch_files: a certificate, key, auth or config file changed; reloading");
                            let _ = reload(&self.shared);
                        }
                        last_stamp = Some(now);
                    } else {
                        last_stamp = None;
                    }
                }
                // Not accepting from here on (/health says so) before the log says it.
                _ = terminate.recv() => { self.shared.stopped_accepting.cancel(); tracing::info!("SIGTERM: shutting down once the clients have left"); break Stop::WaitForClients; }
                _ = interrupt.recv() => { self.shared.stopped_accepting.cancel(); tracing::info!("SIGINT: shutting down"); break Stop::Drain; }
                _ = self.shared.shutdown.cancelled() => { tracing::info!("SHUTDOWN from the admin console: shutting down"); break Stop::Drain; }
            }
        };
        self.shared.stopped_accepting.cancel();
        if stop == Stop::WaitForClients {
            // Connections the kernel already queued here are served, not reset (with
            // so_reuseport, the queue of a closed listener is lost unless the kernel moves
            // it: net.ipv4.tcp_migrate_req).
            // Only what is queued now: polled without waiting, and at most a backlog's worth
            // (connections that keep arriving would otherwise keep it open).
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            for _ in 0..LISTEN_BACKLOG {
                match self.listener.poll_accept(&mut cx) {
                    std::task::Poll::Ready(Ok((tcp, peer))) => {
                        hand_to_worker(tcp, peer, Door::Clients, &self.shared, &workers, &tracker)
                    }
                    _ => break,
                }
            }
        }
        drop(self.listener);
        tracker.close();
        let timeout = self.shared.snapshot().config.shutdown_timeout.duration();
        let mut at_once = false;
        if stop == Stop::WaitForClients {
            tracing::info!(clients = tracker.len(), shutdown_timeout = ?timeout, "no longer accepting; waiting for the connected clients to leave");
            tokio::select! {
                _ = tracker.wait() => tracing::info!("all clients left"),
                _ = tokio::time::sleep(timeout) => tracing::warn!(shutdown_timeout = ?timeout, clients = tracker.len(), "shutdown_timeout reached; closing the clients still connected once their transactions end"),
                _ = terminate.recv() => { tracing::warn!("second signal: closing at once"); at_once = true; }
                _ = interrupt.recv() => { tracing::warn!("second signal: closing at once"); at_once = true; }
            }
        }
        self.shared.shutdown.cancel();
        let grace = match stop {
            Stop::Drain => timeout,
            Stop::WaitForClients => LAST_TRANSACTIONS_GRACE.min(timeout),
        };
        if !at_once && !tracker.is_empty() {
            tokio::select! {
                _ = tracker.wait() => tracing::info!("all clients finished"),
                _ = tokio::time::sleep(grace) => match stop {
                    Stop::Drain => tracing::warn!(shutdown_timeout = ?grace, "shutdown_timeout reached; closing remaining clients"),
                    Stop::WaitForClients => tracing::warn!(waited = ?grace, "closing remaining clients"),
                },
                _ = terminate.recv() => tracing::warn!("second signal: closing at once"),
                _ = interrupt.recv() => tracing::warn!("second signal: closing at once"),
            }
        }
        if let Some(task) = peer_accepts {
            task.abort();
            let _ = task.await;
        }
        // Stops the workers; clients still there are cut off with their tasks.
        drop(workers);
        Ok(())
    }
}

/// How long the accept loop pauses after a failed accept (EMFILE, ENFILE, ENOBUFS).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Failed accepts, logged at most once a second with how many there were since.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<std::time::Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    fn note(&mut self, error: &std::io::Error) {
        self.unlogged += 1;
        let due = self
            .last_logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if due {
            let hint = match error.raw_os_error() {
                Some(code) if code == rustix::io::Errno::MFILE.raw_os_error() => {
                    "pgmoat is out of file descriptors: raise its open-file limit (ulimit -n, LimitNOFILE=) or lower max_client_conn / max_pending_logins"
                }
                Some(code) if code == rustix::io::Errno::NFILE.raw_os_error() => {
                    "the system is out of file descriptors (fs.file-max)"
                }
                _ => "",
            };
            tracing::error!(error = %error, failed_accepts = self.unlogged, hint, "accept failed; serving connected clients, new ones wait");
            self.last_logged = Some(std::time::Instant::now());
            self.unlogged = 0;
        }
    }
}

/// Raises the soft open-file limit to the hard one: every client and server connection is a
/// descriptor, and the common default of 1024 would run out long before max_client_conn
/// plus the pools and pending logins. Logged, with a warning when even the hard limit
/// looks too small for the configuration.
fn raise_open_file_limit(config: &crate::config::Config) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        return;
    };
    let target = hard.unwrap_or(1 << 20).min(1 << 20);
    let mut now = soft;
    if target > soft {
        let raised = rustix::process::Rlimit {
            current: Some(target),
            maximum: hard,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                now = target;
                tracing::debug!(from = soft, to = target, "raised the open-file limit");
            }
            Err(e) => tracing::debug!(error = %e, "could not raise the open-file limit"),
        }
    }
    let pools: usize = config
        .databases
        .values()
        .map(|d| d.pool_size.unwrap_or(config.default_pool_size))
        .sum();
    let wanted = (config.max_client_conn + config.max_pending_logins + pools + 64) as u64;
    if now < wanted {
        tracing::warn!(
            open_file_limit = now,
            wanted,
            "the open-file limit is below max_client_conn + max_pending_logins + the pools; accepts will fail with EMFILE before those limits are reached"
        );
    }
}

/// Moves an accepted connection to the next worker's event loop and starts its session
/// there.
fn hand_to_worker(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    door: Door,
    shared: &Arc<Shared>,
    workers: &Workers,
    tracker: &TaskTracker,
) {
    // Deregistered here, registered again by the worker: a socket belongs to one loop.
    let std = match tcp.into_std() {
        Ok(std) => std,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "could not hand a new connection to a worker");
            return;
        }
    };
    let (worker, handle) = workers.next();
    let shared = shared.clone();
    tracker.spawn_on(
        async move {
            match tokio::net::TcpStream::from_std(std) {
                Ok(tcp) => crate::frontend::handle_client(tcp, peer, shared, worker, door).await,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "worker could not take a new connection")
                }
            }
        },
        handle,
    );
}
