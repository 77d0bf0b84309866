//! Named prepared statements under transaction pooling. A client's statement names are its
//! own; on the wire they become `pgmoat_<digest>` names derived from the query text and
//! parameter types keyed with a random per-process secret, so two clients preparing the same
//! query share one server-side statement while no client can guess (and replace) a name, and a client that moves to another server gets its statements prepared there
//! on first use. Each server keeps a bounded LRU set (max_prepared_statements) of what it
//! has prepared.
//!
//! Responses stay in step with what the client sent: every Parse and Close forwarded leaves an
//! entry in a FIFO, and the matching ParseComplete / CloseComplete is passed, swallowed (for
//! a Parse or Close pgmoat added) or rewritten (a Parse answered from the cache is sent as a
//! harmless Close of a name that never exists, whose CloseComplete becomes ParseComplete).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

pub use crate::backend::ServerStatements;
use crate::protocol::messages::write_message;

/// Closing a statement that does not exist is not an error, and answers CloseComplete.
pub const NOOP_STATEMENT: &str = "pgmoat_noop";

/// Bounds on the statements one client may hold (count and total text), so a client cannot
/// grow pgmoat's memory without limit.
pub const MAX_CLIENT_STATEMENTS: usize = 10_000;
pub const MAX_CLIENT_STATEMENT_BYTES: usize = 64 * 1024 * 1024;

/// A client's statement as it exists on servers.
#[derive(Debug)]
pub struct Statement {
    pub server_name: Arc<str>,
    /// The Parse message (whole, with the server name) to prepare it on a server.
    pub parse: Bytes,
    /// What running it may do to the session, from one scan of its text at Parse.
    pub effects: super::effects::Effects,
}

impl Statement {
    /// From a client's Parse body: its statement name, and the statement under its
    /// server-side name, keyed with `key` (the process's secret). `None` for a malformed body.
    pub fn from_parse(body: &[u8], key: &[u8; 16]) -> Option<(String, Statement)> {
        let name_end = body.iter().position(|&b| b == 0)?;
        let name = std::str::from_utf8(&body[..name_end]).ok()?.to_owned();
        // Query text and parameter types identify the statement.
        let rest = &body[name_end + 1..];
        let digest = Sha256::new()
            .chain_update(key)
            .chain_update(rest)
            .finalize();
        let server_name: Arc<str> = format!("pgmoat_{}", hex(&digest[..12])).into();
        let mut parse = BytesMut::with_capacity(rest.len() + server_name.len() + 6);
        write_message(&mut parse, b'P', |b| {
            b.put_slice(server_name.as_bytes());
            b.put_u8(0);
            b.put_slice(rest);
        });
        let effects = super::effects::of_message(b'P', body);
        Some((
            name,
            Statement {
                server_name,
                parse: parse.freeze(),
                effects,
            },
        ))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A client's named statements.
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<String, Arc<Statement>>,
    bytes: usize,
    /// The process's secret for server-side names (zero in tests).
    key: [u8; 16],
}

impl ClientStatements {
    /// A client's (empty) set, naming statements on servers with the process's `key`.
    pub fn with_key(key: [u8; 16]) -> Self {
        ClientStatements {
            key,
            ..Default::default()
        }
    }

    pub fn key(&self) -> &[u8; 16] {
        &self.key
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.by_name.get(name)
    }

    /// False when the client already holds the maximum (count or bytes).
    pub fn insert(&mut self, name: String, statement: Statement) -> bool {
        let replaced = self.by_name.get(&name).map_or(0, |s| s.parse.len());
        let bytes = self.bytes - replaced + statement.parse.len();
        if (self.by_name.len() >= MAX_CLIENT_STATEMENTS && replaced == 0)
            || bytes > MAX_CLIENT_STATEMENT_BYTES
        {
            return false;
        }
        self.bytes = bytes;
        self.by_name.insert(name, Arc::new(statement));
        true
    }

    pub fn remove(&mut self, name: &str) {
        if let Some(removed) = self.by_name.remove(name) {
            self.bytes -= removed.parse.len();
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// What to do with the ParseComplete / CloseComplete answering one forwarded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// A Parse: pass its ParseComplete on, or swallow it when pgmoat sent the Parse. `name`
    /// is forgotten from the server's set if the Parse never completes.
    Parse {
        swallow: bool,
        name: Option<Arc<str>>,
    },
    /// A Close from the client: pass.
    Close,
    /// The stand-in for a Parse answered from the cache: CloseComplete becomes ParseComplete.
    CloseAsParse,
    /// A Close pgmoat sent to evict a statement: swallow.
    SwallowClose,
}

#[derive(Debug)]
struct Pending {
    batch: u64,
    completion: Completion,
}

/// The per-checkout FIFO of expected completions, in batches (each Sync or Query starts a
/// new one; an error makes the server skip the rest of a batch).
#[derive(Debug, Default)]
pub struct CompletionQueue {
    pending: VecDeque<Pending>,
    sent_batches: u64,
    done_batches: u64,
}

impl CompletionQueue {
    pub fn push(&mut self, completion: Completion) {
        self.pending.push_back(Pending {
            batch: self.sent_batches,
            completion,
        });
    }

    /// The client sent a message that ends a batch (Sync, Query, FunctionCall).
    pub fn batch_sent(&mut self) {
        self.sent_batches += 1;
    }

    /// `n` Syncs counted as batch ends were ignored by PostgreSQL (sent during COPY IN).
    pub fn forget_batches(&mut self, n: u32) {
        let n = u64::from(n);
        if n == 0 {
            return;
        }
        self.sent_batches = self.sent_batches.saturating_sub(n);
        for p in &mut self.pending {
            p.batch = p.batch.min(self.sent_batches);
        }
    }

    /// The next completion of the current batch, for a ParseComplete or CloseComplete.
    pub fn pop(&mut self) -> Option<Completion> {
        while self
            .pending
            .front()
            .is_some_and(|p| p.batch < self.done_batches)
        {
            self.pending.pop_front();
        }
        self.pending.pop_front().map(|p| p.completion)
    }

    /// ReadyForQuery: whatever the finished batch still expected was skipped by an error.
    /// Returns the server names whose Parse never completed.
    pub fn batch_done(&mut self) -> Vec<Arc<str>> {
        let mut failed = Vec::new();
        while let Some(p) = self.pending.front() {
            if p.batch > self.done_batches {
                break;
            }
            if let Some(Pending {
                completion:
                    Completion::Parse {
                        name: Some(name), ..
                    },
                ..
            }) = self.pending.pop_front()
            {
                failed.push(name);
            }
        }
        self.done_batches += 1;
        failed
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Writes a Close of a prepared statement.
pub fn close_statement(out: &mut BytesMut, name: &str) {
    write_message(out, b'C', |b| {
        b.put_u8(b'S');
        b.put_slice(name.as_bytes());
        b.put_u8(0);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_body(name: &str, query: &str) -> Vec<u8> {
        let mut b = name.as_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(query.as_bytes());
        b.push(0);
        b.extend_from_slice(&0u16.to_be_bytes());
        b
    }

    #[test]
    fn same_query_same_server_name_whatever_the_client_name() {
        let (a_name, a) = Statement::from_parse(&parse_body("P_0", "select 1"), &[0; 16]).unwrap();
        let (b_name, b) = Statement::from_parse(&parse_body("S_9", "select 1"), &[0; 16]).unwrap();
        let (_, c) = Statement::from_parse(&parse_body("P_0", "select 2"), &[0; 16]).unwrap();
        assert_eq!((a_name.as_str(), b_name.as_str()), ("P_0", "S_9"));
        assert_eq!(a.server_name, b.server_name);
        assert_ne!(a.server_name, c.server_name);
        assert!(a.parse.starts_with(b"P"));
        assert!(a.parse[5..].starts_with(a.server_name.as_bytes()));
        // Another process (another key) names the same statement differently.
        let (_, other) = Statement::from_parse(&parse_body("P_0", "select 1"), &[7; 16]).unwrap();
        assert_ne!(other.server_name, a.server_name);
    }

    #[test]
    fn lru_eviction() {
        let mut s = ServerStatements::default();
        let names: Vec<Arc<str>> = (0..3).map(|i| Arc::from(format!("s{i}"))).collect();
        for n in &names {
            s.touch(n);
        }
        s.touch(&names[0]);
        assert_eq!(s.evict_for(3, "new").as_deref(), Some("s1"));
        assert_eq!(s.evict_for(3, "new"), None);
        assert_eq!(s.evict_for(2, "s0"), None);
    }

    #[test]
    fn batches_drop_what_an_error_skipped() {
        let mut q = CompletionQueue::default();
        let n: Arc<str> = Arc::from("x");
        q.push(Completion::Parse {
            swallow: true,
            name: Some(n.clone()),
        });
        q.push(Completion::Close);
        q.batch_sent();
        q.push(Completion::CloseAsParse);
        q.batch_sent();
        // First batch failed before anything completed.
        assert_eq!(q.batch_done(), vec![n]);
        assert_eq!(q.pop(), Some(Completion::CloseAsParse));
        assert!(q.batch_done().is_empty());
        assert!(q.is_empty());
    }
}
