use std::collections::BTreeMap;
use std::io::Write;

use super::*;
use crate::config::{DatabaseConfig, Ports, Seconds};

/// Valid without any file: TLS towards clients off, towards PostgreSQL without a CA, trust.
fn valid() -> Config {
    let entry = DatabaseConfig {
        host: "pg".into(),
        ..DatabaseConfig::default()
    };
    Config {
        client_tls_sslmode: SslMode::Disable,
        server_tls_sslmode: SslMode::Require,
        auth_type: AuthType::Trust,
        databases: BTreeMap::from([("app".to_string(), entry)]),
        ..Config::default()
    }
}

fn keys(config: &Config) -> Vec<String> {
    problems(config, FileChecks::Skip)
        .into_iter()
        .map(|p| p.key)
        .collect()
}

fn reason(config: &Config, key: &str) -> String {
    problems(config, FileChecks::Skip)
        .into_iter()
        .find(|p| p.key == key)
        .map(|p| p.reason)
        .unwrap_or_else(|| panic!("no problem with {key}"))
}

#[test]
fn the_base_config_is_valid() {
    assert_eq!(keys(&valid()), Vec::<String>::new());
    assert_eq!(valid().validate(), Ok(()));
}

#[test]
fn the_defaults_alone_list_every_missing_piece() {
    // Default: client TLS require, server verify-full, scram: all need files; no databases.
    let found = keys(&Config::default());
    assert_eq!(
        found,
        [
            "client_tls_cert_file",
            "auth_file",
            "server_tls_ca_file",
            "databases"
        ]
    );
}

#[test]
fn client_tls_needs_a_cert_and_for_verify_a_ca() {
    // The key may sit in the certificate file: only the certificate is required.
    for mode in [SslMode::Allow, SslMode::Prefer, SslMode::Require] {
        let config = Config {
            client_tls_sslmode: mode,
            ..valid()
        };
        assert_eq!(keys(&config), ["client_tls_cert_file"]);
    }
    for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
        let config = Config {
            client_tls_sslmode: mode,
            client_tls_cert_file: Some("c".into()),
            client_tls_key_file: Some("k".into()),
            ..valid()
        };
        assert_eq!(keys(&config), ["client_tls_ca_file"]);
        assert!(reason(&config, "client_tls_ca_file").contains("check client certificates"));
    }
}

#[test]
fn cert_auth_needs_verified_clients() {
    let config = Config {
        auth_type: AuthType::Cert,
        ..valid()
    };
    assert_eq!(keys(&config), ["auth_type"]);
    let config = Config {
        auth_type: AuthType::Cert,
        client_tls_sslmode: SslMode::VerifyCa,
        client_tls_cert_file: Some("c".into()),
        client_tls_key_file: Some("k".into()),
        client_tls_ca_file: Some("ca".into()),
        ..valid()
    };
    assert_eq!(keys(&config), Vec::<String>::new());
}

#[test]
fn password_auth_needs_an_auth_file() {
    for auth_type in [AuthType::Md5, AuthType::ScramSha256] {
        let config = Config {
            auth_type,
            ..valid()
        };
        assert_eq!(keys(&config), ["auth_file"]);
        let config = Config {
            auth_file: Some("userlist.txt".into()),
            ..config
        };
        assert_eq!(keys(&config), Vec::<String>::new());
    }
}

#[test]
fn server_tls_verify_needs_a_ca_and_cert_key_come_together() {
    for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
        let config = Config {
            server_tls_sslmode: mode,
            ..valid()
        };
        assert_eq!(keys(&config), ["server_tls_ca_file"]);
    }
    // A combined PEM: the certificate file holds the key.
    let only_cert = Config {
        server_tls_cert_file: Some("c".into()),
        ..valid()
    };
    assert_eq!(keys(&only_cert), Vec::<String>::new());
    let only_key = Config {
        server_tls_key_file: Some("k".into()),
        ..valid()
    };
    assert_eq!(keys(&only_key), ["server_tls_cert_file"]);
}

#[test]
fn pool_limits_and_port() {
    let config = Config {
        default_pool_size: 0,
        ..valid()
    };
    // min_pool_size 0 <= 0 is fine; only the zero pool size is wrong.
    assert_eq!(keys(&config), ["default_pool_size"]);
    let config = Config {
        default_pool_size: 5,
        min_pool_size: 6,
        ..valid()
    };
    assert_eq!(keys(&config), ["min_pool_size"]);
    let config = Config {
        listen_port: 0,
        max_client_conn: 0,
        ..valid()
    };
    assert_eq!(keys(&config), ["max_client_conn", "listen_port"]);
}

#[test]
fn timeouts_built_in_code_are_checked() {
    let config = Config {
        server_lifetime: Seconds(-1.0),
        query_wait_timeout: Seconds(f64::INFINITY),
        ..valid()
    };
    assert_eq!(keys(&config), ["server_lifetime", "query_wait_timeout"]);
}

#[test]
fn listen_and_metrics_addresses() {
    for good in [
        "127.0.0.1",
        "::",
        "0.0.0.0",
        "localhost",
        "pgmoat.internal",
        "my_db",
    ] {
        let config = Config {
            listen_addr: good.into(),
            ..valid()
        };
        assert_eq!(keys(&config), Vec::<String>::new(), "{good}");
    }
    for bad in ["", "*", "0.0.0.0,::", "-bad", "a..b", "[::1]"] {
        let config = Config {
            listen_addr: bad.into(),
            ..valid()
        };
        assert_eq!(keys(&config), ["listen_addr"], "{bad}");
    }
    assert!(
        reason(
            &Config {
                listen_addr: "*".into(),
                ..valid()
            },
            "listen_addr"
        )
        .contains("0.0.0.0")
    );
    for good in ["127.0.0.1:9187", "[::1]:9187", "localhost:9187"] {
        let config = Config {
            metrics_addr: Some(good.into()),
            ..valid()
        };
        assert_eq!(keys(&config), Vec::<String>::new(), "{good}");
    }
    for bad in ["127.0.0.1", "localhost:0", ":9187", "host:port"] {
        let config = Config {
            metrics_addr: Some(bad.into()),
            ..valid()
        };
        assert_eq!(keys(&config), ["metrics_addr"], "{bad}");
    }
}

#[test]
fn database_entries() {
    let config = Config {
        databases: BTreeMap::new(),
        ..valid()
    };
    assert_eq!(keys(&config), ["databases"]);
    let mut config = valid();
    config.databases.insert(
        "bad".into(),
        DatabaseConfig {
            host: " ".into(),
            pool_size: Some(0),
            ..DatabaseConfig::default()
        },
    );
    config.databases.insert(
        "hosts".into(),
        DatabaseConfig {
            host: "pg1,pg2,pg3".into(),
            port: Ports(vec![1, 2]),
            pool_size: Some(0),
            ..DatabaseConfig::default()
        },
    );
    assert_eq!(
        keys(&config),
        [
            "databases.bad.host",
            "databases.bad.pool_size",
            "databases.hosts.port",
            "databases.hosts.pool_size"
        ]
    );
}

#[test]
fn named_files_must_be_readable() {
    let dir = tempfile::tempdir().unwrap();
    let present = dir.path().join("userlist.txt");
    std::fs::File::create(&present)
        .unwrap()
        .write_all(b"\"a\" \"b\"\n")
        .unwrap();
    let missing = dir.path().join("missing.crt");
    let config = Config {
        auth_type: AuthType::ScramSha256,
        auth_file: Some(present),
        server_tls_ca_file: Some(missing.clone()),
        client_tls_ca_file: Some(dir.path().to_path_buf()),
        ..valid()
    };
    assert_eq!(keys(&config), Vec::<String>::new(), "files are skipped");
    let found = problems(&config, FileChecks::Check);
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["client_tls_ca_file", "server_tls_ca_file"]);
    assert!(
        found[0].reason.contains("is a directory"),
        "{}",
        found[0].reason
    );
    // The reason names the OS error and the path.
    assert!(
        found[1].reason.contains("No such file"),
        "{}",
        found[1].reason
    );
    assert!(found[1].reason.contains(&missing.display().to_string()));
}

#[test]
fn validate_collects_every_error_with_the_source_as_origin() {
    let config = Config {
        source: Some("etc/pgmoat.toml".into()),
        listen_port: 0,
        default_pool_size: 0,
        ..valid()
    };
    let errors = config.validate().unwrap_err();
    assert_eq!(errors.len(), 2);
    for error in &errors {
        assert_eq!(error.origin, "etc/pgmoat.toml");
        assert_eq!(error.line, None);
    }
    let env_only = Config {
        listen_port: 0,
        ..valid()
    };
    assert_eq!(env_only.validate().unwrap_err().0[0].origin, "environment");
}

#[test]
fn identity_and_revocation_settings_need_their_files() {
    let mut config = valid();
    config.auth_type = AuthType::Hba;
    config.auth_ident_map = Some("m".into());
    config.databases.get_mut("app").unwrap().auth_ident_map = Some("m".into());
    config.client_tls_crl_file = Some("crl".into());
    config.server_tls_crl_file = Some("crl".into());
    assert_eq!(
        keys(&config),
        [
            "client_tls_crl_file",
            "auth_hba_file",
            "auth_ident_map",
            "databases.app.auth_ident_map",
            "server_tls_crl_file",
        ]
    );
    assert!(reason(&config, "server_tls_crl_file").contains("verify-ca or verify-full"));
    // An hba file without auth_type = hba would be silently unused.
    let config = Config {
        auth_hba_file: Some("hba".into()),
        ..valid()
    };
    assert_eq!(keys(&config), ["auth_hba_file"]);
}

#[test]
fn a_database_entry_may_verify_on_its_own() {
    let mut config = valid();
    let entry = config.databases.get_mut("app").unwrap();
    entry.server_tls_sslmode = Some(SslMode::VerifyFull);
    entry.server_tls_key_file = Some("k".into());
    assert_eq!(
        keys(&config),
        [
            "databases.app.server_tls_ca_file",
            "databases.app.server_tls_key_file"
        ]
    );
    let entry = config.databases.get_mut("app").unwrap();
    entry.server_tls_ca_file = Some("system".into());
    entry.server_tls_cert_file = Some("c".into());
    config.server_tls_crl_file = Some("crl".into());
    // The CRL now has a verifying database to work for.
    assert_eq!(keys(&config), Vec::<String>::new());
}
