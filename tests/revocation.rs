//! Revocation with the built-in CA: `pgmoat certs revoke` writes the CA's CRL, pgmoat refuses
//! the revoked certificate after a reload (naming its serial) while a connection made before
//! keeps working; a CRL past its next update under tls_crl_expired = refuse and = warn; and
//! server_tls_crl_file refusing a revoked PostgreSQL certificate.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use support::*;

/// `pgmoat certs ARGS`, which must succeed.
fn certs(args: &[&str]) -> Output {
    let out = pgmoat_command()
        .arg("certs")
        .args(args)
        .output()
        .expect("running pgmoat certs");
    assert!(
        out.status.success(),
        "pgmoat certs {args:?}:\n{}",
        output_text(&out)
    );
    out
}

fn ca_dir(pki: &Pki) -> PathBuf {
    pki.ca.parent().unwrap().to_owned()
}

fn issued_dir(pki: &Pki) -> PathBuf {
    pki.alice.crt.parent().unwrap().to_owned()
}

/// The CA's CRL, (re)written by `certs crl` with `days` of validity.
fn sign_crl(pki: &Pki, days: &str) -> PathBuf {
    let (out, ca) = (issued_dir(pki), ca_dir(pki));
    certs(&[
        "crl",
        "--out",
        out.to_str().unwrap(),
        "--ca-dir",
        ca.to_str().unwrap(),
        "--days",
        days,
    ]);
    ca.join("ca.crl")
}

fn revoke(pki: &Pki, name: &str) {
    let (out, ca) = (issued_dir(pki), ca_dir(pki));
    certs(&[
        "revoke",
        name,
        "--out",
        out.to_str().unwrap(),
        "--ca-dir",
        ca.to_str().unwrap(),
    ]);
}

/// The serial as pgmoat logs it (x509-parser's colon-separated hex).
fn serial_of(cert: &Path) -> String {
    let pem = std::fs::read(cert).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    cert.raw_serial_as_string()
}

async fn login_with(
    moat: &Pgmoat,
    pki: &Pki,
    cert: &CertPair,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let tls = tls_client_config(&pki.ca, Some(cert.pair()));
    connect(
        moat.port(),
        "alice",
        Some(ALICE_PASSWORD),
        APP_DB,
        Some(tls),
    )
    .await
}

#[tokio::test]
async fn a_revoked_client_certificate_is_refused_after_reload_and_old_connections_stay() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let laptop = pki.issue_client("alice-laptop", "alice");
    let phone = pki.issue_client("alice-phone", "alice");
    // An empty list first: the CA has revoked nothing yet.
    let crl = sign_crl(&pki, "7");
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .client_sslmode("verify-full")
            .set_path("client_tls_crl_file", &crl)
            .build(),
    );
    let before = login_with(&moat, &pki, &laptop)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", moat.log()));

    revoke(&pki, "alice-laptop");
    let mark = moat.sighup_and_wait_reloaded(Duration::from_secs(10));

    // The revoked certificate no longer gets in, by any client, and the log names its serial.
    login_with(&moat, &pki, &laptop)
        .await
        .expect_err("a revoked certificate must be refused");
    let serial = serial_of(&laptop.crt);
    moat.wait_for_log_since(mark, &format!("serial={serial}"), Duration::from_secs(5));
    assert!(moat.log()[mark..].contains("revoked by a loaded CRL"));
    let conn = |cert: &CertPair| {
        conninfo(
            moat.port(),
            "alice",
            APP_DB,
            &[
                ("sslmode", "verify-full"),
                ("sslrootcert", pki.ca.to_str().unwrap()),
                ("sslcert", cert.crt.to_str().unwrap()),
                ("sslkey", cert.key.to_str().unwrap()),
                ("password", ALICE_PASSWORD),
            ],
        )
    };
    let out = psql(&["-Atc", "SELECT 1"], &conn(&laptop));
    assert!(!out.status.success(), "{}", output_text(&out));
    let refused = psycopg_login(&conn(&laptop));
    assert!(refused.starts_with("refused:"), "{refused}");

    // A certificate of the same user that is not revoked still does (the positive control),
    // and so does the connection the revoked one made before the reload.
    let out = psql(&["-Atc", "SELECT current_user"], &conn(&phone));
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(psycopg_login(&conn(&phone)), "user=alice");
    let one: i32 = before.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    // SHOW CERTS lists the CRL, with the one revocation.
    let admin_conf = ConfigBuilder::new(&pki, &db)
        .client_sslmode("verify-full")
        .set_path("client_tls_crl_file", &crl)
        .set("stats_users", "[\"alice\"]")
        .build();
    moat.rewrite_config(&admin_conf);
    moat.sighup_and_wait_reloaded(Duration::from_secs(10));
    let mut config = pg_config(moat.port(), "alice", Some(ALICE_PASSWORD), "pgmoat");
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let (console, connection) = config
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(
            tls_client_config(&pki.ca, Some(phone.pair())),
        ))
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = console.simple_query("SHOW CERTS").await.unwrap();
    let crl_row = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .find(|r| r.get("setting") == Some("client_tls_crl_file"))
        .expect("SHOW CERTS lists the CRL");
    assert_eq!(crl_row.get("kind"), Some("crl"));
    assert_eq!(crl_row.get("revoked"), Some("1"));
}

#[tokio::test]
async fn a_crl_past_its_next_update_refuses_by_default_and_warns_when_told() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let laptop = pki.issue_client("alice-laptop", "alice");
    let phone = pki.issue_client("alice-phone", "alice");
    let crl = sign_crl(&pki, "7");
    revoke(&pki, "alice-laptop");
    let stale = write_stale_crl(&pki, &crl);
    let metrics_port = free_port();
    let config = |policy: &str| {
        ConfigBuilder::new(&pki, &db)
            .client_sslmode("verify-full")
            .set_path("client_tls_crl_file", &stale)
            .set_str("tls_crl_expired", policy)
            .set_str("metrics_addr", &format!("127.0.0.1:{metrics_port}"))
            .build()
    };

    // refuse (the default, set here explicitly): nobody the stale CRL vouches for gets in.
    let moat = Pgmoat::start(&config("refuse"));
    moat.wait_for_log("CRL is past its next update", Duration::from_secs(5));
    let mark = moat.log_mark();
    login_with(&moat, &pki, &phone)
        .await
        .expect_err("a stale CRL cannot vouch for anyone under refuse");
    moat.wait_for_log_since(
        mark,
        "past its next update (tls_crl_expired = refuse)",
        Duration::from_secs(5),
    );
    // /metrics says so, with a next update in the past.
    let metrics = http_fetch(metrics_port, "/metrics").await;
    let expired = metrics
        .lines()
        .find(|l| l.starts_with("pgmoat_crl_expired{"))
        .unwrap_or_else(|| panic!("no crl_expired sample:\n{metrics}"));
    assert!(expired.ends_with(" 1"), "{expired}");
    let next_update = metrics
        .lines()
        .find(|l| l.starts_with("pgmoat_crl_next_update_seconds{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no crl_next_update_seconds sample:\n{metrics}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(next_update < now, "{next_update} is not in the past");
    drop(moat);

    // warn: the stale list still revokes what it lists, and lets the others in.
    let moat = Pgmoat::start(&config("warn"));
    moat.wait_for_log("CRL is past its next update", Duration::from_secs(5));
    login_with(&moat, &pki, &phone)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", moat.log()));
    login_with(&moat, &pki, &laptop)
        .await
        .expect_err("the revoked certificate stays revoked under warn");
}

/// The CA's CRL (with what it revoked) signed through the cert tool's library with a next
/// update two days in the past, written beside the fresh one.
fn write_stale_crl(pki: &Pki, fresh: &Path) -> PathBuf {
    let stale = fresh.with_file_name("stale.crl");
    let now = time::OffsetDateTime::now_utc();
    let mut opts = pgmoat::certs::CrlOptions::new(ca_dir(pki), 1);
    opts.this_update = now - time::Duration::days(9);
    opts.next_update = now - time::Duration::days(2);
    opts.out = Some(stale.clone());
    pgmoat::certs::sign_crl(&opts).unwrap_or_else(|e| panic!("writing a stale CRL: {e}"));
    stale
}

#[tokio::test]
async fn a_revoked_postgresql_certificate_is_refused_with_server_tls_crl_file() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let crl = sign_crl(&pki, "7");
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set_path("server_tls_crl_file", &crl)
            .set("server_idle_timeout", "0.1")
            .build(),
    );
    let tls = || tls_client_config(&pki.ca, None);
    let client = connect(
        moat.port(),
        "alice",
        Some(ALICE_PASSWORD),
        APP_DB,
        Some(tls()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}\n{}", moat.log()));
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(client);

    revoke(&pki, "postgres");
    let mark = moat.sighup_and_wait_reloaded(Duration::from_secs(10));
    // A new server connection (the reload retired the old ones with the old TLS material).
    let client = connect(
        moat.port(),
        "alice",
        Some(ALICE_PASSWORD),
        APP_DB,
        Some(tls()),
    )
    .await;
    let failed = match client {
        Err(e) => format!("{e:?}"),
        Ok(c) => format!(
            "{:?}",
            c.query_one("SELECT 1", &[]).await.expect_err("no server")
        ),
    };
    // A server connection that cannot be made is 08001 for the client, naming the cause.
    assert!(
        failed.contains("E08001") && failed.contains("Revoked"),
        "{failed}"
    );
    let serial = serial_of(&pki.postgres.crt);
    moat.wait_for_log_since(mark, &format!("serial={serial}"), Duration::from_secs(5));
}
