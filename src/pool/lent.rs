//! A server connection lent to one client, with the pool permit it holds. Dropping it
//! returns the connection to the pool (only do that when it is clean); `discard` closes it.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use deadpool::managed::Object;
use tokio::sync::OwnedSemaphorePermit;

use super::ServerManager;
use crate::backend::ServerConn;

pub struct Lent {
    pub(super) obj: Object<ServerManager>,
    pub(super) _permit: OwnedSemaphorePermit,
    /// How long the client waited for it.
    pub waited: Duration,
    /// Taken from the reserve pool.
    pub reserve: bool,
}

impl Lent {
    /// Closes the connection instead of returning it (a client left mid-transaction, the
    /// server broke, a reset failed): its pool slot is freed at once.
    pub fn discard(mut self) {
        // Its state is unknown: no goodbye message that could land mid-message.
        self.obj.polite_close = false;
        drop(Object::take(self.obj));
    }
}

impl Deref for Lent {
    type Target = ServerConn;

    fn deref(&self) -> &ServerConn {
        &self.obj
    }
}

impl DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut ServerConn {
        &mut self.obj
    }
}
