//! Shared integration-test support: certificates from pgmoat's own cert tool, a throwaway TLS
//! PostgreSQL with the test roles, pgmoat as a subprocess with a generated config, and clients
//! (tokio-postgres over rustls, psql, pgbench). Each test file includes it with `mod support;`.
// Each test file uses a different part of the support code.
#![allow(dead_code, unused_imports)]

mod client;
mod config;
mod db;
mod ha;
mod logs;
mod pgmoat;
mod pki;
mod pool;
mod raw;
mod tap;
mod venv;
pub mod wire;

pub use client::*;
pub use config::*;
pub use db::*;
pub use ha::*;
pub use logs::*;
pub use pgmoat::*;
pub use pki::*;
pub use pool::*;
pub use raw::*;
pub use tap::*;
pub use venv::*;
pub use wire::{RawClient, RawError, RawMsg, send_cancel_request};

use std::sync::Once;

/// Makes aws-lc-rs the process-wide rustls provider (tokio-postgres-rustls and any
/// `ClientConfig::builder()` need one). Safe to call from every helper and every test.
pub fn init_crypto() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider is already installed: that is fine for the tests.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}
