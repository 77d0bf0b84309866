//! PgBouncer-style connection strings for database entries (`host=db port=5432 dbname=app`),
//! used by the TOML string form and by `PGMOAT_DATABASES__<NAME>`, and written back with the
//! password replaced by `***`.

use std::fmt;

use super::fields::{DATABASE_FIELDS, Field};
use super::settings::{DatabaseConfig, Ports};
use super::values::{Input, value_text};

/// Shown instead of a password anywhere pgmoat prints a configuration.
pub const REDACTED: &str = "***";

/// Splits `key=value key='quoted value'` into pairs, the libpq way: single quotes around a
/// value, backslash escaping a quote or a backslash, spaces around `=` allowed.
pub(crate) fn split_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            // The stray word is not echoed: it may be part of a password written unquoted.
            let place = match pairs.last() {
                Some((previous, _)) => format!("after `{previous}`"),
                None => "at the start".into(),
            };
            return Err(format!(
                "a word {place} has no `=`: expected key=value pairs (quote values with spaces)"
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if_eq(&'\'').is_some();
        loop {
            match chars.next() {
                None if quoted => return Err(format!("the value of `{key}` has no closing quote")),
                None => break,
                Some('\'') if quoted => break,
                Some(c) if c.is_whitespace() && !quoted => break,
                Some('\\') => match chars.next() {
                    Some(escaped) => value.push(escaped),
                    None => return Err(format!("the value of `{key}` ends with a backslash")),
                },
                Some(c) => value.push(c),
            }
        }
        if pairs.iter().any(|(k, _)| *k == key) {
            return Err(format!("`{key}` is given twice"));
        }
        pairs.push((key, value));
    }
}

/// A value written so that `split_pairs` reads it back unchanged.
fn quote(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        return value.to_owned();
    }
    let mut quoted = String::from("'");
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

impl Default for DatabaseConfig {
    /// An entry with only PgBouncer's default port; `host` must still be given.
    fn default() -> Self {
        DatabaseConfig {
            host: String::new(),
            port: Ports::default(),
            dbname: None,
            user: None,
            password: None,
            pool_size: None,
            pool_mode: None,
            max_db_connections: None,
            session_state: None,
            max_pinned_servers: None,
            idle_transaction_timeout: None,
            query_timeout: None,
            transaction_timeout: None,
            auth_ident_map: None,
            target_session_attrs: None,
            load_balance_hosts: None,
            server_tls_sslmode: None,
            server_tls_ca_file: None,
            server_tls_cert_file: None,
            server_tls_key_file: None,
        }
    }
}

impl DatabaseConfig {
    /// Reads a PgBouncer connection string. Errors are `(field, reason)` for every bad pair.
    pub fn from_connstr(text: &str) -> Result<DatabaseConfig, Vec<(String, String)>> {
        let pairs = split_pairs(text).map_err(|reason| vec![(String::new(), reason)])?;
        let mut entry = DatabaseConfig::default();
        let mut errors = Vec::new();
        for (key, value) in &pairs {
            match Field::find(DATABASE_FIELDS, key) {
                Some(field) => {
                    if let Err(reason) = (field.set)(&mut entry, Input::Text(value)) {
                        errors.push((key.clone(), reason));
                    }
                }
                None => errors.push((key.clone(), unknown_field(key))),
            }
        }
        if errors.is_empty() {
            Ok(entry)
        } else {
            Err(errors)
        }
    }

    /// The entry as a connection string, password shown as `***`: safe to log or print.
    pub fn redacted(&self) -> String {
        let mut parts = Vec::new();
        for field in DATABASE_FIELDS {
            let Some(value) = (field.get)(self) else {
                continue;
            };
            let text = if field.name == "password" {
                REDACTED.to_owned()
            } else {
                quote(&value_text(&value))
            };
            parts.push(format!("{}={text}", field.name));
        }
        parts.join(" ")
    }

    /// The database to ask PostgreSQL for when a client asked for `requested`.
    pub fn server_dbname<'a>(&'a self, requested: &'a str) -> &'a str {
        self.dbname.as_deref().unwrap_or(requested)
    }
}

pub(crate) fn unknown_field(key: &str) -> String {
    let mut reason = format!("unknown database setting `{key}`");
    let names = DATABASE_FIELDS.iter().map(|f| f.name);
    if let Some(close) = super::fields::suggest(key, names) {
        reason.push_str(&format!("; did you mean `{close}`?"));
    } else {
        let names: Vec<&str> = DATABASE_FIELDS.iter().map(|f| f.name).collect();
        reason.push_str(&format!(", expected one of: {}", names.join(", ")));
    }
    reason
}

/// Never shows the password, so a `{:?}` of a config in a log line cannot leak it.
impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("pool_size", &self.pool_size)
            .field("pool_mode", &self.pool_mode)
            .field("session_state", &self.session_state)
            .field("max_pinned_servers", &self.max_pinned_servers)
            .field("idle_transaction_timeout", &self.idle_transaction_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("transaction_timeout", &self.transaction_timeout)
            .field("max_db_connections", &self.max_db_connections)
            .field("auth_ident_map", &self.auth_ident_map)
            .field("server_tls_sslmode", &self.server_tls_sslmode)
            .field("server_tls_ca_file", &self.server_tls_ca_file)
            .field("server_tls_cert_file", &self.server_tls_cert_file)
            .field("server_tls_key_file", &self.server_tls_key_file)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolMode;

    #[test]
    fn reads_every_field() {
        let entry = DatabaseConfig::from_connstr(
            "host=pg port=5433 dbname=app user=x password=y pool_size=5 pool_mode=session \
             max_db_connections=9",
        )
        .unwrap();
        assert_eq!(
            entry,
            DatabaseConfig {
                host: "pg".into(),
                port: Ports(vec![5433]),
                dbname: Some("app".into()),
                user: Some("x".into()),
                password: Some("y".into()),
                pool_size: Some(5),
                pool_mode: Some(PoolMode::Session),
                max_db_connections: Some(9),
                session_state: None,
                max_pinned_servers: None,
                ..DatabaseConfig::default()
            }
        );
    }

    #[test]
    fn port_defaults_to_5432() {
        let entry = DatabaseConfig::from_connstr("host=localhost").unwrap();
        assert_eq!(entry.port, Ports(vec![5432]));
        assert_eq!(entry.dbname, None);
    }

    #[test]
    fn quotes_escapes_and_spaces_around_equals() {
        let pairs = split_pairs(r"host = pg password='it\'s a \\ secret'  user=a\ b").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("host".to_string(), "pg".to_string()),
                ("password".to_string(), r"it's a \ secret".to_string()),
                ("user".to_string(), "a b".to_string()),
            ]
        );
    }

    #[test]
    fn malformed_strings_are_refused() {
        assert!(split_pairs("host").unwrap_err().contains("at the start"));
        let error = split_pairs("password=abc def user=x").unwrap_err();
        assert!(error.contains("after `password`"), "{error}");
        assert!(
            !error.contains("def"),
            "part of a password is echoed: {error}"
        );
        assert!(
            split_pairs("password='open")
                .unwrap_err()
                .contains("closing quote")
        );
        assert!(split_pairs("host=a host=b").unwrap_err().contains("twice"));
    }

    #[test]
    fn unknown_and_bad_fields_are_all_reported() {
        let errors = DatabaseConfig::from_connstr("host=pg prot=5432 pool_size=many auth_user=x")
            .unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["prot", "pool_size", "auth_user"]);
        assert!(
            errors[0].1.contains("did you mean `port`"),
            "{}",
            errors[0].1
        );
    }

    #[test]
    fn redacted_hides_the_password_and_reads_back() {
        let text = "host=pg port=5432 dbname='my db' user=x password=s3cret pool_mode=transaction";
        let entry = DatabaseConfig::from_connstr(text).unwrap();
        let shown = entry.redacted();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("password=***"), "{shown}");
        assert!(!format!("{entry:?}").contains("s3cret"));
        let mut back = DatabaseConfig::from_connstr(&shown).unwrap();
        back.password = entry.password.clone();
        assert_eq!(back, entry);
    }

    #[test]
    fn server_dbname_falls_back_to_the_requested_name() {
        let entry = DatabaseConfig::from_connstr("host=pg").unwrap();
        assert_eq!(entry.server_dbname("wanted"), "wanted");
        let entry = DatabaseConfig::from_connstr("host=pg dbname=real").unwrap();
        assert_eq!(entry.server_dbname("wanted"), "real");
    }
}
