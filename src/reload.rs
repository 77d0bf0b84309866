//! SIGHUP, RELOAD and watch_files: re-read the config file and every TLS and auth file, swap
//! the new generation in only if all of it loads, and retire the pools it no longer produces.

use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, ConfigErrors};
use crate::generation::{LoadError, load_generation, log_certificate_expiry};
use crate::state::Shared;

/// Why a reload kept the previous configuration.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Re-reads the config file and every TLS and auth file. The new generation replaces the old
/// only if all of it loads; otherwise the old one keeps serving and the error is logged (and
/// returned, for the console's RELOAD).
pub fn reload(shared: &Shared) -> Result<(), ReloadError> {
    let current = shared.snapshot();
    let source = current.config.source.clone();
    let result = Config::load(source.as_deref(), std::env::vars())
        .map_err(ReloadError::from)
        .and_then(|config| {
            if (config.listen_addr.as_str(), config.listen_port)
                != (
                    current.config.listen_addr.as_str(),
                    current.config.listen_port,
                )
            {
                tracing::warn!(
                    "listen_addr / listen_port changed: takes effect only after a restart"
                );
            }
            if (config.so_reuseport, config.peer_listen_port)
                != (current.config.so_reuseport, current.config.peer_listen_port)
            {
                tracing::warn!(
                    "so_reuseport / peer_listen_port changed: takes effect only after a restart"
                );
            }
            if config.peer_id != current.config.peer_id {
                tracing::warn!("peer_id changed: takes effect only after a restart (the keys of connected clients name this one)");
            }
            if config.worker_threads != current.config.worker_threads {
                tracing::warn!("worker_threads changed: takes effect only after a restart");
            }
            load_generation(config, Some(&current)).map_err(ReloadError::from)
        });
    match result {
        Ok(generation) => {
            log_certificate_expiry(&generation);
            let tls_changed = generation.tls_epoch != current.tls_epoch;
            let generation = Arc::new(generation);
            shared.current.store(generation.clone());
            // Pools the new configuration no longer produces are retired now, not when a
            // client next asks: their idle servers close at once.
            shared.pools.apply(&generation);
            tracing::info!(
                tls_towards_postgresql_changed = tls_changed,
                "configuration reloaded"
            );
            shared.metrics.reloaded(true);
            Ok(())
        }
        Err(e) => {
            tracing::error!(config = %source.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_else(|| "environment".into()), error = %e, "reload failed; the previous configuration stays in effect");
            shared.metrics.reloaded(false);
            Err(e)
        }
    }
}
