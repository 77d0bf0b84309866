//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL runs it: the user comes
//! from the startup packet (the SASL user name is ignored), SCRAM-SHA-256-PLUS with
//! `tls-server-end-point` channel binding is offered over TLS, and a failed proof looks the
//! same for a wrong password and an unknown user.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

mod messages;

use messages::{CbindFlag, parse_client_final, parse_client_first};

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// SCRAM-SHA-256 with channel binding; offered only over TLS.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The one channel binding type PostgreSQL (and pgmoat) supports.
pub const TLS_SERVER_END_POINT: &str = "tls-server-end-point";

pub(super) const SCRAM_SECRET_PREFIX: &str = "SCRAM-SHA-256$";

/// PostgreSQL's defaults for new verifiers.
const DEFAULT_ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 16;
/// 18 random bytes give 24 base64 characters without padding, as PostgreSQL sends.
const SERVER_NONCE_RAW_LEN: usize = 18;

#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    /// The proof did not match (or the user does not exist: deliberately the same error).
    #[error("password authentication failed")]
    WrongPassword,

    #[error("client selected an invalid SASL authentication mechanism")]
    UnsupportedMechanism,

    /// Channel binding was asked for wrongly, or its data does not match this connection
    /// (a man in the middle), in PostgreSQL's words.
    #[error("{0}")]
    ChannelBinding(&'static str),

    /// A malformed or out-of-order message. The text never quotes the client's message.
    #[error("malformed SCRAM message: {0}")]
    Protocol(String),

    /// A stored verifier that does not parse; the text never quotes the verifier.
    #[error("invalid SCRAM secret: {0}")]
    InvalidSecret(&'static str),
}

pub(super) fn protocol(reason: &str) -> ScramError {
    ScramError::Protocol(reason.to_owned())
}

/// A SCRAM-SHA-256 verifier: what the server stores instead of the password.
///
/// Debug shows the iteration count only; the keys let anyone who has them pose as the server.
#[derive(Clone)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
    /// Set for the stand-in secret of an unknown user: the exchange then always fails.
    doomed: bool,
}

impl ScramSecret {
    pub fn new(iterations: u32, salt: Vec<u8>, stored_key: [u8; 32], server_key: [u8; 32]) -> Self {
        ScramSecret {
            iterations,
            salt,
            stored_key,
            server_key,
            doomed: false,
        }
    }

    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 parts), the
    /// form PostgreSQL keeps in pg_authid and PgBouncer in its auth_file.
    pub fn parse(text: &str) -> Result<ScramSecret, ScramError> {
        let bad = ScramError::InvalidSecret;
        let body = text
            .strip_prefix(SCRAM_SECRET_PREFIX)
            .ok_or(bad("does not start with SCRAM-SHA-256$"))?;
        let (params, keys) = body
            .split_once('$')
            .ok_or(bad("missing '$' before the keys"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or(bad("missing ':' between iterations and salt"))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or(bad("missing ':' between StoredKey and ServerKey"))?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| bad("iteration count is not a number"))?;
        if iterations == 0 {
            return Err(bad("iteration count is zero"));
        }
        let salt = BASE64.decode(salt).map_err(|_| bad("salt is not base64"))?;
        if salt.is_empty() {
            return Err(bad("salt is empty"));
        }
        let key = |b64: &str, what: &'static str| -> Result<[u8; 32], ScramError> {
            let bytes = BASE64.decode(b64).map_err(|_| bad(what))?;
            bytes.try_into().map_err(|_| bad(what))
        };
        Ok(ScramSecret::new(
            iterations,
            salt,
            key(stored_key, "StoredKey is not 32 bytes of base64")?,
            key(server_key, "ServerKey is not 32 bytes of base64")?,
        ))
    }

    /// A new verifier for `password` with a random 16-byte salt and 4096 iterations.
    pub fn from_password(password: &str) -> ScramSecret {
        let mut salt = vec![0u8; SALT_LEN];
        rand::fill(&mut salt[..]);
        ScramSecret::from_password_with_salt(password, salt, DEFAULT_ITERATIONS)
    }

    fn from_password_with_salt(password: &str, salt: Vec<u8>, iterations: u32) -> ScramSecret {
        let salted = salted_password(password, &salt, iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        ScramSecret::new(
            iterations,
            salt,
            sha256(&client_key),
            hmac_sha256(&salted, &[b"Server Key"]),
        )
    }

    /// A stand-in for a user who does not exist (or cannot do SCRAM). The salt is derived from
    /// the user name and `server_nonce_key`, so repeated attempts see the same salt as for a
    /// real user, and the exchange runs in full but always ends in `WrongPassword`.
    ///
    /// `server_nonce_key` should be random, secret and stable for the life of the process
    /// (otherwise a changing salt gives the unknown user away).
    pub fn mock_for(user: &str, server_nonce_key: &[u8]) -> ScramSecret {
        let digest = hmac_sha256(server_nonce_key, &[user.as_bytes()]);
        ScramSecret {
            iterations: DEFAULT_ITERATIONS,
            salt: digest[..SALT_LEN].to_vec(),
            stored_key: [0; 32],
            server_key: [0; 32],
            doomed: true,
        }
    }

    /// The text form that `parse` reads (for writing auth_files; it is a secret: never log it).
    pub fn encode(&self) -> String {
        format!(
            "{SCRAM_SECRET_PREFIX}{}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// One server-side SCRAM exchange. Feed it the client's two messages in order; any error ends
/// the exchange for good.
pub struct ScramServer {
    secret: ScramSecret,
    state: State,
    /// tls-server-end-point data of this connection: SCRAM-SHA-256-PLUS is offered.
    binding: Option<Vec<u8>>,
}

enum State {
    AwaitingClientFirst,
    AwaitingClientFinal(FirstRound),
    Succeeded { client_key: [u8; 32] },
    Failed,
}

/// What the final round needs from the first: the pieces of the AuthMessage and the nonce.
struct FirstRound {
    /// What the client-final-message's `c=` must decode to: the gs2 header, followed by
    /// the channel binding data when the client binds.
    expected_binding: Vec<u8>,
    client_first_bare: Vec<u8>,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    pub fn new(secret: ScramSecret) -> Self {
        ScramServer {
            secret,
            state: State::AwaitingClientFirst,
            binding: None,
        }
    }

    /// Offers SCRAM-SHA-256-PLUS bound to `binding` (the tls-server-end-point data of
    /// pgmoat's certificate on this connection), when there is one.
    pub fn with_channel_binding(mut self, binding: Option<Vec<u8>>) -> Self {
        self.binding = binding;
        self
    }

    /// The mechanisms to advertise in AuthenticationSASL, most preferred first.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.binding.is_some() {
            &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
        } else {
            &[SCRAM_SHA_256]
        }
    }

    /// Takes the SASLInitialResponse (mechanism and client-first-message) and returns the
    /// server-first-message for AuthenticationSASLContinue.
    pub fn handle_client_first(
        &mut self,
        mechanism: &str,
        client_first: &[u8],
    ) -> Result<Vec<u8>, ScramError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        if !matches!(state, State::AwaitingClientFirst) {
            return Err(protocol("client-first-message out of order"));
        }
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS if self.binding.is_some() => true,
            _ => return Err(ScramError::UnsupportedMechanism),
        };
        let mut raw = [0u8; SERVER_NONCE_RAW_LEN];
        rand::fill(&mut raw[..]);
        self.first_with_server_nonce(client_first, &BASE64.encode(raw), plus)
    }

    /// The first round with a given server nonce (tests use the RFC 7677 example's nonce).
    fn first_with_server_nonce(
        &mut self,
        client_first: &[u8],
        server_nonce: &str,
        plus: bool,
    ) -> Result<Vec<u8>, ScramError> {
        let first = parse_client_first(client_first)?;
        // PostgreSQL's checks and wording (auth-scram.c).
        let mut expected_binding = first.gs2_header.to_vec();
        match (plus, first.flag) {
            (true, CbindFlag::Binds(kind)) => {
                if kind != TLS_SERVER_END_POINT.as_bytes() {
                    return Err(ScramError::ChannelBinding(
                        "unsupported SCRAM channel-binding type",
                    ));
                }
                expected_binding.extend_from_slice(self.binding.as_deref().unwrap_or_default());
            }
            (true, _) => {
                return Err(ScramError::ChannelBinding(
                    "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data.",
                ));
            }
            (false, CbindFlag::Binds(_)) => {
                return Err(ScramError::ChannelBinding(
                    "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.",
                ));
            }
            // A client that could bind but believes the server cannot: over TLS, where
            // pgmoat offered -PLUS, someone removed it on the way (a downgrade).
            (false, CbindFlag::ClientOnly) if self.binding.is_some() => {
                return Err(ScramError::ChannelBinding(
                    "The client supports SCRAM channel binding but thinks the server does not. However, this server does support channel binding.",
                ));
            }
            (false, _) => {}
        }
        let nonce = format!("{}{server_nonce}", first.client_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&self.secret.salt),
            self.secret.iterations
        );
        let reply = server_first.clone().into_bytes();
        self.state = State::AwaitingClientFinal(FirstRound {
            expected_binding,
            client_first_bare: first.bare.to_vec(),
            server_first,
            nonce,
        });
        Ok(reply)
    }

    /// Takes the SASLResponse (client-final-message), checks channel binding, nonce and proof,
    /// and returns the server-final-message for AuthenticationSASLFinal.
    pub fn handle_client_final(&mut self, client_final: &[u8]) -> Result<Vec<u8>, ScramError> {
        let round = match std::mem::replace(&mut self.state, State::Failed) {
            State::AwaitingClientFinal(round) => round,
            _ => return Err(protocol("client-final-message out of order")),
        };
        let fin = parse_client_final(client_final)?;

        let binding = BASE64
            .decode(fin.channel_binding)
            .map_err(|_| protocol("channel binding is not base64"))?;
        // Without channel binding the client echoes its own gs2 header ("biws" / "eSws");
        // with it, the header and the hash of the certificate it saw, which differs when
        // someone in the middle terminated its TLS.
        if binding != round.expected_binding {
            return Err(ScramError::ChannelBinding(
                "SCRAM channel binding check failed",
            ));
        }
        if fin.nonce != round.nonce.as_bytes() {
            return Err(protocol("nonce does not match"));
        }
        let proof = BASE64
            .decode(fin.proof)
            .map_err(|_| protocol("proof is not base64"))?;
        let proof: [u8; 32] = proof
            .try_into()
            .map_err(|_| protocol("proof is not 32 bytes"))?;

        let mut auth_message = round.client_first_bare;
        auth_message.push(b',');
        auth_message.extend_from_slice(round.server_first.as_bytes());
        auth_message.push(b',');
        auth_message.extend_from_slice(fin.without_proof);

        let signature = hmac_sha256(&self.secret.stored_key, &[&auth_message]);
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(signature) {
            *k ^= s;
        }
        let matches = bool::from(sha256(&client_key).ct_eq(&self.secret.stored_key));
        if !matches || self.secret.doomed {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac_sha256(&self.secret.server_key, &[&auth_message]);
        self.state = State::Succeeded { client_key };
        Ok(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }

    /// After a successful exchange, the ClientKey the client proved it has. With the stored
    /// verifier it is enough to log in to PostgreSQL as this user (PgBouncer's SCRAM
    /// pass-through), so treat it like a password.
    pub fn client_key(&self) -> Option<[u8; 32]> {
        match self.state {
            State::Succeeded { client_key } => Some(client_key),
            _ => None,
        }
    }
}

/// SaltedPassword = Hi(SASLprep(password), salt, i), PBKDF2-HMAC-SHA-256 with one block.
/// Like PostgreSQL, a password SASLprep refuses is used as it is.
fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let prepared = stringprep::saslprep(password).unwrap_or(password.into());
    let keyed = keyed_hmac(prepared.as_bytes());
    let mut mac = keyed.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = mac.finalize().into_bytes().into();
    let mut result = u;
    for _ in 1..iterations {
        // Cloning the keyed state skips re-hashing the key block on every round.
        let mut mac = keyed.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes().into();
        for (r, x) in result.iter_mut().zip(u) {
            *r ^= x;
        }
    }
    result
}

pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = keyed_hmac(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA-256 keyed with `key`, built from the RFC 2104 key block (the key zero-padded to
/// 64 bytes, or its SHA-256 if longer) so that no fallible constructor is involved.
fn keyed_hmac(key: &[u8]) -> Hmac<Sha256> {
    let mut block = hmac::digest::Key::<Hmac<Sha256>>::default();
    if key.len() > block.len() {
        block[..32].copy_from_slice(&sha256(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    Hmac::new(&block)
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[cfg(test)]
mod tests;
