//! Streaming replication between throwaway clusters, for failover tests: a hot standby made
//! with pg_basebackup, promotion, and rebuilding a failed primary as a standby of the new one.
//!
//! A synchronous pair needs the primary started with `synchronous_commit = on` and
//! `synchronous_standby_names = '*'` (or the standby's application name) in
//! `PgClusterOptions::settings`: pgcluster's default is `synchronous_commit = off`, and a
//! setting given later in postgresql.auto.conf wins over an earlier one.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::options::DEFAULT_LISTEN;
use super::{PG_CTL_TIMEOUT_SECS, PgCluster, PgClusterError, SERVER_CERT, SERVER_KEY, conf, run};

const DEFAULT_APPLICATION_NAME: &str = "standby1";
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
const AUTO_CONF: &str = "postgresql.auto.conf";

/// What a standby is asked for. Everything else (roles, databases, pg_hba.conf, the CA, the
/// primary's settings) comes with the base backup.
#[derive(Debug, Clone)]
pub struct StandbyOptions {
    /// The standby's own server certificate and key (PEM), e.g. with a SAN for `listen`.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The one address to listen on. Default 127.0.0.1.
    pub listen: String,
    /// `application_name` in primary_conninfo: the name `synchronous_standby_names` and
    /// pg_stat_replication know it by. Default `standby1`.
    pub application_name: String,
    /// Extra settings, appended after everything else (so they win).
    pub settings: Vec<(String, String)>,
    /// How long to wait for the standby to stream from its primary. Default 30 s.
    pub wait_timeout: Duration,
    /// Leave the directory behind after drop, as `PgClusterOptions::keep`.
    pub keep: bool,
}

impl StandbyOptions {
    pub fn new(server_cert: &Path, server_key: &Path) -> StandbyOptions {
        StandbyOptions {
            server_cert: server_cert.to_owned(),
            server_key: server_key.to_owned(),
            listen: DEFAULT_LISTEN.to_owned(),
            application_name: DEFAULT_APPLICATION_NAME.to_owned(),
            settings: Vec::new(),
            wait_timeout: DEFAULT_WAIT,
            keep: false,
        }
    }
}

/// What a cluster keeps for (re)building itself as a standby. A cluster started as a primary
/// has the defaults, so after a failover it comes back as `standby1`.
#[derive(Debug, Clone)]
pub(crate) struct StandbyConf {
    application_name: String,
    settings: Vec<(String, String)>,
    wait_timeout: Duration,
}

impl Default for StandbyConf {
    fn default() -> Self {
        StandbyConf {
            application_name: DEFAULT_APPLICATION_NAME.to_owned(),
            settings: Vec::new(),
            wait_timeout: DEFAULT_WAIT,
        }
    }
}

impl PgCluster {
    /// A hot standby of `primary`, streaming from it over the primary's Unix socket, running
    /// and caught up to the point where its WAL receiver reports `streaming`.
    pub fn start_standby(
        primary: &PgCluster,
        opts: StandbyOptions,
    ) -> Result<PgCluster, PgClusterError> {
        let mut standby = PgCluster::unstarted(
            primary.bindir.clone(),
            primary.user,
            &opts.listen,
            opts.keep,
        )?;
        standby.standby = StandbyConf {
            application_name: opts.application_name,
            settings: opts.settings,
            wait_timeout: opts.wait_timeout,
        };
        standby.base_backup_from(primary)?;
        // root.crt stays the primary's copy: one CA for both.
        standby.install_server_cert(&opts.server_cert, &opts.server_key)?;
        let from_backup = standby.read_data_file(AUTO_CONF)?;
        let socket_dir = standby.dir.path().to_owned();
        let (listen, conf) = (standby.listen.clone(), standby.standby.clone());
        standby.start_on_free_port(|port| {
            standby_auto_conf(&from_backup, &listen, port, &socket_dir, &conf.settings)
        })?;
        standby.wait_streaming()?;
        Ok(standby)
    }

    /// Promotes a standby and waits until it is out of recovery (accepting writes).
    pub fn promote(&self) -> Result<(), PgClusterError> {
        let mut cmd = self.pg_ctl();
        cmd.args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "promote"]);
        run(cmd, "pg_ctl promote")?;
        self.wait_until("the end of recovery after promotion", DEFAULT_WAIT, |c| {
            let state = c.psql("postgres", "SELECT pg_is_in_recovery()")?;
            Ok((state == "f", format!("pg_is_in_recovery = {state}")))
        })
    }

    /// Stops the server in immediate mode: no shutdown checkpoint, like a crash.
    pub fn stop_immediate(&self) -> Result<(), PgClusterError> {
        let mut cmd = self.pg_ctl();
        cmd.args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-m", "immediate", "stop"]);
        run(cmd, "pg_ctl stop -m immediate").map(drop)
    }

    /// Makes this cluster a fresh standby of `new_primary`: its data dir is replaced by a base
    /// backup of `new_primary`, then it starts on its old port, address and socket dir with its
    /// own certificate, and streams. A running server is stopped (immediate) first.
    pub fn rebuild_as_standby_of(&mut self, new_primary: &PgCluster) -> Result<(), PgClusterError> {
        // Already stopped, the usual case after a failover, makes this fail: that is fine.
        let _ = self.stop_immediate();
        let cert = self.read_data_bytes(SERVER_CERT)?;
        let key = self.read_data_bytes(SERVER_KEY)?;
        fs::remove_dir_all(&self.data)
            .map_err(|e| PgClusterError::io(format!("removing {}", self.data.display()), e))?;
        self.base_backup_from(new_primary)?;
        self.write_data_file(SERVER_CERT, &cert, 0o644)?;
        self.write_data_file(SERVER_KEY, &key, 0o600)?;
        let from_backup = self.read_data_file(AUTO_CONF)?;
        let text = standby_auto_conf(
            &from_backup,
            &self.listen,
            self.port,
            self.dir.path(),
            &self.standby.settings,
        );
        self.write_data_file(AUTO_CONF, text.as_bytes(), 0o600)?;
        self.pg_ctl_start_like("start")?;
        self.wait_streaming()
    }

    /// On a primary: waits until some standby streams from it as a synchronous standby.
    pub fn wait_for_sync_standby(&self, timeout: Duration) -> Result<(), PgClusterError> {
        self.wait_until("a synchronous standby", timeout, |c| {
            let rows = c.psql(
                "postgres",
                "SELECT application_name || ':' || state || ':' || sync_state \
                 FROM pg_stat_replication",
            )?;
            let synced = rows.lines().any(|row| row.ends_with(":streaming:sync"));
            Ok((
                synced,
                format!("pg_stat_replication: [{}]", rows.replace('\n', ", ")),
            ))
        })
    }

    /// Whether the server is a standby (or still replaying WAL after a crash).
    pub fn is_in_recovery(&self) -> Result<bool, PgClusterError> {
        Ok(self.psql("postgres", "SELECT pg_is_in_recovery()")? == "t")
    }

    /// pg_basebackup of `primary` into the (absent) data dir, with standby.signal and a
    /// primary_conninfo (`-R`) that carries our application_name.
    fn base_backup_from(&self, primary: &PgCluster) -> Result<(), PgClusterError> {
        let conninfo = format!(
            "host={} port={} user=postgres application_name={}",
            conninfo_value(&primary.socket_dir().display().to_string()),
            primary.port,
            conninfo_value(&self.standby.application_name),
        );
        let mut cmd = self.server_command("pg_basebackup");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync", "-d"])
            .arg(conninfo);
        run(cmd, "pg_basebackup").map(drop)
    }

    fn wait_streaming(&self) -> Result<(), PgClusterError> {
        let timeout = self.standby.wait_timeout;
        self.wait_until("the standby to stream from its primary", timeout, |c| {
            let status = c.psql("postgres", "SELECT status FROM pg_stat_wal_receiver")?;
            Ok((
                status == "streaming",
                format!("wal receiver status {status:?}"),
            ))
        })
    }

    /// Polls `check` (done?, what it saw) until done; errors count as not done yet.
    fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&PgCluster) -> Result<(bool, String), PgClusterError>,
    ) -> Result<(), PgClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match check(self) {
                Ok((true, _)) => return Ok(()),
                Ok((false, seen)) => seen,
                Err(err) => err.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(PgClusterError::WaitTimeout {
                    what: what.to_owned(),
                    timeout,
                    last,
                    log_tail: self.log_tail(30),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn read_data_bytes(&self, name: &str) -> Result<Vec<u8>, PgClusterError> {
        let path = self.data.join(name);
        fs::read(&path).map_err(|e| PgClusterError::io(format!("reading {}", path.display()), e))
    }

    fn read_data_file(&self, name: &str) -> Result<String, PgClusterError> {
        Ok(String::from_utf8_lossy(&self.read_data_bytes(name)?).into_owned())
    }
}

/// A libpq conninfo value: quoted, with backslash escapes (not SQL's doubled quotes).
fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The backup's postgresql.auto.conf (the primary's settings plus the primary_conninfo `-R`
/// wrote), then this server's own address, port and socket dir, then `extra`.
fn standby_auto_conf(
    from_backup: &str,
    listen: &str,
    port: u16,
    socket_dir: &Path,
    extra: &[(String, String)],
) -> String {
    let port = port.to_string();
    let socket_dir = socket_dir.display().to_string();
    let own = [
        ("listen_addresses", listen),
        ("port", &port),
        ("unix_socket_directories", &socket_dir),
        // Copied from the primary it would make the promoted standby wait for a standby of
        // its own that does not exist.
        ("synchronous_standby_names", ""),
        ("hot_standby", "on"),
    ];
    let extra = extra.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let mut text = from_backup.to_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("# appended by pgmoat's pgcluster for a standby\n");
    text.push_str(&conf::setting_lines(own.into_iter().chain(extra)));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_values_escape_with_backslashes() {
        assert_eq!(conninfo_value(r"a'b\c"), r"'a\'b\\c'");
    }

    #[test]
    fn standby_settings_follow_the_backup_and_extras_come_last() {
        let backup = "port = '5432'\nsynchronous_standby_names = '*'\nprimary_conninfo = 'x'";
        let text = standby_auto_conf(
            backup,
            "127.0.0.2",
            6000,
            Path::new("/tmp/s"),
            &[("hot_standby".into(), "off".into())],
        );
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle}: {text}"))
        };
        assert!(at("primary_conninfo = 'x'\n") < at("port = '6000'"));
        assert!(at("synchronous_standby_names = '*'") < at("synchronous_standby_names = ''"));
        assert!(at("listen_addresses = '127.0.0.2'") > 0);
        assert!(at("unix_socket_directories = '/tmp/s'") > 0);
        assert!(at("hot_standby = 'on'") < at("hot_standby = 'off'"));
    }
}
