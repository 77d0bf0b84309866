use std::fs;

use clap::{CommandFactory, Parser};
use rustls::pki_types::pem::PemObject;

use super::*;

#[derive(Parser)]
struct TestCli {
    #[command(subcommand)]
    cmd: CertsCommand,
}

fn parse(args: &[&str]) -> CertsCommand {
    TestCli::try_parse_from(std::iter::once("certs").chain(args.iter().copied()))
        .unwrap()
        .cmd
}

fn exec(args: &[&str]) -> (Result<u8, CertsError>, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let r = run_to(parse(args), &mut out, &mut err);
    (
        r,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn clap_definition_is_consistent() {
    TestCli::command().debug_assert();
}

#[test]
fn san_flag_splits_commas_and_repeats() {
    match parse(&[
        "issue",
        "db",
        "--san",
        "DNS:postgres,DNS:localhost,IP:127.0.0.1",
        "--san",
        "DNS:x",
    ]) {
        CertsCommand::Issue {
            sans, days, out, ..
        } => {
            assert_eq!(
                sans,
                ["DNS:postgres", "DNS:localhost", "IP:127.0.0.1", "DNS:x"]
            );
            assert_eq!(days, 365);
            assert_eq!(out, PathBuf::from("certs"));
        }
        other => panic!("{other:?}"),
    }
    assert!(TestCli::try_parse_from(["certs", "init", "--days", "0"]).is_err());
}

#[test]
fn init_issue_check_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();

    let (r, out, _) = exec(&[
        "init",
        "--out",
        d,
        "--country",
        "de",
        "--org",
        "Acme",
        "--days",
        "30",
    ]);
    assert_eq!(r.unwrap(), 0);
    assert!(
        out.contains("Created CA C=DE, O=Acme, CN=pgmoat CA"),
        "{out}"
    );
    assert!(!out.contains("PRIVATE KEY"));

    // A leaf that outlives the CA gets a warning.
    let (r, out, err) = exec(&[
        "issue",
        "server",
        "--out",
        d,
        "--san",
        "DNS:localhost,IP:127.0.0.1",
    ]);
    assert_eq!(r.unwrap(), 0);
    assert!(
        out.contains("SANs         DNS:localhost, IP:127.0.0.1"),
        "{out}"
    );
    assert!(err.contains("outlives its CA"), "{err}");
    assert!(!out.contains("PRIVATE KEY"));

    let (r, out, _) = exec(&[
        "issue", "alice", "--out", d, "--client", "--days", "60", "--rsa",
    ]);
    assert_eq!(r.unwrap(), 0);
    assert!(out.contains("user \"alice\""), "{out}");

    let (r, _, err) = exec(&["issue", "nosan", "--out", d, "--days", "20"]);
    assert_eq!(r.unwrap(), 0);
    assert!(err.contains("no --san"), "{err}");

    // Second issue without --force: refused, names the file.
    let (r, _, _) = exec(&["issue", "server", "--out", d, "--san", "DNS:localhost"]);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("server.key") && e.contains("--force"), "{e}");

    // CA (30 days) and leaves: with warn 90 / critical 30 the CA and nosan are critical.
    let (r, out, _) = exec(&["check", d]);
    assert_eq!(r.unwrap(), 2, "{out}");
    assert!(out.contains("chain        ok (verified against"), "{out}");
    assert!(out.contains("CA certificate (trust anchor)"), "{out}");
    assert!(out.contains("overall CRITICAL"), "{out}");

    // Only alice (60 days): a warning.
    let alice = dir.path().join("alice.crt");
    let (r, out, _) = exec(&["check", alice.to_str().unwrap()]);
    assert_eq!(r.unwrap(), 1, "{out}");
    assert!(out.contains("purpose      client"), "{out}");
    let (r, _, _) = exec(&["check", alice.to_str().unwrap(), "--warn-days", "50"]);
    assert_eq!(r.unwrap(), 0);
}

#[test]
fn run_returns_errors_for_missing_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (r, _, _) = exec(&["issue", "x", "--out", d, "--san", "DNS:x"]);
    assert!(matches!(r, Err(CertsError::CaMissing { .. })));
    // A check that cannot be done is UNKNOWN (3), never a warning (1) or critical (2).
    let missing = dir.path().join("missing.crt");
    let (r, out, err) = exec(&["check", missing.to_str().unwrap()]);
    assert_eq!(r.unwrap(), EXIT_UNKNOWN);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("UNKNOWN") && err.contains("missing.crt"),
        "{err}"
    );
    // Leftover check that nothing was written by the failed issue.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn check_errors_exit_3_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (r, _, _) = exec(&["init", "--out", d]);
    assert_eq!(r.unwrap(), 0);
    let (r, _, _) = exec(&["issue", "db", "--out", d, "--san", "DNS:db"]);
    assert_eq!(r.unwrap(), 0);
    let crt = dir.path().join("db.crt");
    let crt = crt.to_str().unwrap();
    // Sanity: the same certificate checks fine, so 3 below is about the error alone.
    assert_eq!(exec(&["check", crt, "--warn-days", "30"]).0.unwrap(), 0);

    let missing_ca = dir.path().join("no-such-ca.crt");
    let (r, _, err) = exec(&["check", crt, "--ca", missing_ca.to_str().unwrap()]);
    assert_eq!(r.unwrap(), 3, "{err}");
    assert!(err.contains("no-such-ca.crt"), "{err}");
    // One missing path among good ones still makes the whole check UNKNOWN.
    let (r, _, err) = exec(&["check", crt, dir.path().join("gone").to_str().unwrap()]);
    assert_eq!(r.unwrap(), 3, "{err}");
    // The documented codes, in the help cron users read.
    let help = TestCli::command()
        .find_subcommand_mut("check")
        .unwrap()
        .render_long_help()
        .to_string();
    assert!(help.contains("3 unknown"), "{help}");
}

/// The certificate in a PEM file, parsed, handed to `f`.
fn with_cert<T>(path: &Path, f: impl FnOnce(&x509_parser::certificate::X509Certificate) -> T) -> T {
    let pem = fs::read(path).unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    f(&cert)
}

/// The subject attributes of a certificate file, by short name (C, ST, L, O, CN).
fn subject_attrs(path: &Path) -> Vec<(String, String)> {
    use x509_parser::x509::AttributeTypeAndValue;
    fn add<'a>(
        attrs: &mut Vec<(String, String)>,
        name: &str,
        values: impl Iterator<Item = &'a AttributeTypeAndValue<'a>>,
    ) {
        for v in values {
            attrs.push((name.to_owned(), v.as_str().unwrap().to_owned()));
        }
    }
    with_cert(path, |cert| {
        let subject = cert.subject();
        let mut attrs = Vec::new();
        add(&mut attrs, "C", subject.iter_country());
        add(&mut attrs, "ST", subject.iter_state_or_province());
        add(&mut attrs, "L", subject.iter_locality());
        add(&mut attrs, "O", subject.iter_organization());
        add(&mut attrs, "CN", subject.iter_common_name());
        attrs
    })
}

#[test]
fn init_writes_every_subject_field_given_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (r, out, _) = exec(&[
        "init",
        "--out",
        d,
        "--country",
        "NL",
        "--state",
        "Noord-Holland",
        "--city",
        "Amsterdam",
        "--org",
        "Acme B.V.",
        "--cn",
        "Acme Internal CA",
    ]);
    assert_eq!(r.unwrap(), 0);
    let ca = dir.path().join("ca").join("ca.crt");
    let attrs = subject_attrs(&ca);
    let pairs: Vec<(&str, &str)> = attrs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("C", "NL"),
            ("ST", "Noord-Holland"),
            ("L", "Amsterdam"),
            ("O", "Acme B.V."),
            ("CN", "Acme Internal CA"),
        ]
    );
    assert!(
        out.contains(
            "Created CA C=NL, ST=Noord-Holland, L=Amsterdam, O=Acme B.V., CN=Acme Internal CA"
        ),
        "{out}"
    );
    // The leaves it issues name it as their issuer.
    let (r, out, _) = exec(&[
        "issue",
        "db",
        "--out",
        d,
        "--san",
        "DNS:db",
        "--cn",
        "db.internal",
    ]);
    assert_eq!(r.unwrap(), 0);
    assert!(
        out.contains(
            "issuer       C=NL, ST=Noord-Holland, L=Amsterdam, O=Acme B.V., CN=Acme Internal CA"
        ),
        "{out}"
    );
    let leaf = subject_attrs(&dir.path().join("db.crt"));
    assert_eq!(leaf, [("CN".to_owned(), "db.internal".to_owned())]);
}

/// The public key algorithm and size of a certificate file.
fn key_of(path: &Path) -> (String, usize) {
    use x509_parser::public_key::PublicKey;
    with_cert(path, |cert| match cert.public_key().parsed().unwrap() {
        PublicKey::RSA(rsa) => ("RSA".to_owned(), rsa.key_size()),
        PublicKey::EC(ec) => ("EC".to_owned(), ec.key_size()),
        other => panic!("unexpected key {other:?}"),
    })
}

#[test]
fn rsa_through_the_cli_for_the_ca_and_for_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (r, _, _) = exec(&["init", "--out", d, "--rsa"]);
    assert_eq!(r.unwrap(), 0);
    assert_eq!(
        key_of(&dir.path().join("ca").join("ca.crt")),
        ("RSA".into(), 2048)
    );
    let ca_key = fs::read_to_string(dir.path().join("ca").join("ca.key")).unwrap();
    assert!(ca_key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");

    // An RSA server certificate and an EC (default) client certificate from the RSA CA.
    let (r, _, _) = exec(&["issue", "db", "--out", d, "--san", "DNS:db", "--rsa"]);
    assert_eq!(r.unwrap(), 0);
    assert_eq!(key_of(&dir.path().join("db.crt")), ("RSA".into(), 2048));
    let (r, _, _) = exec(&["issue", "app", "--out", d, "--client"]);
    assert_eq!(r.unwrap(), 0);
    assert_eq!(key_of(&dir.path().join("app.crt")), ("EC".into(), 256));

    // rustls accepts the RSA pair as it is written, and the chain verifies.
    let cert = rustls::pki_types::CertificateDer::pem_file_iter(dir.path().join("db.crt"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.path().join("db.key")).unwrap();
    rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert, key)
        .expect("rustls takes the RSA certificate and key");
    let (r, out, _) = exec(&["check", d, "--warn-days", "30"]);
    assert_eq!(r.unwrap(), 0, "{out}");
    assert!(!out.contains("INVALID"), "{out}");
    assert_eq!(
        out.matches("chain        ok (verified against").count(),
        2,
        "{out}"
    );
}

#[test]
fn rsa_bits_and_reasons_are_checked_by_the_parser() {
    match parse(&["issue", "db", "--rsa-bits", "4096"]) {
        CertsCommand::Issue { rsa_bits, rsa, .. } => {
            assert_eq!(algorithm(rsa, rsa_bits), KeyAlgorithm::Rsa(RsaBits::B4096));
        }
        other => panic!("{other:?}"),
    }
    match parse(&["init", "--rsa"]) {
        CertsCommand::Init { rsa, rsa_bits, .. } => {
            assert_eq!(algorithm(rsa, rsa_bits), KeyAlgorithm::Rsa(RsaBits::B2048));
        }
        other => panic!("{other:?}"),
    }
    for bad in [
        &["init", "--rsa-bits", "1024"][..],
        &["init", "--rsa", "--rsa-bits", "4096"],
        &["revoke"],
        &["revoke", "app", "--serial", "01"],
        &["revoke", "app", "--reason", "because"],
    ] {
        assert!(
            TestCli::try_parse_from(std::iter::once("certs").chain(bad.iter().copied())).is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn revoke_crl_and_check_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    assert_eq!(exec(&["init", "--out", out]).0.unwrap(), 0);
    let (code, _, _) = exec(&["issue", "app", "--client", "--out", out]);
    assert_eq!(code.unwrap(), 0);

    let (code, text, _) = exec(&["crl", "--out", out, "--days", "14"]);
    assert_eq!(code.unwrap(), 0);
    assert!(
        text.contains("CRL number   1") && text.contains("revoked      0"),
        "{text}"
    );

    let (code, text, _) = exec(&[
        "revoke",
        "app",
        "--out",
        out,
        "--reason",
        "key-compromise",
        "--days",
        "14",
    ]);
    assert_eq!(code.unwrap(), 0);
    assert!(
        text.contains("Revoked serial") && text.contains("CN=app"),
        "{text}"
    );
    assert!(
        text.contains("CRL number   2") && text.contains("SIGHUP"),
        "{text}"
    );

    // The CRL is fresh for 14 days: check is OK and lists it; with a 20-day warning window
    // it warns.
    let (code, text, _) = exec(&["check", out]);
    assert_eq!(code.unwrap(), 0, "{text}");
    assert!(
        text.contains("[CRL]") && text.contains("revoked      1 certificate(s)"),
        "{text}"
    );
    let (code, text, _) = exec(&["check", out, "--crl-warn-days", "20"]);
    assert_eq!(code.unwrap(), 1, "{text}");

    // A name that was never issued is an error naming the file.
    let err = exec(&["revoke", "nobody", "--out", out]).0.unwrap_err();
    assert!(err.to_string().contains("nobody.crt"), "{err}");
}
