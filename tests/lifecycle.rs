//! Stopping pgmoat: SIGTERM / SIGINT and the console's SHUTDOWN stop accepting, let the
//! transactions in flight finish within shutdown_timeout and exit; a second signal exits at
//! once. And the log formats: readable text by default, JSON lines with --log-format json or
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
async fn sigterm_lets_the_transaction_in_flight_commit_then_exits() {
    let mut s = setup(|b| b.set("shutdown_timeout", "20"));
    let busy = s.client(APP_DB).await;
    let idle = s.client(APP_DB).await;
    idle.batch_execute("SELECT 1").await.unwrap();
    busy.batch_execute("BEGIN; INSERT INTO items (v) VALUES ('drained')")
        .await
        .unwrap();

    s.pgmoat.signal("TERM");
    s.pgmoat
        .wait_for_log("SIGTERM: shutting down", Duration::from_secs(10));
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
async fn console_shutdown_drains_like_sigterm() {
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
    s.pgmoat.signal("TERM");
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
