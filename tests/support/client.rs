//! Real clients for the tests: tokio-postgres over rustls (verification comes from the rustls
//! config: roots + hostname "localhost" = verify-full), and psql / pgbench as processes.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// A rustls client config trusting `ca`, optionally presenting a client certificate.
pub fn tls_client_config(ca: &Path, client: Option<(&Path, &Path)>) -> ClientConfig {
    tls_client_config_versions(ca, client, rustls::DEFAULT_VERSIONS)
}

/// [`tls_client_config`] offering only the given TLS versions (e.g. `&[&rustls::version::TLS12]`).
pub fn tls_client_config_versions(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> ClientConfig {
    super::init_crypto();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    }
}

/// tokio-postgres settings for host "localhost" (the name TLS verifies) at 127.0.0.1:`port`.
pub fn pg_config(
    port: u16,
    user: &str,
    password: Option<&str>,
    db: &str,
) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("localhost")
        .hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .port(port)
        .user(user)
        .dbname(db)
        .application_name("pgmoat-tests")
        .connect_timeout(Duration::from_secs(10));
    if let Some(password) = password {
        config.password(password);
    }
    config
}

/// Connects with TLS (required, verified by `tls`) or, with `None`, in plain text.
/// The connection task is spawned on the current runtime.
pub async fn connect(
    port: u16,
    user: &str,
    password: Option<&str>,
    db: &str,
    tls: Option<ClientConfig>,
) -> Result<Client, tokio_postgres::Error> {
    connect_config(pg_config(port, user, password, db), tls).await
}

/// [`connect`] for a hand-tuned config (e.g. `ssl_negotiation(Direct)`); sets `ssl_mode`.
pub async fn connect_config(
    mut config: tokio_postgres::Config,
    tls: Option<ClientConfig>,
) -> Result<Client, tokio_postgres::Error> {
    match tls {
        Some(tls) => {
            config.ssl_mode(SslMode::Require);
            let (client, connection) = config.connect(MakeRustlsConnect::new(tls)).await?;
            tokio::spawn(connection);
            Ok(client)
        }
        None => {
            config.ssl_mode(SslMode::Disable);
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(connection);
            Ok(client)
        }
    }
}

/// A libpq conninfo for host "localhost" at 127.0.0.1:`port`, plus `extra` key/values
/// (sslmode, sslrootcert, sslcert, sslkey, password...).
pub fn conninfo(port: u16, user: &str, db: &str, extra: &[(&str, &str)]) -> String {
    let mut parts = vec![
        "host=localhost".to_owned(),
        "hostaddr=127.0.0.1".to_owned(),
        format!("port={port}"),
        format!("user={}", conninfo_value(user)),
        format!("dbname={}", conninfo_value(db)),
    ];
    parts.extend(
        extra
            .iter()
            .map(|(k, v)| format!("{k}={}", conninfo_value(v))),
    );
    parts.join(" ")
}

/// A libpq conninfo for `user` (with its harness password) through pgmoat at `port`,
/// verify-full against the test CA: what the psql, pgbench and Python driver tests use.
pub fn verified_conninfo(port: u16, pki: &super::Pki, user: &str, db: &str) -> String {
    let mut extra = vec![
        ("sslmode", "verify-full"),
        ("sslrootcert", pki.ca.to_str().unwrap()),
    ];
    if let Some(password) = super::password_of(user) {
        extra.push(("password", password));
    }
    conninfo(port, user, db, &extra)
}

/// The JSON object a driver script prints as its last line of stdout; panics with all of
/// its output when there is none.
pub fn last_json_line(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{}", output_text(output)))
}

fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Runs psql (no ~/.psqlrc) with `args` then `conninfo` as its database argument.
pub fn psql(args: &[&str], conninfo: &str) -> Output {
    libpq_tool("psql", &["-X"], args, conninfo)
}

/// Runs pgbench with `args` then `conninfo` as its database argument.
pub fn pgbench(args: &[&str], conninfo: &str) -> Output {
    libpq_tool("pgbench", &[], args, conninfo)
}

/// [`psql`] with extra environment variables (e.g. `PGPASSWORD`), set after the cleanup.
pub fn psql_env(args: &[&str], conninfo: &str, env: &[(&str, &str)]) -> Output {
    libpq_tool_env("psql", &["-X"], args, conninfo, env)
}

fn libpq_tool(program: &str, fixed: &[&str], args: &[&str], conninfo: &str) -> Output {
    libpq_tool_env(program, fixed, args, conninfo, &[])
}

/// A 10 s connect timeout, and none of the caller's PGSSLMODE, PGHOST, PGPORT, PGUSER,
/// PGPASSWORD or PGDATABASE, for a command that runs a libpq client.
pub fn libpq_clean_env(cmd: &mut Command) -> &mut Command {
    cmd.env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSSLMODE")
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGUSER")
        .env_remove("PGPASSWORD")
        .env_remove("PGDATABASE")
}

fn libpq_tool_env(
    program: &str,
    fixed: &[&str],
    args: &[&str],
    conninfo: &str,
    env: &[(&str, &str)],
) -> Output {
    let path = pgmoat::pgcluster::client_program(program);
    let mut cmd = Command::new(&path);
    cmd.args(fixed).args(args).arg(conninfo);
    // Keep the caller's environment from steering libpq (a stray PGSSLMODE, say).
    libpq_clean_env(&mut cmd)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()))
}

/// stdout and stderr of a finished process, for assertion messages.
pub fn output_text(output: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
