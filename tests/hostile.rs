//! Clients that try to make pgmoat hold more than they are worth: an unsynced pipeline of
//! Parses, one message over max_packet_size, a message that never completes. Each is bounded
//! or refused with an ErrorResponse naming the limit, and everyone else goes on meanwhile.

mod support;

use std::time::Duration;

use bytes::BufMut;
use support::wire::{self, RawClient};
use support::*;

/// The next message, or a failure naming what was awaited.
async fn recv_within(client: &mut RawClient, what: &str) -> wire::RawMsg {
    tokio::time::timeout(Duration::from_secs(60), client.recv())
        .await
        .unwrap_or_else(|_| panic!("no answer within 60 s while waiting for {what}"))
        .unwrap_or_else(|e| panic!("connection ended while waiting for {what}: {e}"))
}

/// A named Parse of about `size` bytes (a comment pads the text).
fn big_parse(name: &str, i: usize, size: usize) -> bytes::BytesMut {
    let sql = format!("SELECT {i} /* {} */", "x".repeat(size));
    wire::parse(name, &sql)
}

/// A libpq-style pipeline of 6000 named Parses (24 MB) with no Sync: pgmoat forwards them
/// to a server once more than it holds for an idle client is queued, PostgreSQL answers
/// each, and pgmoat's memory does not grow with what is sent. Another client is served
/// meanwhile. (One statement name is re-prepared, so the client's statement cache stays one
/// statement and what is measured is the queue; distinct names are bounded by the
/// per-client statement cap instead.)
#[tokio::test]
async fn an_unsynced_pipeline_of_parses_is_forwarded_and_memory_stays_flat() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "2")
            .build(),
    );
    let mut hostile = moat_raw(&moat, &pki, "alice", &[]).await;
    let mut other = moat_raw(&moat, &pki, "alice", &[]).await;
    // Warm up: the same path once, so buffers and allocator arenas exist before measuring.
    for i in 0..300 {
        hostile.send(&big_parse("p", i, 4000)).await;
    }
    hostile.send(&wire::sync()).await;
    let warm = hostile.until_ready().await.unwrap();
    assert_eq!(warm.iter().filter(|m| m.tag == b'1').count(), 300);
    assert_eq!(other.value("SELECT 1").await, "1");
    let before = moat.peak_rss_kib();

    const PARSES: usize = 6000;
    let mut sent = 0;
    let mut answered = 0;
    let mut batch = bytes::BytesMut::new();
    for i in 0..PARSES {
        batch.put(big_parse("p", i, 4000));
        if batch.len() > 256 * 1024 || i + 1 == PARSES {
            sent += batch.len();
            hostile.send(&batch).await;
            batch.clear();
        }
        if i == PARSES / 2 {
            // Someone else, while the pipeline holds a server.
            assert_eq!(other.value("SELECT 2").await, "2");
        }
    }
    // Answered without a Sync: forwarded, not queued in pgmoat. PostgreSQL itself sends
    // its answers as its 8 KB output buffer fills, so the last few wait for a Flush.
    while answered < PARSES / 2 {
        let what = format!("ParseComplete {answered} of the unsynced pipeline");
        let msg = recv_within(&mut hostile, &what).await;
        assert_eq!(msg.tag, b'1', "{msg:?}");
        answered += 1;
    }
    let mut flush = bytes::BytesMut::new();
    postgres_protocol::message::frontend::flush(&mut flush);
    hostile.send(&flush).await;
    while answered < PARSES {
        let what = format!("ParseComplete {answered} of the unsynced pipeline");
        let msg = recv_within(&mut hostile, &what).await;
        assert_eq!(msg.tag, b'1', "{msg:?}");
        answered += 1;
    }
    let after = moat.peak_rss_kib();
    let grown_mib = after.saturating_sub(before) as f64 / 1024.0;
    assert!(
        grown_mib < 12.0,
        "pgmoat grew {grown_mib:.1} MiB while {:.1} MiB were pipelined",
        sent as f64 / 1048576.0
    );
    hostile.send(&wire::sync()).await;
    let end = hostile.until_ready().await.unwrap();
    assert_eq!(wire::tags(&end), "Z");
    // The statement is there, under its name, for an execution.
    let rows = hostile.exec_prepared("p", &[]).await.unwrap();
    assert_eq!(rows[0][0].as_deref(), Some(&*format!("{}", PARSES - 1)));
    assert_eq!(other.value("SELECT 3").await, "3");
}

/// One message over max_packet_size ends the connection with an ErrorResponse naming the
/// limit, before its body is read, whether the client is idle (the header alone is
/// enough) or inside a transaction; one just under it runs.
#[tokio::test]
async fn a_message_over_max_packet_size_is_refused_naming_the_limit() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("max_packet_size", "65536")
            .build(),
    );
    let padded = |size: usize| format!("SELECT 1 /* {} */", "x".repeat(size));

    let mut client = moat_raw(&moat, &pki, "alice", &[]).await;
    // Bigger than one read of an idle client, and than the relay's read chunk.
    for size in [1000usize, 20_000] {
        assert_eq!(client.value(&padded(size)).await, "1");
    }
    let under = tokio::time::timeout(Duration::from_secs(20), client.value(&padded(60_000))).await;
    assert_eq!(under.expect("the query under the limit is answered"), "1");
    // Its header and a little of the body: the refusal must not need the rest (and a
    // write racing pgmoat's close could lose the answer to a reset).
    let over = wire::query(&padded(70_000));
    client.send(&over[..1000]).await;
    let refusal = recv_within(&mut client, "the refusal").await;
    let err = wire::error_of(&refusal);
    assert_eq!(
        (err.severity.as_str(), err.code.as_str()),
        ("FATAL", "54000"),
        "{err}"
    );
    assert!(
        err.message.contains("max_packet_size") && err.message.contains("65536"),
        "{err}"
    );
    assert!(client.recv().await.is_err(), "the connection ends");

    // Only the header of a 1 GB message: refused at once, nothing waited for.
    let mut client = moat_raw(&moat, &pki, "alice", &[]).await;
    let mut header = vec![b'Q'];
    header.extend_from_slice(&(1u32 << 30).to_be_bytes());
    client.send(&header).await;
    let err = wire::error_of(&recv_within(&mut client, "the refusal of a header").await);
    assert_eq!(err.code, "54000", "{err}");

    // Inside a transaction, with a server held.
    let mut client = moat_raw(&moat, &pki, "alice", &[]).await;
    client.simple("BEGIN").await.unwrap();
    client.send(&over[..1000]).await;
    let err = wire::error_of(&recv_within(&mut client, "the refusal in a transaction").await);
    assert_eq!(err.code, "54000", "{err}");
    assert!(client.recv().await.is_err(), "the connection ends");

    let mut fine = moat_raw(&moat, &pki, "alice", &[]).await;
    assert_eq!(fine.value("SELECT 4").await, "4");
}

/// A client that sends part of a message and stops is closed at client_idle_timeout, with
/// PostgreSQL's SQLSTATE for an idle-session timeout; a client that sent a whole query in
/// the same time is answered (the positive control).
#[tokio::test]
async fn a_message_that_never_completes_ends_at_client_idle_timeout() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("client_idle_timeout", "1")
            .build(),
    );
    // Three bytes of a header.
    let mut partial_header = moat_raw(&moat, &pki, "alice", &[]).await;
    partial_header.send(&[b'Q', 0, 0]).await;
    // A whole header, and a little of a named Parse's body.
    let mut partial_body = moat_raw(&moat, &pki, "alice", &[]).await;
    let parse = big_parse("s", 1, 100_000);
    partial_body.send(&parse[..200]).await;
    let mut busy = moat_raw(&moat, &pki, "alice", &[]).await;
    assert_eq!(busy.value("SELECT 5").await, "5");

    for (what, client) in [
        ("a partial header", &mut partial_header),
        ("a partial message", &mut partial_body),
    ] {
        let err = wire::error_of(&recv_within(client, what).await);
        assert_eq!(
            (err.severity.as_str(), err.code.as_str()),
            ("FATAL", "57P05"),
            "{what}: {err}"
        );
        assert!(err.message.contains("client_idle_timeout"), "{err}");
        assert!(client.recv().await.is_err(), "{what}: the connection ends");
    }
}
