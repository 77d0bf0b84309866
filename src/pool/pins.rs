//! Servers pinned to clients, counted per pool over all its worker shares, so a limit
//! (max_pinned_servers) keeps part of every pool multiplexed for everyone else.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct PinSlots {
    pinned: AtomicUsize,
}

impl PinSlots {
    pub fn count(&self) -> usize {
        self.pinned.load(Ordering::Acquire)
    }

    /// A slot, if fewer than `limit` are taken.
    pub fn try_reserve(self: &Arc<Self>, limit: usize) -> Option<PinSlot> {
        self.pinned
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(PinSlot(self.clone()))
    }

    /// A slot whatever the limit: for state found only after it was made.
    pub fn force(self: &Arc<Self>) -> PinSlot {
        self.pinned.fetch_add(1, Ordering::AcqRel);
        PinSlot(self.clone())
    }
}

/// One pinned (or about to be pinned) server; the count drops with it.
#[derive(Debug)]
pub struct PinSlot(Arc<PinSlots>);

impl Drop for PinSlot {
    fn drop(&mut self) {
        self.0.pinned.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_until_a_slot_is_given_back() {
        let slots = Arc::new(PinSlots::default());
        let a = slots.try_reserve(2).unwrap();
        let _b = slots.try_reserve(2).unwrap();
        assert!(slots.try_reserve(2).is_none());
        let forced = slots.force();
        assert_eq!(slots.count(), 3);
        drop(a);
        drop(forced);
        assert!(slots.try_reserve(2).is_some());
    }
}
