//! State the account's devices share (`whitepaper/devices.md` §8): contacts, their names and
//! verification, read positions and device names, carried as records sealed with the sync key
//! in the account's owner namespace (1) and merged as registers
//! ([`crate::devices::sync`]). One round reads every record and merges it, takes in the edits
//! the person made to the address book since, publishes what this device changed, compacts when
//! due, and writes the merged address book back.

use std::str::FromStr;

use allium_proto::MessageHash;
use allium_proto::storage::OWNER;
use rand_core::OsRng;

use super::{Messenger, MessengerError};
use crate::devices::sync::{self, Contact, SyncState};
use crate::identity::Address;
use crate::net::Net;
use crate::state::{Contacts, SYNC_FILE};

/// A snapshot older than this is written again (§8.3).
pub const SNAPSHOT_EVERY_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// More records than this in the namespace are compacted into a snapshot (§8.3).
pub const MAX_RECORDS: usize = 16;

/// What one round of [`Messenger::sync_shared`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Records read from the namespace.
    pub read: usize,
    /// Records that did not open under the sync key or did not decode (skipped).
    pub unreadable: usize,
    /// Entries another device changed.
    pub merged: usize,
    /// Records this device stored.
    pub stored: usize,
    /// Records deleted after a snapshot took them in.
    pub compacted: usize,
}

/// The address book as entries: names by account key, and the safety numbers confirmed.
fn book_contacts(book: &Contacts) -> Vec<Contact> {
    book.iter()
        .filter_map(|(name, address)| {
            let a = Address::from_str(address).ok()?;
            Some(Contact {
                name: name.to_owned(),
                account: a.public_key().to_bytes(),
                verified: book.verified(name).map(str::to_owned),
            })
        })
        .collect()
}

/// The address book the merged state names.
fn book_of(contacts: &[Contact]) -> Contacts {
    let mut book = Contacts::new();
    for c in contacts {
        let Ok(a) = Address::from_key_bytes(&c.account) else {
            continue;
        };
        if book.add(&c.name, &a.to_string()).is_ok() {
            if let Some(v) = &c.verified {
                let _ = book.set_verified(&c.name, v);
            }
        }
    }
    book
}

impl Messenger {
    /// This device's copy of the shared state (`sync.bin`); empty if there is none yet.
    pub(crate) fn load_sync(&self) -> Result<SyncState, MessengerError> {
        match self
            .dir
            .read_private(SYNC_FILE, crate::state::MAX_SYNC_BYTES)?
        {
            None => Ok(SyncState::new()),
            Some(bytes) => SyncState::decode(&bytes).map_err(|source| MessengerError::Shared {
                file: SYNC_FILE,
                source,
            }),
        }
    }

    pub(crate) fn save_sync(&self, state: &SyncState) -> Result<(), MessengerError> {
        Ok(self.dir.write_private(SYNC_FILE, &state.encode())?)
    }

    /// Moves the read position of the conversation with `peer` to the message `(sent_ms,
    /// msg_id)` (never back); the next [`Self::sync_shared`] publishes it.
    pub fn mark_read(
        &self,
        peer: &Address,
        sent_ms: u64,
        msg_id: &[u8; 16],
        now: u64,
    ) -> Result<bool, MessengerError> {
        let mut state = self.load_sync()?;
        let device = self.account.device().cert().device_id();
        let changed = state
            .mark_read(&peer.public_key().to_bytes(), sent_ms, msg_id, now, device)
            .map_err(MessengerError::Device)?;
        if changed {
            self.save_sync(&state)?;
        }
        Ok(changed)
    }

    /// The read position of the conversation with `peer`, as the account's devices agree on it.
    pub fn read_position(&self, peer: &Address) -> Result<Option<(u64, [u8; 16])>, MessengerError> {
        Ok(self
            .load_sync()?
            .read_position(&peer.public_key().to_bytes()))
    }

    /// One round of the shared state (§8.3): takes in the person's edits to the address book
    /// as this device's, reads and merges every record of the owner namespace, publishes what
    /// this device changed, stores a snapshot and deletes the records it replaces when the
    /// newest snapshot is older than 7 days or there are more than 16 records, and writes the
    /// merged address book back. The state file is saved before the address book, so a crash
    /// in between repeats nothing but the write of the address book.
    pub async fn sync_shared(&mut self, net: &Net) -> Result<SyncReport, MessengerError> {
        let now = net.now_ms();
        let device = self.account.device().cert().device_id();
        let mut state = self.load_sync()?;
        let book = self.dir.contacts()?;
        // Edits made since the last round (by `allium contacts`, or another program) come
        // first, so what others changed meanwhile is merged over the old state, not lost.
        state
            .absorb_contacts(&book_contacts(&book), now, device)
            .map_err(MessengerError::Device)?;
        let key = self.account.signing_key()?;
        let mailbox = self.account.mailbox();
        let sync_key = *self.account.sync_key();
        let records = net.retrieve_all(&mailbox, OWNER, &*key).await?;
        let mut report = SyncReport {
            read: records.len(),
            ..SyncReport::default()
        };
        let mut newest_snapshot: Option<u64> = None;
        let mut read: Vec<MessageHash> = Vec::with_capacity(records.len());
        for m in &records {
            match sync::open_record(&sync_key, &m.data) {
                Ok(r) => {
                    if r.snapshot {
                        newest_snapshot = newest_snapshot.max(Some(m.timestamp));
                    }
                    report.merged += state.merge_all(r.entries);
                    read.push(m.hash);
                }
                // Anyone with the account's delegation could write here; only what opens
                // under the sync key counts. What does not is left alone.
                Err(_) => report.unreadable += 1,
            }
        }
        let pending = state.pending();
        let ttl_ms = net.network().params.max_ttl_secs.saturating_mul(1000);
        let due = newest_snapshot.is_none_or(|t| now.saturating_sub(t) >= SNAPSHOT_EVERY_MS)
            || read.len() > MAX_RECORDS;
        let has_state = state.entries().next().is_some();
        if due && has_state {
            let all: Vec<_> = state.entries().map(|(k, e)| (*k, e.clone())).collect();
            for record in sync::seal_records(&sync_key, true, &all, &mut OsRng)
                .map_err(MessengerError::Device)?
            {
                net.store_in(&mailbox, OWNER, ttl_ms, record, Some(&*key))
                    .await?;
                report.stored += 1;
            }
            state.published(&all);
            self.save_sync(&state)?;
            // Everything read is in the snapshot; a record stored meanwhile was not read and
            // stays.
            for chunk in read.chunks(256) {
                report.compacted += net.delete(&mailbox, OWNER, chunk.to_vec(), &*key).await?;
            }
        } else if !pending.is_empty() {
            for record in sync::seal_records(&sync_key, false, &pending, &mut OsRng)
                .map_err(MessengerError::Device)?
            {
                net.store_in(&mailbox, OWNER, ttl_ms, record, Some(&*key))
                    .await?;
                report.stored += 1;
            }
            state.published(&pending);
        }
        self.save_sync(&state)?;
        let merged_book = book_of(&state.contacts());
        if book_contacts(&merged_book) != book_contacts(&book) {
            self.dir.save_contacts(&merged_book)?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::identity::Identity;

    #[test]
    fn the_address_book_round_trips_through_contacts() {
        let carol = Identity::from_seed(&[3; 32]).address();
        let dave = Identity::from_seed(&[4; 32]).address();
        let mut book = Contacts::new();
        book.add("carol", &carol.to_string()).unwrap();
        book.add("dave", &dave.to_string()).unwrap();
        book.set_verified("dave", &"1".repeat(60)).unwrap();
        let contacts = book_contacts(&book);
        assert_eq!(contacts.len(), 2);
        assert_eq!(book_contacts(&book_of(&contacts)), contacts);
    }

    /// Two devices rename one contact without seeing each other's edit; after each has merged
    /// the other's records they hold the same name, whichever order they merged in.
    #[test]
    fn concurrent_renames_converge() {
        let carol = Identity::from_seed(&[3; 32]).address();
        let named = |name: &str| {
            vec![Contact {
                name: name.into(),
                account: carol.public_key().to_bytes(),
                verified: None,
            }]
        };
        let mut a = SyncState::new();
        a.absorb_contacts(&named("carol"), 1_000, 1).unwrap();
        let mut b = a.clone();
        a.absorb_contacts(&named("caro"), 2_000, 1).unwrap();
        b.absorb_contacts(&named("carrie"), 2_000, 2).unwrap();
        let (pa, pb) = (a.pending(), b.pending());
        a.merge_all(pb);
        b.merge_all(pa);
        assert_eq!(a.contacts(), b.contacts());
        assert_eq!(
            a.contacts()[0].name,
            "carrie",
            "equal times: the larger device id"
        );
    }
}
