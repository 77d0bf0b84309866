//! A logged-in client's loop: wait idle for its next message, find its pool in the current
//! configuration and borrow a server (per transaction, or for the whole session), make the
//! server's settings the client's, relay, and hand the server back through its state
//! machine. A client that makes session state (temp tables, advisory locks, LISTEN, SQL
//! PREPARE, WITH HOLD cursors) keeps its server, pinned, until PostgreSQL confirms the state
//! is gone; its session settings (any SET, role included) follow it from server to server.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::aborted::{self, Lost};
use super::server_state::{merge_snapshot, sync_settings};
use crate::admission::ClientSlot;
use crate::backend::scram_keys::ScramKeys;
use crate::backend::{BackendError, BackendKey, CloseReason, PinReasons, ResetNeed, ServerState};
use crate::cancel::CancelTarget;
use crate::config::{PoolMode, SessionState};
use crate::pool::{Lent, PinSlot, PinSlots, PoolError, PoolKey, PoolSettings, ServerPool};
use crate::protocol::{PgError, SqlState};
use crate::relay::effects::Effects;
use crate::relay::idle::{IDLE_QUEUE_MAX, IdleBatch, IdleScan, complete_batch_len};
use crate::relay::prepared::ClientStatements;
use crate::relay::translate::answer_locally;
use crate::relay::{
    Cut, HalfBuffer, PinBudget, QueryTimeout, Relay, RelayEnd, ReleaseWhen, StateTimer, Timeout,
    TxState,
};
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

/// A server kept for this client between its transactions.
struct Held {
    server: Lent,
    why: PinReasons,
    /// Its place under max_pinned_servers (none in session mode).
    _slot: Option<PinSlot>,
}

/// The pool's limit on pinned servers as the relay asks it, for a statement that would pin
/// sent inside an open transaction: a place is reserved, or the statement refused.
struct PinAllowance {
    slots: Arc<PinSlots>,
    limit: usize,
    slot: Option<PinSlot>,
}

impl PinBudget for PinAllowance {
    fn allow_pin(&mut self, why: PinReasons) -> bool {
        if self.slot.is_some() {
            return true;
        }
        self.slot = self.slots.try_reserve(self.limit);
        if self.slot.is_none() {
            tracing::info!(pinned = self.slots.count(), limit = self.limit, reason = %why, "statement refused inside a transaction: the pool's limit on pinned servers is reached");
        }
        self.slot.is_some()
    }
}

pub struct ClientSession {
    pub(super) stream: Stream,
    pub(super) shared: Arc<Shared>,
    /// This client's id (SHOW CLIENTS) and the worker it runs on (which picks its share).
    pub(super) id: u64,
    pub(super) worker: usize,
    /// The pool it borrows from, as of configuration generation `pool_generation`: looked up
    /// again after every reload, and whenever the pool was retired.
    pub(super) pool: Arc<ServerPool>,
    pub(super) pool_generation: u64,
    /// Pin or reset, and the limit on pinned servers, as of `pool_generation`.
    pub(super) session_state: SessionState,
    pub(super) max_pinned: usize,
    pub(super) key: BackendKey,
    /// Where a CancelRequest with `key` goes while a server is held.
    pub(super) cancel: Arc<crate::cancel::CancelSlot>,
    /// Settings from the startup packet: what a RESET returns to.
    pub(super) startup: Vec<(String, String)>,
    /// The client's session settings now (startup, then its own SETs), replayed on whichever
    /// server it gets; identity (session_authorization, role) first.
    pub(super) params: Vec<(String, String)>,
    pub(super) user: String,
    pub(super) database: String,
    /// SCRAM keys this client's proof gave (auth_file holds only a verifier).
    pub(super) scram_keys: Option<ScramKeys>,
    /// Prepared statements are pooled (max_prepared_statements > 0 at login).
    pub(super) pool_statements: bool,
    /// Named prepared statements (transaction mode with max_prepared_statements > 0).
    pub(super) statements: ClientStatements,
    /// This client in SHOW CLIENTS, with its state.
    pub(super) entry: ClientRegistration,
    /// Its pool's counters.
    pub(super) stats: Arc<PoolStats>,
    /// A server pinned to it (or held in session mode). Boxed: a lent connection is about a
    /// kilobyte, and most clients hold none while idle.
    held: Option<Box<Held>>,
    /// Its pinned server was lost: the next batch is answered with that news.
    state_lost: bool,
    /// Its transaction's server was lost: answered here until it ends the failed block.
    /// Boxed: rare, and inline it would grow every idle client.
    lost: Option<Box<Lost>>,
    /// Logged in (AuthenticationOk sent): a NOTICE may now go to the client. Before, during
    /// the login's own checkout, libpq would take one for a protocol error.
    may_notify: bool,
    /// Its place under max_client_conn.
    _slot: ClientSlot,
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        self.shared.cancel.unregister(self.key);
    }
}

/// What a login hands over to build a session.
pub(super) struct SessionStart {
    pub stream: Stream,
    pub shared: Arc<Shared>,
    pub id: u64,
    pub worker: usize,
    pub pool: Arc<ServerPool>,
    pub generation: u64,
    pub key: BackendKey,
    pub cancel: Arc<crate::cancel::CancelSlot>,
    pub startup: Vec<(String, String)>,
    pub user: String,
    pub database: String,
    pub scram_keys: Option<ScramKeys>,
    pub pool_statements: bool,
    pub entry: ClientRegistration,
    pub stats: Arc<PoolStats>,
    pub slot: ClientSlot,
}

impl ClientSession {
    pub(super) fn new(start: SessionStart) -> ClientSession {
        let settings = &start.pool.settings;
        let statements = ClientStatements::with_key(start.shared.statement_key);
        ClientSession {
            session_state: settings.session_state,
            max_pinned: settings.max_pinned,
            stream: start.stream,
            shared: start.shared,
            id: start.id,
            worker: start.worker,
            pool: start.pool,
            pool_generation: start.generation,
            key: start.key,
            cancel: start.cancel,
            params: start.startup.clone(),
            startup: start.startup,
            user: start.user,
            database: start.database,
            scram_keys: start.scram_keys,
            pool_statements: start.pool_statements,
            statements,
            entry: start.entry,
            stats: start.stats,
            held: None,
            state_lost: false,
            lost: None,
            may_notify: false,
            _slot: start.slot,
        }
    }

    /// Before the client is told it is in: applies its startup settings on a server (which
    /// checks them, as PostgreSQL would at login) and returns the parameters to report, in
    /// PostgreSQL's own spelling (`eucjp` is reported as `EUC_JP`). The server is held for
    /// the session in session mode, handed back otherwise. A server is needed only for the
    /// first client of a pool, for settings PostgreSQL reports, and in session mode.
    pub(super) async fn start(&mut self) -> Result<Vec<(String, String)>, PgError> {
        let session_mode = self.pool.settings.mode == PoolMode::Session;
        if let Some(known) = self.pool.startup_params()
            && !session_mode
            && let Some(reported) = self.known_spelling(&known)
        {
            return Ok(reported);
        }
        let generation = self.shared.snapshot();
        let server = match self.synced_server(&generation).await {
            Ok(server) => server,
            Err(SyncFailure::NoServer(e)) => return Err(e.to_pg_error()),
            Err(SyncFailure::Refused(e)) => return Err(e.to_setting_error()),
        };
        // PostgreSQL's spelling of what the client asked for.
        for (name, value) in &mut self.startup {
            if let Some(reported) = server.param(name) {
                self.pool.learn_canonical(name, value, reported);
                *value = reported.to_owned();
            }
        }
        self.params = self.startup.clone();
        let reported = server.params.clone();
        if session_mode {
            self.hold(server, PinReasons::SESSION_MODE, None);
        } else {
            self.cancel.set(None);
            self.entry.set_idle();
            server
                .hand_back(true, ResetNeed::Nothing, &generation)
                .await;
        }
        Ok(reported)
    }

    /// A server with the client's settings applied. PostgreSQL refusing a setting is the
    /// client's error (the server, unharmed, goes back). A connection that breaks under
    /// pgmoat's own SET (PostgreSQL stopped or crashed since it went idle) has run nothing of
    /// the client's: it is closed, its host marked down (which retires its siblings there),
    /// and another server taken, as if it had been found dead at checkout.
    async fn synced_server(&mut self, generation: &Generation) -> Result<Lent, SyncFailure> {
        let mut lost_servers = 0;
        loop {
            let mut server = self
                .checkout(generation)
                .await
                .map_err(SyncFailure::NoServer)?;
            match sync_settings(&self.params, &mut server).await {
                Ok(()) => return Ok(server),
                Err(e @ BackendError::Server { .. }) => {
                    tracing::warn!(error = %e, "could not apply the client's settings on a server connection");
                    self.cancel.set(None);
                    self.entry.set_idle();
                    // A failed sync ran in one implicit transaction: the server is as it was.
                    server.hand_back(true, ResetNeed::Nothing, generation).await;
                    return Err(SyncFailure::Refused(e));
                }
                Err(e) => {
                    tracing::warn!(error = %e, server_id = server.id, "server connection lost while applying the client's settings; nothing of the client's was sent, taking another server");
                    self.cancel.set(None);
                    self.entry.set_idle();
                    server.report_lost(None, &e.to_string(), self.connect_timeout());
                    server.close(CloseReason::ServerLost);
                    lost_servers += 1;
                    if lost_servers >= MAX_LOST_AT_SYNC {
                        return Err(SyncFailure::NoServer(PoolError::from(e)));
                    }
                }
            }
        }
    }

    /// The parameters to report, when every reported setting the client gave is the pool's
    /// default or has a spelling a server of the pool reported before: then no server is
    /// needed at login. The client's settings take PostgreSQL's spelling.
    fn known_spelling(&mut self, known: &[(String, String)]) -> Option<Vec<(String, String)>> {
        let mut reported = known.to_vec();
        let mut spelled = self.startup.clone();
        for (name, value) in &mut spelled {
            let Some((_, default)) = reported
                .iter_mut()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
            else {
                continue;
            };
            if default != value {
                *value = self.pool.canonical(name, value)?;
            }
            *default = value.clone();
        }
        self.startup = spelled;
        self.params = self.startup.clone();
        Some(reported)
    }

    /// Gives the client another cancel key (session mode: the held server's real pid),
    /// pointing where the old one did.
    pub(super) fn replace_cancel_key(
        &mut self,
        key: BackendKey,
        slot: Arc<crate::cancel::CancelSlot>,
    ) {
        self.shared.cancel.unregister(self.key);
        if let Some(held) = &self.held {
            slot.set(Some(cancel_target(&held.server)));
        }
        self.key = key;
        self.cancel = slot;
    }

    /// The server held for a session-mode client (its pid is the client's BackendKeyData).
    pub(super) fn held_server_pid(&self) -> Option<i32> {
        self.held.as_ref().map(|h| h.server.key.pid)
    }

    pub async fn run(&mut self) {
        self.may_notify = true;
        let limit = self.shared.current.load().config.max_packet_size;
        let mut client_half = HalfBuffer::client(limit);
        let mut scan = IdleScan::default();
        loop {
            if self.shared.shutdown.is_cancelled() && !client_half.has_header() {
                Box::pin(self.fail(shutting_down())).await;
                return;
            }
            if self.held.is_some() {
                // Its server goes on from where it was; the relay reads the client.
                if let Next::Close = Box::pin(self.on_held(&mut client_half)).await {
                    return;
                }
                continue;
            }
            if self.lost.is_some() {
                // Answered here, message by message, until the client ends its failed block.
                if let Next::Close = self.on_lost(&mut client_half, &mut scan).await {
                    return;
                }
                continue;
            }
            // Idle: wait until the client sends something before taking a server.
            while !client_half.has_header() {
                if let Next::Close = self.read_idle(&mut client_half).await {
                    return;
                }
            }
            if client_half.starts_with_terminate() {
                tracing::debug!("client terminated");
                return;
            }
            if let Ok(frame) = crate::protocol::frame_at(&client_half.buf, 0)
                && let Some(header) = frame.header()
            {
                // Refused before a server is taken or any of it is held (the relay checks
                // every later message the same way).
                if let Err(e) = header.check_packet_limit(client_half.packet_limit()) {
                    Box::pin(self.fail(client_fault_error(&e))).await;
                    return;
                }
                // A message that fits what an idle client may queue is read whole before a
                // server is taken for it, so a client that stops half-way holds no server
                // and meets client_idle_timeout; a bigger one is streamed by the relay.
                if frame.needed() > 0 && header.total() <= IDLE_QUEUE_MAX {
                    if let Next::Close = self.read_idle(&mut client_half).await {
                        return;
                    }
                    continue;
                }
            }
            let transaction_mode = self.pool.settings.mode == PoolMode::Transaction;
            if self.pool_statements && transaction_mode {
                match scan.classify(&client_half.buf) {
                    IdleBatch::Local { len, .. } => {
                        let batch = client_half.buf.split_to(len);
                        scan.consumed();
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
                        if let Next::Close = self.read_idle(&mut client_half).await {
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
                Box::pin(self.fail(shutting_down())).await;
                return;
            }
            let mut reserved = None;
            if transaction_mode && (self.state_lost || self.session_state == SessionState::Pin) {
                let refusal = match self.check_batch(&client_half, &mut scan) {
                    Ok(slot) => {
                        reserved = slot;
                        None
                    }
                    Err(refusal) => Some(refusal),
                };
                match refusal {
                    None => {}
                    Some(None) => {
                        // The batch is not whole yet: it cannot be judged (or dropped) yet.
                        if let Next::Close = self.read_idle(&mut client_half).await {
                            return;
                        }
                        continue;
                    }
                    Some(Some((len, err))) => {
                        bytes::Buf::advance(&mut client_half.buf, len);
                        scan.consumed();
                        if let Next::Close = self.answer(&lost_batches(&err, 1)).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            // The transaction takes what is buffered; whatever it leaves is a new batch.
            scan.consumed();
            // Boxed: a transaction's state (checkout, relay, reset) is kilobytes, and inline
            // it would stay allocated in the task of every idle client.
            let next = Box::pin(self.transaction(&mut client_half, reserved)).await;
            if let Next::Close = next {
                return;
            }
            // max_packet_size as reloaded (it applies from a message boundary on).
            if client_half.at_boundary() {
                let limit = self.shared.current.load().config.max_packet_size;
                client_half.set_packet_limit(limit);
            }
        }
    }

    /// A client whose transaction's server was lost (see `aborted`): what it has sent is
    /// answered without a server, then more is read, until its block is over.
    async fn on_lost(&mut self, client_half: &mut HalfBuffer, scan: &mut IdleScan) -> Next {
        let Some(lost) = self.lost.as_deref_mut() else {
            return Next::Continue;
        };
        let mut reply = BytesMut::new();
        let mut names = aborted::Names(self.pool_statements.then_some(&mut self.statements));
        let max_packet = client_half.packet_limit();
        let consumed = lost.consume(&mut client_half.buf, &mut reply, &mut names, max_packet);
        scan.consumed();
        if !reply.is_empty()
            && let Next::Close = self.answer(&reply).await
        {
            return Next::Close;
        }
        match consumed {
            Ok(aborted::Outcome::Ended) => {
                tracing::info!("the client ended its lost transaction");
                self.lost = None;
                Next::Continue
            }
            Ok(aborted::Outcome::Terminate) => {
                tracing::debug!("client terminated");
                Next::Close
            }
            Ok(aborted::Outcome::NeedMore) => {
                // Inside its failed block the client is idle in a transaction, as far as
                // idle_transaction_timeout goes, though no server waits for it.
                let in_block = self.lost.as_deref().is_some_and(Lost::in_block);
                let limit = in_block
                    .then(|| {
                        let current = self.shared.current.load();
                        current.config.idle_transaction_timeout_for(&self.database)
                    })
                    .flatten();
                self.read_idle_within(client_half, limit).await
            }
            Err(e) => {
                Box::pin(self.fail(client_fault_error(&e))).await;
                Next::Close
            }
        }
    }

    /// Reads more of an idle client, which may end the session: the client left, pgmoat is
    /// shutting down, or client_idle_timeout passed without a byte (a half-sent message
    /// included).
    async fn read_idle(&mut self, client_half: &mut HalfBuffer) -> Next {
        self.read_idle_within(client_half, None).await
    }

    /// [`read_idle`](Self::read_idle), for a client that is idle inside a transaction
    /// block: `in_transaction` is its idle_transaction_timeout.
    async fn read_idle_within(
        &mut self,
        client_half: &mut HalfBuffer,
        in_transaction: Option<std::time::Duration>,
    ) -> Next {
        let idle_limit = self.shared.current.load().config.client_idle_timeout;
        let expired = async {
            match idle_limit.non_zero() {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let idle_in_transaction = async {
            match in_transaction {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let read = tokio::select! {
            _ = idle_in_transaction => {
                let limit = in_transaction.unwrap_or_default();
                self.shared.metrics.timeout_fired(Timeout::IdleInTransaction.setting());
                Box::pin(self.fail(timeout_error(Timeout::IdleInTransaction, limit))).await;
                return Next::Close;
            }
            read = poll_fn(|cx| client_half.poll_fill_idle(cx, &mut self.stream)) => read,
            _ = self.shared.shutdown.cancelled() => {
                Box::pin(self.fail(shutting_down())).await;
                return Next::Close;
            }
            _ = expired => {
                tracing::info!(seconds = idle_limit.0, "client_idle_timeout: closing an idle client");
                let message = format!(
                    "terminating connection due to client_idle_timeout ({} s without a query)",
                    idle_limit.0
                );
                Box::pin(self.fail(PgError::fatal(SqlState::IDLE_SESSION_TIMEOUT, message))).await;
                return Next::Close;
            }
        };
        match read {
            Ok(0) => {
                tracing::debug!("client disconnected");
                Next::Close
            }
            Ok(_) => Next::Continue,
            Err(e) => {
                tracing::debug!(error = %e, "client connection lost");
                Next::Close
            }
        }
    }

    /// Before a batch of an unpinned client runs: the news that its pinned server was lost,
    /// or a refusal when what the batch does would pin a server and the pool's limit on
    /// pinned servers is reached. `Ok` with a pin slot reserved for it, if it would pin and a
    /// place came free (or unjudged, once the batch outgrew what an idle client may queue:
    /// the relay then refuses what would pin as it forwards);
    /// `Err(None)` when the batch is not complete yet; `Err(Some((len, error)))` to answer
    /// the first `len` bytes with `error` instead of running them.
    #[allow(clippy::type_complexity)]
    fn check_batch(
        &mut self,
        client_half: &HalfBuffer,
        scan: &mut IdleScan,
    ) -> Result<Option<PinSlot>, Option<(usize, PgError)>> {
        let buf = &client_half.buf[..];
        if self.state_lost {
            scan.judge_batch(buf, &self.statements);
            let Some(len) = scan.batch_len() else {
                return if scan.over_bound(buf.len()) {
                    Ok(None)
                } else {
                    Err(None)
                };
            };
            self.state_lost = false;
            return Err(Some((
                len,
                PgError::error(
                    SqlState::CONNECTION_FAILURE,
                    "the server connection that held this session's state was lost",
                )
                .with_detail(
                    "Temporary tables, session advisory locks, LISTEN registrations, prepared \
                     statements and WITH HOLD cursors of this session are gone; this statement \
                     did not run.",
                )
                .with_hint("Run it again; recreate the session state first if it needs it."),
            )));
        }
        if self.pool.pins.count() < self.max_pinned {
            // Under the limit the relay reserves a place as it forwards a statement that
            // would pin (PinAllowance); the batch is read here only at the limit, to refuse
            // it before a server is taken. So plain traffic is not scanned twice.
            return Ok(None);
        }
        scan.judge_batch(buf, &self.statements);
        let effects = scan.batch_effects();
        if !effects.intersects(Effects::PINS) || scan.over_bound(buf.len()) {
            return Ok(None);
        }
        if let Some(slot) = self.pool.pins.try_reserve(self.max_pinned) {
            return Ok(Some(slot));
        }
        let len = scan.batch_len().ok_or(None)?;
        let why = effects.pin_reasons();
        let pinned = self.pool.pins.count();
        tracing::info!(pinned, limit = self.max_pinned, reason = %why, "statement refused: the pool's limit on pinned servers is reached");
        Err(Some((
            len,
            crate::relay::effects::pin_refusal(why, Some((pinned, self.max_pinned))),
        )))
    }

    /// The current pool for this client: looked up again when the configuration changed or
    /// the pool was retired (a reload replaced it), so a session never holds a stale pool.
    fn current_pool(&mut self, generation: &Generation) -> Result<(), PoolError> {
        if self.pool_generation == generation.id && !self.pool.is_retired() {
            return Ok(());
        }
        let Some(mut settings) = PoolSettings::resolve(
            &generation.config,
            &generation.users,
            &self.database,
            &self.user,
        ) else {
            return Err(PoolError::Removed {
                database: self.database.clone(),
            });
        };
        if settings.target.password.is_none() && settings.target.user == self.user {
            // Only while the client's keys belong to the verifier auth_file holds now.
            settings.target.scram_keys = self.scram_keys.clone().filter(|keys| {
                matches!(generation.users.get(&self.user),
                    Some(crate::auth::Secret::Scram(v)) if v.server_key == keys.server_key)
            });
        }
        let key = PoolKey {
            database: self.database.clone(),
            user: settings.target.user.clone(),
        };
        if key != self.pool.key {
            self.stats = self.shared.stats.pool(&key);
            self.entry.set_pool_user(&key.user);
        }
        self.session_state = settings.session_state;
        self.max_pinned = settings.max_pinned;
        self.pool = self.shared.pools.get_or_create(key, settings, self.worker);
        self.pool_generation = generation.id;
        Ok(())
    }

    /// Waits for a server: at the PAUSE gate, then in the current pool's queue (asking the
    /// next current pool when a reload retires the one it waits in). The client shows as
    /// waiting meanwhile, then as active.
    async fn checkout(&mut self, generation: &Generation) -> Result<Lent, PoolError> {
        let started = Instant::now();
        self.entry.set_waiting();
        let cancel = self.cancel.clone();
        cancel.begin_wait();
        let result = tokio::select! {
            result = self.wait_for_server(generation) => result,
            () = cancel.wait_cancelled() => Err(PoolError::Canceled),
        };
        let target = result.as_ref().ok().map(cancel_target);
        if cancel.end_wait(target) {
            // The cancel came first: the query must not run.
            if let Ok(server) = result {
                server.hand_back(true, ResetNeed::Nothing, generation).await;
            }
            self.entry.set_idle();
            return Err(PoolError::Canceled);
        }
        match &result {
            Ok(server) => {
                self.stats.record_wait(started.elapsed());
                self.entry.set_active(server.id);
            }
            Err(_) => self.entry.set_idle(),
        }
        result
    }

    /// The PAUSE gate, then the current pool's queue, asking the next current pool when a
    /// reload retires the one it waits in.
    async fn wait_for_server(&mut self, generation: &Generation) -> Result<Lent, PoolError> {
        self.shared.pause.pass(&self.database, &self.entry).await;
        let notify_after = generation
            .config
            .query_wait_notify
            .non_zero()
            .filter(|_| self.may_notify);
        let mut notice = notify_after.map(|after| (after, Box::pin(tokio::time::sleep(after))));
        let mut generation = generation;
        let mut newer;
        loop {
            self.current_pool(generation)?;
            let pool = self.pool.clone();
            let result = {
                let checkout = pool.checkout(generation, self.id);
                tokio::pin!(checkout);
                match notice.as_mut() {
                    None => checkout.as_mut().await,
                    Some((after, at)) => {
                        let after = *after;
                        tokio::select! {
                            result = checkout.as_mut() => result,
                            () = at.as_mut() => {
                                notice = None;
                                // The wait goes on while the notice is written, so
                                // query_wait_timeout still applies, and the notice is never
                                // cut off half-way.
                                let bytes = self.wait_notice(after);
                                let stream = &mut self.stream;
                                let write = async {
                                    let _ = stream.write_all(&bytes).await;
                                    let _ = stream.flush().await;
                                };
                                let ((), result) = tokio::join!(write, checkout.as_mut());
                                result
                            }
                        }
                    }
                }
            };
            match result {
                Err(PoolError::Retired) => {
                    // Replaced while this client waited: the reload that did it is in force.
                    newer = self.shared.snapshot();
                    generation = &newer;
                    tokio::task::yield_now().await;
                }
                other => return other,
            }
        }
    }

    /// query_wait_notify's NOTICE: why a waiting client's query has not started yet.
    fn wait_notice(&self, after: std::time::Duration) -> Vec<u8> {
        tracing::debug!(database = %self.database, "query_wait_notify: telling a waiting client");
        PgError {
            severity: crate::protocol::error::Severity::Notice,
            ..PgError::error(
                SqlState::SUCCESSFUL_COMPLETION,
                format!(
                    "waiting for a server connection for database \"{}\": all {} are in use",
                    self.database, self.pool.settings.size
                ),
            )
        }
        .with_detail(format!(
            "The query has waited {} s so far (query_wait_notify); it runs when a server is free, or fails after query_wait_timeout.",
            after.as_secs_f64()
        ))
        .to_bytes()
        .to_vec()
    }

    /// One use of a server in transaction mode (or the start of a session-mode client's
    /// session): checkout, the client's settings, the relay, and what becomes of the server.
    async fn transaction(
        &mut self,
        client_half: &mut HalfBuffer,
        reserved: Option<PinSlot>,
    ) -> Next {
        let generation = self.shared.snapshot();
        let mut server = match self.synced_server(&generation).await {
            Ok(server) => server,
            Err(SyncFailure::NoServer(e)) => return self.no_server(client_half, e).await,
            Err(SyncFailure::Refused(e)) => {
                self.fail(e.to_pg_error()).await;
                return Next::Close;
            }
        };
        if self.pool.settings.mode == PoolMode::Session {
            // A reload made this pool session-mode: the client keeps this server.
            self.hold(server, PinReasons::SESSION_MODE, None);
            return Next::Continue;
        }
        let mut tx = TxState::default();
        let mut allowance = PinAllowance {
            slots: self.pool.pins.clone(),
            limit: self.max_pinned,
            slot: reserved,
        };
        let budget = (self.session_state == SessionState::Pin).then_some(&mut allowance);
        let end = self
            .relay(client_half, &mut server, &mut tx, ReleaseWhen::Idle, budget)
            .await;
        self.after_relay(server, end, tx, allowance.slot, &generation)
            .await
    }

    /// A held (pinned, or session-mode) server: relay until the client's statements may have
    /// changed its session state (pinned) or the client leaves (session mode).
    async fn on_held(&mut self, client_half: &mut HalfBuffer) -> Next {
        let Some(held) = self.held.take() else {
            return Next::Continue;
        };
        let Held {
            mut server,
            why,
            _slot: slot,
        } = *held;
        let release = if why.contains(PinReasons::SESSION_MODE) {
            ReleaseWhen::Shutdown
        } else {
            ReleaseWhen::IdleAfterChanges
        };
        let mut tx = TxState::default();
        self.entry.set_active(server.id);
        let end = self
            .relay(client_half, &mut server, &mut tx, release, None)
            .await;
        let generation = self.shared.snapshot();
        if why.contains(PinReasons::SESSION_MODE) {
            // Session mode ends a relay only when the client leaves or pgmoat drains.
            let clean = matches!(
                end,
                RelayEnd::Released
                    | RelayEnd::ClientTerminated { server_clean: true }
                    | RelayEnd::ClientGone {
                        server_clean: true,
                        ..
                    }
            );
            self.cancel.set(None);
            self.entry.set_idle();
            return match end {
                RelayEnd::ServerFatal(_) | RelayEnd::ServerGone(_) => {
                    self.server_failed(server, end, tx).await
                }
                RelayEnd::Timeout { kind, limit } => {
                    server
                        .hand_back(kind.server_clean(), ResetNeed::ResetQuery, &generation)
                        .await;
                    self.shared.metrics.timeout_fired(kind.setting());
                    self.fail(timeout_error(kind, limit)).await;
                    Next::Close
                }
                _ => {
                    server
                        .hand_back(clean, ResetNeed::ResetQuery, &generation)
                        .await;
                    if let RelayEnd::Released = end {
                        // Drained: the loop closes the client.
                        Next::Continue
                    } else {
                        Next::Close
                    }
                }
            };
        }
        self.after_relay(server, end, tx, slot, &generation).await
    }

    async fn relay(
        &mut self,
        client_half: &mut HalfBuffer,
        server: &mut Lent,
        tx: &mut TxState,
        release: ReleaseWhen,
        budget: Option<&mut PinAllowance>,
    ) -> RelayEnd {
        // A guard, not a snapshot: only a few settings are read.
        let (max_prepared, idle_tx, query_timeout, xact_timeout, client_idle) = {
            let current = self.shared.current.load();
            let config = &current.config;
            (
                config.max_prepared_statements,
                config.idle_transaction_timeout_for(&self.database),
                config.query_timeout_for(&self.database),
                config.transaction_timeout_for(&self.database),
                config.client_idle_timeout.non_zero(),
            )
        };
        let query_timeout = query_timeout.map(|limit| {
            let (shared, key) = (self.shared.clone(), self.key);
            QueryTimeout::new(
                limit,
                Box::new(move || cancel_for_query_timeout(&shared, key, limit)),
            )
        });
        let transaction_mode = self.pool.settings.mode == PoolMode::Transaction;
        let mut server_half = HalfBuffer::server_side(std::mem::take(&mut server.read_buf));
        client_half.borrow_spare(&mut server.spare_buffers);
        let end = Relay {
            client: &mut self.stream,
            client_half: &mut *client_half,
            server,
            server_half: &mut server_half,
            tx,
            release,
            statements: (self.pool_statements && transaction_mode)
                .then_some((&mut self.statements, max_prepared.max(1))),
            completions: Default::default(),
            stats: &self.stats,
            shutdown: (release != ReleaseWhen::Idle)
                .then(|| Box::pin(self.shared.shutdown.clone().cancelled_owned())),
            server_fatal: None,
            completed: false,
            pin_budget: budget.map(|b| b as &mut (dyn PinBudget + Send)),
            idle_tx: idle_tx.map(StateTimer::new),
            query_timeout,
            xact_timeout: xact_timeout.map(StateTimer::new),
            // Between transactions a released server is the idle loop's business.
            client_idle: client_idle
                .filter(|_| release != ReleaseWhen::Idle)
                .map(StateTimer::new),
        }
        .run()
        .await;
        server.read_buf = server_half.into_buf();
        client_half.return_spare(&mut server.spare_buffers);
        end
    }

    /// What becomes of a transaction-mode server after a relay: checked against PostgreSQL
    /// when the transaction may have changed the session, then pinned, unpinned, reset or
    /// handed back.
    async fn after_relay(
        &mut self,
        server: Lent,
        end: RelayEnd,
        tx: TxState,
        slot: Option<PinSlot>,
        generation: &Generation,
    ) -> Next {
        let pinned = server.state().pinned();
        match end {
            RelayEnd::Released => self.settle(server, tx.effects, slot, generation).await,
            RelayEnd::ClientTerminated { server_clean } => {
                self.leave(server, server_clean, tx.effects, generation)
                    .await;
                tracing::debug!("client terminated");
                Next::Close
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
                self.leave(server, server_clean, tx.effects, generation)
                    .await;
                if let Some(e) = error.filter(|e| !e.is_closed()) {
                    let err = match e.protocol() {
                        Some(e) => client_fault_error(e),
                        None => PgError::fatal(
                            SqlState::PROTOCOL_VIOLATION,
                            format!("invalid message from client: {e}"),
                        ),
                    };
                    self.fail(err).await;
                }
                Next::Close
            }
            RelayEnd::Timeout { kind, limit } => {
                // Mid-transaction the server is closed, which rolls the transaction back; a
                // held server between transactions goes back through the usual checks.
                self.leave(server, kind.server_clean(), tx.effects, generation)
                    .await;
                self.shared.metrics.timeout_fired(kind.setting());
                self.fail(timeout_error(kind, limit)).await;
                Next::Close
            }
            RelayEnd::ServerFatal(_) | RelayEnd::ServerGone(_) => {
                if !pinned.is_empty() {
                    tracing::warn!(pinned = %pinned, "the server pinned to this client was lost, and its session state with it");
                    self.state_lost = true;
                    self.entry.set_pinned(0);
                }
                drop(slot);
                self.server_failed(server, end, tx).await
            }
        }
    }

    /// The transaction is over and the server idle. If it may have changed the session,
    /// PostgreSQL says what is there: settings are remembered for the client, state pins
    /// the server to it (or is reset, with session_state = "reset"), and a pin is undone
    /// once the state is gone.
    async fn settle(
        &mut self,
        mut server: Lent,
        effects: Effects,
        slot: Option<PinSlot>,
        generation: &Generation,
    ) -> Next {
        let was_pinned = server.state().pinned();
        // With server_reset_query_always, every server going back to the pool is reset.
        let reset = if generation.config.server_reset_query_always
            && !generation.config.server_reset_query.trim().is_empty()
        {
            ResetNeed::ResetQuery
        } else {
            ResetNeed::Nothing
        };
        if !effects.needs_probe(!was_pinned.is_empty()) {
            if !was_pinned.is_empty() {
                self.hold(server, was_pinned, slot);
                return Next::Continue;
            }
            drop(slot);
            self.release(server, reset, generation).await;
            return Next::Continue;
        }
        // The check is pgmoat's own query: no cancel may reach it. New cancels find no server
        // meanwhile; one already on its way is waited out first.
        self.cancel.set(None);
        let settled = crate::pool::cancels_settled(server.cancels.clone(), generation);
        let login_user = self.pool.settings.target.user.clone();
        let probed = match settled.await {
            true => Box::pin(server.probe_session(&login_user)).await,
            false => Err(crate::backend::BackendError::Protocol {
                addr: server.addr.to_string(),
                source: crate::protocol::ProtocolError::Malformed(
                    "a cancel request for this server did not finish",
                ),
            }),
        };
        let snapshot = match probed {
            Ok(snapshot) => snapshot,
            Err(e) => {
                tracing::warn!(error = %e, "checking a server's session state failed; closing it");
                if !was_pinned.is_empty() || effects.intersects(Effects::PINS) {
                    self.state_lost = true;
                }
                self.entry.set_pinned(0);
                self.entry.set_idle();
                server.close(CloseReason::ResetFailed);
                return Next::Continue;
            }
        };
        self.params = merge_snapshot(&self.startup, &snapshot.settings);
        let pins = snapshot.pins;
        let mut reset = reset;
        if snapshot.protocol_statements != server.statements.len() as u64 {
            // A client dropped or replaced prepared statements pgmoat made (DEALLOCATE inside
            // a function, say): nothing is assumed prepared there any more, and the server
            // is reset before anyone else binds a name on it.
            tracing::info!(
                server = snapshot.protocol_statements,
                pgmoat = server.statements.len(),
                "the server's prepared statements are not the ones pgmoat made there"
            );
            server.statements.clear();
            reset = ResetNeed::DiscardAll;
        }
        if pins.is_empty() {
            if !was_pinned.is_empty() {
                tracing::info!(was = %was_pinned, "session state gone: server unpinned");
                self.entry.set_pinned(0);
            }
            drop(slot);
            self.release(server, reset, generation).await;
            return Next::Continue;
        }
        if self.session_state == SessionState::Reset {
            tracing::info!(state = %pins, "session state reset (session_state = \"reset\"): the client loses it");
            drop(slot);
            self.release(server, ResetNeed::DiscardAll, generation)
                .await;
            return Next::Continue;
        }
        let slot = match (slot, was_pinned.is_empty()) {
            (Some(slot), _) => Some(slot),
            (None, true) => Some(match self.pool.pins.try_reserve(self.max_pinned) {
                Some(slot) => slot,
                None => {
                    tracing::warn!(state = %pins, limit = self.max_pinned, "session state found after the fact: server pinned beyond max_pinned_servers");
                    self.pool.pins.force()
                }
            }),
            (None, false) => None,
        };
        let new = pins - was_pinned;
        if !new.is_empty() {
            self.shared.metrics.pinned(new.names());
            tracing::info!(reason = %pins, "server pinned to its client for session state");
        }
        if self.params != server.session_settings {
            // The client reset a startup setting: PostgreSQL's RESET returns to the startup
            // value, so its pinned server must have it back.
            if let Err(e) = sync_settings(&self.params, &mut server).await {
                tracing::warn!(error = %e, "could not restore a startup setting on a pinned server");
            }
        }
        self.hold(server, pins, slot);
        Next::Continue
    }

    fn hold(&mut self, mut server: Lent, why: PinReasons, slot: Option<PinSlot>) {
        self.cancel.set(Some(cancel_target(&server)));
        if server.state().pinned() != why {
            server.transition(ServerState::Pinned {
                client: self.id,
                why,
            });
        }
        self.entry.set_pinned(why.bits());
        self.entry.set_active(server.id);
        self.held = Some(Box::new(Held {
            server,
            why,
            _slot: slot,
        }));
    }

    /// Hands an unpinned server back after a transaction.
    async fn release(&mut self, server: Lent, reset: ResetNeed, generation: &Generation) {
        // First: from here on a cancel finds no server and is dropped; one that started
        // before keeps the server out of the pool until it is done.
        self.cancel.set(None);
        self.entry.set_idle();
        self.entry.set_pinned(0);
        server.hand_back(true, reset, generation).await;
    }

    /// The client left: its server is reset before anyone else gets it when the client may
    /// have left session state on it, closed when it left in the middle of something.
    async fn leave(
        &mut self,
        server: Lent,
        clean: bool,
        effects: Effects,
        generation: &Generation,
    ) {
        let pinned = !server.state().pinned().is_empty();
        let reset = if pinned || effects.needs_probe(false) {
            ResetNeed::DiscardAll
        } else {
            ResetNeed::Nothing
        };
        self.cancel.set(None);
        self.entry.set_idle();
        server.hand_back(clean, reset, generation).await;
    }

    /// PostgreSQL ended the server connection under the client.
    async fn server_failed(&mut self, server: Lent, end: RelayEnd, tx: TxState) -> Next {
        self.cancel.set(None);
        self.entry.set_idle();
        let transaction_mode = self.pool.settings.mode == PoolMode::Transaction;
        match end {
            RelayEnd::ServerFatal(fatal) => {
                let (message, after_completion) = (fatal.message, fatal.after_completion);
                let fatal = fatal.fields;
                tracing::warn!(
                    server_id = server.id,
                    code = %fatal.code,
                    message = %fatal.message,
                    "server connection ended with a FATAL error"
                );
                // The server going away (shut down, crashed, not accepting: a failover may be
                // under way), not a refusal of something the client sent (08P01, 25P03...).
                let server_went_away = matches!(fatal.code.as_str(), "57P01" | "57P02" | "57P03");
                if server_went_away {
                    server.report_lost(
                        Some(&fatal.code),
                        &format!("{}: {}", fatal.code, fatal.message),
                        self.connect_timeout(),
                    );
                }
                server.close(CloseReason::ServerLost);
                if transaction_mode && tx.server_idle() {
                    // It came right after the answer: the client has all it asked for.
                    return Next::Continue;
                }
                // A FATAL (a shutdown, an administrator's pg_terminate_backend) that comes
                // before any statement of the batch completed means nothing of it took
                // effect: a completed statement's CommandComplete would have come first, and
                // an unfinished implicit transaction is rolled back. In transaction mode,
                // with whole batches outstanding, the client then only loses those batches,
                // as with any failed statement, and keeps its connection.
                let untouched = transaction_mode
                    && tx.cut == Cut::Clean
                    && !after_completion
                    && tx.outstanding > 0
                    && !tx.unsynced
                    && !tx.in_copy_in()
                    && tx.status == b'I';
                let detail = format!(
                    "PostgreSQL ended the server connection: {} {}: {}",
                    fatal.severity, fatal.code, fatal.message
                );
                if transaction_mode
                    && server_went_away
                    && !untouched
                    && !tx.in_copy_in()
                    && tx.cut == Cut::Clean
                {
                    return self.lose_transaction(&tx, detail).await;
                }
                if untouched {
                    let err = PgError::error(
                        SqlState::CONNECTION_FAILURE,
                        "the server connection failed before this query ran",
                    )
                    .with_detail(detail)
                    .with_hint("None of it took effect; it can be run again.");
                    return match self.answer_batches(&err, &err, tx.outstanding, b'I').await {
                        Some(reply) => self.answer(&reply).await,
                        None => Next::Close,
                    };
                }
                // Otherwise the client hears it from PostgreSQL itself, and its connection
                // ends with the server's, as it would without a pooler.
                tracing::info!(%detail, cut = ?tx.cut, "closing client connection");
                if tx.cut == Cut::ToClient {
                    // In the middle of a message to the client: nothing more can be said.
                    let _ = self.stream.shutdown().await;
                    return Next::Close;
                }
                let _ = self.stream.write_all(&message).await;
                let _ = self.stream.flush().await;
                let _ = self.stream.shutdown().await;
                Next::Close
            }
            RelayEnd::ServerGone(e) => {
                tracing::warn!(error = %e, server_id = server.id, "server connection lost during a query");
                server.report_lost(None, &e.to_string(), self.connect_timeout());
                server.close(CloseReason::ServerLost);
                if transaction_mode && tx.server_idle() {
                    // Lost between transactions (a pinned server): nothing was in flight.
                    return Next::Continue;
                }
                if transaction_mode && !tx.in_copy_in() && tx.cut == Cut::Clean {
                    let detail = format!("The PostgreSQL server connection failed: {e}");
                    return self.lose_transaction(&tx, detail).await;
                }
                if tx.cut == Cut::ToClient {
                    tracing::info!(
                        "the server was lost in the middle of a message to the client; closing the client"
                    );
                    let _ = self.stream.shutdown().await;
                    return Next::Close;
                }
                self.fail(PgError::fatal(
                    SqlState::CONNECTION_FAILURE,
                    "server closed the connection unexpectedly",
                )
                .with_detail("The PostgreSQL server connection failed while this client was using it; the transaction is lost.")).await;
                Next::Close
            }
            _ => Next::Continue,
        }
    }

    /// The server of a transaction-mode client went away in the middle of its batch or its
    /// transaction block: the client keeps its connection. What it was waiting for is
    /// answered with an error; inside a transaction block it is then in a failed block
    /// (ReadyForQuery 'E') until it ends it (see `aborted`); outside one it is idle again.
    /// A COMMIT that was on its way may have committed: it is answered 08007, never as a
    /// rollback, and the block is over either way.
    async fn lose_transaction(&mut self, tx: &TxState, detail: String) -> Next {
        let commit_unknown = tx.effects.contains(Effects::COMMIT);
        let in_block = tx.status != b'I' && !commit_unknown;
        let err = if commit_unknown {
            PgError::error(
                SqlState::TRANSACTION_RESOLUTION_UNKNOWN,
                "the server connection was lost while a COMMIT was on its way; whether the transaction committed is unknown",
            )
            .with_hint(
                "Check whether its changes are there before running it again; the connection itself is fine and no transaction is open.",
            )
        } else if in_block {
            PgError::error(
                SqlState::CONNECTION_FAILURE,
                "the server connection was lost in the middle of this transaction; it was rolled back",
            )
            .with_hint("Roll back and run the transaction again; the connection itself is fine.")
        } else {
            PgError::error(
                SqlState::CONNECTION_FAILURE,
                "the server connection was lost while this query ran",
            )
            .with_hint(
                "If it wrote outside a transaction block, it may or may not have taken effect.",
            )
        }
        .with_detail(detail);
        tracing::info!(
            in_block,
            commit_unknown,
            outstanding = tx.outstanding,
            "server lost under a client; the client stays connected"
        );
        if tx.outstanding == 0 && !tx.unsynced && !commit_unknown {
            // Idle inside its block: nothing is awaited now; its next batch learns of it.
            self.lost = Some(Box::new(Lost::untold(err)));
            return Next::Continue;
        }
        let status = if in_block { b'E' } else { b'I' };
        // Each batch outstanding gets its answer: the loss (inside a block, the first
        // only; the rest are statements of the failed block). Written as it is made: a
        // client may have pipelined many batches.
        let in_failed_block = aborted::in_failed_block();
        let rest = if in_block { &in_failed_block } else { &err };
        let mut reply = match self
            .answer_batches(&err, rest, tx.outstanding, status)
            .await
        {
            Some(reply) => reply,
            None => return Next::Close,
        };
        self.lost = if tx.unsynced {
            // The rest of the batch is still coming: told now, its Sync answered later.
            if tx.outstanding == 0 || !in_block {
                err.encode(&mut reply);
            } else {
                in_failed_block.encode(&mut reply);
            }
            Some(Box::new(Lost::skipping(in_block)))
        } else {
            in_block.then(|| Box::new(Lost::aborted()))
        };
        self.answer(&reply).await
    }

    /// No server for this batch. PostgreSQL unreachable, or refusing connections while it
    /// shuts down or starts up: in transaction mode the client only loses this query, as it
    /// would with a failed statement, and keeps its connection for when PostgreSQL is back.
    async fn no_server(&mut self, client_half: &mut HalfBuffer, e: PoolError) -> Next {
        let transaction_mode = self.pool.settings.mode == PoolMode::Transaction;
        let err = e.to_pg_error();
        if transaction_mode
            && (e.is_transient() || matches!(e, PoolError::Canceled))
            && let Some(len) = complete_batch_len(&client_half.buf)
        {
            tracing::info!(error = %err, "no server connection for this query; the client stays connected");
            bytes::Buf::advance(&mut client_half.buf, len);
            let err = PgError {
                severity: crate::protocol::Severity::Error,
                ..err
            };
            return self.answer(&lost_batches(&err, 1)).await;
        }
        self.fail(err).await;
        Next::Close
    }

    /// Answers `batches` batches the client sent: `first` for the first, `rest` for the
    /// others, each with ReadyForQuery `status`. Written as it is made (a client may have
    /// pipelined many); what is left unwritten is returned for the caller to add to and
    /// send, `None` when the client is gone.
    async fn answer_batches(
        &mut self,
        first: &PgError,
        rest: &PgError,
        batches: u32,
        status: u8,
    ) -> Option<BytesMut> {
        let mut reply = BytesMut::new();
        for batch in 0..batches {
            if batch == 0 { first } else { rest }.encode(&mut reply);
            crate::protocol::messages::ready_for_query(&mut reply, status);
            if reply.len() >= LOST_REPLY_CHUNK {
                if let Next::Close = self.answer(&reply).await {
                    return None;
                }
                reply.clear();
            }
        }
        Some(reply)
    }

    fn connect_timeout(&self) -> std::time::Duration {
        self.shared
            .current
            .load()
            .config
            .server_connect_timeout
            .duration()
    }

    /// Sends pgmoat's own answer to an idle client; the session goes on unless the client
    /// is gone.
    async fn answer(&mut self, reply: &[u8]) -> Next {
        if self.stream.write_all(reply).await.is_err() || self.stream.flush().await.is_err() {
            return Next::Close;
        }
        Next::Continue
    }

    pub(super) async fn fail(&mut self, err: PgError) {
        tracing::info!(error = %err.to_string().escape_debug(), "closing client connection");
        let _ = self.stream.write_all(&err.to_bytes()).await;
        let _ = self.stream.flush().await;
        let _ = self.stream.shutdown().await;
    }

    /// The client is gone: a held server is reset (or closed) before anyone else gets it.
    pub(super) async fn finish(&mut self) {
        if let Some(held) = self.held.take() {
            let Held { server, why, .. } = *held;
            let generation = self.shared.snapshot();
            let reset = if why.contains(PinReasons::SESSION_MODE) {
                ResetNeed::ResetQuery
            } else {
                ResetNeed::DiscardAll
            };
            self.cancel.set(None);
            server.hand_back(true, reset, &generation).await;
        }
    }
}

/// Where a cancel for the client holding `server` goes.
fn cancel_target(server: &Lent) -> CancelTarget {
    CancelTarget {
        // The host this server is on, which in a host list need not be the first.
        target: server
            .endpoint
            .clone()
            .unwrap_or_else(|| server.share().cancel_target.clone()),
        server_key: server.key,
        flight: server.cancels.clone(),
    }
}

/// Why no server with the client's settings could be had.
enum SyncFailure {
    /// None to be had (or only dead ones): as a failed checkout.
    NoServer(PoolError),
    /// PostgreSQL refused one of the client's settings.
    Refused(BackendError),
}

/// Servers found dead while applying a client's settings before one batch, after which the
/// batch fails (the client keeps its connection) instead of taking yet another.
const MAX_LOST_AT_SYNC: u32 = 3;

/// The answer to `batches` batches that failed as a whole without a server to run them: for
/// each, `err` and ReadyForQuery (idle), as PostgreSQL answers a failed batch.
/// How much of the answer to a lost server's outstanding batches is written at a time.
const LOST_REPLY_CHUNK: usize = 64 * 1024;

fn lost_batches(err: &PgError, batches: u32) -> BytesMut {
    let mut reply = BytesMut::new();
    for _ in 0..batches {
        err.encode(&mut reply);
        crate::protocol::messages::ready_for_query(&mut reply, b'I');
    }
    reply
}

/// PostgreSQL's refusal of a new statement while the server shuts down, in pgmoat's words.
fn shutting_down() -> PgError {
    PgError::fatal(SqlState::ADMIN_SHUTDOWN, "pgmoat is shutting down")
}

/// query_timeout fired: the client's query is canceled the way the client's own
/// CancelRequest would be (same checks, same accounting), and the client stays connected.
fn cancel_for_query_timeout(shared: &Arc<Shared>, key: BackendKey, limit: std::time::Duration) {
    tracing::info!(
        seconds = limit.as_secs_f64(),
        "query_timeout: canceling a query that ran too long"
    );
    shared.metrics.timeout_fired("query_timeout");
    let shared = shared.clone();
    tokio::spawn(async move {
        let generation = shared.snapshot();
        crate::cancel::forward_cancel(&shared.cancel, &shared.metrics, &generation, key).await;
    });
}

/// The FATAL error for a timeout that ends a client: PostgreSQL's code and wording for the
/// matching server-side timeout where it has one, with pgmoat's setting named.
fn timeout_error(kind: Timeout, limit: std::time::Duration) -> PgError {
    let seconds = limit.as_secs_f64();
    let setting = kind.setting();
    let (code, what, log) = match kind {
        Timeout::IdleInTransaction => (
            SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            "idle-in-transaction timeout",
            "closing a client idle in a transaction, and its server",
        ),
        Timeout::Transaction => (
            SqlState::TRANSACTION_TIMEOUT,
            "transaction timeout",
            "closing a client whose transaction ran too long, and its server",
        ),
        Timeout::ClientIdle => (
            SqlState::IDLE_SESSION_TIMEOUT,
            "idle-session timeout",
            "closing an idle client that holds a server",
        ),
    };
    tracing::info!(seconds, "{setting}: {log}");
    PgError::fatal(
        code,
        format!("terminating connection due to {what} ({setting} = {seconds} s)"),
    )
}

/// What a client is told when its connection ends for a message it sent.
fn client_fault_error(e: &crate::protocol::ProtocolError) -> PgError {
    let message = format!("invalid message from client: {e}");
    match e {
        crate::protocol::ProtocolError::OverPacketLimit { max, .. } => {
            PgError::fatal(SqlState::PROGRAM_LIMIT_EXCEEDED, message).with_hint(format!(
                "pgmoat refuses messages over max_packet_size ({max} bytes); raise it if a \
                 statement or parameter legitimately needs more."
            ))
        }
        _ => PgError::fatal(SqlState::PROTOCOL_VIOLATION, message),
    }
}

#[cfg(test)]
mod size_tests {
    /// Every idle client keeps its session: what is rare (a lost transaction, a held
    /// server) is boxed, so the session itself stays small (432 bytes on x86-64 now).
    #[test]
    fn an_idle_session_stays_small() {
        let size = std::mem::size_of::<super::ClientSession>();
        assert!(
            size <= 512,
            "ClientSession is {size} bytes: box what idle clients do not use"
        );
    }
}
