//! Clients that misbehave on the wire: garbage, oversized or unknown-version startup packets,
//! lengths that lie, and clients that vanish half-way through TLS or SCRAM. Each gets an
//! ErrorResponse where the protocol allows one (or is closed), is logged with its peer, and
//! costs nobody else anything: no panic, no hang, no dirty server connection handed on.

mod support;

#[path = "bad_input/clients.rs"]
mod clients;

use std::time::{Duration, Instant};

use clients::{ALL, check, run_bad, tagged};
use support::*;
use tokio::io::AsyncWriteExt;

fn still_running(pgmoat: &mut Pgmoat) {
    assert!(
        pgmoat.wait_exit(Duration::ZERO).is_none(),
        "pgmoat died:\n{}",
        pgmoat.log()
    );
}

/// No PostgreSQL is needed: all of this ends before a server connection is wanted.
#[tokio::test]
async fn each_bad_client_is_answered_or_closed_and_logged_with_its_peer() {
    let pki = Pki::new();
    let mut pgmoat = Pgmoat::start(
        &ConfigBuilder::for_port(&pki, 1)
            .set("client_login_timeout", "2")
            .build(),
    );
    let port = pgmoat.port();
    let mut wrong = Vec::new();
    for (i, bad) in ALL.into_iter().enumerate() {
        let started = Instant::now();
        let answer = run_bad(bad, port, &pki, i as u64 + 1).await;
        if !check(bad, &answer) {
            wrong.push(format!("{bad:?}: {answer:?}"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{bad:?} took too long"
        );
    }
    assert!(
        wrong.is_empty(),
        "unexpected answers:\n{}",
        wrong.join("\n")
    );

    // Still serving: a TLS handshake and a startup get as far as authentication.
    let mut stream = raw_tls_connect(port, tls_client_config(&pki.ca, None)).await;
    raw_scram_login(
        &mut stream,
        "alice",
        APP_DB,
        ALICE_PASSWORD,
        ScramStop::AfterServerFirst,
    )
    .await;
    still_running(&mut pgmoat);

    let log = pgmoat.plain_log();
    for needle in [
        "invalid startup packet length 100000",
        "unsupported frontend protocol 2.0",
        "message of type 'p' is 1073741825 bytes long",
    ] {
        let logged_with_peer = log
            .lines()
            .any(|l| l.contains(needle) && l.contains("peer=127.0.0.1:"));
        assert!(
            logged_with_peer,
            "no line with {needle:?} and the peer:\n{log}"
        );
    }
    assert!(!log.contains("panicked"), "{log}");
}

/// A newer minor version with a protocol option is not bad input: PostgreSQL answers the
/// startup packet with NegotiateProtocolVersion (3.0, option not understood) before anything
/// else, then asks for authentication.
#[tokio::test]
async fn a_newer_minor_version_is_negotiated_before_authentication() {
    let pki = Pki::new();
    let pgmoat = Pgmoat::start(&ConfigBuilder::for_port(&pki, 1).build());
    let port = pgmoat.port();
    let mut stream = raw_tls_connect(port, tls_client_config(&pki.ca, None)).await;
    let mut packet = Vec::new();
    for (k, v) in [
        ("user", "alice"),
        ("database", APP_DB),
        ("_pq_.future", "1"),
    ] {
        packet.extend_from_slice(k.as_bytes());
        packet.push(0);
        packet.extend_from_slice(v.as_bytes());
        packet.push(0);
    }
    packet.push(0);
    let mut startup = ((packet.len() + 8) as u32).to_be_bytes().to_vec();
    startup.extend_from_slice(&0x0003_0002u32.to_be_bytes());
    startup.extend_from_slice(&packet);
    stream.write_all(&startup).await.unwrap();
    let negotiate = read_raw_message(&mut stream).await.unwrap().unwrap();
    assert_eq!(negotiate.tag, b'v', "{negotiate:?}");
    // PostgreSQL sends PG_PROTOCOL_LATEST, the whole version (major << 16 | minor), although
    // the protocol page says "minor"; libpq reads it that way.
    let mut expected = 0x0003_0000u32.to_be_bytes().to_vec();
    expected.extend_from_slice(&1u32.to_be_bytes());
    expected.extend_from_slice(b"_pq_.future\0");
    assert_eq!(negotiate.body, expected);
    let auth = read_raw_message(&mut stream).await.unwrap().unwrap();
    assert_eq!((auth.tag, auth.auth_code()), (b'R', Some(10)), "{auth:?}");
}

/// What a logged-in client sends that no server should be handed on after.
struct Lie {
    what: &'static str,
    message: Vec<u8>,
    /// Sent inside an open transaction (with an uncommitted row) rather than at idle.
    in_transaction: bool,
    then: Then,
}

/// What the liar does or gets afterwards.
enum Then {
    /// Leaves at once.
    Vanish,
    /// Is disconnected without a word.
    Closed,
    /// Gets an ErrorResponse with this SQLSTATE, then is disconnected.
    Error(&'static str),
    /// Gets some ErrorResponse (from PostgreSQL or pgmoat), then is disconnected.
    AnyError,
}

impl Lie {
    fn new(what: &'static str, message: Vec<u8>, then: Then) -> Lie {
        Lie {
            what,
            message,
            in_transaction: true,
            then,
        }
    }

    fn idle(mut self) -> Lie {
        self.in_transaction = false;
        self
    }
}

#[tokio::test]
async fn a_lying_length_after_login_never_hands_on_a_dirty_server() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    // One server connection: if a dirty one were handed on, the next client would get it.
    let pgmoat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "1")
            .build(),
    );
    let port = pgmoat.port();
    let good = connect(
        port,
        "alice",
        Some(ALICE_PASSWORD),
        APP_DB,
        Some(tls_client_config(&pki.ca, None)),
    )
    .await
    .unwrap();

    let lies = [
        // Shorter than the length word itself.
        Lie::new("length 2", tagged(b'Q', 2, b""), Then::Error("08P01")),
        // Negative as a signed int.
        Lie::new(
            "length 0xffffffff",
            tagged(b'Q', u32::MAX, b"SELECT 1"),
            Then::Error("08P01"),
        ),
        // 1 GB promised, 100 bytes sent, then the client is gone: the server holds half a
        // message, inside a transaction or not.
        Lie::new(
            "length 1 GB",
            tagged(b'Q', 1 << 30, &[b'x'; 100]),
            Then::Vanish,
        ),
        Lie::new(
            "length 1 GB at idle",
            tagged(b'Q', 1 << 30, &[b'x'; 100]),
            Then::Vanish,
        )
        .idle(),
        // Not lies, but ends a pooler must not mistake for a clean server either.
        Lie::new(
            "Terminate inside a transaction",
            tagged(b'X', 4, b""),
            Then::Closed,
        ),
        Lie::new("unknown message type", tagged(b'z', 4, b""), Then::AnyError),
    ];
    for (i, lie) in lies.into_iter().enumerate() {
        let what = lie.what;
        let marker = format!("dirty-{i}");
        let mut stream = raw_tls_connect(port, tls_client_config(&pki.ca, None)).await;
        let login = raw_scram_login(
            &mut stream,
            "alice",
            APP_DB,
            ALICE_PASSWORD,
            ScramStop::Done,
        )
        .await;
        assert_eq!(login.last().map(|m| m.tag), Some(b'Z'), "{login:?}");
        if lie.in_transaction {
            // An open transaction with an uncommitted row holds the one server connection.
            let reply = raw_query(
                &mut stream,
                &format!("BEGIN; INSERT INTO items (v) VALUES ('{marker}')"),
            )
            .await;
            assert_eq!(
                reply.last().map(|m| m.body.clone()),
                Some(b"T".to_vec()),
                "{reply:?}"
            );
        }
        let _ = stream.write_all(&lie.message).await;
        let _ = stream.flush().await;
        match lie.then {
            Then::Vanish => drop(stream),
            Then::Closed => expect_closed_within(&mut stream, Duration::from_secs(10)).await,
            Then::Error(code) => {
                let answer = read_answer(&mut stream).await;
                assert!(
                    matches!(&answer, Answer::Error { sqlstate, .. } if sqlstate == code),
                    "{what}: {answer:?}"
                );
                expect_closed_within(&mut stream, Duration::from_secs(10)).await;
            }
            Then::AnyError => {
                let answer = read_answer(&mut stream).await;
                assert!(
                    matches!(&answer, Answer::Error { .. }),
                    "{what}: {answer:?}"
                );
                expect_closed_within(&mut stream, Duration::from_secs(10)).await;
            }
        }

        // The next query gets a clean server, promptly: the open transaction is gone and its
        // row with it.
        let count: i64 = tokio::time::timeout(
            Duration::from_secs(10),
            good.query_one("SELECT count(*) FROM items WHERE v = $1", &[&marker]),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what}: the good client waited for a server\n{}",
                pgmoat.log()
            )
        })
        .unwrap()
        .get(0);
        assert_eq!(
            count, 0,
            "{what}: a server in the bad client's transaction was reused"
        );
        let in_tx: bool = good
            .query_one("SELECT txid_current_if_assigned() IS NOT NULL", &[])
            .await
            .unwrap()
            .get(0);
        assert!(
            !in_tx,
            "{what}: the good client landed inside a transaction"
        );
    }
    assert!(!pgmoat.log().contains("panicked"), "{}", pgmoat.log());
}

#[tokio::test]
async fn fifty_bad_clients_at_once_cost_a_good_client_nothing() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let mut pgmoat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("client_login_timeout", "2")
            .build(),
    );
    let port = pgmoat.port();
    let good = connect(
        port,
        "alice",
        Some(ALICE_PASSWORD),
        APP_DB,
        Some(tls_client_config(&pki.ca, None)),
    )
    .await
    .unwrap();

    let pki = std::sync::Arc::new(pki);
    let mut bad_clients = tokio::task::JoinSet::new();
    for i in 0..50 {
        let bad = ALL[i % ALL.len()];
        let pki = pki.clone();
        bad_clients.spawn(async move {
            let answer = run_bad(bad, port, &pki, i as u64 + 100).await;
            (bad, answer)
        });
    }

    // The good client keeps working the whole time, each query promptly.
    let mut queries = 0;
    let mut wrong = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !bad_clients.is_empty() {
        let got: i32 = tokio::time::timeout(
            Duration::from_secs(10),
            good.query_one("SELECT $1::int4", &[&queries]),
        )
        .await
        .expect("the good client's query was held up")
        .unwrap()
        .get(0);
        assert_eq!(got, queries);
        queries += 1;
        while let Some(done) = bad_clients.try_join_next() {
            let (bad, answer) = done.unwrap();
            if !check(bad, &answer) {
                wrong.push(format!("{bad:?}: {answer:?}"));
            }
        }
        assert!(
            Instant::now() < deadline,
            "bad clients still running after 60 s"
        );
    }
    assert!(
        wrong.is_empty(),
        "unexpected answers:\n{}",
        wrong.join("\n")
    );
    assert!(queries > 0);
    still_running(&mut pgmoat);
    let got: i32 = good.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(got, 7);
    let log = pgmoat.plain_log();
    let peers = log
        .lines()
        .filter(|l| l.contains("peer=127.0.0.1:") && l.contains("client connection failed"))
        .count();
    assert!(peers >= 10, "refusals not logged with their peers:\n{log}");
}

/// Names a client sends before it has authenticated are logged escaped: a user name with a
/// newline cannot forge a log line.
#[tokio::test]
async fn client_supplied_names_cannot_forge_log_lines() {
    let pki = Pki::new();
    let pgmoat = Pgmoat::start(&ConfigBuilder::for_port(&pki, 1).build());
    let mut stream = raw_tls_connect(pgmoat.port(), tls_client_config(&pki.ca, None)).await;
    let forged = "2026-01-01T00:00:00.000000Z  INFO pgmoat: forged";
    let user = format!("mallory\n{forged}");
    let startup = startup_packet(&[("user", user.as_str()), ("database", "app\nx")]);
    stream.write_all(&startup).await.unwrap();
    // Refused (no such database), after the startup was read and logged.
    let answer = read_raw_message(&mut stream).await.unwrap().unwrap();
    assert_eq!(answer.sqlstate().as_deref(), Some("3D000"), "{answer:?}");
    pgmoat.wait_for_log("client refused", Duration::from_secs(10));
    let log = pgmoat.log();
    assert!(log.contains(r"mallory\n2026"), "escaped in the log:\n{log}");
    assert!(log.contains(r"app\nx"), "escaped in the refusal:\n{log}");
    assert!(
        !log.lines().any(|l| l.starts_with(forged)),
        "a forged line made it into the log:\n{log}"
    );
}
