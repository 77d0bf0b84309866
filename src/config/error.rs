//! Configuration errors: each names where the bad value came from (file and line, or the
//! environment variable), the setting, and why it is refused. They are collected, not
//! returned one at a time, so an operator fixes a file in one go.

use std::fmt;

/// One refused setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file's path, `environment variable PGMOAT_X`, or `environment`.
    pub origin: String,
    /// The setting, e.g. `client_tls_ca_file` or `databases.app.port`; empty when the file as a
    /// whole is at fault (unreadable, or a TOML syntax error with no key on its line).
    pub key: String,
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one configuration (read errors in file order, then validation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing was found, so checks can be chained with `?`.
    pub(crate) fn into_result(self) -> Result<(), ConfigErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(line: Option<usize>, key: &str) -> ConfigError {
        ConfigError {
            origin: "config/pgmoat.toml".into(),
            key: key.into(),
            line,
            reason: "verify-ca needs a CA file to check client certificates against".into(),
        }
    }

    #[test]
    fn display_has_origin_line_key_reason() {
        assert_eq!(
            error(Some(12), "client_tls_ca_file").to_string(),
            "config/pgmoat.toml:12: client_tls_ca_file: verify-ca needs a CA file to check \
             client certificates against"
        );
        assert_eq!(
            error(None, "").to_string(),
            "config/pgmoat.toml: verify-ca needs a CA file to check client certificates against"
        );
    }

    #[test]
    fn errors_display_one_per_line() {
        let all = ConfigErrors(vec![error(Some(1), "a"), error(None, "b")]);
        let text = all.to_string();
        assert_eq!(text.lines().count(), 2);
        assert!(
            text.lines()
                .next()
                .unwrap()
                .starts_with("config/pgmoat.toml:1: a: ")
        );
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with("config/pgmoat.toml: b: ")
        );
    }
}
