//! A synchronous primary/standby pair for failover tests: the usual [`TestDb`] as primary on
//! 127.0.0.1, a hot standby of it on 127.0.0.2 with its own server certificate, and a
//! `ledger` table that writers fill with ids they can later look for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pgmoat::pgcluster::{PgCluster, StandbyOptions};

use super::{CertPair, Pki, TestDb};

/// Where the standby listens: Linux's loopback answers all of 127/8, so the two servers
/// differ by address (and certificate SAN) as well as port.
pub const STANDBY_HOST: &str = "127.0.0.2";
const SYNC_WAIT: Duration = Duration::from_secs(30);

/// A running pair: `primary` (a [`TestDb`], so users, `app` and `items` as usual) and
/// `standby`, which the primary waits for on commit (`synchronous_standby_names = '*'`).
/// Also `app.public.ledger(id bigint primary key, client int, v text)`, usable by everyone.
/// The fields keep their names after a failover: promoting `standby` makes it the primary.
pub struct HaPair {
    pub primary: TestDb,
    pub standby: PgCluster,
    /// The standby's certificate: SAN IP:127.0.0.2 only, from the trusted CA.
    pub standby_cert: CertPair,
}

impl HaPair {
    pub fn start(pki: &Pki) -> HaPair {
        let primary = TestDb::start_with(pki, |opts| {
            // pgcluster defaults to synchronous_commit = off; later settings win.
            opts.settings
                .push(("synchronous_commit".into(), "on".into()));
            opts.settings
                .push(("synchronous_standby_names".into(), "*".into()));
        });
        primary.sql(
            super::APP_DB,
            "CREATE TABLE ledger (id bigint PRIMARY KEY, client int, v text);
             GRANT ALL ON TABLE ledger TO PUBLIC;",
        );
        let standby_cert = pki.issue_server(&standby_cert_name(), &[&format!("IP:{STANDBY_HOST}")]);
        let mut opts = StandbyOptions::new(&standby_cert.crt, &standby_cert.key);
        opts.listen = STANDBY_HOST.to_owned();
        let standby = PgCluster::start_standby(&primary, opts)
            .unwrap_or_else(|e| panic!("starting the standby: {e}"));
        let pair = HaPair {
            primary,
            standby,
            standby_cert,
        };
        pair.primary
            .wait_for_sync_standby(SYNC_WAIT)
            .unwrap_or_else(|e| panic!("waiting for the standby to be synchronous: {e}"));
        pair
    }
}

impl Drop for HaPair {
    fn drop(&mut self) {
        // The primary's log is printed by TestDb's own Drop.
        if std::thread::panicking() {
            eprintln!(
                "--- standby PostgreSQL log tail ({}) ---\n{}",
                self.standby.log_path().display(),
                self.standby.log_tail(40)
            );
        }
    }
}

/// `pgmoat certs issue` will not overwrite, so a second pair from one Pki needs a new name.
fn standby_cert_name() -> String {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    match COUNT.fetch_add(1, Ordering::Relaxed) {
        0 => "standby".to_owned(),
        n => format!("standby-{}", n + 1),
    }
}

/// psql as superuser over `cluster`'s socket; panics with the error.
pub fn sql_on(cluster: &PgCluster, db: &str, sql: &str) -> String {
    cluster
        .psql(db, sql)
        .unwrap_or_else(|e| panic!("psql on {}:{} {sql:?}: {e}", cluster.host(), cluster.port()))
}

/// Polls `sql` on `cluster` until it returns `expected` (e.g. a standby replaying a row);
/// errors count as not yet. Panics with the last result after `timeout`.
pub fn wait_for_sql(cluster: &PgCluster, db: &str, sql: &str, expected: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let last = cluster.psql(db, sql).map_err(|e| e.to_string());
        if last.as_deref() == Ok(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql:?} on {}:{} did not return {expected:?} within {timeout:?}; last: {last:?}",
            cluster.host(),
            cluster.port()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A libpq conninfo straight to `cluster` by its own address (host = the IP, which
/// verify-full checks against the certificate's IP SAN), TLS verified against the test CA.
pub fn cluster_conninfo(cluster: &PgCluster, pki: &Pki, user: &str, db: &str) -> String {
    format!(
        "host={} port={} user={user} dbname={db} sslmode=verify-full sslrootcert='{}'",
        cluster.host(),
        cluster.port(),
        pki.ca.display()
    )
}
