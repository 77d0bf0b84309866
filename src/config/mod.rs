//! pgmoat's configuration: the settings (PgBouncer's names), how they are read from a TOML file
//! and `PGMOAT_*` environment variables, and the checks that refuse a bad configuration with
//! the file, key and reason.
//!
//! Relative file paths are kept as written and so resolve against the working directory, as
//! PgBouncer's do (not against the config file's directory).

mod connstr;
mod env;
mod error;
mod fields;
mod load;
mod settings;
mod summary;
mod validate;
mod values;

pub use connstr::REDACTED;
pub use env::{ENV_DATABASE_PREFIX, ENV_FALLBACK_DATABASE, ENV_PREFIX, RESERVED_ENV_VARS};
pub use error::{ConfigError, ConfigErrors};
pub use settings::*;
pub use validate::FileChecks;
pub use values::parse_tls_protocols;
