//! Finding the PostgreSQL server binaries: `PG_BINDIR`, else the directory `initdb` on PATH
//! really lives in, else the newest `/usr/lib/postgresql/<version>/bin` (Debian's layout).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use super::PgClusterError;

/// The binaries a cluster needs; a directory missing any of them is not a server install
/// (Debian's client-only package ships psql without initdb, for example).
const SERVER_BINARIES: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// Where Debian and Ubuntu install versioned server binaries.
const DEBIAN_LIB_ROOT: &str = "/usr/lib/postgresql";

/// Finds the server binaries from the process environment.
pub fn find_bindir() -> Result<PathBuf, PgClusterError> {
    find_bindir_in(
        std::env::var_os("PG_BINDIR").as_deref(),
        std::env::var_os("PATH").as_deref(),
        Path::new(DEBIAN_LIB_ROOT),
    )
}

/// The discovery itself, with its inputs explicit so tests need not touch the environment.
pub(crate) fn find_bindir_in(
    pg_bindir: Option<&OsStr>,
    path: Option<&OsStr>,
    lib_root: &Path,
) -> Result<PathBuf, PgClusterError> {
    // An explicit PG_BINDIR wins outright: falling back elsewhere would silently test a
    // different PostgreSQL than the one asked for.
    if let Some(dir) = pg_bindir.filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return match missing_binary(&dir) {
            None => Ok(dir),
            Some(name) => Err(PgClusterError::BinariesNotFound {
                detail: format!(" (PG_BINDIR={} has no {name})", dir.display()),
            }),
        };
    }
    if let Some(dir) = initdb_on_path(path) {
        return Ok(dir);
    }
    if let Some(dir) = newest_versioned_bindir(lib_root) {
        return Ok(dir);
    }
    Err(PgClusterError::BinariesNotFound {
        detail: String::new(),
    })
}

/// A PostgreSQL client program (psql, pgbench): the server's bindir keeps client and server
/// versions matched; otherwise whatever PATH finds.
pub fn client_program(name: &str) -> PathBuf {
    find_bindir()
        .map(|dir| dir.join(name))
        .ok()
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn missing_binary(dir: &Path) -> Option<&'static str> {
    SERVER_BINARIES
        .into_iter()
        .find(|name| !dir.join(name).is_file())
}

/// The real directory of the first `initdb` on PATH. Debian links only some tools into
/// /usr/local/bin or /usr/bin, so the symlink is resolved to reach pg_ctl and postgres too.
fn initdb_on_path(path: Option<&OsStr>) -> Option<PathBuf> {
    let path: OsString = path?.to_owned();
    std::env::split_paths(&path)
        .map(|dir| dir.join("initdb"))
        .filter(|candidate| candidate.is_file())
        .filter_map(|candidate| std::fs::canonicalize(candidate).ok())
        .filter_map(|real| real.parent().map(Path::to_path_buf))
        .find(|dir| missing_binary(dir).is_none())
}

/// The highest `<lib_root>/<version>/bin` holding a server; versions compare numerically so
/// that 15 beats 9.6.
fn newest_versioned_bindir(lib_root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(lib_root).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = version_key(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            missing_binary(&bin).is_none().then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

fn version_key(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: \
        install them with `apt-get install -y postgresql` or set PG_BINDIR";

    fn fake_server(dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        for name in SERVER_BINARIES {
            fs::write(dir.join(name), "#!/bin/sh\n").unwrap();
        }
    }

    #[test]
    fn empty_pg_bindir_says_what_to_install() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_bindir_in(Some(empty.path().as_os_str()), None, empty.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(INSTALL_HINT), "{msg}");
        assert!(msg.contains("has no initdb"), "{msg}");
    }

    #[test]
    fn nothing_anywhere_gives_the_bare_install_hint() {
        let empty = tempfile::tempdir().unwrap();
        let path = empty.path().join("nobin");
        let err = find_bindir_in(None, Some(path.as_os_str()), empty.path()).unwrap_err();
        assert_eq!(err.to_string(), INSTALL_HINT);
    }

    #[test]
    fn pg_bindir_is_not_silently_replaced_by_path() {
        let tmp = tempfile::tempdir().unwrap();
        let good = tmp.path().join("good");
        fake_server(&good);
        let bad = tmp.path().join("bad");
        fs::create_dir_all(&bad).unwrap();
        fs::write(bad.join("initdb"), "").unwrap();
        let err =
            find_bindir_in(Some(bad.as_os_str()), Some(good.as_os_str()), tmp.path()).unwrap_err();
        assert!(err.to_string().contains("has no pg_ctl"), "{err}");
    }

    #[test]
    fn initdb_symlink_on_path_resolves_to_the_real_bindir() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("lib/15/bin");
        fake_server(&real);
        let links = tmp.path().join("localbin");
        fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(real.join("initdb"), links.join("initdb")).unwrap();
        let path = std::env::join_paths([tmp.path().join("missing"), links]).unwrap();
        let found = find_bindir_in(None, Some(&path), &tmp.path().join("none")).unwrap();
        assert_eq!(found, fs::canonicalize(real).unwrap());
    }

    #[test]
    fn newest_version_wins_numerically() {
        let tmp = tempfile::tempdir().unwrap();
        for version in ["9.6", "15", "13"] {
            fake_server(&tmp.path().join(version).join("bin"));
        }
        // A newer directory without a server (client-only install) is skipped.
        fs::create_dir_all(tmp.path().join("17/bin")).unwrap();
        let found = find_bindir_in(None, None, tmp.path()).unwrap();
        assert_eq!(found, tmp.path().join("15/bin"));
    }
}
