//! State shared by every connection: the reloadable generation (config, TLS, auth_file)
//! behind one `ArcSwap`, the pools, the cancel registry, statistics, metrics and the PAUSE
//! gate. A handshake uses one snapshot of the generation; a checkout uses the current one.
//! `Shared` only holds these handles: it imports the modules below it, never the ones that
//! use it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::cancel::CancelRegistry;
pub use crate::generation::Generation;
use crate::pool::PauseGate;
use crate::pool::PoolRegistry;
use crate::stats::Metrics;
use crate::stats::Stats;

pub struct Shared {
    pub current: Arc<ArcSwap<Generation>>,
    pub pools: PoolRegistry,
    pub cancel: CancelRegistry,
    /// Pending logins and logged-in clients (max_pending_logins, max_client_conn).
    pub admission: Arc<crate::admission::Admission>,
    ids: Arc<AtomicU64>,
    pub shutdown: CancellationToken,
    /// Set when pgmoat stops accepting (any way of stopping, SIGTERM's wait for clients
    /// included): /health and pgmoat_accepting say so, so a load balancer stops sending.
    pub stopped_accepting: CancellationToken,
    pub stats: Stats,
    pub metrics: Metrics,
    pub pause: PauseGate,
    /// Key for the fake SCRAM secrets of unknown users (random per process).
    pub mock_key: [u8; 32],
    /// Key for the names of prepared statements on servers (random per process), so a
    /// client cannot guess one and prepare other SQL under it.
    pub statement_key: [u8; 16],
}

impl Shared {
    pub fn new(generation: Generation) -> Arc<Shared> {
        let peer_id = generation.config.peer_id;
        let current = Arc::new(ArcSwap::from_pointee(generation));
        let ids = Arc::new(AtomicU64::new(1));
        let stats = Stats::default();
        Arc::new(Shared {
            pools: PoolRegistry::new(
                current.clone(),
                ids.clone(),
                stats.servers.clone(),
                crate::workers::resolve_count(current.load().config.worker_threads),
            ),
            current,
            cancel: CancelRegistry::with_peer_id(peer_id),
            admission: Arc::default(),
            ids,
            shutdown: CancellationToken::new(),
            stopped_accepting: CancellationToken::new(),
            stats,
            metrics: Metrics::default(),
            pause: PauseGate::default(),
            mock_key: rand::random(),
            statement_key: rand::random(),
        })
    }

    /// Whether new clients are taken: not once any way of stopping began.
    pub fn accepting(&self) -> bool {
        !self.stopped_accepting.is_cancelled() && !self.shutdown.is_cancelled()
    }

    pub fn snapshot(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }
}
