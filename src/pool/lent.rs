//! A server connection lent to one client, with the pool permit it holds. Dropping it
//! returns the connection to the pool (only do that when it is clean); `discard` closes it.

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use deadpool::managed::Object;
use tokio::sync::OwnedSemaphorePermit;

use super::ServerManager;
use crate::backend::ServerConn;

pub struct Lent {
    /// Always `Some` until the connection goes back to the pool or is discarded.
    pub(super) obj: Option<Object<ServerManager>>,
    pub(super) _permit: OwnedSemaphorePermit,
    /// How long the client waited for it.
    pub waited: Duration,
    /// Taken from the reserve pool.
    pub reserve: bool,
}

impl Lent {
    pub(super) fn new(
        obj: Object<ServerManager>,
        permit: OwnedSemaphorePermit,
        waited: Duration,
        reserve: bool,
    ) -> Self {
        Lent {
            obj: Some(obj),
            _permit: permit,
            waited,
            reserve,
        }
    }

    /// Closes the connection instead of returning it (a client left mid-transaction, the
    /// server broke, a reset failed): its pool slot is freed at once.
    pub fn discard(mut self) {
        if let Some(mut obj) = self.obj.take() {
            // Its state is unknown: no goodbye message that could land mid-message.
            obj.polite_close = false;
            drop(Object::take(obj));
        }
    }
}

impl Drop for Lent {
    /// Back to the pool: idle from now on. deadpool's own `last_used` counts from the
    /// checkout, which would make a long transaction look like idle time to
    /// server_idle_timeout and server_check_delay.
    fn drop(&mut self) {
        if let Some(obj) = self.obj.as_mut() {
            obj.idle_since = Instant::now();
        }
    }
}

impl Deref for Lent {
    type Target = ServerConn;

    fn deref(&self) -> &ServerConn {
        self.obj
            .as_ref()
            .expect("a lent connection is present until dropped")
    }
}

impl DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.obj
            .as_mut()
            .expect("a lent connection is present until dropped")
    }
}
