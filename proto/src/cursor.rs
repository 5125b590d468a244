//! The client's retrieve cursor (whitepaper storage §8).
//!
//! Messages are ordered by (timestamp, hash), the timestamp being the accepting member's clock.
//! After a complete polling round at any member whose first page was answered at node time `r`,
//! every message with timestamp `<= r - overlap` has been returned, provided replication reaches
//! every member within D and member clocks agree within S, with `overlap >= D + S`. So the next
//! round may start after `(r - overlap, 0xff…)`; repeats are limited to messages newer than that,
//! and are dropped here by hash. Every page of a round comes from the member that answered its
//! first page: a message filed at different positions on different members (a late replica,
//! §8.3) could otherwise fall between the pages of two members. A round whose member stops
//! answering is abandoned ([`Cursor::restart_round`]) and starts again at another.

use std::collections::HashMap;

use crate::storage::{CursorKey, MessageHash, RetrieveResponse, StoredMessage};
use crate::time::UnixMillis;

/// D + S for the default network parameters (20 s replication bound, 10 s clock skew).
pub const DEFAULT_OVERLAP_MS: u64 = 30_000;

/// Client-side polling state for one mailbox namespace.
#[derive(Debug, Clone)]
pub struct Cursor {
    overlap_ms: u64,
    safe: Option<CursorKey>,
    round: Option<Round>,
    seen: HashMap<MessageHash, UnixMillis>,
}

#[derive(Debug, Clone, Copy)]
struct Round {
    first_now: UnixMillis,
    after: Option<CursorKey>,
}

impl Cursor {
    /// A cursor at the start of the mailbox, for a network whose D + S is `overlap_ms`.
    pub fn new(overlap_ms: u64) -> Self {
        Self {
            overlap_ms,
            safe: None,
            round: None,
            seen: HashMap::new(),
        }
    }

    /// The `after` to send in the next retrieve (to any member).
    pub fn after(&self) -> Option<CursorKey> {
        match self.round {
            Some(r) => r.after,
            None => self.safe,
        }
    }

    /// Everything at or before this key has been delivered (to persist across restarts).
    pub fn safe(&self) -> Option<CursorKey> {
        self.safe
    }

    /// Resumes from a persisted [`Self::safe`] position.
    pub fn resume(overlap_ms: u64, safe: Option<CursorKey>) -> Self {
        Self {
            safe,
            ..Self::new(overlap_ms)
        }
    }

    /// Abandons the round in progress (its member stopped answering): the next retrieve starts
    /// again from [`Self::safe`], at any member. What the round returned is still remembered,
    /// so it is not handed out twice.
    pub fn restart_round(&mut self) {
        self.round = None;
    }

    /// Hashes remembered for dropping repeats.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    /// Takes a page answered at node time `node_now`; returns the messages not seen before.
    pub fn accept(&mut self, node_now: UnixMillis, page: &RetrieveResponse) -> Vec<StoredMessage> {
        let round = self.round.get_or_insert(Round {
            first_now: node_now,
            after: self.safe,
        });
        let mut fresh = Vec::new();
        for m in &page.messages {
            if self.seen.insert(m.hash, m.timestamp).is_none() {
                fresh.push(m.clone());
            }
        }
        match page.messages.last() {
            Some(last) if page.more => round.after = Some(last.key()),
            _ => {
                let candidate =
                    CursorKey::after_time(round.first_now.saturating_sub(self.overlap_ms));
                self.safe = Some(self.safe.map_or(candidate, |s| s.max(candidate)));
                self.round = None;
                // Keys at or before `safe` are never sent again; one extra overlap of margin
                // covers a replica filed late (store `overlap_ms`), at most one overlap later.
                if let Some(safe) = self.safe {
                    let keep_from = safe.timestamp.saturating_sub(self.overlap_ms);
                    self.seen.retain(|_, ts| *ts >= keep_from);
                }
            }
        }
        fresh
    }
}
