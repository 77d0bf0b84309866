use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::WebPkiClientVerifier;

use super::*;
use crate::certs::{CaOptions, IssueOptions, init_ca, issue};

struct Ca {
    dir: tempfile::TempDir,
}

impl Ca {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        init_ca(&CaOptions::new(dir.path())).unwrap();
        Ca { dir }
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    fn client(&self, name: &str) -> PathBuf {
        let mut opts = IssueOptions::new(name, Vec::<String>::new(), self.dir.path());
        opts.client = true;
        issue(&opts).unwrap().cert
    }

    fn revoke(&self, target: RevokeTarget) -> Result<Revoked, CertsError> {
        revoke(&RevokeOptions {
            target,
            reason: Reason::KeyCompromise,
            crl: CrlOptions::new(self.ca_dir(), DEFAULT_CRL_DAYS),
        })
    }

    /// What rustls decides for `cert` with the CA's CRL loaded.
    fn verify(&self, cert: &Path) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(self.ca_dir().join("ca.crt")).unwrap())
            .unwrap();
        let crl = CertificateRevocationListDer::from_pem_file(crl_path(&self.ca_dir())).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls([crl])
            .enforce_revocation_expiration()
            .build()
            .unwrap();
        let der = CertificateDer::from_pem_file(cert).unwrap();
        verifier
            .verify_client_cert(&der, &[], UnixTime::now())
            .map(|_| ())
    }
}

fn parsed_crl(path: &Path) -> (u64, Vec<String>, Option<i64>) {
    let der = CertificateRevocationListDer::from_pem_file(path).unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(der.as_ref()).unwrap();
    let number = u64::try_from(crl.crl_number().unwrap().clone()).unwrap();
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| hex_upper(strip_zeros(r.raw_serial())))
        .collect();
    (
        number,
        serials,
        crl.next_update()
            .map(|t| t.timestamp() - OffsetDateTime::now_utc().unix_timestamp()),
    )
}

#[test]
fn an_empty_crl_then_a_revocation_rustls_refuses_and_numbers_grow() {
    let ca = Ca::new();
    let laptop = ca.client("alice-laptop");
    let phone = ca.client("alice-phone");

    let empty = sign_crl(&CrlOptions::new(ca.ca_dir(), 7)).unwrap();
    assert_eq!(empty.path, ca.ca_dir().join("ca.crl"));
    assert_eq!((empty.crl_number, empty.revoked), (1, 0));
    let (number, serials, left) = parsed_crl(&empty.path);
    assert_eq!((number, serials.len()), (1, 0));
    let left = left.expect("a next update");
    assert!(left > 6 * 86_400 && left <= 7 * 86_400, "{left}");
    ca.verify(&laptop).expect("nothing is revoked yet");

    let revoked = ca
        .revoke(RevokeTarget::Certificate(laptop.clone()))
        .unwrap();
    assert!(revoked.newly);
    assert_eq!(revoked.crl.crl_number, 2);
    assert_eq!(revoked.entry.reason, Reason::KeyCompromise);
    assert!(
        revoked
            .entry
            .subject
            .as_deref()
            .unwrap()
            .contains("alice-laptop")
    );
    let (number, serials, _) = parsed_crl(&revoked.crl.path);
    assert_eq!(number, 2);
    assert_eq!(serials, vec![revoked.entry.serial.clone()]);
    let err = ca.verify(&laptop).unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
        ),
        "{err:?}"
    );
    ca.verify(&phone)
        .expect("the other certificate is not revoked");

    // Revoking again changes nothing but the CRL number; re-signing keeps the list.
    let again = ca.revoke(RevokeTarget::Certificate(laptop)).unwrap();
    assert!(!again.newly);
    assert_eq!(again.crl.revoked, 1);
    let resigned = sign_crl(&CrlOptions::new(ca.ca_dir(), 30)).unwrap();
    assert_eq!((resigned.crl_number, resigned.revoked), (4, 1));
    assert_eq!(revoked_entries(&ca.ca_dir()).unwrap().len(), 1);
    assert_eq!(
        fs::metadata(&resigned.path).unwrap().permissions().mode() & 0o777,
        0o644
    );
}

#[test]
fn revoke_by_serial_and_refusals() {
    let ca = Ca::new();
    let phone = ca.client("phone");
    let der = CertificateDer::from_pem_file(&phone).unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    // The colon form x509 tools print is accepted.
    let revoked = ca
        .revoke(RevokeTarget::Serial(x.raw_serial_as_string()))
        .unwrap();
    assert_eq!(revoked.entry.serial, hex_upper(strip_zeros(x.raw_serial())));
    assert!(ca.verify(&phone).is_err());

    // A certificate of another CA, the CA itself, and nonsense are refused, and the
    // registry is left as it was.
    let other = Ca::new();
    let foreign = other.client("foreign");
    let err = ca.revoke(RevokeTarget::Certificate(foreign)).unwrap_err();
    assert!(err.to_string().contains("not issued by this CA"), "{err}");
    let err = ca
        .revoke(RevokeTarget::Certificate(ca.ca_dir().join("ca.crt")))
        .unwrap_err();
    assert!(err.to_string().contains("CA's own certificate"), "{err}");
    for bad in ["", "xyz", "00", &"A".repeat(41)] {
        let err = ca
            .revoke(RevokeTarget::Serial(bad.to_string()))
            .unwrap_err();
        assert!(
            matches!(err, CertsError::BadRevocation { .. }),
            "{bad}: {err}"
        );
    }
    assert_eq!(revoked_entries(&ca.ca_dir()).unwrap().len(), 1);
}

#[test]
fn without_a_ca_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let err = sign_crl(&CrlOptions::new(dir.path().join("ca"), 7)).unwrap_err();
    assert!(matches!(err, CertsError::CaMissing { .. }), "{err}");
    assert!(!dir.path().join("ca").exists());
}

#[test]
fn a_broken_registry_is_an_error_naming_the_file() {
    let ca = Ca::new();
    fs::write(registry_path(&ca.ca_dir()), "crl_number = \"x\"").unwrap();
    let err = sign_crl(&CrlOptions::new(ca.ca_dir(), 7)).unwrap_err();
    assert!(err.to_string().contains("revoked.toml"), "{err}");
    assert!(!crl_path(&ca.ca_dir()).exists());
}
