//! The admin console through a real pgmoat: PgBouncer's SHOW columns as psql and
//! tokio-postgres see them, stats users limited to SHOW, PAUSE/RESUME, RECONNECT, SHOW CERTS,
//! and the TLS columns of SHOW CLIENTS / SERVERS.

mod support;

use std::time::Duration;

use support::*;
use tokio_postgres::{Client, SimpleQueryMessage};

const CAROL_PASSWORD: &str = "carol-secret";

struct Setup {
    pki: Pki,
    _db: TestDb,
    pgmoat: Pgmoat,
}

/// pgmoat in front of the test database; alice is an admin, bob a stats user, carol neither.
fn setup(extra: &[&str]) -> Setup {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let mut builder = ConfigBuilder::new(&pki, &db)
        .userlist(&[
            ("alice", ALICE_PASSWORD),
            ("bob", BOB_PASSWORD),
            ("carol", CAROL_PASSWORD),
        ])
        .set("admin_users", r#"["alice"]"#)
        .set("stats_users", r#"["bob"]"#);
    for line in extra {
        builder = builder.line(line);
    }
    let pgmoat = Pgmoat::start(&builder.build());
    Setup {
        pki,
        _db: db,
        pgmoat,
    }
}

impl Setup {
    fn tls(&self) -> rustls::ClientConfig {
        tls_client_config(&self.pki.ca, None)
    }

    async fn console(&self, user: &str, password: &str) -> Client {
        connect(
            self.pgmoat.port(),
            user,
            Some(password),
            "pgbouncer",
            Some(self.tls()),
        )
        .await
        .unwrap_or_else(|e| panic!("console login as {user}: {e}"))
    }

    async fn app(&self) -> Client {
        connect(
            self.pgmoat.port(),
            "alice",
            Some(ALICE_PASSWORD),
            APP_DB,
            Some(self.tls()),
        )
        .await
        .expect("alice connects to app")
    }

    fn psql_console(&self, user: &str, password: &str, sql: &str) -> std::process::Output {
        let info = conninfo(
            self.pgmoat.port(),
            user,
            "pgbouncer",
            &[
                ("sslmode", "verify-full"),
                ("sslrootcert", &self.pki.ca.display().to_string()),
                ("password", password),
            ],
        );
        psql(&["-A", "-F", "|", "-P", "footer=off", "-c", sql], &info)
    }
}

/// Column names and rows (as text) of one console command.
async fn show(client: &Client, sql: &str) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for message in client.simple_query(sql).await.unwrap() {
        match message {
            SimpleQueryMessage::RowDescription(cols) => {
                columns = cols.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    (columns, rows)
}

fn column(columns: &[String], name: &str) -> usize {
    columns
        .iter()
        .position(|c| c == name)
        .unwrap_or_else(|| panic!("no column {name} in {columns:?}"))
}

#[test]
fn every_show_parses_in_psql_with_pgbouncer_column_names() {
    let s = setup(&[]);
    let expected: &[(&str, &str)] = &[
        (
            "SHOW POOLS",
            "database|user|cl_active|cl_waiting|cl_active_cancel_req|cl_waiting_cancel_req|sv_active|sv_active_cancel|sv_being_canceled|sv_idle|sv_used|sv_tested|sv_login|maxwait|maxwait_us|pool_mode|load_balance_hosts",
        ),
        (
            "SHOW CLIENTS",
            "type|user|database|replication|state|addr|port|local_addr|local_port|connect_time|request_time|wait|wait_us|close_needed|ptr|link|remote_pid|tls|application_name|prepared_statements|id|tls_version|tls_cipher|client_cert_subject|client_cert_not_after|lifecycle|pinned|host|role",
        ),
        (
            "SHOW SERVERS",
            "type|user|database|replication|state|addr|port|local_addr|local_port|connect_time|request_time|wait|wait_us|close_needed|ptr|link|remote_pid|tls|application_name|prepared_statements|id|tls_version|tls_cipher|client_cert_subject|client_cert_not_after|lifecycle|pinned|host|role",
        ),
        (
            "SHOW STATS",
            "database|total_server_assignment_count|total_xact_count|total_query_count|total_received|total_sent|total_xact_time|total_query_time|total_wait_time|total_client_parse_count|total_server_parse_count|total_bind_count|avg_server_assignment_count|avg_xact_count|avg_query_count|avg_recv|avg_sent|avg_xact_time|avg_query_time|avg_wait_time|avg_client_parse_count|avg_server_parse_count|avg_bind_count",
        ),
        (
            "SHOW DATABASES",
            "name|host|port|database|force_user|pool_size|min_pool_size|reserve_pool_size|server_lifetime|pool_mode|load_balance_hosts|max_connections|current_connections|max_client_connections|current_client_connections|paused|disabled|target_session_attrs",
        ),
        (
            "SHOW HOSTS",
            "host|port|status|since_seconds|role_changes|failures|last_error",
        ),
        ("SHOW CONFIG", "key|value|default|changeable"),
        ("SHOW LISTS", "list|items"),
        ("SHOW VERSION", "version"),
        (
            "show certs;",
            "setting|file|subject|serial|not_after|days_left|kind|revoked",
        ),
    ];
    for (sql, header) in expected {
        let out = s.psql_console("alice", ALICE_PASSWORD, sql);
        assert!(out.status.success(), "{sql}: {}", output_text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.lines().next(), Some(*header), "{sql}: {stdout}");
    }
    // The pgbouncer_exporter reads SHOW LISTS and SHOW CONFIG values as numbers.
    let lists = s.psql_console("bob", BOB_PASSWORD, "SHOW LISTS");
    let lists = String::from_utf8_lossy(&lists.stdout).into_owned();
    assert!(lists.lines().any(|l| l == "used_clients|1"), "{lists}");
    let config = s.psql_console("bob", BOB_PASSWORD, "SHOW CONFIG");
    let config = String::from_utf8_lossy(&config.stdout).into_owned();
    assert!(
        config
            .lines()
            .any(|l| l.starts_with("max_client_conn|100|100|")),
        "{config}"
    );
}

#[tokio::test]
async fn stats_users_may_only_show_and_others_may_not_log_in() {
    let s = setup(&[]);
    let bob = s.console("bob", BOB_PASSWORD).await;
    let (columns, _) = show(&bob, "SHOW STATS").await;
    assert_eq!(columns[0], "database");
    for sql in ["RELOAD", "PAUSE", "RECONNECT app", "SHUTDOWN"] {
        let err = bob.simple_query(sql).await.unwrap_err();
        let db = err.as_db_error().expect("an ErrorResponse");
        assert_eq!(db.code().code(), "42501", "{sql}");
        assert_eq!(db.message(), "admin access needed", "{sql}");
    }
    let err = bob.simple_query("TRUNCATE items").await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42601");
    // Still usable after the errors.
    assert!(!show(&bob, "SHOW POOLS").await.0.is_empty());

    let err = connect(
        s.pgmoat.port(),
        "carol",
        Some(CAROL_PASSWORD),
        "pgbouncer",
        Some(s.tls()),
    )
    .await
    .expect_err("carol is neither admin nor stats user");
    let db = err.as_db_error().expect("a FATAL from pgmoat");
    assert_eq!(db.code().code(), "28000");
    assert_eq!(db.message(), "not allowed");

    let admin = connect(
        s.pgmoat.port(),
        "alice",
        Some(ALICE_PASSWORD),
        "pgmoat",
        Some(s.tls()),
    )
    .await
    .expect("the pgmoat database name reaches the console too");
    let reload = admin.simple_query("RELOAD;").await.unwrap();
    assert!(matches!(
        reload.last(),
        Some(SimpleQueryMessage::CommandComplete(_))
    ));
    s.pgmoat
        .wait_for_log("RELOAD command issued", Duration::from_secs(5));
}

#[tokio::test]
async fn extended_protocol_is_refused_and_the_console_stays_usable() {
    let s = setup(&[]);
    let admin = s.console("alice", ALICE_PASSWORD).await;
    let err = admin.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "0A000");
    let (columns, _) = show(&admin, "SHOW VERSION").await;
    assert_eq!(columns, vec!["version"]);
}

#[tokio::test]
async fn pause_waits_for_the_transaction_and_holds_new_queries_until_resume() {
    let s = setup(&[]);
    let admin = s.console("alice", ALICE_PASSWORD).await;
    let busy = s.app().await;
    let later = s.app().await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();

    let pause = tokio::spawn(async move {
        admin.simple_query("PAUSE app").await.unwrap();
        admin
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE returned while a transaction held a server"
    );
    busy.batch_execute("COMMIT").await.unwrap();
    let admin = tokio::time::timeout(Duration::from_secs(10), pause)
        .await
        .expect("PAUSE returns once the transaction ended")
        .unwrap();

    let (columns, rows) = show(&admin, "SHOW DATABASES").await;
    let app = rows
        .iter()
        .find(|r| r[0].as_deref() == Some(APP_DB))
        .unwrap();
    assert_eq!(app[column(&columns, "paused")].as_deref(), Some("1"));

    let query = tokio::spawn(async move { later.simple_query("SELECT 42").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!query.is_finished(), "a query ran while app was paused");
    let (columns, rows) = show(&admin, "SHOW POOLS").await;
    let waiting: i64 = rows
        .iter()
        .filter(|r| r[0].as_deref() == Some(APP_DB))
        .map(|r| {
            r[column(&columns, "cl_waiting")]
                .as_deref()
                .unwrap()
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    assert_eq!(waiting, 1);

    admin.simple_query("RESUME app").await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("the query runs after RESUME")
        .unwrap()
        .unwrap();
    assert!(
        result
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("42")))
    );
}

async fn backend_pid(client: &Client) -> String {
    let rows = client
        .simple_query("SELECT pg_backend_pid()")
        .await
        .unwrap();
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

#[tokio::test]
async fn reconnect_closes_servers_instead_of_reusing_them() {
    let s = setup(&[]);
    let admin = s.console("alice", ALICE_PASSWORD).await;
    let app = s.app().await;
    let first = backend_pid(&app).await;
    assert_eq!(backend_pid(&app).await, first, "the idle server is reused");

    let (columns, rows) = show(&admin, "SHOW SERVERS").await;
    let pids: Vec<_> = rows
        .iter()
        .map(|r| r[column(&columns, "remote_pid")].clone().unwrap())
        .collect();
    assert!(pids.contains(&first), "{pids:?}");

    admin.simple_query("RECONNECT app").await.unwrap();
    let second = backend_pid(&app).await;
    assert_ne!(second, first, "RECONNECT must retire the old server");
    let (_, rows) = show(&admin, "SHOW SERVERS").await;
    assert!(
        rows.iter()
            .all(|r| r[column(&columns, "remote_pid")].as_deref() != Some(first.as_str())),
        "the old server is still listed"
    );
}

#[tokio::test]
async fn show_certs_lists_every_loaded_certificate() {
    let s = setup(&[]);
    let admin = s.console("alice", ALICE_PASSWORD).await;
    let (columns, rows) = show(&admin, "SHOW CERTS").await;
    let settings: Vec<_> = rows.iter().map(|r| r[0].clone().unwrap()).collect();
    for setting in [
        "client_tls_cert_file",
        "server_tls_ca_file",
        "server_tls_cert_file",
    ] {
        assert!(settings.iter().any(|s| s == setting), "{settings:?}");
    }
    for row in &rows {
        let days: i64 = row[column(&columns, "days_left")]
            .as_deref()
            .unwrap()
            .parse()
            .unwrap();
        assert!((28..=30).contains(&days), "{row:?}");
        assert!(
            !row[column(&columns, "serial")]
                .as_deref()
                .unwrap()
                .is_empty()
        );
    }
    let pgmoat_cert = rows
        .iter()
        .find(|r| r[0].as_deref() == Some("client_tls_cert_file"))
        .unwrap();
    assert_eq!(
        pgmoat_cert[1].as_deref(),
        Some(s.pki.pgmoat.crt.display().to_string().as_str())
    );
}

#[tokio::test]
async fn show_clients_and_servers_include_tls_details() {
    let s = setup(&[]);
    let admin = s.console("alice", ALICE_PASSWORD).await;
    let with_cert = tls_client_config(&s.pki.ca, Some(s.pki.alice.pair()));
    let app = connect(
        s.pgmoat.port(),
        "alice",
        Some(ALICE_PASSWORD),
        APP_DB,
        Some(with_cert),
    )
    .await
    .unwrap();
    app.batch_execute("SELECT 1").await.unwrap();

    // The client has its answer just before its session hands the server back and shows
    // as idle.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (columns, client) = loop {
        let (columns, rows) = show(&admin, "SHOW CLIENTS").await;
        let client = rows
            .into_iter()
            .find(|r| r[column(&columns, "database")].as_deref() == Some(APP_DB))
            .expect("the app client is listed");
        if client[column(&columns, "state")].as_deref() == Some("idle")
            || std::time::Instant::now() > deadline
        {
            break (columns, client);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let get = |name: &str| client[column(&columns, name)].clone();
    assert_eq!(get("type").as_deref(), Some("C"));
    assert_eq!(get("user").as_deref(), Some("alice"));
    assert_eq!(get("state").as_deref(), Some("idle"));
    assert_eq!(get("tls_version").as_deref(), Some("TLSv1.3"));
    assert!(
        get("tls_cipher").unwrap().contains("AES") || get("tls_cipher").unwrap().contains("CHACHA")
    );
    assert!(
        get("client_cert_subject").unwrap().contains("CN=alice"),
        "{client:?}"
    );
    assert!(get("client_cert_not_after").is_some());
    assert_eq!(get("application_name").as_deref(), Some("pgmoat-tests"));

    let (columns, rows) = show(&admin, "SHOW SERVERS").await;
    let server = &rows[0];
    let get = |name: &str| server[column(&columns, name)].clone();
    assert_eq!(get("type").as_deref(), Some("S"));
    assert_eq!(get("database").as_deref(), Some(APP_DB));
    assert_eq!(get("tls_version").as_deref(), Some("TLSv1.3"));
    // Towards PostgreSQL, the client certificate is the one pgmoat presents.
    assert!(
        get("client_cert_subject").unwrap().contains("CN=certuser"),
        "{server:?}"
    );
}
