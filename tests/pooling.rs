//! Transaction pooling under load and the pool's own settings, against a real PostgreSQL:
//! 200 clients over 10 backends with exact row counts, session mode and its reset query,
//! min_pool_size, server_idle_timeout, server_lifetime, the reserve pool and
//! max_db_connections across the pools of one database.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::*;
use tokio_postgres::Client;

async fn pid(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_share_ten_backends_without_losing_a_row() {
    const CLIENTS: usize = 200;
    const CYCLES: usize = 7;
    // Cycles 1 and 4 roll back; the other five commit.
    const COMMITS: usize = 5;
    let rolled_back = |cycle: usize| cycle == 1 || cycle == 4;

    let pki = Pki::new();
    let db = Arc::new(TestDb::start(&pki));
    let moat = Arc::new(Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "10")
            .set("max_client_conn", "250")
            .build(),
    ));

    // PostgreSQL's own count of pgmoat's backends, sampled for the whole run.
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (db, running) = (db.clone(), running.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while running.load(Ordering::Relaxed) {
                samples.push(db.backends_of("alice"));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        })
    };

    let pki = Arc::new(pki);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (moat, pki) = (moat.clone(), pki.clone());
        tasks.push(tokio::spawn(async move {
            let client = moat_client(&moat, &pki, "alice").await;
            for cycle in 0..CYCLES {
                client.batch_execute("BEGIN").await?;
                let v = if rolled_back(cycle) {
                    format!("c{c}-{cycle}-rolled-back")
                } else {
                    format!("c{c}-{cycle}")
                };
                client
                    .execute("INSERT INTO items (v) VALUES ($1)", &[&v])
                    .await?;
                let end = if rolled_back(cycle) {
                    "ROLLBACK"
                } else {
                    "COMMIT"
                };
                client.batch_execute(end).await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    // Every client finishes (nobody starves in the queue); the bound only guards a hang.
    let all = tokio::time::timeout(Duration::from_secs(240), futures_join_all(tasks))
        .await
        .unwrap_or_else(|_| panic!("clients did not finish\n{}", moat.log()));
    running.store(false, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    for (c, result) in all.into_iter().enumerate() {
        if let Err(e) = result.unwrap() {
            panic!("client {c} failed: {e:?}");
        }
    }

    let max = samples.iter().copied().max().unwrap_or(0);
    assert!(
        max <= 10,
        "PostgreSQL saw {max} backends for alice: {samples:?}"
    );
    assert!(max > 0, "the sampler never saw a backend: {samples:?}");
    assert!(db.backends_of("alice") <= 10);

    let expected = CLIENTS * COMMITS;
    assert_eq!(
        db.sql(APP_DB, "SELECT count(*), count(DISTINCT v) FROM items"),
        format!("{expected}|{expected}"),
        "rows lost or doubled"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM items WHERE v LIKE '%rolled-back'"),
        0,
        "a rolled-back insert is visible"
    );
    assert_eq!(db.idle_in_transaction(), 0);
}

/// `futures::future::join_all` without the dependency: awaits the tasks in order.
async fn futures_join_all<T>(
    tasks: Vec<tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await);
    }
    out
}

#[tokio::test]
async fn session_mode_keeps_a_backend_and_resets_it_for_the_next_client() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set_str("pool_mode", "session")
            .set("default_pool_size", "1")
            .set("query_wait_timeout", "20")
            .build(),
    );

    let a = moat_client(&moat, &pki, "alice").await;
    let first = pid(&a).await;
    // Session state that transaction mode would reset after every statement: an unreported
    // setting and a temporary table.
    a.batch_execute("SET statement_timeout = '4242ms'")
        .await
        .unwrap();
    a.batch_execute("CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(pid(&a).await, first, "session mode changed the backend");
        assert_eq!(text_value(&a, "SHOW statement_timeout").await, "4242ms");
        a.batch_execute("INSERT INTO scratch VALUES (1)")
            .await
            .unwrap();
    }
    drop(a);

    // The pool has one backend: the next client gets the same one, after DISCARD ALL.
    let b = moat_client(&moat, &pki, "alice").await;
    assert_eq!(pid(&b).await, first, "expected the same (only) backend");
    assert_eq!(text_value(&b, "SHOW statement_timeout").await, "0");
    assert_eq!(
        text_value(&b, "SELECT coalesce(to_regclass('scratch')::text, 'gone')").await,
        "gone",
        "the previous client's temp table survived server_reset_query"
    );
}

#[tokio::test]
async fn min_pool_size_opens_connections_ahead_of_demand() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "5")
            .set("min_pool_size", "3")
            .build(),
    );
    // pgmoat creates a pool at its first login; from then on it keeps min_pool_size open,
    // before any query asks for them.
    let client = moat_client(&moat, &pki, "alice").await;
    eventually(
        "min_pool_size = 3 backends",
        Duration::from_secs(15),
        || db.backends_of("alice") >= 3,
    )
    .await;
    assert_eq!(db.backends_of("alice"), 3, "more than min_pool_size opened");
    assert_eq!(text_value(&client, "SELECT 1").await, "1");
}

#[tokio::test]
async fn server_idle_timeout_closes_idle_backends() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("server_idle_timeout", "1")
            .build(),
    );
    let client = moat_client(&moat, &pki, "alice").await;
    let first = pid(&client).await;
    assert_eq!(db.backends_of("alice"), 1);
    eventually("the idle backend to close", Duration::from_secs(15), || {
        db.backends_of("alice") == 0
    })
    .await;
    // The client never noticed: its next query gets a new backend.
    assert_ne!(pid(&client).await, first);
}

#[tokio::test]
async fn server_lifetime_retires_old_backends_but_not_mid_transaction() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("server_lifetime", "1")
            .set("server_idle_timeout", "0")
            .build(),
    );
    let client = moat_client(&moat, &pki, "alice").await;
    client.batch_execute("BEGIN").await.unwrap();
    let first = pid(&client).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        pid(&client).await,
        first,
        "backend changed inside a transaction"
    );
    client.batch_execute("COMMIT").await.unwrap();

    eventually(
        "the old backend to be closed",
        Duration::from_secs(15),
        || !db.backend_pids("alice").contains(&first),
    )
    .await;
    assert_ne!(pid(&client).await, first);
}

#[tokio::test]
async fn reserve_pool_serves_a_second_client_while_the_first_holds_the_only_backend() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "1")
            .set("reserve_pool_size", "1")
            .set("reserve_pool_timeout", "0.2")
            // Without the reserve, the second client would get this error instead.
            .set("query_wait_timeout", "5")
            .build(),
    );
    let a = moat_client(&moat, &pki, "alice").await;
    let b = moat_client(&moat, &pki, "alice").await;
    a.batch_execute("BEGIN").await.unwrap();
    let held = pid(&a).await;
    let served = pid(&b).await;
    assert_ne!(held, served);
    assert_eq!(db.backends_of("alice"), 2);
    a.batch_execute("COMMIT").await.unwrap();
}

fn max_db_config(pki: &Pki, db: &TestDb) -> String {
    ConfigBuilder::new(pki, db)
        .set("default_pool_size", "2")
        .set("max_db_connections", "2")
        .set("query_wait_timeout", "30")
        // Long, so a waiter that is never served shows as a hang, not as a connect error.
        .set("server_connect_timeout", "60")
        .build()
}

#[tokio::test]
async fn max_db_connections_spans_the_pools_of_one_database() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(&max_db_config(&pki, &db));
    let total = || db.backends_of("alice") + db.backends_of("bob");

    // alice fills the database's allowance with two idle backends.
    let a1 = moat_client(&moat, &pki, "alice").await;
    let a2 = moat_client(&moat, &pki, "alice").await;
    a1.batch_execute("BEGIN").await.unwrap();
    a2.batch_execute("BEGIN").await.unwrap();
    assert_ne!(pid(&a1).await, pid(&a2).await);
    a1.batch_execute("COMMIT").await.unwrap();
    a2.batch_execute("COMMIT").await.unwrap();
    assert_eq!(db.backends_of("alice"), 2);

    // bob's pool must make room by closing one of alice's idle backends.
    let b1 = moat_client(&moat, &pki, "bob").await;
    let b2 = moat_client(&moat, &pki, "bob").await;
    b1.batch_execute("BEGIN").await.unwrap();
    b2.batch_execute("BEGIN").await.unwrap();
    assert_ne!(pid(&b1).await, pid(&b2).await);
    eventually(
        "alice's idle backends to make room",
        Duration::from_secs(10),
        || db.backends_of("alice") == 0,
    )
    .await;
    assert_eq!(total(), 2);
    b1.batch_execute("COMMIT").await.unwrap();
    b2.batch_execute("COMMIT").await.unwrap();
    assert!(total() <= 2);
}

#[tokio::test]
async fn max_db_connections_waiter_is_served_when_another_pool_frees_a_backend() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(&max_db_config(&pki, &db));

    // Both permits of the database are busy: one alice transaction, one bob transaction.
    let a = moat_client(&moat, &pki, "alice").await;
    let b1 = moat_client(&moat, &pki, "bob").await;
    let b2 = moat_client(&moat, &pki, "bob").await;
    a.batch_execute("BEGIN").await.unwrap();
    pid(&a).await;
    b1.batch_execute("BEGIN").await.unwrap();
    pid(&b1).await;

    let waiter = tokio::spawn(async move {
        b2.query_one("SELECT pg_backend_pid()", &[])
            .await
            .map(|row| row.get::<_, i32>(0))
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !waiter.is_finished(),
        "a third backend was opened past max_db_connections"
    );
    assert_eq!(db.backends_of("alice") + db.backends_of("bob"), 2);

    // alice's backend goes idle: bob's waiting client must get the room it leaves.
    a.batch_execute("COMMIT").await.unwrap();
    let served = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("bob's waiting client was not served after alice's backend went idle")
        .unwrap();
    assert!(served.is_ok(), "{served:?}");
    assert!(db.backends_of("alice") + db.backends_of("bob") <= 2);
    b1.batch_execute("COMMIT").await.unwrap();
}
