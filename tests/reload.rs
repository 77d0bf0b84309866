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
    conninfo(
        port,
        "alice",
        APP_DB,
        &[
            ("sslmode", "verify-full"),
            ("sslrootcert", pki.ca.to_str().unwrap()),
            ("password", ALICE_PASSWORD),
        ],
    )
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
    let mark = pgmoat.log_mark();
    pgmoat.sighup();
    pgmoat.wait_for_log_since(mark, "configuration reloaded", Duration::from_secs(10));

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
    let mark = pgmoat.log_mark();
    pgmoat.sighup();
    pgmoat.wait_for_log_since(mark, "configuration reloaded", Duration::from_secs(10));
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
    let mark = pgmoat.log_mark();
    pgmoat.sighup();
    pgmoat.wait_for_log_since(mark, "configuration reloaded", Duration::from_secs(10));

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
