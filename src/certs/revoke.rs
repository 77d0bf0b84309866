//! Revocation with the built-in CA. `revoke` records a certificate's serial in the CA's
//! registry (`ca/revoked.toml`, the CA's memory of what it revoked) and re-signs the CA's CRL
//! (`ca/ca.crl`); `sign_crl` re-signs it without a new revocation (a cron job keeps the next
//! update in the future). Every CRL gets a CRL number one above the last, as RFC 5280 asks,
//! so a consumer can tell the newer of two lists.
//!
//! The registry and the CRL are written atomically under an exclusive lock on the registry,
//! so two concurrent runs cannot lose a revocation or reuse a CRL number.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use super::CertsError;
use super::ca::load_ca_with_cert;
use super::files::{self, CERT_MODE};

/// A new CRL's validity when none is given: long enough to survive a missed cron run or
/// two, short enough that a CRL nobody re-signs goes stale within a month.
pub const DEFAULT_CRL_DAYS: i64 = 30;

/// `ca_dir/ca.crl`: the CRL pgmoat's `client_tls_crl_file` (or PostgreSQL's `ssl_crl_file`)
/// points at.
pub fn crl_path(ca_dir: &Path) -> PathBuf {
    ca_dir.join("ca.crl")
}

/// `ca_dir/revoked.toml`: the serials this CA revoked and the last CRL number.
pub fn registry_path(ca_dir: &Path) -> PathBuf {
    ca_dir.join("revoked.toml")
}

/// Why a certificate was revoked (RFC 5280 reason codes that make sense for this CA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    #[default]
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::Unspecified,
        Reason::KeyCompromise,
        Reason::AffiliationChanged,
        Reason::Superseded,
        Reason::CessationOfOperation,
        Reason::PrivilegeWithdrawn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "key-compromise",
            Reason::AffiliationChanged => "affiliation-changed",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessation-of-operation",
            Reason::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Reason::ALL.into_iter().find(|r| r.name() == name)
    }

    /// RFC 5280 says to leave the reasonCode extension out rather than write `unspecified`.
    fn code(self) -> Option<RevocationReason> {
        match self {
            Reason::Unspecified => None,
            Reason::KeyCompromise => Some(RevocationReason::KeyCompromise),
            Reason::AffiliationChanged => Some(RevocationReason::AffiliationChanged),
            Reason::Superseded => Some(RevocationReason::Superseded),
            Reason::CessationOfOperation => Some(RevocationReason::CessationOfOperation),
            Reason::PrivilegeWithdrawn => Some(RevocationReason::PrivilegeWithdrawn),
        }
    }
}

/// One revocation as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedEntry {
    /// Uppercase hex without separators or leading zero bytes (`openssl x509 -serial`).
    pub serial: String,
    /// RFC 3339, UTC.
    pub revoked_at: String,
    #[serde(default)]
    pub reason: Reason,
    /// The certificate's subject, when revoked from its file (for people reading the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Registry {
    /// The number of the last CRL signed; the next one gets one more.
    #[serde(default)]
    crl_number: u64,
    #[serde(default)]
    revoked: Vec<RevokedEntry>,
}

/// How to sign the CA's CRL.
#[derive(Debug, Clone)]
pub struct CrlOptions {
    /// Holds ca.crt, ca.key and revoked.toml.
    pub ca_dir: PathBuf,
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
    /// Where the CRL goes; `None` is [`crl_path`]. Another path leaves `ca.crl` untouched
    /// (but still takes a CRL number).
    pub out: Option<PathBuf>,
}

impl CrlOptions {
    /// Valid from a minute ago (peers with a slightly fast clock) for `days`.
    pub fn new(ca_dir: impl Into<PathBuf>, days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        CrlOptions {
            ca_dir: ca_dir.into(),
            this_update: now - Duration::minutes(1),
            next_update: now + Duration::days(days),
            out: None,
        }
    }
}

/// What was signed.
#[derive(Debug, Clone)]
pub struct SignedCrl {
    pub path: PathBuf,
    pub crl_number: u64,
    pub revoked: usize,
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
}

/// What to revoke: a certificate file this CA issued, or a serial (hex, colons allowed) for
/// a certificate whose file is gone.
#[derive(Debug, Clone)]
pub enum RevokeTarget {
    Certificate(PathBuf),
    Serial(String),
}

#[derive(Debug, Clone)]
pub struct RevokeOptions {
    pub target: RevokeTarget,
    pub reason: Reason,
    /// The CA and the CRL to re-sign.
    pub crl: CrlOptions,
}

#[derive(Debug, Clone)]
pub struct Revoked {
    pub entry: RevokedEntry,
    /// `false` when the serial was already revoked (the CRL is re-signed all the same).
    pub newly: bool,
    pub crl: SignedCrl,
}

/// The revocations recorded in `ca_dir` (none when the registry does not exist yet).
pub fn revoked_entries(ca_dir: &Path) -> Result<Vec<RevokedEntry>, CertsError> {
    Ok(read_registry(&registry_path(ca_dir))?.revoked)
}

/// Records the revocation and re-signs the CRL.
pub fn revoke(opts: &RevokeOptions) -> Result<Revoked, CertsError> {
    let ca_dir = &opts.crl.ca_dir;
    let ca = load_ca_with_cert(ca_dir)?;
    let ca_der = &ca.1;
    let (serial, subject) = match &opts.target {
        RevokeTarget::Certificate(path) => {
            let (serial, subject) = issued_serial(path, ca_der)?;
            (serial, Some(subject))
        }
        RevokeTarget::Serial(raw) => (parse_serial(raw)?, None),
    };
    let serial_hex = hex_upper(&serial);
    let ca_serial = x509_parser::parse_x509_certificate(ca_der)
        .map(|(_, x)| x.raw_serial().to_vec())
        .unwrap_or_default();
    if strip_zeros(&ca_serial) == serial.as_slice() {
        return Err(CertsError::BadRevocation {
            what: format!("serial {serial_hex}"),
            reason: "that is the CA's own certificate; to retire the CA, replace it with \
                     `certs init --force` and re-issue"
                .into(),
        });
    }

    let _lock = lock_registry(ca_dir)?;
    let mut registry = read_registry(&registry_path(ca_dir))?;
    let existing = registry
        .revoked
        .iter()
        .find(|e| e.serial == serial_hex)
        .cloned();
    let newly = existing.is_none();
    let entry = match existing {
        Some(entry) => entry,
        None => {
            let entry = RevokedEntry {
                serial: serial_hex,
                revoked_at: rfc3339(OffsetDateTime::now_utc()),
                reason: opts.reason,
                subject,
            };
            registry.revoked.push(entry.clone());
            entry
        }
    };
    let crl = sign_locked(&opts.crl, &ca, &mut registry)?;
    Ok(Revoked { entry, newly, crl })
}

/// Signs a new CRL from the registry (which may list nothing) with the next CRL number.
pub fn sign_crl(opts: &CrlOptions) -> Result<SignedCrl, CertsError> {
    // Loaded before taking the lock: without a CA nothing (not even the lock file) is made.
    let ca = load_ca_with_cert(&opts.ca_dir)?;
    let _lock = lock_registry(&opts.ca_dir)?;
    let mut registry = read_registry(&registry_path(&opts.ca_dir))?;
    sign_locked(opts, &ca, &mut registry)
}

/// Signs, writes the CRL, then the registry with the number used. A crash in between leaves
/// a CRL whose number the registry does not know yet, so the next number is taken above
/// both the registry's and the one in `ca.crl`.
fn sign_locked(
    opts: &CrlOptions,
    (issuer, ca_der): &(Issuer<'static, KeyPair>, CertificateDer<'static>),
    registry: &mut Registry,
) -> Result<SignedCrl, CertsError> {
    let path = opts.out.clone().unwrap_or_else(|| crl_path(&opts.ca_dir));
    let on_disk = current_crl_number(&crl_path(&opts.ca_dir));
    let crl_number = registry
        .crl_number
        .max(on_disk)
        .checked_add(1)
        .ok_or_else(|| bad_registry(opts, "the CRL number cannot grow any further"))?;

    let mut revoked_certs = Vec::with_capacity(registry.revoked.len());
    for entry in &registry.revoked {
        let serial = parse_serial(&entry.serial).map_err(|e| bad_registry(opts, e))?;
        let revocation_time = OffsetDateTime::parse(&entry.revoked_at, &Rfc3339)
            .map_err(|e| bad_registry(opts, format!("revoked_at of {}: {e}", entry.serial)))?;
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time,
            reason_code: entry.reason.code(),
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: opts.this_update,
        next_update: opts.next_update,
        crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: authority_key_id(ca_der),
    };
    let crl = params
        .signed_by(issuer)
        .map_err(|source| CertsError::Generate {
            what: "sign the CRL",
            source,
        })?;
    let pem = crl.pem().map_err(|source| CertsError::Generate {
        what: "encode the CRL",
        source,
    })?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        files::ensure_dir(dir)?;
    }
    files::write_atomic(&path, pem.as_bytes(), CERT_MODE, true)?;
    registry.crl_number = crl_number;
    write_registry(&registry_path(&opts.ca_dir), registry)?;
    Ok(SignedCrl {
        path,
        crl_number,
        revoked: registry.revoked.len(),
        this_update: opts.this_update,
        next_update: opts.next_update,
    })
}

fn bad_registry(opts: &CrlOptions, reason: impl std::fmt::Display) -> CertsError {
    CertsError::BadRegistry {
        path: registry_path(&opts.ca_dir),
        reason: reason.to_string(),
    }
}

/// The CRL's authority key identifier must equal the CA certificate's subject key
/// identifier, which is how a verifier finds the key that signed it.
fn authority_key_id(ca_der: &[u8]) -> KeyIdMethod {
    let ski = x509_parser::parse_x509_certificate(ca_der)
        .ok()
        .and_then(|(_, x)| {
            x.iter_extensions()
                .find_map(|ext| match ext.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                        Some(id.0.to_vec())
                    }
                    _ => None,
                })
        });
    match ski {
        Some(id) => KeyIdMethod::PreSpecified(id),
        None => KeyIdMethod::Sha256,
    }
}

/// The CRL number of the CRL at `path`, 0 when there is none or it cannot be read.
fn current_crl_number(path: &Path) -> u64 {
    let Ok(bytes) = std::fs::read(path) else {
        return 0;
    };
    let der = match rustls::pki_types::CertificateRevocationListDer::from_pem_slice(&bytes) {
        Ok(der) => der.as_ref().to_vec(),
        Err(_) => bytes,
    };
    x509_parser::parse_x509_crl(&der)
        .ok()
        .and_then(|(_, crl)| crl.crl_number().and_then(|n| u64::try_from(n.clone()).ok()))
        .unwrap_or(0)
}

/// The serial of a certificate file, after checking that this CA signed it: a serial from
/// another CA in this CA's CRL would revoke nothing and give false comfort.
fn issued_serial(path: &Path, ca_der: &[u8]) -> Result<(Vec<u8>, String), CertsError> {
    let what = || path.display().to_string();
    let der = CertificateDer::from_pem_file(path).map_err(|e| CertsError::BadRevocation {
        what: what(),
        reason: format!("no readable certificate ({e})"),
    })?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| CertsError::BadRevocation {
            what: what(),
            reason: format!("cannot parse the certificate ({e})"),
        })?;
    let (_, ca) = x509_parser::parse_x509_certificate(ca_der)
        .map_err(|e| CertsError::BadCertificate(e.to_string()))?;
    let signed_by_ca = cert.issuer().as_raw() == ca.subject().as_raw()
        && cert.verify_signature(Some(ca.public_key())).is_ok();
    if !signed_by_ca {
        return Err(CertsError::BadRevocation {
            what: what(),
            reason: format!(
                "it was not issued by this CA (issuer {}, CA {}); revoke it with the CA \
                 that issued it",
                cert.issuer(),
                ca.subject()
            ),
        });
    }
    // The CRL entry is written in minimal DER; webpki compares serials byte for byte, so a
    // serial in any other form (negative, padded, over RFC 5280's 20 bytes: never from this
    // tool, but possible from another signer with this CA key) would never match.
    let raw = cert.raw_serial();
    let minimal = match raw {
        [] | [0] => false,
        [0, next, ..] => next & 0x80 != 0,
        [first, ..] => first & 0x80 == 0,
    };
    if !minimal || raw.len() > 21 {
        return Err(CertsError::BadRevocation {
            what: what(),
            reason: format!(
                "its serial {} is not a positive, minimally encoded integer of at most 20 \
                 bytes, so no CRL entry would match it; replace the certificate instead",
                cert.raw_serial_as_string()
            ),
        });
    }
    Ok((strip_zeros(raw).to_vec(), cert.subject().to_string()))
}

/// Hex digits, optionally separated by colons (as x509 tools print serials).
fn parse_serial(raw: &str) -> Result<Vec<u8>, CertsError> {
    let bad = |reason: &str| CertsError::BadRevocation {
        what: format!("serial {raw:?}"),
        reason: reason.to_string(),
    };
    let digits: String = raw.trim().chars().filter(|c| *c != ':').collect();
    let digits = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
        .unwrap_or(&digits);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad("a serial is hex digits, optionally with colons"));
    }
    if digits.len() > 40 {
        return Err(bad("longer than 20 bytes, the most RFC 5280 allows"));
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits.to_string()
    };
    let bytes: Vec<u8> = (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).expect("checked hex"))
        .collect();
    let bytes = strip_zeros(&bytes).to_vec();
    if bytes.is_empty() {
        return Err(bad("serial 0 is not a certificate serial"));
    }
    Ok(bytes)
}

/// DER integers may carry a leading zero byte to stay positive; the registry does not.
fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn read_registry(path: &Path) -> Result<Registry, CertsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Registry::default()),
        Err(e) => return Err(CertsError::io(path, e)),
    };
    toml::from_str(&text).map_err(|e| CertsError::BadRegistry {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn write_registry(path: &Path, registry: &Registry) -> Result<(), CertsError> {
    let body = toml::to_string(registry).map_err(|e| CertsError::BadRegistry {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let text = format!(
        "# Certificates revoked by this CA, written by `pgmoat certs revoke`. The CRL\n\
         # (ca.crl) is signed from this list; edit it only with the cert tool.\n{body}"
    );
    files::write_atomic(path, text.as_bytes(), CERT_MODE, true)
}

/// An exclusive lock held while the registry is read, the CRL signed and both written.
fn lock_registry(ca_dir: &Path) -> Result<File, CertsError> {
    let path = ca_dir.join(".revoked.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| CertsError::io(&path, e))?;
    file.lock().map_err(|e| CertsError::io(&path, e))?;
    Ok(file)
}

#[cfg(test)]
mod tests;
