//! Request authentication: the signature check, the time window and the replay cache
//! (whitepaper §3).

use std::collections::{BTreeSet, HashSet};

use crate::crypto;
use crate::error::AuthError;
use crate::storage::{DEVICES, DecodedRequest, Mailbox, NodeId};
use crate::time::UnixMillis;

/// A signed request is accepted while its timestamp is within this many ms of the node's clock.
pub const SIGNATURE_WINDOW_MS: u64 = 60_000;
/// Default number of signed requests the replay cache remembers (about 80 bytes each).
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

/// Remembers every signed request accepted inside the window, so a second copy is refused.
///
/// Memory is bounded by `capacity`; when full of still-valid entries, new signed requests are
/// refused (`CacheFull` → `Busy`) rather than let a replay through. A request is forgotten only
/// once its timestamp is outside the window for good: the window's lower edge follows the highest
/// `now` ever seen, so a backward clock step cannot readmit a forgotten request.
///
/// The cache lives in memory only. A node that restarts has forgotten what it accepted, so it
/// refuses every request signed before it started ([`ReplayCache::refuse_before`]): a request
/// it may have executed in an earlier run can then never run again (whitepaper storage §3).
#[derive(Debug)]
pub struct ReplayCache {
    window_ms: u64,
    capacity: usize,
    keys: HashSet<[u8; 32]>,
    by_time: BTreeSet<(UnixMillis, [u8; 32])>,
    high_water: UnixMillis,
    not_before: UnixMillis,
}

impl ReplayCache {
    /// A cache for a ±`window_ms` window holding at most `capacity` requests.
    pub fn new(window_ms: u64, capacity: usize) -> Self {
        Self {
            window_ms,
            capacity,
            keys: HashSet::new(),
            by_time: BTreeSet::new(),
            high_water: 0,
            not_before: 0,
        }
    }

    /// Refuses, as outside the window, every request timestamped before `start`: the node's
    /// time when this cache was made, so requests of an earlier run, which it no longer
    /// remembers, cannot be replayed.
    pub fn refuse_before(&mut self, start: UnixMillis) {
        self.not_before = self.not_before.max(start);
    }

    /// Requests currently remembered.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `timestamp` against the window at node time `now` (advancing the high-water mark).
    pub fn check_window(
        &mut self,
        timestamp: UnixMillis,
        now: UnixMillis,
    ) -> Result<(), AuthError> {
        self.high_water = self.high_water.max(now);
        let too_old = timestamp.saturating_add(self.window_ms) < self.high_water
            || timestamp < self.not_before;
        let too_new = timestamp > now.saturating_add(self.window_ms);
        if too_old || too_new {
            Err(AuthError::ClockSkew)
        } else {
            Ok(())
        }
    }

    /// Records a request with `timestamp` (already window-checked); refuses one seen before.
    pub fn insert(&mut self, key: [u8; 32], timestamp: UnixMillis) -> Result<(), AuthError> {
        self.prune();
        if self.keys.contains(&key) {
            return Err(AuthError::Replayed);
        }
        if self.keys.len() >= self.capacity {
            return Err(AuthError::CacheFull);
        }
        self.keys.insert(key);
        self.by_time.insert((timestamp, key));
        Ok(())
    }

    fn prune(&mut self) {
        while let Some(&(ts, key)) = self.by_time.first() {
            if ts.saturating_add(self.window_ms) >= self.high_water {
                break;
            }
            self.by_time.pop_first();
            self.keys.remove(&key);
        }
    }
}

/// Authenticates `req` for the node `node` at node time `now`, accepting no delegate.
pub fn authenticate(
    req: &DecodedRequest,
    node: &NodeId,
    now: UnixMillis,
    cache: &mut ReplayCache,
) -> Result<(), AuthError> {
    authenticate_with(req, node, now, cache, |_, _| false)
}

/// Authenticates `req` for the node `node` at node time `now`.
///
/// Methods without an auth target must carry no signature; the others must carry one that
/// verifies, with a timestamp inside the window, not seen before. The signature is by the mailbox
/// key, or by a `signer` for which `delegated(mailbox, signer)` says the node holds a live
/// delegation record (storage.md §3); a signer never acts on the delegation namespace, and a
/// signer equal to the mailbox is malformed (one request, one encoding). Checks run cheapest
/// first; the replay cache only records requests whose signature verified and whose signer is
/// delegated, so neither forgeries nor keys made up on the spot can fill it.
pub fn authenticate_with(
    req: &DecodedRequest,
    node: &NodeId,
    now: UnixMillis,
    cache: &mut ReplayCache,
    delegated: impl FnOnce(&Mailbox, &[u8; 32]) -> bool,
) -> Result<(), AuthError> {
    let body = &req.request.body;
    let (mailbox, namespace, auth) = match (body.auth_target(), &req.request.auth) {
        (None, None) => return Ok(()),
        (None, Some(_)) => return Err(AuthError::Unexpected),
        (Some(_), None) => return Err(AuthError::Missing),
        (Some((m, ns)), Some(a)) => (m, ns, a),
    };
    cache.check_window(auth.timestamp, now)?;
    let signed = crypto::signed_data(
        body.method().id(),
        &mailbox,
        namespace,
        auth.timestamp,
        node,
        &req.digest,
    );
    match &auth.signer {
        None => {
            if !crypto::verify(&mailbox, &signed, &auth.signature) {
                return Err(AuthError::BadSignature);
            }
        }
        Some(signer) if signer == mailbox.as_bytes() => return Err(AuthError::Unexpected),
        Some(signer) => {
            let key = Mailbox::from_bytes(*signer);
            if !crypto::verify(&key, &signed, &auth.signature) || namespace == DEVICES {
                return Err(AuthError::BadSignature);
            }
            if !delegated(&mailbox, signer) {
                return Err(AuthError::NotDelegated);
            }
        }
    }
    cache.insert(crypto::replay_key(&signed), auth.timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{
        Body, INBOX, Mailbox, OWNER, PUBLIC, Request, RetrieveRequest, StoreRequest,
    };
    use ed25519_dalek::SigningKey;

    fn decoded(r: &Request) -> DecodedRequest {
        Request::decode(&r.encode()).unwrap()
    }

    /// storage.md §4.3: who signs what, by namespace alone.
    #[test]
    fn namespaces_decide_who_signs() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mailbox = Mailbox::from_bytes(key.verifying_key().to_bytes());
        let node = NodeId::from_bytes([9; 32]);
        let now = 1_000_000;
        let retrieve = |namespace| {
            Body::Retrieve(RetrieveRequest {
                mailbox,
                namespace,
                after: None,
                limit: None,
                wait_ms: None,
            })
        };
        let store = |namespace| {
            Body::Store(StoreRequest {
                mailbox,
                namespace,
                ttl_ms: 60_000,
                data: vec![1],
            })
        };
        let check =
            |r: Request| authenticate(&decoded(&r), &node, now, &mut ReplayCache::new(60_000, 10));
        // Anyone reads the public namespace, unsigned; a signature there is malformed.
        assert_eq!(check(Request::unsigned(retrieve(PUBLIC))), Ok(()));
        let mut with_auth = Request::signed(retrieve(INBOX), &key, &node, now);
        with_auth.body = retrieve(PUBLIC);
        assert_eq!(check(with_auth), Err(AuthError::Unexpected));
        // Only the owner writes it, and reads every other namespace.
        assert_eq!(
            check(Request::unsigned(store(PUBLIC))),
            Err(AuthError::Missing)
        );
        assert_eq!(
            check(Request::signed(store(PUBLIC), &key, &node, now)),
            Ok(())
        );
        for ns in [INBOX, OWNER, 5] {
            assert_eq!(
                check(Request::unsigned(retrieve(ns))),
                Err(AuthError::Missing)
            );
            assert_eq!(
                check(Request::signed(retrieve(ns), &key, &node, now)),
                Ok(())
            );
        }
        // Anyone deposits into the inbox, unsigned.
        assert_eq!(check(Request::unsigned(store(INBOX))), Ok(()));
        assert_eq!(
            check(Request::unsigned(store(OWNER))),
            Err(AuthError::Missing)
        );
    }

    /// storage.md §3: a delegate signs for the mailbox only while delegated, never in the
    /// delegation namespace, and a signer that is the mailbox itself is malformed.
    #[test]
    fn delegates_sign_only_while_delegated() {
        let owner = SigningKey::from_bytes(&[7; 32]);
        let device = SigningKey::from_bytes(&[8; 32]);
        let mailbox = Mailbox::from_bytes(owner.verifying_key().to_bytes());
        let signer = device.verifying_key().to_bytes();
        let node = NodeId::from_bytes([9; 32]);
        let now = 1_000_000;
        let body = |namespace| {
            Body::Retrieve(RetrieveRequest {
                mailbox,
                namespace,
                after: None,
                limit: None,
                wait_ms: None,
            })
        };
        let check = |r: &Request, yes: bool| {
            authenticate_with(
                &decoded(r),
                &node,
                now,
                &mut ReplayCache::new(60_000, 10),
                |m, s| yes && *m == mailbox && *s == signer,
            )
        };
        let by_device = Request::signed_by_delegate(body(INBOX), &device, &node, now);
        assert_eq!(check(&by_device, true), Ok(()));
        assert_eq!(check(&by_device, false), Err(AuthError::NotDelegated));
        // The delegation namespace is the owner's alone.
        let ns3 = Request::signed_by_delegate(body(DEVICES), &device, &node, now);
        assert_eq!(check(&ns3, true), Err(AuthError::BadSignature));
        assert_eq!(
            check(&Request::signed(body(DEVICES), &owner, &node, now), false),
            Ok(())
        );
        // Another key than the signer named: unauthorized, delegated or not.
        let mut forged = Request::signed(body(INBOX), &owner, &node, now);
        if let Some(a) = forged.auth.as_mut() {
            a.signer = Some(signer);
        }
        assert_eq!(check(&forged, true), Err(AuthError::BadSignature));
        // The owner naming itself as signer: one request, one encoding.
        let mut redundant = Request::signed(body(INBOX), &owner, &node, now);
        if let Some(a) = redundant.auth.as_mut() {
            a.signer = Some(mailbox.to_bytes());
        }
        assert_eq!(check(&redundant, true), Err(AuthError::Unexpected));
        // A refused delegate fills no replay slot.
        let mut cache = ReplayCache::new(60_000, 10);
        let r = decoded(&by_device);
        assert_eq!(
            authenticate_with(&r, &node, now, &mut cache, |_, _| false),
            Err(AuthError::NotDelegated)
        );
        assert!(cache.is_empty());
    }

    #[test]
    fn window_edges_are_inclusive() {
        let mut c = ReplayCache::new(60_000, 10);
        let now = 1_000_000;
        assert_eq!(c.check_window(now - 60_000, now), Ok(()));
        assert_eq!(c.check_window(now + 60_000, now), Ok(()));
        assert_eq!(c.check_window(now - 60_001, now), Err(AuthError::ClockSkew));
        assert_eq!(c.check_window(now + 60_001, now), Err(AuthError::ClockSkew));
    }

    #[test]
    fn backward_clock_step_keeps_old_requests_out() {
        let mut c = ReplayCache::new(60_000, 10);
        c.check_window(100_000, 100_000).unwrap();
        c.insert([1; 32], 100_000).unwrap();
        // Time passes beyond the window: the entry may be forgotten…
        assert_eq!(c.check_window(100_000, 200_000), Err(AuthError::ClockSkew));
        c.insert([2; 32], 190_000).unwrap();
        assert_eq!(c.len(), 1);
        // …and after the clock steps back, the forgotten request is still refused.
        assert_eq!(c.check_window(100_000, 120_000), Err(AuthError::ClockSkew));
    }

    #[test]
    fn requests_signed_before_a_restart_are_refused() {
        // The first run executed a request signed at 100 s and was killed at 110 s.
        let mut first = ReplayCache::new(60_000, 10);
        first.check_window(100_000, 105_000).unwrap();
        first.insert([1; 32], 100_000).unwrap();
        // The restarted node remembers nothing of it, but its window starts at its start.
        let mut restarted = ReplayCache::new(60_000, 10);
        restarted.refuse_before(120_000);
        assert_eq!(
            restarted.check_window(100_000, 120_000),
            Err(AuthError::ClockSkew)
        );
        assert_eq!(
            restarted.check_window(119_999, 121_000),
            Err(AuthError::ClockSkew)
        );
        // A request signed after the start is taken, so a client that re-signs at the node's
        // time gets through.
        assert_eq!(restarted.check_window(120_000, 121_000), Ok(()));
        restarted.insert([1; 32], 120_000).unwrap();
    }

    #[test]
    fn capacity_is_a_hard_bound() {
        let mut c = ReplayCache::new(60_000, 2);
        c.check_window(1_000, 1_000).unwrap();
        c.insert([1; 32], 1_000).unwrap();
        c.insert([2; 32], 1_000).unwrap();
        assert_eq!(c.insert([3; 32], 1_000), Err(AuthError::CacheFull));
        assert_eq!(c.insert([1; 32], 1_000), Err(AuthError::Replayed));
        // Once the entries age out of the window, there is room again.
        c.check_window(62_000, 62_000).unwrap();
        c.insert([3; 32], 62_000).unwrap();
        assert_eq!(c.len(), 1);
    }
}
