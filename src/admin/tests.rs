//! The console against a real `Shared` (no sockets): every command's reply on the wire.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::*;
use crate::config::FileChecks;
use crate::protocol::error::ErrorFields;
use crate::stats::{ClientEntry, ServerEntry};

const CONFIG: &str = r#"
client_tls_sslmode = "disable"
server_tls_sslmode = "disable"
auth_type = "trust"
admin_users = ["root"]
stats_users = ["watcher"]
max_client_conn = 77
[databases.app]
host = "127.0.0.1"
port = 5432
password = "s3cret-db-password"
"#;

fn shared() -> Arc<Shared> {
    let config =
        Config::from_toml_str_with(CONFIG, Path::new("test.toml"), FileChecks::Skip).unwrap();
    Shared::new(crate::generation::load_generation(config, None).unwrap())
}

/// The messages of a reply: (tag, body).
fn messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        out.push((bytes[0], bytes[5..1 + len].to_vec()));
        bytes = &bytes[1 + len..];
    }
    out
}

fn column_names(body: &[u8]) -> Vec<String> {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut rest = &body[2..];
    let mut names = Vec::new();
    for _ in 0..n {
        let end = rest.iter().position(|&b| b == 0).unwrap();
        names.push(String::from_utf8(rest[..end].to_vec()).unwrap());
        rest = &rest[end + 1 + 18..];
    }
    names
}

fn row_values(body: &[u8]) -> Vec<Option<String>> {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut rest = &body[2..];
    let mut values = Vec::new();
    for _ in 0..n {
        let len = i32::from_be_bytes(rest[..4].try_into().unwrap());
        rest = &rest[4..];
        if len < 0 {
            values.push(None);
        } else {
            let len = len as usize;
            values.push(Some(String::from_utf8(rest[..len].to_vec()).unwrap()));
            rest = &rest[len..];
        }
    }
    values
}

struct Reply {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
    tag: Option<String>,
    error: Option<ErrorFields>,
}

async fn run(shared: &Shared, role: Role, sql: &str) -> Reply {
    let mut out = BytesMut::new();
    execute(shared, role, sql, &mut out).await;
    let mut reply = Reply {
        columns: Vec::new(),
        rows: Vec::new(),
        tag: None,
        error: None,
    };
    for (tag, body) in messages(&out) {
        match tag {
            b'T' => reply.columns = column_names(&body),
            b'D' => reply.rows.push(row_values(&body)),
            b'C' => reply.tag = Some(String::from_utf8_lossy(&body[..body.len() - 1]).into()),
            b'E' => reply.error = Some(ErrorFields::parse(&body)),
            b'N' | b'I' => {}
            other => panic!("unexpected message {}", other as char),
        }
    }
    reply
}

fn names(columns: &[(&str, Type)]) -> Vec<String> {
    columns.iter().map(|(n, _)| n.to_string()).collect()
}

#[tokio::test]
async fn show_commands_use_pgbouncer_columns_in_order() {
    let shared = shared();
    let expected: &[(&str, &[&str])] = &[
        (
            "SHOW POOLS",
            &[
                "database",
                "user",
                "cl_active",
                "cl_waiting",
                "cl_active_cancel_req",
                "cl_waiting_cancel_req",
                "sv_active",
                "sv_active_cancel",
                "sv_being_canceled",
                "sv_idle",
                "sv_used",
                "sv_tested",
                "sv_login",
                "maxwait",
                "maxwait_us",
                "pool_mode",
                "load_balance_hosts",
            ],
        ),
        (
            "SHOW CLIENTS",
            &[
                "type",
                "user",
                "database",
                "replication",
                "state",
                "addr",
                "port",
                "local_addr",
                "local_port",
                "connect_time",
                "request_time",
                "wait",
                "wait_us",
                "close_needed",
                "ptr",
                "link",
                "remote_pid",
                "tls",
                "application_name",
                "prepared_statements",
                "id",
                "tls_version",
                "tls_cipher",
                "client_cert_subject",
                "client_cert_not_after",
                "lifecycle",
                "pinned",
                "host",
                "role",
            ],
        ),
        (
            "SHOW STATS",
            &[
                "database",
                "total_server_assignment_count",
                "total_xact_count",
                "total_query_count",
                "total_received",
                "total_sent",
                "total_xact_time",
                "total_query_time",
                "total_wait_time",
                "total_client_parse_count",
                "total_server_parse_count",
                "total_bind_count",
                "avg_server_assignment_count",
                "avg_xact_count",
                "avg_query_count",
                "avg_recv",
                "avg_sent",
                "avg_xact_time",
                "avg_query_time",
                "avg_wait_time",
                "avg_client_parse_count",
                "avg_server_parse_count",
                "avg_bind_count",
            ],
        ),
        (
            "SHOW DATABASES",
            &[
                "name",
                "host",
                "port",
                "database",
                "force_user",
                "pool_size",
                "min_pool_size",
                "reserve_pool_size",
                "server_lifetime",
                "pool_mode",
                "load_balance_hosts",
                "max_connections",
                "current_connections",
                "max_client_connections",
                "current_client_connections",
                "paused",
                "disabled",
                "target_session_attrs",
            ],
        ),
        (
            "SHOW HOSTS",
            &[
                "host",
                "port",
                "status",
                "since_seconds",
                "role_changes",
                "failures",
                "last_error",
            ],
        ),
        ("SHOW CONFIG", &["key", "value", "default", "changeable"]),
        ("SHOW LISTS", &["list", "items"]),
        ("SHOW VERSION", &["version"]),
        (
            "SHOW CERTS",
            &[
                "setting",
                "file",
                "subject",
                "serial",
                "not_after",
                "days_left",
                "kind",
                "revoked",
            ],
        ),
    ];
    for (sql, columns) in expected {
        let reply = run(&shared, Role::Stats, sql).await;
        assert!(reply.error.is_none(), "{sql}: {:?}", reply.error);
        assert_eq!(reply.columns, *columns, "{sql}");
        assert_eq!(reply.tag.as_deref(), Some("SHOW"), "{sql}");
    }
    let servers = run(&shared, Role::Stats, "show servers;").await;
    assert_eq!(servers.columns, names(SOCKETS));
}

#[tokio::test]
async fn every_show_answers_with_rows_of_the_header_width() {
    let shared = shared();
    let _client = shared.stats.clients.register(
        5,
        ClientEntry::new(
            5,
            "127.0.0.1:40000".parse().unwrap(),
            None,
            "alice".into(),
            "app".into(),
            "alice".into(),
            "psql".into(),
            None,
        ),
    );
    for what in [
        "POOLS",
        "CLIENTS",
        "SERVERS",
        "STATS",
        "STATS_TOTALS",
        "STATS_AVERAGES",
        "TOTALS",
        "DATABASES",
        "CONFIG",
        "LISTS",
        "VERSION",
        "STATE",
        "CERTS",
        "HOSTS",
        "HELP",
    ] {
        let reply = run(&shared, Role::Stats, &format!("SHOW {what}")).await;
        assert!(reply.error.is_none(), "{what}");
        assert_eq!(reply.tag.as_deref(), Some("SHOW"), "{what}");
        for row in &reply.rows {
            assert_eq!(row.len(), reply.columns.len(), "{what}");
        }
    }
    let clients = run(&shared, Role::Stats, "SHOW CLIENTS").await;
    assert_eq!(clients.rows.len(), 1);
    let row = &clients.rows[0];
    assert_eq!(row[0].as_deref(), Some("C"));
    assert_eq!(row[4].as_deref(), Some("idle"));
    assert_eq!(row[18].as_deref(), Some("psql"));
    assert_eq!(row[20].as_deref(), Some("5"));
    let version = run(&shared, Role::Stats, "SHOW VERSION").await;
    assert!(
        version.rows[0][0]
            .as_deref()
            .unwrap()
            .starts_with("pgmoat ")
    );
}

#[tokio::test]
async fn config_shows_settings_but_never_passwords() {
    let shared = shared();
    let reply = run(&shared, Role::Stats, "SHOW CONFIG").await;
    let find = |key: &str| {
        reply
            .rows
            .iter()
            .find(|r| r[0].as_deref() == Some(key))
            .cloned()
            .unwrap_or_else(|| panic!("{key} missing"))
    };
    assert_eq!(find("max_client_conn")[1].as_deref(), Some("77"));
    assert_eq!(find("max_client_conn")[2].as_deref(), Some("100"));
    assert_eq!(find("admin_users")[1].as_deref(), Some("root"));
    assert_eq!(find("listen_port")[3].as_deref(), Some("no"));
    assert_eq!(find("auth_file")[1].as_deref(), Some(""));
    let all = format!("{:?}", reply.rows);
    assert!(!all.contains("s3cret"), "{all}");
}

#[tokio::test]
async fn errors_have_pgbouncer_meanings_and_sqlstates() {
    let shared = shared();
    let unknown = run(&shared, Role::Admin, "SELECT 1").await;
    let e = unknown.error.unwrap();
    assert_eq!(e.code, "42601");
    assert!(e.message.starts_with("unknown command"), "{}", e.message);

    for sql in ["RELOAD", "PAUSE", "RESUME", "RECONNECT", "SHUTDOWN"] {
        let refused = run(&shared, Role::Stats, sql).await;
        let e = refused.error.unwrap();
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("42501", "admin access needed")
        );
    }
    assert!(!shared.shutdown.is_cancelled());

    let missing = run(&shared, Role::Admin, "PAUSE nosuchdb").await;
    assert_eq!(missing.error.unwrap().message, "no such database: nosuchdb");
    let not_paused = run(&shared, Role::Admin, "RESUME").await;
    assert_eq!(
        not_paused.error.unwrap().message,
        "pooler is not paused/suspended"
    );
    let set = run(&shared, Role::Admin, "SET default_pool_size = 1").await;
    assert_eq!(set.error.unwrap().code, "0A000");
    let ignored = run(&shared, Role::Stats, "SET client_encoding = 'UTF8'").await;
    assert_eq!(ignored.tag.as_deref(), Some("SET"));
}

#[tokio::test]
async fn pause_waits_for_busy_clients_and_resume_reopens() {
    let shared = shared();
    let client = shared.stats.clients.register(
        9,
        ClientEntry::new(
            9,
            "127.0.0.1:40001".parse().unwrap(),
            None,
            "alice".into(),
            "app".into(),
            "alice".into(),
            String::new(),
            None,
        ),
    );
    client.set_active(1234);
    let pause = tokio::spawn({
        let shared = shared.clone();
        async move { run(&shared, Role::Admin, "PAUSE app").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE returned while a server was in use"
    );
    assert!(shared.pause.is_paused("app"));
    client.set_idle();
    let reply = tokio::time::timeout(Duration::from_secs(5), pause)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.tag.as_deref(), Some("PAUSE"));

    let databases = run(&shared, Role::Stats, "SHOW DATABASES").await;
    let app = databases
        .rows
        .iter()
        .find(|r| r[0].as_deref() == Some("app"))
        .unwrap();
    assert_eq!(app[15].as_deref(), Some("1"));

    let resume = run(&shared, Role::Admin, "RESUME app").await;
    assert_eq!(resume.tag.as_deref(), Some("RESUME"));
    assert!(!shared.pause.is_paused("app"));
}

#[tokio::test]
async fn reconnect_marks_servers_and_shutdown_cancels() {
    let shared = shared();
    let pool = crate::pool::PoolKey {
        database: "app".into(),
        user: "alice".into(),
    };
    let server = shared.stats.servers.register(
        3,
        ServerEntry::new(3, pool, "127.0.0.1:5432".parse().unwrap(), None, 4242, None),
    );
    let reply = run(&shared, Role::Admin, "RECONNECT app").await;
    assert_eq!(reply.tag.as_deref(), Some("RECONNECT"));
    assert!(server.close_needed());
    let servers = run(&shared, Role::Stats, "SHOW SERVERS").await;
    assert_eq!(servers.rows[0][13].as_deref(), Some("1"));
    assert_eq!(servers.rows[0][16].as_deref(), Some("4242"));

    let reply = run(&shared, Role::Admin, "shutdown;").await;
    assert_eq!(reply.tag.as_deref(), Some("SHUTDOWN"));
    assert!(shared.shutdown.is_cancelled());
}
