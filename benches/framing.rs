//! The relay's hot path, in memory: what pgmoat does per message on top of the kernel's work.
//!
//! - `scan`: finding message boundaries in what a client sent (a pgbench-like batch of simple
//!   queries, extended-protocol batches) and in what a server answered (RowDescription,
//!   DataRow, CommandComplete, ReadyForQuery), headers only, bodies untouched;
//! - `translate`: renaming a pooled prepared statement in Bind/Execute/Sync (what
//!   `pgbench -M prepared` sends per transaction);
//! - `tls`: one query/answer round trip through rustls in memory (encrypt, decrypt both
//!   ways), the per-message cost a TLS pooler pays twice, once per side.
//!
//! Run with `cargo bench`; numbers are for comparing revisions on one machine, not goals.

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pgmoat::relay::prepared::{ClientStatements, CompletionQueue, ServerStatements, Statement};
use pgmoat::relay::scan::{Scanner, Seen};
use pgmoat::relay::translate::{Translator, translate};
use pgmoat::relay::{HalfBuffer, TxState, scan_client};

fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32(body.len() as u32 + 4);
    out.extend_from_slice(body);
}

/// `n` pgbench -S style simple queries.
fn simple_queries(n: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    for i in 0..n {
        let sql = format!(
            "SELECT abalance FROM pgbench_accounts WHERE aid = {};\0",
            1 + i * 7919
        );
        message(&mut buf, b'Q', sql.as_bytes());
    }
    buf
}

/// `n` unnamed extended-protocol batches: Parse, Bind, Describe, Execute, Sync.
fn extended_batches(n: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    for i in 0..n {
        message(
            &mut buf,
            b'P',
            b"\0SELECT abalance FROM pgbench_accounts WHERE aid = $1\0\0\0",
        );
        let value = (1 + i * 7919).to_string();
        let mut bind = BytesMut::new();
        bind.extend_from_slice(b"\0\0"); // portal, statement
        bind.put_u16(0); // parameter formats
        bind.put_u16(1);
        bind.put_u32(value.len() as u32);
        bind.extend_from_slice(value.as_bytes());
        bind.put_u16(0); // result formats
        message(&mut buf, b'B', &bind);
        message(&mut buf, b'D', b"P\0");
        message(&mut buf, b'E', b"\0\0\0\0\0");
        message(&mut buf, b'S', b"");
    }
    buf
}

/// `n` answers to a one-row query: RowDescription, DataRow, CommandComplete, ReadyForQuery.
fn server_answers(n: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    for _ in 0..n {
        let mut row_description = BytesMut::new();
        row_description.put_u16(1);
        row_description.extend_from_slice(b"abalance\0");
        row_description.put_u32(16_397);
        row_description.put_u16(3);
        row_description.put_u32(23);
        row_description.put_i16(4);
        row_description.put_i32(-1);
        row_description.put_u16(0);
        message(&mut buf, b'T', &row_description);
        message(&mut buf, b'D', b"\0\x01\0\0\0\x041234");
        message(&mut buf, b'C', b"SELECT 1\0");
        message(&mut buf, b'Z', b"I");
    }
    buf
}

fn bench_scan(c: &mut Criterion) {
    const N: usize = 64;
    let mut group = c.benchmark_group("scan");
    group.throughput(Throughput::Elements(N as u64));

    for (name, input) in [
        ("client_simple_queries", simple_queries(N)),
        ("client_extended_batches", extended_batches(N)),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || {
                    let mut half = HalfBuffer::new();
                    half.buf.extend_from_slice(&input);
                    (half, TxState::default())
                },
                |(half, tx)| {
                    scan_client(half, tx).expect("well-formed input");
                    black_box(tx.outstanding)
                },
                BatchSize::SmallInput,
            )
        });
    }

    let answers = server_answers(N);
    group.bench_function("server_answers", |b| {
        b.iter(|| {
            let mut scanner = Scanner::default();
            let mut ready = 0u32;
            let result = scanner
                .scan(
                    &answers,
                    0,
                    |tag| matches!(tag, b'Z' | b'S' | b'C' | b'1' | b'3' | b'G'),
                    |seen, _| {
                        if let Seen::Whole(b'Z', _) = seen {
                            ready += 1;
                        }
                        true
                    },
                )
                .expect("well-formed input");
            black_box((result.forward_to, ready))
        })
    });
    group.finish();
}

fn bench_translate(c: &mut Criterion) {
    const N: usize = 64;
    let mut parse = BytesMut::new();
    parse.extend_from_slice(b"P_0\0SELECT abalance FROM pgbench_accounts WHERE aid = $1\0");
    parse.put_u16(1);
    parse.put_u32(23);
    let (name, statement) = Statement::from_parse(&parse, &[0; 16]).expect("a valid Parse body");
    let mut statements = ClientStatements::default();
    statements.insert(name, statement);

    // Bind P_0, Execute, Sync: one pgbench -M prepared transaction.
    let mut batch = BytesMut::new();
    for i in 0..N {
        let value = (1 + i * 7919).to_string();
        let mut bind = BytesMut::new();
        bind.extend_from_slice(b"\0P_0\0");
        bind.put_u16(0);
        bind.put_u16(1);
        bind.put_u32(value.len() as u32);
        bind.extend_from_slice(value.as_bytes());
        bind.put_u16(0);
        message(&mut batch, b'B', &bind);
        message(&mut batch, b'E', b"\0\0\0\0\0");
        message(&mut batch, b'S', b"");
    }

    // The server already has the statement: the steady state.
    let mut server = ServerStatements::default();
    {
        let mut warm = batch.clone();
        let mut out = BytesMut::new();
        let mut remaining = 0;
        let mut queue = CompletionQueue::default();
        let mut tr = Translator {
            statements: &mut statements,
            server: &mut server,
            queue: &mut queue,
            max_prepared: 200,
            max_packet: 0,
            pin_budget: None,
        };
        translate(
            &mut warm,
            &mut out,
            &mut remaining,
            &mut TxState::default(),
            &mut tr,
        )
        .expect("well-formed input");
    }

    let mut group = c.benchmark_group("translate");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("prepared_bind_execute_sync", |b| {
        b.iter_batched_ref(
            || {
                (
                    batch.clone(),
                    BytesMut::with_capacity(batch.len() + 64),
                    CompletionQueue::default(),
                )
            },
            |(input, out, queue)| {
                let mut remaining = 0;
                let mut tr = Translator {
                    statements: &mut statements,
                    server: &mut server,
                    queue,
                    max_prepared: 200,
                    max_packet: 0,
                    pin_budget: None,
                };
                translate(input, out, &mut remaining, &mut TxState::default(), &mut tr)
                    .expect("well-formed input");
                black_box(out.len())
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// A TLS 1.3 client and server in memory, handshaken.
fn tls_pair() -> (rustls::Connection, rustls::Connection) {
    let provider = pgmoat::tls::provider();
    let issued =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
    let cert = issued.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(issued.signing_key.serialize_der())
        .expect("a PKCS#8 key");
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("a matching key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("a root");
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client = rustls::Connection::from(
        rustls::ClientConnection::new(
            Arc::new(client_config),
            "localhost".try_into().expect("a name"),
        )
        .expect("a client"),
    );
    let mut server = rustls::Connection::from(
        rustls::ServerConnection::new(Arc::new(server_config)).expect("a server"),
    );
    while client.is_handshaking() || server.is_handshaking() {
        transfer(&mut client, &mut server);
        transfer(&mut server, &mut client);
    }
    (client, server)
}

/// Moves the TLS records `from` has to send into `to`, and lets `to` process them.
fn transfer(from: &mut rustls::Connection, to: &mut rustls::Connection) {
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire).expect("in-memory write");
    }
    let mut rd = wire.as_slice();
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("in-memory read");
        to.process_new_packets().expect("valid records");
    }
}

fn bench_tls(c: &mut Criterion) {
    let (mut client, mut server) = tls_pair();
    let query = simple_queries(1);
    let answer = server_answers(1);
    let mut buf = vec![0u8; 16 * 1024];
    let mut group = c.benchmark_group("tls");
    group.throughput(Throughput::Elements(1));
    group.bench_function("query_answer_round_trip", |b| {
        b.iter(|| {
            client.writer().write_all(&query).expect("plaintext in");
            transfer(&mut client, &mut server);
            let got = server.reader().read(&mut buf).expect("plaintext out");
            server.writer().write_all(&answer).expect("plaintext in");
            transfer(&mut server, &mut client);
            let back = client.reader().read(&mut buf).expect("plaintext out");
            black_box((got, back))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_scan, bench_translate, bench_tls);
criterion_main!(benches);
