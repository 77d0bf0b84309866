//! Helpers for the pooling tests: clients through pgmoat in one line, PostgreSQL's own view of
//! the backends pgmoat holds (pg_stat_activity over the superuser socket), and polling.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{ALICE_PASSWORD, APP_DB, BOB_PASSWORD, Pgmoat, Pki, TestDb, pg_config};
use super::{RawClient, tls_client_config};

/// The userlist password of a harness user.
pub fn password_of(user: &str) -> Option<&'static str> {
    match user {
        "alice" => Some(ALICE_PASSWORD),
        "bob" => Some(BOB_PASSWORD),
        _ => None,
    }
}

/// tokio-postgres settings for `user` through pgmoat (db `app`, verify-full TLS).
pub fn moat_config(moat: &Pgmoat, user: &str) -> tokio_postgres::Config {
    let mut config = pg_config(moat.port(), user, password_of(user), APP_DB);
    config.ssl_mode(SslMode::Require);
    config
}

/// A TLS (verify-full) client of `user` through pgmoat; panics with pgmoat's log on failure.
pub async fn moat_client(moat: &Pgmoat, pki: &Pki, user: &str) -> Client {
    moat_client_with(moat, pki, moat_config(moat, user)).await.0
}

/// Like [`moat_client`] for a hand-tuned config; also returns the connection task, so a test
/// can abort it to drop the TCP connection the way a killed process would.
pub async fn moat_client_with(
    moat: &Pgmoat,
    pki: &Pki,
    config: tokio_postgres::Config,
) -> (Client, JoinHandle<()>) {
    let tls = MakeRustlsConnect::new(tls_client_config(&pki.ca, None));
    match config.connect(tls).await {
        Ok((client, connection)) => {
            let task = tokio::spawn(async move {
                let _ = connection.await;
            });
            (client, task)
        }
        Err(e) => panic!(
            "connecting through pgmoat: {e:?}\n--- pgmoat log ---\n{}",
            moat.log()
        ),
    }
}

/// A TLS (verify-full) login of `user` to pgmoat's admin console (database `pgbouncer`).
pub async fn moat_console(moat: &Pgmoat, pki: &Pki, user: &str) -> Client {
    let mut config = moat_config(moat, user);
    config.dbname("pgbouncer");
    moat_client_with(moat, pki, config).await.0
}

/// A wire-level TLS client of `user` through pgmoat.
pub async fn moat_raw(moat: &Pgmoat, pki: &Pki, user: &str, extra: &[(&str, &str)]) -> RawClient {
    RawClient::connect(
        moat.port(),
        user,
        password_of(user),
        APP_DB,
        extra,
        Some(tls_client_config(&pki.ca, None)),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "raw login through pgmoat: {e}\n--- pgmoat log ---\n{}",
            moat.log()
        )
    })
}

/// The first column of the first row, as text (simple protocol: no statement left behind).
pub async fn text_value(client: &Client, sql: &str) -> String {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                Some(row.get(0).unwrap_or("").to_owned())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

impl TestDb {
    /// Client backends PostgreSQL has for `user` (pgmoat's server connections).
    pub fn backends_of(&self, user: &str) -> usize {
        self.count(&format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = '{user}' AND backend_type = 'client backend'"
        ))
    }

    /// Backend pids of `user`, sorted.
    pub fn backend_pids(&self, user: &str) -> Vec<i32> {
        let out = self.sql(
            APP_DB,
            &format!(
                "SELECT pid FROM pg_stat_activity \
                 WHERE usename = '{user}' AND backend_type = 'client backend' ORDER BY pid"
            ),
        );
        out.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// Sessions with a transaction open but no query running.
    pub fn idle_in_transaction(&self) -> usize {
        self.count(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE state LIKE 'idle in transaction%' AND backend_type = 'client backend'",
        )
    }

    /// `SELECT count(*) ...` as a number.
    pub fn count(&self, sql: &str) -> usize {
        let out = self.sql(APP_DB, sql);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{sql}: not a count: {out:?}"))
    }
}

/// Polls `check` every 50 ms until it is true; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`wait_until`] for async tests: sleeps on the runtime between checks, so the test's own
/// connection tasks keep running while it waits.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole HTTP response to `GET path` on 127.0.0.1:`port` (/metrics, /health), read until
/// the server closes.
pub async fn http_fetch(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut response))
        .await
        .expect("the metrics endpoint answers")
        .unwrap();
    response
}

/// cl_waiting of the app/alice pool in SHOW POOLS.
pub async fn waiting_in_show_pools(console: &Client) -> i64 {
    let messages = console.simple_query("SHOW POOLS").await.unwrap();
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row)
                if row.get("database") == Some(APP_DB) && row.get("user") == Some("alice") =>
            {
                row.get("cl_waiting").and_then(|n| n.parse().ok())
            }
            _ => None,
        })
        .unwrap_or(0)
}

/// Polls SHOW POOLS until at least `n` of alice's clients wait; `who` names them if not.
pub async fn wait_for_waiting(console: &Client, n: i64, who: &str, moat: &Pgmoat) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while waiting_in_show_pools(console).await < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{who} never showed as waiting in SHOW POOLS\n{}",
            moat.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
