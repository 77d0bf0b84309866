//! pgmoat as a real subprocess (`pgmoat run --config FILE`), so tests see exactly what an
//! operator gets: CLI, config loading, signals, exit codes and logs.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running pgmoat. Dropping it kills the process (and prints its log if the test panicked).
pub struct Pgmoat {
    child: Child,
    port: u16,
    dir: TempDir,
    config_path: PathBuf,
    log_path: PathBuf,
}

/// The pgmoat binary with the environment the tests want (debug logs).
pub fn pgmoat_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgmoat"));
    cmd.env(
        "RUST_LOG",
        std::env::var("TEST_LOG_FOR_PGMOAT").unwrap_or("debug".into()),
    )
    .stdin(Stdio::null());
    cmd
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pgmoat {
    /// Starts pgmoat listening on 127.0.0.1 at a free port (prepended to `config_toml`) and
    /// waits until the port accepts TCP; panics with the log if it exits or times out.
    pub fn start(config_toml: &str) -> Pgmoat {
        Pgmoat::start_with_env(config_toml, &[])
    }

    /// [`start`](Self::start) with extra environment variables for the pgmoat process only.
    pub fn start_with_env(config_toml: &str, env: &[(&str, &str)]) -> Pgmoat {
        Pgmoat::start_on(free_port(), config_toml, env)
    }

    /// [`start_with_env`](Self::start_with_env) on a given port (a second process on the
    /// port of a first, with so_reuseport).
    pub fn start_on(port: u16, config_toml: &str, env: &[(&str, &str)]) -> Pgmoat {
        let mut pgmoat = Pgmoat::spawn_on(port, config_toml, env);
        let addr = SocketAddr::from(([127, 0, 0, 1], pgmoat.port));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = pgmoat.child.try_wait().unwrap() {
                panic!(
                    "pgmoat exited during startup ({status})\n--- config ---\n{}\n--- log ---\n{}",
                    pgmoat.config(),
                    pgmoat.log()
                );
            }
            // The log line too: a connect to a port nobody listens on yet can succeed as a TCP
            // self-connection when the kernel picks that very port as the local one.
            if pgmoat.log().contains("pgmoat is accepting connections")
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return pgmoat;
            }
            if Instant::now() > deadline {
                panic!(
                    "pgmoat did not accept connections on {addr} within {STARTUP_TIMEOUT:?}\n\
                     --- log ---\n{}",
                    pgmoat.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs pgmoat with a config it must refuse; returns its exit status and log. Panics if it
    /// is still running after the startup timeout (i.e. it accepted the config).
    pub fn start_expect_failure(config_toml: &str) -> (ExitStatus, String) {
        let mut pgmoat = Pgmoat::spawn(config_toml, &[]);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = pgmoat.child.try_wait().unwrap() {
                return (status, pgmoat.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "pgmoat was expected to refuse this config but is still running\n\
                     --- config ---\n{}\n--- log ---\n{}",
                    pgmoat.config(),
                    pgmoat.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn(config_toml: &str, env: &[(&str, &str)]) -> Pgmoat {
        Pgmoat::spawn_on(free_port(), config_toml, env)
    }

    fn spawn_on(port: u16, config_toml: &str, env: &[(&str, &str)]) -> Pgmoat {
        let dir = tempfile::Builder::new()
            .prefix("pgmoat-run-")
            .tempdir()
            .unwrap();
        let config_path = dir.path().join("pgmoat.toml");
        let log_path = dir.path().join("pgmoat.log");
        fs::write(&config_path, with_listen(port, config_toml)).unwrap();
        let log = File::create(&log_path).unwrap();
        let child = pgmoat_command()
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Pgmoat {
            child,
            port,
            dir,
            config_path,
            log_path,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// pgmoat's peak resident memory so far in KiB (VmHWM, from /proc): a buffer that grew
    /// and was freed again still shows.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn config(&self) -> String {
        fs::read_to_string(&self.config_path).unwrap_or_default()
    }

    /// Replaces the config file (same listen address and port); follow with [`sighup`](Self::sighup).
    pub fn rewrite_config(&self, config_toml: &str) {
        let tmp = self.dir.path().join("pgmoat.toml.new");
        fs::write(&tmp, with_listen(self.port, config_toml)).unwrap();
        // Atomic, so a reload never reads half a file.
        fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Everything pgmoat wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The current length of the log: pass it to [`wait_for_log_since`](Self::wait_for_log_since)
    /// to wait for a line that appears after this point (e.g. a second reload).
    pub fn log_mark(&self) -> usize {
        self.log().len()
    }

    /// Waits until `needle` appears in the log; panics with the log on timeout.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        self.wait_for_log_since(0, needle, timeout)
    }

    pub fn wait_for_log_since(&self, mark: usize, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.get(mark..).is_some_and(|new| new.contains(needle)) {
                return;
            }
            if Instant::now() > deadline {
                panic!("pgmoat did not log {needle:?} within {timeout:?}\n--- log ---\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by name (`HUP`, `TERM`, `INT`...).
    pub fn signal(&self, name: &str) {
        send_signal(self.pid(), name);
    }

    pub fn sighup(&self) {
        self.signal("HUP");
    }

    /// SIGHUP, then waits for "configuration reloaded" after it; returns the log mark taken
    /// before the signal, for checks on what the reload logged.
    pub fn sighup_and_wait_reloaded(&self, timeout: Duration) -> usize {
        let mark = self.log_mark();
        self.sighup();
        self.wait_for_log_since(mark, "configuration reloaded", timeout);
        mark
    }

    /// Waits for the process to exit on its own (after a signal); `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child_exit(&mut self.child, timeout)
    }
}

/// Sends process `pid` a signal by name (`HUP`, `TERM`, `INT`...) with kill(1).
pub fn send_signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Waits for `child` to exit; `None` if it still runs after `timeout`.
pub fn wait_child_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Pgmoat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- pgmoat log ({}) ---\n{}",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

/// The harness owns the listen address and port; callers write everything else.
fn with_listen(port: u16, config_toml: &str) -> String {
    format!("listen_addr = \"127.0.0.1\"\nlisten_port = {port}\n{config_toml}")
}
