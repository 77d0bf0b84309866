//! The whole moat in one test: psql with sslmode=verify-full and a client certificate through
//! pgmoat (mutual TLS in), verify-full TLS out, and PostgreSQL reporting ssl = t for the
//! backend pgmoat uses.

mod support;

use support::*;

#[test]
fn psql_verify_full_with_client_certificate_reaches_postgresql_over_tls() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let config = ConfigBuilder::new(&pki, &db)
        .client_sslmode("verify-full")
        .auth_type("cert")
        // alice's backend login is SCRAM with the auth_file password.
        .build();
    let pgmoat = Pgmoat::start(&config);
    let conn = conninfo(
        pgmoat.port(),
        "alice",
        APP_DB,
        &[
            ("sslmode", "verify-full"),
            ("sslrootcert", pki.ca.to_str().unwrap()),
            ("sslcert", pki.alice.crt.to_str().unwrap()),
            ("sslkey", pki.alice.key.to_str().unwrap()),
        ],
    );
    let out = psql(
        &[
            "-XAtq",
            "-c",
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            "-c",
            "SHOW ssl",
        ],
        &conn,
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        output_text(&out),
        pgmoat.log()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let first = lines.next().unwrap_or_default();
    assert!(
        first.starts_with("t|TLSv1."),
        "backend not on TLS: {stdout}"
    );
    assert_eq!(lines.next(), Some("on"));
}

#[test]
fn pgbench_runs_through_the_moat() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql(APP_DB, "GRANT ALL ON SCHEMA public TO alice");
    let pgmoat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "4")
            .build(),
    );
    let conn = conninfo(
        pgmoat.port(),
        "alice",
        APP_DB,
        &[
            ("sslmode", "verify-full"),
            ("sslrootcert", pki.ca.to_str().unwrap()),
            ("password", ALICE_PASSWORD),
        ],
    );
    let init = pgbench(&["-i", "-s", "1", "-q"], &conn);
    assert!(init.status.success(), "{}", output_text(&init));
    for mode in ["simple", "extended", "prepared"] {
        let run = pgbench(&["-M", mode, "-c", "8", "-j", "2", "-t", "20"], &conn);
        let text = output_text(&run);
        assert!(run.status.success(), "-M {mode}: {text}\n{}", pgmoat.log());
        assert!(
            text.contains("number of failed transactions: 0"),
            "-M {mode}: {text}"
        );
    }
}

/// The PgBouncer habit: auth_file holds the SCRAM verifier copied from pg_authid, no
/// password anywhere. pgmoat checks the client against the verifier and logs in to
/// PostgreSQL with the key the client's proof revealed.
#[tokio::test(flavor = "multi_thread")]
async fn a_scram_verifier_from_pg_authid_is_enough_for_both_logins() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let verifier = db.sql(
        APP_DB,
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'",
    );
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    let config = ConfigBuilder::new(&pki, &db)
        .userlist(&[("alice", verifier.as_str())])
        .build();
    let pgmoat = Pgmoat::start(&config);
    let tls = || Some(tls_client_config(&pki.ca, None));
    let client = connect(pgmoat.port(), "alice", Some(ALICE_PASSWORD), APP_DB, tls())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pgmoat.log()));
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "alice");
    let wrong = connect(pgmoat.port(), "alice", Some("nope"), APP_DB, tls()).await;
    let Err(err) = wrong else {
        panic!("a wrong password is refused")
    };
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("28P01"));
}

/// Startup settings are the client's own: applied on whatever server it gets, and never seen
/// by the next client of that server.
#[tokio::test(flavor = "multi_thread")]
async fn startup_settings_follow_their_client_and_do_not_leak() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let pgmoat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "1")
            .build(),
    );
    let tls = || tls_client_config(&pki.ca, None);
    let mut with_options = pg_config(pgmoat.port(), "alice", Some(ALICE_PASSWORD), APP_DB);
    with_options
        .options("-c statement_timeout=1234 -c search_path=pg_catalog")
        .application_name("client-a");
    let a = connect_config(with_options, Some(tls())).await.unwrap();
    let b = connect(
        pgmoat.port(),
        "bob",
        Some(BOB_PASSWORD),
        APP_DB,
        Some(tls()),
    )
    .await
    .unwrap();
    let plain = connect(
        pgmoat.port(),
        "alice",
        Some(ALICE_PASSWORD),
        APP_DB,
        Some(tls()),
    )
    .await
    .unwrap();
    let show = "SELECT current_setting('statement_timeout'), current_setting('search_path'), current_setting('application_name')";
    for _ in 0..3 {
        let row = a.query_one(show, &[]).await.unwrap();
        assert_eq!(
            (
                row.get::<_, String>(0),
                row.get::<_, String>(1),
                row.get::<_, String>(2)
            ),
            ("1234ms".into(), "pg_catalog".into(), "client-a".into())
        );
        let row = plain.query_one(show, &[]).await.unwrap();
        assert_eq!(
            (
                row.get::<_, String>(0),
                row.get::<_, String>(1),
                row.get::<_, String>(2)
            ),
            (
                "0".into(),
                "\"$user\", public".into(),
                "pgmoat-tests".into()
            ),
            "another client of the same server sees the defaults"
        );
        // bob has his own pool; still fine.
        b.query_one("SELECT 1", &[]).await.unwrap();
    }
}
