use std::path::PathBuf;

use super::*;
use crate::config::{AuthType, PoolMode, Ports, Seconds, SslMode, TlsVersion};

const FILE: &str = "config/pgmoat.toml";

/// Settings that make a config valid without any file on disk; tests add lines to it.
const BASE: &str = r#"
client_tls_sslmode = "disable"
server_tls_sslmode = "require"
auth_type = "trust"

[databases]
app = "host=pg"
"#;

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml_str_with(text, Path::new(FILE), FileChecks::Skip)
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn env_only(vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let mut all = env(&[
        ("PGMOAT_CLIENT_TLS_SSLMODE", "disable"),
        ("PGMOAT_SERVER_TLS_SSLMODE", "require"),
        ("PGMOAT_AUTH_TYPE", "trust"),
    ]);
    all.extend(env(vars));
    Config::load_with(None, all, FileChecks::Skip)
}

fn single(errors: ConfigErrors) -> ConfigError {
    assert_eq!(errors.len(), 1, "{errors}");
    errors.0.into_iter().next().unwrap()
}

#[test]
fn defaults_fill_what_the_file_leaves_out() {
    let config = parse(BASE).unwrap();
    let expected = Config {
        source: Some(PathBuf::from(FILE)),
        client_tls_sslmode: SslMode::Disable,
        server_tls_sslmode: SslMode::Require,
        auth_type: AuthType::Trust,
        databases: config.databases.clone(),
        ..Config::default()
    };
    assert_eq!(config, expected);
    assert_eq!(config.listen_port, 6432);
    assert_eq!(config.pool_mode, PoolMode::Transaction);
    assert_eq!(config.server_lifetime, Seconds(3600.0));
    assert_eq!(
        config.client_tls_protocols,
        [TlsVersion::Tls12, TlsVersion::Tls13]
    );
}

#[test]
fn every_kind_of_setting_from_toml() {
    let text = format!(
        "listen_addr = \"0.0.0.0\"\nlisten_port = 7432\npool_mode = \"session\"\n\
         server_idle_timeout = 2.5\nserver_reset_query_always = true\n\
         admin_users = [\"ops\", \"dba\"]\nauth_file = \"users.txt\"\n\
         client_tls_protocols = \"tlsv1.3\"\nmetrics_addr = \"127.0.0.1:9187\"\n{BASE}"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.listen_addr, "0.0.0.0");
    assert_eq!(config.listen_port, 7432);
    assert_eq!(config.pool_mode, PoolMode::Session);
    assert_eq!(config.server_idle_timeout, Seconds(2.5));
    assert!(config.server_reset_query_always);
    assert_eq!(config.admin_users, ["ops", "dba"]);
    assert_eq!(config.auth_file, Some(PathBuf::from("users.txt")));
    assert_eq!(config.client_tls_protocols, [TlsVersion::Tls13]);
    assert_eq!(config.metrics_addr.as_deref(), Some("127.0.0.1:9187"));
}

#[test]
fn databases_as_tables_strings_and_fallback() {
    let text = r#"
client_tls_sslmode = "disable"
server_tls_sslmode = "require"
auth_type = "trust"

[databases]
short = "host=localhost port=6543 dbname=app user=x password='p w' pool_size=5 pool_mode=session"
"*" = "host=fallback"

[databases.app]
host = "localhost"
dbname = "app_prod"
pool_size = 3
max_db_connections = 10
"#;
    let config = parse(text).unwrap();
    let app = &config.databases["app"];
    assert_eq!(app.host, "localhost");
    assert_eq!(app.port, Ports(vec![5432]), "port defaults to 5432");
    assert_eq!(app.dbname.as_deref(), Some("app_prod"));
    assert_eq!(app.pool_size, Some(3));
    assert_eq!(app.max_db_connections, Some(10));
    let short = &config.databases["short"];
    assert_eq!(short.port, Ports(vec![6543]));
    assert_eq!(short.password.as_deref(), Some("p w"));
    assert_eq!(short.pool_mode, Some(PoolMode::Session));
    assert_eq!(config.database("other").unwrap().host, "fallback");
    assert_eq!(config.database("app").unwrap().host, "localhost");
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let text = format!("{BASE}\n[databases.other]\nhost = \"pg\"\npoolsize = 4\n");
    let error = single(parse(&format!("listen_prot = 7432\n{BASE}")).unwrap_err());
    assert_eq!((error.key.as_str(), error.line), ("listen_prot", Some(1)));
    assert!(
        error.reason.contains("did you mean `listen_port`"),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "config/pgmoat.toml:1: listen_prot: unknown setting; did you mean `listen_port`?"
    );
    let errors = parse(&format!("listen_prot = 7432\n{text}")).unwrap_err();
    assert_eq!(errors.len(), 2, "both unknown keys are reported: {errors}");
    let error = single(parse(&text).unwrap_err());
    assert_eq!(error.key, "databases.other.poolsize");
    assert_eq!(error.line, Some(11));
    assert!(error.reason.contains("did you mean `pool_size`"), "{error}");
}

#[test]
fn every_read_error_is_collected_with_its_line() {
    let text = format!(
        "listen_port = \"6432\"\nserver_lifetime = -5\nclient_tls_protocols = \"tlsv1.1\"\n\
         bogus = 1\n{BASE}bad = \"host=pg port=x\"\nworse = 5\n"
    );
    let errors = parse(&text).unwrap_err();
    let found: Vec<(&str, Option<usize>)> =
        errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        found,
        [
            ("listen_port", Some(1)),
            ("server_lifetime", Some(2)),
            ("client_tls_protocols", Some(3)),
            ("bogus", Some(4)),
            ("databases.bad.port", Some(12)),
            ("databases.worse", Some(13)),
        ],
        "{errors}"
    );
    assert!(
        errors.0[0]
            .reason
            .contains("expected an integer, found string")
    );
    assert!(errors.0[2].reason.contains("refused"));
}

#[test]
fn a_wrong_type_names_both_types() {
    let error = single(parse(&format!("admin_users = \"ops\"\n{BASE}")).unwrap_err());
    assert_eq!(error.key, "admin_users");
    assert!(error.reason.contains("found string"), "{error}");
    let error = single(parse("databases = 5").unwrap_err());
    assert_eq!(error.key, "databases");
}

#[test]
fn syntax_errors_keep_line_and_key() {
    let error = single(parse("listen_port = 6432\nlisten_addr = \"open\n").unwrap_err());
    assert_eq!(error.line, Some(2), "{error}");
    assert_eq!(error.key, "listen_addr");
    assert_eq!(error.origin, FILE);
    assert!(error.reason.starts_with("TOML syntax:"), "{error}");
    let errors = parse("a = 1\na = 2\n[x\n").unwrap_err();
    let lines: Vec<Option<usize>> = errors.iter().map(|e| e.line).collect();
    assert_eq!(
        lines,
        [Some(2), Some(3)],
        "every syntax error, in file order: {errors}"
    );
    assert_eq!(errors.0[0].key, "a");
}

#[test]
fn validation_errors_point_at_the_setting_that_needs_them() {
    let text = format!("{BASE}\n").replace(
        "client_tls_sslmode = \"disable\"",
        "client_tls_sslmode = \"verify-ca\"\nclient_tls_cert_file = \"c\"\n\
         client_tls_key_file = \"k\"",
    );
    let error = single(parse(&text).unwrap_err());
    assert_eq!(
        error.to_string(),
        "config/pgmoat.toml:2: client_tls_ca_file: verify-ca needs a CA file to check client \
         certificates against"
    );
    let text = BASE.replace("app = \"host=pg\"", "[databases.app]\nport = 1");
    let error = single(parse(&text).unwrap_err());
    assert_eq!(
        (error.key.as_str(), error.line),
        ("databases.app.host", Some(7))
    );
}

#[test]
fn env_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgmoat.toml");
    std::fs::write(&path, format!("listen_port = 7000\n{BASE}")).unwrap();
    let vars = env(&[
        ("PGMOAT_LISTEN_PORT", "7432"),
        ("PGMOAT_ADMIN_USERS", "a, b"),
        ("PGMOAT_SERVER_IDLE_TIMEOUT", "1.5"),
        ("PGMOAT_DATABASES__APP", "host=elsewhere port=5433"),
        ("PGMOAT_CONFIG", "ignored: belongs to the command line"),
        ("HOME", "/root"),
    ]);
    let config = Config::load_with(Some(&path), vars, FileChecks::Skip).unwrap();
    assert_eq!(config.listen_port, 7432);
    assert_eq!(config.admin_users, ["a", "b"]);
    assert_eq!(config.server_idle_timeout, Seconds(1.5));
    assert_eq!(config.databases["app"].host, "elsewhere");
    assert_eq!(config.databases["app"].port, Ports(vec![5433]));
    assert_eq!(config.source, Some(path));
}

#[test]
fn env_only_config_with_databases() {
    let config = env_only(&[
        ("PGMOAT_CLIENT_TLS_SSLMODE", "disable"),
        (
            "PGMOAT_DATABASES__APP",
            "host=pg dbname=app user=x password=y pool_size=5 pool_mode=session",
        ),
        ("PGMOAT_DATABASES_FALLBACK", "host=pg"),
    ])
    .unwrap();
    assert_eq!(config.source, None);
    let app = &config.databases["app"];
    assert_eq!(
        (app.user.as_deref(), app.password.as_deref()),
        (Some("x"), Some("y"))
    );
    assert_eq!(app.pool_size, Some(5));
    assert_eq!(config.databases["*"].host, "pg");
}

#[test]
fn env_errors_name_the_variable() {
    let errors = env_only(&[
        ("PGMOAT_LISTEN_PROT", "7432"),
        ("PGMOAT_LISTEN_PORT", "seventy"),
        ("PGMOAT_DATABASES__APP", "host=pg prot=1"),
        ("PGMOAT_DATABASES", "app"),
    ])
    .unwrap_err();
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 4, "{errors}");
    assert!(text[0].starts_with("environment variable PGMOAT_DATABASES: databases:"));
    assert!(text[1].starts_with("environment variable PGMOAT_DATABASES__APP: databases.app.prot:"));
    assert!(text[2].starts_with("environment variable PGMOAT_LISTEN_PORT: listen_port:"));
    assert_eq!(
        text[3],
        "environment variable PGMOAT_LISTEN_PROT: listen_prot: unknown setting; did you mean \
         `PGMOAT_LISTEN_PORT`?"
    );
    assert!(errors.iter().all(|e| e.line.is_none()));
}

#[test]
fn validation_errors_name_the_variable_that_set_the_value() {
    let error = single(
        env_only(&[
            ("PGMOAT_DATABASES__APP", "host=pg"),
            ("PGMOAT_LISTEN_PORT", "0"),
        ])
        .unwrap_err(),
    );
    assert_eq!(error.origin, "environment variable PGMOAT_LISTEN_PORT");
    let error = single(env_only(&[]).unwrap_err());
    assert_eq!(
        (error.origin.as_str(), error.key.as_str()),
        ("environment", "databases")
    );
    let error = single(env_only(&[("PGMOAT_DATABASES__APP", "port=5433")]).unwrap_err());
    assert_eq!(error.origin, "environment variable PGMOAT_DATABASES__APP");
    assert_eq!(error.key, "databases.app.host");
}

#[test]
fn file_problems_are_reported_by_load() {
    let missing = Path::new("/nonexistent/pgmoat.toml");
    let error = single(Config::load(Some(missing), Vec::new()).unwrap_err());
    assert_eq!(error.origin, "/nonexistent/pgmoat.toml");
    assert!(error.reason.contains("No such file"), "{error}");
    let text = format!("auth_type = \"md5\"\nauth_file = \"/nonexistent/userlist.txt\"\n{BASE}")
        .replace("auth_type = \"trust\"\n", "");
    let error = single(Config::from_toml_str(&text, Path::new(FILE)).unwrap_err());
    assert_eq!((error.key.as_str(), error.line), ("auth_file", Some(2)));
}

#[test]
fn the_reference_config_loads() {
    let text = include_str!("../../../config/pgmoat.toml");
    let config = parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert!(!config.databases.is_empty());
    // Every setting is written out in the reference, so nothing is undocumented.
    for field in SETTINGS {
        let written = text.lines().any(|l| {
            l.trim_start_matches(['#', ' '])
                .starts_with(&format!("{} =", field.name))
        });
        assert!(written, "{} is not in config/pgmoat.toml", field.name);
    }
}

#[test]
fn peers_are_read_and_checked() {
    let text = format!(
        "peer_id = 2\n{BASE}\n[peers.1]\nhost = \"pgmoat-0\"\n\n[peers.2]\nhost = \"pgmoat-1\"\nport = 6433\npool_size = 4\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.peer_id, 2);
    assert_eq!(config.peers[&1].port, 6432);
    assert_eq!(config.peers[&2].pool_size, Some(4));

    let bad = format!("{BASE}\n[peers.x]\nhost = \"a\"\n");
    let err = single(parse(&bad).unwrap_err());
    assert_eq!(err.key, "peers.x");
    let bad = format!("peer_id = 1\n{BASE}\n[peers.1]\nhost = \"a\"\nhots = 1\n");
    let err = single(parse(&bad).unwrap_err());
    assert_eq!(err.key, "peers.1.hots");
    let bad = format!("{BASE}\n[peers.1]\nhost = \"a\"\n");
    let err = single(parse(&bad).unwrap_err());
    assert_eq!(err.key, "peer_id");
    assert!(err.reason.contains("peer_id is not"), "{}", err.reason);
    let bad = format!("peer_id = 20000\n{BASE}");
    assert_eq!(single(parse(&bad).unwrap_err()).key, "peer_id");
}
