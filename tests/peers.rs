//! Several pgmoat instances with peers behind HAProxy in TCP mode (round robin): a client's
//! cancel lands on any instance and still cancels its own query, and nobody else's; a peer
//! that cannot be reached costs a logged, counted failure and nothing else.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// HAProxy in TCP mode on a free loopback port, round robin over `backends`.
struct Balancer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Balancer {
    fn start(backends: &[u16]) -> Balancer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, p)| format!("    server moat{i} 127.0.0.1:{p}\n"))
            .collect();
        let config = format!(
            "global\n    maxconn 2000\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    \
             timeout client 120s\n    timeout server 120s\n\nfrontend clients\n    bind \
             127.0.0.1:{port}\n    default_backend moats\n\nbackend moats\n    balance \
             roundrobin\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting haproxy (apt-get install haproxy)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Balancer {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `count` instances with peer ids 1..=count, each knowing all; `extra` is appended to the
/// peers list (say, a peer nobody runs).
/// Each instance also serves /metrics on the port at its index in `metrics`, if any.
fn start_peers(pki: &Pki, db: &TestDb, count: u16, extra: &str, metrics: &[u16]) -> Vec<Pgmoat> {
    let base = ConfigBuilder::new(pki, db)
        .set("admin_users", "[\"alice\"]")
        .build();
    let moats: Vec<Pgmoat> = (1..=count)
        .map(|id| {
            let mut env = vec![("PGMOAT_PEER_ID", id.to_string())];
            if let Some(port) = metrics.get(usize::from(id - 1)) {
                env.push(("PGMOAT_METRICS_ADDR", format!("127.0.0.1:{port}")));
            }
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Pgmoat::start_with_env(&base, &env)
        })
        .collect();
    let mut peers = String::new();
    for (i, moat) in moats.iter().enumerate() {
        peers.push_str(&format!(
            "\n[peers.{}]\nhost = \"127.0.0.1\"\nport = {}\n",
            i + 1,
            moat.port()
        ));
    }
    peers.push_str(extra);
    for moat in &moats {
        moat.rewrite_config(&format!("{base}{peers}"));
        moat.sighup_and_wait_reloaded(Duration::from_secs(10));
    }
    moats
}

fn lb_conninfo(port: u16, pki: &Pki) -> String {
    verified_conninfo(port, pki, "alice", APP_DB)
}

/// Sessions running `sql` right now that started it after `since` (a server timestamp: a
/// backend whose last query was just canceled may show it active for a moment longer).
fn running_since(db: &TestDb, sql: &str, since: &str) -> usize {
    db.sql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '{}' AND query_start > '{since}'",
            sql.replace('\'', "''")
        ),
    )
    .parse()
    .unwrap()
}

fn running(db: &TestDb, sql: &str) -> usize {
    running_since(db, sql, "-infinity")
}

fn now(db: &TestDb) -> String {
    db.sql("postgres", "SELECT clock_timestamp()")
}

fn wait_running(db: &TestDb, sql: &str, n: usize, since: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while running_since(db, sql, since) != n {
        assert!(
            Instant::now() < deadline,
            "{n} sessions never ran {sql:?} (now {})",
            running_since(db, sql, since)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

const SLEEP: &str = "SELECT pg_sleep(30)";

/// Cancels the instances forwarded to the peer that issued their key.
fn forwarded(moats: &[Pgmoat]) -> usize {
    moats
        .iter()
        .map(|m| {
            m.log()
                .matches("cancel request forwarded to its peer")
                .count()
        })
        .sum()
}

/// psql runs SLEEP on a new connection and gets Ctrl-C (SIGINT) once PostgreSQL shows the
/// query running; its cancel request goes to the same address on a new connection. Returns
/// how long the query took to end after the signal; panics unless it was canceled.
fn psql_cancel_round(db: &TestDb, conninfo: &str, round: usize) -> Duration {
    let since = now(db);
    let mut cmd = Command::new("psql");
    libpq_clean_env(&mut cmd);
    let mut child = cmd
        .args(["-X", "-c", SLEEP, conninfo])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_running(db, SLEEP, 1, &since);
    let sent = Instant::now();
    send_signal(child.id(), "INT");
    let status = wait_child_exit(&mut child, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("round {round}: psql's query was not canceled"));
    let took = sent.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "round {round}: {stderr}");
    assert!(
        stderr.contains("canceling statement due to user request"),
        "round {round}: {stderr}"
    );
    took
}
const BYSTANDER: &str = "SELECT pg_sleep(120) /* bystander */";
const PSQL_CANCELS: usize = 100;
const PSYCOPG_CANCELS: usize = 100;

#[test]
fn cancels_through_a_load_balancer_reach_their_own_query_and_nobody_elses() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moats = start_peers(&pki, &db, 3, "", &[]);
    let lb = Balancer::start(&moats.iter().map(Pgmoat::port).collect::<Vec<_>>());
    let conninfo = lb_conninfo(lb.port, &pki);

    // Bystanders, one per instance (round robin): their queries must outlive every cancel.
    let bystanders: Vec<Child> = (0..3)
        .map(|_| {
            let mut cmd = Command::new("psql");
            libpq_clean_env(&mut cmd);
            cmd.args(["-X", "-c", BYSTANDER, &conninfo])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    wait_running(&db, BYSTANDER, 3, "-infinity");

    // psql: a new connection each time, so each lands on the next instance; its Ctrl-C
    // (SIGINT) cancel request then lands on another one.
    for round in 0..PSQL_CANCELS {
        let took = psql_cancel_round(&db, &conninfo, round);
        assert!(
            took < Duration::from_secs(2),
            "round {round}: the cancel took {took:?}"
        );
    }
    assert_eq!(
        running(&db, BYSTANDER),
        3,
        "a bystander's query was canceled"
    );

    // psycopg: one connection, its cancel() again and again through the balancer.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers/psycopg_cancels.py");
    let out = Command::new(venv_python())
        .arg(&script)
        .arg(&conninfo)
        .arg(PSYCOPG_CANCELS.to_string())
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let report = last_json_line(&out);
    assert_eq!(report["canceled"], PSYCOPG_CANCELS, "{report}");
    assert!(report["slowest"].as_f64().unwrap() < 2.0, "{report}");
    assert_eq!(
        running(&db, BYSTANDER),
        3,
        "a bystander's query was canceled"
    );

    // Forwarding did happen: the balancer sent most cancels to an instance that did not
    // hold the client.
    let forwarded = forwarded(&moats);
    assert!(
        forwarded >= (PSQL_CANCELS + PSYCOPG_CANCELS) / 3,
        "forwarded {forwarded}"
    );
    db.sql(
        "postgres",
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%bystander%' AND pid <> pg_backend_pid()",
    );
    for mut child in bystanders {
        let _ = wait_child_exit(&mut child, Duration::from_secs(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_peer_costs_a_counted_failure_and_nothing_else() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let nobody = free_port();
    let metrics_port = free_port();
    // Peer 8 answers an SSLRequest with 'N': under server_tls_sslmode = verify-full (the
    // default) a cancel is not sent to it in plaintext.
    let plaintext_metrics = free_port();
    let plaintext_peer = Pgmoat::start_with_env(
        &ConfigBuilder::new(&pki, &db)
            .client_sslmode("disable")
            .build(),
        &[
            ("PGMOAT_PEER_ID", "8"),
            (
                "PGMOAT_METRICS_ADDR",
                &format!("127.0.0.1:{plaintext_metrics}"),
            ),
        ],
    );
    let moats = start_peers(
        &pki,
        &db,
        1,
        &format!(
            "\n[peers.7]\nhost = \"127.0.0.1\"\nport = {nobody}\n\n[peers.8]\nhost = \"127.0.0.1\"\nport = {}\n",
            plaintext_peer.port()
        ),
        &[metrics_port],
    );
    let moat = &moats[0];
    let key = pgmoat::peers::new_key(7);
    let mark = moat.log_mark();
    send_cancel_request(moat.port(), key.pid, key.secret).await;
    moat.wait_for_log_since(
        mark,
        "forwarding a cancel request to a peer failed",
        Duration::from_secs(10),
    );

    let metrics = http_fetch(metrics_port, "/metrics").await;
    assert!(
        metrics.contains("pgmoat_cancel_requests_total{result=\"peer_failed\"} 1"),
        "{metrics}"
    );
    let key = pgmoat::peers::new_key(8);
    let mark = moat.log_mark();
    send_cancel_request(moat.port(), key.pid, key.secret).await;
    moat.wait_for_log_since(mark, "refused TLS", Duration::from_secs(10));
    let metrics = http_fetch(metrics_port, "/metrics").await;
    assert!(
        metrics.contains("pgmoat_cancel_requests_total{result=\"peer_failed\"} 2"),
        "{metrics}"
    );
    // It only asked for TLS: the request itself never reached peer 8, which counts a key
    // it does not know, as it does for the same request sent to it directly (the control).
    let unknown = "pgmoat_cancel_requests_total{result=\"unknown_key\"} 1";
    assert!(
        !http_fetch(plaintext_metrics, "/metrics")
            .await
            .contains(unknown)
    );
    send_cancel_request(plaintext_peer.port(), key.pid, key.secret).await;
    eventually("peer 8 to count the key", Duration::from_secs(10), || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(http_fetch(plaintext_metrics, "/metrics"))
                .contains(unknown)
        })
    })
    .await;

    // Everything else works: queries, and a cancel of this instance's own client.
    let client = moat_client(moat, &pki, "alice").await;
    assert_eq!(text_value(&client, "SELECT 1").await, "1");
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    tokio::task::block_in_place(|| wait_running(&db, SLEEP, 1, "-infinity"));
    token
        .cancel_query(tokio_postgres_rustls::MakeRustlsConnect::new(
            tls_client_config(&pki.ca, None),
        ))
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), sleeper)
        .await
        .expect("the own cancel did not land")
        .unwrap()
        .expect_err("the sleep was not canceled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err:?}");
    assert!(
        moat.log().contains("peer 7"),
        "the failure names the peer: {}",
        moat.log()
    );
}

/// Two processes sharing one port (so_reuseport), each reachable alone on its own
/// peer_listen_port, which is what their [peers] name: cancels through the shared port, which
/// the kernel spreads over both, still reach their own query.
#[test]
fn processes_sharing_a_port_forward_cancels_through_their_own_peer_ports() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let shared_port = free_port();
    let peer_ports = [free_port(), free_port()];
    let mut config = ConfigBuilder::new(&pki, &db)
        .set("so_reuseport", "true")
        .build();
    for (i, port) in peer_ports.iter().enumerate() {
        config.push_str(&format!(
            "\n[peers.{}]\nhost = \"127.0.0.1\"\nport = {port}\n",
            i + 1
        ));
    }
    let moats: Vec<Pgmoat> = peer_ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            Pgmoat::start_on(
                shared_port,
                &config,
                &[
                    ("PGMOAT_PEER_ID", &(i + 1).to_string()),
                    ("PGMOAT_PEER_LISTEN_PORT", &port.to_string()),
                ],
            )
        })
        .collect();
    let conninfo = lb_conninfo(shared_port, &pki);
    for round in 0..30 {
        psql_cancel_round(&db, &conninfo, round);
    }
    let forwarded = forwarded(&moats);
    let served: Vec<usize> = moats
        .iter()
        .map(|m| m.log().matches("client logged in").count())
        .collect();
    assert!(
        served.iter().all(|&n| n > 0),
        "the kernel used one process only: {served:?}"
    );
    assert!(forwarded > 0, "no cancel needed forwarding: {served:?}");
    // A peer port takes cancels only: a session there is refused (and one on the shared
    // port, the control, works).
    let on_peer_port = psql(&["-Atc", "SELECT 1"], &lb_conninfo(peer_ports[0], &pki));
    assert!(
        !on_peer_port.status.success() && output_text(&on_peer_port).contains("peer port"),
        "{}",
        output_text(&on_peer_port)
    );
    let on_shared_port = psql(&["-Atc", "SELECT 1"], &conninfo);
    assert_eq!(
        String::from_utf8_lossy(&on_shared_port.stdout).trim(),
        "1",
        "{}",
        output_text(&on_shared_port)
    );
}
