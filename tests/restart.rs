//! PostgreSQL restarted or stopped under pgmoat: idle clients carry on (their pooled backends
//! died, so pgmoat notices at checkout and opens new ones), a transaction that was open fails
//! for its own client only, and while the server is down queries fail instead of hanging.

mod support;

use std::time::Duration;

use support::*;
use tokio_postgres::Client;

async fn pid(client: &Client) -> Result<i32, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_carry_on_after_a_postgresql_restart() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "3")
            .build(),
    );
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(moat_client(&moat, &pki, "alice").await);
    }
    // Three backends in the pool, all idle once the transactions end.
    let mut before = Vec::new();
    for client in &clients {
        client.batch_execute("BEGIN").await.unwrap();
        before.push(pid(client).await.unwrap());
    }
    for client in &clients {
        client.batch_execute("COMMIT").await.unwrap();
    }
    assert_eq!(db.backends_of("alice"), 3);

    db.restart().unwrap();

    for (i, client) in clients.iter().enumerate() {
        let after = pid(client)
            .await
            .unwrap_or_else(|e| panic!("client {i} after the restart: {e:?}\n{}", moat.log()));
        assert!(
            !before.contains(&after),
            "a pre-restart backend pid came back"
        );
        client
            .execute(
                "INSERT INTO items (v) VALUES ($1)",
                &[&format!("client {i}")],
            )
            .await
            .unwrap();
    }
    assert_eq!(db.count("SELECT count(*) FROM items"), 3);
    let newcomer = moat_client(&moat, &pki, "alice").await;
    assert_eq!(
        text_value(&newcomer, "SELECT count(*) FROM items").await,
        "3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_open_across_a_restart_fails_for_its_client_only() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(&ConfigBuilder::new(&pki, &db).build());
    let in_tx = moat_client(&moat, &pki, "alice").await;
    let idle = moat_client(&moat, &pki, "alice").await;
    // Simple protocol: a prepared query would leave its Close in flight, and that Close
    // would be the one caught by the restart.
    text_value(&idle, "SELECT 1").await;
    in_tx.batch_execute("BEGIN").await.unwrap();
    in_tx
        .execute("INSERT INTO items (v) VALUES ('lost')", &[])
        .await
        .unwrap();

    db.restart().unwrap();

    assert!(
        in_tx.batch_execute("COMMIT").await.is_err(),
        "a transaction survived a PostgreSQL restart?"
    );
    pid(&idle)
        .await
        .unwrap_or_else(|e| panic!("idle client after the restart: {e:?}\n{}", moat.log()));
    assert_eq!(db.count("SELECT count(*) FROM items"), 0);
    let newcomer = moat_client(&moat, &pki, "alice").await;
    pid(&newcomer).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_while_postgresql_is_down_fail_and_service_resumes() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("server_connect_timeout", "3")
            .build(),
    );
    let client = moat_client(&moat, &pki, "alice").await;
    pid(&client).await.unwrap();

    db.stop().unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), pid(&client))
        .await
        .expect("a query hung while PostgreSQL was down");
    let err = outcome.expect_err("a query succeeded with PostgreSQL down");
    // An ERROR for that query (SQLSTATE 08001), not the end of the client's connection.
    let db_error = err
        .as_db_error()
        .expect("an ErrorResponse, not a closed connection");
    assert_eq!(db_error.code().code(), "08001", "{db_error:?}");
    assert_eq!(db_error.severity(), "ERROR");
    assert!(!client.is_closed(), "the client keeps its connection");

    db.start_again().unwrap();
    pid(&client).await.unwrap_or_else(|e| {
        panic!(
            "the same client after PostgreSQL came back: {e:?}\n{}",
            moat.log()
        )
    });
    let newcomer = moat_client(&moat, &pki, "alice").await;
    pid(&newcomer)
        .await
        .unwrap_or_else(|e| panic!("after PostgreSQL came back: {e:?}\n{}", moat.log()));
}

/// The pid of the server connection that runs `sleep_sql` for a client, once PostgreSQL
/// shows it sleeping.
async fn sleeping_backend(db: &TestDb) -> i32 {
    let mut found = String::new();
    eventually(
        "the client's query to be running on a server",
        Duration::from_secs(10),
        || {
            found = db.sql(
                "postgres",
                "SELECT pid FROM pg_stat_activity WHERE usename = 'alice' AND query LIKE '%pg_sleep%' AND state = 'active'",
            );
            !found.trim().is_empty()
        },
    )
    .await;
    found.trim().parse().unwrap()
}

/// A new client runs `SELECT pg_sleep(30)` (after `before`, if any) and PostgreSQL terminates
/// its server under it. The client, what the sleep returned, and the terminated pid.
async fn terminated_under_a_sleep(
    moat: &Pgmoat,
    pki: &Pki,
    db: &TestDb,
    before: Option<&'static str>,
) -> (Client, Result<(), tokio_postgres::Error>, i32) {
    let client = moat_client(moat, pki, "alice").await;
    let running = tokio::spawn(async move {
        if let Some(sql) = before {
            client.batch_execute(sql).await.unwrap();
        }
        let result = client.batch_execute("SELECT pg_sleep(30)").await;
        (result, client)
    });
    let victim = sleeping_backend(db).await;
    db.sql(
        "postgres",
        &format!("SELECT pg_terminate_backend({victim})"),
    );
    let (result, client) = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the terminated query hung")
        .unwrap();
    (client, result, victim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_terminated_under_a_query_costs_that_query_or_that_transaction() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(&ConfigBuilder::new(&pki, &db).build());

    // Autocommit: PostgreSQL's FATAL is all the answer there is, so nothing of the query
    // took effect; the client gets an ERROR for it and keeps its connection.
    let client = moat_client(&moat, &pki, "alice").await;
    let (sleeper, result, victim) = terminated_under_a_sleep(&moat, &pki, &db, None).await;
    let err = result.expect_err("a terminated query succeeded");
    let db_error = err.as_db_error().unwrap_or_else(|| {
        panic!(
            "an ErrorResponse, not a closed connection: {err:?}\n{}",
            moat.log()
        )
    });
    assert_eq!(db_error.code().code(), "08006", "{db_error:?}");
    assert_eq!(db_error.severity(), "ERROR");
    assert!(
        db_error.detail().is_some_and(|d| d.contains("57P01")),
        "PostgreSQL's reason is passed on: {db_error:?}"
    );
    assert!(!sleeper.is_closed(), "the client keeps its connection");
    let next = pid(&sleeper).await.unwrap();
    assert_ne!(next, victim, "a new server");
    pid(&client).await.unwrap();

    // Inside a transaction the transaction is lost: the client gets an ERROR and stays in a
    // failed transaction block, as after any failed statement, until it ends the block; its
    // COMMIT is answered as PostgreSQL answers one in a failed block, with ROLLBACK.
    let (in_tx, result, _) = terminated_under_a_sleep(&moat, &pki, &db, Some("BEGIN")).await;
    let err = result.expect_err("a terminated transaction went on");
    let db_error = err
        .as_db_error()
        .expect("an ErrorResponse, not a closed connection");
    assert_eq!(db_error.code().code(), "08006", "{db_error:?}");
    assert_eq!(db_error.severity(), "ERROR");
    assert!(!in_tx.is_closed(), "the client keeps its connection");
    let err = in_tx
        .simple_query("INSERT INTO items (v) VALUES ('lost')")
        .await
        .expect_err("a statement ran in a failed block");
    assert_eq!(err.code().map(|c| c.code()), Some("25P02"), "{err:?}");
    let answers = in_tx.simple_query("COMMIT").await.unwrap();
    assert!(
        matches!(
            answers.last(),
            Some(tokio_postgres::SimpleQueryMessage::CommandComplete(0))
        ),
        "{answers:?}"
    );
    assert_eq!(
        db.sql("app", "SELECT count(*) FROM items WHERE v = 'lost'"),
        "0"
    );
    // Out of the block, the client is an ordinary client again, on a new server.
    in_tx
        .batch_execute("BEGIN; INSERT INTO items (v) VALUES ('kept'); COMMIT")
        .await
        .unwrap();
    assert_eq!(
        db.sql("app", "SELECT count(*) FROM items WHERE v = 'kept'"),
        "1"
    );
    pid(&client).await.unwrap();
}
