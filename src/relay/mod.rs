//! Moving frames between a client and the server it holds. Both directions are driven from
//! one future, so neither side can block the other (a client streaming COPY data while the
//! server sends notices cannot deadlock). Headers are read, bodies pass through, and only
//! ReadyForQuery, ParameterStatus, CommandComplete and the Parse/Close completions are looked
//! at: they tell when the server is free again and what session state changed. With prepared
//! statements pooled, the client's Parse/Bind/Describe/Close are rewritten on the way in
//! (`translate`).

pub mod effects;
pub mod idle;
pub mod prepared;
pub mod scan;
mod timeout;
pub mod translate;
mod tx;

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::backend::ServerConn;
pub use crate::backend::SpareBuffers;
use crate::protocol::ProtocolError;
use crate::protocol::error::ErrorFields;
use crate::protocol::messages::parse_parameter_status;
use crate::stats::PoolStats;
use crate::stream::Stream;
use effects::Effects;
use prepared::{ClientStatements, Completion, CompletionQueue};
use scan::{Scanner, Seen};
use translate::{TranslateError, Translator, translate};

pub use timeout::{QueryTimeout, StateTimer};
pub use tx::{Cut, TxState};

/// Read granularity: big enough to batch many small messages per TLS record and per syscall.
const READ_CHUNK: usize = 16 * 1024;

/// Read granularity of an idle client: enough for a typical query or extended-protocol batch.
/// Idle clients are most of a pooler's clients, so they must not each hold a buffer; the
/// relay's large buffers travel with the server connection instead ([`SpareBuffers`]).
const IDLE_READ: usize = 512;

/// One direction's buffers. Zero-copy mode forwards `buf[..ready]` in place; translate mode
/// (client direction with prepared statements) moves messages into `out` first.
#[derive(Debug, Default)]
pub struct HalfBuffer {
    pub buf: BytesMut,
    ready: usize,
    scanner: Scanner,
    out: BytesMut,
    /// Translate mode: unsent bytes of a message being streamed from `buf` to `out`.
    copy_remaining: usize,
    need_flush: bool,
    /// Bytes still missing to complete the header or inspected message at the scan point.
    needed: usize,
    /// The client sent Terminate (client direction only).
    terminated: bool,
}

impl HalfBuffer {
    /// An empty buffer: it allocates on first read, and only as much as the reads need.
    pub fn new() -> Self {
        HalfBuffer::default()
    }

    /// The client direction: as [`HalfBuffer::new`], refusing any message over
    /// `max_packet` bytes (max_packet_size).
    pub fn client(max_packet: usize) -> Self {
        HalfBuffer {
            scanner: Scanner::with_limit(max_packet),
            ..Default::default()
        }
    }

    /// max_packet_size, as given to [`HalfBuffer::client`] (0 when unlimited).
    pub fn packet_limit(&self) -> usize {
        self.scanner.limit()
    }

    /// A reloaded max_packet_size, for the messages from here on.
    pub fn set_packet_limit(&mut self, max_packet: usize) {
        self.scanner.set_limit(max_packet);
    }

    /// The server direction of one relay, on the server connection's own buffer (which may
    /// already hold bytes read from it); the scanner starts at a message boundary.
    pub fn server_side(buf: BytesMut) -> Self {
        HalfBuffer {
            buf,
            ..Default::default()
        }
    }

    /// Gives the server direction's buffer back to its server connection, with any bytes the
    /// server sent that were not forwarded.
    pub fn into_buf(self) -> BytesMut {
        self.buf
    }

    /// Client direction: takes the server's spare buffers for the relay, keeping what the
    /// client sent while idle in front.
    pub fn borrow_spare(&mut self, spare: &mut SpareBuffers) {
        if spare.buf.capacity() > self.buf.capacity() {
            let mut big = std::mem::take(&mut spare.buf);
            big.clear();
            big.extend_from_slice(&self.buf);
            self.buf = big;
        }
        if self.out.is_empty() {
            self.out = std::mem::take(&mut spare.out);
            self.out.clear();
        }
    }

    /// Client direction, relay over: the buffers go back to the server when nothing of the
    /// client's is left in them (pipelined bytes stay with the client).
    pub fn return_spare(&mut self, spare: &mut SpareBuffers) {
        if self.buf.is_empty() {
            spare.buf = std::mem::take(&mut self.buf);
        }
        if self.out.is_empty() {
            spare.out = std::mem::take(&mut self.out);
        }
    }

    /// True when at least a message header is buffered: the client wants something.
    pub fn has_header(&self) -> bool {
        self.buf.len() >= crate::protocol::Header::SIZE
    }

    /// True when the next buffered message is a whole Terminate.
    pub fn starts_with_terminate(&self) -> bool {
        self.buf.len() >= 5 && self.buf[0] == b'X'
    }

    /// True when nothing of a message has been forwarded without the rest of it.
    pub fn at_boundary(&self) -> bool {
        self.ready == 0
            && self.out.is_empty()
            && self.scanner.at_boundary()
            && self.copy_remaining == 0
    }

    /// Writes what is ready (in place or from `out`), then flushes, adding what each write
    /// call took to `written`. Pending while the writer is full.
    fn poll_write_ready<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
        written: &AtomicU64,
    ) -> Poll<io::Result<()>> {
        while self.ready > 0 || !self.out.is_empty() {
            let pending: &[u8] = if self.ready > 0 {
                &self.buf[..self.ready]
            } else {
                &self.out
            };
            let n = ready!(Pin::new(&mut *writer).poll_write(cx, pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            written.fetch_add(n as u64, Ordering::Relaxed);
            if self.ready > 0 {
                self.buf.advance(n);
                self.ready -= n;
            } else {
                self.out.advance(n);
            }
            self.need_flush = true;
        }
        if self.need_flush {
            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
            self.need_flush = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads more bytes; Ready(Ok(0)) is EOF.
    pub fn poll_fill<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        needed: usize,
    ) -> Poll<io::Result<usize>> {
        self.buf.reserve(needed.max(READ_CHUNK));
        tokio_util::io::poll_read_buf(Pin::new(reader), cx, &mut self.buf)
    }

    /// Reads more bytes of an idle client; Ready(Ok(0)) is EOF. The read goes through a
    /// stack buffer, so a client waiting idle holds no buffer at all.
    pub fn poll_fill_idle<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
    ) -> Poll<io::Result<usize>> {
        let mut chunk = [0u8; IDLE_READ];
        let mut read = tokio::io::ReadBuf::new(&mut chunk);
        ready!(Pin::new(reader).poll_read(cx, &mut read))?;
        self.buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    }
}

/// Why a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Transaction mode: the transaction is over and the server is idle and clean.
    Released,
    /// The client sent Terminate. `server_clean` says whether the server may be reused.
    ClientTerminated { server_clean: bool },
    /// The client closed, failed or broke the protocol. `server_clean` as above.
    ClientGone {
        server_clean: bool,
        error: Option<ClientFault>,
    },
    /// The server closed, failed or broke the protocol; it must be discarded.
    ServerGone(ProtocolError),
    /// The server sent a FATAL (or PANIC) error, say because PostgreSQL is shutting down; it
    /// was not forwarded, everything before it was. The server must be discarded.
    ServerFatal(ServerFatal),
    /// A guardrail timeout ended the client. `Timeout::server_clean` says whether the
    /// server may be reused.
    Timeout {
        kind: Timeout,
        limit: std::time::Duration,
    },
}

/// The timeouts that end a client from inside a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// idle_transaction_timeout: idle inside a transaction; the server is mid-transaction
    /// and is closed, which rolls the transaction back.
    IdleInTransaction,
    /// transaction_timeout: one transaction lasted too long; the server is closed.
    Transaction,
    /// client_idle_timeout for a client that holds its server (pinned, or session mode)
    /// between transactions: the server is clean.
    ClientIdle,
}

impl Timeout {
    pub fn setting(self) -> &'static str {
        match self {
            Timeout::IdleInTransaction => "idle_transaction_timeout",
            Timeout::Transaction => "transaction_timeout",
            Timeout::ClientIdle => "client_idle_timeout",
        }
    }

    pub fn server_clean(self) -> bool {
        self == Timeout::ClientIdle
    }
}

/// A FATAL ErrorResponse a server sent: its fields, and the message as sent.
#[derive(Debug)]
pub struct ServerFatal {
    pub fields: ErrorFields,
    pub message: Vec<u8>,
    /// A CommandComplete or ReadyForQuery came before it in this relay: some statement
    /// finished (and may have committed).
    pub after_completion: bool,
}

/// What a client did wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientFault {
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    Translate(#[from] TranslateError),
}

impl ClientFault {
    pub fn is_closed(&self) -> bool {
        matches!(self, ClientFault::Protocol(e) if e.is_closed())
    }

    /// The framing error under it, if that is what it is.
    pub fn protocol(&self) -> Option<&ProtocolError> {
        match self {
            ClientFault::Protocol(e) | ClientFault::Translate(TranslateError::Protocol(e)) => {
                Some(e)
            }
            ClientFault::Translate(_) => None,
        }
    }
}

/// Asked when a client that holds no pinned server sends, inside a transaction, a Query the
/// keyword scan says would pin it: true reserves a place under max_pinned_servers, false (the
/// limit is reached) has the relay refuse the statement before it runs.
pub trait PinBudget {
    fn allow_pin(&mut self, why: crate::backend::PinReasons) -> bool;
}

/// When a relay ends on its own (besides the client or server going away).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseWhen {
    /// Transaction mode: as soon as the server is idle (ReadyForQuery 'I').
    Idle,
    /// A server pinned to its client: when the server is idle after statements that may
    /// have changed the session (so the session checks what is left), else never.
    IdleAfterChanges,
    /// Session mode: only once pgmoat shuts down, and then as soon as the server is idle.
    Shutdown,
}

pub struct Relay<'a> {
    pub client: &'a mut Stream,
    pub client_half: &'a mut HalfBuffer,
    pub server: &'a mut ServerConn,
    pub server_half: &'a mut HalfBuffer,
    pub tx: &'a mut TxState,
    pub release: ReleaseWhen,
    /// Prepared statements pooled: the client's statements, and the server's bound.
    pub statements: Option<(&'a mut ClientStatements, usize)>,
    pub completions: CompletionQueue,
    /// The pool's counters: queries, transactions, bytes, times.
    pub stats: &'a PoolStats,
    /// pgmoat is shutting down once this completes; a relay that would not end at the next
    /// idle point then ends there, so the drain does not wait for the client.
    pub shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// A FATAL error the server sent, held back from the client (see `RelayEnd::ServerFatal`).
    pub server_fatal: Option<ServerFatal>,
    /// The server has sent a CommandComplete or ReadyForQuery in this relay.
    pub completed: bool,
    /// For an unpinned client: the pool's limit on pinned servers.
    pub pin_budget: Option<&'a mut (dyn PinBudget + Send + 'static)>,
    /// idle_transaction_timeout, when set.
    pub idle_tx: Option<StateTimer>,
    /// transaction_timeout, when set.
    pub xact_timeout: Option<StateTimer>,
    /// client_idle_timeout, when set and the relay holds the server between transactions.
    pub client_idle: Option<StateTimer>,
    /// query_timeout, when set.
    pub query_timeout: Option<QueryTimeout<'a>>,
}

impl Relay<'_> {
    pub async fn run(mut self) -> RelayEnd {
        // What the client sent before this server was checked out.
        if let Err(e) = self.scan_client() {
            return self.client_gone(Some(e));
        }
        self.note_busy();
        let end = poll_fn(|cx| self.poll_relay(cx)).await;
        if matches!(end, RelayEnd::ServerGone(_) | RelayEnd::ServerFatal(_)) {
            self.tx.cut = self.cut_at_loss().await;
        }
        end
    }

    /// The server is gone: the streams are brought to a message boundary where they can be
    /// (whole messages the server sent before it went still reach the client; whole client
    /// messages counted but not yet written went with the server, and are answered for it),
    /// and where they cannot, the session is told so.
    async fn cut_at_loss(&mut self) -> Cut {
        if !self.server_half.scanner.at_boundary() {
            return Cut::ToClient;
        }
        let (half, client, sent) = (
            &mut *self.server_half,
            &mut *self.client,
            self.stats.bytes_sent(),
        );
        if poll_fn(|cx| half.poll_write_ready(cx, client, sent))
            .await
            .is_err()
        {
            // The client is gone as well: nothing more reaches it anyway.
            return Cut::ToClient;
        }
        let client_half = &mut *self.client_half;
        if !client_half.scanner.at_boundary() || client_half.copy_remaining != 0 {
            return Cut::ToServer;
        }
        client_half.buf.advance(client_half.ready);
        client_half.ready = 0;
        client_half.out.clear();
        Cut::Clean
    }

    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        if let Some(shutdown) = self.shutdown.as_mut()
            && shutdown.as_mut().poll(cx).is_ready()
        {
            self.shutdown = None;
            self.release = ReleaseWhen::Idle;
        }
        if let Poll::Ready(end) = self.poll_server_to_client(cx) {
            return Poll::Ready(end);
        }
        if let Poll::Ready(end) = self.poll_client_to_server(cx) {
            return Poll::Ready(end);
        }
        // Both directions are waiting: judged on the state they left.
        // COPY FROM STDIN waits for the client's data, not for the server: not busy.
        let busy =
            (self.tx.outstanding > 0 && !self.tx.in_copy_in()).then_some(self.tx.batches_done);
        if let Some(query) = self.query_timeout.as_mut() {
            query.poll(busy, cx);
        }
        let idle_in_tx = self.idle_in_transaction().then_some(0);
        let in_xact = self.tx.xact_since.is_some().then_some(self.tx.xacts_done);
        let idle_between = (self.release != ReleaseWhen::Idle
            && self.server_clean()
            && self.client_half.buf.is_empty())
        .then_some(0);
        let timers = [
            (Timeout::IdleInTransaction, &mut self.idle_tx, idle_in_tx),
            (Timeout::Transaction, &mut self.xact_timeout, in_xact),
            (Timeout::ClientIdle, &mut self.client_idle, idle_between),
        ];
        for (kind, timer, spell) in timers {
            if let Some(timer) = timer.as_mut()
                && timer.poll(spell, cx).is_ready()
            {
                return Poll::Ready(RelayEnd::Timeout {
                    kind,
                    limit: timer.limit(),
                });
            }
        }
        Poll::Pending
    }

    /// Inside a transaction (ReadyForQuery T or E), every batch answered, nothing of the
    /// client's waiting to go to the server, nothing of the server's waiting to go to the
    /// client, no COPY open: the server waits for the client alone. A client that stopped
    /// half-way through a message is idle too. Extended-protocol messages without their Sync
    /// are not (an Execute and a Flush run a query without a ReadyForQuery, so pgmoat cannot
    /// tell a waiting server from a working one); transaction_timeout covers those.
    fn idle_in_transaction(&self) -> bool {
        let tx = &*self.tx;
        let client = &*self.client_half;
        tx.outstanding == 0
            && matches!(tx.status, b'T' | b'E')
            && !tx.unsynced
            && !tx.in_copy_in()
            && client.ready == 0
            && client.out.is_empty()
            && client.copy_remaining == 0
            && self.server_half.at_boundary()
    }

    fn poll_server_to_client(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        loop {
            if let Err(e) = ready!(self.server_half.poll_write_ready(
                cx,
                self.client,
                self.stats.bytes_sent()
            )) {
                return Poll::Ready(self.client_gone(Some(ProtocolError::from(e).into())));
            }
            if let Some(fatal) = self.server_fatal.take() {
                return Poll::Ready(RelayEnd::ServerFatal(fatal));
            }
            let release = match self.release {
                ReleaseWhen::Idle => true,
                ReleaseWhen::IdleAfterChanges => self.tx.effects.needs_probe(true),
                ReleaseWhen::Shutdown => false,
            };
            // Not while part of a client message is buffered: the session would take a
            // server for it again at once, and the relay would give it back unread.
            if release
                && self.tx.server_idle()
                && self.client_half.at_boundary()
                && self.client_half.buf.is_empty()
                && self.server_half.at_boundary()
            {
                return Poll::Ready(RelayEnd::Released);
            }
            let needed = self.server_half.needed;
            match ready!(
                self.server_half
                    .poll_fill(cx, &mut self.server.stream, needed)
            ) {
                Ok(0) => return Poll::Ready(RelayEnd::ServerGone(ProtocolError::Closed)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(RelayEnd::ServerGone(e.into())),
            }
            if let Err(e) = self.scan_server() {
                return Poll::Ready(RelayEnd::ServerGone(e));
            }
        }
    }

    fn scan_server(&mut self) -> Result<(), ProtocolError> {
        let half = &mut *self.server_half;
        let tx = &mut *self.tx;
        let server = &mut *self.server;
        let completions = &mut self.completions;
        let stats = self.stats;
        // Edits to ParseComplete / CloseComplete messages: (offset, replacement tag or
        // None to drop the 5-byte message).
        let mut edits: Vec<(usize, Option<u8>)> = Vec::new();
        let server_fatal = &mut self.server_fatal;
        let completed = &mut self.completed;
        let result = half.scanner.scan(
            &half.buf,
            half.ready,
            |tag| matches!(tag, b'Z' | b'S' | b'C' | b'1' | b'3' | b'G' | b'E'),
            |seen, pos| {
                let Seen::Whole(tag, body) = seen else {
                    return true;
                };
                match tag {
                    b'E' => {
                        // A FATAL ends the server connection: stop here, so the session
                        // decides what the client is told.
                        let fields = ErrorFields::parse(body);
                        if fields.code == "25006"
                            && server.role.is_some_and(|r| !r.standby && !r.read_only)
                        {
                            // Maybe fenced read-only: asked before the server is reused.
                            server.recheck_role = true;
                        }
                        if matches!(fields.severity.as_str(), "FATAL" | "PANIC") {
                            let mut message = Vec::with_capacity(body.len() + 5);
                            message.push(b'E');
                            message.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
                            message.extend_from_slice(body);
                            *server_fatal = Some(ServerFatal {
                                fields,
                                message,
                                after_completion: *completed,
                            });
                            return false;
                        }
                    }
                    b'G' => {
                        let ignored = tx.copy_in_started();
                        completions.forget_batches(ignored);
                    }
                    b'Z' => {
                        *completed = true;
                        tx.outstanding = tx.outstanding.saturating_sub(1);
                        tx.status = body.first().copied().unwrap_or(b'I');
                        ready_for_query_seen(tx, stats);
                        for name in completions.batch_done() {
                            server.statements.remove(&name);
                        }
                    }
                    b'S' => {
                        if let Ok((name, value)) = parse_parameter_status(body) {
                            server.set_param(name, value);
                            // A reported setting changed (a SET, or set_config in a
                            // function): the session reads its settings back afterwards.
                            tx.effects |= Effects::SESSION_SET;
                        }
                    }
                    b'C' => {
                        *completed = true;
                        tx.effects |= Effects::from_command_tag(body, tx.effects);
                        if body.starts_with(b"DISCARD ALL") || body.starts_with(b"DEALLOCATE") {
                            // The client dropped prepared statements, perhaps pgmoat's: nothing
                            // is assumed prepared on this server any more.
                            server.statements.clear();
                        }
                    }
                    b'1' => {
                        if let Some(Completion::Parse { swallow: true, .. }) = completions.pop() {
                            edits.push((pos, None));
                        }
                    }
                    b'3' => match completions.pop() {
                        Some(Completion::CloseAsParse) => edits.push((pos, Some(b'1'))),
                        Some(Completion::SwallowClose) => edits.push((pos, None)),
                        _ => {}
                    },
                    _ => {}
                }
                true
            },
        )?;
        let mut forward_to = result.forward_to;
        for (pos, edit) in edits.into_iter().rev() {
            match edit {
                Some(tag) => half.buf[pos] = tag,
                None => {
                    let len = half.buf.len();
                    half.buf.copy_within(pos + 5..len, pos);
                    half.buf.truncate(len - 5);
                    forward_to -= 5;
                }
            }
        }
        half.ready = forward_to;
        half.needed = result.needed;
        Ok(())
    }

    fn poll_client_to_server(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        loop {
            if let Err(e) = ready!(self.client_half.poll_write_ready(
                cx,
                &mut self.server.stream,
                self.stats.bytes_received()
            )) {
                return Poll::Ready(RelayEnd::ServerGone(e.into()));
            }
            if self.client_half.terminated {
                return Poll::Ready(RelayEnd::ClientTerminated {
                    server_clean: self.server_clean(),
                });
            }
            let needed = self.client_half.needed;
            match ready!(self.client_half.poll_fill(cx, self.client, needed)) {
                Ok(0) => return Poll::Ready(self.client_gone(None)),
                Ok(_) => {}
                Err(e) => {
                    return Poll::Ready(self.client_gone(Some(ProtocolError::from(e).into())));
                }
            }
            if let Err(e) = self.scan_client() {
                return Poll::Ready(self.client_gone(Some(e)));
            }
            self.note_busy();
        }
    }

    /// The client's messages just scanned may have given an idle server work: start the
    /// query (and transaction) clocks.
    #[inline]
    fn note_busy(&mut self) {
        if self.tx.outstanding > 0 && self.tx.busy_since.is_none() {
            let now = Instant::now();
            self.tx.busy_since = Some(now);
            self.tx.xact_since.get_or_insert(now);
        }
    }

    fn scan_client(&mut self) -> Result<(), ClientFault> {
        match self.statements.as_mut() {
            Some((statements, max_prepared)) => {
                let half = &mut *self.client_half;
                let mut tr = Translator {
                    statements,
                    server: &mut self.server.statements,
                    queue: &mut self.completions,
                    max_prepared: *max_prepared,
                    max_packet: half.scanner.limit(),
                    pin_budget: self.pin_budget.as_deref_mut(),
                };
                let progress = translate(
                    &mut half.buf,
                    &mut half.out,
                    &mut half.copy_remaining,
                    self.tx,
                    &mut tr,
                )?;
                half.needed = progress.needed;
                half.terminated |= progress.terminated;
                Ok(())
            }
            None => Ok(scan_client_within(
                self.client_half,
                self.tx,
                self.pin_budget.as_deref_mut(),
            )?),
        }
    }

    fn server_clean(&self) -> bool {
        self.tx.server_idle() && self.client_half.at_boundary() && self.server_half.at_boundary()
    }

    fn client_gone(&self, error: Option<ClientFault>) -> RelayEnd {
        RelayEnd::ClientGone {
            server_clean: self.server_clean(),
            error,
        }
    }
}

/// Counts a ReadyForQuery: one query done; the server idle again stops the query clock;
/// status 'I' ends a transaction (an autocommit statement or a COMMIT / ROLLBACK).
#[inline]
fn ready_for_query_seen(tx: &mut TxState, stats: &PoolStats) {
    stats.record_query();
    tx.batches_done = tx.batches_done.wrapping_add(1);
    if tx.status == b'I' {
        tx.xacts_done = tx.xacts_done.wrapping_add(1);
    }
    if tx.outstanding == 0
        && let Some(since) = tx.busy_since.take()
    {
        stats.record_query_time(since.elapsed());
    }
    if tx.outstanding == 0 && !tx.unsynced {
        // Every COMMIT sent has its answer.
        tx.effects.remove(Effects::COMMIT);
    }
    if tx.status == b'I' {
        let since = tx.xact_since.take();
        stats.record_xact(since.map(|t| t.elapsed()).unwrap_or_default());
        if tx.outstanding > 0 {
            // Pipelined: the next transaction is already under way.
            tx.xact_since = Some(Instant::now());
        }
    }
}

/// Zero-copy scan of what the client sent: counts the messages that will each get a
/// ReadyForQuery, notes what the SQL of Query and Parse messages may do to the session, and
/// stops at Terminate (which is not forwarded: the server stays open for the pool).
pub fn scan_client(half: &mut HalfBuffer, tx: &mut TxState) -> Result<(), ProtocolError> {
    scan_client_within(half, tx, None)
}

/// [`scan_client`], with a Query that would pin beyond `budget` replaced by one that makes
/// PostgreSQL refuse it in its place (see [`effects::refusal_query`]).
pub fn scan_client_within(
    half: &mut HalfBuffer,
    tx: &mut TxState,
    mut budget: Option<&mut (dyn PinBudget + Send + '_)>,
) -> Result<(), ProtocolError> {
    loop {
        let mut terminated = false;
        let mut refuse = None;
        let result = half.scanner.scan(
            &half.buf,
            half.ready,
            |tag| matches!(tag, b'X' | b'Q' | b'P'),
            |seen, pos| {
                let tag = match seen {
                    Seen::Whole(tag @ (b'Q' | b'P'), body) => {
                        let effects = effects::of_message(tag, body);
                        // A named statement is left alone: the server would keep it.
                        let refusable = tag == b'Q' || body.first() == Some(&0);
                        if refusable && over_budget(effects, tx.effects, budget.as_deref_mut()) {
                            let replacement = match tag {
                                b'Q' => Some(effects::refusal_query(effects.pin_reasons())),
                                _ => effects::refusal_parse(effects.pin_reasons(), body),
                            };
                            if let Some(replacement) = replacement {
                                refuse = Some((pos, body.len() + 5, replacement));
                                return false;
                            }
                        }
                        tx.effects |= effects;
                        tag
                    }
                    // Too big to hold for a look: pgmoat cannot tell what it does.
                    Seen::Streamed(tag @ (b'Q' | b'P')) => {
                        tx.effects |= Effects::UNSEEN;
                        tag
                    }
                    Seen::Whole(tag, _) | Seen::Streamed(tag) => tag,
                };
                match tag {
                    b'X' => {
                        terminated = true;
                        return false;
                    }
                    tag => {
                        tx.client_message(tag);
                    }
                }
                true
            },
        )?;
        half.ready = result.forward_to;
        half.needed = result.needed;
        if let Some((pos, len, replacement)) = refuse {
            let tail = half.buf.split_off(pos + len);
            half.buf.truncate(pos);
            half.buf.extend_from_slice(&replacement);
            half.buf.extend_from_slice(&tail);
            continue;
        }
        if terminated {
            half.terminated = true;
            // Whatever follows Terminate is meaningless.
            half.buf.truncate(half.ready);
        }
        return Ok(());
    }
}

/// A statement with `effects` would pin its client's server, none of the statements before
/// it in this relay did, and the budget says no.
#[inline]
pub(crate) fn over_budget(
    effects: Effects,
    so_far: Effects,
    budget: Option<&mut (dyn PinBudget + Send + '_)>,
) -> bool {
    effects.intersects(Effects::PINS)
        && !so_far.intersects(Effects::PINS)
        && budget.is_some_and(|b| !b.allow_pin(effects.pin_reasons()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Full;

    impl PinBudget for Full {
        fn allow_pin(&mut self, _: crate::backend::PinReasons) -> bool {
            false
        }
    }

    fn query(sql: &str) -> Vec<u8> {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        m.extend_from_slice(sql.as_bytes());
        m.push(0);
        m
    }

    #[test]
    fn a_query_over_the_pin_budget_is_replaced_in_place() {
        let mut half = HalfBuffer::new();
        half.buf.extend_from_slice(&query("SELECT 1"));
        half.buf
            .extend_from_slice(&query("CREATE TEMP TABLE t (x int)"));
        half.buf.extend_from_slice(&query("SELECT 2"));
        let mut tx = TxState::default();
        let mut full = Full;
        scan_client_within(&mut half, &mut tx, Some(&mut full)).unwrap();
        let refusal = effects::refusal_query(crate::backend::PinReasons::TEMP_TABLE);
        let mut expected = query("SELECT 1");
        expected.extend_from_slice(&refusal);
        expected.extend_from_slice(&query("SELECT 2"));
        assert_eq!(&half.buf[..], &expected[..]);
        assert_eq!(half.ready, expected.len(), "all of it may be forwarded");
        assert_eq!(tx.outstanding, 3);
        assert!(!tx.effects.intersects(Effects::PINS));
        // Without a budget (a pinned client) nothing is replaced.
        let mut half = HalfBuffer::new();
        half.buf
            .extend_from_slice(&query("CREATE TEMP TABLE t (x int)"));
        let mut tx = TxState::default();
        scan_client_within(&mut half, &mut tx, None).unwrap();
        assert!(tx.effects.contains(Effects::TEMP));
    }
}
