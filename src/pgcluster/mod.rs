//! A throwaway PostgreSQL cluster for the demo and the integration tests: initdb into a temp
//! dir under /tmp, TLS on, a free port on 127.0.0.1 (or another loopback address), roles and
//! databases created, and stopped and deleted on drop. Works as root by running the server as
//! the `postgres` system user. [`PgCluster::start_standby`] makes a streaming standby of one.

mod bindir;
mod conf;
mod options;
mod replica;
mod runas;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub use bindir::{client_program, find_bindir};
pub use conf::default_hba;
pub use options::{PgClusterError, PgClusterOptions, PgUser};
pub use replica::StandbyOptions;
use runas::ServerUser;

/// Names of the TLS files inside the data dir (relative paths resolve against it).
const SERVER_CERT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";
const SERVER_CA: &str = "root.crt";
const LOG_FILE: &str = "server.log";
/// Another process can grab the port between our probe and the server's bind.
const START_ATTEMPTS: usize = 5;
const PG_CTL_TIMEOUT_SECS: &str = "60";
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// A running PostgreSQL. Dropping it stops the server (immediate mode) and removes its files.
#[derive(Debug)]
pub struct PgCluster {
    dir: TempDir,
    data: PathBuf,
    log: PathBuf,
    bindir: PathBuf,
    user: ServerUser,
    port: u16,
    /// `listen_addresses`: one address, which [`host`](Self::host) returns.
    listen: String,
    /// How it follows a primary if it is (or is rebuilt as) a standby.
    standby: replica::StandbyConf,
}

impl PgCluster {
    pub fn start(opts: PgClusterOptions) -> Result<PgCluster, PgClusterError> {
        let mut cluster = PgCluster::unstarted(
            find_bindir()?,
            ServerUser::detect()?,
            &opts.listen,
            opts.keep,
        )?;
        cluster.initdb()?;
        cluster.install_server_cert(&opts.server_cert, &opts.server_key)?;
        cluster.install_file(&opts.ca_cert, SERVER_CA, 0o644)?;
        cluster.set_hba(&opts.hba)?;
        let socket_dir = cluster.dir.path().to_owned();
        let listen = cluster.listen.clone();
        cluster.start_on_free_port(|port| {
            conf::auto_conf(&listen, port, &socket_dir, &opts.settings)
        })?;
        cluster.create_objects(&opts)?;
        Ok(cluster)
    }

    /// A fresh temp dir and the struct around it; nothing in the dir yet, no port.
    fn unstarted(
        bindir: PathBuf,
        user: ServerUser,
        listen: &str,
        keep: bool,
    ) -> Result<PgCluster, PgClusterError> {
        // Directly under /tmp: the socket path must stay short, and every parent must be
        // traversable by the postgres user (so not TMPDIR under /root).
        let mut dir = tempfile::Builder::new()
            .prefix("pgmoat-pg-")
            .tempdir_in("/tmp")
            .map_err(|e| PgClusterError::io("creating a temp dir in /tmp", e))?;
        dir.disable_cleanup(keep);
        user.give(dir.path())?;
        Ok(PgCluster {
            data: dir.path().join("data"),
            log: dir.path().join(LOG_FILE),
            dir,
            bindir,
            user,
            port: 0,
            listen: listen.to_owned(),
            standby: replica::StandbyConf::default(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address it listens on (`PgClusterOptions::listen`, `StandbyOptions::listen`).
    pub fn host(&self) -> &str {
        &self.listen
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// A libpq conninfo for the superuser over the Unix socket (no password, no TLS).
    pub fn admin_conninfo(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// Runs SQL as the superuser over the Unix socket; returns psql's unaligned, tuples-only
    /// output, trimmed. The SQL goes through stdin, so it never shows in the process list.
    /// Its commits never wait for a synchronous standby (`synchronous_commit = local`).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, PgClusterError> {
        let output = self.psql_output(db, sql)?;
        if !output.status.success() {
            return Err(PgClusterError::Psql {
                db: db.to_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Fast-restarts the server on the same port, waiting until it accepts connections.
    pub fn restart(&self) -> Result<(), PgClusterError> {
        self.pg_ctl_start_like("restart")
    }

    /// Stops the server (fast mode: sessions are ended, no waiting for clients).
    pub fn stop(&self) -> Result<(), PgClusterError> {
        let mut cmd = self.pg_ctl();
        cmd.args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-m", "fast", "stop"]);
        run(cmd, "pg_ctl stop").map(drop)
    }

    /// Starts a server that [`stop`](Self::stop) stopped, on the same port.
    pub fn start_again(&self) -> Result<(), PgClusterError> {
        self.pg_ctl_start_like("start")
    }

    /// Re-reads configuration, pg_hba.conf and the TLS files, and returns once the server has
    /// logged that it is doing so (the postmaster finishes the reload before its next accept).
    pub fn reload(&self) -> Result<(), PgClusterError> {
        const NEEDLE: &str = "received SIGHUP, reloading configuration files";
        let before = self.read_log().matches(NEEDLE).count();
        let mut cmd = self.pg_ctl();
        cmd.arg("reload");
        run(cmd, "pg_ctl reload")?;
        let deadline = Instant::now() + RELOAD_WAIT;
        while self.read_log().matches(NEEDLE).count() <= before {
            if Instant::now() > deadline {
                return Err(PgClusterError::ReloadTimeout(RELOAD_WAIT));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Replaces pg_hba.conf; takes effect on [`reload`](Self::reload) or restart.
    pub fn set_hba(&self, lines: &[String]) -> Result<(), PgClusterError> {
        self.write_data_file("pg_hba.conf", conf::hba_file(lines).as_bytes(), 0o600)
    }

    /// Replaces the server's certificate and key; takes effect on reload or restart.
    pub fn install_server_cert(&self, cert: &Path, key: &Path) -> Result<(), PgClusterError> {
        self.install_file(cert, SERVER_CERT, 0o644)?;
        // PostgreSQL refuses a key that group or others may read.
        self.install_file(key, SERVER_KEY, 0o600)
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.read_log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn read_log(&self) -> String {
        fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    fn initdb(&self) -> Result<(), PgClusterError> {
        let mut cmd = self.server_command("initdb");
        cmd.arg("-D").arg(&self.data);
        cmd.args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-N",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        run(cmd, "initdb").map(drop)
    }

    /// Writes postgresql.auto.conf as `auto_conf(port)` says and starts, on another free port
    /// when the one probed was taken in the meantime.
    fn start_on_free_port(
        &mut self,
        auto_conf: impl Fn(u16) -> String,
    ) -> Result<(), PgClusterError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port(&self.listen)?;
            let text = auto_conf(port);
            self.write_data_file("postgresql.auto.conf", text.as_bytes(), 0o600)?;
            let log_before = self.read_log().len();
            match self.pg_ctl_start_like("start") {
                Ok(()) => {
                    self.port = port;
                    return Ok(());
                }
                Err(err) => {
                    let new_log = self.read_log().get(log_before..).unwrap_or("").to_owned();
                    let port_taken = new_log.contains("Address already in use");
                    if !port_taken || attempt >= START_ATTEMPTS {
                        return Err(err);
                    }
                }
            }
        }
    }

    fn pg_ctl_start_like(&self, action: &str) -> Result<(), PgClusterError> {
        let mut cmd = self.pg_ctl();
        cmd.args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-l"])
            .arg(&self.log);
        if action == "restart" {
            cmd.args(["-m", "fast"]);
        }
        cmd.arg(action);
        run(cmd, &format!("pg_ctl {action}"))
            .map(drop)
            .map_err(|err| PgClusterError::StartFailed {
                reason: err.to_string(),
                log_tail: self.log_tail(30),
            })
    }

    fn create_objects(&self, opts: &PgClusterOptions) -> Result<(), PgClusterError> {
        if !opts.users.is_empty() {
            // A failed statement would otherwise be echoed into the server log with the
            // role's SCRAM verifier in it.
            let mut sql = String::from("SET log_min_error_statement = panic;\n");
            for user in &opts.users {
                sql.push_str(&conf::create_role(user));
                sql.push('\n');
            }
            self.psql("postgres", &sql).map_err(|err| match err {
                PgClusterError::Psql { db, stderr } => PgClusterError::Psql {
                    db,
                    stderr: redact_verifiers(&stderr),
                },
                other => other,
            })?;
        }
        for db in &opts.databases {
            self.psql("postgres", &conf::create_database(db))?;
        }
        Ok(())
    }

    fn psql_output(&self, db: &str, sql: &str) -> Result<Output, PgClusterError> {
        let mut cmd = Command::new(client_program("psql"));
        cmd.args([
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "-",
            "-U",
            "postgres",
        ])
        .arg("-h")
        .arg(self.socket_dir())
        .arg("-p")
        .arg(self.port.to_string())
        .arg("-d")
        .arg(db)
        .env("PGCONNECT_TIMEOUT", "10")
        // Never wait for a synchronous standby: on a primary set up for one, creating the
        // roles would hang until the standby exists, and any admin write once it is gone.
        .env("PGOPTIONS", "-c synchronous_commit=local")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| PgClusterError::io("starting psql", e))?;
        if let Some(mut stdin) = child.stdin.take() {
            // Fed from a thread: psql may fill its output pipe before reading all input.
            let sql = sql.to_owned();
            std::thread::spawn(move || {
                let _ = stdin.write_all(sql.as_bytes());
            });
        }
        child
            .wait_with_output()
            .map_err(|e| PgClusterError::io("waiting for psql", e))
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D").arg(&self.data);
        cmd
    }

    fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        // The postgres user may not be able to enter our working directory.
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        self.user.apply(&mut cmd);
        cmd
    }

    /// Copies `src` into the data dir as `name`, readable by the server user only for keys.
    fn install_file(&self, src: &Path, name: &str, mode: u32) -> Result<(), PgClusterError> {
        let bytes = fs::read(src)
            .map_err(|e| PgClusterError::io(format!("reading {}", src.display()), e))?;
        self.write_data_file(name, &bytes, mode)
    }

    fn write_data_file(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), PgClusterError> {
        let path = self.data.join(name);
        let what = || format!("writing {}", path.display());
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| PgClusterError::io(what(), e))?;
        file.write_all(bytes)
            .map_err(|e| PgClusterError::io(what(), e))?;
        // `mode` applies only to new files; an existing one keeps its old bits otherwise.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(|e| PgClusterError::io(what(), e))?;
        self.user.give(&path)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate mode: nothing worth a clean shutdown, and tests may still hold sessions.
        let mut cmd = self.pg_ctl();
        cmd.args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Already stopped (stop() was called, or start failed) is fine.
        let _ = cmd.status();
    }
}

/// A port free on `listen` (probed there: 127.0.0.2 and 127.0.0.1 are different sockets).
fn free_port(listen: &str) -> Result<u16, PgClusterError> {
    let ip: IpAddr = listen.parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let listener =
        TcpListener::bind((ip, 0)).map_err(|e| PgClusterError::io("finding a free port", e))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|e| PgClusterError::io("finding a free port", e))
}

fn run(mut cmd: Command, program: &str) -> Result<Output, PgClusterError> {
    let output = cmd
        .output()
        .map_err(|e| PgClusterError::io(format!("running {program}"), e))?;
    if output.status.success() {
        return Ok(output);
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Err(PgClusterError::Command {
        program: program.to_owned(),
        status: output.status,
        output: text.trim().to_owned(),
    })
}

/// Drops any line that would show a SCRAM verifier (psql echoes a failing statement).
fn redact_verifiers(text: &str) -> String {
    text.lines()
        .filter(|line| !line.contains("SCRAM-SHA-256$"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_lines_are_redacted() {
        let stderr = "psql:<stdin>:2: ERROR:  boom\nLINE 1: CREATE ROLE \"a\" LOGIN PASSWORD 'SCRAM-SHA-256$4096:x'";
        assert_eq!(redact_verifiers(stderr), "psql:<stdin>:2: ERROR:  boom");
    }
}
