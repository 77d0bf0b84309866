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

/// Session state pgmoat neither tracks nor pins (a sequence's currval, for one) stays on the
/// server for the next client, as in PgBouncer, unless server_reset_query_always runs
/// server_reset_query (DISCARD ALL) after every transaction.
#[tokio::test(flavor = "multi_thread")]
async fn server_reset_query_always_discards_session_state_after_each_transaction() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql(
        APP_DB,
        "CREATE SEQUENCE counter; GRANT ALL ON SEQUENCE counter TO PUBLIC",
    );
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
        a.batch_execute("SELECT nextval('counter')").await.unwrap();
        let seen = b.query_one("SELECT currval('counter')", &[]).await.is_ok();
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
