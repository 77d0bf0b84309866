//! Whom pgmoat trusts towards PostgreSQL, per database entry: server_tls_* in an entry
//! overrides the global settings (another CA, another client certificate given as one combined
//! PEM file), and server_tls_ca_file = "system" uses the platform trust store (here pointed at
//! the test CA through SSL_CERT_FILE, for the pgmoat process only).

mod support;

use support::*;

const SSL_QUERY: &str =
    "SELECT ssl, coalesce(client_dn, '') FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

fn entry(name: &str, db: &TestDb, extra: &[(&str, &str)]) -> String {
    let mut text = format!(
        "\n[databases.{name}]\nhost = \"localhost\"\nport = {}\ndbname = {}",
        db.port(),
        toml_str(APP_DB)
    );
    for (key, value) in extra {
        text.push_str(&format!("\n{key} = {}", toml_str(value)));
    }
    text
}

async fn ssl_and_dn(pki: &Pki, moat: &Pgmoat, db: &str) -> Result<(bool, String), String> {
    let tls = tls_client_config(&pki.ca, None);
    let client = connect(moat.port(), "alice", Some(ALICE_PASSWORD), db, Some(tls))
        .await
        .map_err(|e| format!("{e:?}"))?;
    let row = client
        .query_one(SSL_QUERY, &[])
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok((row.get(0), row.get(1)))
}

#[tokio::test]
async fn two_database_entries_trust_different_cas() {
    let pki = Pki::new();
    let trusted = TestDb::start(&pki);
    // A second PostgreSQL whose certificate comes from the CA the global settings do not trust.
    let foreign_cert = pki.issue_server_from_other_ca("foreign-pg", &["DNS:localhost"]);
    let foreign = TestDb::start_with(&pki, |opts| {
        opts.server_cert = foreign_cert.crt.clone();
        opts.server_key = foreign_cert.key.clone();
    });
    // Its own client certificate too, as one file holding certificate and key.
    let own_client = pki.issue_client("per-db-client", "per-db-client");
    let combined = Pki::combined(&own_client);
    let other_ca = pki.other_ca.display().to_string();
    let combined_text = combined.display().to_string();
    let config = ConfigBuilder::new(&pki, &trusted).build()
        + &entry(
            "foreign",
            &foreign,
            &[
                ("server_tls_ca_file", &other_ca),
                ("server_tls_cert_file", &combined_text),
            ],
        )
        // The control: the same server under the global CA must fail verify-full.
        + &entry("foreign_global", &foreign, &[]);
    let moat = Pgmoat::start(&config);

    let app = ssl_and_dn(&pki, &moat, APP_DB).await.unwrap();
    assert_eq!(app, (true, "/CN=certuser".to_owned()), "{}", moat.log());
    let foreign_row = ssl_and_dn(&pki, &moat, "foreign")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", moat.log()));
    assert_eq!(foreign_row, (true, "/CN=per-db-client".to_owned()));
    let err = ssl_and_dn(&pki, &moat, "foreign_global")
        .await
        .expect_err("the global CA does not vouch for the foreign server");
    assert!(
        err.contains("08006") || err.contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn the_system_trust_store_is_used_for_system() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let config = ConfigBuilder::new(&pki, &db)
        .set_str("server_tls_ca_file", "system")
        .build();
    // rustls-native-certs reads SSL_CERT_FILE instead of the platform store when it is set.
    let ca = pki.ca.display().to_string();
    let moat = Pgmoat::start_with_env(&config, &[("SSL_CERT_FILE", &ca)]);
    assert_eq!(
        ssl_and_dn(&pki, &moat, APP_DB).await,
        Ok((true, "/CN=certuser".to_owned())),
        "{}",
        moat.log()
    );
    moat.wait_for_log(
        "system trust store loaded",
        std::time::Duration::from_secs(5),
    );

    // The control: a store without the test CA refuses the same server.
    let other = pki.other_ca.display().to_string();
    let moat = Pgmoat::start_with_env(&config, &[("SSL_CERT_FILE", &other)]);
    let err = ssl_and_dn(&pki, &moat, APP_DB)
        .await
        .expect_err("the store does not hold the test CA");
    assert!(
        err.contains("08006") || err.contains("certificate"),
        "{err}"
    );
}
