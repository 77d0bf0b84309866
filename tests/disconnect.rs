//! Clients and backends that vanish: a client killed inside a transaction or in the middle of
//! COPY FROM STDIN leaves nothing open for the next client of its backend slot; a backend
//! killed while idle in the pool is replaced unnoticed; a backend killed under a client
//! fails that client only.

mod support;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use support::*;
use tokio_postgres::Client;

async fn pid(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

fn single_backend(pki: &Pki, db: &TestDb) -> String {
    ConfigBuilder::new(pki, db)
        .set("default_pool_size", "1")
        .set("query_wait_timeout", "20")
        .build()
}

#[tokio::test]
async fn client_killed_mid_transaction_leaves_no_open_transaction() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(&single_backend(&pki, &db));

    let (killed, connection) = moat_client_with(&moat, &pki, moat_config(&moat, "alice")).await;
    killed.batch_execute("BEGIN").await.unwrap();
    killed
        .execute(
            "INSERT INTO items (v) VALUES ('from the killed client')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(db.idle_in_transaction(), 1);
    // The TCP connection goes away without Terminate, as when a process is killed.
    connection.abort();
    drop(killed);

    eventually(
        "the killed client's transaction to end",
        Duration::from_secs(10),
        || db.idle_in_transaction() == 0,
    )
    .await;
    // The pool's only slot is free again, and what it holds is clean.
    let next = moat_client(&moat, &pki, "alice").await;
    assert_eq!(text_value(&next, "SELECT count(*) FROM items").await, "0");
    next.batch_execute("BEGIN; INSERT INTO items (v) VALUES ('next'); COMMIT")
        .await
        .unwrap();
    assert_eq!(db.sql(APP_DB, "SELECT v FROM items"), "next");
    assert_eq!(db.idle_in_transaction(), 0);
}

fn copy_data(row: &str) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u8(b'd');
    out.put_u32(row.len() as u32 + 4);
    out.put_slice(row.as_bytes());
    out
}

#[tokio::test]
async fn client_killed_mid_copy_leaves_nothing_behind() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(&single_backend(&pki, &db));

    let mut copier = moat_raw(&moat, &pki, "alice", &[]).await;
    copier.send(&wire::query("COPY items (v) FROM STDIN")).await;
    let answer = copier.recv().await.unwrap();
    assert_eq!(answer.tag, b'G', "expected CopyInResponse");
    for i in 0..100 {
        copier.send(&copy_data(&format!("row {i}\n"))).await;
    }
    let copying = || {
        db.count(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = 'alice' AND query LIKE 'COPY%' AND state = 'active'",
        )
    };
    assert_eq!(copying(), 1);
    // Gone mid-COPY: no CopyDone, no CopyFail, no Terminate.
    drop(copier);

    eventually("the COPY to be abandoned", Duration::from_secs(10), || {
        copying() == 0
    })
    .await;
    let next = moat_client(&moat, &pki, "alice").await;
    assert_eq!(text_value(&next, "SELECT count(*) FROM items").await, "0");
    next.execute("INSERT INTO items (v) VALUES ('after')", &[])
        .await
        .unwrap();
    assert_eq!(db.sql(APP_DB, "SELECT v FROM items"), "after");
    assert_eq!(db.idle_in_transaction(), 0);
}

#[tokio::test]
async fn backend_killed_while_idle_in_the_pool_is_replaced() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(&single_backend(&pki, &db));

    let client = moat_client(&moat, &pki, "alice").await;
    let first = pid(&client).await;
    assert_eq!(
        db.sql(APP_DB, &format!("SELECT pg_terminate_backend({first})")),
        "t"
    );
    eventually("the backend to exit", Duration::from_secs(10), || {
        !db.backend_pids("alice").contains(&first)
    })
    .await;

    // Neither the client that used it nor a new one notices.
    let second = pid(&client).await;
    assert_ne!(second, first);
    let other = moat_client(&moat, &pki, "alice").await;
    assert_eq!(
        pid(&other).await,
        second,
        "the pool of one was not refilled"
    );
}

#[tokio::test]
async fn backend_killed_under_a_client_fails_only_that_client() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "2")
            .set("query_wait_timeout", "20")
            .build(),
    );

    let victim = moat_client(&moat, &pki, "alice").await;
    let bystander = moat_client(&moat, &pki, "alice").await;
    victim.batch_execute("BEGIN").await.unwrap();
    let victim_pid = pid(&victim).await;
    bystander.batch_execute("BEGIN").await.unwrap();
    bystander
        .execute("INSERT INTO items (v) VALUES ('bystander')", &[])
        .await
        .unwrap();

    db.sql(
        APP_DB,
        &format!("SELECT pg_terminate_backend({victim_pid})"),
    );
    let err = victim
        .batch_execute("SELECT 1")
        .await
        .expect_err("the client of a killed backend carried on");
    // Either PostgreSQL's own FATAL (relayed) or pgmoat's report of the lost server.
    assert!(
        err.as_db_error()
            .is_none_or(|e| e.code().code().starts_with("57") || e.code().code().starts_with("08")),
        "{err:?}"
    );

    // The other client's transaction is untouched.
    bystander.batch_execute("COMMIT").await.unwrap();
    assert_eq!(db.sql(APP_DB, "SELECT v FROM items"), "bystander");
    // The killed backend's slot is usable again.
    let next = moat_client(&moat, &pki, "alice").await;
    next.batch_execute("BEGIN").await.unwrap();
    assert_ne!(pid(&next).await, victim_pid);
    let again = pid(&bystander).await;
    assert!(again > 0);
    next.batch_execute("COMMIT").await.unwrap();
}

/// A forwarder to PostgreSQL that, once armed, drops the next connection pgmoat sends
/// anything on (without forwarding it): a server that died after its last check.
async fn dropping_forwarder(
    target_port: u16,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let armed = Arc::new(AtomicBool::new(false));
    let trigger = armed.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let armed = armed.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let mut buf = vec![0u8; 16384];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if armed.swap(false, Ordering::SeqCst) {
                            return;
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                // Either way ends both: dropping the halves closes both sockets.
                tokio::select! { () = up => {}, () = down => {} }
            });
        }
    });
    (port, trigger)
}

#[tokio::test]
async fn server_lost_while_applying_a_clients_settings_is_replaced() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let (port, arm) = dropping_forwarder(db.port()).await;
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .server_port(port)
            .set("default_pool_size", "1")
            .set("query_wait_timeout", "20")
            .build(),
    );
    let with_name = |name: &str| {
        let mut config = moat_config(&moat, "alice");
        config.application_name(name);
        config
    };
    let (a, _) = moat_client_with(&moat, &pki, with_name("a")).await;
    let (b, _) = moat_client_with(&moat, &pki, with_name("b")).await;
    // The pool's one server last ran for a: b's next query needs a SET first.
    // Simple queries only: a prepared statement's Close would come after the answer.
    let first = simple_pid(&a).await;
    arm.store(true, std::sync::atomic::Ordering::SeqCst);
    // The SET meets a dead connection; b's query runs on a new server all the same.
    let second = simple_pid(&b).await;
    assert_ne!(second, first, "{}", moat.log());
    let name: String = b
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "b");
    assert!(
        moat.log()
            .contains("server connection lost while applying the client's settings"),
        "{}",
        moat.log()
    );
}

async fn simple_pid(client: &Client) -> String {
    match &client
        .simple_query("SELECT pg_backend_pid()")
        .await
        .unwrap()[1]
    {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).unwrap().to_owned(),
        other => panic!("{other:?}"),
    }
}
