//! `certs check`: expiry and chain status of certificate files, with a Nagios-style result
//! (0 ok, 1 warning, 2 critical) so cron, CI and monitoring can act on it.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use time::OffsetDateTime;

use super::CertsError;
use super::certinfo::{CertInfo, format_utc, read_pem_certs};

pub const DEFAULT_WARN_DAYS: i64 = 90;
pub const DEFAULT_CRITICAL_DAYS: i64 = 30;

#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The CA to verify chains against; by default `<dir>/ca/ca.crt` next to what is checked.
    pub ca_file: Option<PathBuf>,
    pub warn_days: i64,
    pub critical_days: i64,
    /// The instant validity is judged at (now; tests move it).
    pub now: OffsetDateTime,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            ca_file: None,
            warn_days: DEFAULT_WARN_DAYS,
            critical_days: DEFAULT_CRITICAL_DAYS,
            now: OffsetDateTime::now_utc(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Status {
    #[default]
    Ok,
    Warning,
    Critical,
}

impl Status {
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warning => 1,
            Status::Critical => 2,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Critical => "CRITICAL",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainStatus {
    /// Chains to the CA in `ca`, for the purpose its EKU names.
    Verified { ca: PathBuf },
    /// One of the CA file's own certificates.
    TrustAnchor,
    /// A CA certificate that is not the checked CA (for example PostgreSQL's root CA).
    OtherCa,
    /// No CA was given or found, so the chain was not checked.
    NoCa,
    /// Does not chain to the CA, or the CA itself is unusable.
    Invalid { reason: String },
}

impl fmt::Display for ChainStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainStatus::Verified { ca } => write!(f, "ok (verified against {})", ca.display()),
            ChainStatus::TrustAnchor => f.write_str("CA certificate (trust anchor)"),
            ChainStatus::OtherCa => f.write_str("CA certificate (not the checked CA)"),
            ChainStatus::NoCa => f.write_str("not checked (no CA file; pass --ca)"),
            ChainStatus::Invalid { reason } => write!(f, "INVALID: {reason}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CertCheck {
    pub path: PathBuf,
    /// Position of the certificate in its PEM file (0 = first).
    pub index: usize,
    pub info: CertInfo,
    pub days_left: i64,
    pub chain: ChainStatus,
    pub status: Status,
    /// Why the status is not OK, one line each.
    pub reasons: Vec<String>,
    /// Other scanned files holding the same certificate (e.g. NAME-combined.pem).
    pub also_in: Vec<PathBuf>,
}

/// A finding about a file rather than a certificate: an unreadable PEM, a private key that
/// others can read.
#[derive(Debug, Clone)]
pub struct FileIssue {
    pub path: PathBuf,
    pub status: Status,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub certs: Vec<CertCheck>,
    pub files: Vec<FileIssue>,
}

impl CheckReport {
    pub fn status(&self) -> Status {
        let certs = self.certs.iter().map(|c| c.status);
        let files = self.files.iter().map(|f| f.status);
        certs.chain(files).max().unwrap_or_default()
    }

    /// 0 ok, 1 warning, 2 critical.
    pub fn exit_code(&self) -> u8 {
        self.status().exit_code()
    }
}

/// The CA certificates chains are checked against.
struct TrustSet {
    path: PathBuf,
    ders: Vec<CertificateDer<'static>>,
    infos: Vec<CertInfo>,
    roots: Arc<RootCertStore>,
}

impl TrustSet {
    fn load(path: &Path) -> Result<Self, CertsError> {
        let ders = read_pem_certs(path)?;
        let mut roots = RootCertStore::empty();
        let mut infos = Vec::with_capacity(ders.len());
        for der in &ders {
            let bad = |reason: String| CertsError::BadCa {
                path: path.to_path_buf(),
                reason,
            };
            infos.push(CertInfo::from_der(der).map_err(|e| bad(e.to_string()))?);
            roots.add(der.clone()).map_err(|e| bad(e.to_string()))?;
        }
        Ok(TrustSet {
            path: path.to_path_buf(),
            ders,
            infos,
            roots: Arc::new(roots),
        })
    }
}

struct Checker<'a> {
    opts: &'a CheckOptions,
    provider: Arc<CryptoProvider>,
    explicit_ca: Option<TrustSet>,
    report: CheckReport,
    /// DER -> index in `report.certs`, to fold duplicates found by directory scans.
    seen: HashMap<Vec<u8>, usize>,
}

/// Checks each file, or each `*.crt`/`*.pem`/`*.key` in a directory and its direct
/// subdirectories (so `certs/` includes `certs/ca/`). A path that does not exist, or an
/// unreadable `ca_file`, is an error; problems inside the files become report entries.
pub fn check(paths: &[PathBuf], opts: &CheckOptions) -> Result<CheckReport, CertsError> {
    let explicit_ca = opts.ca_file.as_deref().map(TrustSet::load).transpose()?;
    let mut checker = Checker {
        opts,
        provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        explicit_ca,
        report: CheckReport::default(),
        seen: HashMap::new(),
    };
    for path in paths {
        let meta = fs::metadata(path).map_err(|e| CertsError::io(path, e))?;
        if meta.is_dir() {
            checker.check_dir(path)?;
        } else {
            let default_ca = path.parent().unwrap_or(Path::new(".")).join("ca/ca.crt");
            let ca = checker.implicit_ca(&default_ca);
            checker.check_file(path, ca.as_ref(), true);
        }
    }
    Ok(checker.report)
}

impl Checker<'_> {
    /// `<dir>/ca/ca.crt` when no --ca was given and it exists; a broken one is reported.
    fn implicit_ca(&mut self, default_ca: &Path) -> Option<TrustSet> {
        if self.explicit_ca.is_some() || !default_ca.is_file() {
            return None;
        }
        match TrustSet::load(default_ca) {
            Ok(t) => Some(t),
            Err(e) => {
                self.issue(
                    default_ca,
                    Status::Critical,
                    format!("unusable CA file: {e}"),
                );
                None
            }
        }
    }

    fn issue(&mut self, path: &Path, status: Status, message: String) {
        self.report.files.push(FileIssue {
            path: path.to_path_buf(),
            status,
            message,
        });
    }

    fn check_dir(&mut self, dir: &Path) -> Result<(), CertsError> {
        let ca = self.implicit_ca(&dir.join("ca/ca.crt"));
        let mut files = Vec::new();
        for entry in sorted_entries(dir)? {
            if entry.is_dir() {
                files.extend(
                    sorted_entries(&entry)?
                        .into_iter()
                        .filter(|p| is_candidate(p)),
                );
            } else if is_candidate(&entry) {
                files.push(entry);
            }
        }
        // Subdirectories (the CA) first; then plain .crt files before .pem, so a certificate
        // is reported under NAME.crt and its NAME-combined.pem copy is folded into it.
        files.sort_by_key(|p| {
            let in_top = p.parent() == Some(dir);
            (
                in_top,
                p.parent().map(Path::to_path_buf),
                extension_rank(p),
                p.clone(),
            )
        });
        let mut found = 0;
        for file in &files {
            found += self.check_file(file, ca.as_ref(), false);
        }
        if found == 0 {
            self.issue(dir, Status::Critical, "no certificates found".into());
        }
        Ok(())
    }

    /// Returns how many certificates the file holds.
    fn check_file(&mut self, path: &Path, implicit: Option<&TrustSet>, explicit: bool) -> usize {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                self.issue(path, Status::Critical, format!("cannot read: {e}"));
                return 0;
            }
        };
        let has_key = bytes.windows(16).any(|w| w == b"PRIVATE KEY-----");
        if has_key {
            self.check_key_mode(path);
        }
        let ders = match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
            Ok(d) => d,
            Err(e) => {
                self.issue(path, Status::Critical, format!("cannot parse PEM: {e}"));
                return 0;
            }
        };
        if ders.is_empty() {
            if !has_key {
                let status = if explicit {
                    Status::Critical
                } else {
                    Status::Warning
                };
                self.issue(path, status, "no certificate or private key in file".into());
            }
            return 0;
        }
        let mut infos = Vec::with_capacity(ders.len());
        for der in &ders {
            match CertInfo::from_der(der) {
                Ok(info) => infos.push(info),
                Err(e) => {
                    self.issue(path, Status::Critical, e.to_string());
                    return ders.len();
                }
            }
        }
        // CA certificates after the leaf in the same file are its intermediates.
        let intermediates: Vec<CertificateDer<'static>> = ders
            .iter()
            .zip(&infos)
            .filter(|(_, i)| i.is_ca)
            .map(|(d, _)| d.clone())
            .collect();
        for (index, (der, info)) in ders.iter().zip(infos).enumerate() {
            if !explicit && let Some(&at) = self.seen.get(der.as_ref()) {
                self.report.certs[at].also_in.push(path.to_path_buf());
                continue;
            }
            let trust = self.explicit_ca.as_ref().or(implicit);
            let chain = self.chain_status(der, &info, &intermediates, trust);
            let checked = self.judge(path, index, info, chain);
            self.seen.insert(der.to_vec(), self.report.certs.len());
            self.report.certs.push(checked);
        }
        ders.len()
    }

    fn check_key_mode(&mut self, path: &Path) {
        if let Ok(meta) = fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                self.issue(
                    path,
                    Status::Warning,
                    format!(
                        "private key is accessible to group/others (mode {mode:04o}); \
                         chmod 600 it (PostgreSQL refuses such keys)"
                    ),
                );
            }
        }
    }

    fn chain_status(
        &self,
        der: &CertificateDer<'_>,
        info: &CertInfo,
        intermediates: &[CertificateDer<'static>],
        trust: Option<&TrustSet>,
    ) -> ChainStatus {
        let Some(trust) = trust else {
            return if info.is_ca {
                ChainStatus::OtherCa
            } else {
                ChainStatus::NoCa
            };
        };
        if trust.ders.iter().any(|d| d.as_ref() == der.as_ref()) {
            return ChainStatus::TrustAnchor;
        }
        if info.is_ca {
            return ChainStatus::OtherCa;
        }
        match self.verify(der, info, intermediates, trust) {
            Ok(()) => ChainStatus::Verified {
                ca: trust.path.clone(),
            },
            Err(reason) => ChainStatus::Invalid { reason },
        }
    }

    fn verify(
        &self,
        der: &CertificateDer<'_>,
        info: &CertInfo,
        intermediates: &[CertificateDer<'static>],
        trust: &TrustSet,
    ) -> Result<(), String> {
        let now = self.opts.now;
        // Judge the chain at a moment inside the leaf's own validity: the leaf's expiry is
        // reported on its own, and "expired" should not hide a wrong issuer.
        let at = if info.not_before <= info.not_after {
            now.clamp(info.not_before, info.not_after)
        } else {
            now
        };
        let secs = u64::try_from(at.unix_timestamp()).unwrap_or(0);
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
        let algs = self.provider.signature_verification_algorithms.all;
        let result = if info.server_auth {
            ParsedCertificate::try_from(der).and_then(|parsed| {
                verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &trust.roots,
                    intermediates,
                    at,
                    algs,
                )
            })
        } else if info.client_auth {
            WebPkiClientVerifier::builder_with_provider(trust.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))
                .and_then(|v| v.verify_client_cert(der, intermediates, at).map(|_| ()))
        } else {
            return Err("extended key usage allows neither TLS server nor client use".into());
        };
        result.map_err(|e| match e {
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired
                | rustls::CertificateError::ExpiredContext { .. }
                | rustls::CertificateError::NotValidYet
                | rustls::CertificateError::NotValidYetContext { .. },
            ) => format!("an intermediate certificate is outside its validity period ({e})"),
            other => other.to_string(),
        })?;
        // webpki does not look at a trust anchor's own dates; operators need to know.
        let issuers: Vec<&CertInfo> = trust
            .infos
            .iter()
            .filter(|ca| ca.subject == info.issuer)
            .collect();
        if !issuers.is_empty()
            && issuers
                .iter()
                .all(|ca| ca.is_expired(now) || ca.is_not_yet_valid(now))
        {
            return Err(format!(
                "the CA certificate ({}) is not valid now (valid {} .. {})",
                issuers[0].subject,
                format_utc(issuers[0].not_before),
                format_utc(issuers[0].not_after)
            ));
        }
        Ok(())
    }

    fn judge(&self, path: &Path, index: usize, info: CertInfo, chain: ChainStatus) -> CertCheck {
        let now = self.opts.now;
        let days_left = info.days_left(now);
        let mut status = Status::Ok;
        let mut reasons = Vec::new();
        if info.is_not_yet_valid(now) {
            status = Status::Critical;
            reasons.push(format!("not valid before {}", format_utc(info.not_before)));
        } else if info.is_expired(now) {
            status = Status::Critical;
            let ago = (now - info.not_after).whole_days();
            reasons.push(format!(
                "EXPIRED {ago} days ago ({})",
                format_utc(info.not_after)
            ));
        } else if days_left <= self.opts.critical_days {
            status = Status::Critical;
            reasons.push(format!(
                "expires in {days_left} days (critical at {})",
                self.opts.critical_days
            ));
        } else if days_left <= self.opts.warn_days {
            status = Status::Warning;
            reasons.push(format!(
                "expires in {days_left} days (warning at {})",
                self.opts.warn_days
            ));
        }
        if let ChainStatus::Invalid { reason } = &chain {
            status = Status::Critical;
            reasons.push(format!("chain does not verify: {reason}"));
        }
        CertCheck {
            path: path.to_path_buf(),
            index,
            info,
            days_left,
            chain,
            status,
            reasons,
            also_in: Vec::new(),
        }
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, CertsError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| CertsError::io(dir, e))? {
        let entry = entry.map_err(|e| CertsError::io(dir, e))?;
        // Hidden entries include our own in-flight temp files.
        if !entry.file_name().to_string_lossy().starts_with('.') {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn is_candidate(path: &Path) -> bool {
    path.is_file()
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("crt" | "pem" | "cer" | "key")
        )
}

fn extension_rank(path: &Path) -> u8 {
    match path.extension().and_then(|e| e.to_str()) {
        Some("crt" | "cer") => 0,
        Some("pem") => 1,
        _ => 2,
    }
}

#[cfg(test)]
mod tests;
