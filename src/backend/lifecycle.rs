//! The life of one server connection as an explicit state machine. The state is owned by the
//! connection ([`ServerConn::state`](super::ServerConn)); [`ServerConn::transition`] is the one
//! place it changes, logs the change and shows it in SHOW SERVERS. The rule it enforces: a
//! connection goes back to the pool's idle set only with a [`CleanProof`], which only
//! [`next_step`] hands out, and only when the facts prove the connection clean. Every other
//! way out closes it.
//!
//! | from                         | to                    | when                                               |
//! |------------------------------|-----------------------|----------------------------------------------------|
//! | (connect)                    | `Idle`                | logged in; deadpool keeps it until a checkout      |
//! | `Idle`                       | `Lent(client)`        | a client checks it out                             |
//! | `Lent(client)`               | `Pinned(client, why)` | the client made session state (or session mode)    |
//! | `Pinned(client, why)`        | `Lent(client)`        | PostgreSQL confirms the state is gone, or the client left |
//! | `Lent`                       | `BeingCanceled`       | handed back while a cancel for it is still on its way |
//! | `Lent`, `BeingCanceled`      | `Resetting`           | handed back with a reset to run first              |
//! | `Lent`, `BeingCanceled`, `Resetting` | `Idle`        | with a `CleanProof`: ReadyForQuery 'I', nothing pending, no cancel in flight, reset done, pool current |
//! | any but `Closing`            | `Closing(reason)`     | anything else: errors, a client gone mid-query, a retired pool, a guard dropped without proof |
//!
//! `Closing` is final. A transition the table does not list is a bug: it is logged as an
//! error and the connection is closed instead.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::sync::Notify;

bitflags::bitflags! {
    /// Why a server is pinned to one client: session state that outlives a transaction.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct PinReasons: u8 {
        /// Temporary relations in the session's temp schema.
        const TEMP_TABLE = 1;
        /// Session-level advisory locks held.
        const ADVISORY_LOCK = 1 << 1;
        /// LISTEN on at least one channel.
        const LISTEN = 1 << 2;
        /// SQL-level PREPARE'd statements.
        const SQL_PREPARE = 1 << 3;
        /// DECLARE ... WITH HOLD cursors open.
        const HOLD_CURSOR = 1 << 4;
        /// pool_mode = session: the client holds its server for its whole session.
        const SESSION_MODE = 1 << 5;
    }
}

impl PinReasons {
    /// The words SHOW CLIENTS / SHOW SERVERS and the metrics use, one per reason.
    pub const NAMES: [(PinReasons, &'static str); 6] = [
        (PinReasons::TEMP_TABLE, "temp_table"),
        (PinReasons::ADVISORY_LOCK, "advisory_lock"),
        (PinReasons::LISTEN, "listen"),
        (PinReasons::SQL_PREPARE, "prepare"),
        (PinReasons::HOLD_CURSOR, "hold_cursor"),
        (PinReasons::SESSION_MODE, "session_mode"),
    ];
}

impl PinReasons {
    /// The words of the reasons set, in [`NAMES`](Self::NAMES) order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        PinReasons::NAMES
            .into_iter()
            .filter(move |(flag, _)| self.contains(*flag))
            .map(|(_, name)| name)
    }
}

impl fmt::Display for PinReasons {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, name) in self.names().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

/// Why a server connection is closed rather than reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// It was handed back in the middle of something (a client gone mid-query or
    /// mid-transaction, a message half-sent): its state is unknown.
    Unclean,
    /// The guard lending it was dropped without a proof of cleanliness.
    Unproven,
    /// PostgreSQL closed it, sent FATAL, or broke the protocol.
    ServerLost,
    /// A reset (or the check of its session state) failed.
    ResetFailed,
    /// A cancel for it did not finish in time.
    CancelStuck,
    /// A reload replaced its pool.
    PoolRetired,
    /// The TLS configuration towards PostgreSQL changed since it was made.
    TlsReloaded,
    /// RECONNECT was issued on the console.
    Reconnect,
    /// server_lifetime reached.
    Lifetime,
    /// server_idle_timeout reached.
    IdleTimeout,
    /// It sent data or closed while idle.
    StrayData,
    /// The check query failed.
    CheckFailed,
    /// Closed to make room under max_db_connections / max_user_connections, or the pool shrank.
    Trimmed,
    /// Another connection to its host failed (or the host's role changed) after it was made.
    HostFailed,
    /// The server was promoted (or went into recovery) since login: it is no longer what
    /// the pool's target_session_attrs asked for.
    RoleChanged,
    /// An illegal transition was asked for.
    Bug,
}

impl CloseReason {
    /// Closed between messages, so a Terminate can be sent politely.
    pub fn at_message_boundary(self) -> bool {
        matches!(
            self,
            CloseReason::CancelStuck
                | CloseReason::PoolRetired
                | CloseReason::TlsReloaded
                | CloseReason::Reconnect
                | CloseReason::Lifetime
                | CloseReason::IdleTimeout
                | CloseReason::Trimmed
                | CloseReason::HostFailed
                | CloseReason::RoleChanged
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Unclean => "handed back mid-query or mid-transaction",
            CloseReason::Unproven => "handed back without proof that it is clean",
            CloseReason::ServerLost => "server connection lost",
            CloseReason::ResetFailed => "reset failed",
            CloseReason::CancelStuck => "a cancel request for it did not finish",
            CloseReason::PoolRetired => "its pool was replaced by a reload",
            CloseReason::TlsReloaded => "TLS configuration reloaded",
            CloseReason::Reconnect => "RECONNECT was issued",
            CloseReason::Lifetime => "server_lifetime reached",
            CloseReason::IdleTimeout => "server_idle_timeout reached",
            CloseReason::StrayData => "server sent data or closed while idle",
            CloseReason::CheckFailed => "server_check_query failed",
            CloseReason::Trimmed => "closed to stay within a limit",
            CloseReason::HostFailed => "a failure was seen on its host since it was made",
            CloseReason::RoleChanged => "the server's role (primary or standby) changed",
            CloseReason::Bug => "illegal state transition",
        }
    }
}

/// Where a server connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// In the pool's idle set (or just made): proven clean when it got there.
    Idle,
    /// Lent to client `client` for a transaction.
    Lent { client: u64 },
    /// Held for client `client` between its transactions.
    Pinned { client: u64, why: PinReasons },
    /// Handed back while a cancel request for it is still on its way to PostgreSQL.
    BeingCanceled { client: u64 },
    /// pgmoat's reset runs before anyone else may have it.
    Resetting,
    /// Being closed; never lent again.
    Closing(CloseReason),
}

impl ServerState {
    /// pgmoat's name for the state (SHOW SERVERS `lifecycle`, logs).
    pub fn name(self) -> &'static str {
        match self {
            ServerState::Idle => "idle",
            ServerState::Lent { .. } => "lent",
            ServerState::Pinned { .. } => "pinned",
            ServerState::BeingCanceled { .. } => "being_canceled",
            ServerState::Resetting => "resetting",
            ServerState::Closing(_) => "closing",
        }
    }

    /// PgBouncer's word for it in SHOW SERVERS `state`.
    pub fn pgbouncer_name(self) -> &'static str {
        match self {
            ServerState::Idle => "idle",
            ServerState::Lent { .. } | ServerState::Pinned { .. } => "active",
            ServerState::BeingCanceled { .. } => "being_canceled",
            ServerState::Resetting | ServerState::Closing(_) => "used",
        }
    }

    /// The client it serves, if any.
    pub fn client(self) -> Option<u64> {
        match self {
            ServerState::Lent { client }
            | ServerState::Pinned { client, .. }
            | ServerState::BeingCanceled { client } => Some(client),
            _ => None,
        }
    }

    pub fn pinned(self) -> PinReasons {
        match self {
            ServerState::Pinned { why, .. } => why,
            _ => PinReasons::empty(),
        }
    }

    /// Whether `self -> to` is in the table of the module documentation. Moving to `Idle`
    /// additionally needs a [`CleanProof`], which [`ServerConn::return_to_idle`] demands.
    pub fn may_become(self, to: ServerState) -> bool {
        use ServerState::*;
        match (self, to) {
            (Closing(_), _) => false,
            (_, Closing(_)) => true,
            (Idle, Lent { .. }) => true,
            (Lent { client }, Pinned { client: c, .. }) => client == c,
            (Pinned { client, .. }, Pinned { client: c, .. }) => client == c,
            (Pinned { client, .. }, Lent { client: c }) => client == c,
            (Lent { client }, BeingCanceled { client: c }) => client == c,
            (Lent { .. } | BeingCanceled { .. }, Resetting) => true,
            (Lent { .. } | BeingCanceled { .. } | Resetting, Idle) => true,
            _ => false,
        }
    }
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerState::Pinned { why, .. } => write!(f, "pinned({why})"),
            ServerState::Closing(reason) => write!(f, "closing({})", reason.as_str()),
            other => f.write_str(other.name()),
        }
    }
}

/// What must run on a server before anyone else may have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetNeed {
    #[default]
    Nothing,
    /// The operator's server_reset_query (server_reset_query_always, session mode).
    ResetQuery,
    /// Everything a client may have left: DISCARD ALL (a pinned client left, session_state =
    /// "reset" after state was made, session state pgmoat could not check).
    DiscardAll,
}

/// What is known about a server connection when its client hands it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// ReadyForQuery 'I' was the last thing it said, no query, result or COPY is pending,
    /// and both directions stopped at a message boundary.
    pub protocol_idle: bool,
    /// Cancel requests for it still on their way to PostgreSQL.
    pub cancels_in_flight: u32,
    /// A cancel request may have reached PostgreSQL without PostgreSQL closing the cancel
    /// connection (the sign it has signalled the backend) in time: it could still land on
    /// whatever runs there next.
    pub cancel_in_doubt: bool,
    pub reset: ResetNeed,
    /// Why it may not be reused whatever its state (a retired pool, an old TLS epoch...).
    pub retire: Option<CloseReason>,
}

/// Proof that a server connection may go back to the idle set. Only [`next_step`] makes one.
#[derive(Debug)]
pub struct CleanProof(());

/// What to do next with a handed-back server connection.
#[derive(Debug)]
pub enum Step {
    ReturnToPool(CleanProof),
    /// Wait until the cancels in flight are done, then decide again.
    AwaitCancels,
    /// Run this reset, then decide again.
    Reset(ResetNeed),
    Close(CloseReason),
}

/// The one decision of what becomes of a handed-back connection. Order matters: an unclean
/// or retired connection is closed even with a cancel in flight (closing it makes the cancel
/// harmless), and a cancel in flight is waited out before a reset, so the reset cannot be
/// the query it cancels.
pub fn next_step(facts: &Facts) -> Step {
    if !facts.protocol_idle {
        return Step::Close(CloseReason::Unclean);
    }
    if let Some(reason) = facts.retire {
        return Step::Close(reason);
    }
    if facts.cancel_in_doubt {
        return Step::Close(CloseReason::CancelStuck);
    }
    if facts.cancels_in_flight > 0 {
        return Step::AwaitCancels;
    }
    if facts.reset != ResetNeed::Nothing {
        return Step::Reset(facts.reset);
    }
    Step::ReturnToPool(CleanProof(()))
}

/// Cancel requests for one server connection that are on their way to PostgreSQL. The cancel
/// forwarder holds a [`CancelTicket`] from before it looks the server up until PostgreSQL has
/// closed the cancel connection; the server stays out of the pool meanwhile.
#[derive(Debug, Default)]
pub struct CancelFlight {
    in_flight: AtomicU32,
    /// Set for good once a cancel may have reached PostgreSQL unconfirmed (see
    /// [`Facts::cancel_in_doubt`]): the connection is then closed, never reused.
    in_doubt: AtomicBool,
    done: Notify,
}

impl CancelFlight {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn in_doubt(&self) -> bool {
        self.in_doubt.load(Ordering::Acquire)
    }

    /// A cancel request is about to be written for this connection: until
    /// [`Unconfirmed::confirm`] (PostgreSQL closed the cancel connection), however the
    /// sending ends, the cancel counts as possibly still on its way.
    pub fn writing(&self) -> Unconfirmed<'_> {
        Unconfirmed {
            flight: self,
            confirmed: false,
        }
    }

    /// One more cancel is on its way; it ends when the ticket is dropped.
    pub fn start(self: &Arc<Self>) -> CancelTicket {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        CancelTicket(self.clone())
    }

    /// [`settled`](Self::settled), owning its handle (for futures that must be 'static).
    pub async fn settled_owned(self: Arc<Self>) {
        self.settled().await
    }

    /// Resolves once no cancel is in flight.
    pub async fn settled(&self) {
        loop {
            let notified = self.done.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A cancel request being written and not yet confirmed; dropped unconfirmed (an error,
/// a timeout, the sending future dropped) it puts the connection in doubt.
#[derive(Debug)]
pub struct Unconfirmed<'a> {
    flight: &'a CancelFlight,
    confirmed: bool,
}

impl Unconfirmed<'_> {
    /// PostgreSQL closed the cancel connection: it acted on the request (or refused it).
    pub fn confirm(mut self) {
        self.confirmed = true;
    }
}

impl Drop for Unconfirmed<'_> {
    fn drop(&mut self) {
        if !self.confirmed {
            self.flight.in_doubt.store(true, Ordering::Release);
        }
    }
}

/// A cancel request in flight; dropping it (whatever way the forwarding ended) ends it.
#[derive(Debug)]
pub struct CancelTicket(Arc<CancelFlight>);

impl Drop for CancelTicket {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clean_current_connection_with_nothing_in_flight_returns() {
        let clean = Facts {
            protocol_idle: true,
            cancels_in_flight: 0,
            cancel_in_doubt: false,
            reset: ResetNeed::Nothing,
            retire: None,
        };
        assert!(matches!(next_step(&clean), Step::ReturnToPool(_)));
        let cases = [
            (
                Facts {
                    protocol_idle: false,
                    cancels_in_flight: 3,
                    ..clean
                },
                "close",
            ),
            (
                Facts {
                    retire: Some(CloseReason::PoolRetired),
                    cancels_in_flight: 1,
                    ..clean
                },
                "close",
            ),
            (
                Facts {
                    cancels_in_flight: 1,
                    reset: ResetNeed::DiscardAll,
                    ..clean
                },
                "await",
            ),
            (
                Facts {
                    reset: ResetNeed::ResetQuery,
                    ..clean
                },
                "reset",
            ),
            (
                Facts {
                    cancel_in_doubt: true,
                    reset: ResetNeed::DiscardAll,
                    ..clean
                },
                "close",
            ),
        ];
        for (facts, expected) in cases {
            let got = match next_step(&facts) {
                Step::ReturnToPool(_) => "return",
                Step::AwaitCancels => "await",
                Step::Reset(_) => "reset",
                Step::Close(_) => "close",
            };
            assert_eq!(got, expected, "{facts:?}");
        }
    }

    #[test]
    fn the_transition_table() {
        use ServerState::*;
        let lent = Lent { client: 1 };
        let pinned = Pinned {
            client: 1,
            why: PinReasons::LISTEN,
        };
        assert!(Idle.may_become(lent));
        assert!(lent.may_become(pinned));
        assert!(pinned.may_become(lent));
        assert!(
            !pinned.may_become(Idle),
            "a pinned server is unpinned first"
        );
        assert!(
            !pinned.may_become(Lent { client: 2 }),
            "pinned to its client"
        );
        assert!(!Idle.may_become(Resetting));
        assert!(!Idle.may_become(pinned));
        assert!(lent.may_become(BeingCanceled { client: 1 }));
        assert!(BeingCanceled { client: 1 }.may_become(Idle));
        assert!(Resetting.may_become(Idle));
        assert!(!Resetting.may_become(lent));
        for s in [Idle, lent, pinned, Resetting] {
            assert!(s.may_become(Closing(CloseReason::Bug)));
        }
        assert!(!Closing(CloseReason::Bug).may_become(Idle));
        assert!(!Closing(CloseReason::Bug).may_become(Closing(CloseReason::Unclean)));
    }

    #[test]
    fn pin_reasons_read_as_words() {
        let why = PinReasons::TEMP_TABLE | PinReasons::LISTEN;
        assert_eq!(why.to_string(), "temp_table,listen");
        assert_eq!(PinReasons::empty().to_string(), "");
    }

    #[test]
    fn a_cancel_written_but_not_confirmed_puts_the_connection_in_doubt() {
        let flight = CancelFlight::default();
        flight.writing().confirm();
        assert!(
            !flight.in_doubt(),
            "confirmed: PostgreSQL closed the cancel connection"
        );
        drop(flight.writing());
        assert!(flight.in_doubt(), "dropped unconfirmed (timeout, error)");
        flight.writing().confirm();
        assert!(flight.in_doubt(), "for good");
    }

    #[tokio::test]
    async fn a_flight_settles_when_its_last_ticket_is_dropped() {
        let flight = Arc::new(CancelFlight::default());
        flight.settled().await;
        let a = flight.start();
        let b = flight.start();
        assert_eq!(flight.in_flight(), 2);
        let waiter = {
            let flight = flight.clone();
            tokio::spawn(async move { flight.settled().await })
        };
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        waiter.await.unwrap();
        assert_eq!(flight.in_flight(), 0);
    }
}
