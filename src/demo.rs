//! `pgmoat demo`: the whole moat on one machine in one command. Makes a CA and certificates
//! with the built-in tool, starts a throwaway PostgreSQL with TLS and a `cert` rule, runs
//! pgmoat in front of it with mutual TLS on both sides, and prints a psql line that works
//! as printed. Everything lives in one temp directory, removed on exit.

use std::path::Path;

use anyhow::{Context, Result};
use pgmoat::certs::{CaOptions, IssueOptions, init_ca, issue};
use pgmoat::config::Config;
use pgmoat::lifecycle::Server;
use pgmoat::pgcluster::{PgCluster, PgClusterOptions, PgUser};

/// The demo's database user: PostgreSQL's `cert` rule and pgmoat's `auth_type = cert` both
/// take the user name from the certificate's CN.
const APP_USER: &str = "app";

pub fn run(port: u16) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("pgmoat-demo-")
        .tempdir_in("/tmp")
        .context("creating the demo directory")?;
    let pki = dir.path().join("certs");
    println!("pgmoat demo: making certificates in {}", pki.display());
    let ca = init_ca(&CaOptions::new(&pki)).context("creating the demo CA")?;
    let server_sans = ["DNS:localhost", "IP:127.0.0.1"];
    let postgres = issue(&IssueOptions::new("postgres", server_sans, &pki))?;
    let moat = issue(&IssueOptions::new("pgmoat", server_sans, &pki))?;
    // pgmoat's certificate towards PostgreSQL, and the app's certificate towards pgmoat.
    let mut upstream = IssueOptions::new("pgmoat-upstream", Vec::<String>::new(), &pki);
    upstream.client = true;
    upstream.subject.cn = Some(APP_USER.into());
    let upstream = issue(&upstream)?;
    let mut app = IssueOptions::new(APP_USER, Vec::<String>::new(), &pki);
    app.client = true;
    let app = issue(&app)?;

    println!("pgmoat demo: starting a throwaway PostgreSQL (TLS on, client certificates required)");
    let mut pg_opts = PgClusterOptions::new(&postgres.cert, &postgres.key, &ca.cert);
    pg_opts.hba = vec![
        "local all all trust".into(),
        format!("hostssl all {APP_USER} 127.0.0.1/32 cert"),
    ];
    pg_opts.users = vec![PgUser::without_password(APP_USER)];
    pg_opts.databases = vec![APP_USER.into()];
    let cluster = PgCluster::start(pg_opts).context("starting PostgreSQL")?;
    cluster
        .psql(
            APP_USER,
            &format!("GRANT ALL ON SCHEMA public TO {APP_USER}"),
        )
        .context("granting the demo user its schema")?;

    let config_path = dir.path().join("pgmoat.toml");
    let config_text = demo_config(
        port,
        &cluster,
        &ca.cert,
        &moat.cert,
        &moat.key,
        &upstream.cert,
        &upstream.key,
    );
    std::fs::write(&config_path, &config_text).context("writing the demo config")?;
    let config = Config::load(Some(&config_path), std::iter::empty())?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = Server::bind(config)
            .await
            .with_context(|| format!("starting pgmoat on port {port} (choose another with --port)"))?;
        println!();
        println!("pgmoat is listening on 127.0.0.1:{port}, in front of PostgreSQL on 127.0.0.1:{}.", cluster.port());
        println!("TLS with client certificates on both sides; verify-full towards PostgreSQL.");
        println!("Config: {}", config_path.display());
        println!();
        println!("Connect with:");
        println!(
            "  psql \"host=localhost port={port} dbname={APP_USER} user={APP_USER} sslmode=verify-full sslrootcert={} sslcert={} sslkey={}\"",
            ca.cert.display(),
            app.cert.display(),
            app.key.display()
        );
        println!();
        println!("and try: SELECT ssl, version, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid();");
        println!("Press Ctrl-C to stop (everything in {} is removed).", dir.path().display());
        server.run().await?;
        anyhow::Ok(())
    })?;
    drop(cluster);
    Ok(())
}

fn demo_config(
    port: u16,
    cluster: &PgCluster,
    ca: &Path,
    cert: &Path,
    key: &Path,
    upstream_cert: &Path,
    upstream_key: &Path,
) -> String {
    format!(
        r#"# Written by `pgmoat demo`.
listen_addr = "127.0.0.1"
listen_port = {port}
pool_mode = "transaction"
default_pool_size = 10

# Clients: TLS with a certificate from the demo CA; the certificate CN is the user name.
auth_type = "cert"
client_tls_sslmode = "verify-full"
client_tls_cert_file = "{cert}"
client_tls_key_file = "{key}"
client_tls_ca_file = "{ca}"

# PostgreSQL: verify-full, logging in with pgmoat's own client certificate.
server_tls_sslmode = "verify-full"
server_tls_ca_file = "{ca}"
server_tls_cert_file = "{upstream_cert}"
server_tls_key_file = "{upstream_key}"

[databases.{APP_USER}]
host = "localhost"
port = {pg_port}
"#,
        cert = cert.display(),
        key = key.display(),
        ca = ca.display(),
        upstream_cert = upstream_cert.display(),
        upstream_key = upstream_key.display(),
        pg_port = cluster.port(),
    )
}
