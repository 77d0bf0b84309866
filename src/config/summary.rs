//! The effective configuration as TOML, for `pgmoat check-config` and logs: every setting with
//! its value (defaults included), database passwords replaced by `***`.

use toml::Value;

use super::connstr::REDACTED;
use super::fields::SETTINGS;
use super::settings::Config;

/// A TOML key: bare when it can be, quoted otherwise (`"*"`).
fn toml_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_owned()
    } else {
        Value::String(name.to_owned()).to_string()
    }
}

impl Config {
    /// Settings that are valid but dangerous together, each with what to do about it:
    /// `check-config` prints them and `run` logs them as warnings.
    pub fn warnings(&self) -> Vec<String> {
        use super::{AuthType, SslMode};
        let mut warnings = Vec::new();
        let certificates_required = matches!(
            self.client_tls_sslmode,
            SslMode::VerifyCa | SslMode::VerifyFull
        );
        if self.auth_type == AuthType::Trust
            && !certificates_required
            && !self.admin_users.is_empty()
        {
            warnings.push(format!(
                "auth_type = \"trust\" with client_tls_sslmode = \"{}\" and admin_users set: anyone \
                 who reaches {}:{} can log in to the admin console as {} and run SHUTDOWN; \
                 require client certificates (client_tls_sslmode = \"verify-full\") or use \
                 another auth_type",
                self.client_tls_sslmode.as_str(),
                self.listen_addr,
                self.listen_port,
                self.admin_users.join(", ")
            ));
        }
        warnings
    }

    /// Reads back as a config file, except that passwords are `***`.
    pub fn redacted_summary(&self) -> String {
        let from = match &self.source {
            Some(path) => format!("{} and PGMOAT_* environment variables", path.display()),
            None => "PGMOAT_* environment variables".into(),
        };
        let mut lines = vec![format!(
            "# effective pgmoat configuration from {from}; passwords are shown as {REDACTED}"
        )];
        for field in SETTINGS {
            lines.push(match (field.get)(self) {
                Some(value) => format!("{} = {value}", field.name),
                None => format!("# {} is not set", field.name),
            });
        }
        lines.push(String::new());
        lines.push("[databases]".into());
        for (name, entry) in &self.databases {
            let value = Value::String(entry.redacted());
            lines.push(format!("{} = {value}", toml_key(name)));
        }
        lines.push(String::new());
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{DatabaseConfig, FileChecks};

    fn config_with(databases: &[(&str, &str)]) -> Config {
        let mut config = Config {
            client_tls_sslmode: crate::config::SslMode::Disable,
            server_tls_sslmode: crate::config::SslMode::Require,
            auth_type: crate::config::AuthType::Trust,
            admin_users: vec!["ops".into(), "o'brien".into()],
            reserve_pool_timeout: crate::config::Seconds(2.5),
            ..Config::default()
        };
        for (name, connstr) in databases {
            let entry = DatabaseConfig::from_connstr(connstr).unwrap();
            config.databases.insert((*name).into(), entry);
        }
        config
    }

    #[test]
    fn hides_passwords() {
        let config = config_with(&[("app", "host=pg user=app password=hunter2")]);
        let summary = config.redacted_summary();
        assert!(!summary.contains("hunter2"), "{summary}");
        assert!(summary.contains("password=***"), "{summary}");
    }

    #[test]
    fn reads_back_as_the_same_config() {
        let config = config_with(&[
            ("app", "host=pg port=5433 dbname='my app' pool_mode=session"),
            ("*", "host=fallback"),
        ]);
        let summary = config.redacted_summary();
        assert!(summary.contains("\"*\" = "), "{summary}");
        assert!(summary.contains("# auth_file is not set"), "{summary}");
        let back =
            Config::from_toml_str_with(&summary, Path::new("summary.toml"), FileChecks::Skip)
                .unwrap_or_else(|e| panic!("{e}\n{summary}"));
        assert_eq!(
            Config {
                source: None,
                ..back
            },
            config
        );
    }
}
