//! What a checkout can fail with. The session decides from the variant what the client is
//! told and whether it keeps its connection; the SQLSTATE and wording live in one place,
//! [`PoolError::to_pg_error`].

use crate::backend::BackendError;
use crate::protocol::{PgError, SqlState};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A reload replaced this pool: the caller finds the current one and asks again.
    #[error("the pool was replaced by a reload")]
    Retired,
    /// query_wait_timeout passed with no server free.
    #[error(
        "query_wait_timeout: no server connection for database \"{database}\" became free within {secs} s"
    )]
    WaitTimeout { database: String, secs: f64 },
    /// The client cancelled its query while it waited for a server.
    #[error("canceling statement due to user request")]
    Canceled,
    /// A reload removed the client's database from the configuration.
    #[error("database \"{database}\" is no longer in pgmoat's configuration")]
    Removed { database: String },
    /// A new server connection could not be made (PostgreSQL unreachable, refusing, TLS...).
    #[error("{0}")]
    Connect(#[from] BackendError),
}

impl PoolError {
    /// PostgreSQL being unreachable or refusing connections while it starts or stops: a
    /// transaction-mode client only loses the query that needed a server.
    pub fn is_transient(&self) -> bool {
        match self {
            PoolError::Connect(e) => e.is_transient(),
            PoolError::Retired
            | PoolError::WaitTimeout { .. }
            | PoolError::Removed { .. }
            | PoolError::Canceled => false,
        }
    }

    pub fn to_pg_error(&self) -> PgError {
        match self {
            PoolError::Retired => PgError::fatal(
                SqlState::CANNOT_CONNECT_NOW,
                "the server pool was replaced by a reload; try again",
            ),
            PoolError::WaitTimeout { .. } => {
                PgError::fatal(SqlState::QUERY_CANCELED, self.to_string()).with_hint(
                    "raise default_pool_size or query_wait_timeout, or look for long transactions",
                )
            }
            // PostgreSQL's own words for a cancelled statement.
            PoolError::Canceled => PgError::error(SqlState::QUERY_CANCELED, self.to_string()),
            PoolError::Removed { .. } => {
                PgError::fatal(SqlState::INVALID_CATALOG_NAME, self.to_string())
            }
            PoolError::Connect(e) => e.to_pg_error(),
        }
    }
}
