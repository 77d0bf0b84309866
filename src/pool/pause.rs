//! PAUSE / RESUME: while a database (or everything) is paused, clients that want a server
//! wait at this gate instead of checking one out. Unpaused, passing costs one atomic load.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use crate::stats::{ClientEntry, ClientState};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Paused {
    all: bool,
    databases: BTreeSet<String>,
}

impl Paused {
    fn blocks(&self, database: &str) -> bool {
        self.all || self.databases.contains(database)
    }

    fn any(&self) -> bool {
        self.all || !self.databases.is_empty()
    }
}

/// Why a PAUSE or RESUME was refused (PgBouncer's wording).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PauseError {
    #[error("already suspended/paused")]
    AlreadyPaused,
    #[error("pooler is not paused/suspended")]
    NotPaused,
    #[error("database {0} is not paused")]
    DatabaseNotPaused(String),
}

#[derive(Debug)]
pub struct PauseGate {
    /// Fast path: false while nothing is paused.
    any: AtomicBool,
    state: watch::Sender<Paused>,
}

impl Default for PauseGate {
    fn default() -> Self {
        PauseGate {
            any: AtomicBool::new(false),
            state: watch::Sender::new(Paused::default()),
        }
    }
}

impl PauseGate {
    pub fn is_paused(&self, database: &str) -> bool {
        self.any.load(Ordering::SeqCst) && self.state.borrow().blocks(database)
    }

    pub fn all_paused(&self) -> bool {
        self.state.borrow().all
    }

    /// Waits while `database` is paused. The client shows as waiting meanwhile; it is marked
    /// as being given a server *before* the flag is read, so a PAUSE that raises the flag and
    /// then counts busy clients cannot miss one that slipped through.
    pub async fn pass(&self, database: &str, client: &ClientEntry) {
        loop {
            client.set_state(ClientState::Assigning);
            if !self.is_paused(database) {
                return;
            }
            client.set_state(ClientState::Waiting);
            let mut rx = self.state.subscribe();
            // Err only if the sender is gone, which cannot happen while `self` lives.
            let _ = rx.wait_for(|p| !p.blocks(database)).await;
        }
    }

    /// Pauses one database, or all with `None`.
    pub fn pause(&self, database: Option<&str>) -> Result<(), PauseError> {
        let mut result = Ok(());
        self.state.send_modify(|p| {
            if p.all {
                result = Err(PauseError::AlreadyPaused);
                return;
            }
            match database {
                Some(db) => {
                    p.databases.insert(db.to_owned());
                }
                None => p.all = true,
            }
        });
        self.any.store(self.state.borrow().any(), Ordering::SeqCst);
        result
    }

    /// Resumes one database, or everything with `None`.
    pub fn resume(&self, database: Option<&str>) -> Result<(), PauseError> {
        let mut result = Ok(());
        self.state.send_modify(|p| match database {
            None if !p.any() => result = Err(PauseError::NotPaused),
            None => *p = Paused::default(),
            Some(db) => {
                if !p.databases.remove(db) {
                    result = Err(PauseError::DatabaseNotPaused(db.to_owned()));
                }
            }
        });
        self.any.store(self.state.borrow().any(), Ordering::SeqCst);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn client() -> ClientEntry {
        ClientEntry::new(
            1,
            "127.0.0.1:1".parse().unwrap(),
            None,
            "u".into(),
            "app".into(),
            "u".into(),
            String::new(),
            None,
        )
    }

    #[test]
    fn pause_and_resume_follow_pgbouncer_rules() {
        let gate = PauseGate::default();
        assert!(!gate.is_paused("app"));
        assert_eq!(gate.resume(None), Err(PauseError::NotPaused));
        gate.pause(Some("app")).unwrap();
        assert!(gate.is_paused("app") && !gate.is_paused("other"));
        assert_eq!(
            gate.resume(Some("other")),
            Err(PauseError::DatabaseNotPaused("other".into()))
        );
        gate.pause(None).unwrap();
        assert!(gate.is_paused("other") && gate.all_paused());
        assert_eq!(gate.pause(Some("x")), Err(PauseError::AlreadyPaused));
        gate.resume(None).unwrap();
        assert!(!gate.is_paused("app") && !gate.is_paused("other"));
    }

    #[tokio::test]
    async fn clients_wait_at_the_gate_until_resumed() {
        let gate = Arc::new(PauseGate::default());
        let entry = Arc::new(client());
        gate.pause(Some("app")).unwrap();
        let waiter = tokio::spawn({
            let (gate, entry) = (gate.clone(), entry.clone());
            async move { gate.pass("app", &entry).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        assert_eq!(entry.state(), ClientState::Waiting);
        gate.resume(Some("app")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(entry.state(), ClientState::Assigning);
    }
}
