//! Session state follows its client under transaction pooling: a client that creates a temp
//! table, takes a session advisory lock, LISTENs, PREPAREs in SQL or opens a WITH HOLD cursor
//! keeps its server (pinned) across transactions, nobody else gets that server, the pin ends
//! once PostgreSQL confirms the state is gone, and when the owner leaves its server is reset
//! before anyone else uses it.

mod support;

use std::time::Duration;

use support::*;
use tokio_postgres::Client;
use tokio_postgres::SimpleQueryMessage;

/// One kind of session state: how it is made, how its owner sees it, how it is undone, and
/// what a later client of the same server must find (nothing).
struct Kind {
    name: &'static str,
    reason: &'static str,
    create: &'static str,
    /// Answers `expected` for the owner while the state exists.
    seen: &'static str,
    expected: &'static str,
    undo: &'static str,
    /// Counts the state of this kind on the session that runs it: "0" on a clean server.
    count: &'static str,
}

const KINDS: [Kind; 5] = [
    Kind {
        name: "temp table",
        reason: "temp_table",
        create: "CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (7)",
        seen: "SELECT x FROM scratch",
        expected: "7",
        undo: "DROP TABLE scratch",
        count: "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()",
    },
    Kind {
        name: "advisory lock",
        reason: "advisory_lock",
        create: "SELECT pg_advisory_lock(42)",
        seen: "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        expected: "1",
        undo: "SELECT pg_advisory_unlock(42)",
        count: "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    },
    Kind {
        name: "LISTEN",
        reason: "listen",
        create: "LISTEN jobs",
        seen: "SELECT string_agg(c, ',') FROM pg_listening_channels() c",
        expected: "jobs",
        undo: "UNLISTEN jobs",
        count: "SELECT count(*) FROM pg_listening_channels()",
    },
    Kind {
        name: "SQL PREPARE",
        reason: "prepare",
        create: "PREPARE seven AS SELECT 7",
        seen: "EXECUTE seven",
        expected: "7",
        undo: "DEALLOCATE seven",
        count: "SELECT count(*) FROM pg_prepared_statements WHERE from_sql",
    },
    Kind {
        name: "WITH HOLD cursor",
        reason: "hold_cursor",
        create: "DECLARE held CURSOR WITH HOLD FOR SELECT 7 FROM generate_series(1, 100)",
        seen: "FETCH 1 FROM held",
        expected: "7",
        undo: "CLOSE held",
        count: "SELECT count(*) FROM pg_cursors WHERE is_holdable",
    },
];

async fn one(client: &Client, sql: &str) -> String {
    text_value(client, sql).await
}

async fn pid(client: &Client) -> String {
    one(client, "SELECT pg_backend_pid()").await
}

/// The `pinned` column of SHOW CLIENTS for alice's clients of app, in connection order.
async fn pinned_column(console: &Client) -> Vec<String> {
    console
        .simple_query("SHOW CLIENTS")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) if row.get("database") == Some(APP_DB) => {
                Some(row.get("pinned").unwrap_or("").to_owned())
            }
            _ => None,
        })
        .collect()
}

/// Waits until SHOW CLIENTS shows no pinned client of app.
async fn wait_unpinned(console: &Client) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pinned_column(console).await.iter().any(|p| !p.is_empty()) {
        assert!(
            std::time::Instant::now() < deadline,
            "still pinned after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pinning_config(pki: &Pki, db: &TestDb) -> ConfigBuilder {
    ConfigBuilder::new(pki, db)
        .set("default_pool_size", "2")
        .set("admin_users", r#"["alice"]"#)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_of_session_state_pins_until_it_is_gone_and_is_reset_when_its_owner_leaves() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql(APP_DB, "GRANT TEMPORARY ON DATABASE app TO alice");
    let moat = Pgmoat::start(&pinning_config(&pki, &db).build());
    let console = moat_console(&moat, &pki, "alice").await;
    for kind in &KINDS {
        let owner = moat_client(&moat, &pki, "alice").await;
        let other = moat_client(&moat, &pki, "alice").await;
        owner.batch_execute(kind.create).await.unwrap();
        let pinned_pid = pid(&owner).await;

        // The owner keeps its state, transaction after transaction, on the same server.
        for _ in 0..3 {
            assert_eq!(one(&owner, kind.seen).await, kind.expected, "{}", kind.name);
            assert_eq!(pid(&owner).await, pinned_pid, "{}: owner moved", kind.name);
        }
        assert_eq!(
            pinned_column(&console).await,
            [kind.reason, ""],
            "{}",
            kind.name
        );
        // Nobody else gets that server.
        for _ in 0..5 {
            assert_ne!(pid(&other).await, pinned_pid, "{}: shared", kind.name);
        }
        assert_eq!(one(&other, kind.count).await, "0", "{}", kind.name);

        // Undone: the server is multiplexed again (pgmoat checks with PostgreSQL right after
        // the answer, so wait for SHOW CLIENTS to say so).
        owner.batch_execute(kind.undo).await.unwrap();
        wait_unpinned(&console).await;

        // Made again, then the owner leaves: the next client of that server finds nothing.
        owner.batch_execute(kind.create).await.unwrap();
        let pinned_pid = pid(&owner).await;
        other.batch_execute("BEGIN").await.unwrap();
        assert_ne!(pid(&other).await, pinned_pid);
        drop(owner);
        let next = moat_client(&moat, &pki, "alice").await;
        let mut waited = 0;
        while pid(&next).await != pinned_pid {
            // The owner's server is reset asynchronously after its client left.
            waited += 1;
            assert!(
                waited < 200,
                "{}: the owner's server never came back",
                kind.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            one(&next, kind.count).await,
            "0",
            "{}: left behind",
            kind.name
        );
        other.batch_execute("COMMIT").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_listener_gets_its_notifications_while_idle() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(&pinning_config(&pki, &db).build());
    let mut listener = moat_raw(&moat, &pki, "alice", &[]).await;
    listener.simple("LISTEN jobs").await.unwrap();
    for i in 0..5 {
        db.sql(APP_DB, &format!("NOTIFY jobs, 'job {i}'"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Idle for a second, no query sent: the notifications arrive as they would from
    // PostgreSQL directly.
    let mut payloads = Vec::new();
    while payloads.len() < 5 {
        let msg = tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .expect("a notification did not arrive while the listener was idle")
            .unwrap();
        assert_eq!(msg.tag, b'A', "{msg:?}");
        let body = &msg.body[4..];
        let mut parts = body.split(|b| *b == 0);
        assert_eq!(parts.next(), Some(&b"jobs"[..]));
        payloads.push(String::from_utf8_lossy(parts.next().unwrap()).into_owned());
    }
    assert_eq!(
        payloads,
        (0..5).map(|i| format!("job {i}")).collect::<Vec<_>>()
    );
    assert_eq!(listener.value("SELECT 'still fine'").await, "still fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_pinned_clients_beside_twenty_others_on_a_pool_of_ten() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql(APP_DB, "GRANT TEMPORARY ON DATABASE app TO alice");
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "10")
            .set("query_wait_timeout", "30")
            .build(),
    );
    let mut tasks = Vec::new();
    for i in 0..23 {
        let client = moat_client(&moat, &pki, "alice").await;
        let pinned = i < 3;
        tasks.push(tokio::spawn(async move {
            if pinned {
                client
                    .batch_execute("CREATE TEMP TABLE mine (n int)")
                    .await
                    .unwrap();
            }
            for n in 0..50 {
                if pinned {
                    client
                        .batch_execute(&format!("INSERT INTO mine VALUES ({n})"))
                        .await
                        .unwrap();
                } else {
                    client
                        .batch_execute("INSERT INTO items (v) VALUES ('shared')")
                        .await
                        .unwrap();
                }
            }
            if pinned {
                assert_eq!(text_value(&client, "SELECT count(*) FROM mine").await, "50");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        db.count("SELECT count(*) FROM items WHERE v = 'shared'"),
        20 * 50
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_limit_a_statement_that_would_pin_is_refused_before_it_runs() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql(APP_DB, "GRANT TEMPORARY ON DATABASE app TO alice");
    // A pool of 2 pins at most 1 by default.
    let moat = Pgmoat::start(&pinning_config(&pki, &db).build());
    let console = moat_console(&moat, &pki, "alice").await;
    let a = moat_client(&moat, &pki, "alice").await;
    let b = moat_client(&moat, &pki, "alice").await;
    a.batch_execute("CREATE TEMP TABLE a_only (x int)")
        .await
        .unwrap();
    let err = b
        .batch_execute("CREATE TEMP TABLE b_too (x int)")
        .await
        .expect_err("a second pin beyond max_pinned_servers = 1");
    let db_err = err.as_db_error().unwrap();
    assert_eq!(db_err.code().code(), "53300", "{db_err:?}");
    assert!(
        db_err.message().contains("max_pinned_servers = 1"),
        "{db_err:?}"
    );
    assert!(
        db_err.hint().unwrap_or("").contains("session_state"),
        "{db_err:?}"
    );
    // Refused before it ran: no such table anywhere, and b goes on.
    assert_eq!(
        db.count("SELECT count(*) FROM pg_class WHERE relname = 'b_too'"),
        0
    );
    assert_eq!(text_value(&b, "SELECT 'on'").await, "on");
    // Once a's state is gone (pgmoat checks right after the answer), b may pin.
    a.batch_execute("DROP TABLE a_only").await.unwrap();
    wait_unpinned(&console).await;
    b.batch_execute("CREATE TEMP TABLE b_too (x int)")
        .await
        .unwrap();
    assert_eq!(text_value(&b, "SELECT count(*) FROM b_too").await, "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn session_state_reset_never_pins_and_resets_the_server() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql(APP_DB, "GRANT TEMPORARY ON DATABASE app TO alice");
    let moat = Pgmoat::start(
        &pinning_config(&pki, &db)
            .set("default_pool_size", "1")
            .set_str("session_state", "reset")
            .build(),
    );
    let a = moat_client(&moat, &pki, "alice").await;
    let b = moat_client(&moat, &pki, "alice").await;
    a.batch_execute("SET work_mem = '7MB'; CREATE TEMP TABLE gone (x int)")
        .await
        .unwrap();
    // The one server serves b at once: a's state did not pin it, and was reset.
    assert_eq!(
        text_value(
            &b,
            "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()"
        )
        .await,
        "0"
    );
    assert_eq!(
        text_value(&a, "SELECT to_regclass('pg_temp.gone') IS NULL").await,
        "t"
    );
    // Settings are not session state: they still follow their client.
    assert_eq!(text_value(&a, "SHOW work_mem").await, "7MB");
    assert_eq!(text_value(&b, "SHOW work_mem").await, "4MB");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_pinned_server_is_reported_once_and_the_client_goes_on() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql(APP_DB, "GRANT TEMPORARY ON DATABASE app TO alice");
    let moat = Pgmoat::start(&pinning_config(&pki, &db).build());
    let a = moat_client(&moat, &pki, "alice").await;
    a.batch_execute("CREATE TEMP TABLE t (x int)")
        .await
        .unwrap();
    let pinned = pid(&a).await;
    db.sql(APP_DB, &format!("SELECT pg_terminate_backend({pinned})"));
    wait_until("the pinned backend to end", Duration::from_secs(10), || {
        db.count(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pinned}"
        )) == 0
    });
    let err = a
        .batch_execute("SELECT count(*) FROM t")
        .await
        .expect_err("the session state is gone");
    let db_err = err.as_db_error().unwrap();
    assert_eq!(db_err.code().code(), "08006", "{db_err:?}");
    assert!(
        db_err.message().contains("session's state was lost"),
        "{db_err:?}"
    );
    // Once: the client goes on, unpinned, on another server.
    assert_ne!(pid(&a).await, pinned);
    assert_eq!(text_value(&a, "SELECT 'on'").await, "on");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_client_keeps_its_server_across_a_reload_that_replaces_its_pool() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql(APP_DB, "GRANT TEMPORARY ON DATABASE app TO alice");
    let builder = pinning_config(&pki, &db);
    let moat = Pgmoat::start(&builder.build());
    let a = moat_client(&moat, &pki, "alice").await;
    a.batch_execute("CREATE TEMP TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let pinned = pid(&a).await;
    moat.rewrite_config(&builder.server_host("127.0.0.1").build());
    moat.sighup_and_wait_reloaded(Duration::from_secs(10));
    let b = moat_client(&moat, &pki, "alice").await;
    assert_eq!(text_value(&b, "SELECT 'new pool'").await, "new pool");
    // Its state and its server stay until the state is gone...
    assert_eq!(text_value(&a, "SELECT count(*) FROM t").await, "1");
    assert_eq!(pid(&a).await, pinned);
    a.batch_execute("DROP TABLE t").await.unwrap();
    // ...then the old pool's server closes and the client moves to the new pool.
    wait_until(
        "the old pinned server to close",
        Duration::from_secs(10),
        || {
            db.count(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = {pinned}"
            )) == 0
        },
    );
    assert_ne!(pid(&a).await, pinned);
}

/// Inside an open transaction too: at the limit, a statement that would pin is refused before
/// it runs (PostgreSQL raises the refusal in its place, so the transaction is aborted as for
/// any failed statement), with prepared statements pooled and without.
#[tokio::test(flavor = "multi_thread")]
async fn at_the_limit_a_pinning_statement_inside_a_transaction_is_refused_too() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql(APP_DB, "GRANT TEMPORARY ON DATABASE app TO alice");
    for max_prepared in ["200", "0"] {
        let moat = Pgmoat::start(
            &pinning_config(&pki, &db)
                .set("max_prepared_statements", max_prepared)
                .build(),
        );
        let a = moat_client(&moat, &pki, "alice").await;
        let b = moat_client(&moat, &pki, "alice").await;
        a.batch_execute("CREATE TEMP TABLE a_only (x int)")
            .await
            .unwrap();
        b.batch_execute("BEGIN; INSERT INTO items (v) VALUES ('in b''s transaction')")
            .await
            .unwrap();
        let err = b
            .batch_execute("CREATE TEMP TABLE b_too (x int)")
            .await
            .expect_err("a second pin beyond max_pinned_servers = 1");
        let db_err = err.as_db_error().unwrap();
        assert_eq!(db_err.code().code(), "53300", "{db_err:?}");
        assert!(
            db_err.message().contains("max_pinned_servers"),
            "{db_err:?}"
        );
        b.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(
            db.count("SELECT count(*) FROM items WHERE v = 'in b''s transaction'"),
            0,
            "max_prepared_statements = {max_prepared}: the transaction was rolled back"
        );
        assert_eq!(text_value(&b, "SELECT 'on'").await, "on");
        // The extended protocol's unnamed statement (psycopg, pgjdbc's first executions).
        let mut raw = moat_raw(&moat, &pki, "alice", &[]).await;
        raw.simple("BEGIN").await.unwrap();
        let mut batch = wire::parse("", "CREATE TEMP TABLE b_ext (x int)");
        batch.extend_from_slice(&wire::bind("", "", &[]));
        batch.extend_from_slice(&wire::execute());
        batch.extend_from_slice(&wire::sync());
        let err = raw.round_trip(&batch).await.unwrap_err();
        assert_eq!(err.code, "53300", "{err}");
        raw.simple("ROLLBACK").await.unwrap();
        assert_eq!(raw.value("SELECT 'on'").await, "on");
        drop(raw);
        // Positive control: with a free place, the same statement inside a transaction pins.
        a.batch_execute("DROP TABLE a_only").await.unwrap();
        let console = moat_console(&moat, &pki, "alice").await;
        wait_unpinned(&console).await;
        b.batch_execute("BEGIN").await.unwrap();
        b.batch_execute("CREATE TEMP TABLE b_too (x int)")
            .await
            .unwrap();
        b.batch_execute("COMMIT").await.unwrap();
        assert_eq!(text_value(&b, "SELECT count(*) FROM b_too").await, "0");
    }
}
