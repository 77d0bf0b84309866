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

/// A cancel sent just as the sender's own short query ends must never cancel the query of
/// whichever client gets that server next (PgBouncer issue 717): the server stays out of the
/// pool until PostgreSQL has closed the cancel connection, and a cancel for a client that holds
/// no server any more is dropped. One client cancels after each of 1000 short queries, timed
/// from the middle of the query to just after its end, while 8 clients run short queries on
/// the same 3 servers. Positive control: every tenth query of the canceller lasts long enough
/// for its cancel to land, and is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_cancels_never_reach_another_clients_query() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const SHORT: &str = "SELECT pg_sleep(0.005)";
    const OWN: &str = "SELECT pg_sleep(0.01)";
    const LONG: &str = "SELECT pg_sleep(2)";
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "3")
            .set("max_client_conn", "50")
            .build(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let others_ok = Arc::new(AtomicUsize::new(0));
    let others_cancelled = Arc::new(AtomicUsize::new(0));
    let mut others = Vec::new();
    for _ in 0..8 {
        let client = moat_client(&moat, &pki, "alice").await;
        let (stop, ok, cancelled) = (stop.clone(), others_ok.clone(), others_cancelled.clone());
        others.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.batch_execute(SHORT).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => {
                        cancelled.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => panic!("another client's query failed: {e:?}"),
                };
            }
        }));
    }

    let canceller = moat_client(&moat, &pki, "alice").await;
    let token = canceller.cancel_token();
    let tls = MakeRustlsConnect::new(tls_client_config(&pki.ca, None));
    let mut own_cancelled = 0;
    let mut long_queries = 0;
    for i in 0..1000u64 {
        let long = i % 10 == 0;
        let query = canceller.batch_execute(if long { LONG } else { OWN });
        let cancel = async {
            // 0 to 14 ms after the 10 ms query was sent: forwarding a cancel takes a few
            // milliseconds, so some land while it runs, some right as it ends, some after.
            tokio::time::sleep(Duration::from_micros((i % 15) * 1000)).await;
            token.cancel_query(tls.clone()).await.unwrap();
        };
        let (result, ()) = tokio::join!(query, cancel);
        match result {
            Ok(()) => {}
            Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => own_cancelled += 1,
            Err(e) => panic!("the canceller's own query failed: {e:?}"),
        }
        if long {
            long_queries += 1;
        }
    }
    // Cancels still on their way must get their chance to land before the count is taken.
    canceller.batch_execute("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for task in others {
        task.await.unwrap();
    }
    let (ok, hit) = (
        others_ok.load(Ordering::Relaxed),
        others_cancelled.load(Ordering::Relaxed),
    );
    eprintln!("canceller: {own_cancelled} of 1000 cancelled; others: {ok} ok, {hit} cancelled");
    assert!(
        own_cancelled >= long_queries,
        "only {own_cancelled} of the canceller's queries were cancelled, though {long_queries} \
         lasted long enough (positive control)"
    );
    assert!(ok > 500, "the other clients barely ran ({ok} queries)");
    assert_eq!(hit, 0, "{hit} queries of other clients were cancelled");
}
