//! The SHOW commands, with PgBouncer's column names in PgBouncer's order (1.25), so the
//! prometheus-community pgbouncer_exporter and positional scripts read them unchanged. What
//! pgmoat does not have (cancel queues, DNS cache, peers) is 0 or NULL; pgmoat's own
//! columns come after PgBouncer's.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::columns::*;
use super::result::{Cell, ResultSet, Type, int, system_time, text, timestamp};
use crate::config::{Config, PoolMode};
use crate::pool::PoolKey;
use crate::state::Shared;
use crate::stats::{ClientEntry, ClientState, ServerEntry, TlsSummary, Totals};

use Type::{Int8, Text};

/// The console's own database, listed like PgBouncer lists it.
const CONSOLE_DB: &str = "pgbouncer";

fn pool_mode_name(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    }
}

fn split_duration(d: Duration) -> (Cell, Cell) {
    (int(d.as_secs()), int(d.subsec_micros()))
}

pub fn pools(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(POOLS);
    let config = shared.snapshot().config.clone();
    let mut modes: BTreeMap<PoolKey, &'static str> = BTreeMap::new();
    for pool in shared.pools.all() {
        modes.insert(pool.key.clone(), pool_mode_name(pool.settings.mode));
    }
    let mut occupancy = shared.stats.occupancy();
    for key in modes.keys() {
        occupancy.entry(key.clone()).or_default();
    }
    for (key, o) in occupancy {
        let mode = match modes.get(&key) {
            Some(mode) => *mode,
            None if key.database == CONSOLE_DB => "statement",
            None => pool_mode_name(config.pool_mode),
        };
        let (maxwait, maxwait_us) = split_duration(o.maxwait);
        let mut row = vec![text(&key.database), text(&key.user)];
        // PgBouncer counts idle logged-in clients as cl_active.
        row.extend([o.cl_active + o.cl_idle, o.cl_waiting, 0, 0].map(int));
        row.extend(
            [
                o.sv_active,
                0,
                o.sv_being_canceled,
                o.sv_idle,
                o.sv_used,
                0,
                0,
            ]
            .map(int),
        );
        row.extend([maxwait, maxwait_us, text(mode), None]);
        rs.push(row);
    }
    rs
}

fn addr_cells(addr: Option<std::net::SocketAddr>) -> [Cell; 2] {
    match addr {
        Some(a) => [text(a.ip().to_string()), int(a.port())],
        None => [None, None],
    }
}

fn ptr(id: u64) -> String {
    format!("{id:#x}")
}

fn tls_cells(tls: Option<&TlsSummary>) -> [Cell; 5] {
    match tls {
        Some(t) => [
            text(format!("{}/{}", t.version, t.cipher)),
            text(&t.version),
            text(&t.cipher),
            t.cert_subject.clone(),
            t.cert_not_after.and_then(timestamp),
        ],
        None => [text(""), None, None, None, None],
    }
}

/// The words of a set of `backend::PinReasons` bits.
fn pin_words(bits: u8) -> String {
    crate::backend::PinReasons::from_bits_truncate(bits).to_string()
}

/// One SHOW CLIENTS / SERVERS row; `extra` are pgmoat's trailing TLS columns, then its
/// lifecycle and pinned columns.
#[allow(clippy::too_many_arguments)]
fn socket_row(
    kind: &str,
    user: &str,
    database: &str,
    state: &str,
    peer: Option<std::net::SocketAddr>,
    local: Option<std::net::SocketAddr>,
    times: (SystemTime, SystemTime, Duration),
    close_needed: bool,
    id: u64,
    link: Option<u64>,
    remote_pid: i32,
    application_name: &str,
    tls: Option<&TlsSummary>,
    (lifecycle, pinned): (&str, u8),
) -> Vec<Cell> {
    let (connect, request, wait) = times;
    let [tls_text, version, cipher, subject, not_after] = tls_cells(tls);
    let (wait, wait_us) = split_duration(wait);
    let mut row = vec![
        text(kind),
        text(user),
        text(database),
        text("none"),
        text(state),
    ];
    row.extend(addr_cells(peer));
    row.extend(addr_cells(local));
    row.extend([system_time(connect), system_time(request), wait, wait_us]);
    row.extend([int(u8::from(close_needed)), text(ptr(id))]);
    row.push(text(link.map(ptr).unwrap_or_default()));
    row.extend([
        int(remote_pid),
        tls_text,
        text(application_name),
        int(0),
        int(id),
    ]);
    row.extend([version, cipher, subject, not_after]);
    row.extend([text(lifecycle), text(pin_words(pinned))]);
    row
}

/// SHOW SERVERS' last columns: the host of the entry's list a server is on, and its role.
fn with_host(mut row: Vec<Cell>, host: Option<(&str, &str)>) -> Vec<Cell> {
    let (name, role) = match host {
        Some((name, role)) => (Some(name.to_owned()), Some(role.to_owned())),
        None => (None, None),
    };
    row.extend([name, role]);
    row
}

fn client_row(c: &ClientEntry, now: SystemTime) -> Vec<Cell> {
    with_host(client_socket_row(c, now), None)
}

fn client_socket_row(c: &ClientEntry, now: SystemTime) -> Vec<Cell> {
    let state = c.state();
    let request = c.request_time().unwrap_or(c.connect_time);
    let wait = match state {
        ClientState::Waiting | ClientState::Assigning => {
            now.duration_since(request).unwrap_or_default()
        }
        _ => Duration::ZERO,
    };
    socket_row(
        "C",
        &c.user,
        &c.database,
        state.as_str(),
        Some(c.peer),
        c.local,
        (c.connect_time, request, wait),
        false,
        c.id,
        c.server_id(),
        0,
        &c.application_name,
        c.tls.as_ref(),
        (state.as_str(), c.pinned()),
    )
}

pub fn clients(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(SOCKETS);
    let now = SystemTime::now();
    for client in shared.stats.clients.list() {
        rs.push(client_row(&client, now));
    }
    rs
}

fn server_row(s: &ServerEntry, linked: Option<&ClientEntry>) -> Vec<Cell> {
    let shown = s.shown();
    let row = socket_row(
        "S",
        &s.pool.user,
        &s.pool.database,
        shown.pgbouncer,
        Some(s.addr),
        s.local,
        (s.connect_time, s.connect_time, Duration::ZERO),
        s.close_needed(),
        s.id,
        linked.map(|c| c.id),
        s.remote_pid,
        linked.map(|c| c.application_name.as_str()).unwrap_or(""),
        s.tls.as_ref(),
        (shown.lifecycle, shown.pinned),
    );
    with_host(row, s.host.as_ref().map(|(h, r)| (h.as_str(), *r)))
}

pub fn servers(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(SOCKETS);
    let clients = shared.stats.clients.list();
    let by_id: BTreeMap<u64, &ClientEntry> = clients.iter().map(|c| (c.id, c.as_ref())).collect();
    for server in shared.stats.servers.list() {
        let client = server.shown().client.and_then(|id| by_id.get(&id).copied());
        rs.push(server_row(&server, client));
    }
    rs
}

/// Totals and averages summed per database, as PgBouncer reports them.
fn per_database(shared: &Shared) -> BTreeMap<String, (Totals, Totals)> {
    let mut out: BTreeMap<String, (Totals, Totals)> = BTreeMap::new();
    for (key, (totals, avg)) in shared.stats.totals_and_averages() {
        let e = out.entry(key.database).or_default();
        e.0.add(&totals);
        e.1.add(&avg);
    }
    out
}

fn totals_cells(t: &Totals) -> [Cell; 8] {
    [
        t.server_assignment_count,
        t.xact_count,
        t.query_count,
        t.bytes_received,
        t.bytes_sent,
        t.xact_time,
        t.query_time,
        t.wait_time,
    ]
    .map(int)
}

/// SHOW STATS, STATS_TOTALS or STATS_AVERAGES; prepared-statement counts are 0.
pub fn stats(shared: &Shared, columns: &'static [(&'static str, Type)]) -> ResultSet {
    let mut rs = ResultSet::new(columns);
    for (database, (totals, avg)) in per_database(shared) {
        let mut row = vec![text(database)];
        if columns != STATS_AVERAGES {
            row.extend(totals_cells(&totals));
            row.extend([0, 0, 0].map(int));
        }
        if columns != STATS_TOTALS {
            row.extend(totals_cells(&avg));
            row.extend([0, 0, 0].map(int));
        }
        rs.push(row);
    }
    rs
}

/// SHOW TOTALS: the STATS columns summed over all databases, one row per value.
pub fn totals(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[("name", Text), ("value", Int8)]);
    let mut sum = (Totals::default(), Totals::default());
    for (totals, avg) in per_database(shared).values() {
        sum.0.add(totals);
        sum.1.add(avg);
    }
    let mut values = Vec::new();
    values.extend(totals_cells(&sum.0));
    values.extend([0, 0, 0].map(int));
    values.extend(totals_cells(&sum.1));
    values.extend([0, 0, 0].map(int));
    for ((name, _), value) in STATS[1..].iter().zip(values) {
        rs.push(vec![text(*name), value]);
    }
    rs
}

pub fn databases(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(DATABASES);
    let config = shared.snapshot().config.clone();
    let servers = shared.stats.servers.list();
    let clients = shared.stats.clients.list();
    let lifetime = config.server_lifetime.duration().as_secs();
    for (name, entry) in &config.databases {
        let count_servers = servers.iter().filter(|s| &s.pool.database == name).count();
        let count_clients = clients.iter().filter(|c| &c.database == name).count();
        let max = entry
            .max_db_connections
            .unwrap_or(config.max_db_connections);
        let mut row = vec![
            text(name),
            text(&entry.host),
            text(entry.port.to_string()),
            text(entry.dbname.clone().unwrap_or_else(|| name.clone())),
            entry.user.clone(),
            int(entry.pool_size.unwrap_or(config.default_pool_size)),
            int(config.min_pool_size),
            int(config.reserve_pool_size),
            int(lifetime),
            entry.pool_mode.map(|m| pool_mode_name(m).to_owned()),
            text(entry.load_balance_hosts.unwrap_or_default().as_str()),
        ];
        row.extend([max, count_servers, 0, count_clients].map(int));
        row.extend([int(u8::from(shared.pause.is_paused(name))), int(0)]);
        row.push(text(
            entry.target_session_attrs.unwrap_or_default().as_str(),
        ));
        rs.push(row);
    }
    let console_clients = clients.iter().filter(|c| c.database == CONSOLE_DB).count();
    let mut row = vec![text(CONSOLE_DB), None, int(config.listen_port)];
    row.extend([text(CONSOLE_DB), text(CONSOLE_DB), int(2), int(0), int(0)]);
    row.extend([int(0), text("statement"), None, int(0), int(0), int(0)]);
    row.extend([int(console_clients), int(0), int(0), None]);
    rs.push(row);
    rs
}

/// A setting's value as PgBouncer prints it: bare strings, comma-joined lists, 0/1 booleans.
fn show_value(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Boolean(b) => u8::from(*b).to_string(),
        toml::Value::Array(items) => items.iter().map(show_value).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Settings in PgBouncer's order from the redacted summary (which never holds a password).
fn settings(config: &Config) -> Vec<(String, String)> {
    let summary = config.redacted_summary();
    let mut out = Vec::new();
    for line in summary.lines() {
        if line.starts_with('[') {
            break;
        }
        if let Some(name) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            out.push((name.to_owned(), String::new()));
        } else if let Ok(table) = line.parse::<toml::Table>()
            && let Some((name, value)) = table.into_iter().next()
        {
            out.push((name, show_value(&value)));
        }
    }
    out
}

/// Settings that a reload does not change.
const NEEDS_RESTART: &[&str] = &["listen_addr", "listen_port", "metrics_addr"];

pub fn config(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(CONFIG);
    let current = settings(&shared.snapshot().config);
    let defaults: BTreeMap<String, String> = settings(&Config::default()).into_iter().collect();
    for (name, value) in current {
        let default = defaults.get(&name).cloned().unwrap_or_default();
        let changeable = if NEEDS_RESTART.contains(&name.as_str()) {
            "no"
        } else {
            "yes"
        };
        rs.push(vec![
            text(name),
            text(value),
            text(default),
            text(changeable),
        ]);
    }
    rs
}

pub fn lists(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(LISTS);
    let generation = shared.snapshot();
    let used_clients = shared.stats.clients.len();
    let logging_in = shared.admission.pending();
    let items = [
        ("databases", generation.config.databases.len()),
        ("users", generation.users.len()),
        ("peers", 0),
        ("pools", shared.pools.count()),
        ("peer_pools", 0),
        ("free_clients", 0),
        ("used_clients", used_clients),
        ("login_clients", logging_in),
        ("free_servers", 0),
        ("used_servers", shared.stats.servers.len()),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    for (name, n) in items {
        rs.push(vec![text(name), int(n)]);
    }
    rs
}

pub fn version() -> ResultSet {
    let mut rs = ResultSet::new(&[("version", Text)]);
    rs.push(vec![text(format!("pgmoat {}", env!("CARGO_PKG_VERSION")))]);
    rs
}

pub fn state(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[("key", Text), ("value", Text)]);
    let yes_no = |b: bool| text(if b { "yes" } else { "no" });
    let paused = shared.pause.all_paused();
    rs.push(vec![text("active"), yes_no(!paused)]);
    rs.push(vec![text("paused"), yes_no(paused)]);
    rs.push(vec![text("suspended"), yes_no(false)]);
    rs
}

pub fn certs(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(CERTS);
    let generation = shared.snapshot();
    for cert in &generation.tls.certs {
        rs.push(vec![
            text(cert.setting),
            text(&cert.path),
            text(&cert.subject),
            text(&cert.serial),
            timestamp(cert.not_after),
            int(cert.days_left()),
            text("certificate"),
            None,
        ]);
    }
    let now = time::OffsetDateTime::now_utc();
    for crl in &generation.tls.crls {
        rs.push(vec![
            text(crl.setting),
            text(&crl.path),
            text(&crl.issuer),
            crl.number.clone(),
            crl.next_update.and_then(timestamp),
            crl.next_update
                .and_then(|next| int((next - now).whole_days())),
            text(if crl.is_expired() {
                "crl (expired)"
            } else {
                "crl"
            }),
            int(crl.revoked),
        ]);
    }
    rs
}

pub const HELP: &str = "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|VERSION|CERTS|HOSTS\n\
    \tSHOW LISTS|STATE|STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n\
    \tRELOAD\n\tPAUSE [<db>]\n\tRESUME [<db>]\n\tRECONNECT [<db>]\n\tSHUTDOWN";

pub fn hosts(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(super::columns::HOSTS);
    for host in shared.pools.hosts.all() {
        let (status, since) = host.status();
        let error = match &status {
            crate::backend::HostStatus::Down(why) => Some(why.clone()),
            _ => None,
        };
        rs.push(vec![
            text(&host.host),
            int(host.port),
            text(status.name()),
            int(since.elapsed().as_secs()),
            int(host.role_changes()),
            int(host.failures()),
            error,
        ]);
    }
    rs
}
