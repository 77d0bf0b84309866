//! Counters for events outside the pools (TLS handshakes, failed logins, reloads, cancel
//! requests, pins), bumped where the events happen and exported by `metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HandshakeLabels {
    result: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    reason: &'static str,
}

/// Counters for events outside the pools. Cloning shares the counters.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub(crate) tls_handshakes: Family<HandshakeLabels, Counter>,
    pub(crate) auth_failures: Counter,
    pub(crate) reloads: Family<ResultLabels, Counter>,
    pub(crate) cancel_requests: Family<ResultLabels, Counter>,
    pub(crate) pins: Family<ReasonLabels, Counter>,
    pub(crate) timeouts: Family<ReasonLabels, Counter>,
    pub(crate) logins_dropped: Counter,
}

impl Metrics {
    /// A CancelRequest from a client, by what became of it (`forwarded`, `unknown_key`,
    /// `no_server`, `client_limit`, `total_limit`, `failed`).
    pub fn cancel_request(&self, result: &'static str) {
        self.cancel_requests
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// A guardrail timeout fired (`idle_transaction_timeout`, `query_timeout`).
    pub fn timeout_fired(&self, reason: &'static str) {
        self.timeouts.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// How many cancel requests ended as `result` so far.
    pub fn cancel_requests(&self, result: &'static str) -> u64 {
        self.cancel_requests
            .get_or_create(&ResultLabels { result })
            .get()
    }

    /// A server was pinned to its client, once per reason (`temp_table`, `listen`, ...)
    /// that newly appeared.
    pub fn pinned(&self, reasons: impl IntoIterator<Item = &'static str>) {
        for reason in reasons {
            self.pins.get_or_create(&ReasonLabels { reason }).inc();
        }
    }

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

    /// Pending logins dropped to make room for newer ones (max_pending_logins).
    pub fn logins_dropped(&self, count: usize) {
        self.logins_dropped.inc_by(count as u64);
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
