//! pgmoat in front of a primary and a synchronous streaming standby: host lists with
//! target_session_attrs, a failover under writing clients that keep their connections, and
//! the old primary back as a standby.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::*;

/// Writers of the Python driver (psycopg, one connection each, never reconnecting).
const WRITERS: usize = 8;

/// pgmoat with `app` (read-write) and `app_ro` (standby) on both hosts, each host checked
/// against its own certificate (the primary's names 127.0.0.1, the standby's only 127.0.0.2).
fn config(pki: &Pki, pair: &HaPair, metrics_port: u16) -> String {
    let hosts = format!(
        "host = \"{},{}\"\nport = \"{},{}\"",
        pair.primary.host(),
        pair.standby.host(),
        pair.primary.port(),
        pair.standby.port()
    );
    ConfigBuilder::new(pki, &pair.primary)
        .set("server_login_retry", "0.2")
        .set("server_connect_timeout", "2")
        .set("query_wait_timeout", "30")
        .set("default_pool_size", "20")
        .set_str("metrics_addr", &format!("127.0.0.1:{metrics_port}"))
        .set("admin_users", "[\"alice\"]")
        .server_host(pair.primary.host())
        .database_line("target_session_attrs = \"read-write\"")
        .line("")
        .line("[databases.app_ro]")
        .line(&hosts)
        .line("dbname = \"app\"")
        .line("target_session_attrs = \"standby\"")
        .line("")
        .line("[databases.app_pref]")
        .line(&hosts)
        .line("dbname = \"app\"")
        .line("target_session_attrs = \"prefer-standby\"")
        .build()
        // The builder writes one host; the entry gets the list.
        .replacen(
            &format!(
                "host = \"{}\"\nport = {}",
                pair.primary.host(),
                pair.primary.port()
            ),
            &hosts,
            1,
        )
}

fn moat_conninfo(moat: &Pgmoat, pki: &Pki, db: &str) -> String {
    verified_conninfo(moat.port(), pki, "alice", db)
}

/// `SELECT pg_is_in_recovery(), inet_server_addr()` through pgmoat with psql.
fn where_am_i(moat: &Pgmoat, pki: &Pki, db: &str) -> String {
    let out = psql(
        &[
            "-Atc",
            "SELECT pg_is_in_recovery() || ' ' || host(inet_server_addr())",
        ],
        &moat_conninfo(moat, pki, db),
    );
    assert!(
        out.status.success(),
        "psql {db}: {}\n{}",
        output_text(&out),
        moat.log()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// psql as a writer that keeps its one connection: fed an INSERT every 50 ms on stdin
/// until `stop`, printing the ids it saw committed (autocommit, so each is committed when
/// psql prints it); errors go to stderr and psql goes on.
fn psql_writer(conninfo: &str, stop: Arc<AtomicBool>) -> (Collected, std::thread::JoinHandle<()>) {
    let mut cmd = Command::new("psql");
    libpq_clean_env(&mut cmd);
    let mut child = cmd
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=0", conninfo])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting psql");
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            let id = 900_000_000 + seq;
            let line = format!(
                "INSERT INTO ledger (id, client, v) VALUES ({id}, 99, 'psql') RETURNING id;\n"
            );
            if stdin.write_all(line.as_bytes()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Dropping stdin ends psql.
    });
    (collect(child), feeder)
}

/// Runs `sql` on `cluster` until it returns `expected`.
fn wait_sql(cluster: &pgmoat::pgcluster::PgCluster, sql: &str, expected: &str, secs: u64) {
    wait_for_sql(cluster, APP_DB, sql, expected, Duration::from_secs(secs));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_under_writers_loses_nothing_committed_and_clients_carry_on() {
    let pki = Pki::new();
    let mut pair = HaPair::start(&pki);
    // When each row was written, by the server's clock, to tell rows after the switch.
    pair.primary.sql(
        APP_DB,
        "ALTER TABLE ledger ADD COLUMN at timestamptz NOT NULL DEFAULT clock_timestamp()",
    );
    let metrics_port = free_port();
    let moat = Pgmoat::start(&config(&pki, &pair, metrics_port));

    // Before: writes go to the primary, app_ro reads from the standby, both verified.
    assert_eq!(where_am_i(&moat, &pki, "app"), "false 127.0.0.1");
    assert_eq!(where_am_i(&moat, &pki, "app_ro"), "true 127.0.0.2");
    assert_eq!(where_am_i(&moat, &pki, "app_pref"), "true 127.0.0.2");

    let stop_file = pki.dir.path().join("stop-writers");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers/failover_writers.py");
    let writers = Command::new(venv_python())
        .arg(&script)
        .arg(moat_conninfo(&moat, &pki, "app"))
        .arg("--clients")
        .arg(WRITERS.to_string())
        .arg("--stop-file")
        .arg(&stop_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the writers");
    let writers = collect(writers);
    let stop_psql = Arc::new(AtomicBool::new(false));
    let (psql_child, feeder) = psql_writer(&moat_conninfo(&moat, &pki, "app"), stop_psql.clone());

    // Every writer (and psql, client 99) commits on the primary first.
    wait_sql(
        &pair.primary,
        "SELECT count(DISTINCT client) FROM ledger",
        &(WRITERS + 1).to_string(),
        30,
    );
    let mark = moat.log_mark();
    pair.primary.stop_immediate().unwrap();
    pair.standby.promote().unwrap();
    let promoted_at = sql_on(&pair.standby, APP_DB, "SELECT clock_timestamp()");
    let switched = Instant::now();

    // Every client commits again on the new primary, on the connection it had.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let again = sql_on(
            &pair.standby,
            APP_DB,
            &format!(
                "SELECT string_agg(DISTINCT client::text, ',') FROM ledger WHERE at > '{promoted_at}'"
            ),
        );
        if again.split(',').count() == WRITERS + 1 {
            break;
        }
        if Instant::now() > deadline {
            std::fs::write(&stop_file, b"").unwrap();
            stop_psql.store(true, Ordering::Relaxed);
            let console = moat_console(&moat, &pki, "alice").await;
            let clients = console.simple_query("SHOW CLIENTS").await.unwrap();
            let rows: Vec<String> = clients
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(format!(
                        "{} {} {}",
                        r.get("id").unwrap_or(""),
                        r.get("state").unwrap_or(""),
                        r.get("lifecycle").unwrap_or("")
                    )),
                    _ => None,
                })
                .collect();
            let writers_out = wait_output(writers, "the writers", false);
            panic!(
                "only clients {again} wrote after the promotion\nclients: {rows:?}\nwriters: {writers_out}\n{}",
                moat.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "all clients wrote again {:?} after the promotion",
        switched.elapsed()
    );
    moat.wait_for_log_since(mark, "host role changed", Duration::from_secs(10));

    std::fs::write(&stop_file, b"").unwrap();
    stop_psql.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    let psql_out = wait_output(psql_child, "psql", false);
    let writers_out = wait_output(writers, "the writers", true);
    let report: serde_json::Value =
        serde_json::from_str(writers_out.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("the writers' report: {e}\n{writers_out}"));

    // Nothing reported committed is lost: every id is on the new primary.
    let mut committed: Vec<i64> = Vec::new();
    let mut per_client: BTreeMap<String, usize> = BTreeMap::new();
    for (client, ids) in report["committed"].as_object().expect("committed ids") {
        let ids: Vec<i64> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().or_else(|| v[0].as_i64()).unwrap())
            .collect();
        per_client.insert(client.clone(), ids.len());
        committed.extend(ids);
    }
    let psql_ids: Vec<i64> = psql_out
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(!psql_ids.is_empty(), "psql committed nothing: {psql_out}");
    committed.extend(&psql_ids);
    assert_eq!(per_client.len(), WRITERS, "{report}");
    let list = committed
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let found = sql_on(
        &pair.standby,
        APP_DB,
        &format!("SELECT count(*) FROM ledger WHERE id IN ({list})"),
    );
    assert_eq!(
        found,
        committed.len().to_string(),
        "committed ids missing after the failover"
    );

    eprintln!("writers' errors: {}", report["errors"]);
    // Errors only around the switch: a few per client, none closed its connection.
    for (client, errors) in report["errors"].as_object().expect("errors") {
        let errors = errors.as_array().unwrap();
        assert!(errors.len() <= 5, "client {client}: {errors:?}");
    }
    for (client, closed) in report["closed"].as_object().into_iter().flatten() {
        assert_ne!(
            closed,
            &serde_json::Value::Bool(true),
            "client {client} lost its connection"
        );
    }

    let metrics = http_fetch(metrics_port, "/metrics").await;
    for line in [
        "pgmoat_host_role_changes_total{host=\"127.0.0.2:",
        "pgmoat_host_up{host=\"127.0.0.1:",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let standby_changes = metrics
        .lines()
        .find(|l| l.starts_with("pgmoat_host_role_changes_total{host=\"127.0.0.2:"))
        .unwrap();
    assert!(standby_changes.ends_with(" 1"), "{standby_changes}");
    let old_primary_up = metrics
        .lines()
        .find(|l| l.starts_with("pgmoat_host_up{host=\"127.0.0.1:"))
        .unwrap();
    assert!(old_primary_up.ends_with(" 0"), "{old_primary_up}");

    // With no standby left, prefer-standby takes the primary.
    assert_eq!(where_am_i(&moat, &pki, "app_pref"), "false 127.0.0.2");

    // pgmoat knows what happened: the standby is the primary now.
    let console = moat_console(&moat, &pki, "alice").await;
    let hosts = console.simple_query("SHOW HOSTS").await.unwrap();
    let rows: Vec<(String, String, String)> = hosts
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                r.get("host").unwrap().to_owned(),
                r.get("status").unwrap().to_owned(),
                r.get("role_changes").unwrap().to_owned(),
            )),
            _ => None,
        })
        .collect();
    assert!(
        rows.contains(&("127.0.0.2".into(), "primary".into(), "1".into())),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|(h, s, _)| h == "127.0.0.1" && s == "down"),
        "{rows:?}"
    );

    // The old primary back, as a standby of the new one: writes still go to the new
    // primary, and the standby entry reads from the old primary now.
    pair.primary
        .cluster
        .rebuild_as_standby_of(&pair.standby)
        .unwrap();
    console.simple_query("RECONNECT").await.unwrap();
    for n in 0..5 {
        let out = psql(
            &[
                "-Atc",
                &format!(
                    "INSERT INTO ledger (id, client, v) VALUES ({}, 0, 'after') \
                     RETURNING pg_is_in_recovery() || ' ' || host(inet_server_addr())",
                    800_000_000 + n
                ),
            ],
            &moat_conninfo(&moat, &pki, "app"),
        );
        assert!(
            out.status.success(),
            "a write after the old primary came back: {}",
            output_text(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.lines().next(), Some("false 127.0.0.2"), "{stdout}");
    }
    // The standby entry's server on the new primary is retired (in_hot_standby turned off)
    // and a new login finds the rebuilt standby.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = where_am_i(&moat, &pki, "app_ro");
        if seen == "true 127.0.0.1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "app_ro still reads from {seen}\n{}",
            moat.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = psql(
        &[
            "-Atc",
            "INSERT INTO ledger (id, client, v) VALUES (1, 0, 'ro') RETURNING id",
        ],
        &moat_conninfo(&moat, &pki, "app_ro"),
    );
    assert!(
        !out.status.success(),
        "a write went through the standby entry"
    );
    assert!(
        output_text(&out).contains("read-only"),
        "{}",
        output_text(&out)
    );
}

/// A child whose output is read as it comes (a full pipe would stall it).
struct Collected {
    child: Child,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

fn collect(mut child: Child) -> Collected {
    fn reader(pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut text = String::new();
            for line in std::io::BufReader::new(pipe).lines() {
                text.push_str(&line.unwrap_or_default());
                text.push('\n');
            }
            text
        })
    }
    let stdout = reader(child.stdout.take().unwrap());
    let stderr = reader(child.stderr.take().unwrap());
    Collected {
        child,
        stdout,
        stderr,
    }
}

/// Waits (bounded) for a child to exit and returns its stdout; fails with its stderr when
/// `must_succeed`.
fn wait_output(mut c: Collected, what: &str, must_succeed: bool) -> String {
    let status = wait_child_exit(&mut c.child, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{what} did not stop"));
    let out = c.stdout.join().unwrap();
    let err = c.stderr.join().unwrap();
    eprintln!("--- {what} stderr ---\n{err}");
    assert!(
        status.success() || !must_succeed,
        "{what} failed ({status}): {err}"
    );
    out
}

/// The first column of the first row `sql` returns through `client`, or its error's SQLSTATE.
async fn value_or_code(client: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
    match client.simple_query(sql).await {
        Ok(messages) => Ok(messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .unwrap_or_default()),
        Err(e) => Err(e
            .code()
            .map(|c| c.code().to_owned())
            .unwrap_or(format!("{e:?}"))),
    }
}

/// One row of SHOW HOSTS: (status, role_changes) of `host`.
async fn host_row(console: &tokio_postgres::Client, host: &str) -> (String, String) {
    let rows = console.simple_query("SHOW HOSTS").await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get("host") == Some(host) => Some((
                r.get("status").unwrap().to_owned(),
                r.get("role_changes").unwrap().to_owned(),
            )),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{host} not in SHOW HOSTS"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_error_is_confirmed_before_a_primary_is_given_up() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .server_host("127.0.0.1")
            .set("server_login_retry", "0.2")
            .set("query_wait_timeout", "2")
            .set("admin_users", "[\"alice\"]")
            .database_line("pool_size = 1")
            .database_line("target_session_attrs = \"read-write\"")
            .build(),
    );
    let client = moat_client(&moat, &pki, "alice").await;
    let console = moat_console(&moat, &pki, "alice").await;
    let pid = value_or_code(&client, "SELECT pg_backend_pid()")
        .await
        .unwrap();
    assert_eq!(
        host_row(&console, "127.0.0.1").await,
        ("primary".into(), "0".into())
    );

    // The client's own read-only transaction raises 25006 on a primary: asked, confirmed
    // writable, and the server is reused.
    client.batch_execute("BEGIN READ ONLY").await.unwrap();
    let err = value_or_code(&client, "INSERT INTO items (v) VALUES ('x') RETURNING id").await;
    assert_eq!(err, Err("25006".into()));
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        value_or_code(&client, "SELECT pg_backend_pid()").await,
        Ok(pid.clone())
    );
    assert_eq!(
        host_row(&console, "127.0.0.1").await,
        ("primary".into(), "0".into())
    );

    // Fenced server-wide (what some HA tools do to an old primary): the next 25006 is
    // confirmed, the server is closed, and no server suits read-write until it is lifted.
    db.sql(
        "postgres",
        "ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf();",
    );
    wait_for_sql(
        &db,
        "postgres",
        "SELECT reset_val FROM pg_settings WHERE name = 'default_transaction_read_only'",
        "on",
        Duration::from_secs(10),
    );
    let mark = moat.log_mark();
    let err = value_or_code(&client, "INSERT INTO items (v) VALUES ('x') RETURNING id").await;
    assert_eq!(err, Err("25006".into()));
    // tokio-postgres returns at the ErrorResponse, so a query sent now could still be
    // pipelined onto the same server before pgmoat asks it again: wait for the verdict.
    moat.wait_for_log_since(mark, "host role changed", Duration::from_secs(10));
    let refused = value_or_code(&client, "SELECT 1").await;
    assert_eq!(refused, Err("08001".into()), "{}", moat.log());
    assert_eq!(
        host_row(&console, "127.0.0.1").await,
        ("primary (read-only)".into(), "1".into())
    );
    assert!(moat.log().contains("no suitable server"), "{}", moat.log());

    db.sql(
        "postgres",
        "ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf();",
    );
    wait_for_sql(
        &db,
        "postgres",
        "SELECT reset_val FROM pg_settings WHERE name = 'default_transaction_read_only'",
        "off",
        Duration::from_secs(10),
    );
    let id = value_or_code(&client, "INSERT INTO items (v) VALUES ('y') RETURNING id").await;
    assert!(id.is_ok(), "{id:?}\n{}", moat.log());
    assert_ne!(
        value_or_code(&client, "SELECT pg_backend_pid()").await,
        Ok(pid)
    );
    assert_eq!(
        host_row(&console, "127.0.0.1").await,
        ("primary".into(), "2".into())
    );
}
