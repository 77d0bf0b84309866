//! State shared by every connection: the reloadable generation (config, TLS, auth_file)
//! behind one `ArcSwap`, the pools, the cancel registry, statistics, metrics and the PAUSE
//! gate. A connection takes one snapshot of the generation when it starts and keeps it, so a
//! reload never changes a handshake half-way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::admin::PauseGate;
use crate::auth::UserList;
use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pool::PoolRegistry;
use crate::stats::Stats;
use crate::tls::TlsState;

/// Everything a reload replaces, validated as a whole before it is swapped in.
pub struct Generation {
    pub id: u64,
    pub config: Arc<Config>,
    pub tls: Arc<TlsState>,
    /// Changes only when the TLS material towards PostgreSQL changes, so idle server
    /// connections are retired only when they were made with old certificates.
    pub tls_epoch: u64,
    /// Digest of the PostgreSQL-facing TLS files as they were read for this generation.
    pub server_tls_fingerprint: u64,
    pub users: Arc<UserList>,
    pub scram_cache: crate::frontend::ScramCache,
}

pub struct Shared {
    pub current: Arc<ArcSwap<Generation>>,
    pub pools: PoolRegistry,
    pub cancel: CancelRegistry,
    pub clients: AtomicUsize,
    ids: Arc<AtomicU64>,
    pub shutdown: CancellationToken,
    pub stats: Stats,
    pub metrics: Metrics,
    pub pause: PauseGate,
    /// Key for the fake SCRAM secrets of unknown users (random per process).
    pub mock_key: [u8; 32],
}

impl Shared {
    pub fn new(generation: Generation) -> Arc<Shared> {
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
            cancel: CancelRegistry::default(),
            clients: AtomicUsize::new(0),
            ids,
            shutdown: CancellationToken::new(),
            stats,
            metrics: Metrics::default(),
            pause: PauseGate::default(),
            mock_key: rand::random(),
        })
    }

    pub fn snapshot(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }
}
