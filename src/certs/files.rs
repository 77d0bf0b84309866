//! Crash-safe writes for keys and certificates: a temp file in the same directory, created
//! 0600, chmod'ed to its final mode, fsync'ed and renamed into place, so a reader (a SIGHUP
//! reload, PostgreSQL) never sees a half-written or briefly world-readable key.

use std::fs::{self, File, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::CertsError;

pub(crate) const KEY_MODE: u32 = 0o600;
pub(crate) const CERT_MODE: u32 = 0o644;

/// Refuses up front when any output exists and `force` is off, so a refused run writes
/// nothing at all rather than half a set of files.
pub(crate) fn ensure_absent(paths: &[&Path], force: bool) -> Result<(), CertsError> {
    if force {
        return Ok(());
    }
    for path in paths {
        // symlink_metadata: a dangling symlink still counts as "something is there".
        match fs::symlink_metadata(path) {
            Ok(_) => {
                return Err(CertsError::AlreadyExists {
                    path: path.to_path_buf(),
                });
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(CertsError::io(path, e)),
        }
    }
    Ok(())
}

pub(crate) fn ensure_dir(dir: &Path) -> Result<(), CertsError> {
    fs::create_dir_all(dir).map_err(|e| CertsError::io(dir, e))
}

/// Writes `contents` to `path` with exactly `mode` (umask does not apply). Without `force`
/// an existing `path` is never replaced, even if it appeared after [`ensure_absent`].
pub(crate) fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    force: bool,
) -> Result<(), CertsError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Created 0600 whatever the final mode: key bytes are never readable by others, even
    // for the instant before the chmod.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{stem}."))
        .suffix(".tmp")
        .permissions(Permissions::from_mode(KEY_MODE))
        .tempfile_in(dir)
        .map_err(|e| CertsError::io(dir, e))?;
    let file = tmp.as_file_mut();
    file.write_all(contents)
        .and_then(|()| file.set_permissions(Permissions::from_mode(mode)))
        .and_then(|()| file.sync_all())
        .map_err(|e| CertsError::io(path, e))?;
    let persisted = if force {
        tmp.persist(path)
    } else {
        tmp.persist_noclobber(path)
    };
    persisted.map_err(|e| {
        if e.error.kind() == ErrorKind::AlreadyExists {
            CertsError::AlreadyExists {
                path: path.to_path_buf(),
            }
        } else {
            CertsError::io(path, e.error)
        }
    })?;
    // The rename is only durable once the directory entry is on disk.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CertsError::io(dir, e))
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, CertsError> {
    fs::read_to_string(path).map_err(|e| CertsError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn writes_exact_mode_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("a.key");
        write_atomic(&key, b"one", KEY_MODE, false).unwrap();
        assert_eq!(mode(&key), 0o600);
        let crt = dir.path().join("a.crt");
        write_atomic(&crt, b"c", CERT_MODE, false).unwrap();
        assert_eq!(mode(&crt), 0o644);

        let err = write_atomic(&key, b"two", KEY_MODE, false).unwrap_err();
        assert!(matches!(err, CertsError::AlreadyExists { .. }), "{err}");
        assert!(err.to_string().contains("--force"));
        assert_eq!(fs::read(&key).unwrap(), b"one");

        write_atomic(&key, b"two", KEY_MODE, true).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"two");
        assert_eq!(mode(&key), 0o600);
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn ensure_absent_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.key");
        ensure_absent(&[&p], false).unwrap();
        fs::write(&p, b"k").unwrap();
        let err = ensure_absent(&[&p], false).unwrap_err();
        assert!(err.to_string().contains("x.key"));
        ensure_absent(&[&p], true).unwrap();
    }
}
