//! Reading a configuration: the TOML file (walked by hand on toml's spanned document, so every
//! bad key is reported with its line, not only the first), then `PGMOAT_*` environment
//! overrides, then validation. Where each setting came from is kept to place later errors.

use std::collections::BTreeMap;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::connstr::unknown_field;
use super::env::apply_env;
use super::error::{ConfigError, ConfigErrors};
use super::fields::{DATABASE_FIELDS, Field, PEER_FIELDS, SETTINGS, suggest};
use super::settings::{Config, DatabaseConfig, MAX_PEER_ID, PeerConfig};
use super::validate::{FileChecks, Problem, problems};
use super::values::Input;

/// Where a setting's value came from.
#[derive(Debug, Clone)]
pub(crate) enum Place {
    Line(usize),
    Env(String),
}

/// Setting key (`listen_port`, `databases.app.host`) -> where it was set.
#[derive(Debug)]
pub(crate) struct Places {
    file: Option<String>,
    keys: BTreeMap<String, Place>,
}

impl Places {
    pub(crate) fn new(file: Option<&Path>) -> Places {
        Places {
            file: file.map(|p| p.display().to_string()),
            keys: BTreeMap::new(),
        }
    }

    pub(crate) fn set(&mut self, key: impl Into<String>, place: Place) {
        self.keys.insert(key.into(), place);
    }

    /// Forgets where the fields of an entry were set, when the entry is replaced as a whole.
    pub(crate) fn forget_inside(&mut self, key: &str) {
        let inside = format!("{key}.");
        self.keys.retain(|k, _| !k.starts_with(&inside));
    }

    /// The key itself, then its anchors (the setting that made it necessary), then the
    /// enclosing entries: the first one that was set names the place.
    fn find(&self, problem: &Problem) -> Option<&Place> {
        let exact = std::iter::once(problem.key.as_str()).chain(problem.anchors.iter().copied());
        let enclosing = problem
            .key
            .char_indices()
            .rev()
            .filter(|(_, c)| *c == '.')
            .map(|(i, _)| &problem.key[..i]);
        exact.chain(enclosing).find_map(|key| self.keys.get(key))
    }

    pub(crate) fn error(&self, problem: Problem) -> ConfigError {
        let default_origin = || self.file.clone().unwrap_or_else(|| "environment".into());
        let (origin, line) = match self.find(&problem) {
            Some(Place::Line(line)) => (default_origin(), Some(*line)),
            Some(Place::Env(var)) => (format!("environment variable {var}"), None),
            None => (default_origin(), None),
        };
        ConfigError {
            origin,
            key: problem.key,
            line,
            reason: problem.reason,
        }
    }
}

impl Config {
    /// Reads `path` (none: settings only from the environment), applies `PGMOAT_*` overrides
    /// from `env` (main passes `std::env::vars()`), and validates, checking named files.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        Config::load_with(path, env, FileChecks::Check)
    }

    pub fn load_with(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        files: FileChecks,
    ) -> Result<Config, ConfigErrors> {
        let mut config = Config::default();
        let mut places = Places::new(path);
        let mut errors = Vec::new();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                origin: path.display().to_string(),
                key: String::new(),
                line: None,
                reason: format!("cannot read the config file: {e}"),
            })?;
            errors = read_toml(&text, &mut config, &mut places);
            config.source = Some(path.to_path_buf());
        }
        errors.extend(apply_env(&mut config, &mut places, env));
        finish(config, &places, errors, files)
    }

    /// A config from TOML text alone (no environment), validated with file checks; `origin`
    /// names the file in errors and becomes `source`.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigErrors> {
        Config::from_toml_str_with(text, origin, FileChecks::Check)
    }

    pub fn from_toml_str_with(
        text: &str,
        origin: &Path,
        files: FileChecks,
    ) -> Result<Config, ConfigErrors> {
        let mut config = Config::default();
        let mut places = Places::new(Some(origin));
        let errors = read_toml(text, &mut config, &mut places);
        config.source = Some(origin.to_path_buf());
        finish(config, &places, errors, files)
    }
}

/// Validation only runs on a config that read cleanly: a value that failed to read keeps its
/// default, and checks on that default would only add noise.
fn finish(
    config: Config,
    places: &Places,
    errors: Vec<ConfigError>,
    files: FileChecks,
) -> Result<Config, ConfigErrors> {
    ConfigErrors(errors).into_result()?;
    let found: Vec<ConfigError> = problems(&config, files)
        .into_iter()
        .map(|p| places.error(p))
        .collect();
    ConfigErrors(found).into_result()?;
    Ok(config)
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

struct TomlReader<'t> {
    text: &'t str,
    places: &'t mut Places,
    errors: Vec<ConfigError>,
}

impl TomlReader<'_> {
    fn line<T>(&self, spanned: &Spanned<T>) -> usize {
        line_of(self.text, spanned.span().start)
    }

    fn refuse(&mut self, key: String, line: usize, reason: String) {
        self.errors.push(ConfigError {
            origin: self.places.file.clone().unwrap_or_default(),
            key,
            line: Some(line),
            reason,
        });
    }

    fn setting(&mut self, config: &mut Config, name: &str, value: &Spanned<DeValue<'_>>) {
        let Some(field) = Field::find(SETTINGS, name) else {
            let reason = unknown_setting(name, "");
            return self.refuse(name.to_owned(), self.line(value), reason);
        };
        self.places.set(name, Place::Line(self.line(value)));
        if let Err(reason) = (field.set)(config, Input::Toml(value.get_ref())) {
            self.refuse(name.to_owned(), self.line(value), reason);
        }
    }

    fn databases(&mut self, config: &mut Config, value: &Spanned<DeValue<'_>>) {
        let line = self.line(value);
        self.places.set("databases", Place::Line(line));
        let Some(table) = value.get_ref().as_table() else {
            let reason = format!(
                "expected a table of entries, found {}",
                value.get_ref().type_str()
            );
            return self.refuse("databases".into(), line, reason);
        };
        for (name, entry) in table.iter() {
            let key = format!("databases.{}", name.get_ref());
            self.places.set(&key, Place::Line(self.line(name)));
            if let Some(read) = self.database(&key, entry) {
                config.databases.insert(name.get_ref().to_string(), read);
            }
        }
    }

    /// `[peers.N]` tables: `host`, `port`, `pool_size`, N a peer id.
    fn peers(&mut self, config: &mut Config, value: &Spanned<DeValue<'_>>) {
        let line = self.line(value);
        self.places.set("peers", Place::Line(line));
        let Some(table) = value.get_ref().as_table() else {
            let reason = format!(
                "expected a table of [peers.N] entries, found {}",
                value.get_ref().type_str()
            );
            return self.refuse("peers".into(), line, reason);
        };
        for (name, entry) in table.iter() {
            let key = format!("peers.{}", name.get_ref());
            let entry_line = self.line(name);
            self.places.set(&key, Place::Line(entry_line));
            let id = match name.get_ref().parse::<u16>() {
                Ok(id) if (1..=MAX_PEER_ID).contains(&id) => id,
                _ => {
                    let reason = format!("a peer is named by its peer_id, 1 to {MAX_PEER_ID}");
                    self.refuse(key, entry_line, reason);
                    continue;
                }
            };
            let Some(fields) = entry.get_ref().as_table() else {
                let reason = format!(
                    "expected a table like {{ host = \"pgmoat-1\", port = 6432 }}, found {}",
                    entry.get_ref().type_str()
                );
                self.refuse(key, entry_line, reason);
                continue;
            };
            let mut peer = PeerConfig::default();
            let before = self.errors.len();
            for (field_name, field_value) in fields.iter() {
                let field_key = join_key(&key, field_name.get_ref());
                let field_line = self.line(field_name);
                self.places.set(&field_key, Place::Line(field_line));
                let Some(field) = Field::find(PEER_FIELDS, field_name.get_ref()) else {
                    let reason = "unknown peer setting (a peer has host, port and pool_size)";
                    self.refuse(field_key, field_line, reason.into());
                    continue;
                };
                if let Err(reason) = (field.set)(&mut peer, Input::Toml(field_value.get_ref())) {
                    self.refuse(field_key, self.line(field_value), reason);
                }
            }
            if self.errors.len() == before {
                config.peers.insert(id, peer);
            }
        }
    }

    fn database(&mut self, key: &str, entry: &Spanned<DeValue<'_>>) -> Option<DatabaseConfig> {
        let line = self.line(entry);
        match entry.get_ref() {
            DeValue::String(text) => match DatabaseConfig::from_connstr(text) {
                Ok(read) => Some(read),
                Err(errors) => {
                    for (field, reason) in errors {
                        self.refuse(join_key(key, &field), line, reason);
                    }
                    None
                }
            },
            DeValue::Table(table) => {
                let mut read = DatabaseConfig::default();
                let before = self.errors.len();
                for (name, value) in table.iter() {
                    let field_key = join_key(key, name.get_ref());
                    let field_line = self.line(name);
                    self.places.set(&field_key, Place::Line(field_line));
                    let Some(field) = Field::find(DATABASE_FIELDS, name.get_ref()) else {
                        self.refuse(field_key, field_line, unknown_field(name.get_ref()));
                        continue;
                    };
                    if let Err(reason) = (field.set)(&mut read, Input::Toml(value.get_ref())) {
                        self.refuse(field_key, self.line(value), reason);
                    }
                }
                (self.errors.len() == before).then_some(read)
            }
            other => {
                let reason = format!(
                    "expected a table like {{ host = \"db\", port = 5432 }} or a connection \
                     string like \"host=db port=5432\", found {}",
                    other.type_str()
                );
                self.refuse(key.to_owned(), line, reason);
                None
            }
        }
    }
}

pub(crate) fn join_key(key: &str, field: &str) -> String {
    if field.is_empty() {
        key.to_owned()
    } else {
        format!("{key}.{field}")
    }
}

pub(crate) fn unknown_setting(name: &str, prefix: &str) -> String {
    let known = SETTINGS
        .iter()
        .map(|f| f.name)
        .chain(["databases", "peers"]);
    match suggest(name, known) {
        Some(close) => format!(
            "unknown setting; did you mean `{prefix}{}`?",
            if prefix.is_empty() {
                close.to_owned()
            } else {
                close.to_ascii_uppercase()
            }
        ),
        None => "unknown setting".into(),
    }
}

/// Reads the document into `config`; returns every syntax, type and unknown-key error.
fn read_toml(text: &str, config: &mut Config, places: &mut Places) -> Vec<ConfigError> {
    let (document, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let origin = places.file.clone().unwrap_or_default();
        let mut errors: Vec<ConfigError> = syntax
            .iter()
            .map(|error| syntax_error(text, &origin, error))
            .collect();
        errors.sort_by_key(|e| e.line);
        return errors;
    }
    let mut reader = TomlReader {
        text,
        places,
        errors: Vec::new(),
    };
    for (key, value) in document.get_ref().iter() {
        match key.get_ref().as_ref() {
            "databases" => reader.databases(config, value),
            "peers" => reader.peers(config, value),
            name => reader.setting(config, name, value),
        }
    }
    // The document's keys come sorted by name; errors read better in file order.
    reader.errors.sort_by_key(|e| e.line);
    reader.errors
}

fn syntax_error(text: &str, origin: &str, error: &toml::de::Error) -> ConfigError {
    let line = error.span().map(|span| line_of(text, span.start));
    // The key on the offending line, when there is one, so the error reads like the others.
    let key = line
        .and_then(|n| text.lines().nth(n - 1))
        .and_then(|source| source.split_once('='))
        .map(|(key, _)| key.trim().trim_matches('"').to_owned())
        .filter(|key| {
            key.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.*".contains(c))
        })
        .unwrap_or_default();
    let reason = error.message().trim().replace('\n', "; ");
    ConfigError {
        origin: origin.to_owned(),
        key,
        line,
        reason: format!("TOML syntax: {reason}"),
    }
}

#[cfg(test)]
mod tests;
