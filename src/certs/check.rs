//! `certs check`: expiry and chain status of certificate files, and the next update and
//! signature of CRLs, with a Nagios-style result (0 ok, 1 warning, 2 critical) so cron, CI
//! and monitoring can act on it.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;

use super::CertsError;
use super::certinfo::{CertInfo, format_utc};

pub use chain::{ChainStatus, CrlSignature};
use chain::{TrustSet, Verifier};

pub const DEFAULT_WARN_DAYS: i64 = 90;
pub const DEFAULT_CRITICAL_DAYS: i64 = 30;
/// A CRL whose next update is this close is a warning: the cron job that re-signs it
/// (`certs crl`) has probably stopped. Past the next update it is critical, because pgmoat
/// (under tls_crl_expired = refuse) and PostgreSQL then refuse the certificates it covers.
pub const DEFAULT_CRL_WARN_DAYS: i64 = 7;

#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The CA to verify chains against; by default `<dir>/ca/ca.crt` next to what is checked.
    pub ca_file: Option<PathBuf>,
    pub warn_days: i64,
    pub critical_days: i64,
    pub crl_warn_days: i64,
    /// The instant validity is judged at (now; tests move it).
    pub now: OffsetDateTime,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            ca_file: None,
            warn_days: DEFAULT_WARN_DAYS,
            critical_days: DEFAULT_CRITICAL_DAYS,
            crl_warn_days: DEFAULT_CRL_WARN_DAYS,
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

/// One CRL: who signed it, how many serials it lists and when it goes stale.
#[derive(Debug, Clone)]
pub struct CrlCheck {
    pub path: PathBuf,
    /// Position of the CRL in its PEM file (0 = first).
    pub index: usize,
    pub issuer: String,
    /// Decimal, as `openssl crl -crlnumber` would show it.
    pub crl_number: Option<String>,
    pub this_update: OffsetDateTime,
    pub next_update: Option<OffsetDateTime>,
    pub revoked: usize,
    pub signature: CrlSignature,
    pub status: Status,
    pub reasons: Vec<String>,
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
    pub crls: Vec<CrlCheck>,
    pub files: Vec<FileIssue>,
}

impl CheckReport {
    pub fn status(&self) -> Status {
        let certs = self.certs.iter().map(|c| c.status);
        let crls = self.crls.iter().map(|c| c.status);
        let files = self.files.iter().map(|f| f.status);
        certs.chain(crls).chain(files).max().unwrap_or_default()
    }

    /// 0 ok, 1 warning, 2 critical.
    pub fn exit_code(&self) -> u8 {
        self.status().exit_code()
    }
}

struct Checker<'a> {
    opts: &'a CheckOptions,
    verifier: Verifier,
    explicit_ca: Option<TrustSet>,
    report: CheckReport,
    /// DER -> index in `report.certs`, to fold duplicates found by directory scans.
    seen: HashMap<Vec<u8>, usize>,
}

/// Checks each file, or each `*.crt`/`*.pem`/`*.key`/`*.crl` in a directory and its direct
/// subdirectories (so `certs/` includes `certs/ca/`). A path that does not exist, or an
/// unreadable `ca_file`, is an error; problems inside the files become report entries.
pub fn check(paths: &[PathBuf], opts: &CheckOptions) -> Result<CheckReport, CertsError> {
    let explicit_ca = opts.ca_file.as_deref().map(TrustSet::load).transpose()?;
    let mut checker = Checker {
        opts,
        verifier: Verifier::new(opts.now),
        explicit_ca,
        report: CheckReport::default(),
        seen: HashMap::new(),
    };
    for path in paths {
        let meta = fs::metadata(path).map_err(|e| CertsError::io(path, e))?;
        if meta.is_dir() {
            checker.check_dir(path)?;
        } else {
            // NAME.crt next to ca/, or a CRL inside ca/ next to ca.crt.
            let parent = path.parent().unwrap_or(Path::new("."));
            let default_ca = [parent.join("ca/ca.crt"), parent.join("ca.crt")]
                .into_iter()
                .find(|p| p.is_file() && p != path)
                .unwrap_or_else(|| parent.join("ca/ca.crt"));
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
            self.issue(
                dir,
                Status::Critical,
                "no certificates or CRLs found".into(),
            );
        }
        Ok(())
    }

    /// Returns how many certificates (or CRLs) the file holds.
    fn check_file(&mut self, path: &Path, implicit: Option<&TrustSet>, explicit: bool) -> usize {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                self.issue(path, Status::Critical, format!("cannot read: {e}"));
                return 0;
            }
        };
        // A CRL file, or a bundle (`cat ca.crt ca.crl`): the CRLs are judged here and any
        // certificates and keys in the same file below, so a bundle is never half checked.
        let is_crl_file = path.extension().and_then(|e| e.to_str()) == Some("crl");
        let has_key = bytes.windows(16).any(|w| w == b"PRIVATE KEY-----");
        let mut crls = 0;
        if is_crl_file || bytes.windows(14).any(|w| w == b"BEGIN X509 CRL") {
            crls = self.check_crl_file(path, &bytes, implicit);
            if !has_key && !bytes.windows(17).any(|w| w == b"BEGIN CERTIFICATE") {
                return crls;
            }
        }
        if has_key {
            self.check_key_mode(path);
        }
        let ders = match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
            Ok(d) => d,
            Err(e) => {
                self.issue(path, Status::Critical, format!("cannot parse PEM: {e}"));
                return crls;
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
            return crls;
        }
        let mut infos = Vec::with_capacity(ders.len());
        for der in &ders {
            match CertInfo::from_der(der) {
                Ok(info) => infos.push(info),
                Err(e) => {
                    self.issue(path, Status::Critical, e.to_string());
                    return crls + ders.len();
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
            let chain = self
                .verifier
                .chain_status(der, &info, &intermediates, trust);
            let checked = self.judge(path, index, info, chain);
            self.seen.insert(der.to_vec(), self.report.certs.len());
            self.report.certs.push(checked);
        }
        crls + ders.len()
    }

    /// A PEM file of one or more CRLs, or one DER CRL.
    fn check_crl_file(&mut self, path: &Path, bytes: &[u8], implicit: Option<&TrustSet>) -> usize {
        let is_pem = bytes.trim_ascii_start().starts_with(b"-----");
        let ders: Vec<Vec<u8>> = if is_pem {
            match CertificateRevocationListDer::pem_slice_iter(bytes).collect::<Result<Vec<_>, _>>()
            {
                Ok(d) if !d.is_empty() => d.into_iter().map(|d| d.as_ref().to_vec()).collect(),
                Ok(_) => {
                    self.issue(path, Status::Critical, "no CRL in file".into());
                    return 0;
                }
                Err(e) => {
                    self.issue(path, Status::Critical, format!("cannot parse PEM: {e}"));
                    return 0;
                }
            }
        } else {
            vec![bytes.to_vec()]
        };
        let mut checked = Vec::with_capacity(ders.len());
        let mut unreadable = Vec::new();
        let trust = self.explicit_ca.as_ref().or(implicit);
        for (index, der) in ders.iter().enumerate() {
            match x509_parser::parse_x509_crl(der) {
                Ok((_, crl)) => {
                    let signature = trust.map_or(CrlSignature::NoCa, |t| t.crl_signature(&crl));
                    checked.push(self.judge_crl(path, index, &crl, signature));
                }
                Err(e) => unreadable.push(format!("not a readable CRL: {e}")),
            }
        }
        self.report.crls.extend(checked);
        for message in unreadable {
            self.issue(path, Status::Critical, message);
        }
        ders.len()
    }

    fn judge_crl(
        &self,
        path: &Path,
        index: usize,
        crl: &x509_parser::revocation_list::CertificateRevocationList<'_>,
        signature: CrlSignature,
    ) -> CrlCheck {
        let now = self.opts.now;
        let this_update = crl.last_update().to_datetime();
        let next_update = crl.next_update().map(|t| t.to_datetime());
        let mut status = Status::Ok;
        let mut reasons = Vec::new();
        let resign = "re-sign it (`pgmoat certs crl`, or the CA that issued it)";
        match next_update {
            None => {
                status = Status::Warning;
                reasons.push("no next update: consumers cannot tell when it is stale".into());
            }
            Some(next) if next < now => {
                status = Status::Critical;
                let ago = (now - next).whole_hours();
                reasons.push(format!(
                    "past its next update ({}, {ago} hours ago): pgmoat refuses the certificates it covers under tls_crl_expired = refuse; {resign}",
                    format_utc(next)
                ));
            }
            Some(next) if (next - now).whole_days() < self.opts.crl_warn_days => {
                status = Status::Warning;
                reasons.push(format!(
                    "next update in {} hours (warning at {} days); {resign}",
                    (next - now).whole_hours(),
                    self.opts.crl_warn_days
                ));
            }
            Some(_) => {}
        }
        if this_update > now {
            status = Status::Critical;
            reasons.push(format!(
                "not valid before {} (this update is in the future)",
                format_utc(this_update)
            ));
        }
        if let CrlSignature::Invalid { reason } = &signature {
            status = Status::Critical;
            reasons.push(format!("signature does not verify: {reason}"));
        }
        CrlCheck {
            path: path.to_path_buf(),
            index,
            issuer: crl.issuer().to_string(),
            crl_number: crl.crl_number().map(|n| n.to_string()),
            this_update,
            next_update,
            revoked: crl.iter_revoked_certificates().count(),
            signature,
            status,
            reasons,
        }
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
            Some("crt" | "pem" | "cer" | "key" | "crl")
        )
}

fn extension_rank(path: &Path) -> u8 {
    match path.extension().and_then(|e| e.to_str()) {
        Some("crt" | "cer") => 0,
        Some("pem") => 1,
        _ => 2,
    }
}

mod chain;
#[cfg(test)]
mod tests;
