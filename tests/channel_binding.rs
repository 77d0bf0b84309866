//! SCRAM channel binding (SCRAM-SHA-256-PLUS, tls-server-end-point) on both hops, and no
//! cleartext password to a server pgmoat has not verified.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::config::{ChannelBinding, SslNegotiation};

/// libpq's `channel_binding=require` logs in through pgmoat with SCRAM (psql over
/// SSLRequest), and tokio-postgres binds too, over SSLRequest and direct TLS. Without TLS
/// there is nothing to bind to, and libpq refuses (the positive control that the option
/// really demands binding).
#[tokio::test]
async fn clients_that_require_channel_binding_log_in_through_pgmoat() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .client_sslmode("prefer")
            .build(),
    );
    let ca = pki.ca.to_string_lossy().into_owned();
    let bound = psql(
        &["-tAc", "SELECT 'bound'"],
        &conninfo(
            moat.port(),
            "alice",
            APP_DB,
            &[
                ("sslmode", "verify-full"),
                ("sslrootcert", &ca),
                ("channel_binding", "require"),
                ("password", ALICE_PASSWORD),
            ],
        ),
    );
    assert_eq!(
        String::from_utf8_lossy(&bound.stdout).trim(),
        "bound",
        "{}\n{}",
        output_text(&bound),
        moat.log()
    );

    let plaintext = psql(
        &["-tAc", "SELECT 1"],
        &conninfo(
            moat.port(),
            "alice",
            APP_DB,
            &[
                ("sslmode", "disable"),
                ("channel_binding", "require"),
                ("password", ALICE_PASSWORD),
            ],
        ),
    );
    assert!(!plaintext.status.success(), "no TLS, no binding");

    for negotiation in [SslNegotiation::Postgres, SslNegotiation::Direct] {
        let mut config = pg_config(moat.port(), "alice", Some(ALICE_PASSWORD), APP_DB);
        config.channel_binding(ChannelBinding::Require);
        config.ssl_negotiation(negotiation);
        let mut tls = tls_client_config(&pki.ca, None);
        tls.alpn_protocols = vec![b"postgresql".to_vec()];
        let client = connect_config(config, Some(tls))
            .await
            .unwrap_or_else(|e| panic!("{negotiation:?}: {e:?}\n{}", moat.log()));
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
}

/// Towards PostgreSQL: with server_channel_binding = require, pgmoat logs in over TLS with
/// SCRAM-SHA-256-PLUS on both SCRAM paths (auth_file password, and the keys a client's proof
/// gives when auth_file holds only a verifier); without TLS it refuses with a clear error.
#[tokio::test]
async fn pgmoat_binds_its_own_scram_logins_to_postgresql() {
    let pki = Pki::new();
    let db = TestDb::start_with(&pki, |opts| {
        // Plaintext connections too (after the hostssl lines), for the refusal.
        opts.hba.push("host all all 127.0.0.1/32 trust".into());
    });
    let with_password = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set_str("server_channel_binding", "require")
            .build(),
    );
    let client = moat_client(&with_password, &pki, "alice").await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    let verifier = db.sql(
        APP_DB,
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'",
    );
    let with_keys = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .userlist(&[("alice", &verifier)])
            .set_str("server_channel_binding", "require")
            .build(),
    );
    let client = moat_client(&with_keys, &pki, "alice").await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    let no_tls = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .server_sslmode("disable")
            .set_str("server_channel_binding", "require")
            .build(),
    );
    let err = connect_config(
        moat_config(&no_tls, "alice"),
        Some(tls_client_config(&pki.ca, None)),
    )
    .await
    .expect_err("no TLS towards PostgreSQL, so nothing to bind");
    let message = err.as_db_error().map(|e| e.message().to_owned());
    no_tls.wait_for_log("server_channel_binding = require", Duration::from_secs(10));
    assert!(message.is_some(), "{err:?}");
}

/// A fake PostgreSQL that completes TLS (with a certificate pgmoat trusts), then asks for the
/// password in clear text: under server_tls_sslmode = require pgmoat refuses and never sends
/// it; under verify-full (the positive control) it does.
#[tokio::test]
async fn a_cleartext_password_request_is_refused_unless_the_server_is_verified() {
    let pki = Pki::new();
    for (mode, sends) in [("require", false), ("verify-full", true)] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = fake_server_tls(&pki);
        let fake = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut ssl_request = [0u8; 8];
            tcp.read_exact(&mut ssl_request).await.unwrap();
            tcp.write_all(b"S").await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut len = [0u8; 4];
            tls.read_exact(&mut len).await.unwrap();
            let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            tls.read_exact(&mut startup).await.unwrap();
            // AuthenticationCleartextPassword.
            tls.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])
                .await
                .unwrap();
            tls.flush().await.unwrap();
            let mut tag = [0u8; 1];
            let got = tokio::time::timeout(Duration::from_secs(20), tls.read(&mut tag)).await;
            let sent_password = matches!(got, Ok(Ok(1)) if tag[0] == b'p');
            // End the login either way.
            let _ = tls
                .write_all(&fatal("28P01", "password authentication failed"))
                .await;
            sent_password
        });
        let moat = Pgmoat::start(
            &ConfigBuilder::for_port(&pki, port)
                .server_sslmode(mode)
                .database_line(&format!("password = {}", toml_str(ALICE_PASSWORD)))
                .build(),
        );
        let err = connect_config(
            moat_config(&moat, "alice"),
            Some(tls_client_config(&pki.ca, None)),
        )
        .await
        .expect_err("the fake server never lets anyone in");
        let sent = fake.await.unwrap();
        assert_eq!(sent, sends, "{mode}: password sent = {sent}");
        if !sends {
            moat.wait_for_log("in clear text", Duration::from_secs(10));
            let message = err.as_db_error().map(|e| e.message().to_owned());
            assert!(message.is_some(), "{err:?}");
        }
        assert!(
            !moat.log().contains(ALICE_PASSWORD),
            "the password is never logged"
        );
    }
}

fn fatal(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [(b'S', "FATAL"), (b'C', code), (b'M', message)] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = vec![b'E'];
    msg.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// TLS for the fake server, with PostgreSQL's certificate from the test CA.
fn fake_server_tls(pki: &Pki) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<_> = CertificateDer::pem_file_iter(&pki.postgres.crt)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.postgres.key).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
