//! What an idle client has sent, judged before a server is taken for it: whether pgmoat can
//! answer the batch itself (named Parses then Sync, what `PQprepare` sends), and at the
//! pinning limit what the batch would do and where it ends.
//!
//! The scan is incremental: each call looks only at the messages completed since the last
//! one, so a client that trickles a large batch in small reads costs linear, not quadratic,
//! work. And it is bounded: once more than [`IDLE_QUEUE_MAX`] bytes wait without a verdict,
//! the batch goes to a server (as PgBouncer forwards at once), so an idle client can never
//! make pgmoat hold more than that for it.

use super::effects::{self, Effects};
use super::prepared::ClientStatements;
use super::translate::MAX_NAMED_PARSE;
use crate::protocol::{Frame, Header, frame_at};

/// Most bytes an idle client may queue before pgmoat takes a server and forwards them: one
/// named Parse of the largest size pgmoat pools, and its Sync.
pub const IDLE_QUEUE_MAX: usize = MAX_NAMED_PARSE + Header::SIZE;

/// How an idle client's buffered messages may be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleBatch {
    /// The buffer starts with named Parse messages followed by Sync: pgmoat answers it
    /// without a server. `len` bytes, `parses` statements.
    Local { len: usize, parses: usize },
    /// It may become such a batch: read more first.
    NeedMore,
    /// Anything else needs a server.
    Server,
}

/// The two cursors over one idle buffer; [`IdleScan::consumed`] starts both over when the
/// session takes bytes off its front.
#[derive(Debug, Default)]
pub struct IdleScan {
    prepare: PrepareScan,
    batch: BatchScan,
}

/// Is the buffer a prepare-only batch? Cheap: looks at headers and one byte of each Parse.
#[derive(Debug, Default)]
struct PrepareScan {
    pos: usize,
    parses: usize,
    verdict: Option<IdleBatch>,
}

/// The first batch's effects and end, read only when the pinning limit needs them (the
/// keyword scan of its SQL is not free, and below the limit the relay judges as it forwards).
#[derive(Debug)]
struct BatchScan {
    pos: usize,
    effects: Effects,
    /// The first batch ends here (a Query at the front, or a Sync).
    end: Option<usize>,
    /// Every message so far may be part of a batch that can be dropped whole.
    droppable: bool,
}

impl Default for BatchScan {
    fn default() -> Self {
        BatchScan {
            pos: 0,
            effects: Effects::empty(),
            end: None,
            droppable: true,
        }
    }
}

/// Classifies what an idle client sent in one go (tests and fuzzing; the session keeps an
/// [`IdleScan`] across reads).
pub fn classify_idle(buf: &[u8]) -> IdleBatch {
    IdleScan::default().classify(buf)
}

/// Length of the first complete batch in `buf` (see [`IdleScan::batch_len`]); for the
/// rare paths that answer a batch without a server (no server to be had).
pub fn complete_batch_len(buf: &[u8]) -> Option<usize> {
    let mut scan = IdleScan::default();
    scan.judge_batch(buf, &ClientStatements::default());
    scan.batch_len()
}

impl IdleScan {
    /// The session took the judged batch off the front of the buffer (answered or refused
    /// it): what follows is a new batch.
    pub fn consumed(&mut self) {
        *self = IdleScan::default();
    }

    /// Answering a prepare-only batch locally means a client never waits for a server just
    /// to prepare (a single-threaded client such as pgbench would otherwise deadlock against
    /// its own open transactions when it has more connections than the pool has servers);
    /// errors in the statement text then surface when it is first executed instead.
    pub fn classify(&mut self, buf: &[u8]) -> IdleBatch {
        let scan = &mut self.prepare;
        if let Some(verdict) = scan.verdict {
            return verdict;
        }
        let verdict = loop {
            let Ok(frame) = frame_at(buf, scan.pos) else {
                break IdleBatch::Server;
            };
            let Some(header) = frame.header() else {
                // A header still incomplete: wait only if it may continue a prepare batch.
                if scan.parses > 0 || buf.get(scan.pos) == Some(&b'P') {
                    break IdleBatch::NeedMore;
                }
                break IdleBatch::Server;
            };
            let total = header.total();
            match header.tag {
                // Bounded with room for the Sync, so a client sending Parses and never a
                // Sync is not held beyond IDLE_QUEUE_MAX, however its bytes arrive.
                b'P' if total <= MAX_NAMED_PARSE
                    && scan.pos + total + Header::SIZE <= IDLE_QUEUE_MAX =>
                {
                    // Named only: an unnamed statement lives in one server session. (An
                    // empty body is malformed either way; answer_locally refuses it, and the
                    // byte after it belongs to the next message.)
                    if header.body_len() > 0 && buf.get(scan.pos + Header::SIZE) == Some(&0) {
                        break IdleBatch::Server;
                    }
                    if let Frame::Partial { .. } = frame {
                        break IdleBatch::NeedMore;
                    }
                    scan.parses += 1;
                    scan.pos += total;
                }
                b'S' if scan.parses > 0 && total == Header::SIZE => {
                    break IdleBatch::Local {
                        len: scan.pos + total,
                        parses: scan.parses,
                    };
                }
                _ => break IdleBatch::Server,
            }
        };
        match verdict {
            // Past the bound the batch goes to a server, which answers it as it arrives.
            IdleBatch::NeedMore if buf.len() > IDLE_QUEUE_MAX => IdleBatch::Server,
            IdleBatch::NeedMore => IdleBatch::NeedMore,
            decided => {
                scan.verdict = Some(decided);
                decided
            }
        }
    }

    /// Reads the first batch's complete messages not yet seen: the SQL of Query and Parse
    /// messages, and the statements named by Binds (looked up in `statements`).
    pub fn judge_batch(&mut self, buf: &[u8], statements: &ClientStatements) {
        let scan = &mut self.batch;
        while scan.end.is_none() {
            let Ok(Frame::Whole { header, body }) = frame_at(buf, scan.pos) else {
                return;
            };
            let end = scan.pos + header.total();
            match header.tag {
                b'Q' | b'P' => scan.effects |= effects::of_message(header.tag, body),
                b'B' => {
                    let mut names = body.split(|b| *b == 0);
                    let _portal = names.next();
                    if let Some(statement) = names
                        .next()
                        .and_then(|n| std::str::from_utf8(n).ok())
                        .filter(|n| !n.is_empty())
                        .and_then(|n| statements.get(n))
                    {
                        scan.effects |= statement.effects;
                    }
                }
                _ => {}
            }
            match header.tag {
                b'Q' if scan.pos == 0 => scan.end = Some(end),
                b'S' => scan.end = Some(end),
                b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => {}
                _ => scan.droppable = false,
            }
            scan.pos = end;
        }
    }

    /// What the first batch's messages read so far may do.
    pub fn batch_effects(&self) -> Effects {
        self.batch.effects
    }

    /// Length of the first batch once it is complete: a Query, or extended-protocol
    /// messages up to and including Sync; `None` while it is incomplete or not a batch that
    /// can be dropped whole (COPY data, a Flush-driven exchange).
    pub fn batch_len(&self) -> Option<usize> {
        self.batch.end.filter(|_| self.batch.droppable)
    }

    /// The first batch is not complete and more than [`IDLE_QUEUE_MAX`] bytes wait: it goes
    /// to a server as it is, unjudged.
    pub fn over_bound(&self, buffered: usize) -> bool {
        self.batch.end.is_none() && buffered > IDLE_QUEUE_MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::translate::tests::{msg, parse_msg};

    #[test]
    fn prepare_only_batches_are_answered_locally() {
        let mut wire = parse_msg("P_0", "select 1");
        assert_eq!(classify_idle(&wire), IdleBatch::NeedMore);
        wire.extend(msg(b'S', b""));
        let len = wire.len();
        assert_eq!(classify_idle(&wire), IdleBatch::Local { len, parses: 1 });
        assert_eq!(classify_idle(&parse_msg("", "select 1")), IdleBatch::Server);
        assert_eq!(classify_idle(&msg(b'Q', b"select 1\0")), IdleBatch::Server);
        let mut with_describe = parse_msg("a", "select 1");
        with_describe.extend(msg(b'D', b"Sa\0"));
        assert_eq!(classify_idle(&with_describe), IdleBatch::Server);
        assert_eq!(classify_idle(b"P\0"), IdleBatch::NeedMore);
    }

    #[test]
    fn byte_by_byte_gives_the_same_verdict_as_all_at_once() {
        let mut wire = Vec::new();
        for i in 0..20 {
            wire.extend(parse_msg(&format!("s{i}"), "select $1"));
        }
        wire.extend(msg(b'S', b""));
        let mut scan = IdleScan::default();
        for end in 5..wire.len() {
            assert_eq!(scan.classify(&wire[..end]), IdleBatch::NeedMore, "at {end}");
        }
        let len = wire.len();
        assert_eq!(scan.classify(&wire), IdleBatch::Local { len, parses: 20 });
    }

    #[test]
    fn an_unsynced_pipeline_goes_to_a_server_past_the_bound() {
        let one = parse_msg("s", &"x".repeat(4000));
        let mut wire = one.clone();
        let mut scan = IdleScan::default();
        while wire.len() <= IDLE_QUEUE_MAX {
            assert_eq!(scan.classify(&wire), IdleBatch::NeedMore);
            wire.extend_from_slice(&one);
        }
        assert_eq!(scan.classify(&wire), IdleBatch::Server);
    }

    #[test]
    fn idle_batches_that_can_never_be_local_go_to_a_server() {
        // Found by the idle_classifier fuzz target (on the earlier classifier): a bad length
        // after a named Parse was NeedMore, so the client's buffer grew for as long as it
        // kept sending.
        let mut wire = parse_msg("a", "select 1");
        wire.extend_from_slice(&[b'S', 0, 0, 0, 0]);
        assert_eq!(classify_idle(&wire), IdleBatch::Server);
        let mut wire = parse_msg("a", "select 1");
        wire.extend_from_slice(&[b'P', 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(classify_idle(&wire), IdleBatch::Server);
        // All at once, past the bound: the same verdict as read by read.
        let one = parse_msg("a", &"x".repeat(60 * 1024));
        let mut wire = one.repeat(IDLE_QUEUE_MAX / one.len() + 1);
        wire.extend(msg(b'S', b""));
        assert_eq!(classify_idle(&wire), IdleBatch::Server);
    }

    #[test]
    fn batches_that_can_be_dropped_whole() {
        let statements = ClientStatements::default();
        let len = |buf: &[u8]| {
            let mut scan = IdleScan::default();
            scan.judge_batch(buf, &statements);
            scan.batch_len()
        };
        let query = msg(b'Q', b"select 1\0");
        assert_eq!(len(&query), Some(query.len()));
        assert_eq!(len(&query[..4]), None);
        let mut extended = msg(b'P', b"\0select 1\0\0\0");
        extended.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        extended.extend(msg(b'E', b"\0\0\0\0\0"));
        assert_eq!(len(&extended), None, "no Sync yet");
        let without_sync = extended.len();
        extended.extend(msg(b'S', b""));
        assert_eq!(len(&extended), Some(without_sync + 5));
        assert_eq!(len(&msg(b'd', b"data")), None);
    }

    #[test]
    fn an_idle_batch_is_judged_by_its_own_sql_and_statements() {
        let statements = ClientStatements::default();
        let effects = |buf: &[u8]| {
            let mut scan = IdleScan::default();
            scan.judge_batch(buf, &statements);
            scan.batch_effects()
        };
        assert_eq!(
            effects(&msg(b'Q', b"CREATE TEMP TABLE t (x int)\0")),
            Effects::TEMP
        );
        let mut extended = msg(b'P', b"\0SELECT pg_advisory_lock(1)\0\0\0");
        extended.extend(msg(b'S', b""));
        assert_eq!(effects(&extended), Effects::ADVISORY_LOCK);
        assert!(effects(&msg(b'Q', b"SELECT 1\0")).is_empty());
        // A later batch that pins does not make a harmless first one refusable.
        let mut two = msg(b'Q', b"SELECT 1\0");
        two.extend(msg(b'Q', b"CREATE TEMP TABLE t (x int)\0"));
        assert!(effects(&two).is_empty());
    }
}
