//! Prometheus metrics: event counters bumped where events happen (TLS handshakes, failed
//! logins, reloads), pool numbers read at scrape time from the registries in `stats`, and the
//! optional HTTP listener (metrics_addr) that serves `/metrics` and `/health`.

mod collector;
mod http;

use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::state::Shared;

pub use crate::stats::{Metrics, handshake_failure_reason};
pub use http::serve;

/// Prefix of every metric name.
pub const PREFIX: &str = "pgmoat";

/// The registry of one scrape target: the counters in `shared.metrics`, the wait-time
/// histograms and the collector that samples pools and certificates.
pub fn registry(shared: &Arc<Shared>) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    let m = &shared.metrics;
    registry.register(
        "tls_handshakes",
        "Client TLS handshakes by result and failure reason",
        m.tls_handshakes.clone(),
    );
    registry.register(
        "auth_failures",
        "Client logins refused by authentication",
        m.auth_failures.clone(),
    );
    registry.register(
        "logins_dropped",
        "Connections dropped before they logged in, oldest first, to keep within max_pending_logins",
        m.logins_dropped.clone(),
    );
    registry.register(
        "cancel_requests",
        "Client cancel requests by what became of them (forwarded, or dropped and why)",
        m.cancel_requests.clone(),
    );
    registry.register(
        "timeouts",
        "Guardrail timeouts that fired, by setting",
        m.timeouts.clone(),
    );
    registry.register(
        "pins",
        "Servers pinned to a client for session state, by reason",
        m.pins.clone(),
    );
    registry.register(
        "reloads",
        "Configuration reloads (SIGHUP or RELOAD) by result",
        m.reloads.clone(),
    );
    registry.register(
        "wait_seconds",
        "Time clients waited for a server connection",
        shared.stats.wait_histograms.clone(),
    );
    registry.register_collector(Box::new(collector::PoolCollector::new(shared.clone())));
    registry
}

/// The OpenMetrics text of everything, as `/metrics` serves it.
pub fn render(shared: &Arc<Shared>) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry(shared))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, FileChecks};
    use crate::pool::PoolKey;
    use crate::stats::ClientEntry;

    pub(super) fn shared() -> Arc<Shared> {
        let text = r#"
client_tls_sslmode = "disable"
server_tls_sslmode = "disable"
auth_type = "trust"
[databases.app]
host = "127.0.0.1"
"#;
        let config =
            Config::from_toml_str_with(text, Path::new("t.toml"), FileChecks::Skip).unwrap();
        Shared::new(crate::generation::load_generation(config, None).unwrap())
    }

    #[test]
    fn scrape_shows_pools_events_and_the_end_marker() {
        let shared = shared();
        let key = PoolKey {
            database: "app".into(),
            user: "alice".into(),
        };
        let stats = shared.stats.pool(&key);
        stats.record_wait(Duration::from_millis(2));
        stats.record_query();
        stats.record_xact(Duration::from_millis(1));
        let _client = shared.stats.clients.register(
            1,
            ClientEntry::new(
                1,
                "127.0.0.1:1".parse().unwrap(),
                None,
                "alice".into(),
                "app".into(),
                "alice".into(),
                String::new(),
                None,
            ),
        );
        shared.metrics.tls_handshake_ok();
        shared
            .metrics
            .tls_handshake_failed(&std::io::ErrorKind::UnexpectedEof.into());
        shared.metrics.auth_failed();
        shared.metrics.reloaded(false);

        let text = render(&shared).unwrap();
        for line in [
            r#"pgmoat_clients{database="app",user="alice",state="idle"} 1"#,
            r#"pgmoat_clients{database="app",user="alice",state="waiting"} 0"#,
            r#"pgmoat_transactions_total{database="app",user="alice"} 1"#,
            r#"pgmoat_queries_total{database="app",user="alice"} 1"#,
            r#"pgmoat_server_assignments_total{database="app",user="alice"} 1"#,
            r#"pgmoat_wait_seconds_count{database="app",user="alice"} 1"#,
            r#"pgmoat_tls_handshakes_total{result="ok",reason=""} 1"#,
            r#"pgmoat_tls_handshakes_total{result="failed",reason="eof"} 1"#,
            "pgmoat_auth_failures_total 1",
            r#"pgmoat_reloads_total{result="failed"} 1"#,
            "pgmoat_accepting 1",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        shared.shutdown.cancel();
        assert!(
            render(&shared)
                .unwrap()
                .lines()
                .any(|l| l == "pgmoat_accepting 0")
        );
    }

    fn tls_error(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn failure_reasons_are_short_and_bounded() {
        assert_eq!(
            handshake_failure_reason(&tls_error(rustls::Error::NoCertificatesPresented)),
            "no_client_certificate"
        );
        assert_eq!(
            handshake_failure_reason(&tls_error(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))),
            "unknown_issuer"
        );
        assert_eq!(
            handshake_failure_reason(&tls_error(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired
            ))),
            "certificate_expired"
        );
        assert_eq!(
            handshake_failure_reason(&std::io::ErrorKind::UnexpectedEof.into()),
            "eof"
        );
        assert_eq!(
            handshake_failure_reason(&std::io::ErrorKind::ConnectionReset.into()),
            "io"
        );
    }
}
