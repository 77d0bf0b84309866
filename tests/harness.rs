//! Proves the integration-test harness itself, against PostgreSQL directly (no pgmoat): the
//! cert tool's PKI works with PostgreSQL, rustls and libpq as it is, the cluster is TLS-only,
//! and the cluster's lifecycle helpers do what they say.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pgmoat::pgcluster::{PgCluster, PgClusterOptions};
use support::*;
use tokio_postgres::error::SqlState;

const SSL_QUERY: &str =
    "SELECT ssl, coalesce(client_dn, '') FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

fn auth_error_code(err: &tokio_postgres::Error) -> Option<SqlState> {
    err.as_db_error().map(|db| db.code().clone())
}

#[tokio::test]
async fn alice_logs_in_with_scram_over_verify_full_tls() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let tls = tls_client_config(&pki.ca, None);
    let client = connect(db.port(), "alice", Some(ALICE_PASSWORD), APP_DB, Some(tls))
        .await
        .unwrap();

    let row = client.query_one(SSL_QUERY, &[]).await.unwrap();
    assert!(row.get::<_, bool>(0), "session is not encrypted");
    client
        .execute("INSERT INTO items (v) VALUES ($1)", &[&"from alice"])
        .await
        .unwrap();
    let count: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
    assert!(
        db.log_tail(50).contains("method=scram-sha-256"),
        "{}",
        db.log_tail(50)
    );

    // The rustls config really verifies: a client trusting another CA gives up.
    let distrustful = tls_client_config(&pki.other_ca, None);
    let err = connect(
        db.port(),
        "alice",
        Some(ALICE_PASSWORD),
        APP_DB,
        Some(distrustful),
    )
    .await
    .unwrap_err();
    assert!(
        err.as_db_error().is_none(),
        "expected a TLS error, got {err}"
    );

    let err = connect(
        db.port(),
        "alice",
        Some("wrong"),
        APP_DB,
        Some(tls_client_config(&pki.ca, None)),
    )
    .await
    .unwrap_err();
    assert_eq!(
        auth_error_code(&err),
        Some(SqlState::INVALID_PASSWORD),
        "{err}"
    );
}

#[tokio::test]
async fn certuser_needs_a_client_certificate() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);

    let with_cert = tls_client_config(&pki.ca, Some(pki.certuser.pair()));
    let client = connect(db.port(), "certuser", None, APP_DB, Some(with_cert))
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT current_user::text, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "certuser");
    assert_eq!(row.get::<_, String>(1), "/CN=certuser");

    let without_cert = tls_client_config(&pki.ca, None);
    let err = connect(db.port(), "certuser", None, APP_DB, Some(without_cert))
        .await
        .unwrap_err();
    assert_eq!(
        auth_error_code(&err),
        Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err}"
    );
}

#[tokio::test]
async fn untrusted_and_expired_client_certs_are_refused() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let login = |pair| {
        let tls = tls_client_config(&pki.ca, Some(pair));
        connect(db.port(), "alice", Some(ALICE_PASSWORD), APP_DB, Some(tls))
    };
    // Each would have logged in with alice's password; the certificate alone sinks it.
    login(pki.alice.pair()).await.unwrap();
    assert!(
        login(pki.mallory.pair()).await.is_err(),
        "untrusted CA accepted"
    );
    assert!(
        login(pki.expired.pair()).await.is_err(),
        "expired cert accepted"
    );
}

#[tokio::test]
async fn wrong_host_server_cert_fails_verify_full() {
    let pki = Pki::new();
    let db = TestDb::start_with(&pki, |opts| {
        opts.server_cert = pki.wrong_host.crt.clone();
        opts.server_key = pki.wrong_host.key.clone();
    });
    let tls = tls_client_config(&pki.ca, None);
    let err = connect(db.port(), "alice", Some(ALICE_PASSWORD), APP_DB, Some(tls))
        .await
        .unwrap_err();
    let chain = format!("{err:?}");
    assert!(chain.contains("NotValidForName"), "{chain}");
}

/// libpq settings for verify-full with a client certificate.
fn libpq_tls<'a>(ca: &'a Path, pair: &'a CertPair) -> Vec<(&'static str, &'a str)> {
    vec![
        ("sslmode", "verify-full"),
        ("sslrootcert", ca.to_str().unwrap()),
        ("sslcert", pair.crt.to_str().unwrap()),
        ("sslkey", pair.key.to_str().unwrap()),
    ]
}

#[test]
fn psql_uses_the_cert_tool_files_as_they_are() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    for key in [&pki.alice.key, &pki.certuser.key] {
        let mode = std::fs::metadata(key).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "libpq refuses key {} with mode {mode:o}",
            key.display()
        );
    }
    let mut alice = libpq_tls(&pki.ca, &pki.alice);
    alice.push(("password", ALICE_PASSWORD));
    let out = psql(
        &["-Atc", SSL_QUERY],
        &conninfo(db.port(), "alice", APP_DB, &alice),
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t|/CN=alice");

    // cert auth succeeds only if libpq actually sent the certificate.
    let certuser = libpq_tls(&pki.ca, &pki.certuser);
    let out = psql(
        &["-Atc", "SELECT current_user"],
        &conninfo(db.port(), "certuser", APP_DB, &certuser),
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "certuser");

    // pgbench takes the same conninfo (libpq expands it from the dbname argument).
    let script = pki.dir.path().join("select1.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let out = pgbench(
        &["-n", "-c", "2", "-t", "10", "-f", script.to_str().unwrap()],
        &conninfo(db.port(), "alice", APP_DB, &alice),
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("processed: 20/20"), "{stdout}");
}

#[tokio::test]
async fn plain_tcp_is_refused() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);

    let plain = [("sslmode", "disable"), ("password", ALICE_PASSWORD)];
    let out = psql(
        &["-Atc", "SELECT 1"],
        &conninfo(db.port(), "alice", APP_DB, &plain),
    );
    assert!(!out.status.success(), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no encryption"), "{stderr}");

    let err = connect(db.port(), "alice", Some(ALICE_PASSWORD), APP_DB, None)
        .await
        .unwrap_err();
    assert_eq!(
        auth_error_code(&err),
        Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err}"
    );
}

#[tokio::test]
async fn cluster_restarts_reloads_and_cleans_up() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let port = db.port();
    db.sql(APP_DB, "INSERT INTO items (v) VALUES ('kept')");

    db.restart().unwrap();
    assert_eq!(db.port(), port);
    assert_eq!(db.sql(APP_DB, "SELECT v FROM items"), "kept");

    // A reload applies a new pg_hba.conf before the next connection.
    let bob_tls = || tls_client_config(&pki.ca, None);
    connect(port, "bob", Some(BOB_PASSWORD), APP_DB, Some(bob_tls()))
        .await
        .unwrap();
    let mut hba = vec!["hostssl all bob 127.0.0.1/32 reject".to_owned()];
    hba.extend(pgmoat::pgcluster::default_hba());
    db.set_hba(&hba).unwrap();
    db.reload().unwrap();
    let err = connect(port, "bob", Some(BOB_PASSWORD), APP_DB, Some(bob_tls()))
        .await
        .unwrap_err();
    assert_eq!(
        auth_error_code(&err),
        Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err}"
    );

    let err = db.psql(APP_DB, "SELECT * FROM no_such_table").unwrap_err();
    assert!(err.to_string().contains("no_such_table"), "{err}");
    assert!(!db.log_tail(5).is_empty());

    let dir = db.socket_dir().to_owned();
    assert!(db.data_dir().join("PG_VERSION").is_file());
    drop(db);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn stop_start_again_and_keep() {
    let pki = Pki::new();
    let mut opts = PgClusterOptions::new(&pki.postgres.crt, &pki.postgres.key, &pki.ca);
    opts.keep = true;
    opts.databases = vec!["kept".to_owned()];
    let cluster = PgCluster::start(opts).unwrap();
    assert_eq!(
        cluster.psql("kept", "SELECT current_database()").unwrap(),
        "kept"
    );

    cluster.stop().unwrap();
    assert!(cluster.psql("kept", "SELECT 1").is_err());
    cluster.start_again().unwrap();
    assert_eq!(cluster.psql("kept", "SELECT 1").unwrap(), "1");

    let dir = cluster.socket_dir().to_owned();
    drop(cluster);
    assert!(dir.join("data/PG_VERSION").is_file(), "keep did not keep");
    // The server is down even though its files stay.
    assert!(!dir.join("data/postmaster.pid").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_builder_output_is_valid_toml_for_the_test_db() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let text = ConfigBuilder::new(&pki, &db)
        .client_sslmode("verify-full")
        .set("default_pool_size", "3")
        .database_line("pool_size = 2")
        .build();
    let table: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(table["client_tls_sslmode"].as_str(), Some("verify-full"));
    assert_eq!(table["default_pool_size"].as_integer(), Some(3));
    let app = &table["databases"]["app"];
    assert_eq!(app["port"].as_integer(), Some(i64::from(db.port())));
    assert_eq!(app["pool_size"].as_integer(), Some(2));
    let userlist = std::fs::read_to_string(table["auth_file"].as_str().unwrap()).unwrap();
    assert_eq!(
        userlist,
        "\"alice\" \"alice-secret\"\n\"bob\" \"bob-secret\"\n"
    );
}

#[test]
fn pgmoat_harness_reports_a_refused_config() {
    let (status, log) = Pgmoat::start_expect_failure("this is = = not toml");
    assert!(!status.success());
    assert!(
        !log.trim().is_empty(),
        "pgmoat said nothing about why it refused"
    );
}
