//! The client side of SCRAM-SHA-256 from keys instead of a password. When auth_file holds
//! only a SCRAM verifier (copied from pg_authid, as PgBouncer users do), pgmoat learns the
//! ClientKey from the client's own proof and logs in to PostgreSQL with it. That works when
//! PostgreSQL stores the same verifier (same salt and iterations), which is checked.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::auth::scram::{hmac_sha256, sha256};

/// ClientKey and the verifier's public parts.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
    pub salt: Vec<u8>,
    pub iterations: u32,
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(<redacted>)")
    }
}

/// What pgmoat claims about channel binding in a SCRAM login to PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// `n`: no TLS (or server_channel_binding = disable).
    None,
    /// `y`: pgmoat could bind, but PostgreSQL did not offer SCRAM-SHA-256-PLUS.
    ClientOnly,
    /// `p=tls-server-end-point` with this data (the hash of PostgreSQL's certificate).
    Bind(Vec<u8>),
}

impl Binding {
    /// The gs2 header of the client-first-message.
    fn gs2_header(&self) -> &'static str {
        match self {
            Binding::None => "n,,",
            Binding::ClientOnly => "y,,",
            Binding::Bind(_) => "p=tls-server-end-point,,",
        }
    }

    /// The same claim for postgres-protocol's password-based client.
    pub fn for_library(&self) -> postgres_protocol::authentication::sasl::ChannelBinding {
        use postgres_protocol::authentication::sasl::ChannelBinding;
        match self {
            Binding::None => ChannelBinding::unsupported(),
            Binding::ClientOnly => ChannelBinding::unrequested(),
            Binding::Bind(data) => ChannelBinding::tls_server_end_point(data.clone()),
        }
    }
}

pub struct KeyedScram {
    keys: ScramKeys,
    binding: Binding,
    client_first_bare: String,
    nonce: String,
    auth_message: Option<String>,
}

impl KeyedScram {
    pub fn new(keys: ScramKeys, binding: Binding) -> Self {
        let raw: [u8; 18] = rand::random();
        let nonce = STANDARD.encode(raw);
        KeyedScram {
            keys,
            binding,
            client_first_bare: format!("n=,r={nonce}"),
            nonce,
            auth_message: None,
        }
    }

    /// client-first-message, with the channel binding claim.
    pub fn client_first(&self) -> Vec<u8> {
        format!("{}{}", self.binding.gs2_header(), self.client_first_bare).into_bytes()
    }

    /// Takes server-first-message, returns client-final-message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        let text =
            std::str::from_utf8(server_first).map_err(|_| "server-first-message is not UTF-8")?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for part in text.split(',') {
            match part.split_at_checked(2) {
                Some(("r=", v)) => nonce = Some(v),
                Some(("s=", v)) => salt = STANDARD.decode(v).ok(),
                Some(("i=", v)) => iterations = v.parse::<u32>().ok(),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err("malformed server-first-message".into());
        };
        if !nonce.starts_with(&self.nonce) {
            return Err("server nonce does not extend the client nonce".into());
        }
        if salt != self.keys.salt || iterations != self.keys.iterations {
            return Err(
                "PostgreSQL's SCRAM verifier for this user differs from auth_file's (salt or \
                 iterations): copy the verifier from pg_authid, or give the user a plain-text \
                 password"
                    .into(),
            );
        }
        // c= carries the gs2 header, and the binding data when binding.
        let mut cbind = self.binding.gs2_header().as_bytes().to_vec();
        if let Binding::Bind(data) = &self.binding {
            cbind.extend_from_slice(data);
        }
        let without_proof = format!("c={},r={nonce}", STANDARD.encode(cbind));
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let stored_key = sha256(&self.keys.client_key);
        let signature = hmac_sha256(&stored_key, &[auth_message.as_bytes()]);
        let proof: Vec<u8> = self
            .keys
            .client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
    }

    /// Checks server-final-message: PostgreSQL proves it knows the ServerKey too.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), String> {
        let auth_message = self
            .auth_message
            .as_deref()
            .ok_or("SCRAM final before continue")?;
        let text =
            std::str::from_utf8(server_final).map_err(|_| "server-final-message is not UTF-8")?;
        let verifier = text
            .strip_prefix("v=")
            .and_then(|v| STANDARD.decode(v.trim_end()).ok())
            .ok_or("malformed server-final-message")?;
        let expected = hmac_sha256(&self.keys.server_key, &[auth_message.as_bytes()]);
        if verifier != expected {
            return Err("PostgreSQL's SCRAM server signature does not match".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{ScramSecret, ScramServer};

    #[test]
    fn logs_in_against_pgmoats_own_scram_server_with_keys_only() {
        // A verifier as pg_authid stores it, and the ClientKey a client's proof reveals.
        let verifier = ScramSecret::from_password("s3cret");
        let mut client = postgres_protocol::authentication::sasl::ScramSha256::new(
            b"s3cret",
            postgres_protocol::authentication::sasl::ChannelBinding::unsupported(),
        );
        let mut server = ScramServer::new(verifier.clone());
        let first = server
            .handle_client_first("SCRAM-SHA-256", client.message())
            .unwrap();
        client.update(&first).unwrap();
        let fin = server.handle_client_final(client.message()).unwrap();
        client.finish(&fin).unwrap();
        let client_key = server.client_key().unwrap();

        // Now pgmoat, holding only keys, logs in to a server with the same verifier.
        let keys = ScramKeys {
            client_key,
            server_key: verifier.server_key,
            salt: verifier.salt.clone(),
            iterations: verifier.iterations,
        };
        let mut keyed = KeyedScram::new(keys.clone(), Binding::None);
        let mut upstream = ScramServer::new(verifier.clone());
        let first = upstream
            .handle_client_first("SCRAM-SHA-256", &keyed.client_first())
            .unwrap();
        let fin = keyed.client_final(&first).unwrap();
        let server_final = upstream.handle_client_final(&fin).unwrap();
        keyed.verify_server_final(&server_final).unwrap();
        assert!(keyed.verify_server_final(b"v=AAAA").is_err());

        // The same with channel binding: accepted with the certificate's data, refused
        // with another's (a man in the middle), as PostgreSQL's server side would.
        for (seen, accepted) in [(vec![5u8; 32], true), (vec![6u8; 32], false)] {
            let mut keyed = KeyedScram::new(keys.clone(), Binding::Bind(seen));
            let mut upstream =
                ScramServer::new(verifier.clone()).with_channel_binding(Some(vec![5u8; 32]));
            let first = upstream
                .handle_client_first("SCRAM-SHA-256-PLUS", &keyed.client_first())
                .unwrap();
            let fin = keyed.client_final(&first).unwrap();
            assert_eq!(upstream.handle_client_final(&fin).is_ok(), accepted);
        }
    }

    #[test]
    fn a_different_salt_is_refused_with_advice() {
        let keys = ScramKeys {
            client_key: [1; 32],
            server_key: [2; 32],
            salt: vec![1, 2, 3],
            iterations: 4096,
        };
        let mut keyed = KeyedScram::new(keys, Binding::None);
        let nonce = keyed.nonce.clone();
        let err = keyed
            .client_final(format!("r={nonce}xyz,s={},i=4096", STANDARD.encode([9, 9])).as_bytes())
            .unwrap_err();
        assert!(err.contains("pg_authid"));
    }
}
