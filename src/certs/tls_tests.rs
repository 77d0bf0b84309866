//! End-to-end proof that the tool's files work for mutual TLS: an in-memory rustls handshake
//! between a server and a client certificate, both verified against the tool's CA.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore, ServerConfig};
use rustls::{Error as TlsError, ServerConnection};
use time::{Duration, OffsetDateTime};

use super::{CaOptions, IssueOptions, IssuedPaths, KeyAlgorithm, init_ca, issue};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(ca: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    Arc::new(roots)
}

fn chain_and_key(p: &IssuedPaths) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_file_iter(&p.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (chain, PrivateKeyDer::from_pem_file(&p.key).unwrap())
}

fn server_config(server: &IssuedPaths, ca: &Path) -> Arc<ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
        .build()
        .unwrap();
    let (chain, key) = chain_and_key(server);
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

fn client_config(client: &IssuedPaths, ca: &Path) -> Arc<ClientConfig> {
    let (chain, key) = chain_and_key(client);
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(ca))
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

#[derive(Debug)]
enum Refused {
    ByClient(TlsError),
    ByServer(TlsError),
}

/// Pumps TLS records between the two ends until both are done or one refuses. Returns the
/// CN the server saw in the client certificate.
fn handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<String, Refused> {
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    for _ in 0..20 {
        let mut to_server = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut to_server).unwrap();
        }
        let mut rd = &to_server[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().map_err(Refused::ByServer)?;
        }
        let mut to_client = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut to_client).unwrap();
        }
        let mut rd = &to_client[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().map_err(Refused::ByClient)?;
        }
        if !c.is_handshaking()
            && !s.is_handshaking()
            && to_server.is_empty()
            && to_client.is_empty()
        {
            let certs = s.peer_certificates().unwrap();
            let (_, x) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();
            let cn = x.subject().iter_common_name().next().unwrap();
            return Ok(cn.as_str().unwrap().to_string());
        }
    }
    panic!("handshake did not finish");
}

struct Pki {
    dir: tempfile::TempDir,
    server: IssuedPaths,
}

impl Pki {
    fn new(alg: KeyAlgorithm) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CaOptions::new(dir.path());
        ca.key_algorithm = alg;
        init_ca(&ca).unwrap();
        let mut opts = IssueOptions::new("server", ["DNS:localhost", "IP:127.0.0.1"], dir.path());
        opts.key_algorithm = alg;
        let server = issue(&opts).unwrap();
        Pki { dir, server }
    }

    fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca/ca.crt")
    }

    fn client(&self, name: &str, adjust: impl FnOnce(&mut IssueOptions)) -> IssuedPaths {
        let mut opts = IssueOptions::new(name, Vec::<String>::new(), self.dir.path());
        opts.client = true;
        adjust(&mut opts);
        issue(&opts).unwrap()
    }
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

fn loopback_ip() -> ServerName<'static> {
    ServerName::from(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[test]
fn mutual_tls_verify_full_by_name_and_ip() {
    let pki = Pki::new(KeyAlgorithm::EcP256);
    let alice = pki.client("alice", |_| {});
    let server = server_config(&pki.server, &pki.ca());
    let client = client_config(&alice, &pki.ca());

    assert_eq!(handshake(&server, &client, localhost()).unwrap(), "alice");
    assert_eq!(handshake(&server, &client, loopback_ip()).unwrap(), "alice");

    let wrong = ServerName::try_from("wrong.example").unwrap();
    match handshake(&server, &client, wrong) {
        Err(Refused::ByClient(TlsError::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ))) => {}
        other => panic!("expected a name mismatch, got {other:?}"),
    }
}

#[test]
fn expired_and_not_yet_valid_client_certs_are_refused() {
    let pki = Pki::new(KeyAlgorithm::EcP256);
    let server = server_config(&pki.server, &pki.ca());
    let now = OffsetDateTime::now_utc();

    let expired = pki.client("old", |o| {
        o.not_before = now - Duration::days(30);
        o.not_after = now - Duration::days(1);
    });
    match handshake(&server, &client_config(&expired, &pki.ca()), localhost()) {
        Err(Refused::ByServer(TlsError::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ))) => {}
        other => panic!("expected the server to refuse an expired cert, got {other:?}"),
    }

    let future = pki.client("future", |o| {
        o.not_before = now + Duration::days(1);
        o.not_after = now + Duration::days(30);
    });
    match handshake(&server, &client_config(&future, &pki.ca()), localhost()) {
        Err(Refused::ByServer(TlsError::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ))) => {}
        other => panic!("expected the server to refuse a future cert, got {other:?}"),
    }
}

#[test]
fn client_cert_from_another_ca_is_refused() {
    let pki = Pki::new(KeyAlgorithm::EcP256);
    let other = Pki::new(KeyAlgorithm::EcP256);
    let mallory = other.client("mallory", |_| {});
    let server = server_config(&pki.server, &pki.ca());
    // The client trusts the right CA, but presents a cert from another one.
    let client = {
        let (chain, key) = chain_and_key(&mallory);
        Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots(&pki.ca()))
                .with_client_auth_cert(chain, key)
                .unwrap(),
        )
    };
    // Both CAs carry the default CN "pgmoat CA", so webpki finds a same-named issuer and then
    // fails its signature; with distinct names it would say UnknownIssuer. Either is a refusal.
    match handshake(&server, &client, localhost()) {
        Err(Refused::ByServer(TlsError::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ))) => {}
        other => panic!("expected the server to refuse a foreign cert, got {other:?}"),
    }
}

#[test]
fn server_cert_is_not_a_client_cert() {
    let pki = Pki::new(KeyAlgorithm::EcP256);
    let server = server_config(&pki.server, &pki.ca());
    // EKU serverAuth only: a client presenting the server's cert is refused.
    let client = client_config(&pki.server, &pki.ca());
    match handshake(&server, &client, localhost()) {
        Err(Refused::ByServer(TlsError::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        ))) => {}
        other => panic!("expected an EKU refusal, got {other:?}"),
    }
}

#[test]
fn rsa_pki_handshake() {
    let pki = Pki::new(KeyAlgorithm::Rsa(crate::certs::RsaBits::B2048));
    let bob = pki.client("bob", |o| {
        o.key_algorithm = KeyAlgorithm::Rsa(crate::certs::RsaBits::B2048)
    });
    let server = server_config(&pki.server, &pki.ca());
    let client = client_config(&bob, &pki.ca());
    assert_eq!(handshake(&server, &client, localhost()).unwrap(), "bob");
}
