use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use time::{Duration, OffsetDateTime};

use super::*;
use crate::certs::{CaOptions, IssueOptions, IssuedPaths, init_ca, issue};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        init_ca(&CaOptions::new(dir.path())).unwrap();
        Pki { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// A server cert valid from a day ago for `days` more days.
    fn leaf(&self, name: &str, days: i64) -> IssuedPaths {
        let mut opts = IssueOptions::new(name, ["DNS:localhost"], self.dir.path());
        let now = OffsetDateTime::now_utc();
        opts.not_before = now - Duration::days(400);
        opts.not_after = now + Duration::days(days) + Duration::hours(1);
        issue(&opts).unwrap()
    }
}

fn run(paths: &[PathBuf], ca: Option<PathBuf>) -> CheckReport {
    let opts = CheckOptions {
        ca_file: ca,
        ..CheckOptions::default()
    };
    check(paths, &opts).unwrap()
}

#[test]
fn fresh_cert_is_ok_and_verified() {
    let pki = Pki::new();
    let p = pki.leaf("fresh", 365);
    let report = run(std::slice::from_ref(&p.cert), None);
    assert_eq!(report.certs.len(), 1);
    let c = &report.certs[0];
    assert_eq!(c.status, Status::Ok, "{:?}", c.reasons);
    assert_eq!(c.days_left, 365);
    assert!(matches!(&c.chain, ChainStatus::Verified { ca } if ca.ends_with("ca/ca.crt")));
    assert_eq!(report.exit_code(), 0);
}

#[test]
fn expiring_in_40_days_warns() {
    let pki = Pki::new();
    let p = pki.leaf("soon", 40);
    let report = run(&[p.cert], None);
    let c = &report.certs[0];
    assert_eq!(c.days_left, 40);
    assert_eq!(c.status, Status::Warning);
    assert!(c.reasons[0].contains("40 days"), "{:?}", c.reasons);
    assert!(matches!(c.chain, ChainStatus::Verified { .. }));
    assert_eq!(report.exit_code(), 1);
}

#[test]
fn within_critical_days_is_critical() {
    let pki = Pki::new();
    let p = pki.leaf("close", 10);
    assert_eq!(run(&[p.cert], None).exit_code(), 2);
}

#[test]
fn expired_is_critical_but_chain_still_judged() {
    let pki = Pki::new();
    let p = pki.leaf("old", -3);
    let report = run(&[p.cert], None);
    let c = &report.certs[0];
    assert_eq!(c.status, Status::Critical);
    assert!(c.reasons[0].contains("EXPIRED"), "{:?}", c.reasons);
    // The signature is still good: expiry is the only problem.
    assert!(
        matches!(c.chain, ChainStatus::Verified { .. }),
        "{:?}",
        c.chain
    );
    assert_eq!(report.exit_code(), 2);
}

#[test]
fn cert_from_another_ca_has_invalid_chain() {
    let pki = Pki::new();
    let other = Pki::new();
    let foreign = other.leaf("foreign", 365);
    let report = run(&[foreign.cert], Some(pki.path().join("ca/ca.crt")));
    let c = &report.certs[0];
    assert!(
        matches!(c.chain, ChainStatus::Invalid { .. }),
        "{:?}",
        c.chain
    );
    assert_eq!(c.status, Status::Critical);
    assert_eq!(report.exit_code(), 2);

    // Its own CA accepts it.
    let p = other.path().join("foreign.crt");
    assert_eq!(
        run(&[p], Some(other.path().join("ca/ca.crt"))).exit_code(),
        0
    );
}

#[test]
fn client_certs_verify_as_clients() {
    let pki = Pki::new();
    let mut opts = IssueOptions::new("alice", Vec::<String>::new(), pki.path());
    opts.client = true;
    let p = issue(&opts).unwrap();
    let report = run(&[p.cert], None);
    assert!(matches!(
        report.certs[0].chain,
        ChainStatus::Verified { .. }
    ));
    assert_eq!(report.exit_code(), 0);
}

#[test]
fn no_ca_means_not_checked() {
    let pki = Pki::new();
    let p = pki.leaf("lonely", 365);
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("lonely.crt");
    fs::copy(&p.cert, &copy).unwrap();
    let report = run(&[copy], None);
    assert_eq!(report.certs[0].chain, ChainStatus::NoCa);
    assert_eq!(report.exit_code(), 0);

    // The CA file on its own: nothing to verify it against, but its expiry still counts.
    let report = run(&[pki.path().join("ca/ca.crt")], None);
    assert_eq!(report.certs[0].chain, ChainStatus::NoCa);
    assert!(report.certs[0].info.is_ca);
    assert_eq!(report.exit_code(), 0);
    let with_ca = run(
        &[pki.path().join("ca/ca.crt")],
        Some(pki.path().join("ca/ca.crt")),
    );
    assert_eq!(with_ca.certs[0].chain, ChainStatus::TrustAnchor);
    let other = Pki::new();
    let foreign_ca = run(
        &[other.path().join("ca/ca.crt")],
        Some(pki.path().join("ca/ca.crt")),
    );
    assert_eq!(foreign_ca.certs[0].chain, ChainStatus::OtherCa);
    assert_eq!(foreign_ca.exit_code(), 0);
}

#[test]
fn directory_scan_includes_ca_folds_duplicates_and_checks_key_modes() {
    let pki = Pki::new();
    pki.leaf("server", 365);
    pki.leaf("soon", 40);
    let report = run(&[pki.path()], None);
    // ca.crt, server.crt, soon.crt; the combined files fold into their .crt.
    assert_eq!(report.certs.len(), 3, "{:#?}", report.certs);
    // The CA (in ca/) is listed first.
    let ca = &report.certs[0];
    assert!(ca.info.is_ca);
    assert_eq!(ca.chain, ChainStatus::TrustAnchor);
    let server = report
        .certs
        .iter()
        .find(|c| c.info.common_name.as_deref() == Some("server"))
        .unwrap();
    assert!(server.also_in[0].ends_with("server-combined.pem"));
    assert!(report.files.is_empty(), "{:?}", report.files);
    assert_eq!(report.exit_code(), 1);

    let key = pki.path().join("server.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let report = run(&[pki.path()], None);
    assert_eq!(report.files.len(), 1);
    assert!(report.files[0].path.ends_with("server.key"));
    assert!(report.files[0].message.contains("0644"));
}

#[test]
fn empty_dir_and_garbage_are_critical_missing_path_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(run(&[dir.path().to_path_buf()], None).exit_code(), 2);

    let junk = dir.path().join("junk.crt");
    fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let report = run(&[junk], None);
    assert_eq!(report.exit_code(), 2);
    assert!(report.files[0].path.ends_with("junk.crt"));

    let missing = check(&[dir.path().join("nope.crt")], &CheckOptions::default());
    assert!(matches!(missing, Err(CertsError::Io { .. })));
    let bad_ca = CheckOptions {
        ca_file: Some(dir.path().join("nope.crt")),
        ..CheckOptions::default()
    };
    assert!(check(&[dir.path().to_path_buf()], &bad_ca).is_err());
}

#[test]
fn expired_ca_makes_chains_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let mut ca = CaOptions::new(dir.path());
    ca.not_before = now - Duration::days(100);
    ca.not_after = now - Duration::days(1);
    init_ca(&ca).unwrap();
    let mut opts = IssueOptions::new("s", ["DNS:s"], dir.path());
    opts.not_before = now - Duration::days(50);
    let p = issue(&opts).unwrap();
    let report = run(&[p.cert], None);
    let c = &report.certs[0];
    assert!(
        matches!(&c.chain, ChainStatus::Invalid { reason } if reason.contains("CA certificate")),
        "{:?}",
        c.chain
    );
    assert_eq!(report.exit_code(), 2);
}

#[test]
fn thresholds_are_options() {
    let pki = Pki::new();
    let p = pki.leaf("soon", 40);
    let opts = CheckOptions {
        warn_days: 30,
        critical_days: 7,
        ..CheckOptions::default()
    };
    assert_eq!(
        check(std::slice::from_ref(&p.cert), &opts)
            .unwrap()
            .exit_code(),
        0
    );
    let opts = CheckOptions {
        now: OffsetDateTime::now_utc() + Duration::days(35),
        ..opts
    };
    assert_eq!(check(&[p.cert], &opts).unwrap().exit_code(), 2);
}

/// The CA's CRL with a next update `hours` from now (negative: already past).
fn crl(pki: &Pki, hours: i64) -> PathBuf {
    let mut opts = crate::certs::CrlOptions::new(pki.path().join("ca"), 1);
    let now = OffsetDateTime::now_utc();
    opts.this_update = now - Duration::days(10);
    opts.next_update = now + Duration::hours(hours);
    crate::certs::sign_crl(&opts).unwrap().path
}

#[test]
fn crls_are_judged_by_next_update_and_signature() {
    let pki = Pki::new();
    let path = crl(&pki, 24 * 20);
    let report = run(std::slice::from_ref(&path), None);
    assert_eq!(report.crls.len(), 1);
    let c = &report.crls[0];
    assert_eq!(c.status, Status::Ok, "{:?}", c.reasons);
    assert_eq!(c.crl_number.as_deref(), Some("1"));
    assert_eq!(c.revoked, 0);
    assert!(matches!(&c.signature, CrlSignature::Verified { ca } if ca.ends_with("ca/ca.crt")));
    assert_eq!(report.exit_code(), 0);

    // Close to the next update: a warning; past it: critical.
    crl(&pki, 30);
    let report = run(std::slice::from_ref(&path), None);
    assert_eq!(report.exit_code(), 1, "{:?}", report.crls[0].reasons);
    assert!(report.crls[0].reasons[0].contains("certs crl"));
    crl(&pki, -2);
    let report = run(std::slice::from_ref(&path), None);
    assert_eq!(report.exit_code(), 2);
    assert!(report.crls[0].reasons[0].contains("past its next update"));

    // A directory scan finds ca/ca.crl next to the certificates.
    crl(&pki, 24 * 20);
    pki.leaf("server", 365);
    let report = run(&[pki.path()], None);
    assert_eq!((report.crls.len(), report.exit_code()), (1, 0));

    // Signed by another CA of the same name: the signature does not verify.
    let other = Pki::new();
    let forged = crl(&other, 24 * 20);
    let report = run(
        std::slice::from_ref(&forged),
        Some(pki.path().join("ca/ca.crt")),
    );
    assert!(
        matches!(report.crls[0].signature, CrlSignature::Invalid { .. }),
        "{:?}",
        report.crls[0].signature
    );
    assert_eq!(report.exit_code(), 2);
    // DER works too.
    let der = rustls::pki_types::CertificateRevocationListDer::from_pem_file(&path).unwrap();
    let der_path = pki.path().join("copy.crl");
    fs::write(&der_path, der.as_ref()).unwrap();
    let report = run(&[der_path], None);
    assert_eq!((report.crls.len(), report.exit_code()), (1, 0));
}

#[test]
fn a_bundle_of_certificates_and_a_crl_is_checked_whole() {
    let pki = Pki::new();
    let crl_file = crl(&pki, 24 * 20);
    let leaf = pki.leaf("expired-soon", 5);
    let bundle = pki.path().join("bundle.pem");
    let mut text = fs::read_to_string(&leaf.cert).unwrap();
    text.push_str(&fs::read_to_string(&crl_file).unwrap());
    fs::write(&bundle, text).unwrap();
    let report = run(&[bundle], None);
    assert_eq!((report.certs.len(), report.crls.len()), (1, 1));
    // The certificate's near expiry is not hidden by the CRL beside it.
    assert_eq!(report.exit_code(), 2);
}
