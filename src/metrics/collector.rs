//! Numbers sampled at scrape time rather than kept as metrics: clients and servers by state
//! and the wait queue of each pool, the per-pool counters from `stats`, and the expiry of
//! every loaded certificate (which changes on reload).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::pool::PoolKey;
use crate::state::Shared;
use crate::stats::{Occupancy, Totals};

pub struct PoolCollector {
    shared: Arc<Shared>,
}

impl PoolCollector {
    pub fn new(shared: Arc<Shared>) -> Self {
        PoolCollector { shared }
    }
}

impl std::fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolCollector")
    }
}

fn pool_labels(key: &PoolKey) -> [(&'static str, &str); 2] {
    [("database", &key.database), ("user", &key.user)]
}

/// One gauge family: a descriptor, then one sample per label set.
fn gauges<'a, L: prometheus_client::encoding::EncodeLabelSet + 'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters<N: EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    totals: &BTreeMap<PoolKey, Totals>,
    value: impl Fn(&Totals) -> N,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (key, t) in totals {
        ConstCounter::new(value(t)).encode(metric.encode_family(&pool_labels(key))?)?;
    }
    Ok(())
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let occupancy = self.shared.stats.occupancy();
        let pools = self.shared.pools.all();
        let mut keys: BTreeMap<PoolKey, Occupancy> = occupancy.clone();
        for pool in &pools {
            keys.entry(pool.key.clone()).or_default();
        }

        let clients = keys.iter().flat_map(|(key, o)| {
            [
                // A pinned client holds its server: counted as pinned, not as active.
                ("active", o.cl_active.saturating_sub(o.cl_pinned)),
                ("pinned", o.cl_pinned),
                ("waiting", o.cl_waiting),
                ("idle", o.cl_idle),
            ]
            .map(|(state, n)| {
                (
                    [
                        ("database", key.database.as_str()),
                        ("user", key.user.as_str()),
                        ("state", state),
                    ],
                    count(n),
                )
            })
        });
        gauges(
            &mut encoder,
            "clients",
            "Client connections by pool and state.",
            clients,
        )?;
        let servers = keys.iter().flat_map(|(key, o)| {
            [
                ("active", o.sv_active),
                ("idle", o.sv_idle),
                ("being_canceled", o.sv_being_canceled),
                ("used", o.sv_used),
            ]
            .map(|(state, n)| {
                (
                    [
                        ("database", key.database.as_str()),
                        ("user", key.user.as_str()),
                        ("state", state),
                    ],
                    count(n),
                )
            })
        });
        gauges(
            &mut encoder,
            "servers",
            "Server connections by pool and state.",
            servers,
        )?;
        // A pool split into shares per worker is one pool here: its shares' figures add up.
        let mut sizes: BTreeMap<&PoolKey, (usize, usize)> = BTreeMap::new();
        let mut borrowed: BTreeMap<&PoolKey, u64> = BTreeMap::new();
        for p in &pools {
            let status = p.pool.status();
            let entry = sizes.entry(&p.key).or_default();
            entry.0 += status.waiting;
            entry.1 += status.max_size;
            *borrowed.entry(&p.key).or_default() += p.borrowed.load(Ordering::Relaxed);
        }
        gauges(
            &mut encoder,
            "wait_queue_length",
            "Checkouts waiting for a free server connection.",
            sizes
                .iter()
                .map(|(key, (waiting, _))| (pool_labels(key), count(*waiting))),
        )?;
        gauges(
            &mut encoder,
            "pool_size",
            "Maximum server connections of the pool.",
            sizes
                .iter()
                .map(|(key, (_, max))| (pool_labels(key), count(*max))),
        )?;

        {
            let mut metric = encoder.encode_descriptor(
                "pool_borrowed_servers",
                "Checkouts served by a server idle in another worker's share of the pool (the \
                 client's own share was at its limit).",
                None,
                MetricType::Counter,
            )?;
            for (key, n) in borrowed {
                ConstCounter::new(n).encode(metric.encode_family(&pool_labels(key))?)?;
            }
        }
        let totals = self.shared.stats.totals();
        let secs = |us: u64| us as f64 / 1e6;
        counters(
            &mut encoder,
            "transactions",
            "Transactions completed through pgmoat.",
            &totals,
            |t| t.xact_count,
        )?;
        counters(
            &mut encoder,
            "queries",
            "Queries (ReadyForQuery round trips) completed through pgmoat.",
            &totals,
            |t| t.query_count,
        )?;
        counters(
            &mut encoder,
            "received_bytes",
            "Bytes received from clients and forwarded to servers.",
            &totals,
            |t| t.bytes_received,
        )?;
        counters(
            &mut encoder,
            "sent_bytes",
            "Bytes sent to clients.",
            &totals,
            |t| t.bytes_sent,
        )?;
        counters(
            &mut encoder,
            "transaction_seconds",
            "Time servers spent in client transactions.",
            &totals,
            |t| secs(t.xact_time),
        )?;
        counters(
            &mut encoder,
            "query_seconds",
            "Time servers spent executing client queries.",
            &totals,
            |t| secs(t.query_time),
        )?;
        counters(
            &mut encoder,
            "server_assignments",
            "Times a server connection was given to a client.",
            &totals,
            |t| t.server_assignment_count,
        )?;

        let generation = self.shared.snapshot();
        gauges(
            &mut encoder,
            "certificate_not_after_seconds",
            "Expiry (Unix time) of every certificate pgmoat loaded.",
            generation.tls.certs.iter().map(|c| {
                (
                    [
                        ("setting", c.setting),
                        ("subject", c.subject.as_str()),
                        ("serial", c.serial.as_str()),
                    ],
                    c.not_after.unix_timestamp(),
                )
            }),
        )?;
        gauges(
            &mut encoder,
            "crl_next_update_seconds",
            "Next update (Unix time) of every CRL pgmoat loaded; a CRL without one is left out.",
            generation.tls.crls.iter().filter_map(|c| {
                let next = c.next_update?;
                Some((
                    [
                        ("setting", c.setting),
                        ("issuer", c.issuer.as_str()),
                        ("file", c.path.as_str()),
                    ],
                    next.unix_timestamp(),
                ))
            }),
        )?;
        gauges(
            &mut encoder,
            "crl_expired",
            "1 for a loaded CRL past its next update (see tls_crl_expired), else 0.",
            generation.tls.crls.iter().map(|c| {
                (
                    [
                        ("setting", c.setting),
                        ("issuer", c.issuer.as_str()),
                        ("file", c.path.as_str()),
                    ],
                    i64::from(c.is_expired()),
                )
            }),
        )?;
        let hosts = self.shared.pools.hosts.all();
        let addrs: Vec<String> = hosts.iter().map(|h| h.addr_string()).collect();
        gauges(
            &mut encoder,
            "host_up",
            "1 when the last login on a PostgreSQL host worked, 0 when it is down or not tried yet.",
            hosts
                .iter()
                .zip(&addrs)
                .map(|(h, addr)| ([("host", addr.as_str())], i64::from(h.role().is_some()))),
        )?;
        gauges(
            &mut encoder,
            "host_standby",
            "1 when a host that is up is a standby (in recovery), 0 when it is a primary.",
            hosts.iter().zip(&addrs).filter_map(|(h, addr)| {
                Some(([("host", addr.as_str())], i64::from(h.role()?.standby)))
            }),
        )?;
        let mut changes = encoder.encode_descriptor(
            "host_role_changes",
            "Logins that found a host's server in another role than before (promotions, demotions: failovers).",
            None,
            MetricType::Counter,
        )?;
        for (h, addr) in hosts.iter().zip(&addrs) {
            ConstCounter::new(h.role_changes())
                .encode(changes.encode_family(&[("host", addr.as_str())])?)?;
        }
        let mut failures = encoder.encode_descriptor(
            "host_failures",
            "Times a host was found down (a failed login there, or a lost connection with the host not answering) or in another role: each retires the connections made there before.",
            None,
            MetricType::Counter,
        )?;
        for (h, addr) in hosts.iter().zip(&addrs) {
            ConstCounter::new(h.failures())
                .encode(failures.encode_family(&[("host", addr.as_str())])?)?;
        }
        let accepting = encoder.encode_descriptor(
            "accepting",
            "1 while pgmoat accepts new clients, 0 once it is shutting down.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(self.shared.accepting())).encode(accepting)?;
        if let Some(bytes) = heap_in_use() {
            let heap = encoder.encode_descriptor(
                "heap_in_use_bytes",
                "Bytes the allocator has handed out and not taken back (glibc's mallinfo2, all arenas): memory per client by heap accounting, which RSS (pages kept after a free) cannot tell.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX)).encode(heap)?;
        }
        Ok(())
    }
}

/// Heap bytes in use, from the allocator's own books: small allocations (`uordblks`) plus
/// the large ones it maps on their own (`hblkhd`). Sampled at scrape: it takes each arena's
/// lock once. None where the allocator is not glibc's.
fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics and returns them by value.
        let info = unsafe { libc::mallinfo2() };
        Some((info.uordblks + info.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}
