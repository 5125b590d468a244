//! Fetching a signed roster in pages with the `roster_page` method (whitepaper roster.md §4.4,
//! storage.md §4.6). Transport-free: the caller says how one request reaches a node (through
//! an onion path, in the client) and this module assembles the pages, notices a roster that
//! changed between them and starts again. Nothing here trusts the node: the caller verifies the
//! assembled bytes whole (roster.md §4.2).

use std::future::Future;

use allium_proto::storage::{
    PageOf, RosterPageRequest, RosterPageResponse, roster_page_len, roster_pages,
};
use allium_proto::{Response, ResponseBody, Status};
use futures_util::stream::{self, StreamExt};

/// Pages asked for at once after the first: enough to overlap a few round trips, few enough
/// that one client's fetch stays a handful of large packets in flight on its path.
pub const PAGES_AT_ONCE: usize = 4;
/// Times a fetch starts again because the node's roster changed between its pages; a new
/// version is published every few seconds at most, so more means something is wrong.
pub const MAX_RESTARTS: usize = 3;

/// Why a paged fetch gave no roster.
#[derive(Debug, thiserror::Error)]
pub enum PageError<E> {
    /// A request did not reach the node or its answer did not come back.
    #[error("{0}")]
    Transport(E),
    /// The node refused (`busy`: it holds no roster yet).
    #[error("the node refused: {0:?}")]
    Refused(Status),
    /// The node's answers do not fit together (a wrong page, another length): ask another node.
    #[error("the node's pages are inconsistent: {0}")]
    Inconsistent(&'static str),
    /// The node's roster changed between pages more than [`MAX_RESTARTS`] times.
    #[error("the node's roster kept changing during the fetch")]
    KeepsChanging,
}

/// A roster fetched in pages: its version as the node claimed it, and its signed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The version the node's answers named (the verified roster says the real one).
    pub version: u64,
    /// The signed roster, every page in order.
    pub signed: Vec<u8>,
    /// `roster_page` requests made, restarts included.
    pub requests: usize,
}

fn page_of<E>(response: Response, page: u32) -> Result<RosterPageResponse, PageError<E>> {
    match response.result {
        Ok(ResponseBody::RosterPage(r)) if r.page == page => Ok(r),
        Ok(_) => Err(PageError::Inconsistent(
            "an answer for another page or method",
        )),
        Err(status) => Err(PageError::Refused(status)),
    }
}

/// Fetches the node's signed roster through `ask`, one `roster_page` request per call.
/// Holding version `held`, the first request asks for page 0 only if the node's roster is newer,
/// and `Ok(None)` means it is not (one small answer); without one, page 0 of whatever it holds.
/// The other pages are asked for [`PAGES_AT_ONCE`] at a time, each only of the version page 0
/// named: an answer naming another version means the roster changed meanwhile, and the fetch
/// starts again from page 0.
pub async fn fetch_roster<E, F, Fut>(
    held: Option<u64>,
    ask: F,
) -> Result<Option<Fetched>, PageError<E>>
where
    F: Fn(RosterPageRequest) -> Fut,
    Fut: Future<Output = Result<Response, E>>,
{
    let mut requests = 0;
    for _ in 0..=MAX_RESTARTS {
        let of = held.map_or(PageOf::Held, PageOf::NewerThan);
        requests += 1;
        let first = page_of(
            ask(RosterPageRequest { page: 0, of })
                .await
                .map_err(PageError::Transport)?,
            0,
        )?;
        let Some(bytes) = first.bytes else {
            return match held {
                Some(_) => Ok(None),
                None => Err(PageError::Inconsistent("no first page")),
            };
        };
        let (version, total) = (first.version, first.total);
        // The decoder bounds `total` by the largest signed roster, so this allocation is too.
        let count = roster_pages(total);
        let mut signed = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        signed.extend_from_slice(&bytes);
        let mut answers = stream::iter(1..count)
            .map(|page| {
                let page = u32::try_from(page).unwrap_or(u32::MAX);
                let request = RosterPageRequest {
                    page,
                    of: PageOf::Version(version),
                };
                let asked = ask(request);
                async move { (page, asked.await) }
            })
            .buffered(PAGES_AT_ONCE);
        let mut changed = false;
        while let Some((page, answer)) = answers.next().await {
            requests += 1;
            let r = page_of(answer.map_err(PageError::Transport)?, page)?;
            if r.version != version {
                changed = true;
                break;
            }
            if r.total != total {
                return Err(PageError::Inconsistent("another length for one version"));
            }
            match r.bytes {
                // The decoder checked the length against `total` and the index.
                Some(b) if roster_page_len(total, page) == Some(b.len()) => {
                    signed.extend_from_slice(&b)
                }
                _ => {
                    return Err(PageError::Inconsistent(
                        "a page of the version held missing",
                    ));
                }
            }
        }
        if changed {
            continue;
        }
        if signed.len() as u64 != total {
            return Err(PageError::Inconsistent("pages short of the length"));
        }
        return Ok(Some(Fetched {
            version,
            signed,
            requests,
        }));
    }
    Err(PageError::KeepsChanging)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

    use std::sync::Mutex;

    use super::*;
    use allium_proto::storage::ROSTER_PAGE_BYTES;

    /// A node whose roster is `versions[k]` from its `k`-th answer on.
    struct Node {
        versions: Vec<(u64, Vec<u8>)>,
        asked: Mutex<usize>,
    }

    impl Node {
        fn ask(&self, r: RosterPageRequest) -> std::future::Ready<Result<Response, ()>> {
            let mut n = self.asked.lock().unwrap();
            let (v, signed) = &self.versions[(*n).min(self.versions.len() - 1)];
            *n += 1;
            let answer = RosterPageResponse::answer(*v, signed, &r);
            // Through the codec, as a node's answer arrives.
            let bytes = Response::ok(1, ResponseBody::RosterPage(answer)).encode();
            std::future::ready(Ok(Response::decode(
                &bytes,
                allium_proto::Method::RosterPage,
            )
            .unwrap()))
        }
    }

    fn roster(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_add(seed)).collect()
    }

    fn node(versions: Vec<(u64, Vec<u8>)>) -> Node {
        Node {
            versions,
            asked: Mutex::new(0),
        }
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn pages_are_assembled_in_order() {
        for len in [
            1,
            ROSTER_PAGE_BYTES,
            ROSTER_PAGE_BYTES + 1,
            5 * ROSTER_PAGE_BYTES + 7,
        ] {
            let signed = roster(len, 3);
            let n = node(vec![(9, signed.clone())]);
            let got = run(fetch_roster(None, |r| n.ask(r))).unwrap().unwrap();
            assert_eq!(got.signed, signed, "{len} bytes");
            assert_eq!(got.version, 9);
            assert_eq!(got.requests as u64, roster_pages(len as u64));
        }
    }

    #[test]
    fn a_roster_not_newer_costs_one_small_answer() {
        let n = node(vec![(9, roster(3 * ROSTER_PAGE_BYTES, 0))]);
        assert_eq!(run(fetch_roster(Some(9), |r| n.ask(r))).unwrap(), None);
        assert_eq!(run(fetch_roster(Some(12), |r| n.ask(r))).unwrap(), None);
        assert_eq!(*n.asked.lock().unwrap(), 2);
        let got = run(fetch_roster(Some(8), |r| n.ask(r))).unwrap().unwrap();
        assert_eq!(got.version, 9);
    }

    #[test]
    fn a_roster_changed_mid_fetch_is_fetched_again_whole() {
        let old = roster(3 * ROSTER_PAGE_BYTES, 0);
        let new = roster(4 * ROSTER_PAGE_BYTES + 1, 1);
        // Version 5 for page 0 and page 1, then version 6.
        let n = node(vec![(5, old.clone()), (5, old), (6, new.clone())]);
        let got = run(fetch_roster(Some(4), |r| n.ask(r))).unwrap().unwrap();
        assert_eq!((got.version, got.signed), (6, new));
    }

    #[test]
    fn a_roster_that_keeps_changing_ends_the_fetch() {
        let versions = (0..40)
            .map(|v| (v, roster(2 * ROSTER_PAGE_BYTES, v as u8)))
            .collect();
        let n = node(versions);
        assert!(matches!(
            run(fetch_roster(None, |r| n.ask(r))),
            Err(PageError::KeepsChanging)
        ));
    }

    #[test]
    fn refusals_and_wrong_pages_are_errors() {
        let busy = |_| std::future::ready(Ok::<_, ()>(Response::error(1, Status::Busy)));
        assert!(matches!(
            run(fetch_roster(None, busy)),
            Err(PageError::Refused(Status::Busy))
        ));
        let signed = roster(2 * ROSTER_PAGE_BYTES, 0);
        // Answers page 0 whatever is asked.
        let stuck = |_| {
            let r = RosterPageResponse::answer(
                3,
                &signed,
                &RosterPageRequest {
                    page: 0,
                    of: PageOf::Held,
                },
            );
            std::future::ready(Ok::<_, ()>(Response::ok(1, ResponseBody::RosterPage(r))))
        };
        assert!(matches!(
            run(fetch_roster(None, stuck)),
            Err(PageError::Inconsistent(_))
        ));
        let down = |_| std::future::ready(Err::<Response, _>("down"));
        assert!(matches!(
            run(fetch_roster(Some(1), down)),
            Err(PageError::Transport("down"))
        ));
    }
}
