//! The built-in certificate tool (`pgmoat certs`): a CA, server and client certificates, and
//! expiry/chain checks. It replaces the openssl scripts operators used before; everything is
//! written atomically with key files at 0600, and the library API is what the CLI and tests use.

mod ca;
pub mod certinfo;
mod check;
pub mod cli;
mod files;
mod issue;
mod params;
mod revoke;
#[cfg(test)]
mod tls_tests;

use std::path::{Path, PathBuf};

use time::{Duration, OffsetDateTime};

pub use ca::init_ca;
pub use check::{
    CertCheck, ChainStatus, CheckOptions, CheckReport, CrlCheck, CrlSignature,
    DEFAULT_CRITICAL_DAYS, DEFAULT_CRL_WARN_DAYS, DEFAULT_WARN_DAYS, FileIssue, Status, check,
};
pub use cli::{CertsCommand, run};
pub use issue::{SanEntry, issue, parse_san};
pub use revoke::{
    CrlOptions, DEFAULT_CRL_DAYS, Reason, RevokeOptions, RevokeTarget, Revoked, RevokedEntry,
    SignedCrl, crl_path, registry_path, revoke, revoked_entries, sign_crl,
};

/// Everything that can go wrong in the cert tool. Messages name the file involved and, where
/// the operator can fix it, how.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; pass --force to replace it")]
    AlreadyExists { path: PathBuf },
    #[error("CA not found: {path} does not exist; run `pgmoat certs init` first or pass --ca-dir")]
    CaMissing { path: PathBuf },
    #[error("{path}: not a usable CA: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("invalid certificate name {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("invalid subject field {field}: {reason}")]
    BadSubject { field: &'static str, reason: String },
    #[error("invalid subject alternative name {value:?}: {reason}")]
    BadSan { value: String, reason: String },
    #[error("invalid validity: not_before ({not_before}) must be before not_after ({not_after})")]
    BadValidity {
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    #[error("could not {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{path}: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("invalid certificate: {0}")]
    BadCertificate(String),
    #[error("{path}: {reason}")]
    BadRegistry { path: PathBuf, reason: String },
    #[error("cannot revoke {what}: {reason}")]
    BadRevocation { what: String, reason: String },
}

impl CertsError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        CertsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The key type of a new CA or certificate. EC P-256 is the default: small, fast and
/// accepted by every PostgreSQL and driver we test; RSA is for peers that demand it and for
/// policies that prescribe a size (the classic setup guides ask for 4096 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    #[default]
    EcP256,
    Rsa(RsaBits),
}

/// The RSA modulus sizes the tool generates (aws-lc-rs generates exactly these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RsaBits {
    #[default]
    B2048,
    B3072,
    B4096,
}

impl RsaBits {
    pub fn bits(self) -> u32 {
        match self {
            RsaBits::B2048 => 2048,
            RsaBits::B3072 => 3072,
            RsaBits::B4096 => 4096,
        }
    }

    /// 2048, 3072 or 4096; anything else is `None`.
    pub fn from_bits(bits: u32) -> Option<Self> {
        match bits {
            2048 => Some(RsaBits::B2048),
            3072 => Some(RsaBits::B3072),
            4096 => Some(RsaBits::B4096),
            _ => None,
        }
    }
}

/// Distinguished-name fields, mirroring the old script's --country/--state/--city/--org/--cn.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub country: Option<String>,
    pub state: Option<String>,
    pub city: Option<String>,
    pub org: Option<String>,
    pub cn: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CaOptions {
    pub out_dir: PathBuf,
    pub subject: Subject,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub key_algorithm: KeyAlgorithm,
    pub force: bool,
}

/// The CA CN when none is given.
pub const DEFAULT_CA_CN: &str = "pgmoat CA";
/// Default CA lifetime in days.
pub const DEFAULT_CA_DAYS: i64 = 3650;
/// Default leaf lifetime in days.
pub const DEFAULT_LEAF_DAYS: i64 = 365;

/// Certificates start an hour in the past so that a peer with a slightly slow clock does not
/// reject a certificate minted a moment ago.
fn backdated_now() -> OffsetDateTime {
    OffsetDateTime::now_utc() - Duration::hours(1)
}

impl CaOptions {
    /// A P-256 CA under `<out_dir>/ca/`, valid from an hour ago for [`DEFAULT_CA_DAYS`].
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        let not_before = backdated_now();
        CaOptions {
            out_dir: out_dir.into(),
            subject: Subject::default(),
            not_before,
            not_after: not_before + Duration::hours(1) + Duration::days(DEFAULT_CA_DAYS),
            key_algorithm: KeyAlgorithm::default(),
            force: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CaPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CaPaths {
    /// Where `init_ca` puts (and `issue` looks for) the CA files inside `ca_dir`. The CRL and
    /// the revocation registry live next to them: see [`crl_path`] and [`registry_path`].
    pub fn in_dir(ca_dir: &Path) -> Self {
        CaPaths {
            cert: ca_dir.join("ca.crt"),
            key: ca_dir.join("ca.key"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// File stem of the outputs and default CN (for client certs: the PostgreSQL user).
    pub name: String,
    /// `"DNS:host"`, `"IP:addr"`, `"EMAIL:addr"`, `"URI:spiffe://..."`; a bare value is an IP if it parses as one,
    /// else a DNS name. See [`parse_san`].
    pub sans: Vec<String>,
    pub out_dir: PathBuf,
    /// Where `ca.crt` and `ca.key` live; `None` means `<out_dir>/ca`.
    pub ca_dir: Option<PathBuf>,
    /// `true`: EKU clientAuth; `false`: EKU serverAuth.
    pub client: bool,
    pub subject: Subject,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub key_algorithm: KeyAlgorithm,
    pub force: bool,
}

impl IssueOptions {
    /// A P-256 server certificate valid from an hour ago for [`DEFAULT_LEAF_DAYS`], signed by
    /// the CA in `<out_dir>/ca`.
    pub fn new(
        name: impl Into<String>,
        sans: impl IntoIterator<Item = impl Into<String>>,
        out_dir: impl Into<PathBuf>,
    ) -> Self {
        let not_before = backdated_now();
        IssueOptions {
            name: name.into(),
            sans: sans.into_iter().map(Into::into).collect(),
            out_dir: out_dir.into(),
            ca_dir: None,
            client: false,
            subject: Subject::default(),
            not_before,
            not_after: not_before + Duration::hours(1) + Duration::days(DEFAULT_LEAF_DAYS),
            key_algorithm: KeyAlgorithm::default(),
            force: false,
        }
    }

    /// The CA directory actually used: `ca_dir` or `<out_dir>/ca`.
    pub fn effective_ca_dir(&self) -> PathBuf {
        self.ca_dir
            .clone()
            .unwrap_or_else(|| self.out_dir.join("ca"))
    }
}

/// `NAME.crt` (0644), `NAME.key` (0600) and `NAME-combined.pem` (0600): the certificate
/// followed by its private key, for tools that want a single file (HAProxy and the like).
#[derive(Debug, Clone)]
pub struct IssuedPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub combined: PathBuf,
}
