//! The docker-compose.yml topology without Docker: the same certs script, pg_hba.conf, init SQL,
//! pgmoat config and app script from deploy/, wired together on loopback. Only what Docker
//! itself provides changes: host names (localhost instead of service names), ports, and file
//! ownership (the script's chown is for container users).

mod support;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgmoat::certs::certinfo::{CertInfo, read_pem_file};
use pgmoat::pgcluster::{PgCluster, PgClusterOptions, client_program};
use rustls::pki_types::ServerName;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The four directories the compose file keeps in volumes, under one temp dir. pgmoat's is
/// `moat/certs`, so pgmoat started in `moat/` finds it where the image's working dir has it.
struct Volumes {
    dir: tempfile::TempDir,
}

impl Volumes {
    fn new() -> Volumes {
        Volumes {
            dir: tempfile::Builder::new()
                .prefix("pgmoat-compose-")
                .tempdir()
                .unwrap(),
        }
    }
    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca")
    }
    fn postgres(&self) -> PathBuf {
        self.dir.path().join("postgres")
    }
    fn moat(&self) -> PathBuf {
        self.dir.path().join("moat")
    }
    fn pgmoat(&self) -> PathBuf {
        self.moat().join("certs")
    }
    fn app(&self) -> PathBuf {
        self.dir.path().join("app")
    }

    /// deploy/certs/make-pki.sh with `args`, as the compose `certs` service runs it.
    fn make_pki(&self, args: &[&str]) -> Output {
        Command::new("sh")
            .arg(repo("deploy/certs/make-pki.sh"))
            .args(args)
            .env("PGMOAT", env!("CARGO_BIN_EXE_pgmoat"))
            .env("PKI_CA_DIR", self.ca())
            .env("PKI_POSTGRES_DIR", self.postgres())
            .env("PKI_PGMOAT_DIR", self.pgmoat())
            .env("PKI_APP_DIR", self.app())
            // PostgreSQL is reached as localhost here, not as the service name.
            .env("PKI_POSTGRES_SANS", "DNS:postgres,DNS:localhost")
            .env("PKI_CHOWN", "no")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// pgmoat started like the compose service: the deploy config file unchanged, working dir
/// holding certs/, and PGMOAT_* variables for what differs outside Docker.
struct Sidecar {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Sidecar {
    fn start(volumes: &Volumes, pg_port: u16) -> Sidecar {
        let port = free_port();
        let log = volumes.dir.path().join("pgmoat.log");
        let out = File::create(&log).unwrap();
        let child = pgmoat_command()
            .current_dir(volumes.moat())
            .args(["run", "--config"])
            .arg(repo("deploy/pgmoat/pgmoat.toml"))
            .env("PGMOAT_LISTEN_ADDR", "127.0.0.1")
            .env("PGMOAT_LISTEN_PORT", port.to_string())
            .env(
                "PGMOAT_DATABASES__APP",
                format!("host=localhost port={pg_port} dbname=app"),
            )
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut sidecar = Sidecar { child, port, log };
        sidecar.wait_for("pgmoat is accepting connections");
        sidecar
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log().contains(needle) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("pgmoat exited ({status})\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "pgmoat did not log {needle:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `docker compose kill -s HUP pgmoat`, then waits for the reload to be logged.
    fn sighup(&mut self) {
        let reloads = self.log().matches("configuration reloaded").count();
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches("configuration reloaded").count() == reloads {
            assert!(
                Instant::now() < deadline,
                "no reload logged\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- pgmoat log ---\n{}", self.log());
        }
    }
}

/// PostgreSQL as the compose `postgres` service configures it: the repository's pg_hba.conf
/// and init SQL, the certs job's server certificate and CA.
fn start_postgres(volumes: &Volumes) -> PgCluster {
    let pg = volumes.postgres();
    let mut opts = PgClusterOptions::new(
        &pg.join("postgres.crt"),
        &pg.join("postgres.key"),
        &pg.join("ca.crt"),
    );
    let hba = fs::read_to_string(repo("deploy/postgres/pg_hba.conf")).unwrap();
    opts.hba = hba
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    assert!(opts.hba.iter().any(|l| l.ends_with("cert")), "{hba}");
    let cluster = PgCluster::start(opts).unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"));
    let init = fs::read_to_string(repo("deploy/postgres/initdb/10-app.sql")).unwrap();
    cluster
        .psql("postgres", &init)
        .unwrap_or_else(|e| panic!("init SQL: {e}"));
    cluster
}

/// The app's DATABASE_URL from docker-compose.yml, pointed at this pgmoat and these files.
fn database_url(volumes: &Volumes, port: u16) -> String {
    let compose = fs::read_to_string(repo("docker-compose.yml")).unwrap();
    let url = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("DATABASE_URL:"))
        .expect("docker-compose.yml sets DATABASE_URL")
        .trim()
        .trim_matches('"')
        .to_owned();
    for part in [
        "@pgmoat:6432/",
        "sslmode=verify-full",
        "sslcert=/pki/app.crt",
    ] {
        assert!(url.contains(part), "{url} lacks {part}");
    }
    url.replace("@pgmoat:6432/", &format!("@localhost:{port}/"))
        .replace("/pki/", &format!("{}/", volumes.app().display()))
}

/// PATH with the PostgreSQL client tools first, for the scripts that call psql.
fn path_with_psql() -> String {
    let psql = client_program("psql");
    let dir = psql.parent().map(Path::to_path_buf).unwrap_or_default();
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The first line deploy/app/loop.sh prints, then the loop is stopped.
fn first_app_line(volumes: &Volumes, url: &str) -> String {
    let errors = volumes.dir.path().join("app.stderr");
    let mut app = Command::new("sh")
        .arg(repo("deploy/app/loop.sh"))
        .env("DATABASE_URL", url)
        .env("PATH", path_with_psql())
        .env("INTERVAL", "1")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdout(Stdio::piped())
        .stderr(File::create(&errors).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = app.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while std::io::Read::read(&mut stdout, &mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let _ = app.kill();
    let _ = app.wait();
    let line = String::from_utf8_lossy(&line).into_owned();
    assert!(
        !line.is_empty(),
        "app printed nothing: {}",
        fs::read_to_string(&errors).unwrap_or_default()
    );
    line
}

fn psql_url(url: &str, sql: &str) -> Output {
    Command::new(client_program("psql"))
        .args(["-XAtq", "-c", sql, url])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The serial of the certificate pgmoat serves right now (SSLRequest, then a TLS handshake).
async fn served_serial(port: u16, ca: &Path, client: (&Path, &Path)) -> String {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'S');
    let config = tls_client_config(ca, Some(client));
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    CertInfo::from_der(&der).unwrap().serial_hex
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn file_serial(path: &Path) -> String {
    read_pem_file(path).unwrap()[0].serial_hex.clone()
}

/// pg_stat_ssl shows serials in decimal; the cert tool's serials fit in 128 bits.
fn decimal(serial_hex: &str) -> String {
    u128::from_str_radix(serial_hex, 16).unwrap().to_string()
}

#[test]
fn certs_script_is_idempotent_and_gives_each_container_only_its_files() {
    let volumes = Volumes::new();
    let first = volumes.make_pki(&[]);
    assert!(first.status.success(), "{}", output_text(&first));
    let serial = file_serial(&volumes.pgmoat().join("pgmoat.crt"));

    let again = volumes.make_pki(&[]);
    assert!(again.status.success(), "{}", output_text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("keeping"),
        "{}",
        output_text(&again)
    );
    assert_eq!(file_serial(&volumes.pgmoat().join("pgmoat.crt")), serial);

    // The CA key never leaves the CA volume.
    let ca_key = fs::read_to_string(volumes.ca().join("ca/ca.key")).unwrap();
    let ca_key_body = ca_key.lines().nth(1).unwrap().to_owned();
    for dir in [volumes.postgres(), volumes.pgmoat(), volumes.app()] {
        for file in files_under(&dir) {
            let text = fs::read_to_string(&file).unwrap_or_default();
            assert!(
                !text.contains(&ca_key_body),
                "{} holds the CA key",
                file.display()
            );
        }
    }
    for key in [
        volumes.postgres().join("postgres.key"),
        volumes.pgmoat().join("pgmoat.key"),
        volumes.pgmoat().join("pgmoat-client.key"),
        volumes.app().join("app.key"),
        volumes.postgres().join("superuser-password"),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    let client = read_pem_file(&volumes.pgmoat().join("pgmoat-client.crt")).unwrap();
    assert_eq!(client[0].common_name.as_deref(), Some("app"));

    let check = volumes.make_pki(&["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", output_text(&check));
    let warn = volumes.make_pki(&["check", "--warn-days", "400"]);
    assert_eq!(warn.status.code(), Some(1), "{}", output_text(&warn));
    let bad = volumes.make_pki(&["renew", "nonsense"]);
    assert_eq!(bad.status.code(), Some(2), "{}", output_text(&bad));
    let bad = volumes.make_pki(&["revoke", "nonsense"]);
    assert_eq!(bad.status.code(), Some(2), "{}", output_text(&bad));

    // pgmoat's copy of the CA's CRL, which its config points at, checked with the rest.
    assert_eq!(
        fs::read(volumes.pgmoat().join("ca/ca.crl")).unwrap(),
        fs::read(volumes.ca().join("ca/ca.crl")).unwrap()
    );
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("[CRL]"),
        "{}",
        output_text(&check)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_topology_works_end_to_end_and_rotates() {
    let volumes = Volumes::new();
    let made = volumes.make_pki(&[]);
    assert!(made.status.success(), "{}", output_text(&made));
    let pg = start_postgres(&volumes);
    let mut sidecar = Sidecar::start(&volumes, pg.port());
    let url = database_url(&volumes, sidecar.port);

    // The app's own script: it reaches PostgreSQL as "app", and pgmoat's hop is TLS with
    // pgmoat's client certificate (CN=app).
    let line = first_app_line(&volumes, &url);
    assert!(line.contains(" app pgmoat->postgres: TLSv1."), "{line}");
    assert!(line.ends_with("CN=app"), "{line}");

    // What the moat refuses: a client without a certificate, and plaintext to PostgreSQL.
    let no_cert = url
        .split('&')
        .filter(|p| !p.starts_with("sslcert=") && !p.starts_with("sslkey="))
        .collect::<Vec<_>>()
        .join("&");
    let refused = psql_url(&no_cert, "select 1");
    assert!(!refused.status.success(), "{}", output_text(&refused));
    let plain = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
        pg.port()
    );
    let refused = psql_url(&plain, "select 1");
    assert!(!refused.status.success(), "{}", output_text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no pg_hba.conf entry"),
        "{}",
        output_text(&refused)
    );

    // Rotation as the README gives it: `certs renew pgmoat`, then SIGHUP.
    let ca = volumes.app().join("ca.crt");
    let app_pair = (volumes.app().join("app.crt"), volumes.app().join("app.key"));
    let client = (app_pair.0.as_path(), app_pair.1.as_path());
    let before = served_serial(sidecar.port, &ca, client).await;
    assert_eq!(before, file_serial(&volumes.pgmoat().join("pgmoat.crt")));
    let renewed = volumes.make_pki(&["renew", "pgmoat", "pgmoat-client"]);
    assert!(renewed.status.success(), "{}", output_text(&renewed));
    let after_file = file_serial(&volumes.pgmoat().join("pgmoat.crt"));
    assert_ne!(after_file, before);
    sidecar.sighup();
    assert_eq!(served_serial(sidecar.port, &ca, client).await, after_file);

    // New server connections present the renewed client certificate to PostgreSQL.
    let upstream = file_serial(&volumes.pgmoat().join("pgmoat-client.crt"));
    let seen = psql_url(
        &url,
        "select client_serial from pg_stat_ssl where pid = pg_backend_pid()",
    );
    assert!(seen.status.success(), "{}", output_text(&seen));
    assert_eq!(
        String::from_utf8_lossy(&seen.stdout).trim(),
        decimal(&upstream),
        "{}",
        sidecar.log()
    );

    // Revocation as the README gives it: `certs revoke app`, then SIGHUP: the app's
    // certificate is refused; `certs renew app` gives it one that works again.
    let revoked = volumes.make_pki(&["revoke", "app"]);
    assert!(revoked.status.success(), "{}", output_text(&revoked));
    sidecar.sighup();
    let refused = psql_url(&url, "select 1");
    assert!(
        !refused.status.success(),
        "{}\n{}",
        output_text(&refused),
        sidecar.log()
    );
    assert!(
        sidecar.log().contains("revoked by a loaded CRL"),
        "{}",
        sidecar.log()
    );
    let renewed = volumes.make_pki(&["renew", "app"]);
    assert!(renewed.status.success(), "{}", output_text(&renewed));
    let works = psql_url(&url, "select 1");
    assert!(works.status.success(), "{}", output_text(&works));
}

/// A Compose client: the `docker compose` plugin, or else the standalone `docker-compose`
/// (Debian 12's 1.29.2, which .ci/run installs when neither is there). The program and the
/// arguments before the compose subcommand.
fn compose_client() -> Option<(&'static str, &'static [&'static str])> {
    let candidates: [(&'static str, &'static [&'static str]); 2] =
        [("docker", &["compose"]), ("docker-compose", &[])];
    candidates.into_iter().find(|(program, pre)| {
        Command::new(program)
            .args(*pre)
            .arg("version")
            .output()
            .is_ok_and(|v| v.status.success())
    })
}

/// The Compose client (no Docker engine needed) accepts docker-compose.yml and sees its four
/// services. Skips only outside CI; under CI (CI=true, set by the CI runner) a missing client
/// fails, since .ci/run installs one.
#[test]
fn compose_file_passes_docker_compose_config() {
    let Some((program, pre)) = compose_client() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no `docker compose` and no `docker-compose` client: .ci/run should have installed one"
        );
        eprintln!("skipped: no `docker compose` or `docker-compose` client on this machine");
        return;
    };
    let compose = |args: &[&str]| {
        Command::new(program)
            .args(pre)
            .arg("-f")
            .arg(repo("docker-compose.yml"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = compose(&["config", "-q"]);
    assert!(out.status.success(), "{program}: {}", output_text(&out));
    let out = compose(&["config", "--services"]);
    assert!(out.status.success(), "{program}: {}", output_text(&out));
    let mut services: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    services.sort();
    assert_eq!(
        services,
        ["app", "certs", "pgmoat", "postgres"],
        "{program}"
    );
}
