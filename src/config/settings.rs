//! The settings themselves, with PgBouncer's names and pgmoat's defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// libpq / PgBouncer sslmode, used for both `client_tls_sslmode` and `server_tls_sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// libpq's channel_binding, for pgmoat's SCRAM logins to PostgreSQL (server_channel_binding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelBinding {
    /// Never bind.
    Disable,
    /// Bind whenever the connection has TLS and PostgreSQL offers SCRAM-SHA-256-PLUS.
    Prefer,
    /// Refuse to log in without it (so also without SCRAM, or without TLS).
    Require,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Session,
    Transaction,
}

/// What happens when a transaction-mode client makes session state that outlives its
/// transaction (temp tables, session advisory locks, LISTEN, SQL PREPARE, WITH HOLD cursors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Its server is pinned to it until the state is gone.
    Pin,
    /// Never pin: the server is reset (DISCARD ALL) after such a transaction, and the client
    /// loses the state.
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthType {
    Trust,
    Md5,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    Cert,
    /// Per connection, by the rules of auth_hba_file (pg_hba.conf format).
    Hba,
}

/// Which name in a client certificate is the client's identity (PostgreSQL's "system user"),
/// compared with the user name or looked up in an auth_ident_file map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertIdentity {
    /// The subject's common name, as PostgreSQL and PgBouncer use it.
    Cn,
    /// Any DNS name among the subject alternative names.
    SanDns,
    /// Any URI among the subject alternative names (SPIFFE IDs).
    SanUri,
    /// Any email address (rfc822Name) among the subject alternative names.
    SanEmail,
}

/// What a certificate check does with a CRL past its next update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CrlExpired {
    /// Refuse every certificate that the stale CRL would have to vouch for (fail closed).
    Refuse,
    /// Keep using the stale CRL (its revocations still count), with a warning.
    Warn,
}

/// What a certificate check does when no loaded CRL comes from a certificate's issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CrlUnknownStatus {
    /// Every certificate of the chain below the trust anchor needs its issuer's CRL.
    Refuse,
    /// The end-entity certificate needs its issuer's CRL; intermediates are checked when
    /// their issuer's CRL is loaded and let through otherwise.
    AllowIntermediate,
    /// A certificate whose issuer has no CRL loaded is let through.
    Allow,
}

/// A TLS protocol version that may be enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// max_packet_size's default: 64 MiB. PgBouncer allows 2 GiB; PostgreSQL holds each message
/// whole in the backend's memory (up to 1 GiB), so a smaller bound keeps one client from
/// costing the database that much, and still passes any ordinary query or parameter.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 64 * 1024 * 1024;

/// The smallest max_packet_size accepted: below it ordinary statements would not fit.
pub const MIN_MAX_PACKET_SIZE: usize = 16 * 1024;

/// libpq's target_session_attrs for the servers of a database entry: which of its hosts a
/// server connection may be on, judged at login from what the server reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSessionAttrs {
    /// Any server that accepts the login.
    #[default]
    Any,
    /// Writes allowed: not a hot standby, default_transaction_read_only off.
    ReadWrite,
    /// Writes refused: a hot standby, or default_transaction_read_only on.
    ReadOnly,
    /// Not in recovery.
    Primary,
    /// In recovery (a hot standby).
    Standby,
    /// A standby when one answers, otherwise any server.
    PreferStandby,
}

/// load_balance_hosts: how a database entry with several hosts picks one for a new server
/// connection. PgBouncer's `round-robin` and `disable`, plus libpq's `random`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalanceHosts {
    /// In the order listed (hosts known to suit come first).
    Disable,
    /// Each new connection starts at the next suitable host (PgBouncer's default).
    #[default]
    RoundRobin,
    /// A random suitable host first.
    Random,
}

/// The port of a database entry: one for every host, or one per host (`"5432,5433"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "toml::Value")]
pub struct Ports(pub Vec<u16>);

impl From<Ports> for toml::Value {
    fn from(ports: Ports) -> toml::Value {
        match ports.0.as_slice() {
            [one] => toml::Value::Integer(i64::from(*one)),
            _ => toml::Value::String(ports.to_string()),
        }
    }
}

impl std::fmt::Display for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let spelled: Vec<String> = self.0.iter().map(u16::to_string).collect();
        f.write_str(&spelled.join(","))
    }
}

impl Default for Ports {
    fn default() -> Self {
        Ports(vec![5432])
    }
}

/// One `[peers.N]` entry: another pgmoat instance that shares the clients' cancel keys (a
/// CancelRequest carrying its peer id is forwarded there). PgBouncer's names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerConfig {
    pub host: String,
    pub port: u16,
    /// Cancel requests on their way to this peer at once; `None`: default_pool_size.
    pub pool_size: Option<usize>,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            host: String::new(),
            port: 6432,
            pool_size: None,
        }
    }
}

/// The highest peer_id: 14 bits of the cancel key hold it.
pub const MAX_PEER_ID: u16 = 16383;

/// A duration written in seconds (integer or fractional), as PgBouncer writes its timeouts.
/// Zero means "disabled" where PgBouncer says so.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Default)]
pub struct Seconds(pub f64);

impl Seconds {
    pub fn duration(self) -> Duration {
        Duration::from_secs_f64(self.0.max(0.0))
    }

    /// `None` when the setting is 0 (disabled).
    pub fn non_zero(self) -> Option<Duration> {
        (self.0 > 0.0).then(|| self.duration())
    }
}

/// One `[databases.NAME]` entry: where a database name asked for by a client really lives.
/// Its `Debug` (in connstr.rs) hides the password.
#[derive(Clone, PartialEq, Serialize)]
pub struct DatabaseConfig {
    /// One host, or several separated by commas (libpq style), tried as load_balance_hosts
    /// and target_session_attrs say.
    pub host: String,
    pub port: Ports,
    /// The database name on PostgreSQL; defaults to the entry's own name
    /// (for `*`, to the name the client asked for).
    pub dbname: Option<String>,
    /// Log in to PostgreSQL as this user instead of the client's user.
    pub user: Option<String>,
    /// Password towards PostgreSQL for `user` (or for the client's user).
    pub password: Option<String>,
    pub pool_size: Option<usize>,
    pub pool_mode: Option<PoolMode>,
    pub max_db_connections: Option<usize>,
    pub session_state: Option<SessionState>,
    pub max_pinned_servers: Option<usize>,
    /// Overrides the global idle_transaction_timeout for this entry.
    pub idle_transaction_timeout: Option<Seconds>,
    /// Overrides the global query_timeout for this entry.
    pub query_timeout: Option<Seconds>,
    /// Overrides the global transaction_timeout for this entry.
    pub transaction_timeout: Option<Seconds>,
    /// The auth_ident_file map for certificate identities of clients of this database.
    pub auth_ident_map: Option<String>,
    /// Which hosts' servers this entry's clients may use.
    pub target_session_attrs: Option<TargetSessionAttrs>,
    pub load_balance_hosts: Option<LoadBalanceHosts>,
    /// TLS towards this database's server, overriding the global server_tls_* settings.
    pub server_tls_sslmode: Option<SslMode>,
    pub server_tls_ca_file: Option<PathBuf>,
    pub server_tls_cert_file: Option<PathBuf>,
    pub server_tls_key_file: Option<PathBuf>,
}

impl DatabaseConfig {
    /// The entry's hosts with their ports: `port` holds one port for all hosts or one per
    /// host. Checked when the config is loaded, so later callers can rely on it.
    pub fn endpoints(&self) -> Result<Vec<(String, u16)>, String> {
        let hosts: Vec<&str> = self.host.split(',').map(str::trim).collect();
        if hosts.iter().any(|h| h.is_empty()) {
            return Err("a host list has an empty name (two commas, or one at an end)".into());
        }
        match self.port.0.as_slice() {
            [one] => Ok(hosts.iter().map(|h| ((*h).to_owned(), *one)).collect()),
            many if many.len() == hosts.len() => Ok(hosts
                .iter()
                .zip(many)
                .map(|(h, p)| ((*h).to_owned(), *p))
                .collect()),
            many => Err(format!(
                "{} ports for {} hosts: give one port for all hosts, or one per host",
                many.len(),
                hosts.len()
            )),
        }
    }

    /// Whether this entry sets any server_tls_* setting of its own.
    pub fn overrides_server_tls(&self) -> bool {
        self.server_tls_sslmode.is_some()
            || self.server_tls_ca_file.is_some()
            || self.server_tls_cert_file.is_some()
            || self.server_tls_key_file.is_some()
    }
}

/// Everything pgmoat reads from its config file and environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Where the config came from (for error messages and reload); `None` for env-only.
    pub source: Option<PathBuf>,

    pub listen_addr: String,
    pub listen_port: u16,

    pub pool_mode: PoolMode,
    pub default_pool_size: usize,
    pub min_pool_size: usize,
    pub reserve_pool_size: usize,
    pub reserve_pool_timeout: Seconds,
    pub max_client_conn: usize,
    /// Connections accepted that have not logged in yet (TLS, startup, authentication).
    pub max_pending_logins: usize,
    pub max_db_connections: usize,
    pub max_user_connections: usize,
    pub max_prepared_statements: usize,
    pub session_state: SessionState,
    /// Servers of one pool that may be pinned at once; `None`: half the pool size.
    pub max_pinned_servers: Option<usize>,

    pub server_idle_timeout: Seconds,
    pub server_lifetime: Seconds,
    pub server_check_query: String,
    pub server_check_delay: Seconds,
    pub server_reset_query: String,
    pub server_reset_query_always: bool,
    pub server_connect_timeout: Seconds,
    /// The longest a cancel request may take to reach PostgreSQL, and a server whose cancel is
    /// on its way may wait for it before it is closed instead of reused; 0: no limit of its
    /// own (the cancel's connect is still bounded by server_connect_timeout).
    pub cancel_wait_timeout: Seconds,
    /// How long to wait between rounds over a database entry's hosts when none gave a
    /// suitable server (a failover under way).
    pub server_login_retry: Seconds,
    pub query_wait_timeout: Seconds,
    /// A client that has waited this long for a server gets a NOTICE saying so; 0: never.
    pub query_wait_notify: Seconds,
    pub client_login_timeout: Seconds,
    pub client_idle_timeout: Seconds,
    /// A client idle inside a transaction (ReadyForQuery T or E, nothing sent) for this long
    /// is ended and its server closed; 0: never. Per database entry too.
    pub idle_transaction_timeout: Seconds,
    /// A batch that keeps its server busy this long is canceled (the client stays); 0:
    /// never. Per database entry too.
    pub query_timeout: Seconds,
    /// A client whose transaction lasts this long is ended and its server closed; 0: never.
    /// Per database entry too.
    pub transaction_timeout: Seconds,
    /// Pools made for the `*` entry are forgotten after this long unused; 0: never.
    pub autodb_idle_timeout: Seconds,
    pub shutdown_timeout: Seconds,
    /// Longest message a client may send, in bytes, header included.
    pub max_packet_size: usize,

    pub auth_type: AuthType,
    pub auth_file: Option<PathBuf>,
    /// pg_hba.conf-format rules for auth_type = hba.
    pub auth_hba_file: Option<PathBuf>,
    /// pg_ident.conf-format maps from certificate identities to user names.
    pub auth_ident_file: Option<PathBuf>,
    /// The map of auth_ident_file used where neither an HBA rule nor the database names one.
    pub auth_ident_map: Option<String>,
    pub auth_cert_identity: CertIdentity,
    pub admin_users: Vec<String>,
    pub stats_users: Vec<String>,

    pub client_tls_sslmode: SslMode,
    pub client_tls_cert_file: Option<PathBuf>,
    pub client_tls_key_file: Option<PathBuf>,
    pub client_tls_ca_file: Option<PathBuf>,
    pub client_tls_crl_file: Option<PathBuf>,
    pub client_tls_protocols: Vec<TlsVersion>,

    pub server_tls_sslmode: SslMode,
    pub server_tls_ca_file: Option<PathBuf>,
    pub server_tls_cert_file: Option<PathBuf>,
    pub server_tls_key_file: Option<PathBuf>,
    pub server_tls_crl_file: Option<PathBuf>,
    pub server_tls_protocols: Vec<TlsVersion>,
    pub server_channel_binding: ChannelBinding,
    pub tls_crl_expired: CrlExpired,
    pub tls_crl_unknown_status: CrlUnknownStatus,

    pub metrics_addr: Option<String>,
    pub cert_expiry_warn_days: u32,
    pub watch_files: bool,
    /// Worker threads, each with its own event loop; 0 = one per CPU.
    pub worker_threads: usize,

    pub databases: BTreeMap<String, DatabaseConfig>,

    /// SO_REUSEPORT on the listener: several pgmoat processes on one address and port (a
    /// rolling upgrade: start the new one, SIGTERM the old one). Read at start.
    pub so_reuseport: bool,
    /// A second port on listen_addr that reaches this process only (with so_reuseport the
    /// shared port reaches any of them): what `[peers.N]` should name. 0: none. Read at start.
    pub peer_listen_port: u16,
    /// This instance's number among its peers (1..=16383); 0: no peers. Read at start.
    pub peer_id: u16,
    /// The other instances (and this one), by peer id.
    pub peers: BTreeMap<u16, PeerConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: None,
            listen_addr: "127.0.0.1".into(),
            listen_port: 6432,
            pool_mode: PoolMode::Transaction,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: Seconds(5.0),
            max_client_conn: 100,
            max_pending_logins: 1000,
            max_db_connections: 0,
            max_user_connections: 0,
            max_prepared_statements: 200,
            session_state: SessionState::Pin,
            max_pinned_servers: None,
            server_idle_timeout: Seconds(600.0),
            server_lifetime: Seconds(3600.0),
            server_check_query: "select 1".into(),
            server_check_delay: Seconds(30.0),
            server_reset_query: "DISCARD ALL".into(),
            server_reset_query_always: false,
            server_connect_timeout: Seconds(15.0),
            server_login_retry: Seconds(1.0),
            cancel_wait_timeout: Seconds(10.0),
            query_wait_timeout: Seconds(120.0),
            query_wait_notify: Seconds(0.0),
            client_login_timeout: Seconds(60.0),
            client_idle_timeout: Seconds(0.0),
            idle_transaction_timeout: Seconds(0.0),
            query_timeout: Seconds(0.0),
            transaction_timeout: Seconds(0.0),
            autodb_idle_timeout: Seconds(3600.0),
            shutdown_timeout: Seconds(30.0),
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            auth_type: AuthType::ScramSha256,
            auth_file: None,
            auth_hba_file: None,
            auth_ident_file: None,
            auth_ident_map: None,
            auth_cert_identity: CertIdentity::Cn,
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            client_tls_sslmode: SslMode::Require,
            client_tls_cert_file: None,
            client_tls_key_file: None,
            client_tls_ca_file: None,
            client_tls_crl_file: None,
            client_tls_protocols: vec![TlsVersion::Tls12, TlsVersion::Tls13],
            server_tls_sslmode: SslMode::VerifyFull,
            server_tls_ca_file: None,
            server_tls_cert_file: None,
            server_tls_key_file: None,
            server_tls_crl_file: None,
            server_tls_protocols: vec![TlsVersion::Tls12, TlsVersion::Tls13],
            server_channel_binding: ChannelBinding::Prefer,
            tls_crl_expired: CrlExpired::Refuse,
            tls_crl_unknown_status: CrlUnknownStatus::AllowIntermediate,
            metrics_addr: None,
            cert_expiry_warn_days: 30,
            watch_files: false,
            worker_threads: 0,
            databases: BTreeMap::new(),
            so_reuseport: false,
            peer_listen_port: 0,
            peer_id: 0,
            peers: BTreeMap::new(),
        }
    }
}

impl Config {
    /// The database entry for a name a client asked for: the exact entry, else `*`.
    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.get(name).or_else(|| self.databases.get("*"))
    }

    /// idle_transaction_timeout for clients of database `name`: the entry's, else the global.
    pub fn idle_transaction_timeout_for(&self, name: &str) -> Option<std::time::Duration> {
        self.timeout_for(name, self.idle_transaction_timeout, |e| {
            e.idle_transaction_timeout
        })
    }

    /// query_timeout for clients of database `name`: the entry's, else the global.
    pub fn query_timeout_for(&self, name: &str) -> Option<std::time::Duration> {
        self.timeout_for(name, self.query_timeout, |e| e.query_timeout)
    }

    /// transaction_timeout for clients of database `name`: the entry's, else the global.
    pub fn transaction_timeout_for(&self, name: &str) -> Option<std::time::Duration> {
        self.timeout_for(name, self.transaction_timeout, |e| e.transaction_timeout)
    }

    /// A timeout a database entry may override: `None` when it is 0 (off).
    fn timeout_for(
        &self,
        name: &str,
        global: Seconds,
        in_entry: impl Fn(&DatabaseConfig) -> Option<Seconds>,
    ) -> Option<std::time::Duration> {
        self.database(name)
            .and_then(in_entry)
            .unwrap_or(global)
            .non_zero()
    }
}
