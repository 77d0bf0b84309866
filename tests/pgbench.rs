//! The "done when": pgbench's default TPC-B script in simple, extended and prepared
//! mode, 64 clients over a transaction-mode pool of 10, with no failed transaction and never
//! more than 10 backends in PostgreSQL while it runs.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::*;

/// PostgreSQL's own count of alice's backends in `app` (over the superuser socket, not through
/// pgmoat), sampled every 100 ms while `run` runs.
fn sampling_backends<T>(db: &TestDb, run: impl FnOnce() -> T) -> (T, Vec<usize>) {
    let running = AtomicBool::new(true);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            while running.load(Ordering::Relaxed) {
                samples.push(db.count(&format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = '{APP_DB}' \
                     AND usename = 'alice' AND backend_type = 'client backend'"
                )));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        // Stops the sampler even if `run` panics, or the scope would wait for it forever.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Relaxed);
            }
        }
        let result = {
            let _stop = Stop(&running);
            run()
        };
        (result, sampler.join().unwrap())
    })
}

#[test]
fn pgbench_tpcb_64_clients_over_a_pool_of_10_in_every_query_mode() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set_str("pool_mode", "transaction")
            .set("default_pool_size", "10")
            .set("max_client_conn", "100")
            .build(),
    );
    let conn = conninfo(
        moat.port(),
        "alice",
        APP_DB,
        &[
            ("sslmode", "verify-full"),
            ("sslrootcert", pki.ca.to_str().unwrap()),
            ("password", ALICE_PASSWORD),
        ],
    );

    // The tables are made through pgmoat too (alice may create in schema public).
    let init = pgbench(&["-i", "-s", "1", "-q"], &conn);
    assert!(
        init.status.success(),
        "{}\n{}",
        output_text(&init),
        moat.log()
    );

    let mut last_processed = 0;
    for mode in ["simple", "extended", "prepared"] {
        let (run, samples) = sampling_backends(&db, || {
            pgbench(&["-M", mode, "-c", "64", "-j", "4", "-T", "5"], &conn)
        });
        let text = output_text(&run);
        assert!(run.status.success(), "-M {mode}: {text}\n{}", moat.log());
        assert!(
            text.contains("number of failed transactions: 0 "),
            "-M {mode}: {text}"
        );
        let processed = text
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        assert!(processed > 0, "-M {mode} processed nothing: {text}");
        let max = samples.iter().copied().max().unwrap_or(0);
        assert!(
            max <= 10,
            "-M {mode}: PostgreSQL saw {max} backends for a pool of 10: {samples:?}"
        );
        assert!(
            max > 0,
            "-M {mode}: the sampler never saw a backend: {samples:?}"
        );
        assert!(
            db.backends_of("alice") <= 10,
            "-M {mode}: pgmoat holds more backends than the pool size"
        );
        last_processed = processed;
    }
    // Each run starts by truncating pgbench_history (no -n), and each transaction of the last
    // run inserted one row: none lost, none doubled.
    let history = db.count("SELECT count(*) FROM pgbench_history");
    assert_eq!(history as u64, last_processed);
    assert_eq!(db.idle_in_transaction(), 0);
}
