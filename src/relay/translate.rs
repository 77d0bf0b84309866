//! The client-to-server direction under transaction pooling with prepared statements on:
//! messages are copied into an output buffer, and Parse / Bind / Describe / Close are
//! rewritten to server-side statement names (see `prepared`). Everything else, COPY data and
//! big Bind parameters included, streams through in chunks.

use bytes::{Buf, BufMut, BytesMut};

use super::TxState;
use super::effects::{self, Effects};
use super::prepared::{
    ClientStatements, Completion, CompletionQueue, NOOP_STATEMENT, ServerStatements, Statement,
    close_statement,
};
use crate::protocol::messages::write_message;
use crate::protocol::{Frames, Header, ProtocolError, frame_at};

/// A named Parse bigger than this is refused (PostgreSQL accepts up to 1 GB, but a pooler
/// must hold it whole to replay it on other servers).
pub const MAX_NAMED_PARSE: usize = 1024 * 1024;
/// Bound for the portal and statement names at the front of a Bind.
const MAX_BIND_PREFIX: usize = 64 * 1024;
const MAX_SMALL: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("too many prepared statements in one connection (at most {0})")]
    TooManyStatements(usize),
    #[error("prepared statement text of {0} bytes is larger than pgmoat can pool (1 MiB)")]
    StatementTooLarge(usize),
}

/// The prepared-statement context of one checkout.
pub struct Translator<'a> {
    pub statements: &'a mut ClientStatements,
    pub server: &'a mut ServerStatements,
    pub queue: &'a mut CompletionQueue,
    pub max_prepared: usize,
    /// max_packet_size: longer messages are refused (0: no limit).
    pub max_packet: usize,
    /// For an unpinned client: the pool's limit on pinned servers (see `PinBudget`).
    pub pin_budget: Option<&'a mut (dyn super::PinBudget + Send + 'static)>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// More input bytes needed before the next message can be handled.
    pub needed: usize,
    pub terminated: bool,
}

/// Moves complete (or streamable) messages from `input` to `out`, rewriting as needed.
/// `remaining` carries the unsent part of a message being streamed across calls.
pub fn translate(
    input: &mut BytesMut,
    out: &mut BytesMut,
    remaining: &mut usize,
    tx: &mut TxState,
    tr: &mut Translator<'_>,
) -> Result<Progress, TranslateError> {
    loop {
        if *remaining > 0 {
            if input.is_empty() {
                return Ok(Progress::default());
            }
            let n = (*remaining).min(input.len());
            out.extend_from_slice(&input[..n]);
            input.advance(n);
            *remaining -= n;
            continue;
        }
        let frame = frame_at(input, 0)?;
        let Some(header) = frame.header() else {
            return Ok(Progress {
                needed: frame.needed(),
                terminated: false,
            });
        };
        header.check_packet_limit(tr.max_packet)?;
        let total = header.total();
        // Bytes missing before the message is whole (0 when it is).
        let needed = frame.needed();
        match header.tag {
            b'X' => {
                if input.len() < total {
                    return Ok(Progress {
                        needed,
                        terminated: false,
                    });
                }
                input.clear();
                return Ok(Progress {
                    needed: 0,
                    terminated: true,
                });
            }
            b'Q' => {
                // Held whole for a look at its SQL (up to MAX_SMALL), then passed on as is.
                if total <= MAX_SMALL && input.len() < total {
                    return Ok(Progress {
                        needed,
                        terminated: false,
                    });
                }
                if tx.client_message(b'Q') {
                    tr.queue.batch_sent();
                }
                if total > MAX_SMALL {
                    // Too big to hold: pgmoat cannot tell what it does.
                    tx.effects |= Effects::UNSEEN;
                    stream_through(input, out, remaining, total);
                    continue;
                }
                let found = effects::of_message(b'Q', &input[Header::SIZE..total]);
                if super::over_budget(found, tx.effects, tr.pin_budget.as_deref_mut()) {
                    // PostgreSQL refuses it in its place, in order and inside the transaction.
                    input.advance(total);
                    out.extend_from_slice(&effects::refusal_query(found.pin_reasons()));
                    tx.effects |= Effects::UNKNOWN;
                    continue;
                }
                tx.effects |= found;
                stream_through(input, out, remaining, total);
            }
            b'P' | b'D' | b'C' => {
                tx.client_message(header.tag);
                let limit = if header.tag == b'P' {
                    MAX_NAMED_PARSE
                } else {
                    MAX_SMALL
                };
                if total > limit {
                    // Only an unnamed Parse may be that big: it is never replayed. Whether it
                    // is named shows in its first byte, which may not have arrived yet.
                    if header.tag == b'P' {
                        match input.get(Header::SIZE) {
                            None => {
                                return Ok(Progress {
                                    needed: 1,
                                    terminated: false,
                                });
                            }
                            Some(0) => {}
                            Some(_) => return Err(TranslateError::StatementTooLarge(total)),
                        }
                    }
                    if header.tag == b'P' {
                        tx.effects |= Effects::UNSEEN;
                        tr.queue.push(Completion::Parse {
                            swallow: false,
                            name: None,
                        });
                    } else if header.tag == b'C' {
                        tr.queue.push(Completion::Close);
                    }
                    stream_through(input, out, remaining, total);
                    continue;
                }
                if input.len() < total {
                    return Ok(Progress {
                        needed,
                        terminated: false,
                    });
                }
                let msg = input.split_to(total);
                match header.tag {
                    b'P' => {
                        let body = &msg[Header::SIZE..];
                        let found = effects::of_message(b'P', body);
                        let refusal = (body.first() == Some(&0)
                            && super::over_budget(found, tx.effects, tr.pin_budget.as_deref_mut()))
                        .then(|| effects::refusal_parse(found.pin_reasons(), body))
                        .flatten();
                        match refusal {
                            Some(refusal) => {
                                tx.effects |= Effects::UNKNOWN;
                                parse(&refusal, out, tr)?
                            }
                            None => {
                                tx.effects |= found;
                                parse(&msg, out, tr)?
                            }
                        }
                    }
                    b'D' => describe(&msg, out, tr),
                    _ => close(&msg, out, tr),
                }
            }
            b'B' => {
                tx.client_message(header.tag);
                let scan_end = input.len().min(total);
                let body = &input[Header::SIZE..scan_end];
                let mut nuls = body
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| **b == 0)
                    .map(|(i, _)| i);
                let (Some(portal_end), Some(stmt_end)) = (nuls.next(), nuls.next()) else {
                    if scan_end == total {
                        return Err(ProtocolError::Malformed(
                            "Bind without portal and statement names",
                        )
                        .into());
                    }
                    if body.len() > MAX_BIND_PREFIX {
                        return Err(ProtocolError::Malformed("Bind names too long").into());
                    }
                    return Ok(Progress {
                        needed: 1,
                        terminated: false,
                    });
                };
                let name = &body[portal_end + 1..stmt_end];
                let statement = std::str::from_utf8(name)
                    .ok()
                    .filter(|n| !n.is_empty())
                    .and_then(|n| tr.statements.get(n).cloned());
                match statement {
                    Some(statement) => {
                        // Each execution of a statement may do again what its text does.
                        tx.effects |= statement.effects;
                        ensure_prepared(&statement, out, tr);
                        let prefix = Header::SIZE + stmt_end + 1;
                        let new_len =
                            header.len as usize - name.len() + statement.server_name.len();
                        out.put_u8(b'B');
                        out.put_u32(new_len as u32);
                        out.extend_from_slice(&input[Header::SIZE..Header::SIZE + portal_end + 1]);
                        out.extend_from_slice(statement.server_name.as_bytes());
                        out.put_u8(0);
                        input.advance(prefix);
                        *remaining = total - prefix;
                    }
                    // Unnamed, or unknown: PostgreSQL gives the client the right answer.
                    None => stream_through(input, out, remaining, total),
                }
            }
            tag => {
                if tx.client_message(tag) {
                    tr.queue.batch_sent();
                }
                stream_through(input, out, remaining, total);
            }
        }
    }
}

fn stream_through(input: &mut BytesMut, out: &mut BytesMut, remaining: &mut usize, total: usize) {
    let n = total.min(input.len());
    out.extend_from_slice(&input[..n]);
    input.advance(n);
    *remaining = total - n;
}

fn parse(msg: &[u8], out: &mut BytesMut, tr: &mut Translator<'_>) -> Result<(), TranslateError> {
    let body = &msg[Header::SIZE..];
    if body.first() == Some(&0) {
        out.extend_from_slice(msg);
        tr.queue.push(Completion::Parse {
            swallow: false,
            name: None,
        });
        return Ok(());
    }
    let Some((name, statement)) = Statement::from_parse(body, tr.statements.key()) else {
        return Err(ProtocolError::Malformed("Parse message").into());
    };
    if !tr.statements.insert(name.clone(), statement) {
        return Err(TranslateError::TooManyStatements(
            super::prepared::MAX_CLIENT_STATEMENTS,
        ));
    }
    let Some(statement) = tr.statements.get(&name).cloned() else {
        return Ok(());
    };
    if tr.server.contains(&statement.server_name) {
        tr.server.touch(&statement.server_name);
        // Already prepared here: a Close of a name that never exists answers in the
        // Parse's place, and its CloseComplete becomes the ParseComplete.
        close_statement(out, NOOP_STATEMENT);
        tr.queue.push(Completion::CloseAsParse);
    } else {
        evict(&statement.server_name, out, tr);
        out.extend_from_slice(&statement.parse);
        tr.server.touch(&statement.server_name);
        tr.queue.push(Completion::Parse {
            swallow: false,
            name: Some(statement.server_name.clone()),
        });
    }
    Ok(())
}

fn ensure_prepared(statement: &Statement, out: &mut BytesMut, tr: &mut Translator<'_>) {
    if tr.server.contains(&statement.server_name) {
        tr.server.touch(&statement.server_name);
        return;
    }
    evict(&statement.server_name, out, tr);
    out.extend_from_slice(&statement.parse);
    tr.server.touch(&statement.server_name);
    tr.queue.push(Completion::Parse {
        swallow: true,
        name: Some(statement.server_name.clone()),
    });
}

fn evict(keep: &str, out: &mut BytesMut, tr: &mut Translator<'_>) {
    if let Some(victim) = tr.server.evict_for(tr.max_prepared, keep) {
        close_statement(out, &victim);
        tr.queue.push(Completion::SwallowClose);
    }
}

/// Describe: a named statement is renamed (and prepared first if this server lacks it).
fn describe(msg: &[u8], out: &mut BytesMut, tr: &mut Translator<'_>) {
    let body = &msg[Header::SIZE..];
    if let Some(statement) = named_statement(body, tr) {
        ensure_prepared(&statement, out, tr);
        write_message(out, b'D', |b| {
            b.put_u8(b'S');
            b.put_slice(statement.server_name.as_bytes());
            b.put_u8(0);
        });
        return;
    }
    out.extend_from_slice(msg);
}

/// Close: a named statement is forgotten for this client, but stays prepared on the server
/// for whoever needs it next; the client still gets its CloseComplete.
fn close(msg: &[u8], out: &mut BytesMut, tr: &mut Translator<'_>) {
    let body = &msg[Header::SIZE..];
    tr.queue.push(Completion::Close);
    if let Some(name) = statement_name(body) {
        tr.statements.remove(name);
        close_statement(out, NOOP_STATEMENT);
        return;
    }
    out.extend_from_slice(msg);
}

fn named_statement(body: &[u8], tr: &Translator<'_>) -> Option<std::sync::Arc<Statement>> {
    tr.statements.get(statement_name(body)?).cloned()
}

/// The statement a Describe or Close body names: 'S', a non-empty UTF-8 name, and its
/// terminator as the last byte. Anything else (a portal, the unnamed statement, a malformed
/// body) is passed on as it is, for PostgreSQL to answer or refuse.
fn statement_name(body: &[u8]) -> Option<&str> {
    let name = body.strip_prefix(b"S")?.strip_suffix(b"\0")?;
    if name.is_empty() || name.contains(&0) {
        return None;
    }
    std::str::from_utf8(name).ok()
}

/// Registers the statements of a local batch and writes the client's answer
/// (ParseComplete for each, then ReadyForQuery idle).
pub fn answer_locally(
    batch: &[u8],
    statements: &mut ClientStatements,
    reply: &mut BytesMut,
) -> Result<(), TranslateError> {
    for (_, header, body) in Frames::new(batch) {
        if header.tag == b'P' {
            let (name, statement) = Statement::from_parse(body, statements.key())
                .ok_or(ProtocolError::Malformed("Parse message"))?;
            if !statements.insert(name, statement) {
                return Err(TranslateError::TooManyStatements(
                    super::prepared::MAX_CLIENT_STATEMENTS,
                ));
            }
            write_message(reply, b'1', |_| {});
        }
    }
    crate::protocol::messages::ready_for_query(reply, b'I');
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::relay) use crate::protocol::cursor::tests::msg;

    pub(in crate::relay) fn parse_msg(name: &str, query: &str) -> Vec<u8> {
        let mut b = name.as_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(query.as_bytes());
        b.extend_from_slice(&[0, 0, 0]);
        msg(b'P', &b)
    }

    #[test]
    fn prepare_only_batches_are_answered_locally() {
        let mut wire = parse_msg("P_0", "select 1");
        wire.extend(msg(b'S', b""));
        let mut statements = ClientStatements::default();
        let mut reply = BytesMut::new();
        answer_locally(&wire, &mut statements, &mut reply).unwrap();
        assert_eq!(&reply[..], b"1\0\0\0\x04Z\0\0\0\x05I");
        assert!(statements.get("P_0").is_some());
    }

    #[test]
    fn binds_are_renamed_and_prepared_where_missing() {
        let mut statements = ClientStatements::default();
        let mut server = ServerStatements::default();
        let mut queue = CompletionQueue::default();
        let mut tx = TxState::default();
        let mut tr = Translator {
            statements: &mut statements,
            server: &mut server,
            queue: &mut queue,
            max_prepared: 10,
            max_packet: 0,
            pin_budget: None,
        };
        let mut input = BytesMut::new();
        input.extend(parse_msg("P_0", "select $1"));
        let mut bind_body = b"\0P_0\0".to_vec();
        bind_body.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0]);
        input.extend(msg(b'B', &bind_body));
        input.extend(msg(b'S', b""));
        let mut out = BytesMut::new();
        let mut remaining = 0;
        let progress = translate(&mut input, &mut out, &mut remaining, &mut tx, &mut tr).unwrap();
        assert!(!progress.terminated);
        assert!(input.is_empty());
        assert_eq!(tx.outstanding, 1);
        // Parse under the server name, Bind renamed, Sync as is; nothing injected twice.
        let name = tr.statements.get("P_0").unwrap().server_name.clone();
        assert!(
            out.windows(name.len())
                .filter(|w| *w == name.as_bytes())
                .count()
                == 2
        );
        assert!(!out.windows(3).any(|w| w == b"P_0"));
        assert_eq!(out[0], b'P');
        assert!(tr.server.contains(&name));

        // A second client's Bind on a server that lacks the statement gets a Parse injected.
        let mut server2 = ServerStatements::default();
        let mut queue2 = CompletionQueue::default();
        let mut tr2 = Translator {
            statements: &mut statements,
            server: &mut server2,
            queue: &mut queue2,
            max_prepared: 10,
            max_packet: 0,
            pin_budget: None,
        };
        let mut input = BytesMut::from(&msg(b'B', &bind_body)[..]);
        let mut out = BytesMut::new();
        translate(&mut input, &mut out, &mut remaining, &mut tx, &mut tr2).unwrap();
        assert_eq!(out[0], b'P');
        assert_eq!(
            queue2.pop(),
            Some(Completion::Parse {
                swallow: true,
                name: Some(name)
            })
        );
    }

    /// A client's translate context, for tests that feed it in several steps.
    #[derive(Default)]
    struct Client {
        statements: ClientStatements,
        server: ServerStatements,
        queue: CompletionQueue,
        tx: TxState,
        out: BytesMut,
        remaining: usize,
    }

    impl Client {
        fn send(&mut self, input: &mut BytesMut) -> Result<Progress, TranslateError> {
            let mut tr = Translator {
                statements: &mut self.statements,
                server: &mut self.server,
                queue: &mut self.queue,
                max_prepared: 10,
                max_packet: 0,
                pin_budget: None,
            };
            translate(
                input,
                &mut self.out,
                &mut self.remaining,
                &mut self.tx,
                &mut tr,
            )
        }
    }

    #[test]
    fn describe_and_close_rename_only_a_terminated_statement_name() {
        // Found by the statement_renaming fuzz target: the last byte was taken for the
        // terminator unchecked, so "Sabc" became a Describe (or Close) of statement "ab".
        let mut client = Client::default();
        let mut input = BytesMut::from(&parse_msg("ab", "select 1")[..]);
        let malformed = [
            msg(b'D', b"Sabc"),
            msg(b'C', b"Sabc"),
            msg(b'C', b"Sab\0\0"),
        ]
        .concat();
        input.extend_from_slice(&malformed);
        client.send(&mut input).unwrap();
        let parse_len = client.statements.get("ab").unwrap().parse.len();
        // PostgreSQL refuses them as sent; nothing is renamed, nothing forgotten.
        assert_eq!(&client.out[parse_len..], &malformed[..]);
        assert!(client.statements.get("ab").is_some());

        let mut input = BytesMut::from(&msg(b'C', b"Sab\0")[..]);
        client.send(&mut input).unwrap();
        assert!(client.statements.get("ab").is_none());
    }

    #[test]
    fn a_named_parse_too_big_to_pool_is_refused_however_it_arrives() {
        // Found by the statement_renaming fuzz target: with only the header read, the Parse
        // was taken for unnamed and streamed to the server under the client's own name.
        let header = |len: usize| {
            let mut h = vec![b'P'];
            h.extend_from_slice(&((len + 4) as u32).to_be_bytes());
            h
        };
        let big = MAX_NAMED_PARSE + 10;
        let mut client = Client::default();
        let mut input = BytesMut::from(&header(big)[..]);
        let progress = client.send(&mut input).unwrap();
        assert_eq!(progress.needed, 1);
        assert!(client.out.is_empty());
        input.extend_from_slice(b"a\0select ");
        assert!(matches!(
            client.send(&mut input),
            Err(TranslateError::StatementTooLarge(_))
        ));
        assert!(client.out.is_empty());

        // An unnamed one that big streams through once its first byte shows it unnamed.
        let mut client = Client::default();
        let mut input = BytesMut::from(&header(big)[..]);
        assert_eq!(client.send(&mut input).unwrap().needed, 1);
        input.extend_from_slice(b"\0select ");
        client.send(&mut input).unwrap();
        assert_eq!(client.out.len(), 5 + 8);
        assert_eq!(client.remaining, big + Header::SIZE - 13);
    }
}
