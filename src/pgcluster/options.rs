//! What a cluster is asked for (options, roles) and what can go wrong starting or driving it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use super::default_hba;

#[derive(Debug, thiserror::Error)]
pub enum PgClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install them with \
         `apt-get install -y postgresql` or set PG_BINDIR{detail}"
    )]
    BinariesNotFound { detail: String },
    #[error(
        "running as root, but there is no `postgres` system user to run PostgreSQL as \
         (initdb refuses root): `apt-get install -y postgresql` creates it"
    )]
    NoPostgresUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} failed ({status}): {output}")]
    Command {
        program: String,
        status: ExitStatus,
        output: String,
    },
    #[error("PostgreSQL did not start: {reason}\n--- server log tail ---\n{log_tail}")]
    StartFailed { reason: String, log_tail: String },
    #[error("psql on database {db:?} failed: {stderr}")]
    Psql { db: String, stderr: String },
    #[error("PostgreSQL did not log a configuration reload within {0:?}")]
    ReloadTimeout(Duration),
    #[error(
        "waited {timeout:?} for {what}; last seen: {last}\n--- server log tail ---\n{log_tail}"
    )]
    WaitTimeout {
        what: String,
        timeout: Duration,
        last: String,
        log_tail: String,
    },
}

impl PgClusterError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        PgClusterError::Io {
            what: what.into(),
            source,
        }
    }
}

/// A login role to create. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUser {
    pub name: String,
    pub password: Option<String>,
    pub superuser: bool,
}

impl PgUser {
    pub fn with_password(name: &str, password: &str) -> PgUser {
        PgUser {
            name: name.to_owned(),
            password: Some(password.to_owned()),
            superuser: false,
        }
    }

    /// A role that can only log in by a method that needs no password (cert, trust).
    pub fn without_password(name: &str) -> PgUser {
        PgUser {
            name: name.to_owned(),
            password: None,
            superuser: false,
        }
    }
}

impl fmt::Debug for PgUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgUser")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("superuser", &self.superuser)
            .finish()
    }
}

pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1";

#[derive(Debug, Clone)]
pub struct PgClusterOptions {
    /// PEM files; copied into the data dir, so the originals may go away.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// CA that client certificates must chain to (`ssl_ca_file`).
    pub ca_cert: PathBuf,
    /// pg_hba.conf lines; `local all postgres trust` and `local replication postgres trust`
    /// always come first (see [`default_hba`]).
    pub hba: Vec<String>,
    /// Extra postgresql.conf settings as (name, unquoted value); they override the defaults.
    /// A primary for synchronous replication needs `synchronous_commit = on` here (the
    /// default is off) and `synchronous_standby_names`, e.g. `*` for any standby.
    pub settings: Vec<(String, String)>,
    /// The one address to listen on (`listen_addresses`); any of 127/8 works on Linux, so
    /// two clusters can differ by host as well as port. Default 127.0.0.1.
    pub listen: String,
    pub users: Vec<PgUser>,
    /// Databases owned by postgres, CONNECT granted to PUBLIC.
    pub databases: Vec<String>,
    /// Leave the directory (data, logs) behind after drop; the server is stopped either way.
    pub keep: bool,
}

impl PgClusterOptions {
    pub fn new(server_cert: &Path, server_key: &Path, ca_cert: &Path) -> PgClusterOptions {
        PgClusterOptions {
            server_cert: server_cert.to_owned(),
            server_key: server_key.to_owned(),
            ca_cert: ca_cert.to_owned(),
            hba: default_hba(),
            settings: Vec::new(),
            listen: DEFAULT_LISTEN.to_owned(),
            users: Vec::new(),
            databases: Vec::new(),
            keep: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_debug_hides_the_password() {
        let shown = format!("{:?}", PgUser::with_password("alice", "alice-secret"));
        assert!(shown.contains("alice"));
        assert!(!shown.contains("alice-secret"), "{shown}");
    }

    #[test]
    fn default_options_use_the_default_hba() {
        let opts = PgClusterOptions::new(Path::new("a"), Path::new("b"), Path::new("c"));
        assert_eq!(opts.hba, default_hba());
        assert_eq!(opts.listen, "127.0.0.1");
        assert!(!opts.keep);
    }
}
