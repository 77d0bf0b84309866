//! Transaction pooling under load and the pool's own settings, against a real PostgreSQL:
//! 200 clients over 10 backends with exact row counts, session mode and its reset query,
//! min_pool_size, server_idle_timeout, server_lifetime, the reserve pool,
//! max_db_connections across the pools of one database, server_check_query after
//! server_check_delay, and waiters served first come, first served.

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

/// A check query no client sends, so the server log shows exactly when pgmoat ran it.
const CHECK_QUERY: &str = "SELECT 'pgmoat health check'";

/// A test database that logs every statement with the backend's pid.
fn db_logging_statements(pki: &Pki) -> TestDb {
    TestDb::start_with(pki, |opts| {
        opts.settings.push(("log_statement".into(), "all".into()));
    })
}

/// `(backend pid, statement)` for every simple-protocol statement in the server log, in order
/// (log_line_prefix `%m [%p] ...`).
fn logged_statements(db: &TestDb) -> Vec<(i32, String)> {
    let log = std::fs::read_to_string(db.log_path()).unwrap_or_default();
    log.lines()
        .filter_map(|line| {
            let (_, statement) = line.split_once(" LOG:  statement: ")?;
            let pid = line.split_once('[')?.1.split_once(']')?.0.parse().ok()?;
            Some((pid, statement.to_owned()))
        })
        .collect()
}

/// Where `statement` first shows in `log`; panics with the log if it never ran.
fn position_of(log: &[(i32, String)], statement: &str) -> usize {
    log.iter()
        .position(|(_, s)| s == statement)
        .unwrap_or_else(|| panic!("{statement:?} is not in the server log: {log:#?}"))
}

/// pgmoat with one server, checked with [`CHECK_QUERY`] once idle for over 2 s.
fn moat_checking_after_2s(pki: &Pki, db: &TestDb) -> Pgmoat {
    Pgmoat::start(
        &ConfigBuilder::new(pki, db)
            .set("default_pool_size", "1")
            .set_str("server_check_query", CHECK_QUERY)
            .set("server_check_delay", "2")
            .build(),
    )
}

fn check_runs(log: &[(i32, String)]) -> Vec<(usize, i32)> {
    log.iter()
        .enumerate()
        .filter(|(_, (_, s))| s == CHECK_QUERY)
        .map(|(at, (pid, _))| (at, *pid))
        .collect()
}

#[tokio::test]
async fn server_check_query_runs_before_reusing_a_backend_idle_longer_than_server_check_delay() {
    let pki = Pki::new();
    let db = db_logging_statements(&pki);
    let moat = moat_checking_after_2s(&pki, &db);
    let client = moat_client(&moat, &pki, "alice").await;
    let q = |n: u32| format!("SELECT pg_backend_pid() /* q{n} */");

    let first = text_value(&client, &q(1)).await;
    // Lent again at once, well within server_check_delay: no check.
    assert_eq!(text_value(&client, &q(2)).await, first);
    assert_eq!(
        check_runs(&logged_statements(&db)),
        vec![],
        "checked a backend idle for less than server_check_delay"
    );

    // Idle for longer than server_check_delay: checked, passes, and is lent again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        text_value(&client, &q(3)).await,
        first,
        "a backend that passed its check was not reused"
    );
    let log = logged_statements(&db);
    let checks = check_runs(&log);
    assert_eq!(checks.len(), 1, "expected one check: {log:#?}");
    let (at, pid) = checks[0];
    assert_eq!(pid.to_string(), first, "the check ran on another backend");
    assert!(
        position_of(&log, &q(2)) < at && at < position_of(&log, &q(3)),
        "the check did not run between the idle period and the next query: {log:#?}"
    );
}

#[tokio::test]
async fn a_backend_failing_server_check_query_is_replaced_before_the_client_gets_it() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql(
        APP_DB,
        "CREATE TABLE moat_health (); GRANT SELECT ON moat_health TO PUBLIC;",
    );
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "1")
            .set_str("server_check_query", "SELECT 1 FROM moat_health")
            // 0: check before every reuse.
            .set("server_check_delay", "0")
            .build(),
    );
    let client = moat_client(&moat, &pki, "alice").await;
    let first = pid(&client).await;
    assert_eq!(
        pid(&client).await,
        first,
        "a backend that passes was replaced"
    );

    // Behind pgmoat's back the check starts failing; the backend itself is healthy and quiet,
    // so only the check can tell.
    db.sql(APP_DB, "DROP TABLE moat_health");
    let next = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap_or_else(|e| panic!("the client saw the failed check: {e:?}\n{}", moat.log()))
        .get::<_, i32>(0);
    assert_ne!(next, first, "a backend that failed its check was lent");
    eventually(
        "the backend that failed its check to be closed",
        Duration::from_secs(10),
        || !db.backend_pids("alice").contains(&first),
    )
    .await;
}

/// One transaction that stays open for `open`; the pid of the backend it ran on.
async fn transaction_lasting(client: &Client, open: Duration) -> i32 {
    client.batch_execute("BEGIN").await.unwrap();
    let backend = pid(client).await;
    tokio::time::sleep(open).await;
    client.batch_execute("COMMIT").await.unwrap();
    backend
}

#[tokio::test]
async fn server_check_delay_counts_from_release_not_from_checkout() {
    let pki = Pki::new();
    let db = db_logging_statements(&pki);
    let moat = moat_checking_after_2s(&pki, &db);
    let client = moat_client(&moat, &pki, "alice").await;
    // One transaction longer than server_check_delay: the backend is busy, not idle.
    let first = transaction_lasting(&client, Duration::from_secs(3)).await;
    // Released just now: "a released connection is lent again without running
    // server_check_query" within server_check_delay (config/pgmoat.toml, PgBouncer).
    assert_eq!(pid(&client).await, first);
    assert_eq!(check_runs(&logged_statements(&db)), vec![]);
}

#[tokio::test]
async fn server_idle_timeout_counts_idle_time_not_time_in_a_transaction() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "1")
            .set("server_idle_timeout", "2")
            .build(),
    );
    let client = moat_client(&moat, &pki, "alice").await;
    let first = transaction_lasting(&client, Duration::from_secs(3)).await;
    // Idle for a moment only: it must still be there and be lent again.
    assert_eq!(
        pid(&client).await,
        first,
        "a busy backend was closed as idle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_clients_get_the_only_backend_in_the_order_they_queued() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql(
        APP_DB,
        "CREATE TABLE served (id serial PRIMARY KEY, who text NOT NULL);
         GRANT ALL ON TABLE served TO PUBLIC;
         GRANT ALL ON SEQUENCE served_id_seq TO PUBLIC;",
    );
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "1")
            .set("query_wait_timeout", "60")
            .set("admin_users", r#"["alice"]"#)
            .build(),
    );
    let console = moat_console(&moat, &pki, "alice").await;
    // Everyone logs in first, so nobody queues for a server during login.
    let holder = moat_client(&moat, &pki, "alice").await;
    let mut waiters = Vec::new();
    for _ in 0..3 {
        waiters.push(moat_client(&moat, &pki, "alice").await);
    }
    holder.batch_execute("BEGIN").await.unwrap();
    pid(&holder).await;

    // A, B, C queue one after another: each is seen waiting before the next one asks.
    let mut tasks = Vec::new();
    for (queued, (who, client)) in ["A", "B", "C"].into_iter().zip(waiters).enumerate() {
        tasks.push(tokio::spawn(async move {
            client
                .batch_execute(&format!("INSERT INTO served (who) VALUES ('{who}')"))
                .await
        }));
        wait_for_waiting(&console, queued as i64 + 1, who, &moat).await;
    }
    assert_eq!(
        db.count("SELECT count(*) FROM served"),
        0,
        "a waiter got a server"
    );

    holder.batch_execute("COMMIT").await.unwrap();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a waiter was never served")
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        db.sql(APP_DB, "SELECT string_agg(who, '' ORDER BY id) FROM served"),
        "ABC",
        "waiters were not served first come, first served"
    );
    assert_eq!(waiting_in_show_pools(&console).await, 0);
}

/// pgmoat with two workers and a pool of 8 (a share of 4 per worker), and eight clients
/// logged in one after another, so they alternate between the workers; each has opened a
/// transaction of its own (eight backends), and the pids are returned with them.
async fn split_pool_of_eight(
    pki: &Pki,
    db: &TestDb,
    query_wait_timeout: &str,
    metrics_port: u16,
) -> (Pgmoat, Vec<Client>, std::collections::BTreeSet<i32>) {
    let moat = Pgmoat::start(
        &ConfigBuilder::new(pki, db)
            .set("worker_threads", "2")
            .set("default_pool_size", "8")
            .set("query_wait_timeout", query_wait_timeout)
            .set("admin_users", r#"["alice"]"#)
            .set_str("metrics_addr", &format!("127.0.0.1:{metrics_port}"))
            .build(),
    );
    moat.wait_for_log("worker_threads=2", Duration::from_secs(10));
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(moat_client(&moat, pki, "alice").await);
    }
    let pids = begin_each(&clients).await;
    (moat, clients, pids)
}

/// Opens a transaction on each client, each on a backend of its own: their pids.
async fn begin_each<'a>(
    clients: impl IntoIterator<Item = &'a Client>,
) -> std::collections::BTreeSet<i32> {
    let mut pids = std::collections::BTreeSet::new();
    for client in clients {
        client.batch_execute("BEGIN").await.unwrap();
        pids.insert(pid(client).await);
    }
    pids
}

/// With two worker threads a pool of 8 is split into a share of 4 per worker (clients go to
/// the workers in turn). The shares add up to the configured size: eight clients in open
/// transactions hold eight backends at once, a ninth waits, and the console and /metrics
/// show one pool of 8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_split_per_worker_keeps_its_size_and_shows_as_one_pool() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let metrics_port = free_port();
    let (moat, holders, pids) = split_pool_of_eight(&pki, &db, "60", metrics_port).await;
    assert_eq!(pids.len(), 8, "eight open transactions, eight backends");
    assert_eq!(db.backends_of("alice"), 8);

    let console = moat_console(&moat, &pki, "alice").await;
    let ninth = moat_client(&moat, &pki, "alice").await;
    let waiting = tokio::spawn(async move {
        let value = text_value(&ninth, "SELECT 9").await;
        (ninth, value)
    });
    wait_for_waiting(&console, 1, "the ninth client", &moat).await;
    assert_eq!(
        db.backends_of("alice"),
        8,
        "the ninth client got a ninth backend"
    );

    let rows = console.simple_query("SHOW POOLS").await.unwrap();
    let pool_rows = rows
        .iter()
        .filter(|m| {
            matches!(m, tokio_postgres::SimpleQueryMessage::Row(row)
                if row.get("database") == Some(APP_DB) && row.get("user") == Some("alice"))
        })
        .count();
    assert_eq!(pool_rows, 1, "one SHOW POOLS row for the split pool");
    let metrics = http_fetch(metrics_port, "/metrics").await;
    let sizes: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("pgmoat_pool_size{") && l.contains(&format!("database=\"{APP_DB}\""))
        })
        .collect();
    assert_eq!(sizes.len(), 1, "{sizes:?}");
    assert!(sizes[0].ends_with(" 8"), "{sizes:?}");

    for client in &holders {
        client.batch_execute("COMMIT").await.unwrap();
    }
    let (_ninth, value) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the ninth client was never served")
        .unwrap();
    assert_eq!(value, "9");
    assert!(db.backends_of("alice") <= 8);
}

/// A client whose own worker's share is at its limit takes a server that is idle in the other
/// worker's share instead of waiting for its own (README, Transaction pooling): at checkout,
/// and while it waits, when a server of the other share goes back idle with nobody of that
/// share waiting. Waiting for its own share only, it would get query_wait_timeout's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_borrows_a_server_idle_in_the_other_workers_share() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let metrics_port = free_port();
    // The even clients are on one worker (X), the odd ones on the other (Y), and the ninth
    // connection is on X again. Four backends per share, then all idle.
    let (moat, clients, pids) = split_pool_of_eight(&pki, &db, "10", metrics_port).await;
    assert_eq!(pids.len(), 8);
    for client in &clients {
        client.batch_execute("COMMIT").await.unwrap();
    }
    // X's share at its limit; Y's four servers idle.
    begin_each(clients.iter().step_by(2)).await;
    let ninth = moat_client(&moat, &pki, "alice").await;
    let answer = tokio::time::timeout(Duration::from_secs(30), ninth.simple_query("SELECT 9"))
        .await
        .expect("the ninth client was never answered");
    assert!(
        answer.is_ok(),
        "the ninth client waited for its own share while the other had idle servers: {answer:?}\n{}",
        moat.log()
    );
    assert_eq!(
        db.backends_of("alice"),
        8,
        "a server was made, not borrowed"
    );

    // Now Y's share at its limit too: the ninth client waits, until one of Y's clients
    // commits with nobody of Y waiting.
    begin_each(clients.iter().skip(1).step_by(2)).await;
    let console = moat_console(&moat, &pki, "alice").await;
    let waiting = tokio::spawn(async move {
        let value = ninth.simple_query("SELECT 10").await.map(|_| ());
        (ninth, value)
    });
    wait_for_waiting(&console, 1, "the ninth client", &moat).await;
    clients[1].batch_execute("COMMIT").await.unwrap();
    let (_ninth, value) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the ninth client was never answered")
        .unwrap();
    assert!(
        value.is_ok(),
        "the ninth client was not told of the server that went idle in the other share: {value:?}\n{}",
        moat.log()
    );
    for client in clients.iter().step_by(2) {
        client.batch_execute("COMMIT").await.unwrap();
    }
    assert_eq!(db.backends_of("alice"), 8);
    let metrics = http_fetch(metrics_port, "/metrics").await;
    let borrowed =
        format!("pgmoat_pool_borrowed_servers_total{{database=\"{APP_DB}\",user=\"alice\"}} 2");
    assert!(metrics.contains(&borrowed), "{metrics}");
}
