//! Tests of the SCRAM server against the real client in postgres-protocol, the RFC 7677
//! example, and malformed or random input.

use super::messages::is_printable;
use super::*;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use proptest::prelude::*;

const MECH: &str = "SCRAM-SHA-256";

/// Runs a whole exchange; on success the client also checks the server's signature.
fn exchange(
    secret: ScramSecret,
    password: &str,
    binding: ChannelBinding,
) -> (Result<Vec<u8>, ScramError>, ScramServer) {
    let mut client = ScramSha256::new(password.as_bytes(), binding);
    let mut server = ScramServer::new(secret);
    let server_first = server.handle_client_first(MECH, client.message()).unwrap();
    client.update(&server_first).unwrap();
    let result = server.handle_client_final(client.message());
    if let Ok(server_final) = &result {
        client.finish(server_final).unwrap();
    }
    (result, server)
}

/// A server that has answered a client-first-message from the real client; returns the
/// client-final-message the real client would send, for tampering.
fn after_first_round(secret: ScramSecret, password: &str) -> (ScramServer, String) {
    let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let mut server = ScramServer::new(secret);
    let server_first = server.handle_client_first(MECH, client.message()).unwrap();
    client.update(&server_first).unwrap();
    (
        server,
        String::from_utf8(client.message().to_vec()).unwrap(),
    )
}

fn pg_verifier(password: &str) -> ScramSecret {
    ScramSecret::parse(&postgres_protocol::password::scram_sha_256(
        password.as_bytes(),
    ))
    .unwrap()
}

/// Refused as a malformed or tampered message (a wrong `c=` is a channel binding failure).
fn is_protocol(r: Result<Vec<u8>, ScramError>) -> bool {
    matches!(
        r,
        Err(ScramError::Protocol(_) | ScramError::ChannelBinding(_))
    )
}

#[test]
fn plain_text_secret_authenticates_with_and_without_y_flag() {
    for binding in [ChannelBinding::unsupported(), ChannelBinding::unrequested()] {
        let (result, server) = exchange(ScramSecret::from_password("pencil"), "pencil", binding);
        assert!(result.unwrap().starts_with(b"v="));
        assert!(server.client_key().is_some());
    }
}

#[test]
fn verifier_made_by_postgres_protocol_authenticates() {
    let (result, _) = exchange(
        pg_verifier("pencil"),
        "pencil",
        ChannelBinding::unsupported(),
    );
    result.unwrap();
}

#[test]
fn wrong_password_is_wrong_password() {
    for secret in [ScramSecret::from_password("pencil"), pg_verifier("pencil")] {
        let (result, server) = exchange(secret, "Pencil", ChannelBinding::unsupported());
        assert!(
            matches!(result, Err(ScramError::WrongPassword)),
            "{result:?}"
        );
        assert!(server.client_key().is_none());
    }
}

#[test]
fn rfc7677_example_exchange() {
    let secret = ScramSecret::from_password_with_salt(
        "pencil",
        BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
        4096,
    );
    let mut server = ScramServer::new(secret);
    let first = server
        .first_with_server_nonce(
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            false,
        )
        .unwrap();
    assert_eq!(
        first,
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    );
    let fin = server
        .handle_client_final(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
              p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        )
        .unwrap();
    assert_eq!(fin, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
}

#[test]
fn client_key_is_the_one_derived_from_the_password() {
    let secret = pg_verifier("pencil");
    let (result, server) = exchange(secret.clone(), "pencil", ChannelBinding::unsupported());
    result.unwrap();
    let key = server.client_key().unwrap();
    // StoredKey = H(ClientKey), computed independently by postgres-protocol.
    assert_eq!(sha256(&key), secret.stored_key);
    let salted = salted_password("pencil", &secret.salt, secret.iterations);
    assert_eq!(key, hmac_sha256(&salted, &[b"Client Key"]));
}

#[test]
fn unknown_user_mock_fails_like_a_wrong_password() {
    let key = b"per-process random key";
    let (result, server) = exchange(
        ScramSecret::mock_for("ghost", key),
        "anything",
        ChannelBinding::unsupported(),
    );
    assert!(
        matches!(result, Err(ScramError::WrongPassword)),
        "{result:?}"
    );
    assert!(server.client_key().is_none());

    // Looks like a real verifier, and is stable per user so retries cannot tell it apart.
    let mock = ScramSecret::mock_for("ghost", key);
    assert_eq!((mock.iterations, mock.salt.len()), (4096, 16));
    assert_eq!(mock.salt, ScramSecret::mock_for("ghost", key).salt);
    assert_ne!(mock.salt, ScramSecret::mock_for("ghost2", key).salt);
    assert_ne!(mock.salt, ScramSecret::mock_for("ghost", b"other key").salt);
}

#[test]
fn mock_fails_even_when_the_proof_is_right() {
    let real = ScramSecret::from_password("pencil");
    let mut mock = ScramSecret::mock_for("ghost", b"k");
    mock.salt = real.salt.clone();
    mock.stored_key = real.stored_key;
    mock.server_key = real.server_key;
    let (result, _) = exchange(mock, "pencil", ChannelBinding::unsupported());
    assert!(
        matches!(result, Err(ScramError::WrongPassword)),
        "{result:?}"
    );
}

#[test]
fn tampered_client_final_is_refused() {
    let secret = ScramSecret::from_password("pencil");
    let (mut server, fin) = after_first_round(secret.clone(), "pencil");
    let tampered = fin.replacen(",r=", ",r=X", 1);
    assert!(is_protocol(server.handle_client_final(tampered.as_bytes())));

    // The client said "n" but echoes "y,,": a downgrade attempt.
    let (mut server, fin) = after_first_round(secret.clone(), "pencil");
    let tampered = fin.replacen("c=biws", "c=eSws", 1);
    assert!(is_protocol(server.handle_client_final(tampered.as_bytes())));

    // A flipped proof bit is still well-formed: the proof check must catch it.
    let (mut server, fin) = after_first_round(secret, "pencil");
    let (head, proof) = fin.split_once(",p=").unwrap();
    let mut raw = BASE64.decode(proof).unwrap();
    raw[0] ^= 1;
    let tampered = format!("{head},p={}", BASE64.encode(raw));
    let result = server.handle_client_final(tampered.as_bytes());
    assert!(
        matches!(result, Err(ScramError::WrongPassword)),
        "{result:?}"
    );
}

#[test]
fn malformed_client_first_messages_are_protocol_errors() {
    let cases: &[&[u8]] = &[
        b"",
        b"n",
        b"n,",
        b"n,,",
        b"n,,r=abc",
        b"n,,n=,r=",
        b"n,,n=,r=ab c",
        b"n,,n=,r=abc,bad",
        b"x,,n=,r=abc",
        b"n,a=bob,n=,r=abc",
        b"n,,m=ext,n=,r=abc",
        b"n,,n=,r=ab\xffc",
    ];
    for case in cases {
        let mut server = ScramServer::new(ScramSecret::from_password("pw"));
        let result = server.handle_client_first(MECH, case);
        assert!(is_protocol(result), "{:?}", String::from_utf8_lossy(case));
        // The exchange is over after an error.
        assert!(is_protocol(server.handle_client_final(b"c=biws,r=abc,p=")));
    }
}

#[test]
fn extensions_and_sasl_user_name_are_accepted() {
    let mut server = ScramServer::new(ScramSecret::from_password("pw"));
    let reply = server
        .handle_client_first(MECH, b"y,,n=someone,r=abc,x=ext")
        .unwrap();
    assert!(reply.starts_with(b"r=abc"));
}

/// SCRAM-SHA-256-PLUS as libpq runs it (postgres-protocol's client, which libpq's mirrors):
/// accepted with the right tls-server-end-point data, refused with another certificate's
/// (a man in the middle), and the negotiation checks PostgreSQL makes.
#[test]
fn channel_binding_binds_the_exchange_to_the_certificate() {
    let data = vec![7u8; 32];
    let secret = ScramSecret::from_password("pw");
    let server =
        |binding: Option<Vec<u8>>| ScramServer::new(secret.clone()).with_channel_binding(binding);
    assert_eq!(
        server(Some(data.clone())).mechanisms(),
        &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
    );
    assert_eq!(server(None).mechanisms(), &[SCRAM_SHA_256]);

    for (client_sees, accepted) in [(data.clone(), true), (vec![8u8; 32], false)] {
        let mut client = ScramSha256::new(b"pw", ChannelBinding::tls_server_end_point(client_sees));
        let mut srv = server(Some(data.clone()));
        let first = srv
            .handle_client_first(SCRAM_SHA_256_PLUS, client.message())
            .unwrap();
        client.update(&first).unwrap();
        let result = srv.handle_client_final(client.message());
        match (accepted, result) {
            (true, Ok(fin)) => client.finish(&fin).unwrap(),
            (false, Err(ScramError::ChannelBinding(m))) => {
                assert_eq!(m, "SCRAM channel binding check failed")
            }
            (_, other) => panic!("unexpected {:?}", other.map(|_| ())),
        }
    }
    let refused = |mech: &str, first: &[u8], binding: Option<Vec<u8>>| {
        matches!(
            server(binding).handle_client_first(mech, first),
            Err(ScramError::ChannelBinding(_) | ScramError::UnsupportedMechanism)
        )
    };
    // -PLUS without binding data, binding data without -PLUS, a downgraded 'y' over TLS,
    // another binding type, and -PLUS where it was not offered.
    assert!(refused(
        SCRAM_SHA_256_PLUS,
        b"n,,n=,r=abc",
        Some(data.clone())
    ));
    assert!(refused(
        MECH,
        b"p=tls-server-end-point,,n=,r=abc",
        Some(data.clone())
    ));
    assert!(refused(MECH, b"y,,n=,r=abc", Some(data.clone())));
    assert!(refused(
        SCRAM_SHA_256_PLUS,
        b"p=tls-unique,,n=,r=abc",
        Some(data.clone())
    ));
    assert!(refused(
        SCRAM_SHA_256_PLUS,
        b"p=tls-server-end-point,,n=,r=abc",
        None
    ));
    // Without TLS a 'y' client is fine: nobody offered it -PLUS.
    assert!(
        server(None)
            .handle_client_first(MECH, b"y,,n=,r=abc")
            .is_ok()
    );
}

#[test]
fn other_mechanisms_are_refused() {
    let mut server = ScramServer::new(ScramSecret::from_password("pw"));
    let result = server.handle_client_first("SCRAM-SHA-256-PLUS", b"n,,n=,r=abc");
    assert!(matches!(result, Err(ScramError::UnsupportedMechanism)));
}

#[test]
fn malformed_client_final_messages_are_protocol_errors() {
    let (_, good) = after_first_round(ScramSecret::from_password("pw"), "pw");
    let (head, _) = good.split_once(",p=").unwrap();
    let nonce = head.strip_prefix("c=biws,").unwrap();
    let cases = [
        String::new(),
        "c=biws".into(),
        head.to_string(),
        format!("{head},p=not*base64"),
        format!("{head},p={}", BASE64.encode([0u8; 31])),
        format!("c=b!ws,{nonce},p={}", BASE64.encode([0u8; 32])),
        format!("{nonce},c=biws,p={}", BASE64.encode([0u8; 32])),
        format!("{head},junk,p={}", BASE64.encode([0u8; 32])),
    ];
    for case in cases {
        let (mut server, _) = after_first_round(ScramSecret::from_password("pw"), "pw");
        let result = server.handle_client_final(case.as_bytes());
        assert!(is_protocol(result), "{case:?}");
    }
}

#[test]
fn messages_out_of_order_are_protocol_errors() {
    let mut server = ScramServer::new(ScramSecret::from_password("pw"));
    assert!(is_protocol(server.handle_client_final(b"c=biws,r=a,p=")));
    let mut server = ScramServer::new(ScramSecret::from_password("pw"));
    server.handle_client_first(MECH, b"n,,n=,r=abc").unwrap();
    assert!(is_protocol(
        server.handle_client_first(MECH, b"n,,n=,r=abc")
    ));
}

#[test]
fn server_nonces_are_fresh_printable_and_extend_the_client_nonce() {
    let nonce = |reply: Vec<u8>| {
        let text = String::from_utf8(reply).unwrap();
        text.split(',')
            .next()
            .unwrap()
            .strip_prefix("r=abc")
            .unwrap()
            .to_owned()
    };
    let secret = ScramSecret::from_password("pw");
    let a = nonce(
        ScramServer::new(secret.clone())
            .handle_client_first(MECH, b"n,,n=,r=abc")
            .unwrap(),
    );
    let b = nonce(
        ScramServer::new(secret)
            .handle_client_first(MECH, b"n,,n=,r=abc")
            .unwrap(),
    );
    assert_ne!(a, b);
    assert_eq!(a.len(), 24);
    assert!(a.bytes().all(is_printable));
}

#[test]
fn secrets_round_trip_and_bad_ones_are_refused() {
    let secret = ScramSecret::from_password("pencil");
    let again = ScramSecret::parse(&secret.encode()).unwrap();
    assert_eq!(again.encode(), secret.encode());

    let good = secret.encode();
    let (head, keys) = good.rsplit_once('$').unwrap();
    let (stored, server) = keys.split_once(':').unwrap();
    let bad = [
        good.replace("SCRAM-SHA-256$", "SCRAM-SHA-1$"),
        good.replace("$4096:", "$0:"),
        good.replace("$4096:", "$-1:"),
        good.replace("$4096:", "$4096"),
        format!("{head}${stored}"),
        format!("{head}${stored}:{}", &server[4..]),
        format!("{head}$!{}:{server}", &stored[1..]),
        format!("SCRAM-SHA-256$4096:${stored}:{server}"),
    ];
    for text in bad {
        let err = ScramSecret::parse(&text).unwrap_err();
        assert!(matches!(err, ScramError::InvalidSecret(_)), "{err:?}");
        assert!(!err.to_string().contains(&stored[..8]), "{err}");
    }
}

#[test]
fn from_password_applies_saslprep() {
    let salt = b"0123456789abcdef".to_vec();
    // U+00AD (soft hyphen) maps to nothing, U+00A0 (no-break space) to a space.
    let prepared = ScramSecret::from_password_with_salt("pen\u{AD}cil x", salt.clone(), 16);
    let raw = ScramSecret::from_password_with_salt("pencil\u{A0}x", salt, 16);
    assert_eq!(prepared.stored_key, raw.stored_key);
    // A password SASLprep refuses (a control character) is used as is, not rejected.
    let (result, _) = exchange(
        ScramSecret::from_password("pen\u{7}cil"),
        "pen\u{7}cil",
        ChannelBinding::unsupported(),
    );
    result.unwrap();
}

#[test]
fn long_passwords_use_the_hashed_hmac_key() {
    let long = "p".repeat(100);
    let (result, _) = exchange(pg_verifier(&long), &long, ChannelBinding::unsupported());
    result.unwrap();
}

#[test]
fn debug_hides_keys_and_salt() {
    let secret = ScramSecret::from_password("pencil");
    let shown = format!("{secret:?}");
    assert_eq!(shown, "ScramSecret { iterations: 4096, .. }");
}

proptest! {
    #[test]
    fn client_first_never_panics(msg in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut server = ScramServer::new(ScramSecret::mock_for("u", b"k"));
        let _ = server.handle_client_first(MECH, &msg);
    }

    #[test]
    fn client_final_never_panics_or_succeeds(msg in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut server = ScramServer::new(ScramSecret::mock_for("u", b"k"));
        server.handle_client_first(MECH, b"n,,n=,r=abc").unwrap();
        prop_assert!(server.handle_client_final(&msg).is_err());
    }

}

proptest! {
    // Each case runs the real client's 4096-round key derivation, so fewer cases.
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn near_valid_client_final_never_panics(tail in "[a-zA-Z0-9=,+/]{0,80}", cut in 0usize..120) {
        let (mut server, good) = after_first_round(ScramSecret::mock_for("u", b"k"), "pw");
        let mut msg = good.into_bytes();
        msg.truncate(cut.min(msg.len()));
        msg.extend_from_slice(tail.as_bytes());
        prop_assert!(server.handle_client_final(&msg).is_err());
    }
}
