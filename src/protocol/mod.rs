//! The PostgreSQL wire protocol, as far as a pooler needs it: framing (startup packets and
//! tagged messages, with length bounds; `cursor` cuts every buffer of tagged messages into
//! frames), writers for the backend messages pgmoat sends itself, and ErrorResponse with
//! SQLSTATE codes.

pub mod cursor;
pub mod error;
pub mod frame;
pub mod messages;
pub mod startup;

pub use cursor::{Frame, Frames, frame_at};
pub use error::{PgError, Severity, SqlState};
pub use frame::{Header, ProtocolError};
