//! Limits that span pools: max_db_connections and max_user_connections count server
//! connections (idle ones too, as PgBouncer does). A connection holds its permits until it is
//! closed; when a limit is reached, an idle connection of another pool of the same database
//! or user is closed to make room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

pub use crate::backend::ConnectionPermits;

/// Semaphores by name, each sized by the limit it was created with (0 = unlimited: none).
#[derive(Default)]
pub struct NamedLimits {
    limits: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
}

impl NamedLimits {
    /// The semaphore for `name` with `limit` permits; `None` when unlimited. A changed limit
    /// (reload) starts a new semaphore: connections holding old permits keep them until they
    /// close, so the new limit is reached as old connections retire.
    pub fn get(&self, name: &str, limit: usize) -> Option<Arc<Semaphore>> {
        if limit == 0 {
            return None;
        }
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        match limits.get(name) {
            Some((size, sem)) if *size == limit => Some(sem.clone()),
            _ => {
                let sem = Arc::new(Semaphore::new(limit));
                limits.insert(name.to_owned(), (limit, sem.clone()));
                Some(sem)
            }
        }
    }
}
