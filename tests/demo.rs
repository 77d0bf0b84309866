//! `pgmoat demo` as a user runs it: the built binary prints a psql line, that line works as
//! printed (verify-full TLS with a client certificate, `ssl = t` on the PostgreSQL backend),
//! and Ctrl-C stops pgmoat and its throwaway PostgreSQL and removes the demo's files.
//!
//! `PGMOAT_DEMO_BIN` names another pgmoat executable to run instead of the one cargo built for
//! the tests: CI points it at the statically linked build (deploy/build-static.sh).

mod support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{free_port, libpq_clean_env, output_text, send_signal, wait_child_exit};

/// initdb, certificates and the server start, on a busy machine.
const STARTUP: Duration = Duration::from_secs(120);
const SHUTDOWN: Duration = Duration::from_secs(60);

/// The demo process. Dropping it (say, when an assertion failed) stops it the way a user
/// would, so its PostgreSQL does not outlive the test; SIGKILL only as a last resort.
struct Demo {
    child: Child,
    stderr_path: PathBuf,
    _stderr_dir: tempfile::TempDir,
}

impl Demo {
    fn spawn(port: u16) -> (Demo, mpsc::Receiver<String>) {
        let stderr_dir = tempfile::Builder::new()
            .prefix("pgmoat-demo-test-")
            .tempdir()
            .unwrap();
        let stderr_path = stderr_dir.path().join("stderr.log");
        let bin = std::env::var_os("PGMOAT_DEMO_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pgmoat")));
        let mut child = Command::new(bin)
            .args(["demo", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let demo = Demo {
            child,
            stderr_path,
            _stderr_dir: stderr_dir,
        };
        (demo, rx)
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Ctrl-C, as the demo tells its user to press.
    fn interrupt(&self) {
        send_signal(self.child.id(), "INT");
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child_exit(&mut self.child, timeout)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.interrupt();
            if self.wait_exit(SHUTDOWN).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("--- pgmoat demo stderr ---\n{}", self.stderr());
        }
    }
}

/// The demo's stdout up to its last line before serving ("Press Ctrl-C ..."); panics with what
/// it printed if it exits or stalls first.
fn read_banner(demo: &mut Demo, lines: &mpsc::Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + STARTUP;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                let done = line.starts_with("Press Ctrl-C to stop");
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                if let Some(status) = demo.child.try_wait().unwrap() {
                    panic!(
                        "pgmoat demo exited ({status}) before serving\n--- stdout ---\n{}\n\
                         --- stderr ---\n{}",
                        seen.join("\n"),
                        demo.stderr()
                    );
                }
            }
            Err(_) => panic!(
                "pgmoat demo printed no \"Press Ctrl-C\" line within {STARTUP:?}\n\
                 --- stdout ---\n{}\n--- stderr ---\n{}",
                seen.join("\n"),
                demo.stderr()
            ),
        }
    }
}

/// The text between `prefix` and `suffix` on the first line that has both.
fn between<'a>(lines: &'a [String], prefix: &str, suffix: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| {
            let start = l.find(prefix)? + prefix.len();
            let len = l[start..].find(suffix)?;
            Some(&l[start..start + len])
        })
        .unwrap_or_else(|| panic!("no line with {prefix:?}...{suffix:?} in {lines:#?}"))
}

/// The demo's PostgreSQL, found by its port in the postmaster.pid of pgcluster's temp dirs:
/// (postmaster pid, the cluster's temp dir).
fn find_postmaster(pg_port: u16) -> (u32, PathBuf) {
    for entry in fs::read_dir("/tmp").unwrap().flatten() {
        let dir = entry.path();
        let is_cluster = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("pgmoat-pg-"));
        if !is_cluster {
            continue;
        }
        // Lines: pid, data dir, start time, port, socket dir, ...
        let Ok(text) = fs::read_to_string(dir.join("data/postmaster.pid")) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        if lines.get(3).and_then(|p| p.trim().parse::<u16>().ok()) == Some(pg_port) {
            let pid = lines[0].trim().parse().unwrap();
            return (pid, dir);
        }
    }
    panic!("no /tmp/pgmoat-pg-*/data/postmaster.pid names port {pg_port}");
}

/// The process exists and is not a zombie (the postmaster is not our child: whoever reaps it,
/// a zombie has stopped serving).
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the parenthesised command name: state first.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn accepts_tcp(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Runs `line` with a shell, as a user pastes it, with the directory of the psql the tests use
/// first on PATH (it may live only under /usr/lib/postgresql/*/bin).
fn run_shell_line(line: &str) -> std::process::Output {
    let psql = pgmoat::pgcluster::client_program("psql");
    let mut path = psql
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
        .into_os_string();
    if let Some(old) = std::env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    let mut sh = Command::new("sh");
    sh.args(["-c", line]).env("PATH", path);
    // Only what the printed line says may steer libpq.
    libpq_clean_env(&mut sh)
        .env_remove("PGSSLROOTCERT")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn demo_prints_a_psql_line_that_reaches_postgresql_over_tls_and_ctrl_c_cleans_up() {
    let port = free_port();
    let (mut demo, lines) = Demo::spawn(port);
    let banner = read_banner(&mut demo, &lines);

    let psql_line = banner
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("psql "))
        .unwrap_or_else(|| panic!("the demo printed no psql line: {banner:#?}"))
        .to_owned();
    for part in [
        &format!("port={port}"),
        "sslmode=verify-full",
        "sslrootcert=",
        "sslcert=",
        "sslkey=",
    ] {
        assert!(psql_line.contains(part), "{part:?} missing: {psql_line}");
    }
    let pg_port: u16 = between(&banner, "in front of PostgreSQL on 127.0.0.1:", ".")
        .parse()
        .unwrap();
    let demo_dir = PathBuf::from(between(&banner, "(everything in ", " is removed)"));
    assert!(demo_dir.is_dir(), "{}", demo_dir.display());
    let (postmaster, cluster_dir) = find_postmaster(pg_port);
    assert!(process_alive(postmaster));

    // The line exactly as printed, with a query appended the way a user would.
    let query = format!(
        "{psql_line} -X -A -t -c \"SELECT ssl, current_user, client_dn FROM pg_stat_ssl \
         WHERE pid = pg_backend_pid()\""
    );
    let out = run_shell_line(&query);
    assert!(out.status.success(), "{query}\n{}", output_text(&out));
    // The backend pgmoat opened for this session is TLS, logged in by pgmoat's own client
    // certificate (CN app), which PostgreSQL's `cert` rule requires.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "t|app|/CN=app",
        "{}",
        output_text(&out)
    );

    // Ctrl-C: pgmoat stops, then its PostgreSQL, and the temp directories go.
    demo.interrupt();
    let status = demo
        .wait_exit(SHUTDOWN)
        .unwrap_or_else(|| panic!("the demo did not exit within {SHUTDOWN:?} of Ctrl-C"));
    assert!(status.success(), "the demo exited with {status}");
    assert!(!accepts_tcp(port), "pgmoat still listens on {port}");
    assert!(
        !process_alive(postmaster),
        "the demo's PostgreSQL (pid {postmaster}) outlived it"
    );
    assert!(
        !accepts_tcp(pg_port),
        "PostgreSQL still listens on {pg_port}"
    );
    assert!(
        !cluster_dir.exists(),
        "{} was left behind",
        cluster_dir.display()
    );
    assert!(!demo_dir.exists(), "{} was left behind", demo_dir.display());
}
