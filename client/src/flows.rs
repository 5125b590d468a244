//! Path sessions for the client's linkable flows (whitepaper onion.md §12.5): the long-poll
//! retrieves of one mailbox and the chunk reads or writes of one attachment, whose destination
//! links their requests anyway. The flow's first request opens a session on its path; later ones go
//! on that path as session packets, which the hops peel without a key agreement. Sends never
//! use this.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use allium_onion::{BuildError, BuiltPacket, PathSession, SizeClass};
use allium_proto::storage::Namespace;
use allium_proto::{Mailbox, NodeId};
use rand_core::OsRng;

use crate::onion::Hop;

/// How long a hop keeps a session (onion.md §12.1).
pub const SESSION_LIFETIME: Duration =
    Duration::from_secs(allium_onion::session::SESSION_LIFETIME_SECS);
/// A session is given up this long before a hop would forget it.
const MARGIN: Duration = Duration::from_secs(30);
/// Flows kept at most; the oldest-ending are dropped first (a client has a few).
const MAX_FLOWS: usize = 256;

/// A run of requests whose destination links them by their content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    /// Retrieves (long-polls) of one namespace of one mailbox, signed by its key.
    Reads(Mailbox, Namespace),
    /// Chunk reads, or the owner's signed chunk writes, of the attachments stored under this
    /// mailbox, one flow per lane of chunks in flight.
    Chunks(Mailbox, u8),
}

#[derive(Debug)]
struct Live {
    destination: NodeId,
    path: Vec<Hop>,
    session: PathSession,
    until: Instant,
    answered: bool,
}

#[derive(Debug, Default)]
struct State {
    live: Option<Live>,
    /// The flow's last session failed on its first packet: no sessions until then.
    plain_until: Option<Instant>,
}

/// How the next request of a flow goes.
#[derive(Debug)]
pub(crate) enum Plan {
    /// On the live session: the packet built on it.
    Session(BuiltPacket),
    /// As an onion packet that opens a session.
    Open,
    /// As an onion packet alone.
    Plain,
}

/// The path sessions of a client's flows.
#[derive(Debug, Default)]
pub(crate) struct Flows {
    states: Mutex<HashMap<Flow, State>>,
}

impl Flows {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Flow, State>> {
        crate::net::lock(&self.states)
    }

    /// The destination and path of `flow`'s live session, if it goes to a member `allowed`.
    pub(crate) fn live_path(
        &self,
        flow: &Flow,
        allowed: impl Fn(&NodeId) -> bool,
    ) -> Option<(NodeId, Vec<Hop>)> {
        let now = Instant::now();
        self.lock()
            .get(flow)
            .and_then(|s| s.live.as_ref())
            .filter(|l| l.until > now && allowed(&l.destination))
            .map(|l| (l.destination, l.path.clone()))
    }

    /// How the next request of `flow` goes on `path`: as the live session's next packet if the
    /// session runs on that path, else as an onion packet opening one (unless the flow's
    /// sessions recently failed at once).
    pub(crate) fn plan(
        &self,
        flow: &Flow,
        path: &[Hop],
        request: &[u8],
        reply_class: SizeClass,
    ) -> Result<Plan, BuildError> {
        let now = Instant::now();
        let mut states = self.lock();
        let Some(state) = states.get_mut(flow) else {
            return Ok(Plan::Open);
        };
        if let Some(live) = state.live.as_mut() {
            let same_path = live.path.len() == path.len()
                && live
                    .path
                    .iter()
                    .zip(path)
                    .all(|(a, b)| a.identity == b.identity);
            if live.until > now && same_path {
                let class = crate::onion::request_class(request);
                match live.session.build(&mut OsRng, request, class, reply_class) {
                    Ok(built) => return Ok(Plan::Session(built)),
                    Err(BuildError::SessionExhausted) => state.live = None,
                    Err(e) => return Err(e),
                }
            } else if live.until <= now {
                state.live = None;
            }
        }
        Ok(match state.plain_until {
            Some(t) if t > now => Plan::Plain,
            _ => Plan::Open,
        })
    }

    /// Keeps the session an opening packet to `destination` on `path` set up; it is used until
    /// `lifetime` (as the hops keep it) less a margin.
    pub(crate) fn opened(
        &self,
        flow: Flow,
        destination: NodeId,
        path: Vec<Hop>,
        session: PathSession,
        lifetime: Duration,
    ) {
        let now = Instant::now();
        let until = now + lifetime.min(SESSION_LIFETIME).saturating_sub(MARGIN);
        let mut states = self.lock();
        if states.len() >= MAX_FLOWS && !states.contains_key(&flow) {
            states.retain(|_, s| s.live.as_ref().is_some_and(|l| l.until > now));
            if states.len() >= MAX_FLOWS {
                return;
            }
        }
        states.entry(flow).or_default().live = Some(Live {
            destination,
            path,
            session,
            until,
            answered: false,
        });
    }

    /// A session packet of `flow` was answered.
    pub(crate) fn answered(&self, flow: &Flow) {
        if let Some(live) = self.lock().get_mut(flow).and_then(|s| s.live.as_mut()) {
            live.answered = true;
        }
    }

    /// A session packet of `flow` failed: the session is dropped; if it never carried a packet
    /// the flow goes without sessions for a session's lifetime (a hop declines to keep them).
    pub(crate) fn failed(&self, flow: &Flow) {
        let mut states = self.lock();
        if let Some(state) = states.get_mut(flow) {
            if state.live.take().is_some_and(|l| !l.answered) {
                state.plain_until = Some(Instant::now() + SESSION_LIFETIME);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allium_onion::{Epoch, IdentityKeypair, OnionSecretKey, PathHop, prepare_path};

    /// A path of `n` hops and a session opened on it.
    fn opened_path(n: usize) -> (Vec<Hop>, PathSession) {
        let hops: Vec<Hop> = (0..n)
            .map(|i| Hop {
                identity: IdentityKeypair::generate(&mut OsRng).public(),
                addr: ([127, 0, 0, 1], 9000 + i as u16).into(),
                epoch: Epoch(5),
                onion_key: *OnionSecretKey::generate(Epoch(5), &mut OsRng).public(),
            })
            .collect();
        let path: Vec<PathHop> = hops.iter().map(Hop::path_hop).collect();
        let (_, session) = prepare_path(&mut OsRng, &path)
            .unwrap()
            .build_opening(b"open", SizeClass::Small, SizeClass::Small)
            .unwrap();
        (hops, session)
    }

    fn flow(b: u8) -> Flow {
        Flow::Chunks(Mailbox::from_bytes([b; 32]), 0)
    }

    /// Records `session`, opened on `path`, for flow `f` with `lifetime` left at its hops;
    /// returns the path's destination.
    fn open_on(
        flows: &Flows,
        f: Flow,
        path: &[Hop],
        session: PathSession,
        lifetime: Duration,
    ) -> NodeId {
        let destination = path[path.len() - 1].identity.node_id();
        flows.opened(f, destination, path.to_vec(), session, lifetime);
        destination
    }

    #[test]
    fn a_flow_opens_a_session_then_sends_on_it_on_its_path_only() {
        let flows = Flows::default();
        let (path, session) = opened_path(4);
        assert!(matches!(
            flows.plan(&flow(1), &path, b"x", SizeClass::Small),
            Ok(Plan::Open)
        ));
        let destination = open_on(&flows, flow(1), &path, session, SESSION_LIFETIME);
        assert_eq!(
            flows
                .live_path(&flow(1), |_| true)
                .map(|(d, p)| (d, p.len())),
            Some((destination, 4))
        );
        assert!(flows.live_path(&flow(1), |n| *n != destination).is_none());
        match flows.plan(&flow(1), &path, b"x", SizeClass::Small) {
            Ok(Plan::Session(built)) => assert_eq!(built.packet[0], 2, "a session packet"),
            other => panic!("expected a session packet, got {other:?}"),
        }
        // Another path: a new session is opened there; another flow has none.
        let (other_path, _) = opened_path(4);
        assert!(matches!(
            flows.plan(&flow(1), &other_path, b"x", SizeClass::Small),
            Ok(Plan::Open)
        ));
        assert!(matches!(
            flows.plan(&flow(2), &path, b"x", SizeClass::Small),
            Ok(Plan::Open)
        ));
    }

    #[test]
    fn a_session_that_fails_at_once_sends_its_flow_plain_and_one_that_worked_reopens() {
        let flows = Flows::default();
        let (path, session) = opened_path(2);
        open_on(&flows, flow(1), &path, session, SESSION_LIFETIME);
        flows.failed(&flow(1));
        assert!(flows.live_path(&flow(1), |_| true).is_none());
        assert!(matches!(
            flows.plan(&flow(1), &path, b"x", SizeClass::Small),
            Ok(Plan::Plain)
        ));

        let (path, session) = opened_path(2);
        open_on(&flows, flow(2), &path, session, SESSION_LIFETIME);
        assert!(matches!(
            flows.plan(&flow(2), &path, b"x", SizeClass::Small),
            Ok(Plan::Session(_))
        ));
        flows.answered(&flow(2));
        flows.failed(&flow(2));
        assert!(matches!(
            flows.plan(&flow(2), &path, b"x", SizeClass::Small),
            Ok(Plan::Open)
        ));
    }

    #[test]
    fn a_session_about_to_be_forgotten_is_not_used() {
        let flows = Flows::default();
        let (path, session) = opened_path(3);
        // The hops forget it in 20 s (their epoch's key goes): less than the margin.
        open_on(&flows, flow(1), &path, session, Duration::from_secs(20));
        assert!(flows.live_path(&flow(1), |_| true).is_none());
        assert!(matches!(
            flows.plan(&flow(1), &path, b"x", SizeClass::Small),
            Ok(Plan::Open)
        ));
    }
}
