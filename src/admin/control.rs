//! The commands that change something: RELOAD, PAUSE, RESUME, RECONNECT, SHUTDOWN.

use std::time::Duration;

use crate::protocol::{PgError, SqlState};
use crate::state::Shared;
use crate::stats::ClientState;

/// How often PAUSE looks whether the last server of a database came back.
const PAUSE_POLL: Duration = Duration::from_millis(20);

/// PostgreSQL's codes for "not now" and "the config file is bad".
const OBJECT_NOT_IN_PREREQUISITE_STATE: SqlState = SqlState("55000");
const CONFIG_FILE_ERROR: SqlState = SqlState("F0000");

fn console_error(message: impl Into<String>) -> PgError {
    PgError::error(OBJECT_NOT_IN_PREREQUISITE_STATE, message)
}

/// A database named in PAUSE / RESUME / RECONNECT must be one the config knows.
fn check_database(shared: &Shared, database: Option<&str>, verb: &str) -> Result<(), PgError> {
    let Some(db) = database else { return Ok(()) };
    if super::is_console_database(db) {
        return Err(console_error(format!("cannot {verb} admin db: {db}")));
    }
    if shared.snapshot().config.database(db).is_none() {
        return Err(console_error(format!("no such database: {db}")));
    }
    Ok(())
}

pub fn reload(shared: &Shared) -> Result<&'static str, PgError> {
    tracing::info!("RELOAD command issued");
    crate::reload::reload(shared).map(|()| "RELOAD").map_err(|_| {
        // The reason may quote a config line; it is in the log, not on the wire.
        PgError::error(
            CONFIG_FILE_ERROR,
            "RELOAD failed, see the pgmoat log for details; the previous configuration stays in effect",
        )
    })
}

/// Client connections of `database` (all, for `None`) that hold a server or are being
/// given one; the console's own clients never do.
fn busy_clients(shared: &Shared, database: Option<&str>) -> usize {
    shared
        .stats
        .clients
        .list()
        .iter()
        .filter(|c| database.is_none_or(|db| c.database == db))
        .filter(|c| matches!(c.state(), ClientState::Active | ClientState::Assigning))
        .count()
}

/// Closes the idle servers of `database`'s pools (all pools for `None`).
fn close_idle_servers(shared: &Shared, database: Option<&str>) {
    for pool in shared.pools.all() {
        if database.is_none_or(|db| pool.key.database == db) {
            pool.pool.retain(|_, _| false);
        }
    }
}

/// New checkouts wait from now on; returns once every server of the database came back
/// (then its idle servers are closed, as PgBouncer does, so a restarted PostgreSQL is met
/// with fresh connections).
pub async fn pause(shared: &Shared, database: Option<&str>) -> Result<&'static str, PgError> {
    check_database(shared, database, "pause")?;
    tracing::info!(
        database = database.unwrap_or("(all)"),
        "PAUSE command issued"
    );
    shared
        .pause
        .pause(database)
        .map_err(|e| console_error(e.to_string()))?;
    while busy_clients(shared, database) > 0 {
        if shared.shutdown.is_cancelled() {
            return Err(console_error("pooler is shutting down"));
        }
        tokio::time::sleep(PAUSE_POLL).await;
    }
    close_idle_servers(shared, database);
    Ok("PAUSE")
}

pub fn resume(shared: &Shared, database: Option<&str>) -> Result<&'static str, PgError> {
    tracing::info!(
        database = database.unwrap_or("(all)"),
        "RESUME command issued"
    );
    if shared.shutdown.is_cancelled() {
        return Err(console_error("pooler is shutting down"));
    }
    shared
        .pause
        .resume(database)
        .map(|()| "RESUME")
        .map_err(|e| console_error(e.to_string()))
}

/// Marks every server of the database to be closed instead of reused, and closes the idle
/// ones now; the busy ones close when they come back.
pub fn reconnect(shared: &Shared, database: Option<&str>) -> Result<&'static str, PgError> {
    check_database(shared, database, "reconnect")?;
    tracing::info!(
        database = database.unwrap_or("(all)"),
        "RECONNECT command issued"
    );
    for server in shared.stats.servers.list() {
        if database.is_none_or(|db| server.pool.database == db) {
            server.set_close_needed();
        }
    }
    for pool in shared.pools.all() {
        if database.is_none_or(|db| pool.key.database == db) {
            pool.pool.retain(|conn, _| !crate::pool::close_needed(conn));
        }
    }
    Ok("RECONNECT")
}

/// Graceful, like SIGTERM: lifecycle stops accepting and drains.
pub fn shutdown(shared: &Shared) -> &'static str {
    tracing::info!("SHUTDOWN command issued");
    shared.shutdown.cancel();
    "SHUTDOWN"
}
