//! Rolling upgrade with so_reuseport: a second pgmoat starts on the port of the first, the
//! first gets SIGTERM, stops accepting, serves its clients until they leave and exits; the
//! clients (pgbench opening a connection per transaction, a psycopg pool recycling its
//! connections) see no failed transaction.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn config(pki: &Pki, db: &TestDb) -> String {
    ConfigBuilder::new(pki, db)
        .set("so_reuseport", "true")
        .set("shutdown_timeout", "30")
        .build()
}

fn client_conninfo(port: u16, pki: &Pki) -> String {
    verified_conninfo(port, pki, "alice", APP_DB)
}

/// Logins the instance has served so far.
fn logins(moat: &Pgmoat) -> usize {
    moat.log().matches("client logged in").count()
}

fn wait_logins(moat: &Pgmoat, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while logins(moat) < at_least {
        assert!(
            Instant::now() < deadline,
            "only {} logins\n{}",
            logins(moat),
            moat.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the new process on the old one's port and SIGTERMs the old one; returns the new
/// one once the old one has exited, having let its clients go.
fn replace(old: &mut Pgmoat, config: &str) -> Pgmoat {
    let new = Pgmoat::start_on(old.port(), config, &[]);
    let before = logins(&new);
    old.signal("TERM");
    let status = old
        .wait_exit(Duration::from_secs(25))
        .unwrap_or_else(|| panic!("the old process did not exit\n{}", old.log()));
    assert!(status.success(), "{status}");
    assert!(
        old.log().contains("all clients left"),
        "the old process waited out shutdown_timeout instead of its clients\n{}",
        old.log()
    );
    // New connections went to the new process meanwhile.
    wait_logins(&new, before + 1);
    new
}

#[test]
fn a_rolling_upgrade_under_pgbench_with_a_connection_per_transaction_fails_nothing() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let config = config(&pki, &db);
    let mut old = Pgmoat::start(&config);
    let script = pki.dir.path().join("tx.sql");
    std::fs::write(
        &script,
        "BEGIN;\nSELECT 1;\nSELECT pg_backend_pid();\nCOMMIT;\n",
    )
    .unwrap();
    let mut cmd = Command::new("pgbench");
    libpq_clean_env(&mut cmd);
    let bench = cmd
        .args(["-n", "-C", "-c", "4", "-j", "2", "-T", "8", "-f"])
        .arg(&script)
        .arg(client_conninfo(old.port(), &pki))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting pgbench");
    wait_logins(&old, 20);
    let new = replace(&mut old, &config);
    let out = bench.wait_with_output().unwrap();
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "pgbench failed:\n{text}\n{}",
        new.log()
    );
    assert!(text.contains("number of failed transactions: 0"), "{text}");
    let done: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(done > 20, "{text}");
}

#[test]
fn a_rolling_upgrade_under_a_psycopg_pool_fails_nothing() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let config = config(&pki, &db);
    let mut old = Pgmoat::start(&config);
    let stop = pki.dir.path().join("stop-pool");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers/psycopg_pool_load.py");
    let load = Command::new(venv_python())
        .arg(&script)
        .arg(client_conninfo(old.port(), &pki))
        .arg(&stop)
        // Below shutdown_timeout: the pool's connections leave the old process by themselves.
        .arg("2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_logins(&old, 4);
    let new = replace(&mut old, &config);
    // The pool goes on against the new process for a while.
    let served = logins(&new);
    wait_logins(&new, served + 4);
    std::fs::write(&stop, b"").unwrap();
    let out = load.wait_with_output().unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let report = last_json_line(&out);
    assert_eq!(report["failed"], 0, "{report}\n{}", new.log());
    assert!(report["ok"].as_u64().unwrap() > 50, "{report}");
}
