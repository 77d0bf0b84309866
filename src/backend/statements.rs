//! What one server connection holds for pooled clients besides its socket: the prepared
//! statements pgmoat made on it (a bounded LRU set), the relay buffers it lends to whichever
//! client holds it, and the max_db_connections / max_user_connections permits it keeps.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::sync::OwnedSemaphorePermit;

/// What one server has prepared, least recently used first out.
#[derive(Debug, Default)]
pub struct ServerStatements {
    last_used: HashMap<Arc<str>, u64>,
    tick: u64,
}

impl ServerStatements {
    pub fn contains(&self, name: &str) -> bool {
        self.last_used.contains_key(name)
    }

    pub fn touch(&mut self, name: &Arc<str>) {
        self.tick += 1;
        self.last_used.insert(name.clone(), self.tick);
    }

    pub fn remove(&mut self, name: &str) {
        self.last_used.remove(name);
    }

    pub fn clear(&mut self) {
        self.last_used.clear();
    }

    pub fn len(&self) -> usize {
        self.last_used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_used.is_empty()
    }

    /// The least recently used name, removed, when the set is at `max` and `keep` is not
    /// among them.
    pub fn evict_for(&mut self, max: usize, keep: &str) -> Option<Arc<str>> {
        if self.last_used.len() < max.max(1) || self.contains(keep) {
            return None;
        }
        let victim = self
            .last_used
            .iter()
            .min_by_key(|(_, tick)| **tick)
            .map(|(name, _)| name.clone())?;
        self.last_used.remove(&victim);
        Some(victim)
    }
}

/// The client direction's large buffers, kept by a server connection between uses and lent
/// to whichever client holds that server. Memory for relay buffers thus grows with the
/// number of server connections, not with the number of (mostly idle) clients.
#[derive(Debug, Default)]
pub struct SpareBuffers {
    pub buf: BytesMut,
    pub out: BytesMut,
}

/// Permits a server connection holds for its lifetime.
#[derive(Debug, Default)]
pub struct ConnectionPermits {
    _permits: Vec<OwnedSemaphorePermit>,
}

impl ConnectionPermits {
    pub fn new(permits: Vec<OwnedSemaphorePermit>) -> Self {
        ConnectionPermits { _permits: permits }
    }
}
