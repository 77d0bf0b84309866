//! A transaction whose server was lost (PostgreSQL shut down, crashed or failed over under
//! it): the client keeps its connection and stays in a failed transaction block, as if a
//! statement had failed, until it ends the block. Its COMMIT is answered as PostgreSQL
//! answers COMMIT in a failed block, with ROLLBACK, and never runs on another server; its
//! other statements get 25P02. Nothing here needs a server.
//!
//! PgBouncer closes such a client ("server conn crashed?"); libpq would too, since the
//! server connection is its connection. Keeping it lets a pooled application's ordinary
//! error handling (roll back, retry) carry it over a failover.

use bytes::{Buf, BytesMut};

use crate::protocol::messages::{command_complete, ready_for_query, write_message};
use crate::protocol::{Frame, Header, PgError, ProtocolError, SqlState, frame_at};
use crate::relay::prepared::{ClientStatements, Statement};

/// The longest message looked at whole here: a COMMIT or ROLLBACK (or its Bind, Describe,
/// Execute, Close) is a few bytes. Anything longer cannot end the block and is discarded as
/// it arrives, so a client in this state holds no more than this of its input.
const INSPECT_MAX: usize = 4096;

/// A client whose transaction was lost, between two of its messages. Input is consumed one
/// message at a time (see [`Lost::consume`]), so nothing is scanned twice and nothing is
/// held but the message being read.
#[derive(Debug, Clone)]
pub struct Lost {
    /// Inside a (failed) transaction block: each batch ends with ReadyForQuery 'E' until a
    /// COMMIT or ROLLBACK. Outside one only the batch under way is being skipped.
    in_block: bool,
    /// The loss, not told yet: the server went away while the client was idle inside its
    /// transaction. Its next batch gets this error (a COMMIT too: the client must learn
    /// that nothing was committed).
    untold: Option<PgError>,
    /// The current batch's error was sent: the rest of it, up to its Sync, is discarded as
    /// PostgreSQL discards after an error.
    failed: bool,
    /// The unnamed statement and portal of this batch end the block; its Execute ran.
    end_statement: bool,
    end_portal: bool,
    ended: bool,
    /// Bytes of a message too long to look at that are still to be discarded.
    discard: usize,
}

/// What [`Lost::consume`] stopped at.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every whole message was answered; more input is needed.
    NeedMore,
    /// The block (or the skipped batch) is over: what follows in the buffer is an ordinary
    /// idle client's.
    Ended,
    /// A Terminate is next in the buffer.
    Terminate,
}

/// The client's named prepared statements, as far as a lost transaction can use them:
/// pgmoat's own record of them when it pools prepared statements, none otherwise (they
/// lived on the lost server).
pub struct Names<'a>(pub Option<&'a mut ClientStatements>);

impl Names<'_> {
    /// The client's statement `name` is a COMMIT or ROLLBACK.
    fn ends_block(&self, name: &str) -> bool {
        let Some(statements) = self.0.as_ref() else {
            return false;
        };
        statements.get(name).is_some_and(|st| {
            let body = st.parse.get(Header::SIZE..).unwrap_or(&[]);
            is_block_end(parse_query(body))
        })
    }

    /// A named Parse of a block end: kept, as PostgreSQL keeps one parsed in a failed
    /// block. False when it cannot be.
    fn keep(&mut self, parse_body: &[u8]) -> bool {
        let Some(statements) = self.0.as_mut() else {
            return false;
        };
        match Statement::from_parse(parse_body, statements.key()) {
            Some((name, statement)) => statements.insert(name, statement),
            None => false,
        }
    }

    fn forget(&mut self, name: &str) {
        if let Some(statements) = self.0.as_mut() {
            statements.remove(name);
        }
    }
}

impl Lost {
    /// Told (an error and ReadyForQuery 'E'): statements fail until COMMIT or ROLLBACK.
    pub fn aborted() -> Lost {
        Lost {
            in_block: true,
            untold: None,
            failed: false,
            end_statement: false,
            end_portal: false,
            ended: false,
            discard: 0,
        }
    }

    /// Not told yet: the client was idle inside its block when its server went away.
    pub fn untold(err: PgError) -> Lost {
        Lost {
            untold: Some(err),
            ..Lost::aborted()
        }
    }

    /// Told in the middle of an extended-protocol batch: the rest of it, up to its Sync, is
    /// discarded, then ReadyForQuery follows: 'E' and a failed block when the client was
    /// inside a transaction block, 'I' and done otherwise.
    pub fn skipping(in_block: bool) -> Lost {
        Lost {
            in_block,
            failed: true,
            ..Lost::aborted()
        }
    }

    /// Inside a failed transaction block (not just finishing a batch outside one).
    pub fn in_block(&self) -> bool {
        self.in_block
    }

    /// Answers the whole messages at the front of `buf` (consuming them) into `reply`, up
    /// to the end of the block, a Terminate, or the end of what is buffered. Refuses a
    /// message over `max_packet` bytes (0: no limit) as the relay would.
    pub fn consume(
        &mut self,
        buf: &mut BytesMut,
        reply: &mut BytesMut,
        names: &mut Names<'_>,
        max_packet: usize,
    ) -> Result<Outcome, ProtocolError> {
        loop {
            if self.discard > 0 {
                let take = self.discard.min(buf.len());
                buf.advance(take);
                self.discard -= take;
                if self.discard > 0 {
                    return Ok(Outcome::NeedMore);
                }
            }
            let frame = frame_at(buf, 0)?;
            let Some(header) = frame.header() else {
                return Ok(Outcome::NeedMore);
            };
            let whole = matches!(frame, Frame::Whole { .. });
            header.check_packet_limit(max_packet)?;
            if header.tag == b'X' {
                return Ok(Outcome::Terminate);
            }
            let total = header.total();
            if total > INSPECT_MAX {
                // Nothing that long ends a block: it fails (a Query or function call is a
                // batch of its own), and its bytes are dropped as they come.
                let skipping = self.failed;
                self.fail(reply);
                let take = total.min(buf.len());
                buf.advance(take);
                self.discard = total - take;
                if !skipping && matches!(header.tag, b'Q' | b'F') && self.batch_over(reply, b'E') {
                    return Ok(Outcome::Ended);
                }
                continue;
            }
            if !whole {
                return Ok(Outcome::NeedMore);
            }
            let message = buf.split_to(total);
            if self.message(header.tag, &message[Header::SIZE..], reply, names) {
                return Ok(Outcome::Ended);
            }
        }
    }

    /// One whole message. True when the block is over.
    fn message(
        &mut self,
        tag: u8,
        body: &[u8],
        reply: &mut BytesMut,
        names: &mut Names<'_>,
    ) -> bool {
        match tag {
            b'S' => {
                if self.untold.is_some() && !self.failed && !self.ended {
                    // A batch of only Sync: nothing ran, but the client must hear it.
                    self.fail(reply);
                }
                let status = if self.ended || !self.in_block {
                    b'I'
                } else {
                    b'E'
                };
                return self.batch_over(reply, status);
            }
            // After an error PostgreSQL discards everything up to the Sync.
            _ if self.failed => {}
            b'H' => {}
            b'Q' => {
                let sql = cstr(body).unwrap_or("");
                let status = if is_block_end(sql) {
                    match self.untold.take() {
                        // Never a silent success: the commit did not happen.
                        Some(err) => err.encode(reply),
                        None => command_complete(reply, "ROLLBACK"),
                    }
                    b'I'
                } else if sql.trim().trim_end_matches(';').trim().is_empty()
                    && self.untold.is_none()
                {
                    write_message(reply, b'I', |_| {});
                    b'E'
                } else {
                    self.fail(reply);
                    b'E'
                };
                return self.batch_over(reply, status);
            }
            b'P' => {
                let (name, query) = parse_body(body);
                let kept = is_block_end(query) && (name.is_empty() || names.keep(body));
                if kept {
                    if name.is_empty() {
                        self.end_statement = true;
                    }
                    write_message(reply, b'1', |_| {});
                } else {
                    self.fail(reply);
                }
            }
            b'B' => {
                let (portal, statement) = parse_body(body);
                let ends = if statement.is_empty() {
                    self.end_statement
                } else {
                    names.ends_block(statement)
                };
                if ends && portal.is_empty() {
                    self.end_portal = true;
                    write_message(reply, b'2', |_| {});
                } else {
                    self.fail(reply);
                }
            }
            b'D' => {
                let (kind, name) = (body.first().copied(), cstr(body.get(1..).unwrap_or(&[])));
                let known = match (kind, name) {
                    (Some(b'S'), Some("")) => self.end_statement,
                    (Some(b'S'), Some(name)) => names.ends_block(name),
                    (Some(b'P'), Some("")) => self.end_portal,
                    _ => false,
                };
                if known {
                    if kind == Some(b'S') {
                        // No parameters, and no rows.
                        write_message(reply, b't', |b| b.extend_from_slice(&[0, 0]));
                    }
                    write_message(reply, b'n', |_| {});
                } else {
                    self.fail(reply);
                }
            }
            b'E' => {
                let portal = cstr(body).unwrap_or("\u{0}");
                if portal.is_empty() && self.end_portal && !self.ended {
                    match self.untold.take() {
                        // The block ends all the same: the loss is its answer.
                        Some(err) => err.encode(reply),
                        None => command_complete(reply, "ROLLBACK"),
                    }
                    self.ended = true;
                } else {
                    self.fail(reply);
                }
            }
            b'C' => {
                if let (Some(b'S'), Some(name)) =
                    (body.first().copied(), cstr(body.get(1..).unwrap_or(&[])))
                {
                    names.forget(name);
                }
                write_message(reply, b'3', |_| {});
            }
            // A function call is a batch of its own, answered with ReadyForQuery.
            b'F' => {
                self.fail(reply);
                return self.batch_over(reply, b'E');
            }
            // COPY data and anything else: part of what fails.
            _ => self.fail(reply),
        }
        false
    }

    /// The first error of a batch: the untold loss, or 25P02; later ones are skipped.
    fn fail(&mut self, reply: &mut BytesMut) {
        if !self.failed {
            self.untold
                .take()
                .unwrap_or_else(in_failed_block)
                .encode(reply);
            self.failed = true;
        }
    }

    /// A batch ends with ReadyForQuery `status` (as far as the block goes: 'E' only inside
    /// one). True when that ends the lost state.
    fn batch_over(&mut self, reply: &mut BytesMut, status: u8) -> bool {
        let status = if self.in_block { status } else { b'I' };
        ready_for_query(reply, status);
        *self = Lost {
            untold: self.untold.take(),
            discard: self.discard,
            ..Lost::aborted()
        };
        status == b'I'
    }
}

/// The error of a statement in the failed block, in PostgreSQL's words.
pub fn in_failed_block() -> PgError {
    PgError::error(
        SqlState::IN_FAILED_SQL_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
    .with_detail(
        "Its server connection was lost; the transaction was rolled back and nothing of it \
         was committed.",
    )
    .with_hint("End the transaction with ROLLBACK (or COMMIT, which is answered as ROLLBACK).")
}

/// COMMIT, END, ROLLBACK or ABORT (with WORK or TRANSACTION, AND NO CHAIN), alone: what
/// ends a failed block. `AND CHAIN` would start a new transaction, which needs a server.
pub fn is_block_end(sql: &str) -> bool {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let rest = match words.as_slice() {
        ["commit" | "end" | "rollback" | "abort", rest @ ..] => rest,
        _ => return false,
    };
    let rest = match rest {
        ["work" | "transaction", rest @ ..] => rest,
        rest => rest,
    };
    matches!(rest, [] | ["and", "no", "chain"])
}

/// The query text of a prepared statement's Parse message (without its header).
pub fn parse_query(parse_body_bytes: &[u8]) -> &str {
    parse_body(parse_body_bytes).1
}

/// The first two NUL-terminated strings of a message body (Parse: name, query; Bind:
/// portal, statement).
fn parse_body(body: &[u8]) -> (&str, &str) {
    let first = cstr(body).unwrap_or("");
    let rest = body.get(first.len() + 1..).unwrap_or(&[]);
    (first, cstr(rest).unwrap_or(""))
}

fn cstr(bytes: &[u8]) -> Option<&str> {
    let end = memchr::memchr(0, bytes)?;
    std::str::from_utf8(&bytes[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::query;

    /// The tags of the messages in `reply`, and the last ReadyForQuery status.
    fn tags(reply: &[u8]) -> (String, Option<u8>) {
        let (mut pos, mut tags, mut status) = (0, String::new(), None);
        while let Ok(Some(h)) = Header::parse(&reply[pos..]) {
            tags.push(h.tag as char);
            if h.tag == b'Z' {
                status = Some(reply[pos + 5]);
            }
            pos += h.total();
        }
        (tags, status)
    }

    fn simple(sql: &str) -> BytesMut {
        let mut buf = BytesMut::new();
        query(&mut buf, sql);
        buf
    }

    /// Feeds `input` to `lost` (as one read), with no named statements.
    fn feed(lost: &mut Lost, input: &[u8]) -> (String, Option<u8>, Outcome, usize) {
        let mut statements = None;
        feed_with(lost, input, &mut statements)
    }

    fn feed_with(
        lost: &mut Lost,
        input: &[u8],
        statements: &mut Option<ClientStatements>,
    ) -> (String, Option<u8>, Outcome, usize) {
        let mut buf = BytesMut::from(input);
        let mut reply = BytesMut::new();
        let mut names = Names(statements.as_mut());
        let outcome = lost.consume(&mut buf, &mut reply, &mut names, 0).unwrap();
        let (t, s) = tags(&reply);
        (t, s, outcome, buf.len())
    }

    fn extended(messages: &[(u8, &[u8])]) -> BytesMut {
        let mut buf = BytesMut::new();
        for (tag, body) in messages {
            write_message(&mut buf, *tag, |b| b.extend_from_slice(body));
        }
        buf
    }

    const COMMIT_BATCH: &[(u8, &[u8])] = &[
        (b'P', b"\0COMMIT\0\0\0"),
        (b'B', b"\0\0\0\0\0\0\0\0"),
        (b'E', b"\0\0\0\0\0"),
        (b'S', b""),
    ];

    #[test]
    fn commit_in_a_failed_block_is_a_rollback() {
        let mut lost = Lost::aborted();
        let (tags, status, outcome, _) = feed(&mut lost, &simple("INSERT INTO t VALUES (1)"));
        assert_eq!((tags.as_str(), status), ("EZ", Some(b'E')));
        assert_eq!(outcome, Outcome::NeedMore);
        let mut input = simple("COMMIT;");
        input.extend_from_slice(&simple("SELECT 1"));
        let (tags, status, outcome, left) = feed(&mut lost, &input);
        assert_eq!((tags.as_str(), status), ("CZ", Some(b'I')));
        assert_eq!(outcome, Outcome::Ended);
        assert_eq!(
            left,
            simple("SELECT 1").len(),
            "the next batch is an ordinary one"
        );
    }

    #[test]
    fn an_untold_loss_is_reported_even_to_a_commit() {
        let err = PgError::error(SqlState::CONNECTION_FAILURE, "lost");
        let (tags, status, outcome, _) = feed(&mut Lost::untold(err.clone()), &simple("commit"));
        assert_eq!((tags.as_str(), status), ("EZ", Some(b'I')));
        assert_eq!(outcome, Outcome::Ended);
        // The extended COMMIT ends the block as well, with the loss as its answer.
        let (tags, status, outcome, _) = feed(&mut Lost::untold(err), &extended(COMMIT_BATCH));
        assert_eq!((tags.as_str(), status), ("12EZ", Some(b'I')));
        assert_eq!(outcome, Outcome::Ended);
    }

    #[test]
    fn extended_commit_and_skipping_to_sync() {
        let (tags, status, outcome, _) = feed(&mut Lost::aborted(), &extended(COMMIT_BATCH));
        assert_eq!((tags.as_str(), status), ("12CZ", Some(b'I')));
        assert_eq!(outcome, Outcome::Ended);
        let insert = extended(&[
            (b'P', b"\0INSERT INTO t VALUES (1)\0\0\0"),
            (b'B', b"\0\0\0\0\0\0\0\0"),
            (b'E', b"\0\0\0\0\0"),
            (b'S', b""),
        ]);
        let (tags, status, outcome, _) = feed(&mut Lost::aborted(), &insert);
        assert_eq!((tags.as_str(), status), ("EZ", Some(b'E')));
        assert_eq!(outcome, Outcome::NeedMore);
        // Already told mid-batch: nothing more but the ReadyForQuery the Sync asks for.
        let (tags, status, outcome, _) = feed(&mut Lost::skipping(false), &insert);
        assert_eq!((tags.as_str(), status), ("Z", Some(b'I')));
        assert_eq!(outcome, Outcome::Ended);
    }

    #[test]
    fn input_is_answered_as_it_comes_and_flush_needs_no_sync() {
        // Parse, Bind, Describe, Execute, Flush: a pipelining driver waits for these
        // answers before it sends Sync.
        let batch = extended(&[
            (b'P', b"\0COMMIT\0\0\0"),
            (b'B', b"\0\0\0\0\0\0\0\0"),
            (b'D', b"P\0"),
            (b'E', b"\0\0\0\0\0"),
            (b'H', b""),
        ]);
        let mut lost = Lost::aborted();
        // Byte by byte, into the buffer the session keeps: each message is answered once,
        // when it is whole, and nothing but the message being read stays buffered.
        let (mut buf, mut all) = (BytesMut::new(), String::new());
        for byte in batch.iter() {
            buf.extend_from_slice(&[*byte]);
            let mut reply = BytesMut::new();
            let outcome = lost
                .consume(&mut buf, &mut reply, &mut Names(None), 0)
                .unwrap();
            assert_eq!(outcome, Outcome::NeedMore);
            all.push_str(&tags(&reply).0);
        }
        assert!(buf.is_empty());
        assert_eq!(all, "12nC");
        let mut lost = Lost::aborted();
        let (tags, _, outcome, left) = feed(&mut lost, &batch);
        assert_eq!(
            (tags.as_str(), outcome, left),
            ("12nC", Outcome::NeedMore, 0)
        );
        let (tags, status, outcome, _) = feed(&mut lost, &extended(&[(b'S', b"")]));
        assert_eq!(
            (tags.as_str(), status, outcome),
            ("Z", Some(b'I'), Outcome::Ended)
        );
    }

    #[test]
    fn a_long_message_is_dropped_as_it_arrives() {
        let mut lost = Lost::aborted();
        let big = simple(&format!("SELECT '{}'", "x".repeat(100_000)));
        let (mut seen, mut status, mut outcome) = (String::new(), None, Outcome::NeedMore);
        for chunk in big.chunks(512) {
            let (tags, s, o, left) = feed(&mut lost, chunk);
            // Only a partial header is ever left over.
            assert!(left < Header::SIZE, "{left}");
            seen.push_str(&tags);
            status = s.or(status);
            outcome = o;
        }
        assert_eq!((seen.as_str(), status), ("EZ", Some(b'E')));
        assert_eq!(outcome, Outcome::NeedMore);
        assert_eq!(lost.discard, 0);
    }

    #[test]
    fn a_named_commit_parsed_in_the_failed_block_is_kept() {
        let mut statements = Some(ClientStatements::default());
        let parse = extended(&[(b'P', b"S_1\0COMMIT\0\0\0"), (b'S', b"")]);
        let mut lost = Lost::aborted();
        let (tags, status, _, _) = feed_with(&mut lost, &parse, &mut statements);
        assert_eq!((tags.as_str(), status), ("1Z", Some(b'E')));
        let run = extended(&[
            (b'B', b"\0S_1\0\0\0\0\0\0\0"),
            (b'E', b"\0\0\0\0\0"),
            (b'S', b""),
        ]);
        let (tags, status, outcome, _) = feed_with(&mut lost, &run, &mut statements);
        assert_eq!(
            (tags.as_str(), status, outcome),
            ("2CZ", Some(b'I'), Outcome::Ended)
        );
        assert!(
            statements.as_ref().unwrap().get("S_1").is_some(),
            "kept after the block"
        );
        // Without pooled statements a named Parse cannot be kept: it fails.
        let (tags, _, _, _) = feed(&mut Lost::aborted(), &parse);
        assert_eq!(tags, "EZ");
    }

    #[test]
    fn terminate_is_left_for_the_session() {
        let mut input = simple("SELECT 1");
        input.extend_from_slice(b"X\0\0\0\x04");
        let (tags, _, outcome, left) = feed(&mut Lost::aborted(), &input);
        assert_eq!(
            (tags.as_str(), outcome, left),
            ("EZ", Outcome::Terminate, 5)
        );
    }

    #[test]
    fn block_ends() {
        for sql in [
            "COMMIT",
            "commit;",
            " END work ",
            "rollback transaction",
            "ABORT",
            "COMMIT AND NO CHAIN",
        ] {
            assert!(is_block_end(sql), "{sql}");
        }
        for sql in [
            "COMMIT AND CHAIN",
            "ROLLBACK TO SAVEPOINT a",
            "SELECT 1",
            "commit; select 1",
            "",
        ] {
            assert!(!is_block_end(sql), "{sql}");
        }
    }
}
