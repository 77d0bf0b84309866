//! The PostgreSQL wire protocol, as far as a pooler needs it: framing (startup packets and
//! tagged messages, with length bounds), writers for the backend messages pgmoat sends itself,
//! and ErrorResponse with SQLSTATE codes.

pub mod error;
pub mod frame;
pub mod messages;
pub mod startup;

pub use error::{PgError, Severity, SqlState};
pub use frame::{Header, ProtocolError};
