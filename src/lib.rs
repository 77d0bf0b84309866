//! pgmoat: a PostgreSQL connection pooler that terminates client TLS (optionally mutual TLS),
//! pools backend connections, and re-encrypts every backend connection with verify-full TLS.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod backend;
pub mod cancel;
pub mod certs;
pub mod config;
pub mod frontend;
/// Bodies of the fuzz targets in `fuzz/`, kept in the library so the corpus replay test
/// (`tests/fuzz_corpora.rs`) runs them on stable Rust; not an API.
#[doc(hidden)]
pub mod fuzz_targets;
pub mod generation;
pub mod lifecycle;
pub mod metrics;
pub mod peers;
pub mod pgcluster;
pub mod pool;
pub mod protocol;
pub mod relay;
pub mod reload;
pub mod state;
pub mod stats;
pub mod stream;
pub mod tls;
pub mod workers;
