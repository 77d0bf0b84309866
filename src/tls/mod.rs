//! TLS on both sides: the rustls server config clients connect to (by client_tls_sslmode),
//! the rustls client config towards PostgreSQL (by server_tls_sslmode), and the loading of
//! certificate, key and CA files with errors that name the setting, file and reason.

pub mod accepted;
pub mod acceptor;
pub mod binding;
pub mod connector;
pub mod crl;
mod files;

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;

use std::collections::BTreeMap;

use crate::config::{Config, SslMode, TlsVersion};

pub use acceptor::ClientCerts;
pub use crl::LoadedCrl;
pub use files::{LoadedCert, SYSTEM_STORE};

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
    #[error("databases.{database}: {source}")]
    Database {
        database: String,
        #[source]
        source: Box<TlsError>,
    },
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

/// TLS towards one database's server: the sslmode and the rustls config it needs.
pub struct ServerTls {
    pub sslmode: SslMode,
    /// `None` when sslmode = disable.
    pub connector: Option<Arc<ClientConfig>>,
}

/// Everything TLS that a reload replaces at once: built and validated completely before it is
/// swapped in, so a bad file never half-applies.
pub struct TlsState {
    /// `None` when client_tls_sslmode = disable.
    pub acceptor: Option<Arc<ServerConfig>>,
    /// Towards PostgreSQL by the global server_tls_* settings.
    pub server: ServerTls,
    /// Database entries with server_tls_* settings of their own, by entry name.
    pub databases: BTreeMap<String, ServerTls>,
    /// Every certificate loaded, for expiry logging and the admin console.
    pub certs: Vec<LoadedCert>,
    /// Every CRL loaded, both ways.
    pub crls: Vec<LoadedCrl>,
    /// SCRAM channel binding data of pgmoat's own certificate towards clients
    /// (tls-server-end-point); `None` without TLS or for a certificate with no defined hash.
    pub server_end_point: Option<Vec<u8>>,
}

impl TlsState {
    pub fn load(config: &Config, client_certs: ClientCerts) -> Result<TlsState, TlsError> {
        let provider = provider();
        let mut certs = Vec::new();
        let mut crls = Vec::new();
        let acceptor =
            acceptor::server_config(config, client_certs, &provider, &mut certs, &mut crls)?;
        let server_crls = match &config.server_tls_crl_file {
            Some(path) => Some(crl::read_crls("server_tls_crl_file", path, &mut crls)?),
            None => None,
        };
        let server = ServerTls {
            sslmode: config.server_tls_sslmode,
            connector: connector::client_config(
                config,
                connector::ServerTlsSettings::global(config),
                server_crls.as_ref(),
                &provider,
                &mut certs,
            )?,
        };
        let mut databases = BTreeMap::new();
        for (name, entry) in config
            .databases
            .iter()
            .filter(|(_, e)| e.overrides_server_tls())
        {
            let settings = connector::ServerTlsSettings::for_database(config, entry);
            let connector = connector::client_config(
                config,
                settings,
                server_crls.as_ref(),
                &provider,
                &mut certs,
            )
            .map_err(|source| TlsError::Database {
                database: name.clone(),
                source: Box::new(source),
            })?;
            databases.insert(
                name.clone(),
                ServerTls {
                    sslmode: settings.sslmode,
                    connector,
                },
            );
        }
        Ok(TlsState {
            acceptor: acceptor.config,
            server,
            databases,
            certs,
            crls,
            server_end_point: acceptor.end_point,
        })
    }

    /// TLS towards the server of database entry `entry` (a name or `*`): the entry's own
    /// settings where it has some, else the global ones.
    pub fn server_for_entry(&self, entry: &str) -> &ServerTls {
        self.databases.get(entry).unwrap_or(&self.server)
    }
}
