//! The text pgcluster writes: postgresql.auto.conf, pg_hba.conf and the SQL that creates roles
//! and databases, with PostgreSQL's quoting rules in one place.

use std::path::Path;

use super::{PgUser, SERVER_CA, SERVER_CERT, SERVER_KEY};

/// The pg_hba.conf a cluster gets unless told otherwise. There is deliberately no plain `host`
/// line: PostgreSQL refuses unencrypted TCP, so a test can prove that nothing downgrades.
pub fn default_hba() -> Vec<String> {
    [
        "local   all all                   trust",
        "hostssl all certuser 127.0.0.1/32 cert",
        "hostssl all all      127.0.0.1/32 scram-sha-256",
    ]
    .map(String::from)
    .to_vec()
}

/// pg_hba.conf text. The harness administers the cluster as `postgres` over the Unix socket,
/// so that line always comes first whatever the caller's rules say; `all` does not match
/// replication connections, so pg_basebackup and standbys (also local) get their own line.
pub(crate) fn hba_file(lines: &[String]) -> String {
    let mut text = String::from(
        "# written by pgmoat's pgcluster\n\
         local all postgres trust\n\
         local replication postgres trust\n",
    );
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// postgresql.auto.conf text: settings for a fast, TLS-only throwaway server, then the caller's
/// extras (later lines win in PostgreSQL's config files).
pub(crate) fn auto_conf(
    listen: &str,
    port: u16,
    socket_dir: &Path,
    extra: &[(String, String)],
) -> String {
    let port = port.to_string();
    let socket_dir = socket_dir.display().to_string();
    let base: [(&str, &str); 17] = [
        ("listen_addresses", listen),
        ("port", &port),
        ("unix_socket_directories", &socket_dir),
        // Durability is worthless for a cluster that is deleted afterwards; speed is not.
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("full_page_writes", "off"),
        ("ssl", "on"),
        ("ssl_cert_file", SERVER_CERT),
        ("ssl_key_file", SERVER_KEY),
        ("ssl_ca_file", SERVER_CA),
        ("password_encryption", "scram-sha-256"),
        // Integration tests open many connections at once, through pgmoat and around it.
        ("max_connections", "200"),
        ("log_connections", "on"),
        ("log_line_prefix", "%m [%p] %q%u@%d "),
        ("log_min_messages", "info"),
        ("timezone", "UTC"),
        ("log_timezone", "UTC"),
    ];
    let extra = extra.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let mut text = String::from("# written by pgmoat's pgcluster\n");
    text.push_str(&setting_lines(base.into_iter().chain(extra)));
    text
}

/// `name = 'value'` lines, in order.
pub(crate) fn setting_lines<'a>(settings: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut text = String::new();
    for (name, value) in settings {
        // Quoting every value is valid for every setting type and keeps odd values intact.
        text.push_str(&format!("{name} = {}\n", literal(value)));
    }
    text
}

/// A single-quoted SQL / config string literal.
pub(crate) fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A double-quoted SQL identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// CREATE ROLE for a user. The password goes in as a SCRAM verifier, so the plain password
/// never reaches psql's arguments, the server log or an error message.
pub(crate) fn create_role(user: &PgUser) -> String {
    let mut sql = format!("CREATE ROLE {} LOGIN", ident(&user.name));
    if user.superuser {
        sql.push_str(" SUPERUSER");
    }
    if let Some(password) = &user.password {
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        sql.push_str(&format!(" PASSWORD {}", literal(&verifier)));
    }
    sql.push(';');
    sql
}

pub(crate) fn create_database(name: &str) -> String {
    let db = ident(name);
    format!(
        "CREATE DATABASE {db} OWNER postgres;\nGRANT CONNECT, TEMPORARY ON DATABASE {db} TO PUBLIC;"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn role_sql_carries_a_verifier_not_the_password() {
        let user = PgUser::with_password("alice", "alice-secret");
        let sql = create_role(&user);
        assert!(sql.starts_with("CREATE ROLE \"alice\" LOGIN PASSWORD 'SCRAM-SHA-256$4096:"));
        assert!(!sql.contains("alice-secret"), "{sql}");
        let su = PgUser {
            superuser: true,
            ..PgUser::without_password("root'ish")
        };
        assert_eq!(
            create_role(&su),
            "CREATE ROLE \"root'ish\" LOGIN SUPERUSER;"
        );
    }

    #[test]
    fn extras_come_after_the_base_settings_and_are_quoted() {
        let conf = auto_conf(
            "127.0.0.2",
            5433,
            Path::new("/tmp/x"),
            &[("max_connections".into(), "50".into())],
        );
        assert!(conf.contains("listen_addresses = '127.0.0.2'\n"));
        assert!(conf.contains("port = '5433'\n"));
        assert!(conf.contains("unix_socket_directories = '/tmp/x'\n"));
        let base = conf.find("max_connections = '200'").unwrap();
        let extra = conf.find("max_connections = '50'").unwrap();
        assert!(extra > base);
    }

    #[test]
    fn hba_keeps_the_admin_line_first() {
        let text = hba_file(&["hostssl all all 127.0.0.1/32 cert".into()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "local all postgres trust");
        assert_eq!(lines[2], "local replication postgres trust");
        assert_eq!(lines[3], "hostssl all all 127.0.0.1/32 cert");
    }
}
