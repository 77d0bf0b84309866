//! TLS on both sides: the rustls server config clients connect to (by client_tls_sslmode),
//! the rustls client config towards PostgreSQL (by server_tls_sslmode), and the loading of
//! certificate, key and CA files with errors that name the setting, file and reason.

pub mod acceptor;
pub mod binding;
pub mod connector;
mod files;

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;

use crate::config::{Config, TlsVersion};

pub use files::LoadedCert;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting} = {path}: cannot read: {reason}")]
    Read {
        setting: &'static str,
        path: String,
        reason: String,
    },
    #[error("{setting} = {path}: no {what} found in the file")]
    Empty {
        setting: &'static str,
        path: String,
        what: &'static str,
    },
    #[error("{setting} = {path}: {reason}")]
    Invalid {
        setting: &'static str,
        path: String,
        reason: String,
    },
    #[error("{key_setting} = {key_path} does not belong to {cert_setting} = {cert_path}")]
    KeyMismatch {
        cert_setting: &'static str,
        cert_path: String,
        key_setting: &'static str,
        key_path: String,
    },
    #[error("{0} is required for this sslmode but not set")]
    Missing(&'static str),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// The process-wide crypto provider; always passed explicitly, never relied on as a default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs the provider as rustls' process default, for code paths (tests, libraries) that
/// use the plain builders. Harmless when already installed.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn protocol_versions(versions: &[TlsVersion]) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut out = Vec::new();
    if versions.contains(&TlsVersion::Tls13) {
        out.push(&rustls::version::TLS13);
    }
    if versions.contains(&TlsVersion::Tls12) {
        out.push(&rustls::version::TLS12);
    }
    out
}

/// Everything TLS that a reload replaces at once: built and validated completely before it is
/// swapped in, so a bad file never half-applies.
pub struct TlsState {
    /// `None` when client_tls_sslmode = disable.
    pub acceptor: Option<Arc<ServerConfig>>,
    /// `None` when server_tls_sslmode = disable.
    pub connector: Option<Arc<ClientConfig>>,
    /// Every certificate loaded, for expiry logging and the admin console.
    pub certs: Vec<LoadedCert>,
    /// SCRAM channel binding data of pgmoat's own certificate towards clients
    /// (tls-server-end-point); `None` without TLS or for a certificate with no defined hash.
    pub server_end_point: Option<Vec<u8>>,
}

impl TlsState {
    pub fn load(config: &Config) -> Result<TlsState, TlsError> {
        let provider = provider();
        let mut certs = Vec::new();
        let mut server_end_point = None;
        let acceptor =
            acceptor::server_config(config, &provider, &mut certs, &mut server_end_point)?;
        let connector = connector::client_config(config, &provider, &mut certs)?;
        Ok(TlsState {
            acceptor,
            connector,
            certs,
            server_end_point,
        })
    }
}
