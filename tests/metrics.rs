//! /metrics and /health on metrics_addr, scraped with a plain HTTP/1.1 GET: pool counters move
//! with queries, TLS handshakes, auth failures and reloads are counted, certificates report
//! their expiry, and /health answers 200 while pgmoat accepts clients.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Setup {
    pki: Pki,
    _db: TestDb,
    pgmoat: Pgmoat,
    metrics_port: u16,
}

fn builder(pki: &Pki, db: &TestDb, metrics_port: u16) -> ConfigBuilder {
    ConfigBuilder::new(pki, db).set_str("metrics_addr", &format!("127.0.0.1:{metrics_port}"))
}

fn setup() -> Setup {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let metrics_port = free_port();
    let pgmoat = Pgmoat::start(&builder(&pki, &db, metrics_port).build());
    Setup {
        pki,
        _db: db,
        pgmoat,
        metrics_port,
    }
}

/// Status code and body of `GET path`.
async fn get(port: u16, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut response))
        .await
        .expect("the metrics endpoint answers")
        .unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `series` (name with labels), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    })
}

const APP: &str = r#"{database="app",user="alice"}"#;

#[tokio::test]
async fn counters_move_with_queries_and_health_is_ok() {
    let s = setup();
    let (status, body) = get(s.metrics_port, "/health").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, before) = get(s.metrics_port, "/metrics").await;
    assert_eq!(status, 200);
    assert!(before.trim_end().ends_with("# EOF"), "{before}");

    let client = connect(
        s.pgmoat.port(),
        "alice",
        Some(ALICE_PASSWORD),
        APP_DB,
        Some(tls_client_config(&s.pki.ca, None)),
    )
    .await
    .unwrap();
    for i in 0..5 {
        client
            .execute("INSERT INTO items (v) VALUES ($1)", &[&format!("m{i}")])
            .await
            .unwrap();
    }
    client
        .batch_execute("BEGIN; SELECT count(*) FROM items; COMMIT")
        .await
        .unwrap();

    let (_, after) = get(s.metrics_port, "/metrics").await;
    let value =
        |series: &str| sample(&after, series).unwrap_or_else(|| panic!("no {series} in\n{after}"));
    assert!(value(&format!("pgmoat_transactions_total{APP}")) >= 6.0);
    assert!(value(&format!("pgmoat_queries_total{APP}")) >= 8.0);
    assert!(value(&format!("pgmoat_received_bytes_total{APP}")) > 0.0);
    assert!(value(&format!("pgmoat_sent_bytes_total{APP}")) > 0.0);
    assert!(value(&format!("pgmoat_server_assignments_total{APP}")) >= 6.0);
    assert!(value(&format!("pgmoat_wait_seconds_count{APP}")) >= 6.0);
    assert_eq!(
        value(r#"pgmoat_clients{database="app",user="alice",state="idle"}"#),
        1.0
    );
    assert_eq!(
        value(r#"pgmoat_servers{database="app",user="alice",state="idle"}"#),
        1.0
    );
    assert_eq!(value(&format!("pgmoat_wait_queue_length{APP}")), 0.0);
    assert!(value(r#"pgmoat_tls_handshakes_total{result="ok",reason=""}"#) >= 1.0);
    assert_eq!(value("pgmoat_accepting"), 1.0);

    let expiry = after
        .lines()
        .filter(|l| l.starts_with("pgmoat_certificate_not_after_seconds{"))
        .collect::<Vec<_>>();
    assert!(
        expiry
            .iter()
            .any(|l| l.contains(r#"setting="client_tls_cert_file""#)),
        "{expiry:?}"
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    for line in &expiry {
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(value > now && value < now + 31.0 * 86400.0, "{line}");
    }

    let (status, _) = get(s.metrics_port, "/nothing").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn failed_logins_handshakes_and_reloads_are_counted() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let metrics_port = free_port();
    // verify-ca: pgmoat itself rejects a missing or untrusted client certificate.
    let pgmoat = Pgmoat::start(
        &builder(&pki, &db, metrics_port)
            .client_sslmode("verify-ca")
            .build(),
    );
    let try_login = |client: Option<(&std::path::Path, &std::path::Path)>, password: &str| {
        let tls = tls_client_config(&pki.ca, client);
        let password = password.to_owned();
        let port = pgmoat.port();
        async move { connect(port, "alice", Some(&password), APP_DB, Some(tls)).await }
    };
    assert!(
        try_login(Some(pki.alice.pair()), "not-her-password")
            .await
            .is_err()
    );
    assert!(
        try_login(Some(pki.mallory.pair()), ALICE_PASSWORD)
            .await
            .is_err()
    );
    assert!(try_login(None, ALICE_PASSWORD).await.is_err());
    assert!(
        try_login(Some(pki.alice.pair()), ALICE_PASSWORD)
            .await
            .is_ok()
    );

    pgmoat.sighup();
    pgmoat.wait_for_log("configuration reloaded", Duration::from_secs(10));
    let mark = pgmoat.log_mark();
    pgmoat.rewrite_config("this is = = not toml");
    pgmoat.sighup();
    pgmoat.wait_for_log_since(mark, "reload failed", Duration::from_secs(10));

    let (_, text) = get(metrics_port, "/metrics").await;
    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}\n{text}"));
    assert_eq!(value("pgmoat_auth_failures_total"), 1.0);
    assert_eq!(
        value(r#"pgmoat_tls_handshakes_total{result="failed",reason="unknown_issuer"}"#),
        1.0
    );
    assert_eq!(
        value(r#"pgmoat_tls_handshakes_total{result="failed",reason="no_client_certificate"}"#),
        1.0
    );
    assert_eq!(
        value(r#"pgmoat_tls_handshakes_total{result="ok",reason=""}"#),
        2.0
    );
    assert_eq!(value(r#"pgmoat_reloads_total{result="ok"}"#), 1.0);
    assert_eq!(value(r#"pgmoat_reloads_total{result="failed"}"#), 1.0);
}

#[tokio::test]
async fn health_turns_503_while_draining() {
    let s = setup();
    let client = connect(
        s.pgmoat.port(),
        "alice",
        Some(ALICE_PASSWORD),
        APP_DB,
        Some(tls_client_config(&s.pki.ca, None)),
    )
    .await
    .unwrap();
    // A transaction in flight keeps the drain (and the metrics listener) going.
    client.batch_execute("BEGIN; SELECT 1").await.unwrap();
    s.pgmoat.signal("TERM");
    s.pgmoat
        .wait_for_log("SIGTERM: shutting down", Duration::from_secs(10));
    let (status, body) = get(s.metrics_port, "/health").await;
    assert_eq!((status, body.as_str()), (503, "shutting down\n"));
    let (_, text) = get(s.metrics_port, "/metrics").await;
    assert_eq!(sample(&text, "pgmoat_accepting"), Some(0.0));
    client.batch_execute("COMMIT").await.unwrap();
}
