//! Authentication on both sides of pgmoat. Clients: trust, md5 and scram-sha-256 against
//! auth_file secrets (plain, md5-hashed, SCRAM verifiers), cert (CN = user), with
//! PostgreSQL's errors for a wrong password or an unknown user and no secret in the log.
//! Towards PostgreSQL: SCRAM or md5 (as pg_hba asks) with the auth_file password or the
//! [databases] entry's, the client certificate for a `cert` hba line, and a clear error when
//! that login fails.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio_postgres::error::{DbError, SqlState};

/// The first authentication request pgmoat sends `user` (5 = md5, 10 = SASL, 0 = ok).
async fn auth_request_code(pki: &Pki, port: u16, user: &str) -> u32 {
    let mut tls = raw_tls_connect(port, tls_client_config(&pki.ca, None)).await;
    tls.write_all(&startup_packet(&[("user", user), ("database", APP_DB)]))
        .await
        .unwrap();
    let msg = read_raw_message(&mut tls).await.unwrap().unwrap();
    assert_eq!(msg.tag, b'R', "{msg:?}");
    msg.auth_code().unwrap()
}

fn tls(pki: &Pki) -> Option<rustls::ClientConfig> {
    Some(tls_client_config(&pki.ca, None))
}

/// Asserts a login failed with `code` and exactly `message`.
fn assert_refused(
    result: Result<tokio_postgres::Client, tokio_postgres::Error>,
    code: &SqlState,
    message: &str,
) {
    let err = match result {
        Ok(_) => panic!("login succeeded; expected {code:?} {message:?}"),
        Err(e) => e,
    };
    let db_err = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got {err:?}"));
    assert_eq!(db_err.code(), code, "{db_err:?}");
    assert_eq!(db_err.message(), message, "{db_err:?}");
}

fn assert_no_secrets(pgmoat: &Pgmoat, secrets: &[&str]) {
    let log = pgmoat.log();
    for secret in secrets {
        assert!(
            !log.contains(secret),
            "the log shows a secret ({secret:?}):\n{log}"
        );
    }
}

/// Logs in as `user` through `pgmoat` with verified TLS; panics with pgmoat's log on failure.
async fn login(pki: &Pki, pgmoat: &Pgmoat, user: &str, password: &str) -> tokio_postgres::Client {
    connect(pgmoat.port(), user, Some(password), APP_DB, tls(pki))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", pgmoat.log()))
}

/// alice's login through `pgmoat`, whose own login towards PostgreSQL fails (`case` says
/// how): the client hears 28P01 within 30 s. Returns the error for the caller's checks.
async fn backend_login_refused(pki: &Pki, pgmoat: &Pgmoat, case: &str) -> DbError {
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        connect(
            pgmoat.port(),
            "alice",
            Some(ALICE_PASSWORD),
            APP_DB,
            tls(pki),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("{case} left the client hanging"));
    let Err(err) = result else {
        panic!("{case}, yet the client's login worked");
    };
    let db_err = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got {err:?}"));
    assert_eq!(db_err.code(), &SqlState::INVALID_PASSWORD, "{db_err:?}");
    db_err.clone()
}

async fn current_user(client: &tokio_postgres::Client) -> String {
    client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn trust_and_md5_with_plain_and_hashed_secrets() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);

    // trust: no password is asked for; the backend login still uses auth_file's.
    let trust = Pgmoat::start(&ConfigBuilder::new(&pki, &db).auth_type("trust").build());
    assert_eq!(auth_request_code(&pki, trust.port(), "alice").await, 0);
    let client = connect(trust.port(), "alice", None, APP_DB, tls(&pki))
        .await
        .unwrap();
    assert_eq!(current_user(&client).await, "alice");

    // md5 against a plain-text secret, with psql and PGPASSWORD.
    let md5 = Pgmoat::start(&ConfigBuilder::new(&pki, &db).auth_type("md5").build());
    assert_eq!(auth_request_code(&pki, md5.port(), "alice").await, 5);
    let verify_full = [
        ("sslmode", "verify-full"),
        ("sslrootcert", pki.ca.to_str().unwrap()),
    ];
    let conn = conninfo(md5.port(), "alice", APP_DB, &verify_full);
    let out = psql_env(
        &["-Atc", "SELECT current_user"],
        &conn,
        &[("PGPASSWORD", ALICE_PASSWORD)],
    );
    assert!(out.status.success(), "{}\n{}", output_text(&out), md5.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alice");
    let out = psql_env(&["-Atc", "SELECT 1"], &conn, &[("PGPASSWORD", "not-it")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("password authentication failed for user \"alice\""),
        "{stderr}"
    );

    // md5 against an md5 secret as PostgreSQL computes it. The backend needs a real
    // password, so the database entry carries it.
    let hashed = db.sql(APP_DB, "SELECT 'md5' || md5('alice-secret' || 'alice')");
    assert!(hashed.starts_with("md5") && hashed.len() == 35, "{hashed}");
    let md5_hashed = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .auth_type("md5")
            .userlist(&[("alice", &hashed)])
            .database_line(&format!("password = {}", toml_str(ALICE_PASSWORD)))
            .build(),
    );
    assert_eq!(auth_request_code(&pki, md5_hashed.port(), "alice").await, 5);
    let out = psql_env(
        &["-Atc", "SELECT current_user"],
        &conninfo(md5_hashed.port(), "alice", APP_DB, &verify_full),
        &[("PGPASSWORD", ALICE_PASSWORD)],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        output_text(&out),
        md5_hashed.log()
    );
    let client = connect(
        md5_hashed.port(),
        "alice",
        Some("not-it"),
        APP_DB,
        tls(&pki),
    )
    .await;
    assert_refused(
        client,
        &SqlState::INVALID_PASSWORD,
        "password authentication failed for user \"alice\"",
    );

    for pgmoat in [&trust, &md5, &md5_hashed] {
        assert_no_secrets(pgmoat, &[ALICE_PASSWORD, BOB_PASSWORD, &hashed[3..]]);
    }
}

#[tokio::test]
async fn scram_with_a_plain_secret_and_with_a_postgresql_verifier() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);

    let plain = Pgmoat::start(&ConfigBuilder::new(&pki, &db).build());
    assert_eq!(auth_request_code(&pki, plain.port(), "alice").await, 10);
    let client = login(&pki, &plain, "alice", ALICE_PASSWORD).await;
    assert_eq!(current_user(&client).await, "alice");

    // The verifier PostgreSQL stores for alice, used as the auth_file secret: pgmoat never
    // sees the password, yet checks the client's proof.
    let verifier = db.sql(
        APP_DB,
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'",
    );
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    let hashed = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .userlist(&[("alice", &verifier)])
            .database_line(&format!("password = {}", toml_str(ALICE_PASSWORD)))
            .build(),
    );
    let client = login(&pki, &hashed, "alice", ALICE_PASSWORD).await;
    assert_eq!(current_user(&client).await, "alice");
    let wrong = connect(hashed.port(), "alice", Some("not-it"), APP_DB, tls(&pki)).await;
    assert_refused(
        wrong,
        &SqlState::INVALID_PASSWORD,
        "password authentication failed for user \"alice\"",
    );

    // auth_type md5 with only a SCRAM verifier switches to SCRAM, as PostgreSQL does.
    let md5 = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .auth_type("md5")
            .userlist(&[("alice", &verifier)])
            .database_line(&format!("password = {}", toml_str(ALICE_PASSWORD)))
            .build(),
    );
    assert_eq!(auth_request_code(&pki, md5.port(), "alice").await, 10);
    connect(md5.port(), "alice", Some(ALICE_PASSWORD), APP_DB, tls(&pki))
        .await
        .unwrap();

    let (_, stored_key) = verifier.split_once(':').unwrap();
    for pgmoat in [&plain, &hashed, &md5] {
        assert_no_secrets(pgmoat, &[ALICE_PASSWORD, stored_key]);
    }
}

/// A wrong password and an unknown user look the same from outside (PostgreSQL's wording,
/// 28P01), for SCRAM and md5 alike. No PostgreSQL is needed: both fail before any backend.
#[tokio::test]
async fn wrong_password_and_unknown_user_get_28p01_and_no_secret_is_logged() {
    let pki = Pki::new();
    for auth in ["scram-sha-256", "md5"] {
        let pgmoat = Pgmoat::start(&ConfigBuilder::for_port(&pki, 1).auth_type(auth).build());
        let port = pgmoat.port();
        for (user, password) in [
            ("alice", "bob-secret"),
            ("mallory", ALICE_PASSWORD),
            ("alice", ""),
        ] {
            let result = connect(port, user, Some(password), APP_DB, tls(&pki)).await;
            assert_refused(
                result,
                &SqlState::INVALID_PASSWORD,
                &format!("password authentication failed for user \"{user}\""),
            );
        }
        // psql shows the same words to a person.
        let out = psql_env(
            &["-Atc", "SELECT 1"],
            &conninfo(port, "nobody", APP_DB, &[("sslmode", "require")]),
            &[("PGPASSWORD", ALICE_PASSWORD)],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("password authentication failed for user \"nobody\""),
            "{auth}: {stderr}"
        );
        pgmoat.wait_for_log("client refused", Duration::from_secs(5));
        assert_no_secrets(&pgmoat, &[ALICE_PASSWORD, BOB_PASSWORD]);
    }
}

#[tokio::test]
async fn cert_auth_takes_the_user_from_the_certificate_cn() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let pgmoat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .client_sslmode("verify-full")
            .auth_type("cert")
            .build(),
    );
    let port = pgmoat.port();
    let with_cert = |pair| Some(tls_client_config(&pki.ca, Some(pair)));

    // CN alice as alice: in, without any password.
    let client = connect(port, "alice", None, APP_DB, with_cert(pki.alice.pair()))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", pgmoat.log()));
    assert_eq!(current_user(&client).await, "alice");

    // CN alice as bob: refused with 28000.
    let as_bob = connect(
        port,
        "bob",
        Some(BOB_PASSWORD),
        APP_DB,
        with_cert(pki.alice.pair()),
    )
    .await;
    assert_refused(
        as_bob,
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        "certificate authentication failed for user \"bob\"",
    );

    // No certificate: verify-full ends it in the TLS handshake already.
    let err = connect(port, "alice", Some(ALICE_PASSWORD), APP_DB, tls(&pki))
        .await
        .unwrap_err();
    assert!(
        err.as_db_error().is_none(),
        "expected a TLS refusal: {err:?}"
    );
    // And without TLS at all: 28000, TLS required.
    let plain = connect(port, "alice", Some(ALICE_PASSWORD), APP_DB, None).await;
    let err = plain.err().unwrap();
    assert_eq!(
        err.as_db_error().map(|e| e.code()),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err:?}"
    );
}

#[tokio::test]
async fn backend_logins_scram_entry_password_cert_and_a_wrong_password() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let authenticated = |identity: &str, method: &str| {
        format!("connection authenticated: identity=\"{identity}\" method={method}")
    };

    // SCRAM towards PostgreSQL with alice's password from auth_file.
    let plain = Pgmoat::start(&ConfigBuilder::new(&pki, &db).build());
    let client = login(&pki, &plain, "alice", ALICE_PASSWORD).await;
    assert_eq!(current_user(&client).await, "alice");
    let needle = authenticated("alice", "scram-sha-256");
    assert!(db.log_tail(100).contains(&needle), "{}", db.log_tail(30));

    // The [databases] entry forces user bob with its own password; bob is not in auth_file.
    let forced = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .userlist(&[("alice", ALICE_PASSWORD)])
            .database_line("user = \"bob\"")
            .database_line(&format!("password = {}", toml_str(BOB_PASSWORD)))
            .build(),
    );
    let client = login(&pki, &forced, "alice", ALICE_PASSWORD).await;
    assert_eq!(current_user(&client).await, "bob");
    let needle = authenticated("bob", "scram-sha-256");
    assert!(db.log_tail(100).contains(&needle), "{}", db.log_tail(30));

    // certuser has no password anywhere: pgmoat logs in with its client certificate (CN
    // certuser) through PostgreSQL's `cert` hba line.
    let cert = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .client_sslmode("verify-full")
            .auth_type("cert")
            .build(),
    );
    let client = connect(
        cert.port(),
        "certuser",
        None,
        APP_DB,
        Some(tls_client_config(&pki.ca, Some(pki.certuser.pair()))),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}\n{}", cert.log()));
    let row = client
        .query_one(
            "SELECT current_user::text, ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "certuser");
    assert!(row.get::<_, bool>(1));
    assert_eq!(row.get::<_, String>(2), "/CN=certuser");
    let needle = authenticated("CN=certuser", "cert");
    assert!(db.log_tail(100).contains(&needle), "{}", db.log_tail(30));

    // A wrong password towards PostgreSQL reaches the client as an error, promptly.
    let wrong = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .database_line("password = \"not-the-password\"")
            .build(),
    );
    let db_err = backend_login_refused(&pki, &wrong, "a failed backend login").await;
    assert!(
        db_err.message().contains("password authentication failed")
            && db_err
                .detail()
                .unwrap_or_default()
                .contains("could not log in to PostgreSQL"),
        "{db_err:?}"
    );
    for pgmoat in [&plain, &forced, &cert, &wrong] {
        assert_no_secrets(pgmoat, &[ALICE_PASSWORD, BOB_PASSWORD, "not-the-password"]);
    }
}

#[tokio::test]
async fn backend_login_with_md5_when_pg_hba_asks_for_it() {
    const MD5_USER: &str = "md5user";
    const MD5_PASSWORD: &str = "md5user-secret";
    let pki = Pki::new();
    // md5 for md5user, before the catch-all scram-sha-256 line.
    let db = TestDb::start_with(&pki, |opts| {
        let at = opts.hba.len() - 1;
        opts.hba
            .insert(at, format!("hostssl all {MD5_USER} 127.0.0.1/32 md5"));
    });
    // With a SCRAM verifier stored, PostgreSQL would answer an md5 rule with SCRAM anyway.
    db.sql(
        APP_DB,
        &format!(
            "SET password_encryption = 'md5';
             CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}';"
        ),
    );
    assert_eq!(
        db.sql(
            APP_DB,
            &format!("SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = '{MD5_USER}'")
        ),
        "md5"
    );
    let md5_logins = || {
        let log = std::fs::read_to_string(db.log_path()).unwrap_or_default();
        log.matches(&format!(
            "connection authenticated: identity=\"{MD5_USER}\" method=md5"
        ))
        .count()
    };

    // The plain password from auth_file: the client logs in to pgmoat with SCRAM, pgmoat
    // answers PostgreSQL's md5 challenge with the same password.
    let from_userlist = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .userlist(&[(MD5_USER, MD5_PASSWORD)])
            .build(),
    );
    let client = login(&pki, &from_userlist, MD5_USER, MD5_PASSWORD).await;
    assert_eq!(current_user(&client).await, MD5_USER);
    assert_eq!(md5_logins(), 1, "{}", db.log_tail(30));

    // The [databases] entry's user and password: alice's client, md5user's server login.
    let from_entry = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .userlist(&[("alice", ALICE_PASSWORD)])
            .database_line(&format!("user = {}", toml_str(MD5_USER)))
            .database_line(&format!("password = {}", toml_str(MD5_PASSWORD)))
            .build(),
    );
    let client = login(&pki, &from_entry, "alice", ALICE_PASSWORD).await;
    assert_eq!(current_user(&client).await, MD5_USER);
    assert_eq!(md5_logins(), 2, "{}", db.log_tail(30));

    // A wrong password fails the md5 exchange: the client hears PostgreSQL's refusal.
    let wrong = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .userlist(&[("alice", ALICE_PASSWORD)])
            .database_line(&format!("user = {}", toml_str(MD5_USER)))
            .database_line("password = \"not-the-password\"")
            .build(),
    );
    let db_err = backend_login_refused(&pki, &wrong, "a failed md5 backend login").await;
    assert!(
        db_err.message().contains("password authentication failed"),
        "{db_err:?}"
    );
    assert!(
        db.log_tail(50).contains(&format!(
            "password authentication failed for user \"{MD5_USER}\""
        )),
        "{}",
        db.log_tail(30)
    );
    assert_eq!(md5_logins(), 2);
    for pgmoat in [&from_userlist, &from_entry, &wrong] {
        assert_no_secrets(pgmoat, &[MD5_PASSWORD, ALICE_PASSWORD, "not-the-password"]);
    }
}
