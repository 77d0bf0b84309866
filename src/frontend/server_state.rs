//! What a server connection is put through around a client's use of it: the client's settings
//! applied before (`sync_params`), and after, a reset so the next client inherits nothing
//! (`release` in transaction mode, `finish` when the client leaves).

use crate::backend::ServerConn;
use crate::config::PoolMode;
use crate::pool::ServerObject;
use crate::protocol::PgError;
use crate::state::Generation;

/// Applies the client's settings on the server where they differ, and puts back the
/// server's own values of settings an earlier client chose (startup parameters, options,
/// its re-applied SETs) that this client did not: sync_params never marks the server
/// dirty, so nothing else would undo them. set_config takes a value as a startup packet
/// gives it (`SET x = 'a,b'` would make a list setting one quoted element).
pub(super) async fn sync_params(
    params: &[(String, String)],
    server: &mut ServerConn,
) -> Result<(), PgError> {
    let set = |name: &str, value: &str| {
        format!(
            "SELECT pg_catalog.set_config({}, {}, false);",
            quote_literal(name),
            quote_literal(value)
        )
    };
    let mut sql = String::new();
    for (name, value) in params {
        if server.param(name) != Some(value.as_str()) {
            sql.push_str(&set(name, value));
        }
    }
    for (name, value) in &server.params {
        if params.iter().any(|(k, _)| k.eq_ignore_ascii_case(name)) {
            continue;
        }
        match server
            .initial_params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some((_, initial)) if initial == value => {}
            Some((_, initial)) => sql.push_str(&set(name, initial)),
            None => sql.push_str(&format!("RESET {};", quote_ident(name))),
        }
    }
    if sql.is_empty() {
        return Ok(());
    }
    server
        .simple_query(&sql)
        .await
        .map_err(|e| e.to_pg_error())?;
    // Recorded as the client spelt them, so the next checkout compares equal.
    server.params = server.initial_params.clone();
    for (name, value) in params {
        server.set_param(name, value);
    }
    Ok(())
}

/// Transaction mode: the transaction is over. A server whose session state a client changed
/// is reset first, so the next client cannot inherit it.
/// With server_reset_query_always, server_reset_query runs after every transaction, as in
/// PgBouncer.
pub(super) async fn release(mut server: ServerObject, generation: &Generation) {
    let config = &generation.config;
    let always = config.server_reset_query_always && !config.server_reset_query.trim().is_empty();
    let query = match (always, server.dirty) {
        (true, _) => config.server_reset_query.trim(),
        (false, true) => "RESET ALL",
        (false, false) => return,
    };
    if let Err(e) = Box::pin(reset(&mut server, query)).await {
        tracing::warn!(error = %e, "resetting a server connection failed; closing it");
        server.discard();
    }
}

/// The client is gone. A clean server goes back to the pool (after server_reset_query in
/// session mode); anything else is closed, so no half-finished transaction is handed on.
pub(super) async fn finish(
    mut server: ServerObject,
    clean: bool,
    mode: PoolMode,
    generation: &Generation,
) {
    if !clean {
        server.discard();
        return;
    }
    let reset_query = generation.config.server_reset_query.trim();
    let query = match mode {
        PoolMode::Session if !reset_query.is_empty() => Some(reset_query),
        _ if server.dirty => Some("RESET ALL"),
        _ => None,
    };
    if let Some(query) = query
        && let Err(e) = Box::pin(reset(&mut server, query)).await
    {
        tracing::warn!(error = %e, "resetting a server connection failed; closing it");
        server.discard();
    }
}

/// Callers box this future: it runs rarely, and inline it would grow every client's task.
async fn reset(server: &mut ServerConn, query: &str) -> Result<(), crate::backend::BackendError> {
    server.simple_query(query).await?;
    server.params = server.initial_params.clone();
    server.dirty = false;
    if !query.eq_ignore_ascii_case("RESET ALL") {
        // DISCARD ALL (the default reset query) also drops prepared statements; any other
        // query may too, so nothing is assumed prepared afterwards.
        server.statements.clear();
    }
    Ok(())
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    // An E'' literal reads backslashes the same whatever standard_conforming_strings says.
    if value.contains('\\') {
        format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b'c"), "E'a\\\\b''c'");
        assert_eq!(quote_ident("Time\"Zone"), "\"Time\"\"Zone\"");
    }
}
