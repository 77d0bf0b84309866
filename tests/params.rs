//! Session parameters under transaction pooling, with a pool of one backend shared by two
//! clients: what one client SETs or asked for at startup never shows in the other's
//! transactions, and each client's own settings (startup parameters, `options`, its SETs of
//! reported parameters) are in effect on whatever backend it gets.

mod support;

use support::*;
use tokio_postgres::Client;

/// What the settings this file looks at are, as one `|`-joined string.
const SETTINGS: &str = "SELECT concat_ws('|', current_setting('TimeZone'), \
    current_setting('search_path'), current_setting('statement_timeout'), \
    current_setting('work_mem'), current_setting('DateStyle'), \
    current_setting('IntervalStyle'), current_setting('standard_conforming_strings'), \
    current_setting('application_name'))";

fn one_backend(pki: &Pki, db: &TestDb) -> Pgmoat {
    Pgmoat::start(
        &ConfigBuilder::new(pki, db)
            .set_str("pool_mode", "transaction")
            .set("default_pool_size", "1")
            .set("query_wait_timeout", "20")
            .build(),
    )
}

async fn backend_pid(client: &Client) -> String {
    text_value(client, "SELECT pg_backend_pid()").await
}

/// Client `a` SETs everything SETTINGS shows, each time outside a transaction (the last one
/// inside a committed one); `b` sees the defaults after each. Returns the defaults.
async fn set_everything(a: &Client, b: &Client) -> String {
    let defaults = text_value(b, SETTINGS).await;

    for set in [
        "SET TimeZone = 'Asia/Tokyo'",
        "SET search_path = nowhere, public",
        "SET statement_timeout = '7s'",
        "SET IntervalStyle = 'iso_8601'",
        "SET standard_conforming_strings = off",
        // A SET inside a committed transaction outlives it.
        "BEGIN; SET work_mem = '7MB'; COMMIT",
    ] {
        a.batch_execute(set).await.unwrap();
        assert_eq!(
            text_value(b, SETTINGS).await,
            defaults,
            "after the other client's {set:?}"
        );
    }
    // Same backend all along (the pool has one), so nothing was hidden by a reconnect.
    assert_eq!(backend_pid(a).await, backend_pid(b).await);
    defaults
}

#[tokio::test]
async fn a_plain_set_is_gone_before_the_next_client_runs() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = one_backend(&pki, &db);
    let a = moat_client(&moat, &pki, "alice").await;
    let b = moat_client(&moat, &pki, "alice").await;
    set_everything(&a, &b).await;
}

#[tokio::test]
async fn a_plain_set_stays_out_of_other_clients_after_its_client_comes_back() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = one_backend(&pki, &db);
    let a = moat_client(&moat, &pki, "alice").await;
    let b = moat_client(&moat, &pki, "alice").await;
    let defaults = set_everything(&a, &b).await;

    // The reported settings a SET changed are the client's own from now on...
    assert_eq!(text_value(&a, "SHOW TimeZone").await, "Asia/Tokyo");
    assert_eq!(text_value(&a, "SHOW IntervalStyle").await, "iso_8601");
    assert_eq!(
        text_value(&a, "SELECT '1 day 2 hours'::interval::text").await,
        "P1DT2H"
    );
    assert_eq!(
        text_value(&a, "SHOW standard_conforming_strings").await,
        "off"
    );
    // ...and still nobody else's.
    assert_eq!(text_value(&b, SETTINGS).await, defaults);
    assert_eq!(
        text_value(&b, "SELECT '1 day 2 hours'::interval::text").await,
        "1 day 02:00:00"
    );
}

#[tokio::test]
async fn each_clients_own_settings_are_in_effect_on_the_shared_backend() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = one_backend(&pki, &db);
    // Both clients choose every setting checked here, so only "follows its client" is
    // tested (the leak tests are separate).
    let mut a_config = moat_config(&moat, "alice");
    a_config.application_name("client-a");
    let a = moat_client_with(&moat, &pki, a_config).await.0;
    let mut b_config = moat_config(&moat, "alice");
    b_config
        .application_name("client-b")
        .options("-c TimeZone=America/New_York -c DateStyle=German -c IntervalStyle=postgres");
    let b = moat_client_with(&moat, &pki, b_config).await.0;
    for set in [
        "SET TimeZone = 'Asia/Tokyo'",
        "SET IntervalStyle = 'iso_8601'",
        "SET DateStyle = 'SQL, DMY'",
    ] {
        a.batch_execute(set).await.unwrap();
    }

    let check = "SELECT concat_ws('|', current_setting('application_name'), \
                 current_setting('TimeZone'), date '2024-01-31', \
                 '1 day 2 hours'::interval, pg_backend_pid())";
    let pid = backend_pid(&a).await;
    for round in 0..4 {
        assert_eq!(
            text_value(&a, check).await,
            format!("client-a|Asia/Tokyo|31/01/2024|P1DT2H|{pid}"),
            "client a, round {round}"
        );
        assert_eq!(
            text_value(&b, check).await,
            format!("client-b|America/New_York|31.01.2024|1 day 02:00:00|{pid}"),
            "client b, round {round}"
        );
    }
}

#[tokio::test]
async fn set_config_of_a_reported_setting_does_not_leak() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = one_backend(&pki, &db);
    let a = moat_client(&moat, &pki, "alice").await;
    let b = moat_client(&moat, &pki, "alice").await;
    let default_tz = text_value(&b, "SHOW TimeZone").await;
    text_value(&a, "SELECT set_config('TimeZone', 'Asia/Tokyo', false)").await;
    assert_eq!(text_value(&b, "SHOW TimeZone").await, default_tz);
    assert_eq!(text_value(&a, "SHOW TimeZone").await, "Asia/Tokyo");
}

#[tokio::test]
async fn each_clients_settings_follow_it_and_only_it() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = one_backend(&pki, &db);

    let mut a_config = moat_config(&moat, "alice");
    a_config.application_name("client-a");
    let a = moat_client_with(&moat, &pki, a_config).await.0;
    let default_datestyle = text_value(&a, "SHOW DateStyle").await;
    let mut b_config = moat_config(&moat, "alice");
    b_config
        .application_name("client-b")
        .options("-c TimeZone=America/New_York -c DateStyle=German");
    let b = moat_client_with(&moat, &pki, b_config).await.0;
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    a.batch_execute("SET IntervalStyle = 'iso_8601'")
        .await
        .unwrap();

    let check = "SELECT concat_ws('|', current_setting('application_name'), \
                 current_setting('TimeZone'), current_setting('IntervalStyle'), \
                 current_setting('DateStyle'), date '2024-01-31', pg_backend_pid())";
    let pid = backend_pid(&a).await;
    for round in 0..4 {
        assert_eq!(
            text_value(&a, check).await,
            format!("client-a|Asia/Tokyo|iso_8601|{default_datestyle}|2024-01-31|{pid}"),
            "client a, round {round}"
        );
        assert_eq!(
            text_value(&b, check).await,
            format!("client-b|America/New_York|postgres|German, DMY|31.01.2024|{pid}"),
            "client b, round {round}"
        );
    }
}

fn with_schema_elsewhere(pki: &Pki) -> TestDb {
    let db = TestDb::start(pki);
    db.sql(
        APP_DB,
        "CREATE SCHEMA elsewhere AUTHORIZATION alice;
         CREATE TABLE elsewhere.items (v text);
         INSERT INTO elsewhere.items VALUES ('from elsewhere');
         ALTER TABLE elsewhere.items OWNER TO alice;",
    );
    db
}

#[tokio::test]
async fn a_list_valued_startup_option_means_what_it_means_to_postgresql() {
    let pki = Pki::new();
    let db = with_schema_elsewhere(&pki);
    let moat = one_backend(&pki, &db);
    let mut config = moat_config(&moat, "alice");
    config.options("-c search_path=elsewhere,public");
    let client = moat_client_with(&moat, &pki, config).await.0;
    assert_eq!(
        text_value(&client, "SELECT current_schemas(false)::text").await,
        "{elsewhere,public}"
    );
    assert_eq!(
        text_value(&client, "SELECT v FROM items").await,
        "from elsewhere"
    );
}

#[tokio::test]
async fn startup_options_apply_on_every_transaction_of_their_client_only() {
    let pki = Pki::new();
    let db = with_schema_elsewhere(&pki);
    let moat = one_backend(&pki, &db);
    let mut config = moat_config(&moat, "alice");
    config.options("-c search_path=elsewhere");
    let with_options = moat_client_with(&moat, &pki, config).await.0;
    let plain = moat_client(&moat, &pki, "alice").await;
    let default_path = text_value(&plain, "SHOW search_path").await;

    for round in 0..3 {
        with_options.batch_execute("BEGIN").await.unwrap();
        assert_eq!(
            text_value(&with_options, "SELECT v FROM items").await,
            "from elsewhere",
            "round {round}"
        );
        with_options.batch_execute("COMMIT").await.unwrap();
        assert_eq!(
            text_value(&plain, "SHOW search_path").await,
            default_path,
            "round {round}: the other client's options leaked"
        );
        assert_eq!(
            text_value(&plain, "SELECT count(*) FROM items").await,
            "0",
            "round {round}: public.items expected"
        );
    }
}

#[tokio::test]
async fn startup_parameters_follow_their_client_only() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = one_backend(&pki, &db);
    let mut plain = moat_raw(&moat, &pki, "alice", &[]).await;
    let defaults = plain
        .value("SELECT concat_ws('|', current_setting('client_encoding'), current_setting('TimeZone'), current_setting('application_name'))")
        .await;
    let mut tuned = moat_raw(
        &moat,
        &pki,
        "alice",
        &[
            ("client_encoding", "LATIN1"),
            ("TimeZone", "Asia/Tokyo"),
            ("application_name", "tuned"),
        ],
    )
    .await;
    // What pgmoat told the client at login is what the client asked for.
    assert_eq!(tuned.param("client_encoding"), Some("LATIN1"));
    assert_eq!(tuned.param("TimeZone"), Some("Asia/Tokyo"));

    let check = "SELECT concat_ws('|', current_setting('client_encoding'), \
                 current_setting('TimeZone'), current_setting('application_name'))";
    for round in 0..3 {
        assert_eq!(
            tuned.value(check).await,
            "LATIN1|Asia/Tokyo|tuned",
            "round {round}"
        );
        assert_eq!(plain.value(check).await, defaults, "round {round}");
    }
}

/// What a client is told at login is PostgreSQL's canonical spelling, as PostgreSQL itself
/// would report it, whatever the client wrote; a bad value is refused at login, as
/// PostgreSQL refuses it.
#[tokio::test]
async fn startup_parameters_are_reported_in_postgresqls_spelling() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = one_backend(&pki, &db);
    for _ in 0..2 {
        // Twice: the second login is answered from what the pool learnt.
        let mut client = moat_raw(
            &moat,
            &pki,
            "alice",
            &[("client_encoding", "eucjp"), ("DateStyle", "german")],
        )
        .await;
        assert_eq!(client.param("client_encoding"), Some("EUC_JP"));
        assert_eq!(client.param("DateStyle"), Some("German, DMY"));
        assert_eq!(client.value("SHOW client_encoding").await, "EUC_JP");
    }
    let refused = RawClient::connect(
        moat.port(),
        "alice",
        Some(ALICE_PASSWORD),
        APP_DB,
        &[("DateStyle", "no such style")],
        Some(tls_client_config(&pki.ca, None)),
    )
    .await
    .err()
    .expect("a bad startup setting is refused at login");
    assert!(refused.contains("DateStyle"), "{refused}");
}

/// In session mode the client holds one server for its whole session, so its BackendKeyData
/// carries that server's real pid: pg_backend_pid(), pg_terminate_backend() of that pid and
/// the pid in a notification from its own session agree with what it was told.
#[tokio::test]
async fn session_mode_clients_are_told_their_servers_real_pid() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set_str("pool_mode", "session")
            .build(),
    );
    let mut client = moat_raw(&moat, &pki, "alice", &[]).await;
    let told = client.pid;
    assert_eq!(
        client.value("SELECT pg_backend_pid()").await,
        told.to_string()
    );
    client.simple("LISTEN me").await.unwrap();
    client.send(&wire::query("NOTIFY me")).await;
    let answer = client.until_ready().await.unwrap();
    let notification = answer
        .iter()
        .find(|m| m.tag == b'A')
        .expect("its own notification");
    assert_eq!(
        i32::from_be_bytes(notification.body[..4].try_into().unwrap()),
        told
    );
    // Its cancel key still works, and pg_terminate_backend of the told pid ends this
    // client's own server.
    let mut other = moat_raw(&moat, &pki, "alice", &[]).await;
    assert_ne!(other.pid, told);
    assert_eq!(
        other
            .value(&format!("SELECT pg_terminate_backend({told})"))
            .await,
        "t"
    );
    let err = client.simple("SELECT 1").await.unwrap_err();
    assert!(
        err.code.starts_with("57P01") || err.code == "08006",
        "{err}"
    );
}
