use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

use super::*;
use crate::certs::{CaOptions, init_ca};

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o777
}

fn cert_der(p: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(p).unwrap()
}

fn with_ca() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    init_ca(&CaOptions::new(dir.path())).unwrap();
    dir
}

#[test]
fn issue_writes_files_with_modes() {
    let dir = with_ca();
    let p = issue(&IssueOptions::new("server", ["DNS:localhost"], dir.path())).unwrap();
    assert_eq!(p.cert, dir.path().join("server.crt"));
    assert_eq!(p.key, dir.path().join("server.key"));
    assert_eq!(p.combined, dir.path().join("server-combined.pem"));
    assert_eq!(mode(&p.cert), 0o644);
    assert_eq!(mode(&p.key), 0o600);
    assert_eq!(mode(&p.combined), 0o600);

    // Combined = the same certificate, then the same key.
    let combined = fs::read_to_string(&p.combined).unwrap();
    let cert = fs::read_to_string(&p.cert).unwrap();
    let key = fs::read_to_string(&p.key).unwrap();
    assert_eq!(combined, format!("{cert}{key}"));
    assert!(PrivateKeyDer::from_pem_file(&p.combined).is_ok());
}

#[test]
fn second_issue_needs_force_and_keeps_the_key() {
    let dir = with_ca();
    let mut opts = IssueOptions::new("db", ["DNS:db"], dir.path());
    let p = issue(&opts).unwrap();
    let key_before = fs::read(&p.key).unwrap();
    let cert_before = fs::read(&p.cert).unwrap();

    let err = issue(&opts).unwrap_err();
    assert!(matches!(err, CertsError::AlreadyExists { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("db.key") && msg.contains("--force"), "{msg}");
    assert_eq!(fs::read(&p.key).unwrap(), key_before);
    assert_eq!(fs::read(&p.cert).unwrap(), cert_before);

    opts.force = true;
    issue(&opts).unwrap();
    assert_ne!(fs::read(&p.key).unwrap(), key_before);
    assert_eq!(mode(&p.key), 0o600);
}

#[test]
fn server_cert_has_sans_cn_eku_aki_and_random_serial() {
    let dir = with_ca();
    let opts = IssueOptions::new(
        "server",
        [
            "dns:postgres",
            "IP:127.0.0.1",
            "Email:ops@example.com",
            "::1",
            "db.internal",
        ],
        dir.path(),
    );
    let p = issue(&opts).unwrap();
    let der = cert_der(&p.cert);
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();

    let cn = x
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(cn, "server");
    assert_eq!(
        x.issuer()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "pgmoat CA"
    );
    let sans = x.subject_alternative_name().unwrap().unwrap().value;
    let names = &sans.general_names;
    assert!(names.contains(&GeneralName::DNSName("postgres")));
    assert!(names.contains(&GeneralName::DNSName("db.internal")));
    assert!(names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
    assert!(names.contains(&GeneralName::RFC822Name("ops@example.com")));
    let v6: [u8; 16] = "::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
    assert!(names.contains(&GeneralName::IPAddress(&v6)));

    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    assert!(!x.is_ca());
    assert!(
        x.iter_extensions()
            .any(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
    );
    let serial1 = x.raw_serial().to_vec();
    assert_eq!(serial1.len(), 16);
    assert_eq!(serial1[0] & 0x80, 0);

    let p2 = issue(&IssueOptions::new("server2", ["DNS:postgres"], dir.path())).unwrap();
    let der2 = cert_der(&p2.cert);
    let (_, x2) = x509_parser::parse_x509_certificate(&der2).unwrap();
    assert_ne!(serial1, x2.raw_serial());
}

#[test]
fn client_cert_uses_client_auth_and_cn() {
    let dir = with_ca();
    let mut opts = IssueOptions::new("alice", Vec::<String>::new(), dir.path());
    opts.client = true;
    let p = issue(&opts).unwrap();
    let der = cert_der(&p.cert);
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert_eq!(
        x.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "alice"
    );

    opts.name = "app-client".into();
    opts.subject.cn = Some("app_user".into());
    let p = issue(&opts).unwrap();
    let der = cert_der(&p.cert);
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        x.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "app_user"
    );
}

#[test]
fn validity_is_taken_verbatim() {
    let dir = with_ca();
    let mut opts = IssueOptions::new("old", ["DNS:old"], dir.path());
    let nb = OffsetDateTime::now_utc() - Duration::days(30);
    let na = OffsetDateTime::now_utc() - Duration::days(1);
    opts.not_before = nb;
    opts.not_after = na;
    let p = issue(&opts).unwrap();
    let der = cert_der(&p.cert);
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(x.validity().not_after.timestamp(), na.unix_timestamp());
    assert_eq!(x.validity().not_before.timestamp(), nb.unix_timestamp());

    opts.not_after = nb;
    opts.force = true;
    assert!(matches!(issue(&opts), Err(CertsError::BadValidity { .. })));
}

#[test]
fn rsa_leaf_and_rsa_ca() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = CaOptions::new(dir.path());
    ca.key_algorithm = KeyAlgorithm::Rsa(crate::certs::RsaBits::B2048);
    init_ca(&ca).unwrap();
    let mut opts = IssueOptions::new("rsa", ["DNS:localhost"], dir.path());
    opts.key_algorithm = KeyAlgorithm::Rsa(crate::certs::RsaBits::B2048);
    let p = issue(&opts).unwrap();
    let der = cert_der(&p.cert);
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        x.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION
    );
    // rustls accepts the pair (it checks that key and certificate match).
    let key = PrivateKeyDer::from_pem_file(&p.key).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .unwrap();
}

#[test]
fn ca_dir_option_and_missing_ca() {
    let ca_home = with_ca();
    let out = tempfile::tempdir().unwrap();
    let opts = IssueOptions::new("s", ["DNS:s"], out.path());
    let err = issue(&opts).unwrap_err();
    assert!(matches!(err, CertsError::CaMissing { .. }), "{err}");
    assert!(!out.path().join("s.key").exists());

    let mut opts = opts;
    opts.ca_dir = Some(ca_home.path().join("ca"));
    issue(&opts).unwrap();
    assert!(out.path().join("s.crt").exists());
}

#[test]
fn bad_names_and_sans_are_rejected_before_writing() {
    let dir = with_ca();
    for name in ["", "../x", "a/b", ".hidden", "sp ace"] {
        let err = issue(&IssueOptions::new(name, ["DNS:x"], dir.path())).unwrap_err();
        assert!(matches!(err, CertsError::BadName { .. }), "{name}: {err}");
    }
    let err = issue(&IssueOptions::new("ok", ["DNS:bad name"], dir.path())).unwrap_err();
    assert!(matches!(err, CertsError::BadSan { .. }), "{err}");
    assert!(!dir.path().join("ok.key").exists());
}

#[test]
fn san_parsing() {
    use std::net::IpAddr;
    let ip: IpAddr = "10.0.0.5".parse().unwrap();
    assert_eq!(parse_san("IP:10.0.0.5").unwrap(), SanEntry::Ip(ip));
    assert_eq!(parse_san("ip: 10.0.0.5 ").unwrap(), SanEntry::Ip(ip));
    assert_eq!(parse_san("10.0.0.5").unwrap(), SanEntry::Ip(ip));
    assert_eq!(
        parse_san("DNS:Postgres").unwrap(),
        SanEntry::Dns("postgres".into())
    );
    assert_eq!(
        parse_san("*.db.example").unwrap(),
        SanEntry::Dns("*.db.example".into())
    );
    assert_eq!(
        parse_san("eMaIl:a@b.example").unwrap(),
        SanEntry::Email("a@b.example".into())
    );
    assert_eq!(parse_san("::1").unwrap().to_string(), "IP:::1");
    assert_eq!(
        parse_san("URI:spiffe://prod/ns/billing/sa/api").unwrap(),
        SanEntry::Uri("spiffe://prod/ns/billing/sa/api".into())
    );
    assert_eq!(
        parse_san("uri:urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66")
            .unwrap()
            .to_string(),
        "URI:urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66"
    );
    for bad in [
        "",
        "DNS:",
        "IP:300.1.1.1",
        "IP:localhost",
        "EMAIL:nobody",
        "a..b",
        "URI:x",
        "URI:spiffe:///no-trust-domain",
        "URI:https://a b",
        "URI:1http://x",
    ] {
        assert!(parse_san(bad).is_err(), "{bad:?} should be rejected");
    }
}

#[test]
fn uri_sans_and_rsa_key_sizes() {
    use crate::certs::RsaBits;
    use x509_parser::public_key::PublicKey;
    let dir = tempfile::tempdir().unwrap();
    let mut ca = CaOptions::new(dir.path());
    ca.key_algorithm = KeyAlgorithm::Rsa(RsaBits::B3072);
    init_ca(&ca).unwrap();
    let spiffe = "spiffe://prod/ns/billing/sa/api";
    let mut opts = IssueOptions::new("api", [format!("URI:{spiffe}")], dir.path());
    opts.client = true;
    opts.key_algorithm = KeyAlgorithm::Rsa(RsaBits::B4096);
    let p = issue(&opts).unwrap();

    let bits = |path: &Path| {
        let der = cert_der(path);
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        match x.public_key().parsed().unwrap() {
            PublicKey::RSA(rsa) => rsa.key_size(),
            other => panic!("not RSA: {other:?}"),
        }
    };
    assert_eq!(bits(&dir.path().join("ca/ca.crt")), 3072);
    assert_eq!(bits(&p.cert), 4096);
    let der = cert_der(&p.cert);
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = x.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names, vec![GeneralName::URI(spiffe)]);
    let info = crate::certs::certinfo::CertInfo::from_der(&der).unwrap();
    assert_eq!(info.sans, vec![format!("URI:{spiffe}")]);
}
