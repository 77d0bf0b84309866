//! The rustls client config towards PostgreSQL, by server_tls_sslmode (libpq's meanings):
//! verify-full checks the chain and the host name (SANs, with libpq's fall-back to the CN when
//! a certificate has no DNS SAN), verify-ca the chain only, require/prefer/allow encrypt
//! without checking who answers.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, Resumption, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

use super::crl::{CrlSet, RevocationPolicy, RevokedIndex, log_refusal};
use super::files::{key_mismatch, read_cert_and_key, read_roots};
use super::{LoadedCert, TlsError, protocol_versions};
use crate::config::{Config, DatabaseConfig, SslMode};

/// The server_tls_* settings that apply to one database entry: its own where it sets them,
/// else the global ones.
#[derive(Debug, Clone, Copy)]
pub struct ServerTlsSettings<'a> {
    pub sslmode: SslMode,
    pub ca_file: Option<&'a Path>,
    pub cert_file: Option<&'a Path>,
    pub key_file: Option<&'a Path>,
}

impl<'a> ServerTlsSettings<'a> {
    pub fn global(config: &'a Config) -> Self {
        ServerTlsSettings {
            sslmode: config.server_tls_sslmode,
            ca_file: config.server_tls_ca_file.as_deref(),
            cert_file: config.server_tls_cert_file.as_deref(),
            key_file: config.server_tls_key_file.as_deref(),
        }
    }

    /// An entry's settings over the global ones. A certificate set in the entry brings its own
    /// key (or none, for a combined file): the global key never pairs with another certificate.
    pub fn for_database(config: &'a Config, entry: &'a DatabaseConfig) -> Self {
        let global = Self::global(config);
        let (cert_file, key_file) = match &entry.server_tls_cert_file {
            Some(cert) => (Some(cert.as_path()), entry.server_tls_key_file.as_deref()),
            None => (global.cert_file, global.key_file),
        };
        ServerTlsSettings {
            sslmode: entry.server_tls_sslmode.unwrap_or(global.sslmode),
            ca_file: entry.server_tls_ca_file.as_deref().or(global.ca_file),
            cert_file,
            key_file,
        }
    }
}

pub fn client_config(
    config: &Config,
    settings: ServerTlsSettings<'_>,
    crls: Option<&CrlSet>,
    provider: &Arc<CryptoProvider>,
    loaded: &mut Vec<LoadedCert>,
) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    let mode = settings.sslmode;
    if mode == SslMode::Disable {
        return Ok(None);
    }
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, settings.ca_file) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(TlsError::Missing("server_tls_ca_file"));
        }
        (SslMode::VerifyCa | SslMode::VerifyFull, Some(ca)) => {
            let roots = Arc::new(read_roots("server_tls_ca_file", ca, loaded)?);
            let policy = RevocationPolicy {
                expired: config.tls_crl_expired,
                unknown: config.tls_crl_unknown_status,
            };
            let passes = match crls {
                None => vec![None],
                Some(_) => policy.passes().into_iter().map(Some).collect(),
            };
            let passes = passes
                .into_iter()
                .map(|pass| {
                    let mut builder = WebPkiServerVerifier::builder_with_provider(
                        roots.clone(),
                        provider.clone(),
                    );
                    if let (Some(set), Some(pass)) = (crls, pass) {
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
                })
                .collect::<Result<Vec<_>, _>>()?;
            Arc::new(PgServerVerifier {
                passes,
                index: crls.map(|set| set.index.clone()).unwrap_or_default(),
                check_name: mode == SslMode::VerifyFull,
            })
        }
        _ => Arc::new(EncryptOnly {
            provider: provider.clone(),
        }),
    };

    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&protocol_versions(&config.server_tls_protocols))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut client = match (settings.cert_file, settings.key_file) {
        (Some(cert_path), key_path) => {
            let (chain, key, key_path) = read_cert_and_key(
                ("server_tls_cert_file", cert_path),
                ("server_tls_key_file", key_path),
                loaded,
            )?;
            let key_setting = if settings.key_file.is_some() {
                "server_tls_key_file"
            } else {
                "server_tls_cert_file"
            };
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                key_mismatch(e, "server_tls_cert_file", cert_path, key_setting, &key_path)
            })?
        }
        (None, Some(_)) => return Err(TlsError::Missing("server_tls_cert_file")),
        (None, None) => builder.with_no_client_auth(),
    };
    // PostgreSQL does not resume sessions; keeping tickets would only hold old state alive.
    client.resumption = Resumption::disabled();
    Ok(Some(Arc::new(client)))
}

/// verify-full / verify-ca on top of webpki, once per revocation pass. webpki checks chain
/// and revocation before the name, so a name error means the chain itself was fine.
#[derive(Debug)]
struct PgServerVerifier {
    /// Never empty; the first pass also checks handshake signatures.
    passes: Vec<Arc<WebPkiServerVerifier>>,
    index: Arc<RevokedIndex>,
    check_name: bool,
}

impl ServerCertVerifier for PgServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        for pass in &self.passes {
            match pass.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(_) => {}
                Err(Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) if !self.check_name || cn_matches_without_dns_san(end_entity, server_name) => {}
                Err(e) => {
                    log_refusal("server", &e, end_entity, intermediates, &self.index);
                    return Err(e);
                }
            }
        }
        Ok(ServerCertVerified::assertion())
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

/// libpq's rule: the CN is compared with the host name only when the certificate has no DNS
/// SAN at all (many PostgreSQL certificates made with openssl have just a CN).
fn cn_matches_without_dns_san(
    end_entity: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
) -> bool {
    let ServerName::DnsName(name) = server_name else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(end_entity) else {
        return false;
    };
    let has_dns_san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value
                .general_names
                .iter()
                .any(|n| matches!(n, x509_parser::extensions::GeneralName::DNSName(_)))
        });
    if has_dns_san {
        return false;
    }
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .any(|cn| cn.eq_ignore_ascii_case(name.as_ref()))
}

/// sslmode require / prefer / allow: encrypted, but whoever answers is accepted (libpq's
/// meaning). Handshake signatures are still checked, so the session keys are sound.
#[derive(Debug)]
struct EncryptOnly {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
