//! Certificate revocation lists: read from one file or a directory (PEM or DER), described for
//! logs, SHOW CERTS and /metrics, and turned into the revocation options of rustls' verifiers
//! by tls_crl_expired and tls_crl_unknown_status. rustls reports only "revoked", not which
//! certificate, so the serials of every list are indexed here for the log line.

use std::collections::HashSet;
use std::path::Path;

use rustls::CertificateError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::FromDer;

use super::TlsError;
use crate::config::{CrlExpired, CrlUnknownStatus};

/// A CRL pgmoat loaded, with what logs, metrics and SHOW CERTS report about it.
#[derive(Debug, Clone)]
pub struct LoadedCrl {
    /// The setting it came from: `client_tls_crl_file` or `server_tls_crl_file`.
    pub setting: &'static str,
    pub path: String,
    pub issuer: String,
    pub this_update: time::OffsetDateTime,
    /// `None` when the list has no nextUpdate (allowed by RFC 5280, and then never stale).
    pub next_update: Option<time::OffsetDateTime>,
    /// The CRL number extension, in hex, when present.
    pub number: Option<String>,
    pub revoked: usize,
}

impl LoadedCrl {
    pub fn is_expired(&self) -> bool {
        self.next_update
            .is_some_and(|next| next < time::OffsetDateTime::now_utc())
    }
}

/// Every (issuer, serial) pair the loaded lists revoke, to name a refused certificate.
#[derive(Debug, Default)]
pub struct RevokedIndex {
    entries: HashSet<(Vec<u8>, Vec<u8>)>,
}

impl RevokedIndex {
    fn insert(&mut self, issuer: &[u8], serial: &[u8]) {
        self.entries
            .insert((issuer.to_vec(), strip_zeros(serial).to_vec()));
    }

    fn contains(&self, issuer: &[u8], serial: &[u8]) -> bool {
        self.entries
            .contains(&(issuer.to_vec(), strip_zeros(serial).to_vec()))
    }
}

/// DER integers may carry a leading zero byte; CRL entries and certificates need not agree.
fn strip_zeros(serial: &[u8]) -> &[u8] {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    &serial[start..]
}

/// The CRLs of one setting, ready for a rustls verifier builder.
#[derive(Debug, Default)]
pub struct CrlSet {
    pub ders: Vec<CertificateRevocationListDer<'static>>,
    pub index: std::sync::Arc<RevokedIndex>,
}

/// Reads `path`: a file with one or more PEM "X509 CRL" blocks or one DER CRL, or a directory
/// whose regular, non-hidden files are each such a file (so `openssl rehash` directories work).
pub(super) fn read_crls(
    setting: &'static str,
    path: &Path,
    loaded: &mut Vec<LoadedCrl>,
) -> Result<CrlSet, TlsError> {
    let shown = path.display().to_string();
    let read_err = |path: &Path, e: std::io::Error| TlsError::Read {
        setting,
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut files = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| read_err(path, e))? {
            let entry = entry.map_err(|e| read_err(path, e))?;
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            // Follows symlinks, as openssl rehash directories consist of them.
            if !hidden && entry.path().is_file() {
                files.push(entry.path());
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut set = CrlSet::default();
    let mut index = RevokedIndex::default();
    for file in &files {
        let bytes = std::fs::read(file).map_err(|e| read_err(file, e))?;
        let file_shown = file.display().to_string();
        let invalid = |reason: String| TlsError::Invalid {
            setting,
            path: file_shown.clone(),
            reason,
        };
        let ders: Vec<CertificateRevocationListDer<'static>> = if bytes.starts_with(b"-----") {
            CertificateRevocationListDer::pem_slice_iter(&bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(format!("not a valid PEM CRL file: {e}")))?
        } else {
            vec![CertificateRevocationListDer::from(bytes)]
        };
        if ders.is_empty() {
            return Err(TlsError::Empty {
                setting,
                path: file_shown,
                what: "X509 CRL",
            });
        }
        for der in ders {
            let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
                .map_err(|e| invalid(format!("cannot parse the CRL: {e}")))?;
            let issuer_raw = crl.tbs_cert_list.issuer.as_raw();
            let mut revoked = 0;
            for entry in crl.iter_revoked_certificates() {
                index.insert(issuer_raw, entry.raw_serial());
                revoked += 1;
            }
            loaded.push(LoadedCrl {
                setting,
                path: file_shown.clone(),
                issuer: crl.issuer().to_string(),
                this_update: crl.last_update().to_datetime(),
                next_update: crl.next_update().map(|t| t.to_datetime()),
                number: crl.crl_number().map(|n| n.to_str_radix(16)),
                revoked,
            });
            set.ders.push(der);
        }
    }
    if set.ders.is_empty() {
        return Err(TlsError::Empty {
            setting,
            path: shown,
            what: "X509 CRL",
        });
    }
    set.index = std::sync::Arc::new(index);
    Ok(set)
}

/// How the verifiers of one side check revocation.
#[derive(Debug, Clone, Copy)]
pub struct RevocationPolicy {
    pub expired: CrlExpired,
    pub unknown: CrlUnknownStatus,
}

/// Which rustls verifier passes a policy needs: the chain pass (all certificates below the
/// anchor), and for allow-intermediate a second pass over the end entity alone with an unknown
/// status refused. rustls has no single option for "leaf required, intermediates when known".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pass {
    pub end_entity_only: bool,
    pub allow_unknown: bool,
    pub enforce_expiry: bool,
}

impl RevocationPolicy {
    pub(super) fn passes(self) -> Vec<Pass> {
        let enforce_expiry = self.expired == CrlExpired::Refuse;
        let pass = |end_entity_only, allow_unknown| Pass {
            end_entity_only,
            allow_unknown,
            enforce_expiry,
        };
        match self.unknown {
            CrlUnknownStatus::Refuse => vec![pass(false, false)],
            CrlUnknownStatus::AllowIntermediate => vec![pass(false, true), pass(true, false)],
            CrlUnknownStatus::Allow => vec![pass(false, true)],
        }
    }
}

/// Logs why a certificate was refused when revocation was the reason; the certificate
/// refused (end entity or intermediate) is named by serial, found in the index.
pub(super) fn log_refusal(
    side: &'static str,
    err: &rustls::Error,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    index: &RevokedIndex,
) {
    let rustls::Error::InvalidCertificate(cert_err) = err else {
        return;
    };
    let describe = |der: &CertificateDer<'_>| {
        x509_parser::parse_x509_certificate(der)
            .ok()
            .map(|(_, c)| {
                (
                    c.raw_serial_as_string(),
                    c.subject().to_string(),
                    c.issuer().to_string(),
                    index.contains(c.issuer().as_raw(), c.raw_serial()),
                )
            })
            .unwrap_or_else(|| ("?".into(), "?".into(), "?".into(), false))
    };
    let (serial, subject, issuer, _) = describe(end_entity);
    match cert_err {
        CertificateError::Revoked => {
            // The end entity, unless it is not in the lists: then an intermediate was.
            let chain = std::iter::once(end_entity).chain(intermediates);
            let (serial, subject, issuer, _) = chain
                .map(describe)
                .find(|d| d.3)
                .unwrap_or((serial, subject, issuer, true));
            tracing::warn!(side, %serial, %subject, %issuer, "certificate refused: it is revoked by a loaded CRL");
        }
        CertificateError::UnknownRevocationStatus => {
            tracing::warn!(side, %serial, %subject, %issuer,
                "certificate refused: no loaded CRL comes from the issuer of a certificate in its chain; \
                 add that CA's CRL, or see tls_crl_unknown_status");
        }
        CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. } => {
            tracing::error!(side, %serial, %subject, %issuer,
                "certificate refused: the CRL that must vouch for it is past its next update \
                 (tls_crl_expired = refuse); publish a fresh CRL (pgmoat certs crl) and reload");
        }
        _ => {}
    }
}

/// Logs every CRL: a loud error for one past its next update, whatever tls_crl_expired says.
pub fn log_crl_state(crls: &[LoadedCrl], expired: CrlExpired) {
    for crl in crls {
        let next = crl
            .next_update
            .map(|t| t.to_string())
            .unwrap_or_else(|| "never".into());
        if crl.is_expired() {
            let effect = match expired {
                CrlExpired::Refuse => "certificates it vouches for are refused",
                CrlExpired::Warn => "it is still used (tls_crl_expired = warn)",
            };
            tracing::error!(setting = crl.setting, file = %crl.path, issuer = %crl.issuer, next_update = %next, effect, "CRL is past its next update");
        } else {
            tracing::info!(setting = crl.setting, file = %crl.path, issuer = %crl.issuer, next_update = %next, revoked = crl.revoked, "CRL loaded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_compare_without_leading_zeros() {
        let mut index = RevokedIndex::default();
        index.insert(b"ca", &[0, 0x81, 1]);
        assert!(index.contains(b"ca", &[0x81, 1]));
        assert!(!index.contains(b"other", &[0x81, 1]));
    }

    #[test]
    fn allow_intermediate_makes_two_passes() {
        let policy = RevocationPolicy {
            expired: CrlExpired::Refuse,
            unknown: CrlUnknownStatus::AllowIntermediate,
        };
        let passes = policy.passes();
        assert_eq!(passes.len(), 2);
        assert!(passes.iter().all(|p| p.enforce_expiry));
        assert!(passes.iter().any(|p| p.end_entity_only && !p.allow_unknown));
        let warn = RevocationPolicy {
            expired: CrlExpired::Warn,
            unknown: CrlUnknownStatus::Refuse,
        };
        assert_eq!(
            warn.passes(),
            [Pass {
                end_entity_only: false,
                allow_unknown: false,
                enforce_expiry: false
            }]
        );
    }
}
