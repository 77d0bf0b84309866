//! Stopping pgmoat: SIGINT and the console's SHUTDOWN stop accepting, let the transactions
//! in flight finish within shutdown_timeout and exit; SIGTERM stops accepting and serves the
//! connected clients until they leave; a second signal exits at once. And the log formats: readable text by default, JSON lines with --log-format json or
//! PGMOAT_LOG_FORMAT, levels from RUST_LOG.

mod support;

use std::fs::{self, File};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::*;
use tokio_postgres::Client;

struct Setup {
    pki: Pki,
    db: TestDb,
    pgmoat: Pgmoat,
}

fn setup(configure: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Setup {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let pgmoat = Pgmoat::start(&configure(ConfigBuilder::new(&pki, &db)).build());
    Setup { pki, db, pgmoat }
}

impl Setup {
    async fn client(&self, db: &str) -> Client {
        connect(
            self.pgmoat.port(),
            "alice",
            Some(ALICE_PASSWORD),
            db,
            Some(tls_client_config(&self.pki.ca, None)),
        )
        .await
        .unwrap_or_else(|e| panic!("connecting to {db}: {e}"))
    }

    /// Waits until the listening port refuses connections.
    fn wait_refused(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.pgmoat.port())).is_ok() {
            assert!(
                Instant::now() < deadline,
                "pgmoat still accepts connections after the shutdown began"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test]
async fn sigint_lets_the_transaction_in_flight_commit_then_exits() {
    let mut s = setup(|b| b.set("shutdown_timeout", "20"));
    let busy = s.client(APP_DB).await;
    let idle = s.client(APP_DB).await;
    idle.batch_execute("SELECT 1").await.unwrap();
    busy.batch_execute("BEGIN; INSERT INTO items (v) VALUES ('drained')")
        .await
        .unwrap();

    s.pgmoat.signal("INT");
    s.pgmoat
        .wait_for_log("SIGINT: shutting down", Duration::from_secs(10));
    s.wait_refused();
    // An idle client is told and closed; it gets no new transaction.
    let err = idle.batch_execute("SELECT 1").await.unwrap_err();
    assert!(
        err.as_db_error().is_none_or(|e| e.code().code() == "57P01"),
        "{err}"
    );

    let started = Instant::now();
    busy.batch_execute("COMMIT")
        .await
        .expect("COMMIT during the drain");
    let status = s
        .pgmoat
        .wait_exit(Duration::from_secs(10))
        .expect("pgmoat exits once the transaction ended");
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for shutdown_timeout although nothing was in flight"
    );
    assert_eq!(
        s.db.sql(APP_DB, "SELECT count(*) FROM items WHERE v = 'drained'"),
        "1"
    );
    s.pgmoat
        .wait_for_log("all clients finished", Duration::from_secs(1));
}

#[tokio::test]
async fn sigterm_serves_connected_clients_until_they_leave() {
    let mut s = setup(|b| b.set("shutdown_timeout", "60"));
    let busy = s.client(APP_DB).await;
    let idle = s.client(APP_DB).await;
    idle.batch_execute("SELECT 1").await.unwrap();
    busy.batch_execute("BEGIN; INSERT INTO items (v) VALUES ('after-term')")
        .await
        .unwrap();

    s.pgmoat.signal("TERM");
    s.pgmoat.wait_for_log(
        "waiting for the connected clients to leave",
        Duration::from_secs(10),
    );
    s.wait_refused();
    // Connected clients go on as before: the transaction commits, the idle client runs new
    // transactions (PgBouncer 1.23's SIGTERM; SIGINT would have closed it).
    busy.batch_execute("COMMIT").await.unwrap();
    idle.batch_execute("INSERT INTO items (v) VALUES ('after-term')")
        .await
        .unwrap();
    assert_eq!(
        s.db.sql(APP_DB, "SELECT count(*) FROM items WHERE v = 'after-term'"),
        "2"
    );
    assert!(
        s.pgmoat.wait_exit(Duration::from_millis(300)).is_none(),
        "pgmoat exited with clients still connected"
    );
    idle.batch_execute("SELECT 1").await.unwrap();
    drop(busy);
    drop(idle);
    // Polled between turns of this runtime, which must run the dropped clients' connection
    // tasks for them to say goodbye.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = s.pgmoat.wait_exit(Duration::from_millis(20)) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "pgmoat did not exit once its clients left\n{}",
            s.pgmoat.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    assert!(s.pgmoat.log().contains("all clients left"));
}

#[tokio::test]
async fn shutdown_timeout_bounds_the_drain() {
    let mut s = setup(|b| b.set("shutdown_timeout", "2"));
    let busy = s.client(APP_DB).await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let signalled = Instant::now();
    s.pgmoat.signal("INT");
    let status = s
        .pgmoat
        .wait_exit(Duration::from_secs(15))
        .expect("pgmoat exits after shutdown_timeout");
    let took = signalled.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(10),
        "exit after {took:?} with shutdown_timeout = 2"
    );
    assert!(busy.batch_execute("COMMIT").await.is_err());
    assert!(s.pgmoat.log().contains("shutdown_timeout reached"));
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut s = setup(|b| b.set("shutdown_timeout", "120"));
    let busy = s.client(APP_DB).await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
    s.pgmoat.signal("TERM");
    s.pgmoat
        .wait_for_log("SIGTERM: shutting down", Duration::from_secs(10));
    let second = Instant::now();
    s.pgmoat.signal("TERM");
    s.pgmoat
        .wait_exit(Duration::from_secs(5))
        .expect("the second SIGTERM ends pgmoat at once");
    assert!(second.elapsed() < Duration::from_secs(5));
    assert!(s.pgmoat.log().contains("second signal: closing at once"));
}

#[tokio::test]
async fn console_shutdown_drains_like_sigint() {
    let mut s = setup(|b| {
        b.set("admin_users", r#"["alice"]"#)
            .set("shutdown_timeout", "20")
    });
    let busy = s.client(APP_DB).await;
    busy.batch_execute("BEGIN; INSERT INTO items (v) VALUES ('console')")
        .await
        .unwrap();
    let console = s.client("pgbouncer").await;
    console.simple_query("SHUTDOWN").await.unwrap();
    s.wait_refused();
    // The console session itself is closed by the drain.
    assert!(console.simple_query("SHOW VERSION").await.is_err());
    busy.batch_execute("COMMIT")
        .await
        .expect("COMMIT during the drain");
    let status = s
        .pgmoat
        .wait_exit(Duration::from_secs(10))
        .expect("pgmoat exits after SHUTDOWN");
    assert!(status.success());
    assert_eq!(
        s.db.sql(APP_DB, "SELECT count(*) FROM items WHERE v = 'console'"),
        "1"
    );
}

#[tokio::test]
async fn session_mode_clients_between_transactions_do_not_hold_the_drain() {
    let mut s = setup(|b| {
        b.set_str("pool_mode", "session")
            .set("shutdown_timeout", "60")
    });
    let client = s.client(APP_DB).await;
    client.batch_execute("SELECT 1").await.unwrap();
    let signalled = Instant::now();
    s.pgmoat.signal("INT");
    s.pgmoat
        .wait_exit(Duration::from_secs(10))
        .expect("an idle session-mode client is closed at once");
    assert!(signalled.elapsed() < Duration::from_secs(10));
    assert!(client.batch_execute("SELECT 1").await.is_err());
}

/// Runs pgmoat with `args` before `run --config`, logging to a file; returns the child, its
/// log path and port once it accepts connections.
fn spawn_with(
    config: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Child, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config_path = dir.path().join("pgmoat.toml");
    fs::write(
        &config_path,
        format!("listen_addr = \"127.0.0.1\"\nlisten_port = {port}\n{config}"),
    )
    .unwrap();
    let log_path = dir.path().join("stderr.log");
    let mut cmd = pgmoat_command();
    cmd.args(args)
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(File::create(&log_path).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "pgmoat exited");
        assert!(Instant::now() < deadline, "pgmoat did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // One more moment for the lines written right after binding.
    std::thread::sleep(Duration::from_millis(200));
    (child, dir, log_path)
}

fn stop(mut child: Child, log_path: &std::path::Path) -> String {
    let _ = child.kill();
    let _ = child.wait();
    fs::read_to_string(log_path).unwrap()
}

#[test]
fn log_formats_and_levels() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let config = ConfigBuilder::new(&pki, &db).build();

    for (args, env) in [
        (&["--log-format", "json"][..], &[][..]),
        (&[][..], &[("PGMOAT_LOG_FORMAT", "json")][..]),
    ] {
        let (child, _dir, log) = spawn_with(&config, args, env);
        let text = stop(child, &log);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty());
        for line in &lines {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            assert!(value["level"].is_string(), "{line}");
            assert!(value["fields"]["message"].is_string(), "{line}");
        }
        assert!(
            lines
                .iter()
                .any(|l| l.contains("pgmoat is accepting connections")),
            "{text}"
        );
    }

    let (child, _dir, log) = spawn_with(&config, &[], &[]);
    let text = stop(child, &log);
    assert!(text.contains("pgmoat is accepting connections"), "{text}");
    assert!(
        text.lines().all(|l| !l.starts_with('{')),
        "text is the default: {text}"
    );

    let (child, _dir, log) = spawn_with(&config, &[], &[("RUST_LOG", "warn")]);
    let text = stop(child, &log);
    assert!(!text.contains("accepting connections"), "{text}");
    assert!(!text.contains("DEBUG"), "{text}");
}

/// The pgbench script: a transaction of several statements, each sent on its own (`-M simple`),
/// with a wait on an advisory lock in the middle that the test can hold to keep transactions
/// open at the moment of the SIGTERM. Every committed transaction leaves exactly two rows
/// (parts 'a' and 'b') with its txid.
const LEDGER_SCRIPT: &str = "\
BEGIN;
INSERT INTO ledger (tx, part) VALUES (txid_current(), 'a');
SELECT pg_advisory_xact_lock_shared(4242);
INSERT INTO ledger (tx, part) VALUES (txid_current(), 'b');
END;
";

/// The first number after `label` in pgbench's output.
fn pgbench_number(text: &str, label: &str) -> u64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("pgbench printed no {label:?}:\n{text}"));
    text[at + label.len()..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no number after {label:?}:\n{text}"))
}

/// The drain contract (src/lifecycle.rs, src/frontend/session.rs): after SIGTERM, a client
/// *between* transactions is refused its next one (FATAL 57P01 "pgmoat is shutting down", or
/// the connection closes), while a transaction in flight keeps its server until it ends. So
/// pgbench may lose connections only at the first command of its script (BEGIN, which starts
/// nothing), never in the middle of a transaction; every transaction pgbench counted as
/// processed committed (two ledger rows), nothing else committed, none was left half-done, and
/// the transactions that were open when the drain began committed too.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_pgbench_load_breaks_no_transaction_in_flight() {
    let mut s = setup(|b| {
        b.set("shutdown_timeout", "60")
            .set("default_pool_size", "4")
    });
    s.db.sql(
        APP_DB,
        "CREATE TABLE ledger (tx bigint NOT NULL, part text NOT NULL,
                              at timestamptz NOT NULL DEFAULT clock_timestamp());
         GRANT ALL ON TABLE ledger TO PUBLIC;",
    );
    let script = s.pgmoat.dir().join("ledger.sql");
    fs::write(&script, LEDGER_SCRIPT).unwrap();
    let conn = conninfo(
        s.pgmoat.port(),
        "alice",
        APP_DB,
        &[
            ("sslmode", "verify-full"),
            ("sslrootcert", s.pki.ca.to_str().unwrap()),
            ("password", ALICE_PASSWORD),
        ],
    );
    let bench = {
        let script = script.to_str().unwrap().to_owned();
        std::thread::spawn(move || {
            pgbench(
                &[
                    "-n", "-f", &script, "-c", "6", "-j", "2", "-T", "120", "-M", "simple",
                ],
                &conn,
            )
        })
    };
    let committed = |db: &TestDb| db.count("SELECT count(*) FROM ledger WHERE part = 'b'");
    wait_until(
        "pgbench commits through pgmoat",
        Duration::from_secs(60),
        || committed(&s.db) >= 100,
    );

    // Hold the lock the script waits on, straight on PostgreSQL: the transactions that start
    // now stay open after their first INSERT, so some are certainly in flight at the SIGTERM.
    let locker = connect(
        s.db.port(),
        "alice",
        Some(ALICE_PASSWORD),
        APP_DB,
        Some(tls_client_config(&s.pki.ca, None)),
    )
    .await
    .unwrap();
    locker
        .batch_execute("SELECT pg_advisory_lock(4242)")
        .await
        .unwrap();
    let blocked = |db: &TestDb| {
        db.count(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'alice' \
             AND wait_event_type = 'Lock' AND wait_event = 'advisory' \
             AND xact_start IS NOT NULL",
        )
    };
    wait_until(
        "all 4 servers to hold a transaction waiting on the lock",
        Duration::from_secs(30),
        || blocked(&s.db) == 4,
    );

    s.pgmoat.signal("INT");
    s.pgmoat
        .wait_for_log("SIGINT: shutting down", Duration::from_secs(10));
    s.wait_refused();
    // The open transactions are still there, waiting: the drain did not break them.
    assert_eq!(blocked(&s.db), 4, "{}", s.pgmoat.log());
    let drain_began = s.db.sql(APP_DB, "SELECT clock_timestamp()");
    locker
        .batch_execute("SELECT pg_advisory_unlock(4242)")
        .await
        .unwrap();

    let status = s
        .pgmoat
        .wait_exit(Duration::from_secs(90))
        .expect("pgmoat exits once the transactions in flight ended");
    assert!(status.success(), "{status}\n{}", s.pgmoat.log());
    let log = s.pgmoat.log();
    assert!(log.contains("all clients finished"), "{log}");
    assert!(!log.contains("shutdown_timeout reached"), "{log}");

    let out = bench.join().unwrap();
    let text = output_text(&out);
    let processed = pgbench_number(&text, "number of transactions actually processed:");
    assert_eq!(
        pgbench_number(&text, "number of failed transactions:"),
        0,
        "{text}"
    );
    // Every client ended by losing its connection (pgmoat exited) and only ever at BEGIN.
    let aborts: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("aborted in command"))
        .collect();
    assert_eq!(aborts.len(), 6, "one abort per client:\n{text}");
    for line in &aborts {
        assert!(
            line.contains("aborted in command 0 "),
            "a transaction was broken mid-way: {line}\n{text}"
        );
    }

    assert_eq!(
        committed(&s.db) as u64,
        processed,
        "what pgbench counted is what committed\n{text}"
    );
    assert_eq!(
        s.db.count(
            "SELECT count(*) FROM (SELECT tx FROM ledger GROUP BY tx \
             HAVING count(*) FILTER (WHERE part = 'a') <> 1 \
                 OR count(*) FILTER (WHERE part = 'b') <> 1) AS odd"
        ),
        0,
        "no transaction is half-done"
    );
    let after_drain = s.db.count(&format!(
        "SELECT count(*) FROM ledger WHERE part = 'b' AND at > '{}'",
        drain_began.trim()
    ));
    assert!(
        after_drain >= 4,
        "the transactions open at the SIGTERM committed during the drain ({after_drain})"
    );
}
