//! One anti-entropy pull from one swarm peer (whitepaper storage §9.4) as a sans-I/O state
//! machine. The session decides which request goes next, reads the peer's answers, keeps the
//! byte budget and says whether the pull was complete; the caller sends the requests, runs the
//! local store's reconcile and apply calls the session asks for, and hands the results back.

use std::collections::VecDeque;

use super::{
    Digests, Entry, EntryKey, Item, MAX_ENTRIES, MAX_FETCH, PeerMethod, PeerRequest, PeerResponse,
    Plan,
};

/// Entries asked for per page: the protocol's maximum (2,048 fits a `u16`).
const PAGE: u16 = MAX_ENTRIES as u16;

/// What the caller of a [`Session`] does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this request to the peer and hand its answer to [`Session::handle_response`].
    Send(PeerRequest),
    /// Compare this page of the peer's entries with the local store (by [`Plan::add`] for each
    /// entry of a mailbox this node serves) and hand the plan to [`Session::handle_plan`].
    Reconcile(Vec<Entry>),
    /// Apply these items to the local store, checked as any peer's items are; nothing is handed
    /// back (an item the store refuses is the store's business, not the pull's).
    Apply(Vec<Item>),
    /// The pull is over. `complete` when everything the peer offered was pulled; otherwise the
    /// budget ran out, a fetch answer left keys out, or the session failed.
    Done {
        /// Everything the peer offered was pulled.
        complete: bool,
    },
}

/// Why a session could not take what it was handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The peer answered a request with another method's answer. The session is over.
    #[error("the peer answered {answered:?} to a {asked:?} request")]
    Mismatch {
        /// The method of the request sent.
        asked: PeerMethod,
        /// The method the answer belongs to.
        answered: PeerMethod,
    },
    /// An answer or a plan was handed in while the session waited for something else; the
    /// session is unchanged.
    #[error("{0} handed in when none was awaited")]
    OutOfTurn(&'static str),
}

#[derive(Debug)]
enum State {
    /// This request goes to the peer (again, until its answer is handed in).
    Request(PeerRequest),
    /// This page of the peer's entries waits for the local store's plan.
    Reconcile(Vec<Entry>),
    /// Between exchanges: apply, fetch, or page on.
    Walk,
    /// Over.
    Done { complete: bool },
}

/// One pull from one peer: `root`; if the roots differ, `buckets`; for each differing bucket,
/// `entries` pages in key order, each reconciled against the local store, its items applied
/// and its missing messages fetched [`MAX_FETCH`] keys at a time.
///
/// Drive it by calling [`poll`](Self::poll) and doing what the [`Action`] says until it is
/// [`Action::Done`]. An action that asks for an answer is returned again by `poll` until the
/// answer is handed in, so a caller may retry it.
#[derive(Debug)]
pub struct Session {
    local: Digests,
    /// Message bytes still to fetch; no fetch is sent once it is zero.
    budget: usize,
    complete: bool,
    state: State,
    /// Buckets that differ and are not finished, in order; pages are asked of the first.
    buckets: VecDeque<u8>,
    /// Where the next page of the first bucket starts (`None`: at the bucket's start).
    after: Option<EntryKey>,
    /// The first bucket ends with the page being worked on.
    bucket_done: bool,
    /// Items to apply before the next request.
    apply: Vec<Item>,
    /// Keys of the current page still to fetch.
    fetch: Vec<EntryKey>,
}

impl Session {
    /// A pull against the local store's `local` digests, fetching at most about `budget` bytes
    /// of message data: once the answers have brought that much, no further `fetch` is sent
    /// (the last answer may overshoot it) and the pull ends incomplete.
    pub fn new(local: Digests, budget: usize) -> Self {
        Session {
            local,
            budget,
            complete: true,
            state: State::Request(PeerRequest::Root),
            buckets: VecDeque::new(),
            after: None,
            bucket_done: false,
            apply: Vec::new(),
            fetch: Vec::new(),
        }
    }

    /// What to do next.
    pub fn poll(&mut self) -> Action {
        match &self.state {
            State::Request(r) => Action::Send(r.clone()),
            State::Reconcile(page) => Action::Reconcile(page.clone()),
            State::Done { complete } => Action::Done {
                complete: *complete,
            },
            State::Walk => self.walk(),
        }
    }

    /// Takes the peer's answer to the request last given by [`Action::Send`].
    pub fn handle_response(&mut self, response: PeerResponse) -> Result<(), SessionError> {
        let State::Request(request) = &self.state else {
            return Err(SessionError::OutOfTurn("an answer"));
        };
        let next = match (request, response) {
            (PeerRequest::Root, PeerResponse::Root { root, .. }) => {
                if root == self.local.root() {
                    State::Done { complete: true }
                } else {
                    State::Request(PeerRequest::Buckets)
                }
            }
            (PeerRequest::Buckets, PeerResponse::Buckets(theirs)) => {
                let mine = self.local.truncated();
                // A bucket is the first byte of a mailbox: every `u8`, `BUCKETS` of them.
                self.buckets = (0..=u8::MAX)
                    .filter(|&b| theirs.get(usize::from(b)) != mine.get(usize::from(b)))
                    .collect();
                State::Walk
            }
            (PeerRequest::Entries { .. }, PeerResponse::Entries { entries, more }) => {
                self.after = entries.last().map(|e| e.key);
                // An empty page cannot say where the next would start, whatever `more` says.
                self.bucket_done = !more || self.after.is_none();
                if entries.is_empty() {
                    State::Walk
                } else {
                    State::Reconcile(entries)
                }
            }
            (PeerRequest::Fetch(keys), PeerResponse::Fetched(items)) => {
                // A peer leaves out keys it no longer holds or that pass its answer's size
                // limit; either way this pull did not get everything.
                self.complete &= items.len() == keys.len();
                let bytes: usize = items.iter().map(Item::data_len).sum();
                self.budget = self.budget.saturating_sub(bytes);
                self.apply = items;
                State::Walk
            }
            (request, response) => {
                let err = SessionError::Mismatch {
                    asked: request.method(),
                    answered: response.method(),
                };
                self.state = State::Done { complete: false };
                return Err(err);
            }
        };
        self.state = next;
        Ok(())
    }

    /// Takes the local store's plan for the page last given by [`Action::Reconcile`].
    pub fn handle_plan(&mut self, plan: Plan) -> Result<(), SessionError> {
        if !matches!(self.state, State::Reconcile(_)) {
            return Err(SessionError::OutOfTurn("a plan"));
        }
        self.apply = plan.apply;
        self.fetch = plan.fetch;
        self.state = State::Walk;
        Ok(())
    }

    /// The next step of the walk over differing buckets: items waiting to be applied first,
    /// then the current page's fetches, then the next page or bucket.
    fn walk(&mut self) -> Action {
        if !self.apply.is_empty() {
            return Action::Apply(std::mem::take(&mut self.apply));
        }
        if !self.fetch.is_empty() {
            if self.budget == 0 {
                return self.finish(false);
            }
            let n = self.fetch.len().min(MAX_FETCH);
            let keys = self.fetch.drain(..n).collect();
            return self.request(PeerRequest::Fetch(keys));
        }
        if self.bucket_done {
            self.buckets.pop_front();
            self.after = None;
            self.bucket_done = false;
        }
        match self.buckets.front() {
            Some(&bucket) => self.request(PeerRequest::Entries {
                bucket,
                after: self.after,
                limit: PAGE,
            }),
            None => self.finish(self.complete),
        }
    }

    fn request(&mut self, request: PeerRequest) -> Action {
        self.state = State::Request(request.clone());
        Action::Send(request)
    }

    fn finish(&mut self, complete: bool) -> Action {
        self.state = State::Done { complete };
        Action::Done { complete }
    }
}
