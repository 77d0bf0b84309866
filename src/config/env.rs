//! `PGMOAT_*` environment overrides, applied over the config file (or alone, for the sidecar
//! case with no file). Every variable with the prefix must name a setting, so a typo stops
//! pgmoat instead of being silently ignored.

use super::error::ConfigError;
use super::fields::{Field, SETTINGS};
use super::load::{Place, Places, join_key, unknown_setting};
use super::settings::{Config, DatabaseConfig};
use super::values::Input;

/// Every environment variable starting with this is a setting (or reserved, see below).
pub const ENV_PREFIX: &str = "PGMOAT_";
/// `PGMOAT_DATABASES__APP="host=pg dbname=app"` defines the entry `app` (name lowercased).
pub const ENV_DATABASE_PREFIX: &str = "PGMOAT_DATABASES__";
/// Defines the `*` fallback entry: outside the `__<NAME>` pattern so no real name collides.
pub const ENV_FALLBACK_DATABASE: &str = "PGMOAT_DATABASES_FALLBACK";
/// `PGMOAT_*` names that belong to the command line, not to settings: never an unknown-setting
/// error.
pub const RESERVED_ENV_VARS: &[&str] = &["PGMOAT_CONFIG", "PGMOAT_LOG", "PGMOAT_LOG_FORMAT"];

/// Applies `PGMOAT_*` variables; every unknown one is an error, so a typo cannot go unseen.
pub(crate) fn apply_env(
    config: &mut Config,
    places: &mut Places,
    env: impl IntoIterator<Item = (String, String)>,
) -> Vec<ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .filter(|(name, _)| !RESERVED_ENV_VARS.contains(&name.as_str()))
        .collect();
    vars.sort();
    let mut errors = Vec::new();
    for (var, value) in vars {
        let refuse = |key: String, reason: String| ConfigError {
            origin: format!("environment variable {var}"),
            key,
            line: None,
            reason,
        };
        let database = if var == ENV_FALLBACK_DATABASE {
            Some("*".to_owned())
        } else {
            var.strip_prefix(ENV_DATABASE_PREFIX)
                .map(str::to_ascii_lowercase)
        };
        if let Some(name) = database {
            let key = format!("databases.{name}");
            if name.is_empty() {
                errors.push(refuse(
                    key,
                    "the database name is missing after `__`".into(),
                ));
                continue;
            }
            let key = format!("databases.{name}");
            match DatabaseConfig::from_connstr(&value) {
                Ok(entry) => {
                    // The whole entry is replaced, so the file's places for it no longer apply.
                    places.forget_inside(&key);
                    places.set(key, Place::Env(var.clone()));
                    config.databases.insert(name, entry);
                }
                Err(bad) => errors.extend(
                    bad.into_iter()
                        .map(|(field, reason)| refuse(join_key(&key, &field), reason)),
                ),
            }
            continue;
        }
        let name = var[ENV_PREFIX.len()..].to_ascii_lowercase();
        match Field::find(SETTINGS, &name) {
            Some(field) => {
                places.set(name.clone(), Place::Env(var.clone()));
                if let Err(reason) = (field.set)(config, Input::Text(&value)) {
                    errors.push(refuse(name, reason));
                }
            }
            None if name == "databases" => errors.push(refuse(
                name,
                format!("databases come one per variable: {ENV_DATABASE_PREFIX}<NAME>"),
            )),
            None => errors.push(refuse(name.clone(), unknown_setting(&name, ENV_PREFIX))),
        }
    }
    errors
}
