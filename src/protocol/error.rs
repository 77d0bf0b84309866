//! ErrorResponse / NoticeResponse: the one place a refusal becomes bytes on the wire.

use bytes::{BufMut, BytesMut};

/// SQLSTATE codes pgmoat itself raises (PostgreSQL's names, Appendix A).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(pub &'static str);

impl SqlState {
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    pub const TRANSACTION_RESOLUTION_UNKNOWN: SqlState = SqlState("08007");
    pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: SqlState = SqlState("08001");
    pub const SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION: SqlState = SqlState("08004");
    pub const INVALID_AUTHORIZATION_SPECIFICATION: SqlState = SqlState("28000");
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    pub const INVALID_CATALOG_NAME: SqlState = SqlState("3D000");
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
    pub const QUERY_CANCELED: SqlState = SqlState("57014");
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");
    pub const IDLE_SESSION_TIMEOUT: SqlState = SqlState("57P05");
    pub const SUCCESSFUL_COMPLETION: SqlState = SqlState("00000");
    pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: SqlState = SqlState("25P03");
    pub const TRANSACTION_TIMEOUT: SqlState = SqlState("25P04");
    pub const IN_FAILED_SQL_TRANSACTION: SqlState = SqlState("25P02");
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");
    pub const DUPLICATE_PREPARED_STATEMENT: SqlState = SqlState("42P05");
    pub const UNDEFINED_PREPARED_STATEMENT: SqlState = SqlState("26000");
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    pub const SYNTAX_ERROR: SqlState = SqlState("42601");
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState("42501");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Notice,
    Log,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "FATAL",
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Log => "LOG",
        }
    }
}

/// An error (or notice) pgmoat sends to a client in PostgreSQL's own format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: SqlState,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn fatal(code: SqlState, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn error(code: SqlState, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Error,
            ..Self::fatal(code, message)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Appends the message as an ErrorResponse ('E'), or a NoticeResponse ('N') for
    /// severities below ERROR.
    pub fn encode(&self, buf: &mut BytesMut) {
        let tag = match self.severity {
            Severity::Fatal | Severity::Error => b'E',
            _ => b'N',
        };
        let start = buf.len();
        buf.put_u8(tag);
        buf.put_u32(0);
        let sev = self.severity.as_str();
        put_field(buf, b'S', sev);
        put_field(buf, b'V', sev);
        put_field(buf, b'C', self.code.0);
        put_field(buf, b'M', &self.message);
        if let Some(detail) = &self.detail {
            put_field(buf, b'D', detail);
        }
        if let Some(hint) = &self.hint {
            put_field(buf, b'H', hint);
        }
        buf.put_u8(0);
        let len = (buf.len() - start - 1) as u32;
        buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    }

    pub fn to_bytes(&self) -> BytesMut {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.as_str(),
            self.code.0,
            self.message
        )?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

fn put_field(buf: &mut BytesMut, code: u8, value: &str) {
    buf.put_u8(code);
    // A NUL inside a field would end it early and desynchronise the client's parser.
    buf.extend(value.bytes().filter(|&b| b != 0));
    buf.put_u8(0);
}

/// Fields of an ErrorResponse / NoticeResponse body received from PostgreSQL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ErrorFields {
    /// Parses the body (after the 5-byte header); unknown fields are skipped.
    pub fn parse(body: &[u8]) -> ErrorFields {
        let mut fields = ErrorFields::default();
        let mut rest = body;
        while let Some((&code, tail)) = rest.split_first() {
            if code == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            match code {
                b'V' => fields.severity = value,
                b'S' if fields.severity.is_empty() => fields.severity = value,
                b'C' => fields.code = value,
                b'M' => fields.message = value,
                _ => {}
            }
            rest = tail.get(end + 1..).unwrap_or(&[]);
        }
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_round_trips_through_the_parser() {
        let err = PgError::fatal(SqlState::INVALID_PASSWORD, "password authentication failed")
            .with_hint("check auth_file");
        let bytes = err.to_bytes();
        assert_eq!(bytes[0], b'E');
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, bytes.len());
        let fields = ErrorFields::parse(&bytes[5..]);
        assert_eq!(fields.severity, "FATAL");
        assert_eq!(fields.code, "28P01");
        assert_eq!(fields.message, "password authentication failed");
    }

    #[test]
    fn nul_bytes_in_messages_are_dropped() {
        let err = PgError::error(SqlState::PROTOCOL_VIOLATION, "a\0b");
        let fields = ErrorFields::parse(&err.to_bytes()[5..]);
        assert_eq!(fields.message, "ab");
    }

    #[test]
    fn notices_use_the_notice_tag() {
        let mut n = PgError::error(SqlState::ADMIN_SHUTDOWN, "x");
        n.severity = Severity::Warning;
        assert_eq!(n.to_bytes()[0], b'N');
    }
}
