//! Periodic upkeep of the pools (PgBouncer's janitor): apply pool sizes after a reload,
//! close idle connections past server_idle_timeout or server_lifetime, or made with a TLS
//! configuration a reload replaced, without waiting for a client to trip over them, and keep
//! min_pool_size connections open.

use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::{PoolRegistry, retire_reason};
use crate::generation::Generation;

const PERIOD: Duration = Duration::from_secs(1);

pub async fn run_janitor(
    pools: &PoolRegistry,
    current: &ArcSwap<Generation>,
    shutdown: &CancellationToken,
    stats: &crate::stats::Stats,
) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let generation = current.load_full();
        let config = &generation.config;
        // Pools a reload made obsolete are retired here too, should a reload have raced
        // with a session creating one.
        pools.apply(&generation);
        if let Some(idle) = config.autodb_idle_timeout.non_zero() {
            for key in pools.expire_auto_pools(&generation, idle) {
                stats.forget_pool(&key);
            }
        }
        for pool in pools.all() {
            // The same checks as at checkout, for connections nobody takes: a rotated
            // certificate reaches PostgreSQL without waiting for a client.
            pool.pool
                .retain(|conn, metrics| retire_reason(conn, &metrics, &generation).is_none());
            let status = pool.pool.status();
            let min = pool.share.of(config.min_pool_size.min(pool.settings.size));
            if status.size < min && !pool.prewarming.swap(true, Ordering::AcqRel) {
                let share = pool.clone();
                let pool = pool.clone();
                // Opened where the share's clients run, so its connections are theirs.
                share.spawn_at_home(async move {
                    // Take up to min_pool_size connections at once, without waiting for busy
                    // ones: a checkout hands back idle connections first, so only holding
                    // them all makes the pool open the missing ones.
                    let no_wait = deadpool::managed::Timeouts {
                        wait: Some(Duration::ZERO),
                        ..pool.pool.timeouts()
                    };
                    let mut held = Vec::with_capacity(min);
                    for _ in 0..min {
                        match pool.pool.timeout_get(&no_wait).await {
                            Ok(conn) => held.push(conn),
                            Err(deadpool::managed::PoolError::Timeout(_)) => break,
                            Err(e) => {
                                tracing::warn!(database = ?pool.key.database, error = ?e, "could not open a min_pool_size connection");
                                break;
                            }
                        }
                    }
                    drop(held);
                    pool.prewarming.store(false, Ordering::Release);
                });
            }
        }
    }
}
