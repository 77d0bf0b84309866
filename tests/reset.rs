//! What a server carries from one transaction to the next: server_reset_query_always and
//! server_lifetime = 0 (use once), with PgBouncer's meanings.

mod support;

use support::*;

async fn client(pgmoat: &Pgmoat, pki: &Pki) -> tokio_postgres::Client {
    connect(
        pgmoat.port(),
        "alice",
        Some(ALICE_PASSWORD),
        APP_DB,
        Some(tls_client_config(&pki.ca, None)),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn server_reset_query_always_discards_session_state_after_each_transaction() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql(APP_DB, "GRANT TEMPORARY ON DATABASE app TO alice");
    let temp_table_seen = "SELECT to_regclass('pg_temp.scratch') IS NOT NULL";
    for (always, survives) in [(false, true), (true, false)] {
        let config = ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "1")
            .set(
                "server_reset_query_always",
                if always { "true" } else { "false" },
            )
            .build();
        let pgmoat = Pgmoat::start(&config);
        let a = client(&pgmoat, &pki).await;
        let b = client(&pgmoat, &pki).await;
        a.batch_execute("CREATE TEMP TABLE scratch (x int)")
            .await
            .unwrap();
        let seen: bool = b.query_one(temp_table_seen, &[]).await.unwrap().get(0);
        assert_eq!(seen, survives, "server_reset_query_always = {always}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_lifetime_zero_uses_each_connection_once() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let config = ConfigBuilder::new(&pki, &db)
        .set("server_lifetime", "0")
        .build();
    let pgmoat = Pgmoat::start(&config);
    let c = client(&pgmoat, &pki).await;
    let mut pids = std::collections::HashSet::new();
    for _ in 0..3 {
        let pid: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(pids.insert(pid), "backend {pid} was used twice");
    }
}
