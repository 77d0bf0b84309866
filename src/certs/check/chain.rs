//! Chain verification for `certs check`: does a certificate chain to the CA, for the purpose
//! its extended key usage names? Uses rustls' own webpki verifiers, so the answer matches
//! what pgmoat's TLS acceptor and connector will decide.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use time::OffsetDateTime;

use crate::certs::CertsError;
use crate::certs::certinfo::{CertInfo, format_utc, read_pem_certs};

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

/// The CA certificates chains are checked against.
pub(super) struct TrustSet {
    path: PathBuf,
    ders: Vec<CertificateDer<'static>>,
    infos: Vec<CertInfo>,
    roots: Arc<RootCertStore>,
}

impl TrustSet {
    pub(super) fn load(path: &Path) -> Result<Self, CertsError> {
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

/// Whether a CRL was signed by the checked CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrlSignature {
    /// Signed by the CA certificate in `ca` whose subject is the CRL's issuer.
    Verified { ca: PathBuf },
    /// Issued by a CA that is not in the CA file (for example PostgreSQL's own CA).
    OtherIssuer,
    /// No CA was given or found, so the signature was not checked.
    NoCa,
    /// The issuer is the checked CA but the signature does not verify.
    Invalid { reason: String },
}

impl fmt::Display for CrlSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrlSignature::Verified { ca } => {
                write!(f, "ok (signed by the CA in {})", ca.display())
            }
            CrlSignature::OtherIssuer => f.write_str("not checked (issuer is not the checked CA)"),
            CrlSignature::NoCa => f.write_str("not checked (no CA file; pass --ca)"),
            CrlSignature::Invalid { reason } => write!(f, "INVALID: {reason}"),
        }
    }
}

impl TrustSet {
    /// Checks `crl`'s signature with the CA certificate named as its issuer.
    pub(super) fn crl_signature(
        &self,
        crl: &x509_parser::revocation_list::CertificateRevocationList<'_>,
    ) -> CrlSignature {
        let mut named = false;
        for der in &self.ders {
            let Ok((_, ca)) = x509_parser::parse_x509_certificate(der) else {
                continue;
            };
            if ca.subject().as_raw() != crl.issuer().as_raw() {
                continue;
            }
            named = true;
            if crl.verify_signature(ca.public_key()).is_ok() {
                return CrlSignature::Verified {
                    ca: self.path.clone(),
                };
            }
        }
        if named {
            CrlSignature::Invalid {
                reason: format!(
                    "the signature does not verify with the key of {}",
                    self.path.display()
                ),
            }
        } else {
            CrlSignature::OtherIssuer
        }
    }
}

pub(super) struct Verifier {
    provider: Arc<CryptoProvider>,
    now: OffsetDateTime,
}

impl Verifier {
    pub(super) fn new(now: OffsetDateTime) -> Self {
        Verifier {
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            now,
        }
    }

    pub(super) fn chain_status(
        &self,
        der: &CertificateDer<'_>,
        info: &CertInfo,
        intermediates: &[CertificateDer<'static>],
        trust: Option<&TrustSet>,
    ) -> ChainStatus {
        let Some(trust) = trust else {
            return ChainStatus::NoCa;
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
        let now = self.now;
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
}
