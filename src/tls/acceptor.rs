//! The rustls server config clients connect to. client_tls_sslmode decides whether a client
//! certificate is refused, optional (but verified when sent) or mandatory; PgBouncer's
//! semantics, where verify-ca and verify-full mean the same on this side (a client has no host
//! name to check). Under auth_type = hba the rules decide instead (see [`ClientCerts`]).
//! client_tls_crl_file adds revocation checks to the verifier.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, ServerConfig, SignatureScheme};

use super::crl::{LoadedCrl, RevocationPolicy, RevokedIndex, log_refusal, read_crls};
use super::files::{key_mismatch, read_cert_and_key, read_roots};
use super::{LoadedCert, TlsError, protocol_versions};
use crate::config::{Config, SslMode};

/// ALPN protocol of PostgreSQL 17's direct TLS; required there, optional after SSLRequest.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Whether the handshake asks clients for a certificate, and whether it insists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// By client_tls_sslmode: mandatory under verify-ca/verify-full, else optional when a CA
    /// is set.
    BySslMode,
    /// Decided by auth_hba_file: mandatory when no rule accepts a connection without one (or
    /// when client_tls_sslmode demands one anyway).
    Hba { mandatory: bool },
}

/// What the acceptor built besides the config itself.
pub struct Built {
    pub config: Option<Arc<ServerConfig>>,
    /// tls-server-end-point data of the certificate shown to clients.
    pub end_point: Option<Vec<u8>>,
}

pub fn server_config(
    config: &Config,
    certs: ClientCerts,
    provider: &Arc<CryptoProvider>,
    loaded: &mut Vec<LoadedCert>,
    crls: &mut Vec<LoadedCrl>,
) -> Result<Built, TlsError> {
    if config.client_tls_sslmode == SslMode::Disable {
        return Ok(Built {
            config: None,
            end_point: None,
        });
    }
    let cert_path = config
        .client_tls_cert_file
        .as_deref()
        .ok_or(TlsError::Missing("client_tls_cert_file"))?;
    let (chain, key, key_path) = read_cert_and_key(
        ("client_tls_cert_file", cert_path),
        ("client_tls_key_file", config.client_tls_key_file.as_deref()),
        loaded,
    )?;
    let end_point = chain
        .first()
        .and_then(|leaf| super::binding::tls_server_end_point(leaf));

    let by_sslmode = matches!(
        config.client_tls_sslmode,
        SslMode::VerifyCa | SslMode::VerifyFull
    );
    // verify-ca/verify-full still demand a certificate from everyone under hba: the rules
    // then only add checks.
    let mandatory = match certs {
        ClientCerts::BySslMode => by_sslmode,
        ClientCerts::Hba { mandatory } => mandatory || by_sslmode,
    };
    let verifier = match config.client_tls_ca_file.as_deref() {
        Some(ca) => {
            let roots = Arc::new(read_roots("client_tls_ca_file", ca, loaded)?);
            let crl_set = match &config.client_tls_crl_file {
                Some(path) => Some(read_crls("client_tls_crl_file", path, crls)?),
                None => None,
            };
            let build = |pass: Option<super::crl::Pass>| {
                let mut builder =
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
                if !mandatory {
                    // A certificate is optional, but one that is sent must still verify.
                    builder = builder.allow_unauthenticated();
                }
                if let (Some(set), Some(pass)) = (&crl_set, pass) {
                    builder = builder.with_crls(set.ders.iter().cloned());
                    if pass.end_entity_only {
                        builder = builder.only_check_end_entity_revocation();
                    }
                    if pass.allow_unknown {
                        builder = builder.allow_unknown_revocation_status();
                    }
                    if pass.enforce_expiry {
                        builder = builder.enforce_revocation_expiration();
                    }
                }
                builder
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))
            };
            match crl_set {
                None => build(None)?,
                Some(ref set) => {
                    let policy = RevocationPolicy {
                        expired: config.tls_crl_expired,
                        unknown: config.tls_crl_unknown_status,
                    };
                    let passes = policy
                        .passes()
                        .into_iter()
                        .map(|pass| build(Some(pass)))
                        .collect::<Result<Vec<_>, _>>()?;
                    Arc::new(RevocationChecked {
                        passes,
                        index: set.index.clone(),
                    })
                }
            }
        }
        None if mandatory => return Err(TlsError::Missing("client_tls_ca_file")),
        None => WebPkiClientVerifier::no_client_auth(),
    };

    let key_setting = if config.client_tls_key_file.is_some() {
        "client_tls_key_file"
    } else {
        "client_tls_cert_file"
    };
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&protocol_versions(&config.client_tls_protocols))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| key_mismatch(e, "client_tls_cert_file", cert_path, key_setting, &key_path))?;
    server.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    // A resumed session restores the client certificate from the cache without verifying it
    // again, so after a CA or CRL change it would bypass the new policy. PostgreSQL turns
    // resumption off too.
    server.session_storage = Arc::new(NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    Ok(Built {
        config: Some(Arc::new(server)),
        end_point,
    })
}

/// webpki's client verifier run once per revocation pass (see [`RevocationPolicy::passes`]),
/// logging which certificate a CRL refused: rustls' error does not say.
#[derive(Debug)]
struct RevocationChecked {
    /// Never empty; the first pass also answers the handshake questions.
    passes: Vec<Arc<dyn ClientCertVerifier>>,
    index: Arc<RevokedIndex>,
}

impl ClientCertVerifier for RevocationChecked {
    fn offer_client_auth(&self) -> bool {
        self.passes[0].offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.passes[0].client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.passes[0].root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let mut verified = None;
        for pass in &self.passes {
            match pass.verify_client_cert(end_entity, intermediates, now) {
                Ok(v) => verified = Some(v),
                Err(e) => {
                    log_refusal("client", &e, end_entity, intermediates, &self.index);
                    return Err(e);
                }
            }
        }
        verified.ok_or(Error::General("no verifier pass".into()))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.passes[0].verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.passes[0].verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.passes[0].supported_verify_schemes()
    }
}
