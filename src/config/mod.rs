//! pgmoat's configuration: the settings (PgBouncer's names), how they are read from a TOML file
//! and `PGMOAT_*` environment variables, and the checks that refuse a bad configuration with
//! the file, key and reason.

mod settings;

pub use settings::*;
