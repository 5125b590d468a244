//! Long-poll wake-ups (whitepaper §4.2, §7): a retrieve that found nothing registers a [`Watch`] on
//! its mailbox namespace, and the writer wakes every watch of a namespace once a message for it
//! is durable. An async waiter ([`Watch::changed`]) holds no thread while it waits, so any number
//! of parked long-polls leave the runtime's blocking threads to stores and reads.
//!
//! The table is bounded (`StoreConfig::max_waiters`); once full, [`Store::watch`] refuses with
//! [`StoreError::TooManyWaiters`] and the service answers that retrieve at once instead of
//! parking it (the MAY of §4.2): the client polls again. Honest clients are served, if more
//! slowly, while someone holds the table full (BAD_INPUTS 27); which waiters get the slots is
//! the hardening issue's policy.
//!
//! [`Store::watch`]: super::Store::watch

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use allium_proto::storage::{Mailbox, Namespace};

use super::error::StoreError;
use super::lock;

#[derive(Debug, Default)]
struct Slot {
    /// Bumped once per durable group that stored a message here.
    generation: Mutex<u64>,
    /// Wakes blocking waiters ([`Watch::wait_timeout`]).
    cv: Condvar,
    /// Wakes async waiters ([`Watch::changed`]).
    notify: Notify,
    waiters: AtomicU64,
}

/// Slots by (mailbox, namespace), and the number of registered watches.
type SlotMap = (HashMap<(Mailbox, Namespace), Arc<Slot>>, usize);

#[derive(Debug, Default)]
pub(super) struct Waiters {
    slots: Mutex<SlotMap>,
    max: usize,
}

impl Waiters {
    pub(super) fn new(max: usize) -> Self {
        Waiters {
            slots: Mutex::default(),
            max,
        }
    }

    /// Registers a watch on `key`, unless `max` are registered already.
    pub(super) fn watch(self: &Arc<Self>, key: (Mailbox, Namespace)) -> Result<Watch, StoreError> {
        let mut slots = lock(&self.slots);
        if slots.1 >= self.max {
            return Err(StoreError::TooManyWaiters);
        }
        slots.1 += 1;
        let slot = Arc::clone(slots.0.entry(key).or_default());
        slot.waiters.fetch_add(1, Ordering::SeqCst);
        let seen = *lock(&slot.generation);
        Ok(Watch {
            waiters: Arc::clone(self),
            key,
            slot,
            seen,
        })
    }

    pub(super) fn notify(&self, keys: &HashSet<(Mailbox, Namespace)>) {
        let slots = lock(&self.slots);
        for k in keys {
            if let Some(slot) = slots.0.get(k) {
                *lock(&slot.generation) += 1;
                slot.cv.notify_all();
                slot.notify.notify_waiters();
            }
        }
    }
}

/// A registration for "a new message arrived in this mailbox namespace". Register before reading,
/// then wait: a message stored in between is not missed. Dropping it unregisters.
pub struct Watch {
    waiters: Arc<Waiters>,
    key: (Mailbox, Namespace),
    slot: Arc<Slot>,
    seen: u64,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("namespace", &self.key.1)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// True once a message was stored since the watch was registered.
    pub fn is_notified(&self) -> bool {
        *lock(&self.slot.generation) != self.seen
    }

    /// Resolves once a message was stored since the watch was registered (at once if one was
    /// already). Holds no thread while it waits; dropping the future (a time-out) is safe.
    pub async fn changed(&self) {
        let notified = self.slot.notify.notified();
        let mut notified = std::pin::pin!(notified);
        loop {
            // Registered before the check: a store landing between the check and the await
            // still wakes this future.
            notified.as_mut().enable();
            if self.is_notified() {
                return;
            }
            notified.as_mut().await;
            notified.set(self.slot.notify.notified());
        }
    }

    /// Blocks until a message is stored or `timeout` passes; true if one was stored. For
    /// synchronous callers; async code awaits [`Self::changed`].
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let g = lock(&self.slot.generation);
        let (g, _) = self
            .slot
            .cv
            .wait_timeout_while(g, timeout, |g| *g == self.seen)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *g != self.seen
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut slots = lock(&self.waiters.slots);
        slots.1 = slots.1.saturating_sub(1);
        if self.slot.waiters.fetch_sub(1, Ordering::SeqCst) == 1 {
            slots.0.remove(&self.key);
        }
    }
}
