//! The pinned Python venv at target/driver-venv (tests/drivers/requirements.txt, made by
//! tests/drivers/make-venv.sh; .ci/run makes it before the tests): the drivers, and
//! prometheus-client whose parser reads /metrics.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::output_text;

/// The venv's python, creating the venv if needed; fails the test, saying why, when it cannot
/// be made (no python3 with venv, or PyPI out of reach).
pub fn venv_python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join("driver-venv");
    let lock = root.join("target").join("driver-venv.lock");
    let script = root.join("tests").join("drivers").join("make-venv.sh");
    std::fs::create_dir_all(root.join("target")).unwrap();
    // flock: the test binaries run in parallel and must not build the venv twice at once.
    let made = Command::new("flock")
        .arg(&lock)
        .arg("bash")
        .arg(&script)
        .arg(&venv)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running flock for {}: {e}", script.display()));
    assert!(
        made.status.success(),
        "could not create the Python venv at {} (needs python3 with venv and PyPI access):\n{}",
        venv.display(),
        output_text(&made)
    );
    venv.join("bin").join("python")
}

/// Logs in with psycopg 3 (tests/drivers/psycopg_login.py) and returns its one line:
/// `user=NAME`, or `refused: MESSAGE`.
pub fn psycopg_login(conninfo: &str) -> String {
    let python = venv_python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("drivers")
        .join("psycopg_login.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script).arg(conninfo);
    let out = super::libpq_clean_env(&mut cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "psycopg_login.py failed:\n{}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
