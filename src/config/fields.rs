//! The list of settings, by name: one table drives the TOML reader, the `PGMOAT_*` overrides,
//! the database entries and the redacted summary, so a setting cannot be known to one and
//! missing from another.

use toml::Value;

use super::settings::{Config, DatabaseConfig, PeerConfig};
use super::values::{Input, SettingValue};

/// One named field of `T`: how to set it from an input and how to show it.
pub(crate) struct Field<T> {
    pub name: &'static str,
    pub set: fn(&mut T, Input<'_>) -> Result<(), String>,
    pub get: fn(&T) -> Option<Value>,
}

impl<T> Field<T> {
    pub fn find(fields: &'static [Field<T>], name: &str) -> Option<&'static Field<T>> {
        fields.iter().find(|f| f.name == name)
    }
}

macro_rules! fields {
    ($table:ident: $ty:ty { $($name:ident),* $(,)? }) => {
        pub(crate) const $table: &[Field<$ty>] = &[$(Field {
            name: stringify!($name),
            set: |target, input| {
                target.$name = SettingValue::read(input)?;
                Ok(())
            },
            get: |target| SettingValue::to_value(&target.$name),
        }),*];
    };
}

// PgBouncer's order, so the summary reads like its documentation. `databases` is not here:
// it is a table of entries, read by its own code.
fields!(SETTINGS: Config {
    listen_addr,
    listen_port,
    pool_mode,
    default_pool_size,
    min_pool_size,
    reserve_pool_size,
    reserve_pool_timeout,
    max_client_conn,
    max_pending_logins,
    max_db_connections,
    max_user_connections,
    max_prepared_statements,
    session_state,
    max_pinned_servers,
    server_reset_query,
    server_reset_query_always,
    server_check_query,
    server_check_delay,
    server_lifetime,
    server_idle_timeout,
    server_connect_timeout,
    server_login_retry,
    cancel_wait_timeout,
    query_wait_timeout,
    query_wait_notify,
    client_login_timeout,
    client_idle_timeout,
    idle_transaction_timeout,
    query_timeout,
    transaction_timeout,
    autodb_idle_timeout,
    shutdown_timeout,
    max_packet_size,
    auth_type,
    auth_file,
    auth_hba_file,
    auth_ident_file,
    auth_ident_map,
    auth_cert_identity,
    admin_users,
    stats_users,
    client_tls_sslmode,
    client_tls_cert_file,
    client_tls_key_file,
    client_tls_ca_file,
    client_tls_crl_file,
    client_tls_protocols,
    server_tls_sslmode,
    server_tls_ca_file,
    server_tls_cert_file,
    server_tls_key_file,
    server_tls_crl_file,
    server_tls_protocols,
    server_channel_binding,
    tls_crl_expired,
    tls_crl_unknown_status,
    metrics_addr,
    cert_expiry_warn_days,
    watch_files,
    worker_threads,
    so_reuseport,
    peer_listen_port,
    peer_id,
});

fields!(PEER_FIELDS: PeerConfig {
    host,
    port,
    pool_size,
});

fields!(DATABASE_FIELDS: DatabaseConfig {
    host,
    port,
    dbname,
    user,
    password,
    pool_size,
    pool_mode,
    max_db_connections,
    session_state,
    max_pinned_servers,
    idle_transaction_timeout,
    query_timeout,
    transaction_timeout,
    auth_ident_map,
    target_session_attrs,
    load_balance_hosts,
    server_tls_sslmode,
    server_tls_ca_file,
    server_tls_cert_file,
    server_tls_key_file,
});

/// The closest known name to a mistyped one, when it is close enough to be a typo.
pub(crate) fn suggest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 4))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_listed_once() {
        // The summary and the env overrides walk SETTINGS: a missing field would silently be
        // neither shown nor overridable. Serialize lists every field of Config.
        // TOML leaves out `None`s, so every optional setting gets a value first.
        let config = Config {
            auth_file: Some("a".into()),
            auth_hba_file: Some("a".into()),
            auth_ident_file: Some("a".into()),
            auth_ident_map: Some("a".into()),
            client_tls_crl_file: Some("a".into()),
            server_tls_crl_file: Some("a".into()),
            client_tls_cert_file: Some("a".into()),
            client_tls_key_file: Some("a".into()),
            client_tls_ca_file: Some("a".into()),
            server_tls_ca_file: Some("a".into()),
            server_tls_cert_file: Some("a".into()),
            server_tls_key_file: Some("a".into()),
            metrics_addr: Some("a:1".into()),
            max_pinned_servers: Some(1),
            ..Config::default()
        };
        let Value::Table(all) = Value::try_from(config).unwrap() else {
            panic!("Config does not serialize to a table");
        };
        let mut expected: Vec<&str> = all
            .keys()
            .map(String::as_str)
            .filter(|k| !matches!(*k, "source" | "databases" | "peers"))
            .collect();
        let mut listed: Vec<&str> = SETTINGS.iter().map(|f| f.name).collect();
        expected.sort_unstable();
        listed.sort_unstable();
        assert_eq!(listed, expected);
    }

    #[test]
    fn every_database_field_is_listed() {
        let entry = DatabaseConfig {
            host: "h".into(),
            port: super::super::Ports(vec![1]),
            dbname: Some("d".into()),
            user: Some("u".into()),
            password: Some("p".into()),
            pool_size: Some(1),
            pool_mode: Some(super::super::PoolMode::Session),
            max_db_connections: Some(1),
            session_state: Some(super::super::SessionState::Reset),
            max_pinned_servers: Some(1),
            idle_transaction_timeout: Some(super::super::Seconds(1.0)),
            query_timeout: Some(super::super::Seconds(1.0)),
            transaction_timeout: Some(super::super::Seconds(1.0)),
            auth_ident_map: Some("m".into()),
            target_session_attrs: Some(super::super::TargetSessionAttrs::Standby),
            load_balance_hosts: Some(super::super::LoadBalanceHosts::Random),
            server_tls_sslmode: Some(super::super::SslMode::VerifyCa),
            server_tls_ca_file: Some("c".into()),
            server_tls_cert_file: Some("c".into()),
            server_tls_key_file: Some("k".into()),
        };
        let Value::Table(all) = Value::try_from(entry).unwrap() else {
            panic!("DatabaseConfig does not serialize to a table");
        };
        let listed: Vec<&str> = DATABASE_FIELDS.iter().map(|f| f.name).collect();
        let mut keys: Vec<&str> = all.keys().map(String::as_str).collect();
        let mut sorted = listed.clone();
        keys.sort_unstable();
        sorted.sort_unstable();
        assert_eq!(sorted, keys);
    }

    #[test]
    fn suggests_close_names_only() {
        let names = SETTINGS.iter().map(|f| f.name);
        assert_eq!(suggest("listen_prot", names.clone()), Some("listen_port"));
        assert_eq!(
            suggest("default_poolsize", names.clone()),
            Some("default_pool_size")
        );
        assert_eq!(suggest("frobnicate", names), None);
    }
}
