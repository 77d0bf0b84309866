//! Certificate rotation and reload (SIGHUP): new certificates are served at once, open
//! transactions and connections are untouched, and a broken file changes nothing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use pgmoat::certs::certinfo::{CertInfo, read_pem_file};
use rustls::pki_types::ServerName;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER_SANS: &str = "DNS:localhost,IP:127.0.0.1";

/// `pgmoat certs issue ...` exactly as an operator runs it.
fn certs_issue(pki: &Pki, out: &Path, name: &str, extra: &[&str]) {
    let ca_dir = pki.ca.parent().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_pgmoat"))
        .args(["certs", "issue", name, "--out"])
        .arg(out)
        .arg("--ca-dir")
        .arg(ca_dir)
        .args(["--force"])
        .args(extra)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", output_text(&status));
}

fn file_serial(path: &Path) -> String {
    read_pem_file(path).unwrap()[0].serial_hex.clone()
}

/// The serial of the certificate pgmoat serves to a client right now.
async fn served_serial(port: u16, ca: &Path) -> String {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // SSLRequest: length 8, code 80877103.
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'S');
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(ca, None)));
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    CertInfo::from_der(&der).unwrap().serial_hex
}

fn live_dir(pki: &Pki) -> PathBuf {
    let dir = pki.dir.path().join("live");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn client_conninfo(port: u16, pki: &Pki) -> String {
    verified_conninfo(port, pki, "alice", APP_DB)
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_under_pgbench_loses_no_transaction_and_serves_the_new_certificate() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql(APP_DB, "GRANT ALL ON SCHEMA public TO alice");
    let live = live_dir(&pki);
    certs_issue(&pki, &live, "pgmoat", &["--san", SERVER_SANS]);
    let config = ConfigBuilder::new(&pki, &db)
        .set_path("client_tls_cert_file", &live.join("pgmoat.crt"))
        .set_path("client_tls_key_file", &live.join("pgmoat.key"))
        .set("default_pool_size", "4")
        .build();
    let pgmoat = Pgmoat::start(&config);
    let conn = client_conninfo(pgmoat.port(), &pki);
    let init = pgbench(&["-i", "-s", "1", "-q"], &conn);
    assert!(init.status.success(), "{}", output_text(&init));
    let before = served_serial(pgmoat.port(), &pki.ca).await;
    assert_eq!(before, file_serial(&live.join("pgmoat.crt")));

    // Persistent connections, and a connection per transaction (new handshakes all along).
    let steady = {
        let conn = conn.clone();
        std::thread::spawn(move || {
            pgbench(&["-c", "6", "-j", "2", "-T", "6", "-M", "extended"], &conn)
        })
    };
    let reconnecting = {
        let conn = conn.clone();
        std::thread::spawn(move || pgbench(&["-C", "-c", "2", "-j", "1", "-T", "6", "-S"], &conn))
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    certs_issue(&pki, &live, "pgmoat", &["--san", SERVER_SANS]);
    pgmoat.sighup_and_wait_reloaded(Duration::from_secs(10));

    for (name, run) in [("steady", steady), ("reconnecting", reconnecting)] {
        let out = run.join().unwrap();
        let text = output_text(&out);
        assert!(out.status.success(), "{name}: {text}\n{}", pgmoat.log());
        assert!(
            text.contains("number of failed transactions: 0"),
            "{name}: {text}"
        );
        assert!(!text.contains("aborted"), "{name}: {text}");
    }
    let after = served_serial(pgmoat.port(), &pki.ca).await;
    assert_ne!(after, before, "the new certificate is served after SIGHUP");
    assert_eq!(after, file_serial(&live.join("pgmoat.crt")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_key_on_reload_keeps_the_old_certificate_serving() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let live = live_dir(&pki);
    certs_issue(&pki, &live, "pgmoat", &["--san", SERVER_SANS]);
    let key = live.join("pgmoat.key");
    let config = ConfigBuilder::new(&pki, &db)
        .set_path("client_tls_cert_file", &live.join("pgmoat.crt"))
        .set_path("client_tls_key_file", &key)
        .build();
    let pgmoat = Pgmoat::start(&config);
    let before = served_serial(pgmoat.port(), &pki.ca).await;
    let good_key = std::fs::read(&key).unwrap();

    let broken: [(&str, Vec<u8>); 3] = [
        ("garbage", b"this is not a key\n".to_vec()),
        (
            "another certificate's key",
            std::fs::read(&pki.alice.key).unwrap(),
        ),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in broken {
        std::fs::write(&key, &bytes).unwrap();
        let mark = pgmoat.log_mark();
        pgmoat.sighup();
        pgmoat.wait_for_log_since(mark, "reload failed", Duration::from_secs(10));
        let log = pgmoat.log()[mark..].to_owned();
        assert!(
            log.contains("pgmoat.key"),
            "{what}: the error names the file: {log}"
        );
        assert_eq!(
            served_serial(pgmoat.port(), &pki.ca).await,
            before,
            "{what}"
        );
        let client = connect(
            pgmoat.port(),
            "alice",
            Some(ALICE_PASSWORD),
            APP_DB,
            Some(tls_client_config(&pki.ca, None)),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: clients still get in: {e}"));
        assert_eq!(
            client
                .query_one("SELECT 1", &[])
                .await
                .unwrap()
                .get::<_, i32>(0),
            1
        );
    }

    // Putting the good key back and reloading succeeds again.
    std::fs::write(&key, good_key).unwrap();
    pgmoat.sighup_and_wait_reloaded(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn open_transactions_survive_and_new_backends_use_the_new_client_certificate() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    db.sql(APP_DB, "GRANT ALL ON TABLE items TO alice");
    db.sql(APP_DB, "GRANT ALL ON SEQUENCE items_id_seq TO alice");
    let live = live_dir(&pki);
    certs_issue(&pki, &live, "upstream", &["--client", "--cn", "certuser"]);
    let config = ConfigBuilder::new(&pki, &db)
        .set_path("server_tls_cert_file", &live.join("upstream.crt"))
        .set_path("server_tls_key_file", &live.join("upstream.key"))
        .set("default_pool_size", "2")
        .build();
    let pgmoat = Pgmoat::start(&config);
    let tls = || Some(tls_client_config(&pki.ca, None));
    let a = connect(pgmoat.port(), "alice", Some(ALICE_PASSWORD), APP_DB, tls())
        .await
        .unwrap();
    let b = connect(pgmoat.port(), "alice", Some(ALICE_PASSWORD), APP_DB, tls())
        .await
        .unwrap();
    let serial_query = "SELECT client_serial::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let old_serial: String = b.query_one(serial_query, &[]).await.unwrap().get(0);
    assert_eq!(
        old_serial,
        decimal(&file_serial(&live.join("upstream.crt")))
    );

    a.batch_execute("BEGIN; INSERT INTO items (v) VALUES ('during rotation')")
        .await
        .unwrap();
    certs_issue(&pki, &live, "upstream", &["--client", "--cn", "certuser"]);
    pgmoat.sighup_and_wait_reloaded(Duration::from_secs(10));

    a.batch_execute("COMMIT").await.unwrap();
    let new_serial: String = b.query_one(serial_query, &[]).await.unwrap().get(0);
    assert_ne!(
        new_serial, old_serial,
        "idle backends made with the old certificate are replaced"
    );
    assert_eq!(
        new_serial,
        decimal(&file_serial(&live.join("upstream.crt")))
    );
    let count: i64 = b
        .query_one(
            "SELECT count(*) FROM items WHERE v = 'during rotation'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_backends_with_the_old_client_certificate_close_without_waiting_for_a_client() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let live = live_dir(&pki);
    certs_issue(&pki, &live, "upstream", &["--client", "--cn", "certuser"]);
    let config = ConfigBuilder::new(&pki, &db)
        .set_path("server_tls_cert_file", &live.join("upstream.crt"))
        .set_path("server_tls_key_file", &live.join("upstream.key"))
        .build();
    let pgmoat = Pgmoat::start(&config);
    let client = moat_client(&pgmoat, &pki, "alice").await;
    client.batch_execute("SELECT 1").await.unwrap();
    // The server that answered is idle in the pool now, as PostgreSQL sees it.
    let old_serial = decimal(&file_serial(&live.join("upstream.crt")));
    let with_old_serial = || {
        db.sql(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_ssl WHERE client_serial = {old_serial}"),
        )
    };
    assert_eq!(with_old_serial().trim(), "1");

    certs_issue(&pki, &live, "upstream", &["--client", "--cn", "certuser"]);
    pgmoat.sighup_and_wait_reloaded(Duration::from_secs(10));
    // Nobody uses the pool meanwhile: the janitor, not a checkout, must retire it (the
    // default server_idle_timeout of 600 s would keep it for ten minutes).
    eventually(
        "the idle server made with the old client certificate to close",
        Duration::from_secs(10),
        || with_old_serial().trim() == "0",
    )
    .await;
    drop(client);
}

fn decimal(hex: &str) -> String {
    u128::from_str_radix(hex, 16).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_files_reloads_without_a_signal() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let live = live_dir(&pki);
    certs_issue(&pki, &live, "pgmoat", &["--san", SERVER_SANS]);
    let config = ConfigBuilder::new(&pki, &db)
        .set_path("client_tls_cert_file", &live.join("pgmoat.crt"))
        .set_path("client_tls_key_file", &live.join("pgmoat.key"))
        .set("watch_files", "true")
        .build();
    let pgmoat = Pgmoat::start(&config);
    let before = served_serial(pgmoat.port(), &pki.ca).await;
    let mark = pgmoat.log_mark();
    certs_issue(&pki, &live, "pgmoat", &["--san", SERVER_SANS]);
    pgmoat.wait_for_log_since(mark, "configuration reloaded", Duration::from_secs(15));
    let after = served_serial(pgmoat.port(), &pki.ca).await;
    assert_ne!(after, before);
    assert_eq!(after, file_serial(&live.join("pgmoat.crt")));
}

/// One `SELECT 1` through pgmoat as alice on a fresh connection; the error text on failure.
async fn select_one(port: u16, pki: &Pki) -> Result<(), String> {
    let client = connect(
        port,
        "alice",
        Some(ALICE_PASSWORD),
        APP_DB,
        Some(tls_client_config(&pki.ca, None)),
    )
    .await
    .map_err(|e| format!("connect: {e:?}"))?;
    client
        .simple_query("SELECT 1")
        .await
        .map(drop)
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_expired_certificate_on_reload_keeps_the_old_state_and_says_why() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let live = live_dir(&pki);
    certs_issue(&pki, &live, "pgmoat", &["--san", SERVER_SANS]);
    certs_issue(&pki, &live, "upstream", &["--client", "--cn", "certuser"]);
    let (crt, key) = (live.join("pgmoat.crt"), live.join("pgmoat.key"));
    let (up_crt, up_key) = (live.join("upstream.crt"), live.join("upstream.key"));
    let config = ConfigBuilder::new(&pki, &db)
        .set_path("client_tls_cert_file", &crt)
        .set_path("client_tls_key_file", &key)
        .set_path("server_tls_cert_file", &up_crt)
        .set_path("server_tls_key_file", &up_key)
        .build();
    let pgmoat = Pgmoat::start(&config);
    let before = served_serial(pgmoat.port(), &pki.ca).await;
    let saved: Vec<(PathBuf, Vec<u8>)> = [&crt, &key, &up_crt, &up_key]
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    let restore = || {
        for (path, bytes) in &saved {
            std::fs::write(path, bytes).unwrap();
        }
    };
    let crt_s = crt.display().to_string();
    let up_crt_s = up_crt.display().to_string();

    // (what, break the files, words the error line must hold: setting, file, reason)
    type Breakage<'a> = (&'a str, Box<dyn Fn() + 'a>, Vec<&'a str>);
    let cases: Vec<Breakage> = vec![
        (
            "client-facing certificate deleted",
            Box::new(|| std::fs::remove_file(&crt).unwrap()),
            vec![
                "client_tls_cert_file",
                &crt_s,
                "cannot read",
                "No such file",
            ],
        ),
        (
            "client-facing certificate expired (with its own key)",
            Box::new(|| {
                std::fs::copy(&pki.expired.crt, &crt).unwrap();
                std::fs::copy(&pki.expired.key, &key).unwrap();
            }),
            vec!["client_tls_cert_file", &crt_s, "expired on"],
        ),
        (
            "PostgreSQL-facing client certificate deleted",
            Box::new(|| std::fs::remove_file(&up_crt).unwrap()),
            vec![
                "server_tls_cert_file",
                &up_crt_s,
                "cannot read",
                "No such file",
            ],
        ),
        (
            "PostgreSQL-facing client certificate expired",
            Box::new(|| {
                std::fs::copy(&pki.expired.crt, &up_crt).unwrap();
                std::fs::copy(&pki.expired.key, &up_key).unwrap();
            }),
            vec!["server_tls_cert_file", &up_crt_s, "expired on"],
        ),
    ];
    for (what, break_files, words) in cases {
        break_files();
        let mark = pgmoat.log_mark();
        pgmoat.sighup();
        let mut needles = vec!["reload failed; the previous configuration stays in effect"];
        needles.extend(words.iter().copied());
        pgmoat.wait_for_log_line_since(mark, &needles, Duration::from_secs(10));
        assert!(
            !pgmoat.log()[mark..].contains("configuration reloaded"),
            "{what}: nothing was swapped in"
        );
        assert_eq!(
            served_serial(pgmoat.port(), &pki.ca).await,
            before,
            "{what}: the old certificate is still served"
        );
        // And a new client still gets through to PostgreSQL.
        select_one(pgmoat.port(), &pki)
            .await
            .unwrap_or_else(|e| panic!("{what}: clients still get through: {e}"));
        restore();
    }
    pgmoat.sighup_and_wait_reloaded(Duration::from_secs(10));
    assert_eq!(served_serial(pgmoat.port(), &pki.ca).await, before);
}

/// `SHOW CONFIG`'s value of `name`, through the admin console.
async fn show_config(pgmoat: &Pgmoat, pki: &Pki, name: &str) -> String {
    let console = moat_console(pgmoat, pki, "alice").await;
    console
        .simple_query("SHOW CONFIG")
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) if row.get("key") == Some(name) => {
                Some(row.get("value").unwrap_or("").to_owned())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("SHOW CONFIG has no {name}"))
}

/// default_pool_size and query_wait_timeout change on SIGHUP without a restart: seen in SHOW
/// CONFIG, in how many servers PostgreSQL sees pgmoat hold at once, and in the timeout a
/// waiting client is given. (A client keeps the settings snapshot it connected with, so the new
/// values are checked with clients that connect after the reload.)
#[tokio::test(flavor = "multi_thread")]
async fn pool_size_and_query_wait_timeout_change_live_on_reload() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let builder = ConfigBuilder::new(&pki, &db).set("admin_users", r#"["alice"]"#);
    let pgmoat = Pgmoat::start(
        &builder
            .clone()
            .set("default_pool_size", "1")
            .set("query_wait_timeout", "1")
            .build(),
    );
    let port = pgmoat.port();
    assert_eq!(show_config(&pgmoat, &pki, "default_pool_size").await, "1");
    let tls = || Some(tls_client_config(&pki.ca, None));
    let open_transaction = || async {
        let client = connect(port, "alice", Some(ALICE_PASSWORD), APP_DB, tls())
            .await
            .unwrap();
        client.batch_execute("BEGIN; SELECT 1").await.unwrap();
        client
    };

    let holder = open_transaction().await;
    let err = select_one(port, &pki).await.unwrap_err();
    assert!(
        err.contains("query_wait_timeout") && err.contains("within 1 s"),
        "the one server is taken: {err}"
    );
    assert_eq!(db.backends_of("alice"), 1);

    pgmoat.rewrite_config(
        &builder
            .set("default_pool_size", "3")
            .set("query_wait_timeout", "2")
            .build(),
    );
    pgmoat.sighup_and_wait_reloaded(Duration::from_secs(10));
    assert_eq!(show_config(&pgmoat, &pki, "default_pool_size").await, "3");
    let shown_wait = show_config(&pgmoat, &pki, "query_wait_timeout").await;
    assert!(
        shown_wait == "2" || shown_wait == "2.0",
        "query_wait_timeout {shown_wait}"
    );

    // The holder's transaction is untouched; two more now fit beside it.
    let second = open_transaction().await;
    let third = open_transaction().await;
    assert_eq!(db.backends_of("alice"), 3);
    let err = select_one(port, &pki).await.unwrap_err();
    assert!(
        err.contains("query_wait_timeout") && err.contains("within 2 s"),
        "all three servers are taken, and the new timeout applies: {err}"
    );
    for client in [holder, second, third] {
        client.batch_execute("COMMIT").await.unwrap();
    }
    select_one(port, &pki).await.unwrap();
}

/// Expiry is logged for every loaded certificate at start and at each reload: a warning naming
/// the setting, the file and the days left once a certificate is within cert_expiry_warn_days,
/// an info line with the days left otherwise. Days left are whole days (rounded down), so a
/// certificate issued for 10 days a moment ago has 9 left.
#[test]
fn certificates_close_to_expiry_are_warned_about_at_start_and_on_reload() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let live = live_dir(&pki);
    let crt = live.join("pgmoat.crt");
    let crt_s = format!("file={}", crt.display());
    certs_issue(
        &pki,
        &live,
        "pgmoat",
        &["--san", SERVER_SANS, "--days", "10"],
    );
    let builder = ConfigBuilder::new(&pki, &db)
        .set_path("client_tls_cert_file", &crt)
        .set_path("client_tls_key_file", &live.join("pgmoat.key"));
    let pgmoat = Pgmoat::start(&builder.clone().set("cert_expiry_warn_days", "15").build());
    let wait = Duration::from_secs(10);
    let warning = "certificate expires soon";
    let setting = r#"setting="client_tls_cert_file""#;
    pgmoat.wait_for_log_line_since(0, &["WARN", warning, setting, &crt_s, "days_left=9"], wait);
    // The CA (30 days, from the test PKI) is outside the 15 days: logged, not warned about.
    let ca_line = format!("file={}", pki.ca.display());
    pgmoat.wait_for_log_line_since(
        0,
        &[
            "INFO",
            "certificate loaded",
            r#"setting="client_tls_ca_file""#,
            &ca_line,
            "days_left=29",
        ],
        wait,
    );
    assert!(
        !pgmoat
            .plain_log()
            .lines()
            .any(|l| l.contains(warning) && l.contains(&ca_line)),
        "{}",
        pgmoat.plain_log()
    );

    // A reissue that is even shorter: the reload says so.
    certs_issue(
        &pki,
        &live,
        "pgmoat",
        &["--san", SERVER_SANS, "--days", "5"],
    );
    let mark = pgmoat.sighup_and_wait_reloaded(wait);
    pgmoat.wait_for_log_line_since(
        mark,
        &["WARN", warning, setting, &crt_s, "days_left=4"],
        wait,
    );

    // The threshold is the setting: below it, the same certificate is only logged.
    pgmoat.rewrite_config(&builder.set("cert_expiry_warn_days", "3").build());
    let mark = pgmoat.sighup_and_wait_reloaded(wait);
    pgmoat.wait_for_log_line_since(
        mark,
        &["INFO", "certificate loaded", setting, &crt_s, "days_left=4"],
        wait,
    );
    assert!(
        !strip_ansi(&pgmoat.log()[mark..]).contains(warning),
        "{}",
        pgmoat.plain_log()
    );
}

/// `pgmoat certs check` as cron runs it: 0 ok, 1 warning, 2 critical, and 3 (Nagios UNKNOWN)
/// when the check itself fails (a path that does not exist, a mistyped option), so an error is
/// never taken for a warning or a critical.
#[test]
fn certs_check_exit_codes_for_cron_and_monitoring() {
    let pki = Pki::new();
    let live = live_dir(&pki);
    certs_issue(
        &pki,
        &live,
        "short",
        &["--san", SERVER_SANS, "--days", "20"],
    );
    let crt = live.join("short.crt");
    let check = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pgmoat"))
            .args(["certs", "check"])
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), output_text(&out))
    };
    let crt_s = crt.to_str().unwrap();
    let ca_s = pki.ca.to_str().unwrap();
    let with = |warn: &str, critical: &str| {
        check(&[
            crt_s,
            "--ca",
            ca_s,
            "--warn-days",
            warn,
            "--critical-days",
            critical,
        ])
    };
    for (warn, critical, code) in [("10", "5", 0), ("30", "5", 1), ("60", "30", 2)] {
        let (got, text) = with(warn, critical);
        assert_eq!(got, Some(code), "warn {warn}, critical {critical}: {text}");
    }
    let missing = live.join("missing.crt");
    let (got, text) = check(&[missing.to_str().unwrap()]);
    assert_eq!(got, Some(3), "{text}");
    assert!(
        text.contains("missing.crt") && text.contains("UNKNOWN"),
        "{text}"
    );
    let (got, text) = check(&[crt_s, "--warn-day", "30"]);
    assert_eq!(got, Some(3), "a mistyped option: {text}");

    // Global options before the subcommand do not hide it; other commands keep clap's code.
    let out = Command::new(env!("CARGO_BIN_EXE_pgmoat"))
        .args(["--log-format", "json", "certs", "check", "--no-such-option"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_pgmoat"))
        .args(["certs", "issue"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
}
