//! Who a client certificate may log in as: auth_ident_file maps (literal and regular
//! expression), auth_cert_identity (a SPIFFE ID in a URI SAN), and auth_type = hba with
//! certificate and password users on one listener. Real PostgreSQL, psql and psycopg, with
//! certificates from pgmoat's cert tool.

mod support;

use std::time::Duration;

use pgmoat::pgcluster::PgUser;
use support::*;

const BILLING_PASSWORD: &str = "billing-secret";
const ADMIN_PASSWORD: &str = "admin-secret";
const REPORT_PASSWORD: &str = "report-secret";

/// PostgreSQL with the roles these tests log in as, besides the usual ones.
fn db_with_roles(pki: &Pki) -> TestDb {
    TestDb::start_with(pki, |opts| {
        opts.users
            .push(PgUser::with_password("billing", BILLING_PASSWORD));
        opts.users
            .push(PgUser::with_password("admin", ADMIN_PASSWORD));
        opts.users
            .push(PgUser::with_password("report", REPORT_PASSWORD));
    })
}

/// pgmoat logs in to PostgreSQL with these passwords whatever the client proved.
fn userlist() -> [(&'static str, &'static str); 3] {
    [
        ("billing", BILLING_PASSWORD),
        ("admin", ADMIN_PASSWORD),
        ("report", REPORT_PASSWORD),
    ]
}

fn write(pki: &Pki, name: &str, text: &str) -> std::path::PathBuf {
    let path = pki.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// libpq conninfo for `user` with verify-full towards pgmoat and, when given, a certificate.
fn conn(
    moat: &Pgmoat,
    pki: &Pki,
    user: &str,
    cert: Option<&CertPair>,
    extra: &[(&str, &str)],
) -> String {
    let mut params = vec![
        ("sslmode", "verify-full"),
        ("sslrootcert", pki.ca.to_str().unwrap()),
    ];
    if let Some(cert) = cert {
        params.push(("sslcert", cert.crt.to_str().unwrap()));
        params.push(("sslkey", cert.key.to_str().unwrap()));
    }
    params.extend_from_slice(extra);
    conninfo(moat.port(), user, APP_DB, &params)
}

/// psql's `SELECT current_user`, or its error text.
fn psql_user(conninfo: &str) -> Result<String, String> {
    let out = psql(&["-Atc", "SELECT current_user"], conninfo);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(output_text(&out))
    }
}

#[test]
fn an_ident_map_lets_one_certificate_be_the_roles_it_lists_and_no_other() {
    let pki = Pki::new();
    let db = db_with_roles(&pki);
    let svc = pki.issue_client("svc-billing", "svc-billing");
    let ident = write(
        &pki,
        "pg_ident.conf",
        "# MAPNAME  SYSTEM-USERNAME  PG-USERNAME\nsvc  svc-billing  billing\n",
    );
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .auth_type("cert")
            .client_sslmode("verify-full")
            .userlist(&userlist())
            .set_path("auth_ident_file", &ident)
            .database_line("auth_ident_map = \"svc\"")
            .build(),
    );

    // The mapped role, with psql and with psycopg.
    assert_eq!(
        psql_user(&conn(&moat, &pki, "billing", Some(&svc), &[])),
        Ok("billing".into()),
        "{}",
        moat.log()
    );
    assert_eq!(
        psycopg_login(&conn(&moat, &pki, "billing", Some(&svc), &[])),
        "user=billing"
    );

    // Any other role is refused with PostgreSQL's words, and the log says who and which map.
    let mark = moat.log_mark();
    let err = psql_user(&conn(&moat, &pki, "admin", Some(&svc), &[])).unwrap_err();
    assert!(
        err.contains("certificate authentication failed for user \"admin\""),
        "{err}"
    );
    moat.wait_for_log_since(
        mark,
        "no match in usermap \"svc\" for user \"admin\" authenticated as \"svc-billing\"",
        Duration::from_secs(5),
    );
    let refused = psycopg_login(&conn(&moat, &pki, "admin", Some(&svc), &[]));
    assert!(
        refused.starts_with("refused:")
            && refused.contains("certificate authentication failed for user \"admin\""),
        "{refused}"
    );

    // With a map, the CN itself is no longer a role of its own: svc-billing is not in the map.
    let err = psql_user(&conn(&moat, &pki, "svc-billing", Some(&svc), &[])).unwrap_err();
    assert!(err.contains("certificate authentication failed"), "{err}");
}

#[tokio::test]
async fn a_refused_identity_gets_sqlstate_28000() {
    let pki = Pki::new();
    let db = db_with_roles(&pki);
    let svc = pki.issue_client("svc-billing", "svc-billing");
    let ident = write(&pki, "pg_ident.conf", "svc svc-billing billing\n");
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .auth_type("cert")
            .client_sslmode("verify-full")
            .userlist(&userlist())
            .set_path("auth_ident_file", &ident)
            .set_str("auth_ident_map", "svc")
            .build(),
    );
    let tls = || tls_client_config(&pki.ca, Some(svc.pair()));
    let client = connect(moat.port(), "billing", None, APP_DB, Some(tls()))
        .await
        .unwrap();
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "billing");
    let err = connect(moat.port(), "admin", None, APP_DB, Some(tls()))
        .await
        .expect_err("admin must be refused");
    let db_err = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db_err.code().code(), "28000");
    assert_eq!(
        db_err.message(),
        "certificate authentication failed for user \"admin\""
    );
}

/// The SPIFFE ID in a URI SAN, mapped by a regular expression whose capture is the role.
#[test]
fn a_spiffe_id_maps_to_its_namespace_by_regular_expression() {
    let pki = Pki::new();
    let db = db_with_roles(&pki);
    let spiffe = pki.issue_client_with_sans(
        "billing-api",
        "billing-api",
        &["URI:spiffe://prod/ns/billing/sa/api"],
    );
    // Another workload of the same trust domain, in a namespace that is no role.
    let other = pki.issue_client_with_sans(
        "shop-api",
        "shop-api",
        &["URI:spiffe://prod/ns/shop/sa/api"],
    );
    let ident = write(
        &pki,
        "pg_ident.conf",
        "workloads \"/^spiffe://prod/ns/([a-z0-9-]+)/sa/api$\" \\1\n",
    );
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .auth_type("cert")
            .client_sslmode("verify-full")
            .userlist(&userlist())
            .set_path("auth_ident_file", &ident)
            .set_str("auth_ident_map", "workloads")
            .set_str("auth_cert_identity", "san-uri")
            .build(),
    );
    assert_eq!(
        psql_user(&conn(&moat, &pki, "billing", Some(&spiffe), &[])),
        Ok("billing".into()),
        "{}",
        moat.log()
    );
    assert_eq!(
        psycopg_login(&conn(&moat, &pki, "billing", Some(&spiffe), &[])),
        "user=billing"
    );
    // The capture decides: the billing identity is not admin, and shop's is not billing.
    assert!(psql_user(&conn(&moat, &pki, "admin", Some(&spiffe), &[])).is_err());
    let err = psql_user(&conn(&moat, &pki, "billing", Some(&other), &[])).unwrap_err();
    assert!(
        err.contains("certificate authentication failed for user \"billing\""),
        "{err}"
    );
    // The CN is not the identity now: a CN that equals the role does not help.
    let cn_billing = pki.issue_client("cn-billing", "billing");
    assert!(psql_user(&conn(&moat, &pki, "billing", Some(&cn_billing), &[])).is_err());
}

/// One listener: `billing` logs in by certificate only, `report` by SCRAM only, anything else
/// (another user, or any user from an address no rule lists) is refused by the rules.
#[tokio::test]
async fn hba_rules_mix_certificate_and_password_users_on_one_listener() {
    let pki = Pki::new();
    let db = db_with_roles(&pki);
    let billing_cert = pki.issue_client("billing", "billing");
    let hba = write(
        &pki,
        "pg_hba.conf",
        "# TYPE  DATABASE USER    ADDRESS       METHOD\n\
         hostssl app      billing 127.0.0.1/32  cert\n\
         hostssl app      report  127.0.0.1/32  scram-sha-256\n\
         hostssl app      admin   127.0.0.1/32  reject\n",
    );
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .auth_type("hba")
            .client_sslmode("require")
            .userlist(&userlist())
            .set_path("auth_hba_file", &hba)
            .build(),
    );

    // billing: by certificate, with psql and psycopg; a password alone does not do.
    assert_eq!(
        psql_user(&conn(&moat, &pki, "billing", Some(&billing_cert), &[])),
        Ok("billing".into()),
        "{}",
        moat.log()
    );
    assert_eq!(
        psycopg_login(&conn(&moat, &pki, "billing", Some(&billing_cert), &[])),
        "user=billing"
    );
    let err = psql_user(&conn(
        &moat,
        &pki,
        "billing",
        None,
        &[("password", BILLING_PASSWORD)],
    ))
    .unwrap_err();
    assert!(
        err.contains("connection requires a valid client certificate"),
        "{err}"
    );

    // report: by SCRAM, without a certificate (the handshake does not insist on one).
    let report = conn(
        &moat,
        &pki,
        "report",
        None,
        &[("password", REPORT_PASSWORD)],
    );
    assert_eq!(psql_user(&report), Ok("report".into()));
    assert_eq!(psycopg_login(&report), "user=report");
    let wrong = conn(&moat, &pki, "report", None, &[("password", "wrong")]);
    assert!(
        psql_user(&wrong)
            .unwrap_err()
            .contains("password authentication failed")
    );

    // reject, and a user no rule names.
    let err = psql_user(&conn(
        &moat,
        &pki,
        "admin",
        None,
        &[("password", ADMIN_PASSWORD)],
    ))
    .unwrap_err();
    assert!(
        err.contains("pg_hba.conf rejects connection for host \"127.0.0.1\", user \"admin\", database \"app\", SSL encryption"),
        "{err}"
    );
    let err = psql_user(&conn(
        &moat,
        &pki,
        "alice",
        None,
        &[("password", ALICE_PASSWORD)],
    ))
    .unwrap_err();
    assert!(
        err.contains("no pg_hba.conf entry for host \"127.0.0.1\", user \"alice\", database \"app\", SSL encryption"),
        "{err}"
    );

    // report from an address no rule lists: the same user and password are refused, 28000.
    let err = connect_from(
        "127.0.0.2".parse().unwrap(),
        &moat,
        &pki,
        "report",
        REPORT_PASSWORD,
    )
    .await
    .expect_err("127.0.0.2 is not in any rule");
    let db_err = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db_err.code().code(), "28000");
    assert_eq!(
        db_err.message(),
        "no pg_hba.conf entry for host \"127.0.0.2\", user \"report\", database \"app\", SSL encryption"
    );
    // The positive control from the listed address, by the same path.
    connect_from(
        "127.0.0.1".parse().unwrap(),
        &moat,
        &pki,
        "report",
        REPORT_PASSWORD,
    )
    .await
    .expect("127.0.0.1 is listed");

    // Reloaded like everything else. After SIGHUP no rule takes a connection without a
    // certificate any more, so the handshake itself insists on one; a broken file keeps the
    // rules in force and the log names the line.
    std::fs::write(
        &hba,
        "hostssl app billing 127.0.0.1/32 cert\n\
         hostssl app report  127.0.0.1/32 reject\n",
    )
    .unwrap();
    moat.sighup_and_wait_reloaded(Duration::from_secs(10));
    let refused = |err: &str| err.contains("certificate required");
    let err = psql_user(&report).unwrap_err();
    assert!(refused(&err), "{err}");
    std::fs::write(&hba, "hostssl app report 127.0.0.1/32 ident\n").unwrap();
    let mark = moat.log_mark();
    moat.sighup();
    moat.wait_for_log_since(mark, "reload failed", Duration::from_secs(10));
    assert!(
        moat.log()[mark..].contains(":1:"),
        "{}",
        &moat.log()[mark..]
    );
    let err = psql_user(&report).unwrap_err();
    assert!(refused(&err), "{err}");
    assert_eq!(
        psql_user(&conn(&moat, &pki, "billing", Some(&billing_cert), &[])),
        Ok("billing".into())
    );
}

/// tokio-postgres over rustls from a chosen local address (any 127.0.0.0/8 address is local).
async fn connect_from(
    local: std::net::IpAddr,
    moat: &Pgmoat,
    pki: &Pki,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    use tokio_postgres::tls::MakeTlsConnect;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(local, 0)).unwrap();
    let tcp = socket
        .connect(([127, 0, 0, 1], moat.port()).into())
        .await
        .unwrap();
    let mut config = pg_config(moat.port(), user, Some(password), APP_DB);
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let mut make = tokio_postgres_rustls::MakeRustlsConnect::new(tls_client_config(&pki.ca, None));
    let tls = <tokio_postgres_rustls::MakeRustlsConnect as MakeTlsConnect<tokio::net::TcpStream>>::make_tls_connect(&mut make, "localhost").unwrap();
    let (client, connection) = config.connect_raw(tcp, tls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[test]
fn a_map_the_ident_file_lacks_keeps_pgmoat_from_starting() {
    let pki = Pki::new();
    let ident = write(&pki, "pg_ident.conf", "svc svc-billing billing\n");
    let (status, log) = Pgmoat::start_expect_failure(
        &ConfigBuilder::for_port(&pki, 1)
            .auth_type("cert")
            .client_sslmode("verify-full")
            .set_path("auth_ident_file", &ident)
            .set_str("auth_ident_map", "nosuchmap")
            .build(),
    );
    assert!(!status.success());
    assert!(log.contains("there is no map \"nosuchmap\""), "{log}");
}
