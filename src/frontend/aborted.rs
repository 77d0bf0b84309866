//! A transaction whose server was lost (PostgreSQL shut down, crashed or failed over under
//! it): the client keeps its connection and stays in a failed transaction block, as if a
//! statement had failed, until it ends the block. Its COMMIT is answered as PostgreSQL
//! answers COMMIT in a failed block, with ROLLBACK, and never runs on another server; its
//! other statements get 25P02. Nothing here needs a server.
//!
//! PgBouncer closes such a client ("server conn crashed?"); libpq would too, since the
//! server connection is its connection. Keeping it lets a pooled application's ordinary
//! error handling (roll back, retry) carry it over a failover.

use bytes::BytesMut;

use crate::protocol::messages::{command_complete, ready_for_query, write_message};
use crate::protocol::{Header, PgError, SqlState};

/// Where a client whose transaction was lost is.
#[derive(Debug, Clone)]
pub enum LostTransaction {
    /// Told (an error and ReadyForQuery 'E'): statements fail until COMMIT or ROLLBACK.
    Aborted,
    /// Not told yet: the server went away while the client was idle inside its
    /// transaction. Its next batch gets this error (a COMMIT too: the client must learn
    /// that nothing was committed), then it is `Aborted` unless that batch ended the block.
    Untold(PgError),
    /// Told in the middle of an extended-protocol batch: the rest of it, up to its Sync, is
    /// discarded as PostgreSQL discards after an error, then ReadyForQuery follows: 'E' and
    /// `Aborted` when the client was inside a transaction block, 'I' and done otherwise.
    Skipping { in_block: bool },
}

/// What the session does with the buffered input of such a client.
#[derive(Debug)]
pub enum Step {
    /// The first batch is not complete yet.
    NeedMore,
    /// Answer `reply` to the first `len` bytes; the client is then in `next` (`None`: the
    /// block is over and the client is an ordinary idle client again).
    Answer {
        len: usize,
        reply: BytesMut,
        next: Option<LostTransaction>,
    },
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

/// Answers the first batch of `buf`. `named_end` tells whether a prepared statement of
/// the client's, by name, is a COMMIT or ROLLBACK.
pub fn answer(state: &LostTransaction, buf: &[u8], named_end: &dyn Fn(&str) -> bool) -> Step {
    let mut pos = 0;
    let mut reply = BytesMut::new();
    // Has an error been sent for this batch (then the rest up to Sync is skipped)?
    let mut failed = matches!(state, LostTransaction::Skipping { .. });
    let in_block = !matches!(state, LostTransaction::Skipping { in_block: false });
    let mut untold = match state {
        LostTransaction::Untold(err) => Some(err.clone()),
        _ => None,
    };
    // The extended-protocol statement and portal that end the block, when parsed or bound
    // in this batch (unnamed ones) or named.
    let (mut end_statement, mut end_portal, mut ended) = (false, false, false);
    loop {
        let Ok(Some(header)) = Header::parse(&buf[pos..]) else {
            return Step::NeedMore;
        };
        let total = header.total();
        let Some(message) = buf.get(pos..pos + total) else {
            return Step::NeedMore;
        };
        let body = &message[Header::SIZE..];
        pos += total;
        match header.tag {
            b'S' => {
                let status = if ended && !failed {
                    b'I'
                } else if in_block {
                    b'E'
                } else {
                    b'I'
                };
                if untold.is_some() && !failed {
                    // A batch of only Sync: nothing ran, but the client must hear it.
                    fail(&mut reply, &mut failed, &mut untold);
                }
                ready_for_query(&mut reply, status);
                return finish(pos, reply, status);
            }
            // After an error PostgreSQL discards everything up to the Sync.
            _ if failed => {}
            b'H' => {}
            b'Q' => {
                let sql = cstr(body).unwrap_or("");
                let status = if is_block_end(sql) {
                    match untold.take() {
                        // Never a silent success: the commit did not happen.
                        Some(err) => err.encode(&mut reply),
                        None => command_complete(&mut reply, "ROLLBACK"),
                    }
                    b'I'
                } else if sql.trim().trim_end_matches(';').trim().is_empty() && untold.is_none() {
                    write_message(&mut reply, b'I', |_| {});
                    b'E'
                } else {
                    fail(&mut reply, &mut failed, &mut untold);
                    b'E'
                };
                ready_for_query(&mut reply, status);
                return finish(pos, reply, status);
            }
            b'P' => {
                let (name, query) = parse_body(body);
                if is_block_end(query) {
                    if name.is_empty() {
                        end_statement = true;
                    }
                    write_message(&mut reply, b'1', |_| {});
                } else {
                    fail(&mut reply, &mut failed, &mut untold);
                }
            }
            b'B' => {
                let (portal, statement) = parse_body(body);
                let ends = if statement.is_empty() {
                    end_statement
                } else {
                    named_end(statement)
                };
                if ends && portal.is_empty() {
                    end_portal = true;
                    write_message(&mut reply, b'2', |_| {});
                } else {
                    fail(&mut reply, &mut failed, &mut untold);
                }
            }
            b'D' => {
                let (kind, name) = (body.first().copied(), cstr(body.get(1..).unwrap_or(&[])));
                let known = match (kind, name) {
                    (Some(b'S'), Some("")) => end_statement,
                    (Some(b'S'), Some(name)) => named_end(name),
                    (Some(b'P'), Some("")) => end_portal,
                    _ => false,
                };
                if known {
                    if kind == Some(b'S') {
                        // No parameters, and no rows.
                        write_message(&mut reply, b't', |b| b.extend_from_slice(&[0, 0]));
                    }
                    write_message(&mut reply, b'n', |_| {});
                } else {
                    fail(&mut reply, &mut failed, &mut untold);
                }
            }
            b'E' => {
                let portal = cstr(body).unwrap_or("\u{0}");
                if portal.is_empty() && end_portal {
                    match untold.take() {
                        Some(err) => {
                            err.encode(&mut reply);
                            failed = true;
                        }
                        None => command_complete(&mut reply, "ROLLBACK"),
                    }
                    ended = true;
                } else {
                    fail(&mut reply, &mut failed, &mut untold);
                }
            }
            b'C' => write_message(&mut reply, b'3', |_| {}),
            // A function call is a batch of its own, answered with ReadyForQuery.
            b'F' => {
                fail(&mut reply, &mut failed, &mut untold);
                ready_for_query(&mut reply, b'E');
                return finish(pos, reply, b'E');
            }
            // COPY data and anything else: part of what fails.
            _ => fail(&mut reply, &mut failed, &mut untold),
        }
    }
}

/// The first error of a batch: the untold loss, or 25P02; later ones are skipped.
fn fail(reply: &mut BytesMut, failed: &mut bool, untold: &mut Option<PgError>) {
    if !*failed {
        untold.take().unwrap_or_else(in_failed_block).encode(reply);
        *failed = true;
    }
}

fn finish(len: usize, reply: BytesMut, status: u8) -> Step {
    Step::Answer {
        len,
        reply,
        next: (status == b'E').then_some(LostTransaction::Aborted),
    }
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

    fn no_named(_: &str) -> bool {
        false
    }

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

    fn answered(step: Step) -> (String, Option<u8>, Option<LostTransaction>, usize) {
        match step {
            Step::Answer { len, reply, next } => {
                let (t, s) = tags(&reply);
                (t, s, next, len)
            }
            Step::NeedMore => panic!("asked for more"),
        }
    }

    #[test]
    fn commit_in_a_failed_block_is_a_rollback() {
        let buf = simple("COMMIT;");
        let (tags, status, next, len) =
            answered(answer(&LostTransaction::Aborted, &buf, &no_named));
        assert_eq!((tags.as_str(), status), ("CZ", Some(b'I')));
        assert!(next.is_none());
        assert_eq!(len, buf.len());
        let (tags, status, next, _) = answered(answer(
            &LostTransaction::Aborted,
            &simple("INSERT INTO t VALUES (1)"),
            &no_named,
        ));
        assert_eq!((tags.as_str(), status), ("EZ", Some(b'E')));
        assert!(matches!(next, Some(LostTransaction::Aborted)));
    }

    #[test]
    fn an_untold_loss_is_reported_even_to_a_commit() {
        let err = PgError::error(SqlState::CONNECTION_FAILURE, "lost");
        let (tags, status, next, _) = answered(answer(
            &LostTransaction::Untold(err),
            &simple("commit"),
            &no_named,
        ));
        assert_eq!((tags.as_str(), status), ("EZ", Some(b'I')));
        assert!(next.is_none());
    }

    fn extended(messages: &[(u8, &[u8])]) -> BytesMut {
        let mut buf = BytesMut::new();
        for (tag, body) in messages {
            write_message(&mut buf, *tag, |b| b.extend_from_slice(body));
        }
        buf
    }

    #[test]
    fn extended_commit_and_skipping_to_sync() {
        let buf = extended(&[
            (b'P', b"\0COMMIT\0\0\0"),
            (b'B', b"\0\0\0\0\0\0\0\0"),
            (b'E', b"\0\0\0\0\0"),
            (b'S', b""),
        ]);
        let (tags, status, next, _) = answered(answer(&LostTransaction::Aborted, &buf, &no_named));
        assert_eq!((tags.as_str(), status), ("12CZ", Some(b'I')));
        assert!(next.is_none());
        let buf = extended(&[
            (b'P', b"\0INSERT INTO t VALUES (1)\0\0\0"),
            (b'B', b"\0\0\0\0\0\0\0\0"),
            (b'E', b"\0\0\0\0\0"),
            (b'S', b""),
        ]);
        let (tags, status, _, _) = answered(answer(&LostTransaction::Aborted, &buf, &no_named));
        assert_eq!((tags.as_str(), status), ("EZ", Some(b'E')));
        // Already told mid-batch: nothing more but the ReadyForQuery the Sync asks for.
        let (tags, status, next, _) = answered(answer(
            &LostTransaction::Skipping { in_block: false },
            &buf,
            &no_named,
        ));
        assert_eq!((tags.as_str(), status), ("Z", Some(b'I')));
        assert!(next.is_none());
        let named = extended(&[
            (b'B', b"\0S_1\0\0\0\0\0\0\0"),
            (b'E', b"\0\0\0\0\0"),
            (b'S', b""),
        ]);
        let (tags, _, _, _) = answered(answer(&LostTransaction::Aborted, &named, &|n| n == "S_1"));
        assert_eq!(tags, "2CZ");
        assert!(matches!(
            answer(
                &LostTransaction::Aborted,
                &named[..named.len() - 5],
                &no_named
            ),
            Step::NeedMore
        ));
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
