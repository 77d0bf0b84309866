//! Parsing of the two SCRAM client messages. Works on bytes, so no input can split a UTF-8
//! character or panic on an index; every error is a fixed text that never quotes the input.

use super::{ScramError, protocol};

/// The gs2 channel-binding flag of a client-first-message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CbindFlag<'a> {
    /// `n`: the client does not support channel binding.
    No,
    /// `y`: the client supports it but thinks the server does not.
    ClientOnly,
    /// `p=NAME`: the client binds to channel type NAME.
    Binds(&'a [u8]),
}

pub(super) struct ClientFirst<'a> {
    pub(super) flag: CbindFlag<'a>,
    pub(super) gs2_header: &'a [u8],
    pub(super) bare: &'a [u8],
    pub(super) client_nonce: &'a str,
}

/// `gs2-cbind-flag "," [authzid] "," client-first-message-bare`, where the bare part is
/// `[reserved-mext ","] "n=" user "," "r=" nonce ["," extensions]`.
pub(super) fn parse_client_first(msg: &[u8]) -> Result<ClientFirst<'_>, ScramError> {
    let mut parts = msg.splitn(3, |&b| b == b',');
    let flag = parts.next().unwrap_or_default();
    let authzid = parts.next().ok_or_else(|| protocol("missing gs2 header"))?;
    let bare = parts.next().ok_or_else(|| protocol("missing gs2 header"))?;
    let cbind = match flag {
        b"n" => CbindFlag::No,
        b"y" => CbindFlag::ClientOnly,
        [b'p', b'=', name @ ..] if !name.is_empty() => CbindFlag::Binds(name),
        _ => return Err(protocol("unexpected channel-binding flag")),
    };
    if !authzid.is_empty() {
        return Err(protocol("authorization identity is not supported"));
    }
    // The flag and two commas (the authzid between them is empty).
    let gs2_header = msg
        .get(..flag.len() + 2)
        .ok_or_else(|| protocol("missing gs2 header"))?;

    let mut attrs = bare.split(|&b| b == b',');
    let user = attrs.next().unwrap_or_default();
    if user.starts_with(b"m=") {
        return Err(protocol("client requires an unsupported SCRAM extension"));
    }
    if !user.starts_with(b"n=") {
        return Err(protocol("expected user name attribute"));
    }
    // PostgreSQL ignores this name (it may be empty); the startup packet's user counts.
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix(b"r="))
        .ok_or_else(|| protocol("expected nonce attribute"))?;
    if nonce.is_empty() || !nonce.iter().all(|&b| is_printable(b)) {
        return Err(protocol("nonce is empty or not printable"));
    }
    for ext in attrs {
        check_attribute(ext)?;
    }
    let client_nonce =
        std::str::from_utf8(nonce).map_err(|_| protocol("nonce is not printable"))?;
    Ok(ClientFirst {
        flag: cbind,
        gs2_header,
        bare,
        client_nonce,
    })
}

pub(super) struct ClientFinal<'a> {
    pub(super) channel_binding: &'a [u8],
    pub(super) nonce: &'a [u8],
    pub(super) without_proof: &'a [u8],
    pub(super) proof: &'a [u8],
}

/// `"c=" cbind "," "r=" nonce ["," extensions] "," "p=" proof`.
pub(super) fn parse_client_final(msg: &[u8]) -> Result<ClientFinal<'_>, ScramError> {
    let proof_at = msg
        .windows(3)
        .rposition(|w| w == b",p=")
        .ok_or_else(|| protocol("expected proof attribute"))?;
    let (without_proof, proof) = (&msg[..proof_at], &msg[proof_at + 3..]);
    let mut attrs = without_proof.split(|&b| b == b',');
    let channel_binding = attrs
        .next()
        .and_then(|a| a.strip_prefix(b"c="))
        .ok_or_else(|| protocol("expected channel binding attribute"))?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix(b"r="))
        .ok_or_else(|| protocol("expected nonce attribute"))?;
    for ext in attrs {
        check_attribute(ext)?;
    }
    Ok(ClientFinal {
        channel_binding,
        nonce,
        without_proof,
        proof,
    })
}

/// An extension attribute we skip must still look like one: a letter, '=', then a value.
fn check_attribute(attr: &[u8]) -> Result<(), ScramError> {
    match attr {
        [name, b'=', ..] if name.is_ascii_alphabetic() => Ok(()),
        _ => Err(protocol("malformed attribute")),
    }
}

/// RFC 5802 "printable": visible ASCII except ','.
pub(super) fn is_printable(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}
