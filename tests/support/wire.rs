//! A wire-level PostgreSQL client for the tests that need what drivers hide: the cancel key a
//! client was given, statement names of its own choosing (tokio-postgres numbers statements
//! process-wide), prepare-only batches and exact message order. TLS (rustls) or plain TCP,
//! SCRAM or trust; text format only.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One backend message.
#[derive(Debug, Clone)]
pub struct RawMsg {
    pub tag: u8,
    pub body: Bytes,
}

impl RawMsg {
    /// The fields of an ErrorResponse / NoticeResponse by their one-letter codes.
    pub fn field(&self, code: u8) -> Option<String> {
        let mut rest = &self.body[..];
        while let Some((&c, tail)) = rest.split_first() {
            if c == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0)?;
            if c == code {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }

    /// The columns of a DataRow, as text.
    pub fn columns(&self) -> Vec<Option<String>> {
        let mut body = &self.body[..];
        let n = body.get_i16();
        (0..n)
            .map(|_| {
                let len = body.get_i32();
                if len < 0 {
                    return None;
                }
                let (value, tail) = body.split_at(len as usize);
                body = tail;
                Some(String::from_utf8_lossy(value).into_owned())
            })
            .collect()
    }
}

/// An ErrorResponse a round trip ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawError {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for RawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

pub struct RawClient {
    io: Box<dyn Io>,
    buf: BytesMut,
    /// BackendKeyData the server (pgmoat) gave this client.
    pub pid: i32,
    pub secret: i32,
    /// ParameterStatus values seen so far.
    pub params: Vec<(String, String)>,
}

impl RawClient {
    /// Connects to 127.0.0.1:`port` (TLS with SNI "localhost" when `tls` is given) and logs
    /// in with `extra` startup parameters besides user and database.
    pub async fn connect(
        port: u16,
        user: &str,
        password: Option<&str>,
        db: &str,
        extra: &[(&str, &str)],
        tls: Option<ClientConfig>,
    ) -> Result<RawClient, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let io: Box<dyn Io> = match tls {
            None => Box::new(tcp),
            Some(config) => {
                let mut req = BytesMut::new();
                frontend::ssl_request(&mut req);
                tcp.write_all(&req).await.map_err(|e| e.to_string())?;
                let mut answer = [0u8; 1];
                tcp.read_exact(&mut answer)
                    .await
                    .map_err(|e| e.to_string())?;
                if answer[0] != b'S' {
                    return Err(format!("SSLRequest answered {:?}", answer[0] as char));
                }
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                let name = ServerName::try_from("localhost").unwrap();
                Box::new(
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| e.to_string())?,
                )
            }
        };
        let mut client = RawClient {
            io,
            buf: BytesMut::new(),
            pid: 0,
            secret: 0,
            params: Vec::new(),
        };
        let mut params = vec![("user", user), ("database", db)];
        params.extend_from_slice(extra);
        let mut out = BytesMut::new();
        frontend::startup_message(params, &mut out).unwrap();
        client.send(&out).await;
        client.login(password).await?;
        Ok(client)
    }

    async fn login(&mut self, password: Option<&str>) -> Result<(), String> {
        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = self.recv().await?;
            match msg.tag {
                b'R' => {
                    let mut body = &msg.body[..];
                    let code = body.get_i32();
                    let mut out = BytesMut::new();
                    match code {
                        0 => {}
                        3 => {
                            let pw = password.ok_or("server asked for a password")?;
                            frontend::password_message(pw.as_bytes(), &mut out).unwrap();
                        }
                        10 => {
                            let pw = password.ok_or("server asked for SCRAM")?;
                            let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                            frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)
                                .unwrap();
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or("SASLContinue before SASL")?;
                            s.update(body).map_err(|e| e.to_string())?;
                            frontend::sasl_response(s.message(), &mut out).unwrap();
                        }
                        12 => {
                            let s = scram.as_mut().ok_or("SASLFinal before SASL")?;
                            s.finish(body).map_err(|e| e.to_string())?;
                        }
                        other => return Err(format!("unsupported auth request {other}")),
                    }
                    if !out.is_empty() {
                        self.send(&out).await;
                    }
                }
                b'K' => {
                    let mut body = &msg.body[..];
                    self.pid = body.get_i32();
                    self.secret = body.get_i32();
                }
                b'S' => self.note_param(&msg),
                b'E' => return Err(error_of(&msg).to_string()),
                b'Z' => return Ok(()),
                _ => {}
            }
        }
    }

    fn note_param(&mut self, msg: &RawMsg) {
        let mut parts = msg.body.split(|&b| b == 0);
        let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let value = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        match self.params.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.params.push((name, value)),
        }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// The next message; Err on EOF or a broken connection.
    pub async fn recv(&mut self) -> Result<RawMsg, String> {
        read_msg(&mut self.io, &mut self.buf).await
    }

    /// A reader of messages and the writing half, for a test that writes while it reads
    /// (a pipeline longer than the socket buffers).
    pub fn into_split(self) -> (RawReader, Box<dyn AsyncWrite + Unpin + Send>) {
        let (read, write) = tokio::io::split(self.io);
        (
            RawReader {
                io: read,
                buf: self.buf,
            },
            Box::new(write),
        )
    }

    /// Every message up to and including ReadyForQuery.
    pub async fn until_ready(&mut self) -> Result<Vec<RawMsg>, String> {
        let mut all = Vec::new();
        loop {
            let msg = self.recv().await?;
            if msg.tag == b'S' {
                self.note_param(&msg);
            }
            let done = msg.tag == b'Z';
            all.push(msg);
            if done {
                return Ok(all);
            }
        }
    }

    /// Sends `bytes` and collects the answer up to ReadyForQuery: the rows, or the first error.
    pub async fn round_trip(&mut self, bytes: &[u8]) -> Result<Vec<Vec<Option<String>>>, RawError> {
        self.send(bytes).await;
        let msgs = self.until_ready().await.map_err(|e| RawError {
            severity: "CLIENT".into(),
            code: "08006".into(),
            message: e,
        })?;
        rows_or_error(&msgs)
    }

    /// A simple-protocol query.
    pub async fn simple(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, RawError> {
        self.round_trip(&query(sql)).await
    }

    /// The first column of the first row of a simple query.
    pub async fn value(&mut self, sql: &str) -> String {
        let rows = self
            .simple(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows[0][0].clone().unwrap_or_default()
    }

    /// Bind + Execute + Sync of a named statement with text parameters.
    pub async fn exec_prepared(
        &mut self,
        name: &str,
        params: &[Option<&str>],
    ) -> Result<Vec<Vec<Option<String>>>, RawError> {
        let mut out = bind("", name, params);
        out.extend_from_slice(&execute());
        out.extend_from_slice(&sync());
        self.round_trip(&out).await
    }

    pub async fn terminate(mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = self.io.write_all(&out).await;
        let _ = self.io.shutdown().await;
    }
}

/// The reading half of a [`RawClient`].
pub struct RawReader {
    io: tokio::io::ReadHalf<Box<dyn Io>>,
    buf: BytesMut,
}

impl RawReader {
    /// The next message; Err on EOF or a broken connection.
    pub async fn recv(&mut self) -> Result<RawMsg, String> {
        read_msg(&mut self.io, &mut self.buf).await
    }
}

async fn read_msg<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut) -> Result<RawMsg, String> {
    loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
            if buf.len() > len {
                let tag = buf[0];
                buf.advance(5);
                let body = buf.split_to(len - 4).freeze();
                return Ok(RawMsg { tag, body });
            }
        }
        let n = io.read_buf(buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
    }
}

pub fn error_of(msg: &RawMsg) -> RawError {
    RawError {
        severity: msg.field(b'S').unwrap_or_default(),
        code: msg.field(b'C').unwrap_or_default(),
        message: msg.field(b'M').unwrap_or_default(),
    }
}

/// DataRows of an answer, or its first ErrorResponse.
pub fn rows_or_error(msgs: &[RawMsg]) -> Result<Vec<Vec<Option<String>>>, RawError> {
    if let Some(err) = msgs.iter().find(|m| m.tag == b'E') {
        return Err(error_of(err));
    }
    Ok(msgs
        .iter()
        .filter(|m| m.tag == b'D')
        .map(RawMsg::columns)
        .collect())
}

/// The tags of an answer, e.g. "12TCZ" for ParseComplete, BindComplete, RowDescription...
pub fn tags(msgs: &[RawMsg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

pub fn query(sql: &str) -> BytesMut {
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out).unwrap();
    out
}

pub fn parse(name: &str, sql: &str) -> BytesMut {
    let mut out = BytesMut::new();
    frontend::parse(name, sql, std::iter::empty(), &mut out).unwrap();
    out
}

/// Bind with text-format parameters (None = NULL) and text results.
pub fn bind(portal: &str, statement: &str, params: &[Option<&str>]) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_slice(portal.as_bytes());
    body.put_u8(0);
    body.put_slice(statement.as_bytes());
    body.put_u8(0);
    body.put_i16(0);
    body.put_i16(params.len() as i16);
    for p in params {
        match p {
            Some(v) => {
                body.put_i32(v.len() as i32);
                body.put_slice(v.as_bytes());
            }
            None => body.put_i32(-1),
        }
    }
    body.put_i16(0);
    let mut out = BytesMut::new();
    out.put_u8(b'B');
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(&body);
    out
}

pub fn describe_statement(name: &str) -> BytesMut {
    let mut out = BytesMut::new();
    frontend::describe(b'S', name, &mut out).unwrap();
    out
}

pub fn close_statement(name: &str) -> BytesMut {
    let mut out = BytesMut::new();
    frontend::close(b'S', name, &mut out).unwrap();
    out
}

pub fn execute() -> BytesMut {
    let mut out = BytesMut::new();
    frontend::execute("", 0, &mut out).unwrap();
    out
}

pub fn sync() -> BytesMut {
    let mut out = BytesMut::new();
    frontend::sync(&mut out);
    out
}

/// Sends a plaintext CancelRequest to 127.0.0.1:`port`.
pub async fn send_cancel_request(port: u16, pid: i32, secret: i32) {
    let mut out = BytesMut::new();
    frontend::cancel_request(pid, secret, &mut out);
    let mut tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    tcp.write_all(&out).await.unwrap();
    // The server answers a cancel by closing; wait for that so the request has been read.
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tcp.read_to_end(&mut sink),
    )
    .await;
}
