//! The failover tests' harness itself: a synchronous primary/standby pair on two loopback
//! addresses, the standby serving TLS under its own name, promotion after the primary dies,
//! and the old primary rebuilt as a standby of the new one.

mod support;

use std::time::Duration;

use support::*;

const REPLAY_WAIT: Duration = Duration::from_secs(15);

fn ledger_v(id: i64) -> String {
    format!("SELECT v FROM ledger WHERE id = {id}")
}

#[test]
fn pair_replicates_fails_over_and_the_old_primary_rejoins() {
    let pki = Pki::new();
    let mut pair = HaPair::start(&pki);
    assert_eq!(pair.primary.host(), "127.0.0.1");
    assert_eq!(pair.standby.host(), STANDBY_HOST);
    assert!(!pair.primary.is_in_recovery().unwrap());
    assert!(pair.standby.is_in_recovery().unwrap());
    assert_eq!(
        sql_on(
            &pair.primary,
            "postgres",
            "SELECT application_name || ' ' || sync_state FROM pg_stat_replication"
        ),
        "standby1 sync"
    );

    sql_on(
        &pair.primary,
        APP_DB,
        "INSERT INTO ledger VALUES (1, 0, 'first')",
    );
    wait_for_sql(&pair.standby, APP_DB, &ledger_v(1), "first", REPLAY_WAIT);

    let refused = pair
        .standby
        .psql(APP_DB, "INSERT INTO ledger VALUES (2, 0, 'nope')")
        .unwrap_err()
        .to_string();
    assert!(refused.contains("read-only"), "{refused}");

    // Each server verifies under its own address: the standby's cert has only 127.0.0.2.
    for (cluster, in_recovery) in [(&pair.standby, "t"), (&*pair.primary, "f")] {
        let out = psql_env(
            &["-At", "-c", "SELECT pg_is_in_recovery()"],
            &cluster_conninfo(cluster, &pki, "alice", APP_DB),
            &[("PGPASSWORD", ALICE_PASSWORD)],
        );
        assert!(out.status.success(), "{}", output_text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), in_recovery);
    }

    // Failover: the primary dies, the standby takes over and accepts writes at once (no
    // synchronous standby to wait for).
    pair.primary.stop_immediate().unwrap();
    pair.standby.promote().unwrap();
    assert!(!pair.standby.is_in_recovery().unwrap());
    sql_on(
        &pair.standby,
        APP_DB,
        "INSERT INTO ledger VALUES (2, 0, 'after failover')",
    );

    let old_port = pair.primary.port();
    let new_primary = &pair.standby;
    pair.primary
        .cluster
        .rebuild_as_standby_of(new_primary)
        .unwrap();
    assert_eq!(pair.primary.port(), old_port);
    assert!(pair.primary.is_in_recovery().unwrap());
    wait_for_sql(
        &pair.primary,
        APP_DB,
        &ledger_v(2),
        "after failover",
        REPLAY_WAIT,
    );
    sql_on(
        &pair.standby,
        APP_DB,
        "INSERT INTO ledger VALUES (3, 0, 'after rebuild')",
    );
    wait_for_sql(
        &pair.primary,
        APP_DB,
        &ledger_v(3),
        "after rebuild",
        REPLAY_WAIT,
    );
    assert_eq!(
        sql_on(
            &pair.standby,
            "postgres",
            "SELECT application_name || ' ' || state FROM pg_stat_replication"
        ),
        "standby1 streaming"
    );

    // The rebuilt server still serves its own certificate at its old address.
    let out = psql_env(
        &["-At", "-c", "SELECT pg_is_in_recovery()"],
        &cluster_conninfo(&pair.primary, &pki, "alice", APP_DB),
        &[("PGPASSWORD", ALICE_PASSWORD)],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
}
