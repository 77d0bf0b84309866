//! A client's session settings on whichever server it gets: applied before its first
//! statement there (`sync_settings`), and learnt back from PostgreSQL after a transaction that
//! may have changed them (`merge_snapshot`). What the previous client of that server set is
//! undone in the same round trip, so nothing of its session reaches the next client.

use crate::backend::{BackendError, ServerConn};

/// `session_authorization` and `role` go first (setting the former resets the latter), and
/// are compared as one: if either differs, both are reset and applied again.
const IDENTITY: [&str; 2] = ["session_authorization", "role"];

fn find<'a>(settings: &'a [(String, String)], name: &str) -> Option<&'a str> {
    settings
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn is_identity(name: &str) -> bool {
    IDENTITY.iter().any(|i| i.eq_ignore_ascii_case(name))
}

/// The SQL that turns the server's known session settings into `wanted` (empty: nothing to
/// do). set_config takes a value as a startup packet gives it (`SET x = 'a,b'` would make a
/// list setting one quoted element).
pub(super) fn sync_sql(wanted: &[(String, String)], server: &ServerConn) -> String {
    let have = &server.session_settings;
    let set = |sql: &mut String, name: &str, value: &str| {
        sql.push_str(&format!(
            "SELECT pg_catalog.set_config({}, {}, false);",
            quote_literal(name),
            quote_literal(value)
        ));
    };
    let mut sql = String::new();
    let identity_differs = IDENTITY
        .iter()
        .any(|name| find(wanted, name) != find(have, name));
    if identity_differs {
        if find(have, "session_authorization").is_some() {
            sql.push_str("RESET SESSION AUTHORIZATION;");
        }
        if find(have, "role").is_some() {
            sql.push_str("RESET ROLE;");
        }
        for name in IDENTITY {
            if let Some(value) = find(wanted, name) {
                set(&mut sql, name, value);
            }
        }
    }
    for (name, _) in have {
        if !is_identity(name) && find(wanted, name).is_none() {
            sql.push_str(&format!("RESET {};", quote_ident(name)));
        }
    }
    for (name, value) in wanted {
        if is_identity(name) || find(have, name) == Some(value.as_str()) {
            continue;
        }
        // A reported parameter already at the wanted value on this server (the login
        // default) needs nothing.
        if find(have, name).is_none() && server.param(name) == Some(value.as_str()) {
            continue;
        }
        set(&mut sql, name, value);
    }
    sql
}

/// Applies the client's settings on the server where they differ, and undoes what another
/// client set there that this one did not. The statements run in one implicit transaction,
/// so on an error (a bad value) nothing changed.
pub(super) async fn sync_settings(
    wanted: &[(String, String)],
    server: &mut ServerConn,
) -> Result<(), BackendError> {
    let sql = sync_sql(wanted, server);
    if sql.is_empty() {
        return Ok(());
    }
    server.simple_query(&sql).await?;
    server.session_settings = wanted
        .iter()
        .filter(|(name, value)| {
            find(&server.initial_params, name) != Some(value.as_str()) || is_identity(name)
        })
        .cloned()
        .collect();
    Ok(())
}

/// A client's settings after PostgreSQL reported its session's: the startup packet's
/// settings are what RESET returns to (as with PostgreSQL directly), overlaid with what the
/// session has now. Identity first, as in the snapshot.
pub(super) fn merge_snapshot(
    startup: &[(String, String)],
    snapshot: &[(String, String)],
) -> Vec<(String, String)> {
    let mut merged: Vec<(String, String)> = snapshot.to_vec();
    for (name, value) in startup {
        if find(snapshot, name).is_none() && !is_identity(name) {
            merged.push((name.clone(), value.clone()));
        }
    }
    merged
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

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn startup_settings_come_back_after_a_reset() {
        let startup = pairs(&[("application_name", "app"), ("search_path", "s")]);
        let snapshot = pairs(&[("role", "r"), ("search_path", "t")]);
        assert_eq!(
            merge_snapshot(&startup, &snapshot),
            pairs(&[
                ("role", "r"),
                ("search_path", "t"),
                ("application_name", "app")
            ])
        );
    }
}
