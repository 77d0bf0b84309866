//! The catalogue of misbehaving clients: what each sends, and what pgmoat must answer.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// The ways a client misbehaves. Each is run both one by one (with exact expectations) and
/// fifty at once next to a well-behaved client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// An HTTP request sent to the PostgreSQL port.
    Http,
    /// Random bytes.
    Garbage,
    /// A byte that looks like a TLS handshake, then random bytes.
    TlsGarbage,
    /// A startup packet claiming 100000 bytes (PostgreSQL's bound is 10000).
    HugeStartup,
    /// Protocol version 2.0.
    ProtocolV2,
    /// Protocol version 4.0 (1234.5678 would be the CancelRequest code).
    UnknownMajor,
    /// A CancelRequest without its key.
    ShortCancel,
    /// GSSENCRequest three times over.
    TooManyRequests,
    /// An SSLRequest inside the TLS it asked for.
    SslInsideTls,
    /// A startup packet without a user name.
    NoUser,
    /// A startup packet claiming 200 bytes, with 20 sent: it must not wait forever.
    ShortStartup,
    /// SSLRequest accepted, then half a ClientHello, then gone.
    MidTlsClose,
    /// TLS done, then gone before the startup packet.
    TlsThenClose,
    /// Gone right after the server's SASL request.
    ScramVanish,
    /// Gone after the server-first message.
    ScramVanishLater,
    /// A SASL initial response that is no such thing.
    MalformedSaslResponse,
    /// A password message claiming 1 GB.
    HugePasswordMessage,
    /// A query where the password response belongs.
    QueryDuringAuth,
}

pub const ALL: [Bad; 18] = [
    Bad::Http,
    Bad::Garbage,
    Bad::TlsGarbage,
    Bad::HugeStartup,
    Bad::ProtocolV2,
    Bad::UnknownMajor,
    Bad::ShortCancel,
    Bad::TooManyRequests,
    Bad::SslInsideTls,
    Bad::NoUser,
    Bad::ShortStartup,
    Bad::MidTlsClose,
    Bad::TlsThenClose,
    Bad::ScramVanish,
    Bad::ScramVanishLater,
    Bad::MalformedSaslResponse,
    Bad::HugePasswordMessage,
    Bad::QueryDuringAuth,
];

/// Deterministic noise (xorshift), so a failure can be reproduced.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn tagged(tag: u8, len: u32, body: &[u8]) -> Vec<u8> {
    let mut msg = vec![tag];
    msg.extend_from_slice(&len.to_be_bytes());
    msg.extend_from_slice(body);
    msg
}

/// Runs one bad client to its end; returns what pgmoat answered (`Closed` for the clients
/// that leave without waiting). Panics if pgmoat hangs.
pub async fn run_bad(bad: Bad, port: u16, pki: &Pki, seed: u64) -> Answer {
    let tls = || tls_client_config(&pki.ca, None);
    let started_scram = || async {
        let mut stream = raw_tls_connect(port, tls()).await;
        raw_scram_login(
            &mut stream,
            "alice",
            APP_DB,
            ALICE_PASSWORD,
            ScramStop::BeforeClientFirst,
        )
        .await;
        stream
    };
    // Writes may fail once pgmoat has given up on us; what it answered is what counts.
    match bad {
        Bad::Http | Bad::Garbage | Bad::TlsGarbage | Bad::HugeStartup | Bad::ProtocolV2 => {
            let mut tcp = tcp_connect(port).await;
            let bytes = match bad {
                Bad::Http => b"GET / HTTP/1.1\r\nHost: pgmoat\r\n\r\n".to_vec(),
                Bad::Garbage => {
                    let mut bytes = noise(seed, 4096);
                    // Not 0x16, which would make it a TLS attempt.
                    bytes[0] = 0x7f;
                    bytes
                }
                Bad::TlsGarbage => {
                    let mut bytes = noise(seed, 512);
                    bytes[0] = 0x16;
                    bytes
                }
                // Only the length: everything sent is read, so the answer is not lost to a
                // reset.
                Bad::HugeStartup => 100_000u32.to_be_bytes().to_vec(),
                _ => {
                    let mut packet = 20u32.to_be_bytes().to_vec();
                    packet.extend_from_slice(&0x0002_0000u32.to_be_bytes());
                    packet.extend_from_slice(b"user\0alice\0\0\0\0\0");
                    packet
                }
            };
            let _ = tcp.write_all(&bytes).await;
            read_answer(&mut tcp).await
        }
        Bad::UnknownMajor | Bad::ShortCancel => {
            let code: u32 = if bad == Bad::UnknownMajor {
                4 << 16
            } else {
                80_877_102
            };
            let mut packet = 12u32.to_be_bytes().to_vec();
            packet.extend_from_slice(&code.to_be_bytes());
            packet.extend_from_slice(&[0; 4]);
            let mut tcp = tcp_connect(port).await;
            let _ = tcp.write_all(&packet).await;
            read_answer(&mut tcp).await
        }
        Bad::TooManyRequests => {
            let mut tcp = tcp_connect(port).await;
            let _ = tcp.write_all(&GSSENC_REQUEST.repeat(3)).await;
            let mut declined = [0u8; 3];
            tokio::time::timeout(RAW_TIMEOUT, tcp.read_exact(&mut declined))
                .await
                .expect("no answers to GSSENCRequest")
                .unwrap();
            assert_eq!(&declined, b"NNN");
            read_answer(&mut tcp).await
        }
        Bad::SslInsideTls | Bad::NoUser => {
            let mut stream = raw_tls_connect(port, tls()).await;
            let bytes = match bad {
                Bad::SslInsideTls => SSL_REQUEST.to_vec(),
                _ => startup_packet(&[("database", APP_DB)]),
            };
            let _ = stream.write_all(&bytes).await;
            let _ = stream.flush().await;
            read_answer(&mut stream).await
        }
        Bad::ShortStartup => {
            let mut tcp = tcp_connect(port).await;
            let mut packet = 200u32.to_be_bytes().to_vec();
            packet.extend_from_slice(&0x0003_0000u32.to_be_bytes());
            packet.extend_from_slice(b"user\0alice\0");
            let _ = tcp.write_all(&packet).await;
            expect_closed_within(&mut tcp, Duration::from_secs(15)).await;
            Answer::Closed
        }
        Bad::MidTlsClose => {
            let mut tcp = tcp_connect(port).await;
            tcp.write_all(&SSL_REQUEST).await.unwrap();
            let mut partial = vec![0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4];
            partial.extend(noise(seed, 20));
            let _ = tcp.write_all(&partial).await;
            Answer::Closed
        }
        Bad::TlsThenClose => {
            let mut stream = raw_tls_connect(port, tls()).await;
            let _ = stream.shutdown().await;
            Answer::Closed
        }
        Bad::ScramVanish => {
            drop(started_scram().await);
            Answer::Closed
        }
        Bad::ScramVanishLater => {
            let mut stream = raw_tls_connect(port, tls()).await;
            raw_scram_login(
                &mut stream,
                "alice",
                APP_DB,
                ALICE_PASSWORD,
                ScramStop::AfterServerFirst,
            )
            .await;
            Answer::Closed
        }
        Bad::MalformedSaslResponse | Bad::HugePasswordMessage | Bad::QueryDuringAuth => {
            let mut stream = started_scram().await;
            let message = match bad {
                Bad::MalformedSaslResponse => {
                    let body = b"SCRAM-SHA-256\0\0\0\0\x05junk!";
                    tagged(b'p', 4 + body.len() as u32, body)
                }
                Bad::HugePasswordMessage => tagged(b'p', 1 << 30, &noise(seed, 64)),
                _ => query_message("SELECT 1"),
            };
            let _ = stream.write_all(&message).await;
            let _ = stream.flush().await;
            read_answer(&mut stream).await
        }
    }
}

/// What each bad client must get when it waits for an answer.
pub fn check(bad: Bad, answer: &Answer) -> bool {
    let is = |code: &str| matches!(answer, Answer::Error { sqlstate, .. } if sqlstate == code);
    match bad {
        Bad::HugeStartup
        | Bad::MalformedSaslResponse
        | Bad::HugePasswordMessage
        | Bad::QueryDuringAuth => is("08P01"),
        Bad::ProtocolV2 | Bad::UnknownMajor => is("0A000"),
        Bad::ShortCancel | Bad::TooManyRequests | Bad::SslInsideTls => is("08P01"),
        Bad::NoUser => is("28000"),
        // pgmoat cannot know how much of it was read before the error went out.
        Bad::Http | Bad::Garbage => is("08P01") || *answer == Answer::Closed,
        // A TLS alert or a close: never a plaintext ErrorResponse.
        Bad::TlsGarbage => !matches!(answer, Answer::Error { .. }),
        _ => *answer == Answer::Closed,
    }
}
