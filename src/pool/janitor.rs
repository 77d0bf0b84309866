//! Periodic upkeep of the pools (PgBouncer's janitor): apply pool sizes after a reload,
//! close idle connections past server_idle_timeout or server_lifetime without waiting for a
//! client to trip over them, and keep min_pool_size connections open.

use std::sync::Arc;
use std::time::Duration;

use super::PoolSettings;
use crate::state::Shared;

const PERIOD: Duration = Duration::from_secs(1);

pub async fn run_janitor(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        let generation = shared.snapshot();
        let config = &generation.config;
        for pool in shared.pools.all() {
            if let Some(settings) = PoolSettings::resolve(
                config,
                &generation.users,
                &pool.key.database,
                &pool.key.user,
            ) && settings.target == pool.settings.target
            {
                pool.resize(settings.size, settings.reserve_size);
            }
            let idle_timeout = config.server_idle_timeout.non_zero();
            let lifetime = config.server_lifetime.duration();
            pool.pool.retain(|_, metrics| {
                let too_idle = idle_timeout.is_some_and(|t| metrics.last_used() > t);
                !(too_idle || metrics.age() > lifetime)
            });
            let status = pool.pool.status();
            let min = config.min_pool_size.min(pool.settings.size);
            if status.size < min {
                let pool = pool.clone();
                tokio::spawn(async move {
                    // A checkout creates the connection; dropping it parks it idle.
                    if let Err(e) = pool.pool.get().await {
                        tracing::warn!(database = %pool.key.database, error = ?e, "could not open a min_pool_size connection");
                    }
                });
            }
        }
    }
}
