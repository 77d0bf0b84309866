//! A logged-in client's loop: wait idle for its next message, borrow a server (per
//! transaction or per session), make the server's settings the client's, relay, and give the
//! server back clean (or close it).

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::server_state::{finish, release, sync_params};
use crate::backend::BackendKey;
use crate::cancel::CancelTarget;
use crate::config::PoolMode;
use crate::pool::{ServerObject, ServerPool};
use crate::protocol::{PgError, SqlState};
use crate::relay::prepared::ClientStatements;
use crate::relay::translate::{IdleBatch, answer_locally, classify_idle};
use crate::relay::{HalfBuffer, Relay, RelayEnd, SessionChanges, TxState};
use crate::state::{Generation, Shared};
use crate::stats::{ClientRegistration, PoolStats};
use crate::stream::Stream;

/// What the session loop does after a transaction.
enum Next {
    /// Wait for the client's next message.
    Continue,
    /// The client is gone or was sent away.
    Close,
}

pub struct ClientSession {
    pub(super) stream: Stream,
    pub(super) shared: Arc<Shared>,
    pub(super) generation: Arc<Generation>,
    pub(super) pool: Arc<ServerPool>,
    pub(super) key: BackendKey,
    /// Where a CancelRequest with `key` goes while a server is held.
    pub(super) cancel: Arc<crate::cancel::CancelSlot>,
    /// Settings the client asked for (startup packet, its own SETs), replayed on whichever
    /// server it gets.
    pub(super) params: Vec<(String, String)>,
    pub(super) user: String,
    pub(super) database: String,
    /// Named prepared statements (transaction mode with max_prepared_statements > 0).
    pub(super) statements: ClientStatements,
    /// This client in SHOW CLIENTS, with its state.
    pub(super) entry: ClientRegistration,
    /// Its pool's counters.
    pub(super) stats: Arc<PoolStats>,
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        self.shared.cancel.unregister(self.key);
    }
}

impl ClientSession {
    pub async fn run(&mut self) {
        let mode = self.pool.settings.mode;
        let max_prepared = self.generation.config.max_prepared_statements;
        let pool_statements = max_prepared > 0;
        let mut client_half = HalfBuffer::new();
        loop {
            // Idle: wait until the client sends something before taking a server.
            while !client_half.has_header() {
                let read = tokio::select! {
                    read = poll_fn(|cx| client_half.poll_fill_idle(cx, &mut self.stream)) => read,
                    _ = self.shared.shutdown.cancelled() => {
                        Box::pin(self.fail(PgError::fatal(SqlState::ADMIN_SHUTDOWN, "pgmoat is shutting down"))).await;
                        return;
                    }
                };
                match read {
                    Ok(0) => {
                        tracing::debug!("client disconnected");
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "client connection lost");
                        return;
                    }
                }
            }
            if client_half.starts_with_terminate() {
                tracing::debug!("client terminated");
                return;
            }
            if pool_statements && mode == PoolMode::Transaction {
                match classify_idle(&client_half.buf) {
                    IdleBatch::Local { len, .. } => {
                        let batch = client_half.buf.split_to(len);
                        let mut reply = BytesMut::new();
                        if let Err(e) = answer_locally(&batch, &mut self.statements, &mut reply) {
                            Box::pin(
                                self.fail(PgError::fatal(
                                    SqlState::PROTOCOL_VIOLATION,
                                    e.to_string(),
                                )),
                            )
                            .await;
                            return;
                        }
                        if let Next::Close = self.answer(&reply).await {
                            return;
                        }
                        continue;
                    }
                    IdleBatch::NeedMore => {
                        // Force another read: pretend no header is there yet.
                        let read =
                            poll_fn(|cx| client_half.poll_fill_idle(cx, &mut self.stream)).await;
                        if !matches!(read, Ok(n) if n > 0) {
                            return;
                        }
                        continue;
                    }
                    IdleBatch::Server => {}
                }
            }

            // Draining: no new transaction, even for a query that is already here (pipelined,
            // or read in the same instant the shutdown began).
            if self.shared.shutdown.is_cancelled() {
                Box::pin(self.fail(PgError::fatal(
                    SqlState::ADMIN_SHUTDOWN,
                    "pgmoat is shutting down",
                )))
                .await;
                return;
            }
            // Boxed: a transaction's state (checkout, relay, reset) is kilobytes, and inline
            // it would stay allocated in the task of every idle client.
            let next =
                Box::pin(self.transaction(&mut client_half, mode, pool_statements, max_prepared))
                    .await;
            if let Next::Close = next {
                return;
            }
        }
    }

    /// One use of a server: checkout, the client's settings, the relay, and giving the
    /// server back (or closing it).
    async fn transaction(
        &mut self,
        client_half: &mut HalfBuffer,
        mode: PoolMode,
        pool_statements: bool,
        max_prepared: usize,
    ) -> Next {
        let mut tx = TxState::default();
        let mut server = match self.checkout().await {
            Ok(server) => server,
            Err(e) => {
                // PostgreSQL unreachable, or refusing connections while it shuts down or
                // starts up: in transaction mode the client only loses this query, as it
                // would with a failed statement, and keeps its connection for when
                // PostgreSQL is back.
                let transient = [
                    SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::ADMIN_SHUTDOWN,
                ];
                if mode == PoolMode::Transaction
                    && transient.contains(&e.code)
                    && let Some(len) = complete_batch_len(&client_half.buf)
                {
                    tracing::info!(error = %e, "no server connection for this query; the client stays connected");
                    bytes::Buf::advance(&mut client_half.buf, len);
                    let err = PgError {
                        severity: crate::protocol::Severity::Error,
                        ..e
                    };
                    return self.answer(&lost_batches(&err, 1)).await;
                }
                self.fail(e).await;
                return Next::Close;
            }
        };
        if let Err(e) = sync_params(&self.params, &mut server).await {
            tracing::warn!(error = %e, "could not apply the client's settings on a server connection");
            server.discard();
            self.fail(e).await;
            return Next::Close;
        }
        self.cancel.set(Some(CancelTarget {
            target: self.pool.cancel_target.clone(),
            server_key: server.key,
        }));
        let mut server_half = HalfBuffer::server_side(std::mem::take(&mut server.read_buf));
        client_half.borrow_spare(&mut server.spare_buffers);
        let mut changes = SessionChanges::default();
        let end = Relay {
            client: &mut self.stream,
            client_half: &mut *client_half,
            server: &mut server,
            server_half: &mut server_half,
            tx: &mut tx,
            changes: &mut changes,
            release_when_idle: mode == PoolMode::Transaction,
            statements: (pool_statements && mode == PoolMode::Transaction)
                .then_some((&mut self.statements, max_prepared)),
            completions: Default::default(),
            stats: &self.stats,
            shutdown: (mode == PoolMode::Session)
                .then(|| Box::pin(self.shared.shutdown.clone().cancelled_owned())),
            server_fatal: None,
            completed: false,
        }
        .run()
        .await;
        server.read_buf = server_half.into_buf();
        client_half.return_spare(&mut server.spare_buffers);
        self.cancel.set(None);
        self.entry.set_idle();
        self.remember(changes);

        match end {
            // Session mode ends a relay only to drain: reset as when the client leaves.
            RelayEnd::Released if mode == PoolMode::Session => {
                finish(server, true, mode, &self.generation).await;
            }
            RelayEnd::Released => {
                release(server, &self.generation).await;
            }
            RelayEnd::ClientTerminated { server_clean } => {
                finish(server, server_clean, mode, &self.generation).await;
                tracing::debug!("client terminated");
                return Next::Close;
            }
            RelayEnd::ClientGone {
                server_clean,
                error,
            } => {
                if !server_clean {
                    tracing::info!(
                        "client disconnected with a transaction or query in progress; closing its server connection"
                    );
                }
                finish(server, server_clean, mode, &self.generation).await;
                if let Some(e) = error.filter(|e| !e.is_closed()) {
                    self.fail(PgError::fatal(
                        SqlState::PROTOCOL_VIOLATION,
                        format!("invalid message from client: {e}"),
                    ))
                    .await;
                }
                return Next::Close;
            }
            RelayEnd::ServerFatal(fatal) => {
                let (message, after_completion) = (fatal.message, fatal.after_completion);
                let fatal = fatal.fields;
                tracing::warn!(
                    server_id = server.id,
                    code = %fatal.code,
                    message = %fatal.message,
                    "server connection ended with a FATAL error"
                );
                server.discard();
                if mode == PoolMode::Transaction && tx.server_idle() && client_half.at_boundary() {
                    // It came right after the answer: the client has all it asked for.
                    return Next::Continue;
                }
                // A FATAL (a shutdown, an administrator's pg_terminate_backend) that comes
                // before any statement of the batch completed means nothing of it took
                // effect: a completed statement's CommandComplete would have come first, and
                // an unfinished implicit transaction is rolled back. In transaction mode,
                // with whole batches outstanding, the client then only loses those batches,
                // as with any failed statement (an ErrorResponse may follow a
                // RowDescription or rows), and keeps its connection for the next server.
                let untouched = mode == PoolMode::Transaction
                    && !after_completion
                    && tx.outstanding > 0
                    && !tx.unsynced
                    && !tx.in_copy_in()
                    && client_half.at_boundary();
                let detail = format!(
                    "PostgreSQL ended the server connection: {} {}: {}",
                    fatal.severity, fatal.code, fatal.message
                );
                if untouched {
                    let err = PgError::error(
                        SqlState::CONNECTION_FAILURE,
                        "the server connection failed before this query ran",
                    )
                    .with_detail(detail)
                    .with_hint("None of it took effect; it can be run again.");
                    return self.answer(&lost_batches(&err, tx.outstanding)).await;
                }
                // Otherwise the client hears it from PostgreSQL itself, and its connection
                // ends with the server's, as it would without a pooler.
                tracing::info!(%detail, "closing client connection");
                let _ = self.stream.write_all(&message).await;
                let _ = self.stream.flush().await;
                let _ = self.stream.shutdown().await;
                return Next::Close;
            }
            RelayEnd::ServerGone(e) => {
                tracing::warn!(error = %e, server_id = server.id, "server connection lost during a query");
                server.discard();
                self.fail(PgError::fatal(
                    SqlState::CONNECTION_FAILURE,
                    "server closed the connection unexpectedly",
                )
                .with_detail("The PostgreSQL server connection failed while this client was using it; the transaction is lost.")).await;
                return Next::Close;
            }
        }
        Next::Continue
    }

    /// Waits for a server: at the PAUSE gate, then in the pool's queue. The client shows as
    /// waiting meanwhile, then as active.
    async fn checkout(&self) -> Result<ServerObject, PgError> {
        let started = Instant::now();
        self.entry.set_waiting();
        self.shared.pause.pass(&self.database, &self.entry).await;
        let result = self.pool.checkout(&self.generation).await;
        match &result {
            Ok(server) => {
                self.stats.record_wait(started.elapsed());
                self.entry.set_active(server.id);
            }
            Err(_) => self.entry.set_idle(),
        }
        result
    }

    fn remember(&mut self, changes: SessionChanges) {
        for (name, value) in changes.params {
            match self
                .params
                .iter_mut()
                .find(|(k, _)| k.eq_ignore_ascii_case(&name))
            {
                Some((_, v)) => *v = value,
                None => {
                    // A reported setting the client never asked for changed: only keep it if
                    // it differs from what the pool's servers start with.
                    let initial = self.pool.startup_params();
                    let default = initial.as_ref().and_then(|p| {
                        p.iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(&name))
                            .map(|(_, v)| v.clone())
                    });
                    if default.as_deref() != Some(value.as_str()) {
                        self.params.push((name, value));
                    }
                }
            }
        }
    }

    /// Sends pgmoat's own answer to an idle client; the session goes on unless the client
    /// is gone.
    async fn answer(&mut self, reply: &[u8]) -> Next {
        if self.stream.write_all(reply).await.is_err() || self.stream.flush().await.is_err() {
            return Next::Close;
        }
        Next::Continue
    }

    async fn fail(&mut self, err: PgError) {
        tracing::info!(error = %err, "closing client connection");
        let _ = self.stream.write_all(&err.to_bytes()).await;
        let _ = self.stream.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// The answer to `batches` batches that failed as a whole without a server to run them: for
/// each, `err` and ReadyForQuery (idle), as PostgreSQL answers a failed batch.
fn lost_batches(err: &PgError, batches: u32) -> BytesMut {
    let mut reply = BytesMut::new();
    for _ in 0..batches {
        err.encode(&mut reply);
        crate::protocol::messages::ready_for_query(&mut reply, b'I');
    }
    reply
}

/// Length of the first complete batch in `buf`: a Query, or extended-protocol messages up to
/// and including Sync. `None` while it is incomplete (or not a batch that can be dropped).
fn complete_batch_len(buf: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        let header = crate::protocol::Header::parse(&buf[pos..]).ok()??;
        let end = pos + header.total();
        if end > buf.len() {
            return None;
        }
        match header.tag {
            b'Q' if pos == 0 => return Some(end),
            b'S' => return Some(end),
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => pos = end,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_that_can_be_dropped_whole() {
        let msg = |tag: u8, body: &[u8]| {
            let mut v = vec![tag];
            v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            v.extend_from_slice(body);
            v
        };
        let query = msg(b'Q', b"select 1\0");
        assert_eq!(complete_batch_len(&query), Some(query.len()));
        assert_eq!(complete_batch_len(&query[..4]), None);
        let mut extended = msg(b'P', b"\0select 1\0\0\0");
        extended.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        extended.extend(msg(b'E', b"\0\0\0\0\0"));
        assert_eq!(complete_batch_len(&extended), None, "no Sync yet");
        let without_sync = extended.len();
        extended.extend(msg(b'S', b""));
        assert_eq!(complete_batch_len(&extended), Some(without_sync + 5));
        assert_eq!(complete_batch_len(&msg(b'd', b"data")), None);
    }
}
