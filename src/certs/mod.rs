//! The built-in certificate tool (`pgmoat certs`): a CA, server and client certificates, and
//! expiry checks. Stub: the real implementation lands on the `certs` branch.

use std::path::PathBuf;

use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{0}")]
    NotImplemented(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    #[default]
    EcP256,
    Rsa2048,
}

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

#[derive(Debug, Clone)]
pub struct CaPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct IssueOptions {
    pub name: String,
    pub sans: Vec<String>,
    pub out_dir: PathBuf,
    pub ca_dir: Option<PathBuf>,
    pub client: bool,
    pub subject: Subject,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub key_algorithm: KeyAlgorithm,
    pub force: bool,
}

#[derive(Debug, Clone)]
pub struct IssuedPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub combined: PathBuf,
}

pub fn init_ca(_opts: &CaOptions) -> Result<CaPaths, CertsError> {
    Err(CertsError::NotImplemented("certs init"))
}

pub fn issue(_opts: &IssueOptions) -> Result<IssuedPaths, CertsError> {
    Err(CertsError::NotImplemented("certs issue"))
}
