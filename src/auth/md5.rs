//! md5 password authentication as PostgreSQL does it: the server sends a random 4-byte salt and
//! the client answers "md5" + md5hex(md5hex(password + user) + salt). Kept for old clients and
//! for auth_files that only hold md5 hashes; SCRAM is the better choice.

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use super::{AuthError, Secret};

/// A fresh salt for an AuthenticationMD5Password message.
pub fn md5_salt() -> [u8; 4] {
    // rand's thread RNG is a CSPRNG seeded from the OS; a predictable salt would allow replay.
    rand::random()
}

/// Checks the client's PasswordMessage body (without the trailing NUL) against the secret.
///
/// `Ok(false)` for a wrong or malformed answer and for an empty stored password (PostgreSQL
/// never accepts an empty password). A SCRAM secret cannot check an md5 answer.
pub fn verify_md5(
    secret: &Secret,
    user: &str,
    salt: [u8; 4],
    client_response: &str,
) -> Result<bool, AuthError> {
    let inner = match secret {
        Secret::Plain(password) if password.is_empty() => return Ok(false),
        Secret::Plain(password) => md5_hex(&[password.as_bytes(), user.as_bytes()]),
        Secret::Md5(hash) => to_hex(hash),
        Secret::Scram(_) => return Err(AuthError::Md5NeedsPlainOrMd5Secret),
    };
    let expected = format!("md5{}", md5_hex(&[inner.as_bytes(), &salt]));
    // Constant time, so response timing does not leak how much of the hash matched.
    Ok(bool::from(
        expected.as_bytes().ct_eq(client_response.as_bytes()),
    ))
}

/// The 16-byte hash inside an auth_file md5 secret ("md5" + 32 hex digits), if `text` is one.
pub(super) fn parse_md5_secret(text: &str) -> Option<[u8; 16]> {
    let hex = text.strip_prefix("md5")?.as_bytes();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    to_hex(&hasher.finalize())
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ScramSecret;
    use postgres_protocol::authentication::md5_hash;

    const SALT: [u8; 4] = [0x2a, 0x3d, 0x8f, 0xe0];

    fn client_answer(user: &str, password: &str, salt: [u8; 4]) -> String {
        md5_hash(user.as_bytes(), password.as_bytes(), salt)
    }

    #[test]
    fn plain_secret_accepts_the_right_password_only() {
        let secret = Secret::Plain("s3cret".into());
        let good = client_answer("alice", "s3cret", SALT);
        assert!(verify_md5(&secret, "alice", SALT, &good).unwrap());

        let wrong_password = client_answer("alice", "guess", SALT);
        assert!(!verify_md5(&secret, "alice", SALT, &wrong_password).unwrap());
        // The user name is part of the hash: the same password for another user must not pass.
        let other_user = client_answer("bob", "s3cret", SALT);
        assert!(!verify_md5(&secret, "bob", SALT, &good).unwrap());
        assert!(!verify_md5(&secret, "alice", SALT, &other_user).unwrap());
        // A replay under a new salt must fail.
        assert!(!verify_md5(&secret, "alice", [1, 2, 3, 4], &good).unwrap());
    }

    #[test]
    fn md5_secret_from_postgres_protocol_verifies() {
        let stored = postgres_protocol::password::md5(b"s3cret", "alice");
        let hash = parse_md5_secret(&stored).unwrap();
        let secret = Secret::Md5(hash);
        let good = client_answer("alice", "s3cret", SALT);
        assert!(verify_md5(&secret, "alice", SALT, &good).unwrap());
        let bad = client_answer("alice", "S3cret", SALT);
        assert!(!verify_md5(&secret, "alice", SALT, &bad).unwrap());
    }

    #[test]
    fn upper_case_md5_secret_is_the_same_hash() {
        let stored = postgres_protocol::password::md5(b"pw", "u");
        let upper = format!("md5{}", stored[3..].to_ascii_uppercase());
        assert_eq!(parse_md5_secret(&upper), parse_md5_secret(&stored));
    }

    #[test]
    fn malformed_answers_are_false_not_errors() {
        let secret = Secret::Plain("s3cret".into());
        for answer in ["", "md5", "md5zz", "s3cret", "\u{e9}\u{e9}"] {
            assert!(!verify_md5(&secret, "alice", SALT, answer).unwrap());
        }
    }

    #[test]
    fn empty_stored_password_never_matches() {
        let secret = Secret::Plain(String::new());
        let answer = client_answer("alice", "", SALT);
        assert!(!verify_md5(&secret, "alice", SALT, &answer).unwrap());
    }

    #[test]
    fn scram_secret_cannot_verify_md5() {
        let secret = Secret::Scram(ScramSecret::from_password("s3cret"));
        let answer = client_answer("alice", "s3cret", SALT);
        let err = verify_md5(&secret, "alice", SALT, &answer).unwrap_err();
        assert!(matches!(err, AuthError::Md5NeedsPlainOrMd5Secret));
    }

    #[test]
    fn md5_secret_parsing() {
        assert!(parse_md5_secret("md5").is_none());
        assert!(parse_md5_secret(&format!("md5{}", "0".repeat(31))).is_none());
        assert!(parse_md5_secret(&format!("md5{}", "0".repeat(33))).is_none());
        assert!(parse_md5_secret(&format!("md5{}g", "0".repeat(31))).is_none());
        assert!(parse_md5_secret(&format!("md6{}", "0".repeat(32))).is_none());
        let hash = parse_md5_secret("md50123456789abcdef0123456789ABCDEF").unwrap();
        assert_eq!(to_hex(&hash), "0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn salts_are_random() {
        // Four identical salts in a row would mean the RNG is not being used.
        let salts: Vec<_> = (0..4).map(|_| md5_salt()).collect();
        assert!(salts.windows(2).any(|w| w[0] != w[1]));
    }
}
