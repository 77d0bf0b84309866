//! Reading PEM certificates, keys and CA bundles, refusing what would fail later (empty files,
//! encrypted keys, expired certificates, a key that does not match its certificate).

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

/// A certificate pgmoat loaded, with what logs, metrics and SHOW CERTS report about it.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// The setting it came from, e.g. `client_tls_cert_file`.
    pub setting: &'static str,
    pub path: String,
    pub subject: String,
    pub serial: String,
    pub not_after: time::OffsetDateTime,
}

impl LoadedCert {
    pub fn days_left(&self) -> i64 {
        (self.not_after - time::OffsetDateTime::now_utc()).whole_days()
    }
}

pub(super) fn read_certs(
    setting: &'static str,
    path: &Path,
    loaded: &mut Vec<LoadedCert>,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| TlsError::Read {
        setting,
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            setting,
            path: shown.clone(),
            reason: format!("not a valid PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            setting,
            path: shown,
            what: "certificate",
        });
    }
    let now = time::OffsetDateTime::now_utc();
    for der in &certs {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Invalid {
                setting,
                path: shown.clone(),
                reason: format!("cannot parse certificate: {e}"),
            })?;
        let not_after = cert.validity().not_after.to_datetime();
        let subject = cert.subject().to_string();
        if not_after < now {
            return Err(TlsError::Invalid {
                setting,
                path: shown,
                reason: format!("certificate {subject} expired on {not_after}"),
            });
        }
        loaded.push(LoadedCert {
            setting,
            path: shown.clone(),
            subject,
            serial: cert.raw_serial_as_string(),
            not_after,
        });
    }
    Ok(certs)
}

pub(super) fn read_key(
    setting: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| TlsError::Read {
        setting,
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    if bytes
        .windows(b"ENCRYPTED PRIVATE KEY".len())
        .any(|w| w == b"ENCRYPTED PRIVATE KEY")
    {
        return Err(TlsError::Invalid {
            setting,
            path: shown,
            reason: "encrypted private keys are not supported; decrypt it \
                     (keep the file mode 0600)"
                .into(),
        });
    }
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            setting,
            path: shown,
            what: "private key",
        },
        other => TlsError::Invalid {
            setting,
            path: shown,
            reason: format!("not a valid PEM private key: {other}"),
        },
    })
}

/// A certificate chain and its key: from the key file when one is set, else from the
/// certificate file itself (a combined PEM holding both, as PgBouncer setups often use).
/// Returns the path the key came from, for a mismatch error.
pub(super) fn read_cert_and_key(
    (cert_setting, cert_path): (&'static str, &Path),
    (key_setting, key_path): (&'static str, Option<&Path>),
    loaded: &mut Vec<LoadedCert>,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        PathBuf,
    ),
    TlsError,
> {
    let chain = read_certs(cert_setting, cert_path, loaded)?;
    let key = match key_path {
        Some(path) => (read_key(key_setting, path)?, path.to_path_buf()),
        None => match read_key(cert_setting, cert_path) {
            Ok(key) => (key, cert_path.to_path_buf()),
            Err(TlsError::Empty { setting, path, .. }) => {
                return Err(TlsError::Invalid {
                    setting,
                    path,
                    reason: format!(
                        "holds no private key: set {key_setting}, or append the key to this file"
                    ),
                });
            }
            Err(e) => return Err(e),
        },
    };
    Ok((chain, key.0, key.1))
}

/// The platform's trust store, for a CA setting spelled `system` (managed databases whose
/// certificates chain to a public CA). rustls-native-certs reads it, honouring SSL_CERT_FILE
/// and SSL_CERT_DIR as OpenSSL does.
pub const SYSTEM_STORE: &str = "system";

pub(super) fn read_roots(
    setting: &'static str,
    path: &Path,
    loaded: &mut Vec<LoadedCert>,
) -> Result<RootCertStore, TlsError> {
    if path == Path::new(SYSTEM_STORE) {
        return system_roots(setting);
    }
    let certs = read_certs(setting, path, loaded)?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            setting,
            path: path.display().to_string(),
            reason: format!("not usable as a trust anchor: {e}"),
        })?;
    }
    Ok(roots)
}

fn system_roots(setting: &'static str) -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    // A store routinely holds a few certificates webpki cannot use; skip those, as browsers do.
    let (added, skipped) = roots.add_parsable_certificates(found.certs);
    for error in &found.errors {
        tracing::warn!(setting, %error, "part of the system trust store could not be read");
    }
    if added == 0 {
        return Err(TlsError::Invalid {
            setting,
            path: SYSTEM_STORE.into(),
            reason:
                "the system trust store has no usable CA certificate (install ca-certificates, \
                     or set SSL_CERT_FILE)"
                    .into(),
        });
    }
    tracing::info!(
        setting,
        trust_anchors = added,
        skipped,
        "system trust store loaded"
    );
    Ok(roots)
}

/// Maps rustls' "key does not match certificate" to an error naming both files.
pub(super) fn key_mismatch(
    err: rustls::Error,
    cert_setting: &'static str,
    cert_path: &Path,
    key_setting: &'static str,
    key_path: &Path,
) -> TlsError {
    match err {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert_setting,
            cert_path: cert_path.display().to_string(),
            key_setting,
            key_path: key_path.display().to_string(),
        },
        other => TlsError::Invalid {
            setting: key_setting,
            path: key_path.display().to_string(),
            reason: other.to_string(),
        },
    }
}
