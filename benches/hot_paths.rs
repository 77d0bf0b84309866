//! The rest of pgmoat's per-transaction work, in memory, one function per bench (the relay's
//! scan, translation and TLS are in `framing.rs`):
//!
//! - `frames`: cutting an extended-protocol batch into frames (`protocol::cursor`), the
//!   primitive every walker uses;
//! - `effects`: the keyword scan of a statement's SQL for what it does to the session
//!   (`relay::effects::of_message`), once per Query or Parse;
//! - `idle`: judging what an idle client sent before a server is taken (`IdleScan`: a
//!   `PQprepare` batch pgmoat answers itself, and a query that needs a server);
//! - `lifecycle`: the server state machine's decision at hand-back (`next_step`), once per
//!   transaction.
//!
//! Run with `cargo bench --bench hot_paths`; numbers are for comparing revisions on one
//! machine, not goals.

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pgmoat::backend::lifecycle::{Facts, ResetNeed, next_step};
use pgmoat::protocol::Frames;
use pgmoat::relay::effects::of_message;
use pgmoat::relay::idle::{IdleBatch, IdleScan, classify_idle};
use pgmoat::relay::prepared::ClientStatements;

fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32(body.len() as u32 + 4);
    out.extend_from_slice(body);
}

/// One unnamed extended-protocol batch: Parse, Bind, Describe, Execute, Sync.
fn extended_batch() -> BytesMut {
    let mut buf = BytesMut::new();
    message(
        &mut buf,
        b'P',
        b"\0SELECT abalance FROM pgbench_accounts WHERE aid = $1\0\0\0",
    );
    message(&mut buf, b'B', b"\0\0\0\0\0\x01\0\0\0\x0412345\0\0");
    message(&mut buf, b'D', b"P\0");
    message(&mut buf, b'E', b"\0\0\0\0\0");
    message(&mut buf, b'S', b"");
    buf
}

fn bench_frames(c: &mut Criterion) {
    let batch = extended_batch();
    let mut group = c.benchmark_group("frames");
    group.throughput(Throughput::Elements(5));
    group.bench_function("extended_batch", |b| {
        b.iter(|| {
            Frames::new(black_box(&batch))
                .map(|(_, h, _)| h.len)
                .sum::<u32>()
        })
    });
    group.finish();
}

fn bench_effects(c: &mut Criterion) {
    let mut group = c.benchmark_group("effects");
    for (name, sql) in [
        (
            "pgbench_select",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;\0",
        ),
        (
            "pgbench_update",
            "UPDATE pgbench_accounts SET abalance = abalance + -4012 WHERE aid = 48213;\0",
        ),
        (
            "set_local_and_advisory_lock",
            "SET LOCAL statement_timeout = '5s'; SELECT pg_advisory_xact_lock(42);\0",
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| of_message(b'Q', black_box(sql.as_bytes())))
        });
    }
    group.finish();
}

fn bench_idle(c: &mut Criterion) {
    let mut prepare = BytesMut::new();
    message(
        &mut prepare,
        b'P',
        b"P_1\0SELECT abalance FROM pgbench_accounts WHERE aid = $1\0\0\0",
    );
    message(&mut prepare, b'S', b"");
    assert!(matches!(classify_idle(&prepare), IdleBatch::Local { .. }));
    let mut query = BytesMut::new();
    message(
        &mut query,
        b'Q',
        b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;\0",
    );
    let statements = ClientStatements::default();
    let mut group = c.benchmark_group("idle");
    group.bench_function("classify_prepare_batch", |b| {
        b.iter(|| classify_idle(black_box(&prepare)))
    });
    group.bench_function("classify_query", |b| {
        b.iter(|| classify_idle(black_box(&query)))
    });
    group.bench_function("judge_query_batch", |b| {
        b.iter(|| {
            let mut scan = IdleScan::default();
            scan.judge_batch(black_box(&query), &statements);
            scan.batch_len()
        })
    });
    group.finish();
}

fn bench_lifecycle(c: &mut Criterion) {
    let facts = Facts {
        protocol_idle: true,
        cancels_in_flight: 0,
        cancel_in_doubt: false,
        reset: ResetNeed::Nothing,
        retire: None,
    };
    let mut group = c.benchmark_group("lifecycle");
    group.bench_function("next_step_clean", |b| {
        b.iter(|| next_step(black_box(&facts)))
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_frames,
    bench_effects,
    bench_idle,
    bench_lifecycle
);
criterion_main!(benches);
