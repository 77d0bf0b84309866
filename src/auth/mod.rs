//! Client authentication building blocks: the auth_file (PgBouncer's userlist.txt), the server
//! side of SCRAM-SHA-256, md5 password checks, and the client certificate CN for `cert` auth.
//! Nothing here does I/O on a socket: the frontend session feeds message bodies in.

pub mod cert;
mod conf_tokens;
pub mod hba;
pub mod ident;
pub mod md5;
pub mod scram;
mod scram_cache;
pub mod userlist;

use std::path::PathBuf;

pub use self::cert::{cert_common_name, cert_identities};
pub use self::md5::{md5_salt, verify_md5};
pub use self::scram::{ScramError, ScramSecret, ScramServer};
pub use self::scram_cache::ScramCache;
pub use self::userlist::{Secret, UserList};

/// Errors of the auth module. No variant carries a password or secret, so every one may be
/// logged or shown to an operator.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read auth file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{origin}:{line}: {reason}")]
    UserList {
        origin: String,
        line: usize,
        reason: String,
    },

    /// md5 needs the password or its md5 hash; a SCRAM verifier cannot answer an md5 challenge.
    #[error("md5 authentication needs a plain-text or md5 secret, but the user has a SCRAM secret")]
    Md5NeedsPlainOrMd5Secret,

    #[error("client certificate cannot be parsed: {0}")]
    CertParse(String),

    #[error("client certificate has no common name (CN)")]
    CertNoCommonName,

    #[error("client certificate has more than one common name (CN)")]
    CertManyCommonNames,

    #[error("client certificate common name is not a UTF-8 string")]
    CertCommonNameNotUtf8,

    #[error("client certificate common name is empty or contains a NUL byte")]
    CertCommonNameInvalid,

    /// auth_cert_identity names a kind of SAN the certificate does not have.
    #[error("client certificate has no usable name of the kind auth_cert_identity = {0} chooses")]
    CertNoIdentity(crate::config::CertIdentity),

    #[error(transparent)]
    Scram(#[from] ScramError),
}
