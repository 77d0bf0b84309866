//! Asking PostgreSQL what session state a client left on a server: its session-level
//! settings (PostgreSQL 15 reports only a few parameters, so they are read back rather than
//! parsed from the client's statements, which also respects a ROLLBACK that reverted a SET)
//! and whatever would pin the server to its client. One round trip, run only after a
//! transaction the keyword scan could not clear (see `relay::effects`).
//!
//! The query is written so that the client cannot make it lie: every function, operator and
//! relation is qualified with pg_catalog, so neither a search_path nor objects of the
//! client's (a temp table called pg_settings, an operator `=` of its own) change its answer.

use super::lifecycle::PinReasons;
use super::{BackendError, ServerConn};
use crate::protocol::ProtocolError;

const PROBE: &str = "\
SELECT s.name, pg_catalog.current_setting(s.name) FROM pg_catalog.pg_settings s \
 WHERE s.source OPERATOR(pg_catalog.=) 'session' \
UNION ALL SELECT 'session_authorization', pg_catalog.current_setting('session_authorization') \
UNION ALL SELECT 'role', pg_catalog.current_setting('role'); \
SELECT (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class \
         WHERE relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()), \
 (SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks \
   WHERE pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() \
     AND locktype OPERATOR(pg_catalog.=) 'advisory'), \
 (SELECT pg_catalog.count(*) FROM pg_catalog.pg_listening_channels()), \
 (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql), \
 (SELECT pg_catalog.count(*) FROM pg_catalog.pg_cursors WHERE is_holdable), \
 (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements WHERE NOT from_sql)";

/// What a server's session holds beyond its login defaults, as PostgreSQL says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSnapshot {
    /// Session-level settings, `session_authorization` first and `role` second when set
    /// (the order they must be applied in), then the rest by name.
    pub settings: Vec<(String, String)>,
    /// What pins the server to its client.
    pub pins: PinReasons,
    /// Protocol-level prepared statements on the server (pgmoat's own, normally): when this
    /// is not what pgmoat believes it prepared there, a client dropped or replaced some.
    pub protocol_statements: u64,
}

impl ServerConn {
    /// Reads the session state back (see the module documentation). `login_user` is the
    /// user the server logged in as: a session_authorization equal to it is no change. The
    /// server's own record of its session settings becomes the answer.
    pub(crate) async fn probe_session(
        &mut self,
        login_user: &str,
    ) -> Result<SessionSnapshot, BackendError> {
        let mut rows = Vec::new();
        self.simple_query_rows(PROBE, Some(&mut rows)).await?;
        let malformed = || BackendError::Protocol {
            addr: self.addr.to_string(),
            source: ProtocolError::Malformed("unexpected answer to pgmoat's session check"),
        };
        let (counts, settings) = rows.split_last().ok_or_else(malformed)?;
        let snapshot = snapshot_from(settings, counts, login_user).ok_or_else(malformed)?;
        self.session_settings = snapshot.settings.clone();
        Ok(snapshot)
    }
}

fn snapshot_from(
    settings: &[Vec<Option<String>>],
    counts: &[Option<String>],
    login_user: &str,
) -> Option<SessionSnapshot> {
    let mut identity = Vec::new();
    let mut rest = Vec::new();
    for row in settings {
        let [Some(name), Some(value)] = row.as_slice() else {
            return None;
        };
        match name.as_str() {
            "session_authorization" if value == login_user => {}
            "role" if value == "none" => {}
            "session_authorization" => identity.insert(0, (name.clone(), value.clone())),
            "role" => identity.push((name.clone(), value.clone())),
            _ => rest.push((name.clone(), value.clone())),
        }
    }
    rest.sort();
    identity.extend(rest);
    if counts.len() != 6 {
        return None;
    }
    let mut pins = PinReasons::empty();
    let reasons = [
        PinReasons::TEMP_TABLE,
        PinReasons::ADVISORY_LOCK,
        PinReasons::LISTEN,
        PinReasons::SQL_PREPARE,
        PinReasons::HOLD_CURSOR,
    ];
    for (count, reason) in counts.iter().zip(reasons) {
        let n: u64 = count.as_deref()?.parse().ok()?;
        if n > 0 {
            pins |= reason;
        }
    }
    let protocol_statements = counts[5].as_deref()?.parse().ok()?;
    Some(SessionSnapshot {
        settings: identity,
        pins,
        protocol_statements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<Option<String>> {
        cells.iter().map(|c| Some(c.to_string())).collect()
    }

    #[test]
    fn identity_comes_first_and_defaults_are_dropped() {
        let settings = [
            row(&["work_mem", "7MB"]),
            row(&["DateStyle", "ISO, MDY"]),
            row(&["session_authorization", "alice"]),
            row(&["role", "tenant_a"]),
        ];
        let counts = row(&["0", "2", "0", "0", "1", "3"]);
        let snap = snapshot_from(&settings, &counts, "boss").unwrap();
        let names: Vec<_> = snap.settings.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["session_authorization", "role", "DateStyle", "work_mem"]
        );
        assert_eq!(
            snap.pins,
            PinReasons::ADVISORY_LOCK | PinReasons::HOLD_CURSOR
        );

        let defaults = [
            row(&["session_authorization", "boss"]),
            row(&["role", "none"]),
        ];
        let snap = snapshot_from(&defaults, &row(&["0"; 6]), "boss").unwrap();
        assert_eq!(snap, SessionSnapshot::default());
        assert!(snapshot_from(&defaults, &row(&["0"; 5]), "boss").is_none());
        assert!(snapshot_from(&[vec![None]], &row(&["0"; 6]), "boss").is_none());
    }
}
