//! The test PKI, made with pgmoat's own cert tool so that every integration test also proves
//! the tool's output works with PostgreSQL, libpq and rustls as it is.

use std::path::{Path, PathBuf};

use pgmoat::certs::{self, CaOptions, IssueOptions, KeyAlgorithm, Subject};
use tempfile::TempDir;
use time::{Duration, OffsetDateTime};

/// A certificate and its private key (PEM files).
#[derive(Debug, Clone)]
pub struct CertPair {
    pub crt: PathBuf,
    pub key: PathBuf,
}

impl CertPair {
    /// `(cert, key)` as [`crate::support::tls_client_config`] wants it.
    pub fn pair(&self) -> (&Path, &Path) {
        (&self.crt, &self.key)
    }
}

/// Every certificate the integration tests need, in one temp dir.
pub struct Pki {
    pub dir: TempDir,
    /// The trusted CA.
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    /// PostgreSQL's server cert: SAN DNS:localhost, IP:127.0.0.1.
    pub postgres: CertPair,
    /// pgmoat's server cert towards clients: same SANs.
    pub pgmoat: CertPair,
    /// Client cert, CN alice.
    pub alice: CertPair,
    /// Client cert, CN certuser (PostgreSQL's `cert` hba line).
    pub certuser: CertPair,
    /// pgmoat's client cert towards PostgreSQL, CN certuser.
    pub pgmoat_client: CertPair,
    /// A second CA nobody trusts.
    pub other_ca: PathBuf,
    /// Client cert CN alice from the untrusted CA.
    pub mallory: CertPair,
    /// Client cert CN alice from the real CA, expired yesterday.
    pub expired: CertPair,
    /// Server cert from the real CA for DNS:wrong.example only (verify-full must fail).
    pub wrong_host: CertPair,
}

const SERVER_SANS: [&str; 2] = ["DNS:localhost", "IP:127.0.0.1"];

impl Pki {
    pub fn new() -> Pki {
        super::init_crypto();
        let dir = tempfile::Builder::new()
            .prefix("pgmoat-pki-")
            .tempdir()
            .unwrap();
        let now = OffsetDateTime::now_utc();
        let valid = (now - Duration::hours(1), now + Duration::days(30));

        let ca = make_ca(&dir.path().join("trusted"), "pgmoat test CA", valid);
        let ca_dir = ca.0.parent().unwrap().to_owned();
        let out = dir.path().join("issued");
        let leaf = |name: &str, cn: &str, client: bool, sans: &[&str], validity| {
            make_leaf(&out, &ca_dir, name, cn, client, sans, validity)
        };

        let postgres = leaf("postgres", "localhost", false, &SERVER_SANS, valid);
        let pgmoat = leaf("pgmoat", "localhost", false, &SERVER_SANS, valid);
        let alice = leaf("alice", "alice", true, &[], valid);
        let certuser = leaf("certuser", "certuser", true, &[], valid);
        let pgmoat_client = leaf("pgmoat-client", "certuser", true, &[], valid);
        let expired = leaf(
            "expired",
            "alice",
            true,
            &[],
            (now - Duration::days(30), now - Duration::days(1)),
        );
        let wrong_host = leaf(
            "wrong-host",
            "wrong.example",
            false,
            &["DNS:wrong.example"],
            valid,
        );

        let other = make_ca(&dir.path().join("untrusted"), "untrusted test CA", valid);
        let other_ca_dir = other.0.parent().unwrap().to_owned();
        let mallory = make_leaf(
            &dir.path().join("untrusted-issued"),
            &other_ca_dir,
            "mallory",
            "alice",
            true,
            &[],
            valid,
        );

        Pki {
            ca: ca.0,
            ca_key: ca.1,
            postgres,
            pgmoat,
            alice,
            certuser,
            pgmoat_client,
            other_ca: other.0,
            mallory,
            expired,
            wrong_host,
            dir,
        }
    }

    /// Another client cert from the trusted CA (valid 30 days), e.g. for a new user.
    pub fn issue_client(&self, name: &str, cn: &str) -> CertPair {
        let now = OffsetDateTime::now_utc();
        let valid = (now - Duration::hours(1), now + Duration::days(30));
        let out = self.dir.path().join("issued");
        make_leaf(&out, self.ca.parent().unwrap(), name, cn, true, &[], valid)
    }

    /// A client cert from the trusted CA with subject alternative names (`URI:...`, `DNS:...`).
    pub fn issue_client_with_sans(&self, name: &str, cn: &str, sans: &[&str]) -> CertPair {
        let now = OffsetDateTime::now_utc();
        let valid = (now - Duration::hours(1), now + Duration::days(30));
        let out = self.dir.path().join("issued");
        make_leaf(&out, self.ca.parent().unwrap(), name, cn, true, sans, valid)
    }

    /// A server cert from the untrusted CA (valid 30 days): a PostgreSQL whose certificate
    /// only `other_ca` vouches for.
    pub fn issue_server_from_other_ca(&self, name: &str, sans: &[&str]) -> CertPair {
        let now = OffsetDateTime::now_utc();
        let valid = (now - Duration::hours(1), now + Duration::days(30));
        let out = self.dir.path().join("untrusted-issued");
        make_leaf(
            &out,
            self.other_ca.parent().unwrap(),
            name,
            name,
            false,
            sans,
            valid,
        )
    }

    /// The cert+key PEM `pgmoat certs issue` writes next to a pair (NAME-combined.pem).
    pub fn combined(pair: &CertPair) -> PathBuf {
        let stem = pair.crt.file_stem().unwrap().to_string_lossy().into_owned();
        pair.crt.with_file_name(format!("{stem}-combined.pem"))
    }

    /// Another server cert from the trusted CA (valid 30 days), e.g. for rotation tests.
    pub fn issue_server(&self, name: &str, sans: &[&str]) -> CertPair {
        let now = OffsetDateTime::now_utc();
        let valid = (now - Duration::hours(1), now + Duration::days(30));
        let out = self.dir.path().join("issued");
        make_leaf(
            &out,
            self.ca.parent().unwrap(),
            name,
            name,
            false,
            sans,
            valid,
        )
    }
}

fn subject(cn: &str) -> Subject {
    Subject {
        cn: Some(cn.to_owned()),
        ..Subject::default()
    }
}

/// A CA in `out_dir`; returns (cert, key).
fn make_ca(
    out_dir: &Path,
    cn: &str,
    validity: (OffsetDateTime, OffsetDateTime),
) -> (PathBuf, PathBuf) {
    let paths = certs::init_ca(&CaOptions {
        out_dir: out_dir.to_owned(),
        subject: subject(cn),
        not_before: validity.0,
        not_after: validity.1,
        key_algorithm: KeyAlgorithm::EcP256,
        force: false,
    })
    .unwrap_or_else(|e| panic!("pgmoat certs init for {cn:?}: {e}"));
    (paths.cert, paths.key)
}

fn make_leaf(
    out_dir: &Path,
    ca_dir: &Path,
    name: &str,
    cn: &str,
    client: bool,
    sans: &[&str],
    validity: (OffsetDateTime, OffsetDateTime),
) -> CertPair {
    let paths = certs::issue(&IssueOptions {
        name: name.to_owned(),
        sans: sans.iter().map(|s| s.to_string()).collect(),
        out_dir: out_dir.to_owned(),
        ca_dir: Some(ca_dir.to_owned()),
        client,
        subject: subject(cn),
        not_before: validity.0,
        not_after: validity.1,
        key_algorithm: KeyAlgorithm::EcP256,
        force: false,
    })
    .unwrap_or_else(|e| panic!("pgmoat certs issue {name:?}: {e}"));
    CertPair {
        crt: paths.cert,
        key: paths.key,
    }
}
