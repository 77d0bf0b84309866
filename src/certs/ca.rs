//! The certificate authority: `init_ca` creates it, `load_ca` reads it back for issuance and
//! refuses a CA whose key does not belong to its certificate.

use rcgen::{
    BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::files::{self, CERT_MODE, KEY_MODE};
use super::params::{check_validity, distinguished_name, generate_key, random_serial};
use super::{CaOptions, CaPaths, CertsError, DEFAULT_CA_CN};

/// Creates `<out_dir>/ca/ca.crt` (0644) and `<out_dir>/ca/ca.key` (0600). Refuses to replace
/// either file unless `force` is set.
pub fn init_ca(opts: &CaOptions) -> Result<CaPaths, CertsError> {
    check_validity(opts.not_before, opts.not_after)?;
    let ca_dir = opts.out_dir.join("ca");
    let paths = CaPaths::in_dir(&ca_dir);
    files::ensure_absent(&[&paths.key, &paths.cert], opts.force)?;

    let key = generate_key(opts.key_algorithm)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&opts.subject, DEFAULT_CA_CN)?;
    // pathlen 0: this CA signs leaf certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = opts.not_before;
    params.not_after = opts.not_after;
    params.serial_number = Some(random_serial());
    let cert = params
        .self_signed(&key)
        .map_err(|source| CertsError::Generate {
            what: "sign the CA certificate",
            source,
        })?;

    files::ensure_dir(&ca_dir)?;
    files::write_atomic(
        &paths.key,
        key.serialize_pem().as_bytes(),
        KEY_MODE,
        opts.force,
    )?;
    files::write_atomic(&paths.cert, cert.pem().as_bytes(), CERT_MODE, opts.force)?;
    Ok(paths)
}

/// Loads `ca.crt` + `ca.key` from `ca_dir` as an rcgen issuer.
pub(crate) fn load_ca(ca_dir: &std::path::Path) -> Result<Issuer<'static, KeyPair>, CertsError> {
    load_ca_with_cert(ca_dir).map(|(issuer, _)| issuer)
}

/// [`load_ca`], and the CA certificate itself (revocation checks issuers against it).
pub(crate) fn load_ca_with_cert(
    ca_dir: &std::path::Path,
) -> Result<(Issuer<'static, KeyPair>, CertificateDer<'static>), CertsError> {
    let paths = CaPaths::in_dir(ca_dir);
    for path in [&paths.cert, &paths.key] {
        if !path.exists() {
            return Err(CertsError::CaMissing { path: path.clone() });
        }
    }
    let bad_cert = |reason: String| CertsError::BadCa {
        path: paths.cert.clone(),
        reason,
    };
    let bad_key = |reason: String| CertsError::BadCa {
        path: paths.key.clone(),
        reason,
    };

    let cert_pem = files::read_to_string(&paths.cert)?;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| bad_cert(format!("no readable certificate ({e})")))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| bad_cert(format!("cannot parse certificate ({e})")))?;
    if !x509.is_ca() {
        return Err(bad_cert(
            "not a CA certificate (basicConstraints CA is not set)".into(),
        ));
    }

    let key_pem = files::read_to_string(&paths.key)?;
    // rcgen's error names the problem, never the key bytes.
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| bad_key(format!("cannot parse private key ({e})")))?;
    if key.der_bytes() != x509.public_key().subject_public_key.data.as_ref() {
        return Err(bad_key(format!(
            "private key does not match {}",
            paths.cert.display()
        )));
    }
    let issuer = Issuer::from_ca_cert_der(&der, key)
        .map_err(|e| bad_cert(format!("cannot use as issuer ({e})")))?;
    Ok((issuer, der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn init_writes_a_ca_with_modes_and_extensions() {
        let dir = tempfile::tempdir().unwrap();
        let paths = init_ca(&CaOptions::new(dir.path())).unwrap();
        assert_eq!(paths.cert, dir.path().join("ca/ca.crt"));
        assert_eq!(fs::metadata(&paths.key).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&paths.cert).unwrap().mode() & 0o777, 0o644);

        let der = CertificateDer::from_pem_file(&paths.cert).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(x.is_ca());
        let cn = x
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(cn, "pgmoat CA");
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        assert!(
            x.iter_extensions()
                .any(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
        );
        assert!(x.raw_serial().len() >= 16);
        load_ca(&dir.path().join("ca")).unwrap();
    }

    #[test]
    fn init_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let paths = init_ca(&CaOptions::new(dir.path())).unwrap();
        let key_before = fs::read(&paths.key).unwrap();
        let err = init_ca(&CaOptions::new(dir.path())).unwrap_err();
        assert!(matches!(err, CertsError::AlreadyExists { .. }), "{err}");
        assert_eq!(fs::read(&paths.key).unwrap(), key_before);

        let mut opts = CaOptions::new(dir.path());
        opts.force = true;
        init_ca(&opts).unwrap();
        assert_ne!(fs::read(&paths.key).unwrap(), key_before);
    }

    #[test]
    fn load_rejects_missing_and_mismatched_ca() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_ca(&dir.path().join("ca")).unwrap_err();
        assert!(matches!(err, CertsError::CaMissing { .. }), "{err}");

        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        init_ca(&CaOptions::new(a.path())).unwrap();
        init_ca(&CaOptions::new(b.path())).unwrap();
        fs::copy(b.path().join("ca/ca.key"), a.path().join("ca/ca.key")).unwrap();
        let err = load_ca(&a.path().join("ca")).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }
}
