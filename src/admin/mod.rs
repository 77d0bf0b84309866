//! The admin console: the virtual databases `pgbouncer` and `pgmoat` speak PgBouncer's
//! commands (SHOW ..., RELOAD, PAUSE, RESUME, RECONNECT, SHUTDOWN) over the simple query
//! protocol. admin_users may do everything, stats_users only SHOW.

mod columns;
mod command;
mod control;
mod result;
mod show;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::config::Config;
use crate::protocol::frame::{MAX_LOGIN_MESSAGE, read_message, take_cstr};
use crate::protocol::messages::{command_complete, ready_for_query, write_message};
use crate::protocol::{PgError, Severity, SqlState};
use crate::state::Shared;
use crate::stats::ClientRegistration;
use crate::stream::Stream;

pub use crate::pool::{PauseError, PauseGate};
pub use columns::{CERTS, CONFIG, DATABASES, HOSTS, LISTS, POOLS, SOCKETS, STATS};
pub use command::{Command, ParseError, Show, parse};
pub use result::{ResultSet, Type};

/// Database names that reach the console instead of a pool.
pub const CONSOLE_DATABASES: [&str; 2] = ["pgbouncer", "pgmoat"];

pub fn is_console_database(name: &str) -> bool {
    CONSOLE_DATABASES.contains(&name)
}

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// admin_users: every command.
    Admin,
    /// stats_users: SHOW only.
    Stats,
}

impl Role {
    pub fn of(config: &Config, user: &str) -> Option<Role> {
        if config.admin_users.iter().any(|u| u == user) {
            Some(Role::Admin)
        } else if config.stats_users.iter().any(|u| u == user) {
            Some(Role::Stats)
        } else {
            None
        }
    }
}

/// Runs one console command and appends the reply (not the ReadyForQuery) to `out`.
pub async fn execute(shared: &Shared, role: Role, sql: &str, out: &mut BytesMut) {
    let command = match parse(sql) {
        Ok(command) => command,
        Err(e) => {
            let code = match e {
                ParseError::Unknown(_) => SqlState::SYNTAX_ERROR,
                ParseError::Set => SqlState::FEATURE_NOT_SUPPORTED,
            };
            PgError::error(code, e.to_string())
                .with_hint("SHOW HELP lists the commands")
                .encode(out);
            return;
        }
    };
    if command.needs_admin() && role != Role::Admin {
        PgError::error(SqlState::INSUFFICIENT_PRIVILEGE, "admin access needed").encode(out);
        return;
    }
    let done = match command {
        Command::Empty => {
            write_message(out, b'I', |_| {});
            return;
        }
        Command::Show(what) => {
            show_command(shared, what, out);
            return;
        }
        Command::SetIgnored => {
            notice("SET ignored", None).encode(out);
            Ok("SET")
        }
        Command::Reload => control::reload(shared),
        Command::Pause(db) => control::pause(shared, db.as_deref()).await,
        Command::Resume(db) => control::resume(shared, db.as_deref()),
        Command::Reconnect(db) => control::reconnect(shared, db.as_deref()),
        Command::Shutdown => Ok(control::shutdown(shared)),
    };
    match done {
        Ok(tag) => command_complete(out, tag),
        Err(e) => e.encode(out),
    }
}

fn notice(message: &str, detail: Option<&str>) -> PgError {
    PgError {
        severity: Severity::Notice,
        code: SqlState("00000"),
        message: message.to_owned(),
        detail: detail.map(str::to_owned),
        hint: None,
    }
}

fn show_command(shared: &Shared, what: Show, out: &mut BytesMut) {
    let rs = match what {
        Show::Help => {
            notice("Console usage", Some(show::HELP)).encode(out);
            command_complete(out, "SHOW");
            return;
        }
        Show::Pools => show::pools(shared),
        Show::Clients => show::clients(shared),
        Show::Servers => show::servers(shared),
        Show::Stats => show::stats(shared, columns::STATS),
        Show::StatsTotals => show::stats(shared, columns::STATS_TOTALS),
        Show::StatsAverages => show::stats(shared, columns::STATS_AVERAGES),
        Show::Totals => show::totals(shared),
        Show::Databases => show::databases(shared),
        Show::Config => show::config(shared),
        Show::Lists => show::lists(shared),
        Show::Version => show::version(),
        Show::State => show::state(shared),
        Show::Certs => show::certs(shared),
        Show::Hosts => show::hosts(shared),
    };
    rs.encode(out, "SHOW");
}

/// A logged-in console connection.
pub struct AdminSession {
    stream: Stream,
    shared: Arc<Shared>,
    role: Role,
    _registration: ClientRegistration,
}

impl AdminSession {
    pub fn new(
        stream: Stream,
        shared: Arc<Shared>,
        role: Role,
        registration: ClientRegistration,
    ) -> Self {
        AdminSession {
            stream,
            shared,
            role,
            _registration: registration,
        }
    }

    /// Answers queries until the client leaves or pgmoat shuts down. Extended-protocol
    /// messages get one error and are skipped up to Sync, so the connection stays usable.
    pub async fn run(mut self) {
        let mut buf = BytesMut::new();
        let mut out = BytesMut::new();
        let mut skipping = false;
        loop {
            let read = tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => {
                    self.close(PgError::fatal(SqlState::ADMIN_SHUTDOWN, "pgmoat is shutting down")).await;
                    return;
                }
                read = read_message(&mut self.stream, &mut buf, MAX_LOGIN_MESSAGE) => read,
            };
            let msg = match read {
                Ok(msg) => msg,
                Err(e) if e.is_closed() => return,
                Err(e) => {
                    self.close(PgError::fatal(SqlState::PROTOCOL_VIOLATION, e.to_string()))
                        .await;
                    return;
                }
            };
            match msg.tag {
                b'Q' => {
                    let mut body = &msg.body[..];
                    match take_cstr(&mut body) {
                        Ok(sql) => execute(&self.shared, self.role, sql, &mut out).await,
                        Err(e) => PgError::error(SqlState::PROTOCOL_VIOLATION, e.to_string())
                            .encode(&mut out),
                    }
                    ready_for_query(&mut out, b'I');
                }
                b'X' => return,
                b'S' => {
                    skipping = false;
                    ready_for_query(&mut out, b'I');
                }
                b'H' => {}
                b'P' | b'B' | b'D' | b'E' | b'C' => {
                    if !skipping {
                        skipping = true;
                        extended_refused().encode(&mut out);
                    }
                }
                b'F' => {
                    extended_refused().encode(&mut out);
                    ready_for_query(&mut out, b'I');
                }
                other => {
                    self.close(PgError::fatal(
                        SqlState::PROTOCOL_VIOLATION,
                        format!("unexpected message type '{}'", other as char),
                    ))
                    .await;
                    return;
                }
            }
            if !out.is_empty() {
                if self.stream.write_all(&out).await.is_err() || self.stream.flush().await.is_err()
                {
                    return;
                }
                out.clear();
            }
        }
    }

    async fn close(&mut self, err: PgError) {
        let _ = self.stream.write_all(&err.to_bytes()).await;
        let _ = self.stream.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

fn extended_refused() -> PgError {
    PgError::error(
        SqlState::FEATURE_NOT_SUPPORTED,
        "the admin console supports only the simple query protocol",
    )
}

#[cfg(test)]
mod tests;
