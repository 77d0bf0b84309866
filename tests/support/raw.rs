//! A hand-driven wire-protocol client for tests that must send what no real client would
//! (garbage, lying lengths, half a handshake) or stop half-way (mid-SCRAM). Every read is
//! bounded by a timeout, so a pgmoat that hangs fails the test instead of hanging it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// How long a raw read waits before the test calls it a hang.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(10);

/// GSSENCRequest: length 8, code 80877104.
pub const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
/// SSLRequest: length 8, code 80877103.
pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// One backend message: type byte and body (without the length word).
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl RawMessage {
    /// A field of an ErrorResponse / NoticeResponse ('C' = SQLSTATE, 'M' = message, ...).
    pub fn field(&self, code: u8) -> Option<String> {
        let mut rest = &self.body[..];
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0)?;
            if kind == code {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }

    pub fn sqlstate(&self) -> Option<String> {
        self.field(b'C')
    }

    /// The authentication request code of an 'R' message.
    pub fn auth_code(&self) -> Option<u32> {
        let bytes = self.body.get(..4)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }
}

pub async fn tcp_connect(port: u16) -> TcpStream {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let tcp = tokio::time::timeout(RAW_TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("TCP connect timed out")
        .expect("TCP connect failed");
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// Reads one message. `Ok(None)` is a clean EOF before a message starts; an EOF inside one,
/// a reset or a timeout is an `Err` (the timeout's kind is `TimedOut`).
pub async fn read_raw_message<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<Option<RawMessage>> {
    let read = async {
        let mut tag = [0u8; 1];
        if stream.read(&mut tag).await? == 0 {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if !(4..=1 << 20).contains(&len) {
            return Err(std::io::Error::other(format!("message length {len}")));
        }
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body).await?;
        Ok(Some(RawMessage { tag: tag[0], body }))
    };
    match tokio::time::timeout(RAW_TIMEOUT, read).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Reads messages until ReadyForQuery ('Z'), an ErrorResponse that ends the conversation,
/// or EOF; returns them all. Panics on a timeout (a hang is the one thing never allowed).
pub async fn read_until_ready<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<RawMessage> {
    let mut out = Vec::new();
    loop {
        match read_raw_message(stream).await {
            Ok(Some(msg)) => {
                let done = msg.tag == b'Z';
                out.push(msg);
                if done {
                    return out;
                }
            }
            Ok(None) => return out,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                panic!("no ReadyForQuery or EOF within {RAW_TIMEOUT:?}; got {out:?}")
            }
            Err(_) => return out,
        }
    }
}

/// What the server did after a bad request: an ErrorResponse (its SQLSTATE), or closed the
/// connection. Panics if it did neither within [`RAW_TIMEOUT`] (a hang).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Error { sqlstate: String, message: String },
    Closed,
    Other(u8),
}

pub async fn read_answer<S: AsyncRead + Unpin>(stream: &mut S) -> Answer {
    match read_raw_message(stream).await {
        Ok(Some(msg)) if msg.tag == b'E' => Answer::Error {
            sqlstate: msg.sqlstate().unwrap_or_default(),
            message: msg.field(b'M').unwrap_or_default(),
        },
        Ok(Some(msg)) => Answer::Other(msg.tag),
        Ok(None) => Answer::Closed,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            panic!("server neither answered nor closed within {RAW_TIMEOUT:?}")
        }
        Err(_) => Answer::Closed,
    }
}

/// Waits until the peer closes the connection (EOF or reset); panics after `limit`.
pub async fn expect_closed_within<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) {
    let drain = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    if tokio::time::timeout(limit, drain).await.is_err() {
        panic!("connection still open after {limit:?}");
    }
}

pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frontend::startup_message(params.iter().copied(), &mut buf).unwrap();
    buf.to_vec()
}

pub fn query_message(sql: &str) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frontend::query(sql, &mut buf).unwrap();
    buf.to_vec()
}

/// SSLRequest, expect 'S', then a TLS handshake for "localhost" with `config`.
pub async fn raw_tls_connect(port: u16, config: ClientConfig) -> TlsStream<TcpStream> {
    let mut tcp = tcp_connect(port).await;
    tcp.write_all(&SSL_REQUEST).await.unwrap();
    let mut answer = [0u8; 1];
    tokio::time::timeout(RAW_TIMEOUT, tcp.read_exact(&mut answer))
        .await
        .expect("no answer to SSLRequest")
        .unwrap();
    assert_eq!(answer[0], b'S', "SSLRequest not accepted");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(RAW_TIMEOUT, connector.connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake failed")
}

/// Where a raw SCRAM login stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramStop {
    /// After the server's SASL request, before answering it.
    BeforeClientFirst,
    /// After the server-first message, before the client proof.
    AfterServerFirst,
    /// Logged in: ReadyForQuery received.
    Done,
}

/// Startup for `user`/`db`, then SCRAM-SHA-256 with `password` up to `stop`. Returns every
/// message read (the last is 'Z' when `stop` is `Done` and the login worked).
pub async fn raw_scram_login<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    user: &str,
    db: &str,
    password: &str,
    stop: ScramStop,
) -> Vec<RawMessage> {
    let mut seen = Vec::new();
    stream
        .write_all(&startup_packet(&[("user", user), ("database", db)]))
        .await
        .unwrap();
    let sasl = expect_message(stream, &mut seen).await;
    assert_eq!(
        (sasl.tag, sasl.auth_code()),
        (b'R', Some(10)),
        "no SASL request: {seen:?}"
    );
    if stop == ScramStop::BeforeClientFirst {
        return seen;
    }
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let mut out = BytesMut::new();
    frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    out.clear();
    let first = expect_message(stream, &mut seen).await;
    assert_eq!(
        (first.tag, first.auth_code()),
        (b'R', Some(11)),
        "no server-first: {seen:?}"
    );
    if stop == ScramStop::AfterServerFirst {
        return seen;
    }
    scram.update(&first.body[4..]).unwrap();
    frontend::sasl_response(scram.message(), &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    seen.extend(read_until_ready(stream).await);
    seen
}

async fn expect_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    seen: &mut Vec<RawMessage>,
) -> RawMessage {
    let msg = read_raw_message(stream)
        .await
        .unwrap_or_else(|e| panic!("reading from pgmoat: {e}; so far {seen:?}"))
        .unwrap_or_else(|| panic!("pgmoat closed the connection; so far {seen:?}"));
    seen.push(msg.clone());
    msg
}

/// Runs one simple query on a logged-in raw connection; returns the messages up to 'Z'.
pub async fn raw_query<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    sql: &str,
) -> Vec<RawMessage> {
    stream.write_all(&query_message(sql)).await.unwrap();
    read_until_ready(stream).await
}
