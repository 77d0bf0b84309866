//! Limits a client can run into: query_wait_timeout (waiting too long for a backend),
//! max_client_conn (SQLSTATE 53300) and max_user_connections across two pools of one user.

mod support;

use std::time::Duration;

use support::*;
use tokio_postgres::error::SqlState;

#[tokio::test]
async fn query_wait_timeout_ends_a_wait_with_an_error_that_says_so() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "1")
            .set("query_wait_timeout", "1")
            .build(),
    );
    let holder = moat_client(&moat, &pki, "alice").await;
    let waiter = moat_client(&moat, &pki, "alice").await;
    holder.batch_execute("BEGIN").await.unwrap();
    text_value(&holder, "SELECT 1").await;

    let err = tokio::time::timeout(Duration::from_secs(15), waiter.batch_execute("SELECT 1"))
        .await
        .expect("the waiting client was never told")
        .expect_err("a second backend appeared in a pool of one");
    let db_err = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert!(
        db_err.message().contains("query_wait_timeout"),
        "{db_err:?}"
    );

    // The holder never noticed, and once it is done the pool serves again.
    holder.batch_execute("COMMIT").await.unwrap();
    let next = moat_client(&moat, &pki, "alice").await;
    assert_eq!(text_value(&next, "SELECT 1").await, "1");
}

#[tokio::test]
async fn max_client_conn_refuses_with_53300() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("max_client_conn", "2")
            .build(),
    );
    let first = moat_client(&moat, &pki, "alice").await;
    let _second = moat_client(&moat, &pki, "alice").await;

    let tls = tls_client_config(&pki.ca, None);
    let err = connect_config(moat_config(&moat, "alice"), Some(tls.clone()))
        .await
        .expect_err("a third client got in with max_client_conn = 2");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err:?}");

    // A client that leaves makes room.
    drop(first);
    let mut admitted = None;
    for _ in 0..100 {
        match connect_config(moat_config(&moat, "alice"), Some(tls.clone())).await {
            Ok(client) => {
                admitted = Some(client);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let admitted = admitted.expect("no room after a client left");
    assert_eq!(text_value(&admitted, "SELECT 1").await, "1");
}

#[tokio::test]
async fn max_user_connections_spans_the_pools_of_one_user() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    // A second database name for the same PostgreSQL database: a second pool for alice.
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "2")
            .set("max_user_connections", "1")
            .line("[databases.app2]")
            .line("host = \"localhost\"")
            .line(&format!("port = {}", db.port()))
            .line("dbname = \"app\"")
            .build(),
    );
    let on_app = moat_client(&moat, &pki, "alice").await;
    text_value(&on_app, "SELECT 1").await;
    let mut config = moat_config(&moat, "alice");
    config.dbname("app2");
    let on_app2 = moat_client_with(&moat, &pki, config).await.0;
    assert_eq!(
        text_value(&on_app2, "SELECT current_database()").await,
        "app"
    );
    eventually("alice to hold one backend", Duration::from_secs(10), || {
        db.backends_of("alice") == 1
    })
    .await;
    // And back: app's pool makes room again by closing app2's idle backend.
    text_value(&on_app, "SELECT 1").await;
    eventually("alice to hold one backend", Duration::from_secs(10), || {
        db.backends_of("alice") == 1
    })
    .await;
}
