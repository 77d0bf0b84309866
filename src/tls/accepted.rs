//! TLS accepted from a client, over rustls' unbuffered API.
//!
//! Why not tokio-rustls here: rustls' buffered `ServerConnection` keeps a 4 KiB record buffer
//! per connection for as long as the connection lives, a third of what an idle client costs.
//! With the unbuffered API pgmoat owns every buffer and holds none while a client is idle:
//! a read goes through a stack buffer and only a partial record is kept on the heap, decrypted
//! bytes are kept only when the reader's buffer could not take them, and encrypted bytes live
//! on the heap only until the socket has taken them. (The server side towards PostgreSQL stays
//! on tokio-rustls: there are few of those connections and each is busy.)

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus,
};
use rustls::{CommonState, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The largest TLS record on the wire: 2^14 bytes of plaintext plus the 2048 bytes of
/// expansion TLS 1.2 allows, plus the 5-byte header. One socket read of this size takes a
/// whole record, so a record is kept on the heap only when the peer sent it in pieces.
const MAX_RECORD: usize = 16384 + 2048 + 5;
/// The TLS record header: type, version, length.
const RECORD_HEADER: usize = 5;
/// rustls joins a handshake message of up to 64 KiB across records in the buffer it is
/// given; more than that (plus one record) held unprocessed means a broken or hostile peer.
const MAX_HELD: usize = 0xffff + MAX_RECORD;
/// The most plaintext one write encrypts, so that what waits for the socket stays bounded.
const MAX_WRITE: usize = 64 * 1024;
/// What encryption adds to a record, with margin (TLS 1.3 with AES-GCM adds 22 bytes,
/// TLS 1.2 29); a wrong guess costs a retry with rustls' own figure, not an error.
const RECORD_EXPANSION: usize = 64;
const MAX_FRAGMENT: usize = 16384;

/// A client's TLS connection: the socket, rustls' state and the bytes in flight.
pub struct AcceptedTls {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext read but not yet processed: a partial record, or a handshake message
    /// spanning records. Empty (and unallocated) between records.
    incoming: Vec<u8>,
    held: Held,
    /// A TLS error met while the alert for it is still being sent.
    failed: Option<rustls::Error>,
    /// close_notify queued: nothing more may be encrypted.
    closing: bool,
}

/// What rustls produced that the socket or the reader has not taken yet.
#[derive(Default)]
struct Held {
    /// Decrypted bytes the reader's buffer had no room for.
    plaintext: BytesMut,
    /// Encrypted bytes (records, alerts, handshake flights) the socket has not taken.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer sent close_notify: reads end cleanly once `plaintext` is drained.
    peer_closed: bool,
}

/// Where one pass over rustls' states stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// More bytes from the peer are needed (the handshake, or application data).
    NeedData,
    /// Both sides closed.
    Closed,
}

impl Held {
    fn deliver(&mut self, payload: &[u8], read: &mut Option<&mut ReadBuf<'_>>) {
        let taken = match read {
            Some(buf) if self.plaintext.is_empty() => {
                let n = buf.remaining().min(payload.len());
                buf.put_slice(&payload[..n]);
                n
            }
            _ => 0,
        };
        self.plaintext.extend_from_slice(&payload[taken..]);
    }

    fn has_outgoing(&self) -> bool {
        self.sent < self.outgoing.len()
    }

    /// Makes room at the end of `outgoing` and lets `write` fill it; `write` says how many
    /// bytes it needs when the room is too small.
    fn append_outgoing(
        &mut self,
        guess: usize,
        mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
    ) -> Result<(), rustls::Error> {
        let start = self.outgoing.len();
        let mut room = guess;
        loop {
            self.outgoing.resize(start + room, 0);
            match write(&mut self.outgoing[start..]) {
                Ok(n) => {
                    self.outgoing.truncate(start + n);
                    return Ok(());
                }
                Err(Some(required)) if required > room => room = required,
                Err(_) => {
                    self.outgoing.truncate(start);
                    return Err(rustls::Error::General("TLS encoding failed".into()));
                }
            }
        }
    }

    /// Appends a record rustls queued (a handshake flight, an alert, a key update).
    fn encode(
        &mut self,
        encode: &mut EncodeTlsData<'_, ServerConnectionData>,
        guess: usize,
    ) -> Result<(), rustls::Error> {
        self.append_outgoing(guess, |out| {
            encode.encode(out).map_err(|e| match e {
                EncodeError::InsufficientSize(s) => Some(s.required_size),
                _ => None,
            })
        })
    }
}

/// How much room an encryption that did not fit needs, when that was the reason.
fn encrypt_room(e: EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

/// Runs rustls over `input` until it needs more bytes from the peer, encrypting `encrypt`
/// once application data may be sent. Decrypted bytes go to `read` first, the rest to
/// `held`. Returns how many bytes at the front of `input` are done with, failed or not (after
/// a failure the alert is fetched over the bytes behind those), and where it stopped.
fn drive(
    conn: &mut UnbufferedServerConnection,
    input: &mut [u8],
    mut read: Option<&mut ReadBuf<'_>>,
    mut encrypt: Option<&[u8]>,
    held: &mut Held,
) -> (usize, Result<Settled, rustls::Error>) {
    let mut consumed = 0;
    loop {
        let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut input[consumed..]);
        let mut extra = 0;
        let step = match state {
            Err(e) => Err(e),
            Ok(ConnectionState::ReadTraffic(mut records)) => {
                let mut failed = None;
                while let Some(record) = records.next_record() {
                    match record {
                        Ok(record) => {
                            extra += record.discard;
                            held.deliver(record.payload, &mut read);
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                failed.map_or(Ok(None), Err)
            }
            Ok(ConnectionState::EncodeTlsData(mut encode)) => held
                .encode(&mut encode, RECORD_HEADER + 4096)
                .map(|()| None),
            // The bytes just encoded are in `held.outgoing`: every caller flushes that
            // before it waits for the peer, so they count as sent.
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                transmit.done();
                Ok(None)
            }
            Ok(ConnectionState::PeerClosed) => {
                held.peer_closed = true;
                Ok(None)
            }
            Ok(ConnectionState::Closed) => Ok(Some(Settled::Closed)),
            Ok(ConnectionState::BlockedHandshake) => Ok(Some(Settled::NeedData)),
            Ok(ConnectionState::WriteTraffic(mut write)) => match encrypt.take() {
                Some(data) => {
                    let records = data.len().div_ceil(MAX_FRAGMENT).max(1);
                    held.append_outgoing(data.len() + records * RECORD_EXPANSION, |out| {
                        write.encrypt(data, out).map_err(encrypt_room)
                    })
                }
                None => Ok(()),
            }
            .map(|()| Some(Settled::NeedData)),
            // Early data is never enabled (max_early_data_size stays 0), and any state a
            // later rustls adds is one this code does not know how to handle safely.
            Ok(_) => Err(rustls::Error::General(
                "unexpected TLS connection state".into(),
            )),
        };
        consumed += discard + extra;
        match step {
            Err(e) => return (consumed, Err(e)),
            Ok(Some(settled)) => return (consumed, Ok(settled)),
            Ok(None) => {}
        }
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn eof_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "peer closed connection without sending TLS close_notify",
    )
}

/// The full length of the record whose header starts `bytes`, when the header is there.
fn record_len(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(..RECORD_HEADER)?;
    Some(RECORD_HEADER + u16::from_be_bytes([header[3], header[4]]) as usize)
}

/// Accepts a client's TLS handshake on `tcp`.
pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<AcceptedTls> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut tls = AcceptedTls {
        tcp,
        conn,
        incoming: Vec::new(),
        held: Held::default(),
        failed: None,
        closing: false,
    };
    poll_fn(|cx| tls.poll_handshake(cx)).await?;
    Ok(tls)
}

impl AcceptedTls {
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The negotiated parameters and the peer's certificates.
    pub fn state(&self) -> &CommonState {
        &self.conn
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.failed.is_some() {
                return self.poll_fail(cx);
            }
            if let Err(e) = self.process_incoming(None, None) {
                self.fail(e);
                continue;
            }
            ready!(self.poll_flush_outgoing(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.held.peer_closed {
                return Poll::Ready(Err(eof_error()));
            }
            if ready!(self.poll_read_more(cx))? == 0 {
                return Poll::Ready(Err(eof_error()));
            }
        }
    }

    /// Remembers a TLS error and queues the alert rustls prepared for it. rustls hands out
    /// queued records before it deframes anything, so one call fetches the alert without
    /// touching the input; a second call would deframe the bytes that failed again (and
    /// alert twice). It is given the bytes rustls was not done with all the same: its
    /// handshake deframer keeps positions in them.
    fn fail(&mut self, e: rustls::Error) {
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            // Best effort: without the alert the peer still sees the connection end.
            let _ = self.held.encode(&mut encode, RECORD_HEADER + 64);
        }
        self.failed = Some(e);
    }

    /// Sends the alert for a failure, as far as the socket takes it, then reports the failure.
    fn poll_fail(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.poll_flush_outgoing(cx).is_pending() {
            return Poll::Pending;
        }
        let e = self
            .failed
            .clone()
            .unwrap_or(rustls::Error::General("TLS failed".into()));
        Poll::Ready(Err(tls_error(e)))
    }

    /// Runs rustls over the bytes held in `incoming` and drops those it is done with.
    fn process_incoming(
        &mut self,
        read: Option<&mut ReadBuf<'_>>,
        encrypt: Option<&[u8]>,
    ) -> Result<Settled, rustls::Error> {
        let (consumed, outcome) = drive(
            &mut self.conn,
            &mut self.incoming,
            read,
            encrypt,
            &mut self.held,
        );
        self.incoming.drain(..consumed);
        if self.incoming.is_empty() {
            // Give the allocation back: an idle client holds no record buffer.
            self.incoming = Vec::new();
        }
        outcome
    }

    /// Reads more ciphertext behind what `incoming` holds; Ready(Ok(0)) is EOF.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.len() >= MAX_HELD {
            return Poll::Ready(Err(tls_error(rustls::Error::General(
                "TLS peer sent more than a handshake message's worth of unprocessed records".into(),
            ))));
        }
        let want = record_len(&self.incoming)
            .map(|len| len.saturating_sub(self.incoming.len()))
            .unwrap_or(0)
            .max(4096);
        self.incoming.reserve(want);
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            match self.tcp.try_read_buf(&mut self.incoming) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes what waits in `outgoing`; Ready once the socket took all of it.
    fn poll_flush_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.held.has_outgoing() {
            let n = ready!(
                Pin::new(&mut self.tcp).poll_write(cx, &self.held.outgoing[self.held.sent..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.sent += n;
        }
        if self.held.outgoing.capacity() > 0 {
            self.held.outgoing = Vec::new();
            self.held.sent = 0;
        }
        Poll::Ready(Ok(()))
    }

    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.held.plaintext.len());
        buf.put_slice(&self.held.plaintext[..n]);
        self.held.plaintext.advance(n);
        if self.held.plaintext.is_empty() {
            self.held.plaintext = BytesMut::new();
        }
    }

    fn poll_read_tls(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.failed.is_some() {
                ready!(self.poll_fail(cx))?;
            }
            if !self.held.plaintext.is_empty() {
                self.take_plaintext(buf);
                return Poll::Ready(Ok(()));
            }
            if self.held.peer_closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Replies rustls owes the peer (a key update, say) go out before waiting on it;
            // a full socket does not hold up the read.
            if let Poll::Ready(Err(e)) = self.poll_flush_outgoing(cx) {
                return Poll::Ready(Err(e));
            }
            let before = buf.filled().len();
            let outcome = if self.incoming.is_empty() {
                // The common case: whole records arrive at once. Read them into the stack
                // and keep only an unfinished remainder.
                let mut stack = [MaybeUninit::<u8>::uninit(); MAX_RECORD];
                let mut chunk = ReadBuf::uninit(&mut stack);
                ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut chunk))?;
                let input = chunk.filled_mut();
                if input.is_empty() {
                    return Poll::Ready(Err(eof_error()));
                }
                let (consumed, outcome) =
                    drive(&mut self.conn, input, Some(buf), None, &mut self.held);
                // What rustls is not done with (an unfinished record, or bytes behind a
                // failure whose alert is still to be fetched) moves to the heap.
                self.incoming.extend_from_slice(&input[consumed..]);
                outcome
            } else {
                if ready!(self.poll_read_more(cx))? == 0 {
                    return Poll::Ready(Err(eof_error()));
                }
                self.process_incoming(Some(buf), None)
            };
            match outcome {
                Err(e) => self.fail(e),
                Ok(_) if buf.filled().len() > before => {
                    let _ = self.poll_flush_outgoing(cx);
                    return Poll::Ready(Ok(()));
                }
                Ok(Settled::Closed) => return Poll::Ready(Ok(())),
                Ok(Settled::NeedData) => {}
            }
        }
    }

    fn poll_write_tls(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.failed.is_some() {
            ready!(self.poll_fail(cx))?;
        }
        // Backpressure: nothing new is encrypted until the socket took the last write.
        ready!(self.poll_flush_outgoing(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.closing {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        match self.process_incoming(None, Some(data)) {
            Ok(Settled::NeedData) => {}
            Ok(Settled::Closed) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Err(e) => {
                self.fail(e);
                ready!(self.poll_fail(cx))?;
            }
        }
        // Start sending now; what the socket does not take yet waits for the next write or
        // the flush.
        if let Poll::Ready(Err(e)) = self.poll_flush_outgoing(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_shutdown_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closing && self.failed.is_none() {
            self.closing = true;
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.incoming);
            if let Ok(ConnectionState::WriteTraffic(mut write)) = state {
                let _ = self.held.append_outgoing(64, |out| {
                    write.queue_close_notify(out).map_err(encrypt_room)
                });
            }
        }
        ready!(self.poll_flush_outgoing(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl AsyncRead for AcceptedTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_read_tls(cx, buf)
    }
}

impl AsyncWrite for AcceptedTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_tls(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_outgoing(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_shutdown_tls(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::certs::{CaOptions, IssueOptions, init_ca, issue};

    /// A server config and a client config trusting it, from the project's own cert tool.
    fn configs(dir: &std::path::Path) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        init_ca(&CaOptions::new(dir)).unwrap();
        let server = issue(&IssueOptions::new("server", ["DNS:localhost"], dir)).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = CertificateDer::pem_file_iter(&server.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&server.key).unwrap();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(dir.join("ca/ca.crt")).unwrap())
            .unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A TLS client driven by hand, so that the test decides how its bytes are cut up.
    struct Client {
        conn: ClientConnection,
        tcp: TcpStream,
        /// Plaintext received from the server.
        plain: Vec<u8>,
    }

    impl Client {
        /// Sends what rustls has queued, `piece` bytes per write, letting the server run
        /// between pieces so that it sees records arrive a few bytes at a time.
        async fn send(&mut self, piece: usize) {
            let mut out = Vec::new();
            while self.conn.wants_write() {
                self.conn.write_tls(&mut out).unwrap();
            }
            for chunk in out.chunks(piece) {
                self.tcp.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
        }

        async fn receive(&mut self) -> usize {
            let mut buf = vec![0u8; 64 * 1024];
            let n = self.tcp.read(&mut buf).await.unwrap();
            // rustls takes at most 4 KiB per read_tls call.
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                self.conn.read_tls(&mut rest).unwrap();
                self.conn.process_new_packets().unwrap();
                match self.conn.reader().read_to_end(&mut self.plain) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("client read failed: {e}"),
                }
            }
            n
        }

        async fn handshake(&mut self, piece: usize) {
            while self.conn.is_handshaking() {
                self.send(piece).await;
                if self.conn.is_handshaking() {
                    assert!(
                        self.receive().await > 0,
                        "server closed during the handshake"
                    );
                }
            }
            self.send(piece).await;
        }
    }

    async fn pair(piece: usize) -> (AcceptedTls, Client, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (server_config, client_config) = configs(dir.path());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tcp.set_nodelay(true).unwrap();
        let (server_tcp, _) = listener.accept().await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = Client {
            conn: ClientConnection::new(client_config, name).unwrap(),
            tcp,
            plain: Vec::new(),
        };
        let (server, ()) = tokio::join!(accept(server_tcp, server_config), client.handshake(piece));
        (server.unwrap(), client, dir)
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn records_cut_into_pieces_arrive_whole_and_an_idle_connection_holds_no_buffer() {
        let (mut server, mut client, _dir) = pair(7).await;
        let sent = payload(40_000);
        client.conn.writer().write_all(&sent).unwrap();
        let mut cipher = Vec::new();
        while client.conn.wants_write() {
            client.conn.write_tls(&mut cipher).unwrap();
        }

        // Positive control: half a record is held until the rest comes.
        client.tcp.write_all(&cipher[..100]).await.unwrap();
        server.tcp.readable().await.unwrap();
        let mut scratch = [0u8; 64];
        let pending = poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut scratch);
            Poll::Ready(Pin::new(&mut server).poll_read(cx, &mut buf).is_pending())
        })
        .await;
        assert!(pending, "half a record must not yield plaintext");
        assert_eq!(server.incoming.len(), 100, "the partial record is held");

        // The rest, seven bytes at a time.
        let mut received = vec![0u8; sent.len()];
        let trickle = async {
            for chunk in cipher[100..].chunks(7) {
                client.tcp.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
        };
        let (read, ()) = tokio::join!(server.read_exact(&mut received), trickle);
        read.unwrap();
        assert!(
            received == sent,
            "40 000 bytes over three records arrive intact"
        );

        // And back: one write larger than a record, answered in full.
        let echo = async {
            server.write_all(&received).await.unwrap();
            server.flush().await.unwrap();
        };
        let collect = async {
            while client.plain.len() < sent.len() {
                client.receive().await;
            }
            std::mem::take(&mut client.plain)
        };
        let ((), back) = tokio::join!(echo, collect);
        assert!(back == sent, "the echo arrives intact");

        // Idle now: nothing is buffered and nothing is allocated for buffering.
        assert_eq!(server.incoming.capacity(), 0);
        assert_eq!(server.held.plaintext.capacity(), 0);
        assert_eq!(server.held.outgoing.capacity(), 0);

        // A clean close both ways: close_notify reads as EOF, shutdown sends one back.
        client.conn.send_close_notify();
        client.send(1024).await;
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
        server.shutdown().await.unwrap();
        client.receive().await;
        assert!(client.plain.is_empty());
        let mut tail = Vec::new();
        assert_eq!(client.conn.reader().read_to_end(&mut tail).unwrap(), 0);
    }

    #[tokio::test]
    async fn a_malformed_record_fails_the_handshake_with_an_alert_to_the_peer() {
        let dir = tempfile::tempdir().unwrap();
        let (server_config, _) = configs(dir.path());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server_tcp, _) = listener.accept().await.unwrap();
        // A handshake record claiming 65 535 bytes: more than TLS allows.
        tcp.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x01])
            .await
            .unwrap();
        let err = match accept(server_tcp, server_config).await {
            Ok(_) => panic!("a malformed record was accepted"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .is_some(),
            "the rustls error is kept for the metrics' reason label: {err}"
        );
        let mut reply = Vec::new();
        tcp.read_to_end(&mut reply).await.unwrap();
        assert_eq!(
            reply.first(),
            Some(&0x15),
            "an alert record reached the peer: {reply:?}"
        );
    }
}
