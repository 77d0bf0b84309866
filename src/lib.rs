//! pgmoat: a PostgreSQL connection pooler that terminates client TLS (optionally mutual TLS),
//! pools backend connections, and re-encrypts every backend connection with verify-full TLS.

pub mod auth;
pub mod certs;
pub mod config;
pub mod pgcluster;
