//! A transaction-mode client whose server PostgreSQL ended under it: what pgmoat may still
//! answer in the lost server's place (only at a message boundary both ways, each batch once,
//! a COMMIT on its way never called a rollback), and when it must close the client instead.

mod support;

use std::time::Duration;

use support::wire::{self, RawMsg, RawReader};
use support::*;
use tokio::io::AsyncWriteExt;

/// The backend running `like` for alice right now, once there is one (`wait_event`, when
/// given, must match too).
async fn backend_running(db: &TestDb, like: &str, wait_event: Option<&str>) -> i32 {
    let filter = wait_event
        .map(|w| format!(" AND wait_event = '{w}'"))
        .unwrap_or_default();
    let sql = format!(
        "SELECT pid FROM pg_stat_activity WHERE usename = 'alice' AND state = 'active' AND query LIKE '{like}'{filter}"
    );
    let mut found = String::new();
    eventually(
        &format!("a backend running {like} {filter}"),
        Duration::from_secs(20),
        || {
            found = db.sql("postgres", &sql);
            !found.trim().is_empty()
        },
    )
    .await;
    found.trim().lines().next().unwrap().parse().unwrap()
}

fn terminate(db: &TestDb, pid: i32) {
    db.sql("postgres", &format!("SELECT pg_terminate_backend({pid})"));
}

/// A wire-level client inside a transaction whose server PostgreSQL terminated under a
/// `pg_sleep`: told (08006, ReadyForQuery 'E') and in the failed block.
async fn in_a_lost_block(moat: &Pgmoat, pki: &Pki, db: &TestDb) -> wire::RawClient {
    let mut client = moat_raw(moat, pki, "alice", &[]).await;
    client.simple("BEGIN").await.unwrap();
    client.send(&wire::query("SELECT pg_sleep(60)")).await;
    let pid = backend_running(db, "SELECT pg_sleep%", None).await;
    terminate(db, pid);
    let lost = client.until_ready().await.unwrap();
    assert_eq!(
        wire::tags(&lost),
        "TEZ",
        "the sleep's row description, then the loss"
    );
    assert_eq!(lost[1].field(b'C').as_deref(), Some("08006"));
    assert_eq!(lost[2].body[0], b'E', "in a failed block");
    client
}

/// The next message that is not a notice.
async fn next_answer(reader: &mut RawReader) -> RawMsg {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), reader.recv())
            .await
            .expect("no answer: the client hangs")
            .expect("connection closed");
        if msg.tag != b'N' {
            return msg;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_in_the_middle_of_a_row_to_the_client_closes_it() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(&ConfigBuilder::new(&pki, &db).build());
    let mut client = moat_raw(&moat, &pki, "alice", &[]).await;
    // One 40 MB row, more than the sockets between PostgreSQL and the client hold: the
    // backend blocks writing it (the client reads nothing yet), part of it already on its
    // way to the client, and is terminated there.
    client
        .send(&wire::query("SELECT repeat('x', 40000000)"))
        .await;
    let pid = backend_running(&db, "SELECT repeat%", Some("ClientWrite")).await;
    terminate(&db, pid);
    // The client gets the row's beginning and then the end of the connection: never an
    // error message inside the row (which would leave it waiting for the rest of a row).
    let mut tags = String::new();
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match client.recv().await {
                Ok(msg) => tags.push(msg.tag as char),
                Err(e) => return e,
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the client was left waiting inside the row (got {tags:?})\n{}",
            moat.log()
        )
    });
    assert_eq!(end, "connection closed");
    assert_eq!(tags, "T", "only the row description came whole");
    moat.wait_for_log(
        "in the middle of a message to the client",
        Duration::from_secs(5),
    );
    // Everyone else carries on.
    let other = moat_client(&moat, &pki, "alice").await;
    assert_eq!(text_value(&other, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_pipelined_behind_a_lost_server_are_each_answered_once_and_never_run() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(&ConfigBuilder::new(&pki, &db).build());
    let mut client = moat_raw(&moat, &pki, "alice", &[]).await;
    client.simple("BEGIN").await.unwrap();
    // A sleep, then 40 MB of INSERTs pipelined behind it (more than the sockets on the way
    // hold, so some are in pgmoat's buffer, counted but not yet written, when the server is
    // lost), written while the answers are read.
    const INSERTS: usize = 700;
    let insert = wire::query(&format!(
        "INSERT INTO items (v) VALUES ('piped{}')",
        "x".repeat(60_000)
    ));
    let mut pipeline = wire::query("SELECT pg_sleep(60)").to_vec();
    for _ in 0..INSERTS {
        pipeline.extend_from_slice(&insert);
    }
    let (mut reader, mut writer) = client.into_split();
    let writing = tokio::spawn(async move {
        writer.write_all(&pipeline).await.unwrap();
        writer.flush().await.unwrap();
        writer
    });
    let pid = backend_running(&db, "SELECT pg_sleep%", None).await;
    assert!(!writing.is_finished(), "the pipeline did not back up");
    terminate(&db, pid);
    let mut first = next_answer(&mut reader).await;
    if first.tag == b'T' {
        // The sleep's row description.
        first = next_answer(&mut reader).await;
    }
    assert_eq!(first.tag, b'E');
    assert_eq!(first.field(b'C').as_deref(), Some("08006"));
    let ready = next_answer(&mut reader).await;
    assert_eq!((ready.tag, ready.body[0]), (b'Z', b'E'));
    for i in 0..INSERTS {
        let err = next_answer(&mut reader).await;
        assert_eq!(
            (err.tag, err.field(b'C').as_deref()),
            (b'E', Some("25P02")),
            "insert {i}"
        );
        let ready = next_answer(&mut reader).await;
        assert_eq!((ready.tag, ready.body[0]), (b'Z', b'E'), "insert {i}");
    }
    let mut writer = tokio::time::timeout(Duration::from_secs(20), writing)
        .await
        .expect("the pipeline was not read")
        .unwrap();
    writer.write_all(&wire::query("ROLLBACK")).await.unwrap();
    writer.flush().await.unwrap();
    // Exactly one answer per batch: the next one is the ROLLBACK's.
    let done = next_answer(&mut reader).await;
    assert_eq!(done.tag, b'C', "{done:?}");
    let ready = next_answer(&mut reader).await;
    assert_eq!((ready.tag, ready.body[0]), (b'Z', b'I'));
    writer
        .write_all(&wire::query("SELECT count(*) FROM items"))
        .await
        .unwrap();
    writer.flush().await.unwrap();
    let (_, row) = (
        next_answer(&mut reader).await,
        next_answer(&mut reader).await,
    );
    assert_eq!(row.columns(), vec![Some("0".to_owned())], "no insert ran");
    assert_eq!(
        db.sql("app", "SELECT count(*) FROM items WHERE v LIKE 'piped%'"),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_on_its_way_when_the_server_is_lost_is_unknown_not_rolled_back() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    // Synchronous replication to a standby that never comes: a COMMIT waits for it after
    // committing locally, and is terminated there.
    db.sql(
        "postgres",
        "ALTER SYSTEM SET synchronous_standby_names = 'nobody'",
    );
    db.sql("postgres", "SELECT pg_reload_conf()");
    let moat = Pgmoat::start(&ConfigBuilder::new(&pki, &db).build());
    let client = moat_client(&moat, &pki, "alice").await;
    client
        .batch_execute(
            "BEGIN; SET LOCAL synchronous_commit = on; INSERT INTO items (v) VALUES ('maybe')",
        )
        .await
        .unwrap();
    // The reload reaches the backend before its next command.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while text_value(&client, "SHOW synchronous_standby_names").await != "nobody" {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload never reached the backend"
        );
    }
    let committing = tokio::spawn(async move {
        let result = client.batch_execute("COMMIT").await;
        (result, client)
    });
    let pid = backend_running(&db, "COMMIT", Some("SyncRep")).await;
    terminate(&db, pid);
    let (result, client) = tokio::time::timeout(Duration::from_secs(20), committing)
        .await
        .expect("the COMMIT hung")
        .unwrap();
    let err = result.expect_err("a COMMIT whose server was lost succeeded");
    let db_error = err
        .as_db_error()
        .unwrap_or_else(|| panic!("an ErrorResponse: {err:?}\n{}", moat.log()));
    assert_eq!(db_error.code().code(), "08007", "{db_error:?}");
    assert!(!db_error.message().contains("rolled back"), "{db_error:?}");
    // Rightly so: it did commit (locally, before the wait).
    assert_eq!(
        db.sql("app", "SELECT count(*) FROM items WHERE v = 'maybe'"),
        "1"
    );
    // And the client is out of its transaction block, not in a failed one.
    assert_eq!(text_value(&client, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_block_answers_a_flush_without_waiting_for_sync() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(&ConfigBuilder::new(&pki, &db).build());
    let mut client = in_a_lost_block(&moat, &pki, &db).await;
    // COMMIT over the extended protocol, then Flush: a pipelining driver waits for these
    // answers before it sends Sync.
    let mut batch = wire::parse("", "COMMIT");
    batch.extend_from_slice(&wire::bind("", "", &[]));
    batch.extend_from_slice(&wire::execute());
    let mut flush = bytes::BytesMut::new();
    postgres_protocol::message::frontend::flush(&mut flush);
    batch.extend_from_slice(&flush);
    client.send(&batch).await;
    let mut tags = String::new();
    for _ in 0..3 {
        let msg = tokio::time::timeout(Duration::from_secs(10), client.recv())
            .await
            .unwrap_or_else(|_| panic!("a Flush went unanswered (got {tags:?})"))
            .unwrap();
        tags.push(msg.tag as char);
    }
    assert_eq!(tags, "12C");
    client.send(&wire::sync()).await;
    let ready = client.until_ready().await.unwrap();
    assert_eq!(wire::tags(&ready), "Z");
    assert_eq!(ready[0].body[0], b'I');
    assert_eq!(client.value("SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_terminated_backend_does_not_mark_its_host_down() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("admin_users", "[\"alice\"]")
            .build(),
    );
    let console = moat_console(&moat, &pki, "alice").await;
    let client = moat_client(&moat, &pki, "alice").await;
    assert_eq!(text_value(&client, "SELECT 1").await, "1");
    let sleeper = moat_client(&moat, &pki, "alice").await;
    let sleeping = tokio::spawn(async move { sleeper.batch_execute("SELECT pg_sleep(60)").await });
    let pid = backend_running(&db, "SELECT pg_sleep%", None).await;
    let mark = moat.log_mark();
    terminate(&db, pid);
    let _ = sleeping.await;
    // The host is checked (it answers) instead of being taken for down.
    moat.wait_for_log_since(mark, "but the host answers", Duration::from_secs(10));
    let rows = console.simple_query("SHOW HOSTS").await.unwrap();
    let (status, failures) = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                r.get("status").unwrap().to_owned(),
                r.get("failures").unwrap().to_owned(),
            )),
            _ => None,
        })
        .expect("a row in SHOW HOSTS");
    assert_eq!((status.as_str(), failures.as_str()), ("primary", "0"));
    assert!(!moat.log().contains("host is down"), "{}", moat.log());
    assert_eq!(text_value(&client, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_block_left_idle_meets_idle_transaction_timeout() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("idle_transaction_timeout", "1")
            .build(),
    );
    // The control: a client idle between transactions all along.
    let bystander = moat_client(&moat, &pki, "alice").await;
    assert_eq!(text_value(&bystander, "SELECT 1").await, "1");
    let mut client = in_a_lost_block(&moat, &pki, &db).await;
    // No server waits for it, but it is idle in a transaction all the same.
    let fatal = tokio::time::timeout(Duration::from_secs(20), client.recv())
        .await
        .expect("the failed block was never timed out")
        .expect("closed without a word");
    assert_eq!(fatal.tag, b'E');
    assert_eq!(fatal.field(b'C').as_deref(), Some("25P03"));
    assert_eq!(fatal.field(b'S').as_deref(), Some("FATAL"));
    assert_eq!(text_value(&bystander, "SELECT 1").await, "1");
}
