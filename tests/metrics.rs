//! /metrics and /health on metrics_addr, scraped with a plain HTTP/1.1 GET: pool counters move
//! with queries, TLS handshakes, auth failures and reloads are counted, certificates report
//! their expiry, and /health answers 200 while pgmoat accepts clients.

mod support;

use std::time::Duration;

use support::*;

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
    let response = http_fetch(port, path).await;
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

    let client = moat_client(&s.pgmoat, &s.pki, "alice").await;
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

    // The client has its answer a moment before pgmoat marks it idle again: scrape until
    // it shows as idle.
    let idle = r#"pgmoat_clients{database="app",user="alice",state="idle"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let (_, after) = get(s.metrics_port, "/metrics").await;
        if sample(&after, idle) == Some(1.0) || std::time::Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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

    // Heap accounting (what the allocator handed out and has not taken back) grows with
    // idle clients: each holds at least its TLS state.
    let heap = value("pgmoat_heap_in_use_bytes");
    assert!(heap > 0.0);
    let mut idle_clients = Vec::new();
    for _ in 0..50 {
        idle_clients.push(moat_client(&s.pgmoat, &s.pki, "alice").await);
    }
    let (_, more) = get(s.metrics_port, "/metrics").await;
    let grown = sample(&more, "pgmoat_heap_in_use_bytes").unwrap();
    assert!(
        grown > heap + 50.0 * 1024.0,
        "50 idle TLS clients, yet the heap went from {heap} to {grown} bytes"
    );
    drop(idle_clients);

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
    let client = moat_client(&s.pgmoat, &s.pki, "alice").await;
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

/// Reads an exposition from stdin with prometheus-client's parser for the Content-Type given
/// as argv[1] (the strict OpenMetrics one for application/openmetrics-text, else the text
/// 0.0.4 one) and prints the families as JSON; a parse error is an exception (exit 1).
const PARSE_METRICS_PY: &str = r#"
import json, sys
from prometheus_client import parser as text_parser
from prometheus_client.openmetrics import parser as openmetrics_parser

content_type, body = sys.argv[1], sys.stdin.read()
if content_type.startswith("application/openmetrics-text"):
    families = openmetrics_parser.text_string_to_metric_families(body)
else:
    families = text_parser.text_string_to_metric_families(body)
print(json.dumps([
    {"name": f.name, "type": f.type,
     "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
    for f in families
]))
"#;

/// Content-Type and body of `GET /metrics`.
async fn scrape(port: u16) -> (String, String) {
    let response = http_fetch(port, "/metrics").await;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no Content-Type in {head}"));
    (content_type, body.to_owned())
}

/// What a real Prometheus client library makes of /metrics: it parses (strictly, as the
/// OpenMetrics text pgmoat says it serves), and has the documented families with their types
/// and the pool's labels.
#[tokio::test]
async fn metrics_parse_with_the_prometheus_client_library() {
    let python = venv_python();
    let s = setup();
    let client = moat_client(&s.pgmoat, &s.pki, "alice").await;
    client
        .batch_execute("BEGIN; SELECT 1; COMMIT")
        .await
        .unwrap();
    s.pgmoat.sighup();
    s.pgmoat
        .wait_for_log("configuration reloaded", Duration::from_secs(10));

    let (content_type, body) = scrape(s.metrics_port).await;
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    let mut child = std::process::Command::new(&python)
        .args(["-c", PARSE_METRICS_PY, &content_type])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics: {}\n--- /metrics ---\n{body}",
        output_text(&out)
    );
    let families: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let family = |name: &str| {
        families
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no family {name} in the parsed /metrics:\n{body}"))
    };
    let expected = [
        ("pgmoat_clients", "gauge"),
        ("pgmoat_servers", "gauge"),
        ("pgmoat_wait_queue_length", "gauge"),
        ("pgmoat_pool_size", "gauge"),
        ("pgmoat_wait_seconds", "histogram"),
        ("pgmoat_transactions", "counter"),
        ("pgmoat_queries", "counter"),
        ("pgmoat_received_bytes", "counter"),
        ("pgmoat_sent_bytes", "counter"),
        ("pgmoat_transaction_seconds", "counter"),
        ("pgmoat_query_seconds", "counter"),
        ("pgmoat_server_assignments", "counter"),
        ("pgmoat_tls_handshakes", "counter"),
        ("pgmoat_auth_failures", "counter"),
        ("pgmoat_reloads", "counter"),
        ("pgmoat_certificate_not_after_seconds", "gauge"),
        ("pgmoat_accepting", "gauge"),
        ("pgmoat_heap_in_use_bytes", "gauge"),
    ];
    for (name, kind) in expected {
        assert_eq!(family(name)["type"], kind, "{name}");
    }
    // The labels and values a dashboard would read, as the parser sees them.
    let value = |family_name: &str, sample_name: &str, labels: serde_json::Value| {
        family(family_name)["samples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == sample_name && s["labels"] == labels)
            .unwrap_or_else(|| panic!("no {sample_name} {labels} in the parsed /metrics:\n{body}"))
            ["value"]
            .as_f64()
            .unwrap()
    };
    let pool = serde_json::json!({"database": "app", "user": "alice"});
    assert!(
        value(
            "pgmoat_transactions",
            "pgmoat_transactions_total",
            pool.clone()
        ) >= 1.0
    );
    assert!(
        value(
            "pgmoat_wait_seconds",
            "pgmoat_wait_seconds_count",
            pool.clone()
        ) >= 1.0
    );
    assert_eq!(
        value(
            "pgmoat_clients",
            "pgmoat_clients",
            serde_json::json!({"database": "app", "user": "alice", "state": "idle"})
        ),
        1.0
    );
    assert_eq!(
        value(
            "pgmoat_reloads",
            "pgmoat_reloads_total",
            serde_json::json!({"result": "ok"})
        ),
        1.0
    );
    assert_eq!(
        value(
            "pgmoat_accepting",
            "pgmoat_accepting",
            serde_json::json!({})
        ),
        1.0
    );
    let certs = family("pgmoat_certificate_not_after_seconds")["samples"]
        .as_array()
        .unwrap();
    assert!(
        certs
            .iter()
            .any(|c| c["labels"]["setting"] == "client_tls_cert_file"
                && c["labels"]["serial"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty())),
        "{certs:?}"
    );
    drop(client);
}

/// A pinned client shows as `state="pinned"` and its pin is counted by reason; cancel
/// requests are counted by what became of them.
#[tokio::test(flavor = "multi_thread")]
async fn pins_and_cancels_are_counted() {
    let s = setup();
    s._db
        .sql(APP_DB, "GRANT TEMPORARY ON DATABASE app TO alice");
    let client = moat_client(&s.pgmoat, &s.pki, "alice").await;
    client
        .batch_execute("CREATE TEMP TABLE t (x int)")
        .await
        .unwrap();
    let pinned = r#"pgmoat_clients{database="app",user="alice",state="pinned"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get(s.metrics_port, "/metrics").await;
        if sample(&body, pinned) == Some(1.0) {
            assert_eq!(
                sample(&body, r#"pgmoat_pins_total{reason="temp_table"}"#),
                Some(1.0),
                "{body}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never pinned:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An idle client's cancel (no pinned server here: a second client) is dropped, counted.
    let idle = moat_raw(&s.pgmoat, &s.pki, "alice", &[]).await;
    send_cancel_request(s.pgmoat.port(), idle.pid, idle.secret).await;
    let series = r#"pgmoat_cancel_requests_total{result="no_server"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get(s.metrics_port, "/metrics").await;
        if sample(&body, series) == Some(1.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not counted:\n{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The endpoint bounds what idle and slow connections can hold: a reader that pipelines
/// requests and never reads is cut off at the connection deadline, and connections beyond
/// the cap push out the oldest, so /health still answers with 40 idle connections open.
#[tokio::test]
async fn slow_readers_are_cut_off_and_connections_are_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], s.metrics_port));

    // A slow reader: a small receive window, requests pipelined, nothing read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(addr).await.unwrap();
    let mark = s.pgmoat.log_mark();
    let request = b"GET /metrics HTTP/1.1\r\nHost: pgmoat\r\n\r\n";
    for _ in 0..2000 {
        // Until pgmoat stops reading too (it is blocked writing to us), or all are sent.
        match tokio::time::timeout(Duration::from_millis(500), slow.write_all(request)).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    s.pgmoat.wait_for_log_since(
        mark,
        "metrics connection cut off at its deadline",
        Duration::from_secs(60),
    );
    let mut sink = vec![0u8; 64 * 1024];
    let closed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match slow.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow reader's connection ends");

    // Idle connections beyond the cap: the oldest make room, /health answers.
    let mark = s.pgmoat.log_mark();
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let (status, body) = get(s.metrics_port, "/health").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    s.pgmoat.wait_for_log_since(
        mark,
        "closed the oldest connection to make room",
        Duration::from_secs(30),
    );
    let mut byte = [0u8; 1];
    let oldest = tokio::time::timeout(Duration::from_secs(30), idle[0].read(&mut byte)).await;
    assert!(
        matches!(oldest, Ok(Ok(0)) | Ok(Err(_))),
        "the oldest idle connection is closed: {oldest:?}"
    );
    // Still writable and answered after the flood (a kept-alive scraper is unaffected).
    let mut fresh = tokio::net::TcpStream::connect(addr).await.unwrap();
    fresh
        .write_all(b"GET /health HTTP/1.1\r\nHost: pgmoat\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    fresh.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
