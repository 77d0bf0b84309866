//! The checks a configuration must pass before pgmoat runs with it: settings that need each
//! other, limits that make sense, addresses that parse, files that can be read. All problems
//! are collected; the loader turns them into errors placed at the right file line or variable.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use super::error::ConfigErrors;
use super::load::Places;
use super::settings::{AuthType, Config, SslMode};

/// Whether validation opens the files a config names. `Skip` is for checking a config written
/// for another machine (and for the reference config in a fresh checkout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChecks {
    Check,
    Skip,
}

/// One failed check: the setting at fault, the settings whose place should be shown when the
/// faulty one was never written (e.g. the sslmode that requires a missing CA file), and why.
#[derive(Debug)]
pub(crate) struct Problem {
    pub key: String,
    pub anchors: Vec<&'static str>,
    pub reason: String,
}

impl Config {
    /// Every problem with this config. Errors carry no line: only the loader knows lines.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        self.validate_with(FileChecks::Check)
    }

    pub fn validate_with(&self, files: FileChecks) -> Result<(), ConfigErrors> {
        let places = Places::new(self.source.as_deref());
        let errors = problems(self, files)
            .into_iter()
            .map(|p| places.error(p))
            .collect();
        ConfigErrors(errors).into_result()
    }
}

struct Found(Vec<Problem>);

impl Found {
    fn add(&mut self, key: impl Into<String>, anchors: &[&'static str], reason: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            anchors: anchors.to_vec(),
            reason: reason.into(),
        });
    }
}

pub(crate) fn problems(config: &Config, files: FileChecks) -> Vec<Problem> {
    let mut found = Found(Vec::new());
    client_tls(config, &mut found);
    auth(config, &mut found);
    server_tls(config, &mut found);
    limits(config, &mut found);
    addresses(config, &mut found);
    databases(config, &mut found);
    peers(config, &mut found);
    if files == FileChecks::Check {
        readable_files(config, &mut found);
    }
    found.0
}

fn client_tls(c: &Config, found: &mut Found) {
    let mode = c.client_tls_sslmode;
    const AT: &[&str] = &["client_tls_sslmode"];
    // Without client_tls_key_file the key is read from the certificate file (a combined
    // PEM); the TLS loader says so when it is not there.
    if mode != SslMode::Disable && c.client_tls_cert_file.is_none() {
        let why = format!("client_tls_sslmode = {mode} needs a certificate to show clients");
        found.add("client_tls_cert_file", AT, why);
    }
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && c.client_tls_ca_file.is_none() {
        let why = format!("{mode} needs a CA file to check client certificates against");
        found.add("client_tls_ca_file", AT, why);
    }
    if c.client_tls_crl_file.is_some() && c.client_tls_ca_file.is_none() {
        found.add(
            "client_tls_crl_file",
            &[],
            "a CRL needs client_tls_ca_file: client certificates are checked against it only \
             when they are verified",
        );
    }
    if c.client_tls_protocols.is_empty() {
        found.add(
            "client_tls_protocols",
            &[],
            "no TLS protocol version is enabled",
        );
    }
}

fn auth(c: &Config, found: &mut Found) {
    const AT: &[&str] = &["auth_type"];
    let verified_clients = matches!(
        c.client_tls_sslmode,
        SslMode::VerifyCa | SslMode::VerifyFull
    );
    match c.auth_type {
        AuthType::Cert if !verified_clients => found.add(
            "auth_type",
            &[],
            format!(
                "auth_type = cert needs client_tls_sslmode = verify-ca or verify-full (it is {}), \
                 so that every client presents a verified certificate",
                c.client_tls_sslmode
            ),
        ),
        AuthType::Md5 | AuthType::ScramSha256 if c.auth_file.is_none() => found.add(
            "auth_file",
            AT,
            format!(
                "auth_type = {} needs an auth_file with the users' passwords or SCRAM secrets",
                c.auth_type
            ),
        ),
        AuthType::Hba if c.auth_hba_file.is_none() => found.add(
            "auth_hba_file",
            AT,
            "auth_type = hba needs auth_hba_file, the rules in pg_hba.conf format",
        ),
        _ => {}
    }
    if c.auth_type != AuthType::Hba && c.auth_hba_file.is_some() {
        found.add(
            "auth_hba_file",
            &[],
            format!(
                "auth_hba_file is used only with auth_type = hba (it is {})",
                c.auth_type
            ),
        );
    }
    let maps = std::iter::once(("auth_ident_map".to_owned(), &c.auth_ident_map)).chain(
        c.databases.iter().map(|(name, e)| {
            (
                format!("databases.{name}.auth_ident_map"),
                &e.auth_ident_map,
            )
        }),
    );
    for (key, map) in maps {
        if map.is_some() && c.auth_ident_file.is_none() {
            found.add(
                key,
                &[],
                "a map needs auth_ident_file, the maps in pg_ident.conf format",
            );
        }
    }
}

fn server_tls(c: &Config, found: &mut Found) {
    let mode = c.server_tls_sslmode;
    let verifies = |mode: SslMode| matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
    if verifies(mode) && c.server_tls_ca_file.is_none() {
        let why = format!("{mode} needs a CA file to check PostgreSQL's certificate against");
        found.add("server_tls_ca_file", &["server_tls_sslmode"], why);
    }
    // A certificate alone is fine: its file may hold the key too (a combined PEM).
    if c.server_tls_cert_file.is_none() && c.server_tls_key_file.is_some() {
        found.add(
            "server_tls_cert_file",
            &["server_tls_key_file"],
            "server_tls_key_file is set without its certificate: give both or neither",
        );
    }
    let mut any_verifies = verifies(mode);
    for (name, entry) in &c.databases {
        let key = |field: &str| format!("databases.{name}.{field}");
        let entry_mode = entry.server_tls_sslmode.unwrap_or(mode);
        any_verifies |= verifies(entry_mode);
        // An inherited mode without a CA is reported once, at the global setting.
        if entry.server_tls_sslmode.is_some()
            && verifies(entry_mode)
            && entry.server_tls_ca_file.is_none()
            && c.server_tls_ca_file.is_none()
        {
            let why = format!(
                "{entry_mode} needs a CA file to check this database's certificate against \
                 (here or in the global server_tls_ca_file)"
            );
            found.add(key("server_tls_ca_file"), &[], why);
        }
        if entry.server_tls_key_file.is_some() && entry.server_tls_cert_file.is_none() {
            found.add(
                key("server_tls_key_file"),
                &[],
                "a key without server_tls_cert_file in the same entry: the global certificate \
                 never pairs with another key",
            );
        }
    }
    if c.server_tls_crl_file.is_some() && !any_verifies {
        found.add(
            "server_tls_crl_file",
            &[],
            "a CRL is checked only under server_tls_sslmode = verify-ca or verify-full, which \
             no database uses",
        );
    }
    if c.server_tls_protocols.is_empty() {
        found.add(
            "server_tls_protocols",
            &[],
            "no TLS protocol version is enabled",
        );
    }
}

fn limits(c: &Config, found: &mut Found) {
    if c.default_pool_size == 0 {
        found.add("default_pool_size", &[], "must be at least 1");
    }
    if c.min_pool_size > c.default_pool_size {
        let why = format!(
            "{} is larger than default_pool_size ({})",
            c.min_pool_size, c.default_pool_size
        );
        found.add("min_pool_size", &[], why);
    }
    if c.max_client_conn == 0 {
        found.add("max_client_conn", &[], "must be at least 1");
    }
    if c.max_pending_logins == 0 {
        found.add("max_pending_logins", &[], "must be at least 1");
    }
    if c.max_packet_size < super::settings::MIN_MAX_PACKET_SIZE {
        let why = format!(
            "{} bytes is too small for ordinary statements: at least {} (16 KiB)",
            c.max_packet_size,
            super::settings::MIN_MAX_PACKET_SIZE
        );
        found.add("max_packet_size", &[], why);
    }
    if c.listen_port == 0 {
        found.add(
            "listen_port",
            &[],
            "must not be 0: clients need a fixed port",
        );
    }
    // Settings read from a file are checked when read; these guard configs built in code,
    // because Seconds::duration() panics on what Duration cannot hold.
    let timeouts = [
        ("reserve_pool_timeout", c.reserve_pool_timeout),
        ("server_idle_timeout", c.server_idle_timeout),
        ("server_lifetime", c.server_lifetime),
        ("server_check_delay", c.server_check_delay),
        ("server_connect_timeout", c.server_connect_timeout),
        ("server_login_retry", c.server_login_retry),
        ("cancel_wait_timeout", c.cancel_wait_timeout),
        ("query_wait_timeout", c.query_wait_timeout),
        ("query_wait_notify", c.query_wait_notify),
        ("client_login_timeout", c.client_login_timeout),
        ("client_idle_timeout", c.client_idle_timeout),
        ("idle_transaction_timeout", c.idle_transaction_timeout),
        ("query_timeout", c.query_timeout),
        ("transaction_timeout", c.transaction_timeout),
        ("autodb_idle_timeout", c.autodb_idle_timeout),
        ("shutdown_timeout", c.shutdown_timeout),
    ];
    for (name, seconds) in timeouts {
        if let Err(why) = super::Seconds::checked(seconds.0) {
            found.add(name, &[], why);
        }
    }
}

/// A DNS name as resolvers take it; `_` is allowed because container names use it.
fn is_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn addresses(c: &Config, found: &mut Found) {
    let addr = c.listen_addr.as_str();
    if addr == "*" {
        found.add(
            "listen_addr",
            &[],
            "`*` is not supported: use 0.0.0.0 (all IPv4) or :: (all addresses)",
        );
    } else if addr.parse::<IpAddr>().is_err() && !is_host_name(addr) {
        found.add(
            "listen_addr",
            &[],
            format!(
                "`{addr}` is neither an IP address nor a host name (pgmoat listens on one address)"
            ),
        );
    }
    if let Some(metrics) = &c.metrics_addr {
        let host_port = metrics.rsplit_once(':').is_some_and(|(host, port)| {
            is_host_name(host) && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if metrics.parse::<SocketAddr>().is_err() && !host_port {
            let why = format!("`{metrics}` is not host:port, like 127.0.0.1:9187");
            found.add("metrics_addr", &[], why);
        }
    }
}

fn peers(c: &Config, found: &mut Found) {
    if c.peer_id > super::MAX_PEER_ID {
        found.add(
            "peer_id",
            &[],
            format!("must be 0 (no peers) to {}", super::MAX_PEER_ID),
        );
    }
    if c.peer_id == 0 && !c.peers.is_empty() {
        found.add(
            "peer_id",
            &[],
            "[peers] is set but peer_id is not: give this instance its number among the peers",
        );
    }
    for (id, peer) in &c.peers {
        if peer.host.trim().is_empty() {
            found.add(format!("peers.{id}.host"), &[], "every peer needs a host");
        }
        if peer.port == 0 {
            found.add(format!("peers.{id}.port"), &[], "must not be 0");
        }
        if peer.pool_size == Some(0) {
            found.add(format!("peers.{id}.pool_size"), &[], "must be at least 1");
        }
    }
}

fn databases(c: &Config, found: &mut Found) {
    if c.databases.is_empty() {
        found.add(
            "databases",
            &[],
            "no database entries: add [databases.NAME] (or `*` as a fallback), or \
             PGMOAT_DATABASES__NAME in the environment",
        );
    }
    for (name, entry) in &c.databases {
        let key = |field: &str| format!("databases.{name}.{field}");
        if name.is_empty() {
            found.add("databases", &[], "a database entry has an empty name");
        }
        if entry.host.trim().is_empty() {
            found.add(key("host"), &[], "every database entry needs a host");
        }
        if !entry.host.trim().is_empty()
            && let Err(why) = entry.endpoints()
        {
            found.add(key("port"), &[], why);
        }
        if entry.pool_size == Some(0) {
            found.add(key("pool_size"), &[], "must be at least 1");
        }
        let size = entry.pool_size.unwrap_or(c.default_pool_size);
        if let Some(max) = entry.max_pinned_servers
            && max > size
        {
            let why = format!(
                "{max} is larger than the pool ({size}): at most every server can be pinned"
            );
            found.add(key("max_pinned_servers"), &[], why);
        }
    }
}

fn readable_files(c: &Config, found: &mut Found) {
    let mut files: Vec<(String, &Option<PathBuf>)> = [
        ("auth_file", &c.auth_file),
        ("auth_hba_file", &c.auth_hba_file),
        ("auth_ident_file", &c.auth_ident_file),
        ("client_tls_cert_file", &c.client_tls_cert_file),
        ("client_tls_key_file", &c.client_tls_key_file),
        ("client_tls_ca_file", &c.client_tls_ca_file),
        ("server_tls_ca_file", &c.server_tls_ca_file),
        ("server_tls_cert_file", &c.server_tls_cert_file),
        ("server_tls_key_file", &c.server_tls_key_file),
    ]
    .into_iter()
    .map(|(name, path)| (name.to_owned(), path))
    .collect();
    for (name, entry) in &c.databases {
        let key = |field: &str| format!("databases.{name}.{field}");
        files.push((key("server_tls_ca_file"), &entry.server_tls_ca_file));
        files.push((key("server_tls_cert_file"), &entry.server_tls_cert_file));
        files.push((key("server_tls_key_file"), &entry.server_tls_key_file));
    }
    for (name, path) in files {
        let is_ca = name.ends_with("server_tls_ca_file");
        if let Some(path) = path
            && !(is_ca && path == Path::new(crate::tls::SYSTEM_STORE))
            && let Err(why) = check_readable(path)
        {
            found.add(name, &[], why);
        }
    }
    // A CRL setting may name a directory of CRL files.
    for (name, path) in [
        ("client_tls_crl_file", &c.client_tls_crl_file),
        ("server_tls_crl_file", &c.server_tls_crl_file),
    ] {
        if let Some(path) = path
            && !path.is_dir()
            && let Err(why) = check_readable(path)
        {
            found.add(name, &[], why);
        }
    }
}

/// Opening the file is the honest test of "readable" (permissions, ACLs, mounts alike).
fn check_readable(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let file = File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let metadata = file
        .metadata()
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if metadata.is_dir() {
        return Err(format!("{shown} is a directory, not a file"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
