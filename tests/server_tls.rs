//! TLS between pgmoat and PostgreSQL, by server_tls_sslmode: verify-full checks the chain and
//! the host name or IP address, verify-ca the chain only, require nothing but encryption;
//! disable really is plaintext; and a PostgreSQL that refuses TLS is never silently used in
//! plaintext unless the mode allows it.

mod support;

use support::*;
use tokio_postgres::error::SqlState;

const SSL_QUERY: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// A second `[databases]` entry for the test database at `host` (given after the `app`
/// entry's own lines, so it starts its own table).
fn database_entry(name: &str, host: &str, db: &TestDb) -> String {
    format!(
        "\n[databases.{name}]\nhost = {}\nport = {}\ndbname = {}",
        toml_str(host),
        db.port(),
        toml_str(APP_DB)
    )
}

async fn login(
    pki: &Pki,
    pgmoat: &Pgmoat,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let tls = tls_client_config(&pki.ca, None);
    connect(pgmoat.port(), "alice", Some(ALICE_PASSWORD), db, Some(tls)).await
}

async fn backend_ssl(pki: &Pki, pgmoat: &Pgmoat, db: &str) -> bool {
    let client = login(pki, pgmoat, db)
        .await
        .unwrap_or_else(|e| panic!("login to {db} failed: {e:?}\n{}", pgmoat.log()));
    client.query_one(SSL_QUERY, &[]).await.unwrap().get(0)
}

/// The ErrorResponse a client got when pgmoat could not reach PostgreSQL as configured.
async fn backend_failure(pki: &Pki, pgmoat: &Pgmoat, db: &str) -> (SqlState, String) {
    let err = match login(pki, pgmoat, db).await {
        Ok(_) => panic!("login to {db} worked; expected a failure\n{}", pgmoat.log()),
        Err(e) => e,
    };
    let db_err = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got {err:?}"));
    (db_err.code().clone(), db_err.message().to_owned())
}

#[tokio::test]
async fn against_a_tls_only_postgresql() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);

    // verify-full by host name (DNS SAN) and by IP address (IP SAN).
    let pgmoat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .database_line(&database_entry("byip", "127.0.0.1", &db))
            .build(),
    );
    assert!(backend_ssl(&pki, &pgmoat, APP_DB).await);
    assert!(backend_ssl(&pki, &pgmoat, "byip").await);

    // A CA that did not sign PostgreSQL's certificate: no connection, and the client is
    // told why.
    let wrong_ca = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set_path("server_tls_ca_file", &pki.other_ca)
            .build(),
    );
    let (code, message) = backend_failure(&pki, &wrong_ca, APP_DB).await;
    assert_eq!(
        code,
        SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
        "{message}"
    );
    assert!(
        message.contains("TLS handshake with PostgreSQL") && message.contains("UnknownIssuer"),
        "{message}"
    );

    // verify-ca and require work here too.
    for mode in ["verify-ca", "require"] {
        let pgmoat = Pgmoat::start(&ConfigBuilder::new(&pki, &db).server_sslmode(mode).build());
        assert!(backend_ssl(&pki, &pgmoat, APP_DB).await, "{mode}");
    }

    // disable sends no SSLRequest: this PostgreSQL (hostssl lines only) turns it away, which
    // proves the connection really was plaintext.
    let disable = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .server_sslmode("disable")
            .build(),
    );
    let (code, message) = backend_failure(&pki, &disable, APP_DB).await;
    assert_eq!(
        code,
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        "{message}"
    );
    assert!(message.contains("no encryption"), "{message}");
}

#[tokio::test]
async fn verify_full_checks_the_name_verify_ca_and_require_do_not() {
    let pki = Pki::new();
    let db = TestDb::start_with(&pki, |opts| {
        opts.server_cert = pki.wrong_host.crt.clone();
        opts.server_key = pki.wrong_host.key.clone();
    });

    // A certificate from the right CA for DNS:wrong.example only.
    let full = Pgmoat::start(&ConfigBuilder::new(&pki, &db).build());
    let (code, message) = backend_failure(&pki, &full, APP_DB).await;
    assert_eq!(
        code,
        SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
        "{message}"
    );
    assert!(
        message.contains("TLS handshake with PostgreSQL") && message.contains("not valid for name"),
        "{message}"
    );
    for mode in ["verify-ca", "require"] {
        let pgmoat = Pgmoat::start(&ConfigBuilder::new(&pki, &db).server_sslmode(mode).build());
        assert!(backend_ssl(&pki, &pgmoat, APP_DB).await, "{mode}");
    }

    // Which SAN counts: a DNS-only certificate serves "localhost" but not "127.0.0.1"...
    let dns_only = pki.issue_server("dns-only", &["DNS:localhost"]);
    db.install_server_cert(&dns_only.crt, &dns_only.key)
        .unwrap();
    db.reload().unwrap();
    let pgmoat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .database_line(&database_entry("byip", "127.0.0.1", &db))
            .build(),
    );
    assert!(backend_ssl(&pki, &pgmoat, APP_DB).await);
    let (_, message) = backend_failure(&pki, &pgmoat, "byip").await;
    assert!(message.contains("not valid for name"), "{message}");

    // ...and an IP-only one the reverse.
    let ip_only = pki.issue_server("ip-only", &["IP:127.0.0.1"]);
    db.install_server_cert(&ip_only.crt, &ip_only.key).unwrap();
    db.reload().unwrap();
    let pgmoat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .database_line(&database_entry("byip", "127.0.0.1", &db))
            .build(),
    );
    assert!(backend_ssl(&pki, &pgmoat, "byip").await);
    let (_, message) = backend_failure(&pki, &pgmoat, APP_DB).await;
    assert!(message.contains("not valid for name"), "{message}");
}

#[tokio::test]
async fn a_postgresql_without_tls_is_refused_unless_the_mode_allows_plaintext() {
    let pki = Pki::new();
    let db = TestDb::start_with(&pki, |opts| {
        opts.settings.push(("ssl".into(), "off".into()));
        opts.hba = vec!["host all all 127.0.0.1/32 scram-sha-256".into()];
    });

    for mode in ["require", "verify-ca", "verify-full"] {
        let pgmoat = Pgmoat::start(&ConfigBuilder::new(&pki, &db).server_sslmode(mode).build());
        let (code, message) = backend_failure(&pki, &pgmoat, APP_DB).await;
        assert_eq!(
            code,
            SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            "{mode}: {message}"
        );
        assert!(
            message.contains("refused TLS") && message.contains(mode),
            "{mode}: {message}"
        );
    }

    // prefer falls back to plaintext, and says so in the log.
    let prefer = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .server_sslmode("prefer")
            .build(),
    );
    assert!(!backend_ssl(&pki, &prefer, APP_DB).await);
    let log = prefer.plain_log();
    assert!(
        log.contains("WARN") && log.contains("PostgreSQL refused TLS"),
        "{log}"
    );
}
