//! Pools made for the `*` database entry: a name whose first login fails leaves nothing
//! behind, so a loop over random names cannot grow pools, SHOW output, /metrics labels or
//! memory; and a pool nobody uses is forgotten after autodb_idle_timeout.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tokio_postgres::SimpleQueryMessage;

fn star_entry(db: &TestDb) -> String {
    format!(
        "\n[databases.\"*\"]\nhost = \"localhost\"\nport = {}\n",
        db.port()
    )
}

async fn console(moat: &Pgmoat) -> tokio_postgres::Client {
    connect(moat.port(), "alice", None, "pgbouncer", None)
        .await
        .unwrap()
}

/// The database column of every row of `command` on the console.
async fn databases_in(admin: &tokio_postgres::Client, command: &str) -> Vec<String> {
    let rows = admin.simple_query(command).await.unwrap();
    rows.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get("database").unwrap_or_default().to_owned()),
            _ => None,
        })
        .collect()
}

/// 10 000 logins to random database names through `*`: each is refused with PostgreSQL's
/// 3D000, and afterwards SHOW POOLS, SHOW STATS and /metrics know none of them, and pgmoat's
/// peak memory grew by far less than 10 000 pools would take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_database_names_leave_nothing_behind() {
    let pki = Pki::new();
    // Plaintext and trust on both hops: each refused name then costs a PostgreSQL fork and
    // little else, so 10 000 of them fit in a CI run (what is measured is pgmoat's memory).
    let db = TestDb::start_with(&pki, |opts| {
        opts.hba = vec!["host all all 127.0.0.1/32 trust".into()];
    });
    let metrics_port = free_port();
    let moat = Arc::new(Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .client_sslmode("disable")
            .server_sslmode("disable")
            .auth_type("trust")
            .set("admin_users", "[\"alice\"]")
            .set_str("metrics_addr", &format!("127.0.0.1:{metrics_port}"))
            .line(&star_entry(&db))
            .build(),
    ));
    // A real pool through `*`, the positive control that `*` works and is kept.
    let kept = connect(moat.port(), "alice", None, "postgres", None)
        .await
        .unwrap();
    let before = moat.peak_rss_kib();

    const NAMES: usize = 10_000;
    const TASKS: usize = 8;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let moat = moat.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..NAMES / TASKS {
                let name = format!("nope_{t}_{i}_{:08x}", rand_u32(t, i));
                let err = connect(moat.port(), "alice", None, &name, None)
                    .await
                    .err()
                    .unwrap_or_else(|| panic!("{name} logged in"));
                assert_eq!(
                    err.code(),
                    Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME),
                    "{name}: {err:?}"
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    eprintln!("{NAMES} refused logins took {:?}", started.elapsed());

    let admin = console(&moat).await;
    let pools = databases_in(&admin, "SHOW POOLS").await;
    assert!(
        pools.iter().all(|d| !d.starts_with("nope_")) && pools.contains(&"postgres".to_owned()),
        "SHOW POOLS: {pools:?}"
    );
    let stats = databases_in(&admin, "SHOW STATS").await;
    assert!(
        stats.iter().all(|d| !d.starts_with("nope_")),
        "SHOW STATS: {stats:?}"
    );
    let metrics = http_fetch(metrics_port, "/metrics").await;
    assert!(
        !metrics.contains("nope_"),
        "/metrics still names a random database"
    );
    assert!(
        metrics.contains("database=\"postgres\""),
        "the kept pool is in /metrics"
    );
    let grown_mib = moat.peak_rss_kib().saturating_sub(before) as f64 / 1024.0;
    assert!(grown_mib < 64.0, "pgmoat grew {grown_mib:.1} MiB");
    let one: i32 = kept.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// A cheap, deterministic spread of names (no RNG needed for uniqueness: t and i are).
fn rand_u32(t: usize, i: usize) -> u32 {
    let mut x = (t as u32).wrapping_mul(0x9e37_79b9) ^ (i as u32).wrapping_mul(0x85eb_ca6b);
    x ^= x >> 16;
    x.wrapping_mul(0xc2b2_ae35)
}

/// autodb_idle_timeout: a `*` pool nobody holds is forgotten once the timeout passed,
/// while one a connected client holds stays (the positive control), and its client goes on.
#[tokio::test]
async fn an_unused_star_pool_expires_after_autodb_idle_timeout() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql("postgres", "CREATE DATABASE other");
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .client_sslmode("disable")
            .auth_type("trust")
            .set("admin_users", "[\"alice\"]")
            .set("autodb_idle_timeout", "1")
            .line(&star_entry(&db))
            .build(),
    );
    let held = connect(moat.port(), "alice", None, "other", None)
        .await
        .unwrap();
    let left = connect(moat.port(), "alice", None, "postgres", None)
        .await
        .unwrap();
    let _: i32 = left.query_one("SELECT 1", &[]).await.unwrap().get(0);
    let admin = console(&moat).await;
    assert!(
        databases_in(&admin, "SHOW POOLS")
            .await
            .contains(&"postgres".to_owned())
    );
    drop(left);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pools = databases_in(&admin, "SHOW POOLS").await;
        if !pools.contains(&"postgres".to_owned()) {
            assert!(
                pools.contains(&"other".to_owned()),
                "a held pool stays: {pools:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the unused pool was never forgotten: {pools:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    moat.wait_for_log("autodb_idle_timeout", Duration::from_secs(5));
    let one: i32 = held.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}
