//! Guardrail timeouts against a real PostgreSQL: idle_transaction_timeout ends a client that
//! sits in an open transaction (FATAL 25P03, PostgreSQL's code), rolls its work back by
//! closing its server, and leaves the pool serving others; a transaction busy in a long query
//! is not idle; a database entry can switch the timeout off. query_timeout cancels a query
//! that runs too long (57014) and keeps the client.

mod support;

use std::time::Duration;

use support::wire::error_of;
use support::*;

/// The unsolicited message a client gets next, within a generous bound.
async fn next_message(client: &mut RawClient) -> Result<RawMsg, String> {
    tokio::time::timeout(Duration::from_secs(30), client.recv())
        .await
        .unwrap_or_else(|_| Err("nothing arrived in 30 s".into()))
}

/// `err` is the FATAL with `code` that names `setting`, and the client is closed after it.
async fn assert_ended(client: &mut RawClient, err: &support::RawError, code: &str, setting: &str) {
    assert_eq!((err.severity.as_str(), err.code.as_str()), ("FATAL", code));
    assert!(err.message.contains(setting), "{}", err.message);
    assert!(next_message(client).await.is_err(), "the client is closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_transaction_timeout_ends_the_idle_client_and_rolls_back() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "1")
            .set("idle_transaction_timeout", "1.5")
            .line("[databases.lenient]")
            .line("host = \"localhost\"")
            .line(&format!("port = {}", db.port()))
            .line("dbname = \"app\"")
            .line("idle_transaction_timeout = 0")
            .build(),
    );

    // A client that writes inside a transaction and then goes quiet.
    let mut idle = moat_raw(&moat, &pki, "alice", &[]).await;
    idle.simple("BEGIN").await.unwrap();
    idle.simple("INSERT INTO items (v) VALUES ('never committed')")
        .await
        .unwrap();
    // Another client of the same one-server pool waits meanwhile.
    let waiter = {
        let (moat_port, ca) = (moat.port(), pki.ca.clone());
        tokio::spawn(async move {
            let tls = tls_client_config(&ca, None);
            let client = connect(moat_port, "bob", Some(BOB_PASSWORD), APP_DB, Some(tls))
                .await
                .unwrap();
            text_value(
                &client,
                "SELECT count(*) FROM items WHERE v = 'never committed'",
            )
            .await
        })
    };

    let fatal = next_message(&mut idle).await.unwrap();
    assert_eq!(fatal.tag, b'E', "{fatal:?}");
    assert_ended(
        &mut idle,
        &error_of(&fatal),
        "25P03",
        "idle_transaction_timeout",
    )
    .await;
    // The server was closed, so the insert was rolled back, and the waiting client was served.
    assert_eq!(waiter.await.unwrap(), "0", "{}", moat.log());
    assert!(moat.log().contains("idle_transaction_timeout: closing"));
    let idle_in_tx = db.sql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
    );
    assert_eq!(idle_in_tx.trim(), "0");

    // Busy is not idle: a query longer than the limit inside a transaction runs to its end.
    let mut busy = moat_raw(&moat, &pki, "alice", &[]).await;
    busy.simple("BEGIN").await.unwrap();
    busy.simple("SELECT pg_sleep(2.5)").await.unwrap();
    busy.simple("COMMIT").await.unwrap();

    // The entry with idle_transaction_timeout = 0: its client outlasts the limit while a
    // client of the app entry, idle since later, is ended (the positive control).
    let mut lenient = RawClient::connect(
        moat.port(),
        "alice",
        Some(ALICE_PASSWORD),
        "lenient",
        &[],
        Some(tls_client_config(&pki.ca, None)),
    )
    .await
    .unwrap();
    lenient.simple("BEGIN").await.unwrap();
    let mut strict = moat_raw(&moat, &pki, "alice", &[]).await;
    strict.simple("BEGIN").await.unwrap();
    // Stopping half-way through a message is idle too.
    let half = support::wire::query("SELECT 'never finished'");
    strict.send(&half[..half.len() / 2]).await;
    let fatal = next_message(&mut strict).await.unwrap();
    assert_eq!(error_of(&fatal).code, "25P03");
    assert_eq!(lenient.value("SELECT 1").await, "1");
    lenient.simple("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn query_timeout_cancels_a_long_query_and_keeps_the_client() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let metrics_port = free_port();
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("query_timeout", "1")
            .set_str("metrics_addr", &format!("127.0.0.1:{metrics_port}"))
            .build(),
    );
    let client = moat_client(&moat, &pki, "alice").await;
    // A query shorter than the limit is left alone (the control), also inside a
    // transaction of several statements that together outlast it.
    client.batch_execute("BEGIN").await.unwrap();
    for _ in 0..3 {
        client.batch_execute("SELECT pg_sleep(0.5)").await.unwrap();
    }
    client.batch_execute("COMMIT").await.unwrap();

    let err = client
        .batch_execute("SELECT pg_sleep(60)")
        .await
        .expect_err("query_timeout cancels it");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err:?}\n{}",
        moat.log()
    );
    assert!(moat.log().contains("query_timeout: canceling"));
    // The client stays, on a clean server.
    assert_eq!(text_value(&client, "SELECT 1").await, "1");
    let metrics = http_fetch(metrics_port, "/metrics").await;
    assert!(
        metrics.contains("pgmoat_timeouts_total{reason=\"query_timeout\"} 1"),
        "{metrics}"
    );
}

/// The first ErrorResponse the client gets, skipping rows and ReadyForQuery.
async fn first_error(client: &mut RawClient) -> support::RawError {
    loop {
        let msg = next_message(client).await.expect("an error before the end");
        if msg.tag == b'E' {
            return error_of(&msg);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_timeout_ends_a_long_transaction_and_pinned_idle_clients_meet_client_idle_timeout()
 {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "2")
            .set("transaction_timeout", "1.5")
            .set("client_idle_timeout", "1.5")
            .build(),
    );

    // A short transaction commits (the control).
    let mut quick = moat_raw(&moat, &pki, "alice", &[]).await;
    quick.simple("BEGIN").await.unwrap();
    quick.simple("SELECT 1").await.unwrap();
    quick.simple("COMMIT").await.unwrap();

    // One that runs past the limit (in a query, so idle_transaction_timeout has no part).
    let mut long = moat_raw(&moat, &pki, "alice", &[]).await;
    long.simple("BEGIN").await.unwrap();
    long.send(&support::wire::query("SELECT pg_sleep(30)"))
        .await;
    let err = first_error(&mut long).await;
    assert_ended(&mut long, &err, "25P04", "transaction_timeout").await;

    // A client pinned to its server by a temporary table, then quiet: client_idle_timeout
    // reaches it although it holds a server (its server is reset and reused, not lost).
    let mut pinned = moat_raw(&moat, &pki, "alice", &[]).await;
    pinned
        .simple("CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    let err = first_error(&mut pinned).await;
    assert_ended(&mut pinned, &err, "57P05", "client_idle_timeout").await;
    moat.wait_for_log(
        "client_idle_timeout: closing an idle client that holds a server",
        Duration::from_secs(5),
    );

    // The pool serves others throughout (a new client: the first one has been idle long
    // enough to meet client_idle_timeout itself by now).
    let mut fresh = moat_raw(&moat, &pki, "alice", &[]).await;
    assert_eq!(fresh.value("SELECT 2").await, "2");
    drop(quick);
}

#[tokio::test(flavor = "multi_thread")]
async fn query_wait_notify_tells_a_waiting_client_and_its_query_still_runs() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "1")
            .set("query_wait_notify", "0.5")
            .build(),
    );
    let mut holder = moat_raw(&moat, &pki, "alice", &[]).await;
    holder.simple("BEGIN").await.unwrap();

    let mut waiter = moat_raw(&moat, &pki, "alice", &[]).await;
    waiter.send(&support::wire::query("SELECT 42")).await;
    let notice = next_message(&mut waiter).await.unwrap();
    assert_eq!(notice.tag, b'N', "{notice:?}");
    let text = notice.field(b'M').unwrap_or_default();
    assert!(text.contains("waiting for a server connection"), "{text}");
    assert_eq!(notice.field(b'S').as_deref(), Some("NOTICE"));

    // The server frees up and the query runs.
    holder.simple("COMMIT").await.unwrap();
    let answer = waiter.until_ready().await.unwrap();
    assert_eq!(
        support::wire::rows_or_error(&answer).unwrap(),
        vec![vec![Some("42".to_owned())]]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_that_waits_for_a_session_mode_server_gets_no_notice_before_it_is_in() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set_str("pool_mode", "session")
            .set("default_pool_size", "1")
            .set("query_wait_notify", "0.2")
            .set("admin_users", r#"["alice"]"#)
            .build(),
    );
    let first = moat_client(&moat, &pki, "alice").await;
    assert_eq!(text_value(&first, "SELECT 1").await, "1");
    // The second login waits for the only server, past query_wait_notify.
    let second = {
        let (port, ca) = (moat.port(), pki.ca.clone());
        tokio::spawn(async move {
            let tls = tls_client_config(&ca, None);
            let client = connect(port, "alice", Some(ALICE_PASSWORD), APP_DB, Some(tls)).await?;
            client.simple_query("SELECT 2").await.map(|_| ())
        })
    };
    // Observed, not slept: SHOW POOLS says the login has waited past query_wait_notify.
    let console = moat_console(&moat, &pki, "alice").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows = console.simple_query("SHOW POOLS").await.unwrap();
        let waited_us = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get("database") == Some(APP_DB) => {
                let secs: u64 = r.get("maxwait")?.parse().ok()?;
                let us: u64 = r.get("maxwait_us")?.parse().ok()?;
                Some(secs * 1_000_000 + us)
            }
            _ => None,
        });
        if waited_us.is_some_and(|us| us >= 400_000) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(first);
    second
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e:?}\n{}", moat.log()));
}
