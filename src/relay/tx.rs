//! Where a server is in the client's transaction, from the messages both directions carry:
//! batches still to be answered, the last ReadyForQuery status, and COPY FROM STDIN's
//! exceptions to the one-ReadyForQuery-per-Sync rule.

use std::time::Instant;

use super::effects::Effects;

/// The transaction state both directions share.
#[derive(Debug, Clone, Copy)]
pub struct TxState {
    /// Queries and Syncs sent whose ReadyForQuery has not come back yet.
    pub outstanding: u32,
    /// The last ReadyForQuery status: b'I' idle, b'T' in a transaction, b'E' failed one.
    pub status: u8,
    /// Extended-protocol messages were sent after the last Sync.
    pub unsynced: bool,
    /// Since when the server has had queries to answer (for query_time).
    pub busy_since: Option<Instant>,
    /// Since when the current transaction runs (for xact_time).
    pub xact_since: Option<Instant>,
    /// What the statements sent since the server was taken may have done to the session.
    pub effects: Effects,
    /// ReadyForQuery messages seen: numbers the batches, for query_timeout.
    pub batches_done: u64,
    /// Transactions ended (ReadyForQuery 'I'): numbers them, for transaction_timeout.
    pub xacts_done: u64,
    /// COPY FROM STDIN bookkeeping: PostgreSQL ignores a Sync that arrives while it is in
    /// copy-in mode, so such a Sync gets no ReadyForQuery and must not be waited for.
    copy: CopyTracking,
    /// Where a relay that lost its server left the two streams (see [`Cut`]).
    pub cut: Cut,
}

/// Where the server was lost, as far as the byte streams go: pgmoat may answer in the lost
/// server's place only when both directions stopped between messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cut {
    /// Between messages both ways: every message of the client's that pgmoat counted went
    /// (or was lost) whole, and the client has every message of the server's whole.
    #[default]
    Clean,
    /// Part of a client message reached the server: the rest of it, still coming from the
    /// client, cannot be told from its next message. The client can still be told why it
    /// is closed.
    ToServer,
    /// Part of a server message reached the client: nothing more may be written to it.
    ToClient,
}

#[derive(Debug, Clone, Copy, Default)]
struct CopyTracking {
    /// Syncs sent since the last Execute or Query, before any COPY data: ignored by
    /// PostgreSQL if that Execute or Query turns out to start a COPY FROM STDIN.
    syncs_after_start: u32,
    /// Still directly after an Execute or Query (only Syncs and Flushes since).
    after_start: bool,
    /// CopyDone / CopyFail messages sent so far, and how many had been sent at the last
    /// Execute or Query: equal when CopyInResponse arrives means the copy is still open.
    ends_sent: u32,
    ends_at_start: u32,
    /// The server is in copy-in mode: Syncs are ignored until CopyDone / CopyFail.
    in_copy_in: bool,
    /// The last command that may start a COPY was an Execute: its batch (and implicit
    /// transaction) ends only with a Sync after CopyDone / CopyFail.
    started_by_execute: bool,
}

impl Default for TxState {
    fn default() -> Self {
        TxState {
            outstanding: 0,
            status: b'I',
            unsynced: false,
            busy_since: None,
            xact_since: None,
            effects: Effects::empty(),
            batches_done: 0,
            xacts_done: 0,
            copy: CopyTracking::default(),
            cut: Cut::Clean,
        }
    }
}

impl TxState {
    /// The server is taking COPY FROM STDIN data.
    pub fn in_copy_in(&self) -> bool {
        self.copy.in_copy_in
    }

    /// Nothing pending: every batch answered with ReadyForQuery 'I', no extended-protocol
    /// message waiting for its Sync, and no COPY FROM STDIN open (its Sync was ignored, so
    /// the last ReadyForQuery does not tell).
    pub fn server_idle(&self) -> bool {
        self.outstanding == 0 && self.status == b'I' && !self.unsynced && !self.copy.in_copy_in
    }

    /// Accounts for one message the client sends. Returns true when it will be answered by a
    /// ReadyForQuery of its own (it ends a batch).
    pub fn client_message(&mut self, tag: u8) -> bool {
        let copy = &mut self.copy;
        let ends_batch = match tag {
            b'S' if copy.in_copy_in => false,
            b'S' => {
                if copy.after_start {
                    copy.syncs_after_start += 1;
                }
                true
            }
            b'Q' | b'F' => true,
            _ => false,
        };
        match tag {
            b'S' | b'H' => {}
            b'E' | b'Q' => {
                copy.after_start = true;
                copy.syncs_after_start = 0;
                copy.ends_at_start = copy.ends_sent;
                copy.started_by_execute = tag == b'E';
            }
            b'c' | b'f' => {
                copy.after_start = false;
                copy.ends_sent = copy.ends_sent.wrapping_add(1);
                copy.in_copy_in = false;
                if copy.started_by_execute {
                    // The Sync sent right after the Execute was ignored: the batch is still
                    // open until the next one.
                    self.unsynced = true;
                }
            }
            _ => copy.after_start = false,
        }
        match tag {
            b'Q' | b'S' | b'F' if ends_batch => {
                self.outstanding += 1;
                self.unsynced = false;
            }
            b'P' | b'B' | b'D' | b'E' | b'C' => self.unsynced = true,
            _ => {}
        }
        ends_batch
    }

    /// CopyInResponse: the Syncs sent right after the command that started it will get no
    /// ReadyForQuery. Returns how many batches that removes.
    pub fn copy_in_started(&mut self) -> u32 {
        let copy = &mut self.copy;
        let ignored = std::mem::take(&mut copy.syncs_after_start);
        self.outstanding = self.outstanding.saturating_sub(ignored);
        copy.after_start = false;
        copy.in_copy_in = copy.ends_sent == copy.ends_at_start;
        ignored
    }
}
