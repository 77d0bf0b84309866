//! The hosts behind a database entry: what role each server plays (primary or standby), as
//! judged at login, and each address's health, shared by every pool that logs in there.
//!
//! A server's role comes from what PostgreSQL reports at login: since version 14 it sends
//! `in_hot_standby` and `default_transaction_read_only` as ParameterStatus, so no round trip
//! is needed; older servers are asked with one query. The health record of an address holds
//! a failure count: a connection made before the latest failure there is suspect (a sibling
//! of a connection that just died, or one on a server that turned into a standby), so pools
//! retire it instead of lending it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{BackendError, ServerConn};
use crate::config::TargetSessionAttrs;

/// What a server is, as far as target_session_attrs cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerRole {
    /// In recovery: a hot standby.
    pub standby: bool,
    /// default_transaction_read_only is on (writes refused unless a transaction asks).
    pub read_only: bool,
}

impl ServerRole {
    pub const PRIMARY: ServerRole = ServerRole {
        standby: false,
        read_only: false,
    };

    /// From the parameters a server reported; `None` when it did not report in_hot_standby
    /// (PostgreSQL before 14).
    pub fn from_params(params: &[(String, String)]) -> Option<ServerRole> {
        let find = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let standby = find("in_hot_standby")? == "on";
        let read_only = find("default_transaction_read_only") == Some("on");
        Some(ServerRole { standby, read_only })
    }

    /// The name shown in SHOW SERVERS, SHOW HOSTS and the logs.
    pub fn name(self) -> &'static str {
        match (self.standby, self.read_only) {
            (false, false) => "primary",
            (false, true) => "primary (read-only)",
            (true, _) => "standby",
        }
    }

    /// libpq's meaning of each value. prefer-standby accepts anything here: its preference
    /// is the order in which hosts are tried (see [`TargetSessionAttrs::prefers`]).
    pub fn suits(self, attrs: TargetSessionAttrs) -> bool {
        match attrs {
            TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby => true,
            TargetSessionAttrs::ReadWrite => !self.standby && !self.read_only,
            TargetSessionAttrs::ReadOnly => self.standby || self.read_only,
            TargetSessionAttrs::Primary => !self.standby,
            TargetSessionAttrs::Standby => self.standby,
        }
    }

    /// For prefer-standby: a server that is not what is preferred, taken only when no
    /// preferred one answers.
    pub fn second_choice(self, attrs: TargetSessionAttrs) -> bool {
        attrs == TargetSessionAttrs::PreferStandby && !self.standby
    }
}

/// Asks a server that does not report its role (PostgreSQL before 14).
const ROLE_QUERY: &str = "SELECT pg_catalog.pg_is_in_recovery()::text, pg_catalog.current_setting('default_transaction_read_only')";

/// The recheck after a 25006: the server-wide setting, not the session's.
const RECHECK_QUERY: &str = "SELECT pg_catalog.pg_is_in_recovery()::text, (SELECT reset_val FROM pg_catalog.pg_settings WHERE name = 'default_transaction_read_only')";

impl ServerConn {
    /// The role of this server right after login: from its ParameterStatus, or asked.
    pub async fn learn_role(&mut self) -> Result<ServerRole, BackendError> {
        if let Some(role) = ServerRole::from_params(&self.initial_params) {
            return Ok(role);
        }
        let mut rows = Vec::new();
        self.simple_query_rows(ROLE_QUERY, Some(&mut rows)).await?;
        match rows.as_slice() {
            [row] => match row.as_slice() {
                [Some(recovery), Some(read_only)] => Ok(ServerRole {
                    standby: recovery == "true",
                    read_only: read_only == "on",
                }),
                _ => Err(self.malformed_role()),
            },
            _ => Err(self.malformed_role()),
        }
    }

    /// After a 25006 from a server that logged in as a writable primary: is it still one?
    /// The server-wide default_transaction_read_only (its `reset_val`, which a client's own
    /// SET does not change) and recovery are asked. `Ok(true)` when its role changed: the
    /// host's other connections are retired with it and the next login judges the host.
    pub async fn role_changed_since_login(&mut self) -> Result<bool, BackendError> {
        self.recheck_role = false;
        let Some(was) = self.role else {
            return Ok(false);
        };
        let mut rows = Vec::new();
        self.simple_query_rows(RECHECK_QUERY, Some(&mut rows))
            .await?;
        let now = match rows.as_slice() {
            [row] => match row.as_slice() {
                [Some(recovery), Some(read_only)] => ServerRole {
                    standby: recovery == "true",
                    read_only: read_only == "on",
                },
                _ => return Err(self.malformed_role()),
            },
            _ => return Err(self.malformed_role()),
        };
        if now == was {
            return Ok(false);
        }
        if let Some((host, _)) = &self.host
            && host.role_changed(was).is_some()
        {
            tracing::warn!(host = %host.addr_string(), was = %was.name(), now = %now.name(), "host role changed: a read-only error (25006) was confirmed; its connections are retired");
        }
        Ok(true)
    }

    /// The role the server reports now, when it reports one: a promotion shows as
    /// in_hot_standby turning off on a standby's open connections. A client's own `SET
    /// default_transaction_read_only` is not a change of role, so only in_hot_standby
    /// counts here.
    pub fn reported_standby(&self) -> Option<bool> {
        self.param("in_hot_standby").map(|v| v == "on")
    }

    /// PostgreSQL ended this connection under a client. A crash (57P02: every backend
    /// there is being reset) or a refusal of new work (57P03) marks the host down at once,
    /// which retires its other connections there. An administrator's shutdown request
    /// (57P01) or a lost connection could be the whole server going away or just this one
    /// backend ended (pg_terminate_backend says 57P01 too): the host is checked with a
    /// connection attempt, and marked down only when that fails.
    pub fn report_lost(&self, code: Option<&str>, why: &str, connect_timeout: Duration) {
        let Some((host, _)) = &self.host else {
            return;
        };
        if matches!(code, Some("57P02" | "57P03")) {
            if let Some(was) = host.failed(why.to_owned()) {
                tracing::warn!(host = %host.addr_string(), was = %was.name(), error = %why, "host is down: a server connection there was lost; its other connections are retired");
            }
            return;
        }
        let Some(check) = host.begin_check() else {
            // A check is already under way.
            return;
        };
        let (host, why) = (host.clone(), why.to_owned());
        tokio::spawn(async move {
            let attempt = tokio::time::timeout(
                connect_timeout,
                tokio::net::TcpStream::connect((host.host.as_str(), host.port)),
            )
            .await;
            let failure = match attempt {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!(
                    "no answer within server_connect_timeout ({} s)",
                    connect_timeout.as_secs_f64()
                )),
            };
            drop(check);
            match failure {
                None => {
                    tracing::info!(host = %host.addr_string(), error = %why, "a server connection was lost, but the host answers: only that connection is closed")
                }
                Some(e) => {
                    let reason = format!("{why}; connecting again: {e}");
                    if let Some(was) = host.failed(reason) {
                        tracing::warn!(host = %host.addr_string(), was = %was.name(), error = %why, check = %e, "host is down: a server connection there was lost and the host does not answer; its other connections are retired");
                    }
                }
            }
        });
    }

    fn malformed_role(&self) -> BackendError {
        BackendError::Protocol {
            addr: self.addr.to_string(),
            source: crate::protocol::ProtocolError::Malformed(
                "unexpected answer to pgmoat's question of whether the server is a standby",
            ),
        }
    }
}

/// What is known of one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostStatus {
    /// Nothing yet: no connection tried.
    Unknown,
    /// The last login there worked; the server was this.
    Up(ServerRole),
    /// The last attempt failed, or a server there was lost; the reason, for SHOW HOSTS.
    Down(String),
}

impl HostStatus {
    pub fn name(&self) -> &str {
        match self {
            HostStatus::Unknown => "unknown",
            HostStatus::Up(role) => role.name(),
            HostStatus::Down(_) => "down",
        }
    }
}

/// One host:port of a database entry, shared by every pool that connects there.
#[derive(Debug)]
pub struct HostHealth {
    pub host: String,
    pub port: u16,
    state: Mutex<Known>,
    /// Bumped by every failure seen there: connections made before it are retired.
    failures: AtomicU64,
    /// Times a login found another role than the last one there (promotions, demotions).
    role_changes: AtomicU64,
    /// A check of whether the host still answers is under way (see
    /// [`ServerConn::report_lost`]): one at a time, however many connections were lost.
    checking: AtomicBool,
}

/// The one check under way of a host; dropping it allows the next.
pub struct HostCheck(Arc<HostHealth>);

impl Drop for HostCheck {
    fn drop(&mut self) {
        self.0.checking.store(false, Ordering::Release);
    }
}

#[derive(Debug)]
struct Known {
    status: HostStatus,
    since: Instant,
    /// The role of the last login there, kept while the host is down, so a promotion
    /// behind an outage still counts as a change.
    last_role: Option<ServerRole>,
}

/// What a login there changed, for the caller to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The host is up again (or for the first time) with the role it had.
    Up { was: HostStatus },
    /// The server there is something else now than at the last login.
    Role { was: ServerRole },
}

impl HostHealth {
    pub fn new(host: String, port: u16) -> HostHealth {
        HostHealth {
            host,
            port,
            state: Mutex::new(Known {
                status: HostStatus::Unknown,
                since: Instant::now(),
                last_role: None,
            }),
            failures: AtomicU64::new(0),
            role_changes: AtomicU64::new(0),
            checking: AtomicBool::new(false),
        }
    }

    /// Starts the check of whether the host answers, unless one is under way.
    pub fn begin_check(self: &Arc<Self>) -> Option<HostCheck> {
        (!self.checking.swap(true, Ordering::AcqRel)).then(|| HostCheck(self.clone()))
    }

    pub fn addr_string(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The status and since when it holds.
    pub fn status(&self) -> (HostStatus, Instant) {
        let known = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (known.status.clone(), known.since)
    }

    /// The role the last login there found, if it is up.
    pub fn role(&self) -> Option<ServerRole> {
        match self.status().0 {
            HostStatus::Up(role) => Some(role),
            _ => None,
        }
    }

    /// How many failures have been seen there: a connection remembers it at login.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }

    /// Logins that found another role than the one before (failovers, switchovers).
    pub fn role_changes(&self) -> u64 {
        self.role_changes.load(Ordering::Relaxed)
    }

    /// A login there, begun at `started`, worked and found `role`. A login begun before the
    /// host was last seen in another role is older news (logins run concurrently while a
    /// standby is being promoted) and does not flip it back.
    pub fn logged_in(&self, role: ServerRole, started: Instant) -> Option<Change> {
        let mut known = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if started < known.since && matches!(known.status, HostStatus::Up(now) if now != role) {
            return None;
        }
        let change = match known.last_role {
            Some(was) if was != role => {
                self.role_changes.fetch_add(1, Ordering::Relaxed);
                Some(Change::Role { was })
            }
            _ if known.status != HostStatus::Up(role) => Some(Change::Up {
                was: known.status.clone(),
            }),
            _ => None,
        };
        if known.status != HostStatus::Up(role) {
            known.status = HostStatus::Up(role);
            known.since = Instant::now();
        }
        known.last_role = Some(role);
        change
    }

    /// A connection attempt failed, or a server there was lost: every connection made
    /// there before now is retired. Returns the previous status when this changes it.
    pub fn failed(&self, why: String) -> Option<HostStatus> {
        self.failures.fetch_add(1, Ordering::AcqRel);
        let mut known = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let previous = match &known.status {
            HostStatus::Down(_) => None,
            other => Some(other.clone()),
        };
        if previous.is_some() {
            known.since = Instant::now();
        }
        known.status = HostStatus::Down(why);
        previous
    }

    /// A server there that logged in as `was` is something else now (in_hot_standby
    /// changed, or a confirmed 25006). News only while the host is still known as `was`:
    /// then its connections there are retired and the next login says what it is now (and
    /// counts the change). When a newer login already saw the new role, nothing changes:
    /// the connections made since are fine, and older ones find out for themselves.
    pub fn role_changed(&self, was: ServerRole) -> Option<HostStatus> {
        let mut known = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if known.status != HostStatus::Up(was) {
            return None;
        }
        self.failures.fetch_add(1, Ordering::AcqRel);
        known.since = Instant::now();
        Some(std::mem::replace(&mut known.status, HostStatus::Unknown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn role_from_reported_parameters() {
        let standby = params(&[
            ("in_hot_standby", "on"),
            ("default_transaction_read_only", "off"),
        ]);
        let role = ServerRole::from_params(&standby).unwrap();
        assert!(role.standby && !role.read_only);
        let primary = params(&[
            ("in_hot_standby", "off"),
            ("default_transaction_read_only", "off"),
        ]);
        assert_eq!(ServerRole::from_params(&primary), Some(ServerRole::PRIMARY));
        assert_eq!(
            ServerRole::from_params(&params(&[("server_version", "13.1")])),
            None
        );
    }

    #[test]
    fn libpq_meanings() {
        use TargetSessionAttrs::*;
        let standby = ServerRole {
            standby: true,
            read_only: false,
        };
        let read_only_primary = ServerRole {
            standby: false,
            read_only: true,
        };
        let primary = ServerRole::PRIMARY;
        assert!(primary.suits(ReadWrite) && !standby.suits(ReadWrite));
        assert!(!read_only_primary.suits(ReadWrite));
        assert!(read_only_primary.suits(ReadOnly) && standby.suits(ReadOnly));
        assert!(!primary.suits(ReadOnly));
        assert!(read_only_primary.suits(Primary) && !standby.suits(Primary));
        assert!(standby.suits(Standby) && !primary.suits(Standby));
        for role in [primary, standby, read_only_primary] {
            assert!(role.suits(Any) && role.suits(PreferStandby));
        }
        assert!(primary.second_choice(PreferStandby) && !standby.second_choice(PreferStandby));
        assert!(!primary.second_choice(Any));
    }

    #[test]
    fn failures_retire_earlier_connections_and_report_changes_once() {
        let host = HostHealth::new("pg1".into(), 5432);
        assert_eq!(host.status().0, HostStatus::Unknown);
        let standby = ServerRole {
            standby: true,
            read_only: false,
        };
        assert_eq!(
            host.logged_in(standby, Instant::now()),
            Some(Change::Up {
                was: HostStatus::Unknown
            })
        );
        assert_eq!(host.logged_in(standby, Instant::now()), None);
        let before = host.failures();
        assert!(host.failed("refused".into()).is_some());
        assert!(host.failed("refused again".into()).is_none());
        assert_eq!(host.failures(), before + 2);
        assert_eq!(host.role(), None);
        // Promoted while it was down: a change of role, counted once.
        assert_eq!(
            host.logged_in(ServerRole::PRIMARY, Instant::now()),
            Some(Change::Role { was: standby })
        );
        assert_eq!(host.role_changes(), 1);
        assert_eq!(host.logged_in(ServerRole::PRIMARY, Instant::now()), None);
        // A login that began before the promotion was seen is stale: no flip back.
        let stale = host.status().1 - std::time::Duration::from_millis(1);
        assert_eq!(host.logged_in(standby, stale), None);
        assert_eq!(host.role(), Some(ServerRole::PRIMARY));
        assert_eq!(host.role_changes(), 1);
        // An old standby connection finding out late is no news: the host stays primary.
        let failures = host.failures();
        assert_eq!(host.role_changed(standby), None);
        assert_eq!(
            (host.role(), host.failures()),
            (Some(ServerRole::PRIMARY), failures)
        );
        assert_eq!(
            host.role_changed(ServerRole::PRIMARY),
            Some(HostStatus::Up(ServerRole::PRIMARY))
        );
        assert_eq!(host.failures(), failures + 1);
    }
}
