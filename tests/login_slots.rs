//! Connections that never log in must not take the places of real clients: max_client_conn
//! counts logged-in clients only, max_pending_logins bounds the rest by dropping the oldest,
//! and running out of file descriptors leaves connected clients served.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The test opens thousands of sockets itself.
fn raise_own_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}

async fn silent_sockets(port: u16, count: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        sockets.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    sockets
}

/// SHOW LISTS' `login_clients`: connections still logging in.
async fn pending_logins(admin: &tokio_postgres::Client) -> usize {
    let rows = admin.simple_query("SHOW LISTS").await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("login_clients") => {
                r.get(1).and_then(|v| v.parse().ok())
            }
            _ => None,
        })
        .expect("SHOW LISTS has login_clients")
}

/// Waits until at least `at_least` connections are logging in.
async fn wait_for_pending(admin: &tokio_postgres::Client, at_least: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending = pending_logins(admin).await;
        if pending >= at_least {
            return pending;
        }
        assert!(
            Instant::now() < deadline,
            "only {pending} pending logins after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 5000 silent sockets from 127.0.0.1 (what a flood renewing itself every
/// client_login_timeout keeps open) and a real client still logs in: the oldest pending
/// logins are dropped to make room, and the silent sockets take no place under
/// max_client_conn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_client_logs_in_past_five_thousand_silent_sockets() {
    raise_own_file_limit();
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("max_pending_logins", "500")
            .set("max_client_conn", "10")
            .set("admin_users", "[\"alice\"]")
            .build(),
    );
    // Logged in before the flood: an operator's console, and the positive control that a
    // place under max_client_conn is not needed for it.
    let admin = moat_console(&moat, &pki, "alice").await;
    let mut silent = silent_sockets(moat.port(), 5000).await;
    // The queue is full of them.
    wait_for_pending(&admin, 500).await;

    let started = Instant::now();
    let client = tokio::time::timeout(Duration::from_secs(30), moat_client(&moat, &pki, "alice"))
        .await
        .expect("a real client logs in while 5000 silent sockets are open");
    eprintln!(
        "real login took {:?} past 5000 silent sockets",
        started.elapsed()
    );
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    // The oldest silent socket was dropped by pgmoat (closed, nothing sent).
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(30), silent[0].read(&mut byte))
        .await
        .expect("the oldest pending login is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(pending_logins(&admin).await <= 500, "the bound holds");
    drop(silent);
}

/// max_client_conn counts logged-in clients: silent sockets beyond it do not lock anyone
/// out, and the limit still holds for real logins (the positive control).
#[tokio::test]
async fn max_client_conn_counts_logged_in_clients_only() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("max_client_conn", "2")
            .build(),
    );
    let _silent = silent_sockets(moat.port(), 10).await;
    let a = moat_client(&moat, &pki, "alice").await;
    let b = moat_client(&moat, &pki, "alice").await;
    let refused = connect_config(
        moat_config(&moat, "alice"),
        Some(tls_client_config(&pki.ca, None)),
    )
    .await
    .expect_err("a third logged-in client is refused");
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS),
        "{refused}"
    );
    let message = refused.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("max_client_conn")),
        "{message:?}"
    );
    drop(a);
    // The place comes back when a client leaves.
    let deadline = Instant::now() + Duration::from_secs(30);
    let c = loop {
        match connect_config(
            moat_config(&moat, "alice"),
            Some(tls_client_config(&pki.ca, None)),
        )
        .await
        {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("no place after a client left: {e}"),
        }
    };
    for client in [&b, &c] {
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
}

/// Out of file descriptors: pgmoat keeps serving its connected clients, says so in the log
/// at most about once a second, and takes new clients again once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_connected_clients_are_served() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(&ConfigBuilder::new(&pki, &db).build());
    let connected = moat_client(&moat, &pki, "alice").await;
    let open = std::fs::read_dir(format!("/proc/{}/fd", moat.pid()))
        .unwrap()
        .count();
    let limit = open + 20;
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", moat.pid()))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success());

    let mark = moat.log_mark();
    let started = Instant::now();
    let silent = silent_sockets(moat.port(), 60).await;
    moat.wait_for_log_since(mark, "accept failed", Duration::from_secs(30));
    for i in 0..20 {
        let n: i32 = connected
            .query_one("SELECT $1::int", &[&i])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, i, "a connected client is served while accepts fail");
    }
    // Accepts go on failing every 50 ms while the backlog holds connections; wait for the
    // third line, then compare the count of lines with the time it took.
    let deadline = Instant::now() + Duration::from_secs(60);
    while moat.log()[mark..].matches("accept failed").count() < 3 {
        assert!(Instant::now() < deadline, "accepts stopped failing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = moat.log()[mark..].matches("accept failed").count();
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        lines as f64 <= seconds + 2.0,
        "{lines} 'accept failed' lines in {seconds:.1} s"
    );
    assert!(
        moat.log()[mark..].contains("out of file descriptors"),
        "the log says why"
    );

    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match connect_config(
            moat_config(&moat, "alice"),
            Some(tls_client_config(&pki.ca, None)),
        )
        .await
        {
            Ok(client) => {
                let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
                assert_eq!(one, 1);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("no new client after descriptors came free: {e}"),
        }
    }
}
