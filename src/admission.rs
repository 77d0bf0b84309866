//! Who gets in: connections still logging in (TLS, startup packet, authentication) and
//! logged-in clients are counted apart, so sockets that never log in cannot take the places
//! of real clients.
//!
//! - `max_client_conn` counts logged-in clients only (claimed once authentication succeeded).
//! - `max_pending_logins` bounds the connections still logging in. When a new connection
//!   would exceed it, the *oldest* pending login is dropped rather than the newest refused:
//!   an attacker who keeps thousands of silent sockets open then only ever pushes out its own
//!   oldest ones, and a real client, whose login takes milliseconds, gets through.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A bounded set of connections in which a newcomer pushes out the oldest member instead
/// of being turned away (pending logins; the metrics endpoint's connections).
#[derive(Debug, Default)]
pub struct OldestOut {
    /// Members by arrival (the first key is the oldest), each with the token that ends it.
    members: Mutex<BTreeMap<u64, CancellationToken>>,
    arrivals: AtomicU64,
}

/// A member of an [`OldestOut`] set; dropping it leaves the set.
#[derive(Debug)]
pub struct Place {
    set: Arc<OldestOut>,
    id: u64,
    pushed_out: CancellationToken,
}

impl OldestOut {
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Enters a newcomer, pushing out the oldest members until it fits under `max`. Returns
    /// its place and how many were pushed out.
    pub fn enter(self: &Arc<Self>, max: usize) -> (Place, usize) {
        let id = self.arrivals.fetch_add(1, Ordering::Relaxed);
        let pushed_out = CancellationToken::new();
        let mut evicted = 0;
        {
            let mut members = self.lock();
            while members.len() >= max.max(1) {
                let Some((_, oldest)) = members.pop_first() else {
                    break;
                };
                oldest.cancel();
                evicted += 1;
            }
            members.insert(id, pushed_out.clone());
        }
        let place = Place {
            set: self.clone(),
            id,
            pushed_out,
        };
        (place, evicted)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, CancellationToken>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Place {
    /// Completes when a newer member pushed this one out.
    pub fn pushed_out(&self) -> WaitForCancellationFutureOwned {
        self.pushed_out.clone().cancelled_owned()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
    }
}

/// The process's counts of pending logins and logged-in clients.
#[derive(Debug, Default)]
pub struct Admission {
    clients: AtomicUsize,
    pending: Arc<OldestOut>,
}

/// A logged-in client's place under max_client_conn, for as long as it lives.
#[derive(Debug)]
pub struct ClientSlot {
    admission: Arc<Admission>,
}

impl Admission {
    /// Logged-in clients.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Connections still logging in.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Enters a new connection into the pending logins. Returns its place, and how many
    /// older pending logins were dropped to keep within `max_pending`.
    pub fn start_login(&self, max_pending: usize) -> (Place, usize) {
        self.pending.enter(max_pending)
    }

    /// A place under max_client_conn (`max`), or `None` when all are taken.
    pub fn claim_client(self: &Arc<Self>, max: usize) -> Option<ClientSlot> {
        let before = self.clients.fetch_add(1, Ordering::Relaxed);
        if before >= max {
            self.clients.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ClientSlot {
            admission: self.clone(),
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.admission.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_pending_login_makes_room_for_the_newest() {
        let admission = Arc::new(Admission::default());
        let (first, _) = admission.start_login(2);
        let (second, _) = admission.start_login(2);
        assert!(!first.pushed_out.is_cancelled());
        let (third, evicted) = admission.start_login(2);
        assert_eq!(evicted, 1);
        assert!(first.pushed_out.is_cancelled(), "the oldest goes");
        assert!(!second.pushed_out.is_cancelled() && !third.pushed_out.is_cancelled());
        assert_eq!(admission.pending(), 2);
        drop(first);
        assert_eq!(admission.pending(), 2, "an evicted login is already out");
        drop(second);
        drop(third);
        assert_eq!(admission.pending(), 0);
    }

    #[test]
    fn client_slots_are_bounded_and_given_back() {
        let admission = Arc::new(Admission::default());
        let a = admission.claim_client(2).unwrap();
        let _b = admission.claim_client(2).unwrap();
        assert!(admission.claim_client(2).is_none());
        assert_eq!(admission.clients(), 2);
        drop(a);
        assert!(admission.claim_client(2).is_some());
    }
}
