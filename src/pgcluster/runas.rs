//! Who runs initdb and pg_ctl. Both refuse to run as root, so under root (containers, CI) they
//! run as the `postgres` system user, and the files they need are handed over to it.

use std::os::unix::fs::{MetadataExt, chown};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use super::PgClusterError;

/// The user PostgreSQL's own processes run as: ourselves, or the `postgres` account under root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerUser {
    Current,
    System { uid: u32, gid: u32 },
}

impl ServerUser {
    pub(crate) fn detect() -> Result<ServerUser, PgClusterError> {
        // /proc/<pid> is owned by the process's effective uid: no libc call needed.
        let euid = std::fs::metadata("/proc/self")
            .map_err(|source| PgClusterError::io("reading /proc/self", source))?
            .uid();
        if euid != 0 {
            return Ok(ServerUser::Current);
        }
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        if let Some((uid, gid)) = postgres_in_passwd(&passwd) {
            return Ok(ServerUser::System { uid, gid });
        }
        match std::fs::metadata("/var/lib/postgresql") {
            Ok(meta) if meta.uid() != 0 => Ok(ServerUser::System {
                uid: meta.uid(),
                gid: meta.gid(),
            }),
            _ => Err(PgClusterError::NoPostgresUser),
        }
    }

    /// Makes `cmd` run as this user.
    pub(crate) fn apply(self, cmd: &mut Command) {
        if let ServerUser::System { uid, gid } = self {
            // std drops root's supplementary groups itself when uid is set.
            cmd.uid(uid).gid(gid);
        }
    }

    /// Hands `path` over to this user (a no-op when we already are it).
    pub(crate) fn give(self, path: &Path) -> Result<(), PgClusterError> {
        if let ServerUser::System { uid, gid } = self {
            chown(path, Some(uid), Some(gid)).map_err(|source| {
                PgClusterError::io(format!("chown {}", path.display()), source)
            })?;
        }
        Ok(())
    }
}

/// uid and gid of `postgres` from passwd-format text.
fn postgres_in_passwd(passwd: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != "postgres" {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_postgres_among_other_accounts() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgresql-ish:x:7:7::/:/bin/false\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(postgres_in_passwd(passwd), Some((101, 104)));
    }

    #[test]
    fn no_postgres_account() {
        assert_eq!(
            postgres_in_passwd("root:x:0:0::/root:/bin/sh\npostgres:x:bad"),
            None
        );
    }
}
