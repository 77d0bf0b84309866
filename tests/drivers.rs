//! Real drivers beyond Rust, where the driver is the point: asyncpg (named prepared
//! statements everywhere, a client-side pool larger than pgmoat's) and psycopg 3 (libpq:
//! prepare=True, executemany in pipeline mode, COPY) through pgmoat in transaction mode, with
//! verify-full TLS. The scripts live in tests/drivers/; they run in a venv at
//! target/driver-venv, made once from tests/drivers/requirements.txt (.ci/run makes it too).

mod support;

use std::fs::File;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a driver script against pgmoat; kills it after `limit`.
fn run_script(python: &Path, script: &str, moat: &Pgmoat, pki: &Pki, limit: Duration) -> Output {
    let script = root().join("tests").join("drivers").join(script);
    let stem = script.file_stem().unwrap().to_string_lossy().into_owned();
    // Files, not pipes: a chatty script cannot block on a full pipe while we wait.
    let out_path = moat.dir().join(format!("{stem}.out"));
    let err_path = moat.dir().join(format!("{stem}.err"));
    let mut child = Command::new(python)
        .arg(&script)
        .env("PGMOAT_PORT", moat.port().to_string())
        .env("PGMOAT_CA", &pki.ca)
        .env("PGMOAT_PASSWORD", ALICE_PASSWORD)
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("PGSSLMODE")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    let status = wait_child_exit(&mut child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        child.wait().unwrap()
    });
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

fn transaction_pool(pki: &Pki, db: &TestDb, size: usize) -> Pgmoat {
    Pgmoat::start(
        &ConfigBuilder::new(pki, db)
            .set_str("pool_mode", "transaction")
            .set("default_pool_size", &size.to_string())
            .set("max_client_conn", "100")
            .build(),
    )
}

#[test]
fn asyncpg_pool_of_20_over_4_backends() {
    let python = venv_python();
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = transaction_pool(&pki, &db, 4);
    let out = run_script(
        &python,
        "asyncpg_pool.py",
        &moat,
        &pki,
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "{}\n--- pgmoat log tail ---\n{}",
        output_text(&out),
        log_tail(&moat)
    );
    assert_eq!(db.count("SELECT count(*) FROM items"), 200 * 4);
    assert!(db.backends_of("alice") <= 4);
}

#[test]
fn psycopg_prepared_executemany_and_copy_over_3_backends() {
    let python = venv_python();
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = transaction_pool(&pki, &db, 3);
    let out = run_script(
        &python,
        "psycopg_checks.py",
        &moat,
        &pki,
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "{}\n--- pgmoat log tail ---\n{}",
        output_text(&out),
        log_tail(&moat)
    );
    assert_eq!(db.count("SELECT count(*) FROM items"), 8 * (50 + 100));
    assert!(db.backends_of("alice") <= 3);
}

/// The end of pgmoat's (debug-level, long) log.
fn log_tail(moat: &Pgmoat) -> String {
    let log = moat.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

/// pgjdbc (Debian's libpostgresql-jdbc-java) with prepareThreshold=1: named server-side
/// statements from 12 connections over 3 backends, and a prepared INSERT in a transaction.
#[test]
fn pgjdbc_named_statements_over_3_backends() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = transaction_pool(&pki, &db, 3);
    run_java("PgjdbcCheck.java", &moat, &pki);
    assert_eq!(
        db.count("SELECT count(*) FROM items WHERE v LIKE 'pgjdbc-%'"),
        12 * 10
    );
    assert!(db.backends_of("alice") <= 3);
}

/// The session state a new user tries first (tests/drivers/psycopg_session_state.py and
/// PgjdbcSessionState.java): SET ROLE and search_path stay with their connection, a temp table,
/// an advisory lock, LISTEN, SQL PREPARE and a WITH HOLD cursor survive their transaction for
/// their owner only, notifications arrive while idle, and a cancel stops only its own query.
fn session_state_pool(pki: &Pki, db: &TestDb) -> Pgmoat {
    db.sql(
        APP_DB,
        "CREATE ROLE tenant_a; GRANT tenant_a TO alice; GRANT TEMPORARY ON DATABASE app TO alice",
    );
    transaction_pool(pki, db, 2)
}

#[test]
fn psycopg_session_state_follows_its_connection() {
    let python = venv_python();
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = session_state_pool(&pki, &db);
    let out = run_script(
        &python,
        "psycopg_session_state.py",
        &moat,
        &pki,
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}\n--- pgmoat log tail ---\n{}",
        output_text(&out),
        log_tail(&moat)
    );
}

#[test]
fn pgjdbc_session_state_follows_its_connection() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = session_state_pool(&pki, &db);
    run_java("PgjdbcSessionState.java", &moat, &pki);
}

/// Runs a single-file Java program of tests/drivers with pgjdbc (Debian's
/// libpostgresql-jdbc-java) against `moat`; panics with its output and pgmoat's log on failure.
fn run_java(program: &str, moat: &Pgmoat, pki: &Pki) {
    let jar = Path::new("/usr/share/java/postgresql.jar");
    assert!(
        jar.exists(),
        "pgjdbc is missing: apt-get install -y libpostgresql-jdbc-java default-jre-headless \
         (.ci/run does this)"
    );
    let source = root().join("tests").join("drivers").join(program);
    let out = Command::new("java")
        .arg("-cp")
        .arg(jar)
        .arg(&source)
        .arg(moat.port().to_string())
        .arg(&pki.ca)
        .arg(ALICE_PASSWORD)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running java (apt-get install -y default-jre-headless): {e}"));
    assert!(
        out.status.success(),
        "{}\n--- pgmoat log tail ---\n{}",
        output_text(&out),
        log_tail(moat)
    );
}
