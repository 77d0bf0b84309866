//! The test database: a throwaway TLS PostgreSQL (pgmoat's `pgcluster`) with the roles and the
//! table the integration tests use.

use std::ops::Deref;

use pgmoat::pgcluster::{PgCluster, PgClusterOptions, PgUser};

use super::Pki;

pub const ALICE_PASSWORD: &str = "alice-secret";
pub const BOB_PASSWORD: &str = "bob-secret";
pub const APP_DB: &str = "app";

/// A running PostgreSQL with users alice and bob (SCRAM), certuser (cert auth only), database
/// `app` and table `app.public.items(id serial primary key, v text)` usable by everyone.
/// Derefs to [`PgCluster`] for restart/reload/psql/log_tail.
pub struct TestDb {
    pub cluster: PgCluster,
}

impl TestDb {
    pub fn start(pki: &Pki) -> TestDb {
        TestDb::start_with(pki, |_| {})
    }

    /// Like [`start`](Self::start), with a chance to change the options first (extra
    /// settings, pg_hba lines, another server cert...).
    pub fn start_with(pki: &Pki, tweak: impl FnOnce(&mut PgClusterOptions)) -> TestDb {
        let mut opts = PgClusterOptions::new(&pki.postgres.crt, &pki.postgres.key, &pki.ca);
        opts.users = vec![
            PgUser::with_password("alice", ALICE_PASSWORD),
            PgUser::with_password("bob", BOB_PASSWORD),
            PgUser::without_password("certuser"),
        ];
        opts.databases = vec![APP_DB.to_owned()];
        tweak(&mut opts);
        let cluster = PgCluster::start(opts).unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"));
        cluster
            .psql(
                APP_DB,
                "CREATE TABLE items (id serial PRIMARY KEY, v text);
                 GRANT USAGE, CREATE ON SCHEMA public TO PUBLIC;
                 GRANT ALL ON TABLE items TO PUBLIC;
                 GRANT ALL ON SEQUENCE items_id_seq TO PUBLIC;",
            )
            .unwrap_or_else(|e| panic!("creating app.items: {e}"));
        TestDb { cluster }
    }

    /// psql as superuser over the socket; panics with the error.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        self.cluster
            .psql(db, sql)
            .unwrap_or_else(|e| panic!("psql {sql:?}: {e}"))
    }
}

impl Deref for TestDb {
    type Target = PgCluster;

    fn deref(&self) -> &PgCluster {
        &self.cluster
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // A failing test is much easier to read with the server's side of the story.
        if std::thread::panicking() {
            eprintln!(
                "--- PostgreSQL log tail ({}) ---\n{}",
                self.cluster.log_path().display(),
                self.cluster.log_tail(40)
            );
        }
    }
}
