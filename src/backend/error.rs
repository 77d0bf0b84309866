//! What can go wrong towards PostgreSQL, and how each reaches the client.

use crate::protocol::error::ErrorFields;
use crate::protocol::{PgError, ProtocolError, Severity, SqlState};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A borrow from another worker's share found no idle server (never a login failure:
    /// the borrower goes on waiting for its own share).
    #[error("no idle server in the other worker's share of the pool")]
    NothingIdle,
    #[error("could not connect to PostgreSQL at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to PostgreSQL at {addr} timed out after {secs} s (server_connect_timeout)")]
    Timeout { addr: String, secs: f64 },
    #[error(
        "PostgreSQL at {addr} refused TLS, and server_tls_sslmode = {mode} forbids a \
         plaintext connection"
    )]
    TlsRefused { addr: String, mode: &'static str },
    #[error("TLS handshake with PostgreSQL at {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    #[error("PostgreSQL at {addr} rejected the login: {} {}: {}", .fields.severity, .fields.code, .fields.message)]
    Server { addr: String, fields: ErrorFields },
    #[error(
        "no password to log in to PostgreSQL as \"{user}\": set password in the [databases] \
         entry or give the user a plain-text secret in auth_file"
    )]
    NoPassword { user: String },
    #[error(
        "PostgreSQL at {addr} asked for an authentication method pgmoat does not support ({method})"
    )]
    UnsupportedAuth { addr: String, method: u32 },
    #[error("SCRAM exchange with PostgreSQL at {addr} failed: {reason}")]
    Scram { addr: String, reason: String },
    #[error(
        "PostgreSQL at {addr} asked for the password in clear text, which pgmoat sends only \
         to a server whose certificate it verified (server_tls_sslmode = verify-ca or \
         verify-full; it is {mode}): use scram-sha-256 in pg_hba.conf, or verify the server"
    )]
    CleartextRefused { addr: String, mode: &'static str },
    #[error(
        "server_channel_binding = require, but {reason} (PostgreSQL at {addr}); channel binding \
         needs TLS and SCRAM-SHA-256-PLUS"
    )]
    ChannelBindingRequired { addr: String, reason: &'static str },
    #[error("protocol error from PostgreSQL at {addr}: {source}")]
    Protocol { addr: String, source: ProtocolError },
    #[error("no usable address for {host}:{port}")]
    NoAddress { host: String, port: u16 },
    #[error("no server of {hosts} is {wanted} (target_session_attrs) right now: {found}")]
    NoSuitableHost {
        hosts: String,
        wanted: &'static str,
        /// What each host was, for the operator.
        found: String,
    },
}

impl BackendError {
    /// PostgreSQL unreachable, or refusing connections while it shuts down or starts up
    /// (57P03, 57P01), as opposed to refusing pgmoat's credentials or configuration.
    pub fn is_transient(&self) -> bool {
        match self {
            BackendError::Server { fields, .. } => {
                matches!(fields.code.as_str(), "57P03" | "57P01")
            }
            BackendError::NoPassword { .. }
            | BackendError::UnsupportedAuth { .. }
            | BackendError::CleartextRefused { .. }
            | BackendError::ChannelBindingRequired { .. } => false,
            _ => true,
        }
    }

    /// Says the host itself is unreachable or not taking connections (refused, timed out,
    /// no address, closed during the login, or PostgreSQL's own shutting-down, crashed and
    /// starting-up answers), as opposed to refusing this login: a TLS or authentication
    /// failure, a bad setting or database, too many connections. Only these mark a host
    /// down (which retires every connection there).
    pub fn is_host_down(&self) -> bool {
        match self {
            BackendError::Connect { .. }
            | BackendError::Timeout { .. }
            | BackendError::NoAddress { .. } => true,
            BackendError::Server { fields, .. } => {
                matches!(fields.code.as_str(), "57P01" | "57P02" | "57P03")
            }
            BackendError::Protocol { source, .. } => source.is_closed(),
            _ => false,
        }
    }

    /// For a client whose startup settings PostgreSQL refused (a bad value, an unknown
    /// setting): PostgreSQL's own SQLSTATE and message, as FATAL, as PostgreSQL itself would
    /// refuse the login. Any other failure is [`to_pg_error`](Self::to_pg_error).
    pub fn to_setting_error(&self) -> PgError {
        match self {
            BackendError::Server { fields, .. } => PgError::fatal(
                SqlState(static_code(&fields.code, "22023")),
                fields.message.clone(),
            ),
            other => other.to_pg_error(),
        }
    }

    /// The ErrorResponse the client gets. Errors PostgreSQL itself raised keep its SQLSTATE.
    pub fn to_pg_error(&self) -> PgError {
        match self {
            BackendError::Server { fields, .. } => PgError {
                severity: Severity::Fatal,
                code: SqlState(static_code(&fields.code, "08004")),
                message: fields.message.clone(),
                // Only an authentication failure is about the credentials; a shutdown or
                // a full server is not.
                detail: Some(if fields.code.starts_with("28") {
                    "pgmoat could not log in to PostgreSQL with the configured credentials".into()
                } else {
                    "PostgreSQL refused pgmoat's new server connection".into()
                }),
                hint: None,
            },
            BackendError::NoPassword { .. } | BackendError::UnsupportedAuth { .. } => {
                PgError::fatal(
                    SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                    self.to_string(),
                )
            }
            _ => PgError::fatal(
                SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                self.to_string(),
            ),
        }
    }
}

/// SQLSTATEs PostgreSQL sends during login or for a bad setting, mapped onto static strings
/// (the code is five ASCII characters); anything else becomes `fallback`.
fn static_code(code: &str, fallback: &'static str) -> &'static str {
    const KNOWN: &[&str] = &[
        "28P01", "28000", "3D000", "53300", "57P03", "57P01", "08P01", "0A000", "42501", "53100",
        "53200", "XX000", "22023", "42704", "55P02", "22P02",
    ];
    KNOWN
        .iter()
        .find(|k| **k == code)
        .copied()
        .unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str) -> BackendError {
        BackendError::Server {
            addr: "pg1:5432".into(),
            fields: ErrorFields {
                severity: "FATAL".into(),
                code: code.into(),
                message: "x".into(),
            },
        }
    }

    #[test]
    fn only_an_unreachable_or_stopping_server_is_a_host_down() {
        let refused = BackendError::Connect {
            addr: "pg1:5432".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        for down in [refused, server("57P03"), server("57P02")] {
            assert!(down.is_host_down(), "{down}");
        }
        let tls = BackendError::Tls {
            addr: "pg1:5432".into(),
            reason: "certificate expired".into(),
        };
        let scram = BackendError::Scram {
            addr: "pg1:5432".into(),
            reason: "bad proof".into(),
        };
        for refusal in [
            tls,
            scram,
            server("28P01"),
            server("53300"),
            server("3D000"),
        ] {
            assert!(!refusal.is_host_down(), "{refusal}");
        }
    }
}
