//! Cancel through pgmoat: a client's CancelRequest (over TLS or plain) reaches the backend it
//! holds right now, quickly, and over TLS towards PostgreSQL; keys are per client, and a
//! forged or foreign key cancels nothing.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

const SLEEP: &str = "SELECT pg_sleep(30)";

fn sleeping(db: &TestDb) -> usize {
    db.count(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE state = 'active' AND query = 'SELECT pg_sleep(30)'",
    )
}

/// Starts `SELECT pg_sleep(30)` on `client` and returns once PostgreSQL runs it.
async fn start_sleep(
    db: &TestDb,
    client: Client,
    already: usize,
) -> tokio::task::JoinHandle<Result<(), tokio_postgres::Error>> {
    let task = tokio::spawn(async move { client.batch_execute(SLEEP).await });
    eventually("pg_sleep to run", Duration::from_secs(10), || {
        sleeping(db) > already
    })
    .await;
    task
}

/// Awaits a cancelled query: it must fail with 57014 within 2 s of `since`.
async fn expect_cancelled(
    query: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    since: Instant,
) {
    let result = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("the cancelled query still runs after 10 s")
        .unwrap();
    let elapsed = since.elapsed();
    let err = result.expect_err("pg_sleep(30) finished instead of being cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert!(
        elapsed < Duration::from_secs(2),
        "cancel took {elapsed:?} (the issue asks for < 2 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cancel_stops_pg_sleep_within_two_seconds() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(&ConfigBuilder::new(&pki, &db).build());
    let client = moat_client(&moat, &pki, "alice").await;
    let token = client.cancel_token();
    let probe = moat_client(&moat, &pki, "alice").await;

    let query = start_sleep(&db, client, 0).await;
    let since = Instant::now();
    token
        .cancel_query(MakeRustlsConnect::new(tls_client_config(&pki.ca, None)))
        .await
        .unwrap();
    expect_cancelled(query, since).await;
    // The backend went back to the pool clean: others use it as usual.
    assert_eq!(text_value(&probe, "SELECT 1").await, "1");
    assert_eq!(sleeping(&db), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_cancel_works_when_tls_is_optional() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .client_sslmode("prefer")
            .build(),
    );
    let client = connect(moat.port(), "alice", Some(ALICE_PASSWORD), APP_DB, None)
        .await
        .unwrap();
    let token = client.cancel_token();
    let query = start_sleep(&db, client, 0).await;
    let since = Instant::now();
    token.cancel_query(NoTls).await.unwrap();
    expect_cancelled(query, since).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_foreign_cancel_keys_cancel_nothing() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "2")
            .build(),
    );
    let mut a = moat_raw(&moat, &pki, "alice", &[]).await;
    let b = moat_client(&moat, &pki, "alice").await;
    let b_token = b.cancel_token();
    assert_ne!((a.pid, a.secret), (0, 0));

    // Both sleep, each on its own backend.
    a.send(&wire::query(SLEEP)).await;
    eventually("A's pg_sleep to run", Duration::from_secs(10), || {
        sleeping(&db) == 1
    })
    .await;
    let b_query = start_sleep(&db, b, 1).await;
    // pgmoat's keys are its own, not the backends' (which would reach PostgreSQL directly).
    assert!(!db.backend_pids("alice").contains(&a.pid));

    let forged = [
        (a.pid, a.secret ^ 1),
        (a.pid, a.secret.wrapping_add(1 << 20)),
        (a.pid.wrapping_add(1), a.secret),
        (0, 0),
        (rand_i32(), rand_i32()),
        (rand_i32(), rand_i32()),
    ];
    for (pid, secret) in forged {
        send_cancel_request(moat.port(), pid, secret).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(sleeping(&db), 2, "a forged cancel key cancelled a query");
    assert!(!b_query.is_finished());

    // A's own key cancels A's query, and only that one.
    let since = Instant::now();
    send_cancel_request(moat.port(), a.pid, a.secret).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), a.until_ready())
        .await
        .expect("A's query was not cancelled")
        .unwrap();
    assert!(
        since.elapsed() < Duration::from_secs(2),
        "{:?}",
        since.elapsed()
    );
    let err = wire::rows_or_error(&answer).unwrap_err();
    assert_eq!(err.code, "57014", "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sleeping(&db), 1, "A's cancel reached B's backend too");
    assert!(!b_query.is_finished());

    let since = Instant::now();
    b_token
        .cancel_query(MakeRustlsConnect::new(tls_client_config(&pki.ca, None)))
        .await
        .unwrap();
    expect_cancelled(b_query, since).await;
    assert_eq!(a.value("SELECT 'still here'").await, "still here");
}

fn rand_i32() -> i32 {
    // Different on every run, without a dependency: the tests do not need good randomness.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (nanos.wrapping_mul(2_654_435_761) & 0x7fff_ffff) as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_postgresql_over_tls() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    // Every connection pgmoat opens towards PostgreSQL passes the tap, which records its
    // first bytes: a plaintext CancelRequest would show its request code there. (pg_hba
    // cannot prove this: PostgreSQL accepts a CancelRequest on any connection.)
    let tap = TcpTap::start(db.port()).await;
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .server_port(tap.port())
            .server_sslmode("verify-full")
            .build(),
    );
    let client = moat_client(&moat, &pki, "alice").await;
    let token = client.cancel_token();
    let query = start_sleep(&db, client, 0).await;
    let before = tap.first_codes().len();

    let since = Instant::now();
    token
        .cancel_query(MakeRustlsConnect::new(tls_client_config(&pki.ca, None)))
        .await
        .unwrap();
    expect_cancelled(query, since).await;

    let codes = tap.first_codes();
    assert!(
        codes.len() > before,
        "the cancel did not open a connection to PostgreSQL: {codes:?}"
    );
    assert!(
        codes.iter().all(|&c| c == SSL_REQUEST_CODE),
        "a connection to PostgreSQL did not start with SSLRequest \
         (cancel code {CANCEL_REQUEST_CODE}): {codes:?}"
    );
}
