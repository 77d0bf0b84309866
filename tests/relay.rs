//! What flows through pgmoat once a client is in: TLS all the way (pg_stat_ssl), the extended
//! protocol with many types and pooled prepared statements, COPY both ways with exact counts,
//! notices, and results and COPY streams far larger than pgmoat's memory grows.

mod support;

use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};

use support::*;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::{DbError, SqlState};
use tokio_postgres::{AsyncMessage, Client};
use tokio_postgres_rustls::MakeRustlsConnect;

const MB: i64 = 1024 * 1024;

async fn alice(pki: &Pki, pgmoat: &Pgmoat) -> Client {
    let tls = tls_client_config(&pki.ca, None);
    connect(
        pgmoat.port(),
        "alice",
        Some(ALICE_PASSWORD),
        APP_DB,
        Some(tls),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}\n{}", pgmoat.log()))
}

/// A client whose notices arrive on the returned channel (tokio-postgres only hands them to
/// whoever polls the connection).
async fn alice_with_notices(
    pki: &Pki,
    pgmoat: &Pgmoat,
) -> (Client, tokio::sync::mpsc::UnboundedReceiver<DbError>) {
    let mut config = pg_config(pgmoat.port(), "alice", Some(ALICE_PASSWORD), APP_DB);
    config.ssl_mode(SslMode::Require);
    let tls = MakeRustlsConnect::new(tls_client_config(&pki.ca, None));
    let (client, mut connection) = config.connect(tls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notice(notice)) => {
                    let _ = tx.send(notice);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    (client, rx)
}

/// A `kB` line of /proc/<pid>/status (VmRSS, VmHWM), in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kb: i64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

/// COPY FROM STDIN of `rows` rows through tokio-postgres (the extended protocol).
async fn extended_copy_in(client: &Client, rows: usize) -> Result<u64, tokio_postgres::Error> {
    let sink = client
        .copy_in::<_, Bytes>("COPY items (v) FROM STDIN")
        .await?;
    let mut sink = pin!(sink);
    for i in 0..rows {
        sink.send(Bytes::from(format!("ext-copy-{i:03}\n"))).await?;
    }
    sink.as_mut().finish().await
}

/// A COPY FROM STDIN the client gives up on: tokio-postgres sends CopyFail and Sync.
async fn abandoned_copy_in(client: &Client) {
    let sink = client
        .copy_in::<_, Bytes>("COPY items (v) FROM STDIN")
        .await
        .unwrap();
    let mut sink = Box::pin(sink);
    sink.send(Bytes::from_static(b"abandoned\n")).await.unwrap();
    drop(sink);
}

/// A COPY FROM STDIN PostgreSQL rejects half-way (an id that is not a number).
async fn rejected_copy_in(client: &Client) -> tokio_postgres::Error {
    let sink = client
        .copy_in::<_, Bytes>("COPY items (id, v) FROM STDIN")
        .await
        .unwrap();
    let mut sink = pin!(sink);
    let result = async {
        sink.send(Bytes::from_static(b"not-a-number\trejected\n"))
            .await?;
        sink.as_mut().finish().await
    }
    .await;
    result.expect_err("PostgreSQL accepted a non-numeric id")
}

#[tokio::test]
async fn tls_to_postgresql_extended_protocol_and_pooled_prepared_statements() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    // One server connection for everyone: statements must survive being shared.
    let pgmoat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "1")
            .build(),
    );
    let mut a = alice(&pki, &pgmoat).await;
    let b = alice(&pki, &pgmoat).await;

    let ssl: bool = a
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "pgmoat's connection to PostgreSQL is not encrypted");

    let row = a
        .query_one(
            "SELECT $1::int2, $2::int4, $3::int8, $4::float4, $5::float8, $6::bool, $7::text, \
             $8::bytea, $9::int4[], $10::text[], $11::int4, $12::oid",
            &[
                &7i16,
                &-42i32,
                &(1i64 << 40),
                &1.5f32,
                &-2.25f64,
                &true,
                &"héllo ✓ 'quoted'",
                &vec![0u8, 1, 255],
                &vec![1i32, -2, 3],
                &vec!["a".to_owned(), "b c".to_owned()],
                &None::<i32>,
                &42u32,
            ],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i16>(0), 7);
    assert_eq!(row.get::<_, i32>(1), -42);
    assert_eq!(row.get::<_, i64>(2), 1 << 40);
    assert_eq!(row.get::<_, f32>(3), 1.5);
    assert_eq!(row.get::<_, f64>(4), -2.25);
    assert!(row.get::<_, bool>(5));
    assert_eq!(row.get::<_, String>(6), "héllo ✓ 'quoted'");
    assert_eq!(row.get::<_, Vec<u8>>(7), vec![0, 1, 255]);
    assert_eq!(row.get::<_, Vec<i32>>(8), vec![1, -2, 3]);
    assert_eq!(row.get::<_, Vec<String>>(9), vec!["a", "b c"]);
    assert_eq!(row.get::<_, Option<i32>>(10), None);
    assert_eq!(row.get::<_, u32>(11), 42);

    // A parameter bigger than any buffer pgmoat keeps.
    let big = "y".repeat(3 * MB as usize);
    let len: i32 = a
        .query_one("SELECT length($1::text)", &[&big])
        .await
        .unwrap()
        .get(0);
    assert_eq!(len as i64, 3 * MB);

    // Prepared statements of two clients, interleaved on the one server connection.
    let double = a.prepare("SELECT $1::int4 * 2").await.unwrap();
    let shout = b.prepare("SELECT $1::text || '!'").await.unwrap();
    for i in 0..20i32 {
        let got: i32 = a.query_one(&double, &[&i]).await.unwrap().get(0);
        assert_eq!(got, i * 2);
        let got: String = b.query_one(&shout, &[&i.to_string()]).await.unwrap().get(0);
        assert_eq!(got, format!("{i}!"));
    }

    // An error inside the extended protocol leaves the session usable.
    let err = a
        .query_one("SELECT 1 / $1::int4", &[&0i32])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO), "{err:?}");
    let got: i32 = a.query_one(&double, &[&21i32]).await.unwrap().get(0);
    assert_eq!(got, 42);

    // COPY TO STDOUT and pipelined queries (one failing) give the server back too: the
    // other client gets it at once.
    let out: Vec<Bytes> = a
        .copy_out("COPY (SELECT generate_series(1, 3)) TO STDOUT")
        .await
        .unwrap()
        .map(|chunk| chunk.unwrap())
        .collect()
        .await;
    assert_eq!(out.concat(), b"1\n2\n3\n");
    let (ok, failed) = tokio::join!(
        a.query_one(&double, &[&4i32]),
        a.query_one("SELECT 1 / $1::int4", &[&0i32])
    );
    assert_eq!(ok.unwrap().get::<_, i32>(0), 8);
    assert_eq!(
        failed.unwrap_err().code(),
        Some(&SqlState::DIVISION_BY_ZERO)
    );
    let got: String = tokio::time::timeout(Duration::from_secs(10), b.query_one(&shout, &[&"b"]))
        .await
        .expect("the other client waited for the one server connection")
        .unwrap()
        .get(0);
    assert_eq!(got, "b!");

    // Parameters into a table, a rolled-back transaction, and a count through the other
    // client.
    for i in 0..50 {
        a.execute("INSERT INTO items (v) VALUES ($1)", &[&format!("ext-{i}")])
            .await
            .unwrap();
    }
    let tx = a.transaction().await.unwrap();
    tx.execute("INSERT INTO items (v) VALUES ($1)", &[&"ext-rolled-back"])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let count: i64 = b
        .query_one("SELECT count(*) FROM items WHERE v LIKE $1", &[&"ext-%"])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 50);
}

#[tokio::test]
async fn copy_both_ways_and_notices() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let pgmoat = Pgmoat::start(&ConfigBuilder::new(&pki, &db).build());

    // COPY FROM STDIN and TO STDOUT through psql's \copy, with exact row counts.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.txt");
    let lines: Vec<String> = (0..1000).map(|i| format!("copied-{i:04}")).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let conn = conninfo(
        pgmoat.port(),
        "alice",
        APP_DB,
        &[
            ("sslmode", "verify-full"),
            ("sslrootcert", pki.ca.to_str().unwrap()),
            ("password", ALICE_PASSWORD),
        ],
    );
    let copy_in = format!("\\copy items (v) from '{}'", input.display());
    let copy_out = format!(
        "\\copy (SELECT v FROM items WHERE v LIKE 'copied-%' ORDER BY v) to '{}'",
        output.display()
    );
    for (command, what) in [(&copy_in, "in"), (&copy_out, "out")] {
        let out = psql(&["-c", command], &conn);
        assert!(out.status.success(), "copy {what}: {}", output_text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "COPY 1000",
            "copy {what}"
        );
    }
    let copied = std::fs::read_to_string(&output).unwrap();
    assert_eq!(copied.lines().collect::<Vec<_>>(), lines);
    assert_eq!(
        db.sql(APP_DB, "SELECT count(*) FROM items WHERE v LIKE 'copied-%'"),
        "1000"
    );

    // COPY inside the extended protocol (tokio-postgres: Bind, Execute, Sync, the data, then
    // CopyDone + Sync), including an abandoned one (CopyFail) and one PostgreSQL rejects.
    let client = alice(&pki, &pgmoat).await;
    assert_eq!(extended_copy_in(&client, 500).await.unwrap(), 500);
    let out: Vec<Bytes> = client
        .copy_out("COPY (SELECT v FROM items WHERE v LIKE 'ext-copy-%' ORDER BY v) TO STDOUT")
        .await
        .unwrap()
        .map(|chunk| chunk.unwrap())
        .collect()
        .await;
    let text: String = out.iter().map(|c| String::from_utf8_lossy(c)).collect();
    let expected: Vec<String> = (0..500).map(|i| format!("ext-copy-{i:03}")).collect();
    assert_eq!(text.lines().collect::<Vec<_>>(), expected);
    abandoned_copy_in(&client).await;
    let err = rejected_copy_in(&client).await;
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_TEXT_REPRESENTATION),
        "{err:?}"
    );
    let count: i64 = client
        .query_one(
            "SELECT count(*) FROM items WHERE v IN ('abandoned', 'rejected')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);

    // Notices (and a warning) from PL/pgSQL reach the client, then the query completes.
    let (client, mut notices) = alice_with_notices(&pki, &pgmoat).await;
    client
        .batch_execute("DO $$BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END$$")
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let notice = tokio::time::timeout(Duration::from_secs(10), notices.recv())
            .await
            .expect("notice did not arrive")
            .unwrap();
        got.push((notice.severity().to_owned(), notice.message().to_owned()));
    }
    assert_eq!(
        got,
        vec![
            ("NOTICE".to_owned(), "hello 42".to_owned()),
            ("WARNING".to_owned(), "careful".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_100_mb_result_and_copy_stream_through_without_buffering() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql(
        APP_DB,
        "CREATE UNLOGGED TABLE big (v text); GRANT ALL ON big TO PUBLIC",
    );
    let pgmoat = Pgmoat::start(&ConfigBuilder::new(&pki, &db).build());
    let pid = pgmoat.pid();
    let client = alice(&pki, &pgmoat).await;
    client.query_one("SELECT 1", &[]).await.unwrap();
    let before = proc_status_bytes(pid, "VmRSS");
    let limit = 60 * MB;
    let growth = || proc_status_bytes(pid, "VmHWM") - before;

    // 100 rows of 1 MiB each: 100 MiB through pgmoat.
    let rows = client
        .query(
            "SELECT repeat('x', 1024 * 1024) FROM generate_series(1, 100)",
            &[],
        )
        .await
        .unwrap();
    let total: i64 = rows.iter().map(|r| r.get::<_, &str>(0).len() as i64).sum();
    assert_eq!(total, 100 * MB);
    drop(rows);
    assert!(
        growth() < limit,
        "pgmoat grew by {} MiB for a 100 MiB result",
        growth() / MB
    );

    // 100 MiB of COPY data in (generated by a program psql runs), then out again.
    let dir = tempfile::tempdir().unwrap();
    let generator = dir.path().join("gen.sh");
    std::fs::write(
        &generator,
        "for i in $(seq 100); do head -c 1048576 /dev/zero | tr '\\000' x; echo; done\n",
    )
    .unwrap();
    let conn = conninfo(
        pgmoat.port(),
        "alice",
        APP_DB,
        &[
            ("sslmode", "verify-full"),
            ("sslrootcert", pki.ca.to_str().unwrap()),
            ("password", ALICE_PASSWORD),
        ],
    );
    let copy_in = format!("\\copy big (v) from program 'sh {}'", generator.display());
    let out = psql(&["-c", &copy_in], &conn);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "COPY 100");
    assert_eq!(
        db.sql(APP_DB, "SELECT count(*), sum(length(v)) FROM big"),
        format!("100|{}", 100 * MB)
    );
    assert!(
        growth() < limit,
        "pgmoat grew by {} MiB for a 100 MiB COPY IN",
        growth() / MB
    );

    let out = psql(&["-c", "\\copy big to '/dev/null'"], &conn);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "COPY 100");
    assert!(
        growth() < limit,
        "pgmoat grew by {} MiB for a 100 MiB COPY OUT",
        growth() / MB
    );
}

/// PostgreSQL ignores Sync while in COPY IN (the protocol allows clients to send one after
/// every Execute), so the Sync that tokio-postgres sends after Bind/Execute gets no
/// ReadyForQuery. Counting it anyway leaves pgmoat waiting for a ReadyForQuery that never
/// comes: the server connection is never released in transaction mode, and on a pool of one
/// every other client waits.
#[tokio::test]
async fn extended_protocol_copy_gives_the_server_back() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    for max_prepared in ["200", "0"] {
        let pgmoat = Pgmoat::start(
            &ConfigBuilder::new(&pki, &db)
                .set("default_pool_size", "1")
                .set("max_prepared_statements", max_prepared)
                .build(),
        );
        let client = alice(&pki, &pgmoat).await;
        let other = alice(&pki, &pgmoat).await;
        let other_gets_the_server = |after: &'static str| {
            let other = &other;
            async move {
                let one: i32 = tokio::time::timeout(
                    Duration::from_secs(10),
                    other.query_one("SELECT 1", &[]),
                )
                .await
                .unwrap_or_else(|_| {
                    panic!("max_prepared_statements={max_prepared}: the server was not given back after {after}")
                })
                .unwrap()
                .get(0);
                assert_eq!(one, 1);
            }
        };
        assert_eq!(extended_copy_in(&client, 10).await.unwrap(), 10);
        other_gets_the_server("a COPY IN").await;
        abandoned_copy_in(&client).await;
        client.query_one("SELECT 1", &[]).await.unwrap();
        other_gets_the_server("an abandoned COPY IN").await;
        rejected_copy_in(&client).await;
        other_gets_the_server("a rejected COPY IN").await;
    }
}
