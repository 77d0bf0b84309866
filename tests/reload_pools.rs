//! Reloads that replace a pool: every change of a database entry that changes where or how
//! pgmoat logs in (host, port, dbname, user, password from the entry or from auth_file,
//! pool_mode, a pool size that splits the pool into another number of worker shares). With an
//! idle client, a client in the middle of a transaction and a client waiting for a server
//! connected, and a new client logging in first after the reload, everyone keeps working: a
//! session finds its pool from the current configuration at each checkout, the mid-transaction
//! client finishes on its old server, and the old pool's servers close.

mod support;

use std::time::Duration;

use support::*;
use tokio_postgres::Client;

const NEW_PASSWORD: &str = "alice-renewed";

/// One pool-replacing change: the config before and after, what PostgreSQL must be told first
/// (a new password), and a query whose answer shows the new pool is in use.
struct Change {
    before: ConfigBuilder,
    after: ConfigBuilder,
    /// SQL run as superuser just before the reload.
    server_side: Option<&'static str>,
    /// alice's password for logins after the reload.
    new_password: &'static str,
    /// (query, expected answer) on the new pool.
    shows_new_pool: (&'static str, &'static str),
}

fn base(pki: &Pki, db: &TestDb) -> ConfigBuilder {
    ConfigBuilder::new(pki, db)
        .set("default_pool_size", "1")
        .set("query_wait_timeout", "30")
        .set("admin_users", r#"["alice"]"#)
}

async fn login(moat: &Pgmoat, pki: &Pki, password: &str) -> Client {
    let mut config = pg_config(moat.port(), "alice", Some(password), APP_DB);
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    moat_client_with(moat, pki, config).await.0
}

async fn one(client: &Client, sql: &str) -> String {
    text_value(client, sql).await
}

async fn reload_keeps_everyone_working(pki: &Pki, db: &TestDb, change: Change) {
    let moat = Pgmoat::start(&change.before.build());
    let console = moat_console(&moat, pki, "alice").await;

    let idle = moat_client(&moat, pki, "alice").await;
    let old_server: i32 = one(&idle, "SELECT pg_backend_pid()").await.parse().unwrap();
    let in_transaction = moat_client(&moat, pki, "alice").await;
    in_transaction
        .batch_execute("BEGIN; INSERT INTO items (v) VALUES ('before reload')")
        .await
        .unwrap();
    assert_eq!(
        one(&in_transaction, "SELECT pg_backend_pid()").await,
        old_server.to_string(),
        "the pool of one lends its one server"
    );
    let waiting = moat_client(&moat, pki, "alice").await;
    let waited = tokio::spawn(async move {
        let answer = text_value(&waiting, "SELECT 'served'").await;
        (waiting, answer)
    });
    wait_for_waiting(&console, 1, "the waiting client", &moat).await;

    if let Some(sql) = change.server_side {
        db.sql(APP_DB, sql);
    }
    moat.rewrite_config(&change.after.build());
    moat.sighup_and_wait_reloaded(Duration::from_secs(10));

    // A new client logs in first and is served by the new pool.
    let newcomer = login(&moat, pki, change.new_password).await;
    let (query, expected) = change.shows_new_pool;
    assert_eq!(one(&newcomer, query).await, expected, "new client");
    drop(newcomer);

    // The transaction goes on where it was, on its old server, and commits.
    assert_eq!(
        one(&in_transaction, "SELECT pg_backend_pid()").await,
        old_server.to_string()
    );
    in_transaction.batch_execute("COMMIT").await.unwrap();

    let (waiting, answer) = tokio::time::timeout(Duration::from_secs(20), waited)
        .await
        .expect("the waiting client was never served")
        .unwrap();
    assert_eq!(answer, "served");
    for (who, client) in [
        ("idle", &idle),
        ("mid-transaction", &in_transaction),
        ("waiting", &waiting),
    ] {
        assert_eq!(one(client, query).await, expected, "{who} client");
    }
    assert_eq!(
        db.count("SELECT count(*) FROM items WHERE v = 'before reload'"),
        1
    );
    wait_until(
        "the old pool's server to close",
        Duration::from_secs(10),
        || {
            db.count(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = {old_server}"
            )) == 0
        },
    );
}

impl Change {
    /// A change that only needs the new config; nothing else to tell PostgreSQL.
    fn new(before: ConfigBuilder, after: ConfigBuilder) -> Change {
        Change {
            before,
            after,
            server_side: None,
            new_password: ALICE_PASSWORD,
            shows_new_pool: ("SELECT 'ok'", "ok"),
        }
    }

    fn shows(mut self, query: &'static str, expected: &'static str) -> Change {
        self.shows_new_pool = (query, expected);
        self
    }

    /// alice's password changes in PostgreSQL just before the reload.
    fn renews_password(mut self) -> Change {
        self.server_side = Some("ALTER ROLE alice PASSWORD 'alice-renewed'");
        self
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn host_change() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let before = base(&pki, &db);
    let after = before.clone().server_host("127.0.0.1");
    reload_keeps_everyone_working(&pki, &db, Change::new(before, after)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn port_change() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let tap = TcpTap::start(db.port()).await;
    let before = base(&pki, &db);
    let after = before.clone().server_port(tap.port());
    reload_keeps_everyone_working(&pki, &db, Change::new(before, after)).await;
    assert!(
        !tap.first_codes().is_empty(),
        "the new pool did not connect through the new port"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dbname_change() {
    let pki = Pki::new();
    let db = TestDb::start_with(&pki, |opts| opts.databases.push("app2".into()));
    db.sql("app2", "GRANT USAGE, CREATE ON SCHEMA public TO PUBLIC");
    let before = base(&pki, &db);
    let after = before.clone().server_dbname("app2");
    let change = Change::new(before, after).shows("SELECT current_database()", "app2");
    reload_keeps_everyone_working(&pki, &db, change).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn user_change() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let before = base(&pki, &db).database_line("user = \"alice\"");
    let after = base(&pki, &db).database_line("user = \"bob\"");
    let change = Change::new(before, after).shows("SELECT current_user", "bob");
    reload_keeps_everyone_working(&pki, &db, change).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn entry_password_change() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let before = base(&pki, &db).database_line(&format!("password = \"{ALICE_PASSWORD}\""));
    let after = base(&pki, &db).database_line(&format!("password = \"{NEW_PASSWORD}\""));
    // Clients still log in to pgmoat with the auth_file password.
    let change = Change::new(before, after).renews_password();
    reload_keeps_everyone_working(&pki, &db, change).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_file_password_change() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let before = base(&pki, &db);
    let after = base(&pki, &db).userlist(&[("alice", NEW_PASSWORD), ("bob", BOB_PASSWORD)]);
    let mut change = Change::new(before, after).renews_password();
    change.new_password = NEW_PASSWORD;
    reload_keeps_everyone_working(&pki, &db, change).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_mode_change() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let before = base(&pki, &db);
    // Session mode holds a server per client: room for all four.
    let after = base(&pki, &db)
        .set_str("pool_mode", "session")
        .set("default_pool_size", "4");
    reload_keeps_everyone_working(&pki, &db, Change::new(before, after)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_size_change_across_worker_shares() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    // With two workers a pool of 1 is one share and a pool of 8 is two.
    let before = base(&pki, &db).set("worker_threads", "2");
    let after = before.clone().set("default_pool_size", "8");
    reload_keeps_everyone_working(&pki, &db, Change::new(before, after)).await;
}
