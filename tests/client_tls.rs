//! TLS between clients and pgmoat: every client_tls_sslmode against plaintext clients and
//! TLS clients with no, good, untrusted and expired certificates; GSSENCRequest, PostgreSQL 17
//! direct TLS and its ALPN rule; TLS 1.2 / 1.3; stalled handshakes cut off by
//! client_login_timeout without holding anyone else up; and psql verify-full end to end.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::AsyncWriteExt;
use tokio_postgres::config::SslNegotiation;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How a client approaches pgmoat in the sslmode matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Plaintext,
    TlsNoCert,
    GoodCert,
    Untrusted,
    Expired,
}

const CLIENTS: [Client; 5] = [
    Client::Plaintext,
    Client::TlsNoCert,
    Client::GoodCert,
    Client::Untrusted,
    Client::Expired,
];

/// What the mode does with that client (PgBouncer's semantics).
fn expected(mode: &str, client: Client) -> bool {
    match (mode, client) {
        // No TLS at all: only plaintext gets in (a TLS-requiring client gives up on 'N').
        ("disable", c) => c == Client::Plaintext,
        // A certificate is optional, but one that is sent must verify.
        ("allow" | "prefer", c) => {
            matches!(c, Client::Plaintext | Client::TlsNoCert | Client::GoodCert)
        }
        ("require", c) => matches!(c, Client::TlsNoCert | Client::GoodCert),
        ("verify-ca" | "verify-full", c) => c == Client::GoodCert,
        _ => unreachable!("unknown mode {mode}"),
    }
}

async fn try_client(
    pki: &Pki,
    port: u16,
    client: Client,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let tls = match client {
        Client::Plaintext => None,
        Client::TlsNoCert => Some(tls_client_config(&pki.ca, None)),
        Client::GoodCert => Some(tls_client_config(&pki.ca, Some(pki.alice.pair()))),
        Client::Untrusted => Some(tls_client_config(&pki.ca, Some(pki.mallory.pair()))),
        Client::Expired => Some(tls_client_config(&pki.ca, Some(pki.expired.pair()))),
    };
    connect(port, "alice", Some(ALICE_PASSWORD), APP_DB, tls).await
}

#[tokio::test]
async fn every_client_tls_sslmode_against_every_kind_of_client() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let mut wrong = Vec::new();
    for mode in [
        "disable",
        "allow",
        "prefer",
        "require",
        "verify-ca",
        "verify-full",
    ] {
        let pgmoat = Pgmoat::start(&ConfigBuilder::new(&pki, &db).client_sslmode(mode).build());
        for client in CLIENTS {
            let outcome = try_client(&pki, pgmoat.port(), client).await;
            let accepted = match &outcome {
                Ok(c) => {
                    // Accepted means usable, not just a handshake.
                    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
                    assert_eq!(one, 1);
                    true
                }
                Err(_) => false,
            };
            if accepted != expected(mode, client) {
                wrong.push(format!(
                    "{mode} x {client:?}: accepted={accepted}, expected {}: {:?}",
                    expected(mode, client),
                    outcome.as_ref().err()
                ));
            }
            // A plaintext client where TLS is required learns why, with SQLSTATE 28000.
            if client == Client::Plaintext && !expected(mode, client) {
                let err = outcome.err().unwrap();
                let db_err = err.as_db_error();
                let code = db_err.map(|e| e.code().clone());
                let message = db_err.map(|e| e.message().to_owned()).unwrap_or_default();
                if code != Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
                    || !message.contains("TLS")
                {
                    wrong.push(format!("{mode} x plaintext: no 28000 about TLS: {err:?}"));
                }
            }
        }
        if mode == "disable" {
            // libpq's default, sslmode=prefer: SSLRequest, 'N', then the same connection goes
            // on in plaintext.
            let out = psql(
                &["-Atc", "SELECT 1"],
                &conninfo(
                    pgmoat.port(),
                    "alice",
                    APP_DB,
                    &[("sslmode", "prefer"), ("password", ALICE_PASSWORD)],
                ),
            );
            if !out.status.success() {
                wrong.push(format!(
                    "disable x psql sslmode=prefer: {}",
                    output_text(&out)
                ));
            }
        }
        if mode == "require" {
            let out = psql(
                &["-Atc", "SELECT 1"],
                &conninfo(
                    pgmoat.port(),
                    "alice",
                    APP_DB,
                    &[("sslmode", "disable"), ("password", ALICE_PASSWORD)],
                ),
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() || !stderr.contains("TLS is required") {
                wrong.push(format!(
                    "require x psql sslmode=disable: {}",
                    output_text(&out)
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "unexpected outcomes:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test]
async fn gssenc_is_declined_and_direct_tls_needs_alpn_postgresql() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let pgmoat = Pgmoat::start(&ConfigBuilder::new(&pki, &db).build());
    let port = pgmoat.port();

    // GSSENCRequest gets 'N'; the same connection then goes on with SSLRequest and a login.
    let mut tcp = tcp_connect(port).await;
    tcp.write_all(&GSSENC_REQUEST).await.unwrap();
    let mut answer = [0u8; 1];
    tokio::time::timeout(
        RAW_TIMEOUT,
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut answer),
    )
    .await
    .expect("no answer to GSSENCRequest")
    .unwrap();
    assert_eq!(answer[0], b'N');
    let mut make = MakeRustlsConnect::new(tls_client_config(&pki.ca, None));
    let tls =
        MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(&mut make, "localhost").unwrap();
    let mut config = pg_config(port, "alice", Some(ALICE_PASSWORD), APP_DB);
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, connection) = config.connect_raw(tcp, tls).await.unwrap();
    tokio::spawn(connection);
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);

    // PostgreSQL 17 direct TLS: the ClientHello comes first, with ALPN "postgresql".
    let mut direct = pg_config(port, "alice", Some(ALICE_PASSWORD), APP_DB);
    direct.ssl_negotiation(SslNegotiation::Direct);
    let mut with_alpn = tls_client_config(&pki.ca, None);
    with_alpn.alpn_protocols = vec![b"postgresql".to_vec()];
    let client = connect_config(direct.clone(), Some(with_alpn))
        .await
        .unwrap_or_else(|e| panic!("direct TLS with ALPN refused: {e:?}\n{}", pgmoat.log()));
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    // Without ALPN a direct TLS connection is refused (PostgreSQL's rule, against
    // cross-protocol attacks), with an error the client can read inside TLS.
    let err = connect_config(direct, Some(tls_client_config(&pki.ca, None)))
        .await
        .unwrap_err();
    let db_err = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got {err:?}"));
    assert_eq!(db_err.code(), &SqlState::PROTOCOL_VIOLATION, "{db_err:?}");
    assert!(db_err.message().contains("ALPN"), "{db_err:?}");
}

#[tokio::test]
async fn tls_12_and_13_clients_and_a_tls13_only_pgmoat() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let only = |v: &'static rustls::SupportedProtocolVersion| {
        tls_client_config_versions(&pki.ca, None, &[v])
    };

    let pgmoat = Pgmoat::start(&ConfigBuilder::new(&pki, &db).build());
    for (version, name) in [
        (&rustls::version::TLS12, "TLSv1.2"),
        (&rustls::version::TLS13, "TLSv1.3"),
    ] {
        let mark = pgmoat.log_mark();
        let client = connect(
            pgmoat.port(),
            "alice",
            Some(ALICE_PASSWORD),
            APP_DB,
            Some(only(version)),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}-only client refused: {e:?}"));
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        pgmoat.wait_for_log_line_since(
            mark,
            &["client logged in", &format!("tls=\"{name}\"")],
            Duration::from_secs(10),
        );
    }

    let strict = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set_str("client_tls_protocols", "tlsv1.3")
            .build(),
    );
    let err = connect(
        strict.port(),
        "alice",
        Some(ALICE_PASSWORD),
        APP_DB,
        Some(only(&rustls::version::TLS12)),
    )
    .await
    .unwrap_err();
    assert!(
        err.as_db_error().is_none(),
        "expected a TLS failure: {err:?}"
    );
    connect(
        strict.port(),
        "alice",
        Some(ALICE_PASSWORD),
        APP_DB,
        Some(only(&rustls::version::TLS13)),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn stalled_handshakes_are_cut_off_while_others_log_in() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let pgmoat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("client_login_timeout", "1")
            .build(),
    );
    let port = pgmoat.port();

    let mut stalled = Vec::new();
    for i in 0..12 {
        let mut tcp = tcp_connect(port).await;
        match i % 3 {
            // Connects and says nothing.
            0 => {}
            // SSLRequest accepted, then a third of a TLS record header.
            1 => {
                tcp.write_all(&SSL_REQUEST).await.unwrap();
                let mut answer = [0u8; 1];
                tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut answer)
                    .await
                    .unwrap();
                assert_eq!(answer[0], b'S');
                tcp.write_all(&[0x16, 0x03]).await.unwrap();
            }
            // Direct TLS: a record header promising a ClientHello that never comes.
            _ => tcp
                .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .unwrap(),
        }
        stalled.push(tcp);
    }

    // Meanwhile a real client logs in and works, promptly.
    let started = Instant::now();
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        connect(
            port,
            "alice",
            Some(ALICE_PASSWORD),
            APP_DB,
            Some(tls_client_config(&pki.ca, None)),
        ),
    )
    .await
    .expect("a good client was held up by stalled handshakes")
    .unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert!(started.elapsed() < Duration::from_secs(10));

    for tcp in &mut stalled {
        expect_closed_within(tcp, Duration::from_secs(10)).await;
    }
    pgmoat.wait_for_log("client_login_timeout", Duration::from_secs(5));
    // The good client outlives the login timeout: it applies to logging in only.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[test]
fn psql_verify_full_with_client_cert_and_scram_reaches_postgresql_over_tls() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let pgmoat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .client_sslmode("verify-full")
            .build(),
    );
    let conn = conninfo(
        pgmoat.port(),
        "alice",
        APP_DB,
        &[
            ("sslmode", "verify-full"),
            ("sslrootcert", pki.ca.to_str().unwrap()),
            ("sslcert", pki.alice.crt.to_str().unwrap()),
            ("sslkey", pki.alice.key.to_str().unwrap()),
            ("password", ALICE_PASSWORD),
        ],
    );
    let out = psql(
        &[
            "-Atc",
            "SELECT ssl, client_dn, current_user FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ],
        &conn,
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        output_text(&out),
        pgmoat.log()
    );
    // PostgreSQL sees TLS, and the certificate pgmoat itself presented (CN certuser), while
    // the session belongs to alice (SCRAM towards PostgreSQL).
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "t|/CN=certuser|alice"
    );

    // The same psql without its certificate does not get past verify-full.
    let no_cert = conninfo(
        pgmoat.port(),
        "alice",
        APP_DB,
        &[
            ("sslmode", "verify-full"),
            ("sslrootcert", pki.ca.to_str().unwrap()),
            ("password", ALICE_PASSWORD),
        ],
    );
    let out = psql(&["-Atc", "SELECT 1"], &no_cert);
    assert!(!out.status.success(), "{}", output_text(&out));
}

/// The setup guides' shape: a 4096-bit RSA server certificate from `pgmoat certs issue
/// --rsa-bits 4096`, handed to pgmoat as one PEM holding the certificate and its key (no
/// client_tls_key_file), and a 4096-bit RSA client certificate for psql.
#[test]
fn rsa_4096_certificates_and_a_combined_pem_serve_psql_with_verify_full() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let out = pki.dir.path().join("rsa");
    let ca_dir = pki.ca.parent().unwrap();
    let certs = |args: &[&str]| {
        let run = pgmoat_command()
            .arg("certs")
            .args(args)
            .args(["--out", out.to_str().unwrap()])
            .args(["--ca-dir", ca_dir.to_str().unwrap()])
            .args(["--rsa-bits", "4096"])
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", output_text(&run));
    };
    certs(&["issue", "pgmoat-rsa", "--san", "DNS:localhost,IP:127.0.0.1"]);
    certs(&["issue", "alice-rsa", "--client", "--cn", "alice"]);
    let combined = out.join("pgmoat-rsa-combined.pem");
    let pgmoat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .client_sslmode("verify-full")
            .set_path("client_tls_cert_file", &combined)
            .unset("client_tls_key_file")
            .build(),
    );
    let conn = conninfo(
        pgmoat.port(),
        "alice",
        APP_DB,
        &[
            ("sslmode", "verify-full"),
            ("sslrootcert", pki.ca.to_str().unwrap()),
            ("sslcert", out.join("alice-rsa.crt").to_str().unwrap()),
            ("sslkey", out.join("alice-rsa.key").to_str().unwrap()),
            ("password", ALICE_PASSWORD),
        ],
    );
    let run = psql(&["-Atc", "SELECT current_user"], &conn);
    assert!(
        run.status.success(),
        "{}\n{}",
        output_text(&run),
        pgmoat.log()
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "alice");

    // The key pgmoat presents is the 4096-bit one from the combined file (the default
    // pgmoat certificate of the test PKI is EC P-256).
    let shown = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", pgmoat.port()),
        ])
        .args(["-starttls", "postgres"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running openssl s_client");
    let text = output_text(&shown);
    assert!(text.contains("Server public key is 4096 bit"), "{text}");
}
