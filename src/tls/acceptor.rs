//! The rustls server config clients connect to. client_tls_sslmode decides whether a client
//! certificate is refused, optional (but verified when sent) or mandatory; PgBouncer's
//! semantics, where verify-ca and verify-full mean the same on this side (a client has no host
//! name to check).

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};

use super::files::{key_mismatch, read_certs, read_key, read_roots};
use super::{LoadedCert, TlsError, protocol_versions};
use crate::config::{Config, SslMode};

/// ALPN protocol of PostgreSQL 17's direct TLS; required there, optional after SSLRequest.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

pub fn server_config(
    config: &Config,
    provider: &Arc<CryptoProvider>,
    loaded: &mut Vec<LoadedCert>,
    end_point: &mut Option<Vec<u8>>,
) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    if config.client_tls_sslmode == SslMode::Disable {
        return Ok(None);
    }
    let cert_path = config
        .client_tls_cert_file
        .as_deref()
        .ok_or(TlsError::Missing("client_tls_cert_file"))?;
    let key_path = config
        .client_tls_key_file
        .as_deref()
        .ok_or(TlsError::Missing("client_tls_key_file"))?;
    let chain = read_certs("client_tls_cert_file", cert_path, loaded)?;
    let key = read_key("client_tls_key_file", key_path)?;
    *end_point = chain
        .first()
        .and_then(|leaf| super::binding::tls_server_end_point(leaf));

    let mandatory = matches!(
        config.client_tls_sslmode,
        SslMode::VerifyCa | SslMode::VerifyFull
    );
    let verifier = match config.client_tls_ca_file.as_deref() {
        Some(ca) => {
            let roots = Arc::new(read_roots("client_tls_ca_file", ca, loaded)?);
            let builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            let builder = if mandatory {
                builder
            } else {
                // A certificate is optional, but one that is sent must still verify.
                builder.allow_unauthenticated()
            };
            builder
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?
        }
        None if mandatory => return Err(TlsError::Missing("client_tls_ca_file")),
        None => WebPkiClientVerifier::no_client_auth(),
    };

    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&protocol_versions(&config.client_tls_protocols))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            key_mismatch(
                e,
                "client_tls_cert_file",
                cert_path,
                "client_tls_key_file",
                key_path,
            )
        })?;
    server.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    // A resumed session restores the client certificate from the cache without verifying it
    // again, so after a CA change it would bypass the new policy. PostgreSQL turns resumption
    // off too.
    server.session_storage = Arc::new(NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    Ok(Some(Arc::new(server)))
}
