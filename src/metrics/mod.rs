//! Prometheus metrics: event counters bumped where events happen (TLS handshakes, failed
//! logins, reloads), pool numbers read at scrape time from the registries in `stats`, and the
//! optional HTTP listener (metrics_addr) that serves `/metrics` and `/health`.

mod collector;
mod http;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::state::Shared;

pub use http::serve;

/// Prefix of every metric name.
pub const PREFIX: &str = "pgmoat";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    result: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Counters for events outside the pools. Cloning shares the counters.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    tls_handshakes: Family<HandshakeLabels, Counter>,
    auth_failures: Counter,
    reloads: Family<ResultLabels, Counter>,
}

impl Metrics {
    pub fn tls_handshake_ok(&self) {
        self.tls_handshakes
            .get_or_create(&HandshakeLabels {
                result: "ok",
                reason: "",
            })
            .inc();
    }

    pub fn tls_handshake_failed(&self, error: &std::io::Error) {
        self.tls_handshakes
            .get_or_create(&HandshakeLabels {
                result: "failed",
                reason: handshake_failure_reason(error),
            })
            .inc();
    }

    pub fn auth_failed(&self) {
        self.auth_failures.inc();
    }

    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn auth_failures(&self) -> u64 {
        self.auth_failures.get()
    }
}

/// A short, stable label for why a client's TLS handshake failed (never the raw message,
/// which would make label values unbounded).
pub fn handshake_failure_reason(error: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::TimedOut => "timeout",
            _ => "io",
        };
    };
    match tls {
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "certificate_expired",
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_issuer",
        Error::InvalidCertificate(CertificateError::Revoked) => "certificate_revoked",
        Error::InvalidCertificate(_) => "bad_certificate",
        Error::PeerIncompatible(_) => "incompatible",
        Error::AlertReceived(_) => "alert_received",
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. } => "protocol_error",
        _ => "other",
    }
}

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
    use super::*;

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
