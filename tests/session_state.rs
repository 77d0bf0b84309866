//! Session-level settings under transaction pooling: whatever a client SETs follows it to
//! whichever server it gets next and is never seen by another client, `SET ROLE` and `SET
//! SESSION AUTHORIZATION` included (RESET ALL does not reset those two), and a SET that a
//! ROLLBACK reverted is not replayed.

mod support;

use support::*;
use tokio_postgres::Client;

/// A pool of one server, so every client gets the server the previous one used.
fn one_server(pki: &Pki, db: &TestDb) -> Pgmoat {
    Pgmoat::start(
        &ConfigBuilder::new(pki, db)
            .set("default_pool_size", "1")
            .userlist(&[
                ("alice", ALICE_PASSWORD),
                ("bob", BOB_PASSWORD),
                ("boss", "boss-secret"),
            ])
            .build(),
    )
}

async fn boss(moat: &Pgmoat, pki: &Pki) -> Client {
    let mut config = pg_config(moat.port(), "boss", Some("boss-secret"), APP_DB);
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    moat_client_with(moat, pki, config).await.0
}

async fn one(client: &Client, sql: &str) -> String {
    text_value(client, sql).await
}

#[tokio::test(flavor = "multi_thread")]
async fn set_role_follows_its_client_and_no_one_else() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql(APP_DB, "CREATE ROLE tenant_a; GRANT tenant_a TO alice");
    let moat = one_server(&pki, &db);
    let a = moat_client(&moat, &pki, "alice").await;
    let b = moat_client(&moat, &pki, "alice").await;
    // Positive control: the same server serves both.
    let pid = one(&a, "SELECT pg_backend_pid()").await;
    assert_eq!(one(&b, "SELECT pg_backend_pid()").await, pid);

    a.batch_execute("SET ROLE tenant_a").await.unwrap();
    assert_eq!(one(&b, "SELECT current_user").await, "alice");
    assert_eq!(one(&a, "SELECT current_user").await, "tenant_a");
    assert_eq!(one(&b, "SELECT current_user").await, "alice");
    // Inside a transaction of b's, too, and then after a's RESET ROLE.
    b.batch_execute("BEGIN").await.unwrap();
    assert_eq!(one(&b, "SELECT current_user").await, "alice");
    b.batch_execute("COMMIT").await.unwrap();
    a.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(one(&a, "SELECT current_user").await, "alice");
    // The server itself went back to alice: nothing was reset only on paper.
    assert_eq!(
        db.count(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'alice' \
             AND backend_type = 'client backend'"
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn set_session_authorization_never_reaches_another_client() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql(
        APP_DB,
        "CREATE ROLE boss LOGIN SUPERUSER PASSWORD 'boss-secret'",
    );
    let moat = one_server(&pki, &db);
    let a = boss(&moat, &pki).await;
    let b = boss(&moat, &pki).await;
    a.batch_execute("SET SESSION AUTHORIZATION alice")
        .await
        .unwrap();
    assert_eq!(
        one(&b, "SELECT session_user || '/' || current_user").await,
        "boss/boss"
    );
    assert_eq!(
        one(&a, "SELECT session_user || '/' || current_user").await,
        "alice/alice"
    );
    // SET ROLE on top of it, then back.
    a.batch_execute("RESET SESSION AUTHORIZATION; SET ROLE alice")
        .await
        .unwrap();
    assert_eq!(
        one(&b, "SELECT session_user || '/' || current_user").await,
        "boss/boss"
    );
    assert_eq!(
        one(&a, "SELECT session_user || '/' || current_user").await,
        "boss/alice"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn any_set_follows_its_client_and_a_rollback_reverts_it() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = one_server(&pki, &db);
    let a = moat_client(&moat, &pki, "alice").await;
    let b = moat_client(&moat, &pki, "alice").await;
    a.batch_execute("SET search_path = pg_catalog, public; SET work_mem = '7MB'")
        .await
        .unwrap();
    a.batch_execute("SELECT set_config('statement_timeout', '4s', false)")
        .await
        .unwrap();
    assert_eq!(one(&b, "SHOW search_path").await, "\"$user\", public");
    assert_eq!(one(&b, "SHOW work_mem").await, "4MB");
    assert_eq!(one(&b, "SHOW statement_timeout").await, "0");
    assert_eq!(one(&a, "SHOW search_path").await, "pg_catalog, public");
    assert_eq!(one(&a, "SHOW work_mem").await, "7MB");
    assert_eq!(one(&a, "SHOW statement_timeout").await, "4s");

    // A SET inside a transaction that is rolled back never happened.
    a.batch_execute("BEGIN; SET work_mem = '9MB'; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(one(&b, "SHOW work_mem").await, "4MB");
    assert_eq!(one(&a, "SHOW work_mem").await, "7MB");
    // SET LOCAL lasts one transaction; RESET goes back to the default.
    a.batch_execute("BEGIN; SET LOCAL work_mem = '11MB'; COMMIT")
        .await
        .unwrap();
    assert_eq!(one(&a, "SHOW work_mem").await, "7MB");
    a.batch_execute("RESET work_mem").await.unwrap();
    assert_eq!(one(&a, "SHOW work_mem").await, "4MB");
    assert_eq!(one(&a, "SHOW search_path").await, "pg_catalog, public");
}
