//! The container (`whitepaper/devices.md` §4): one stored item carrying one sealed envelope per
//! device of the recipient account, so a message to an account of several devices is one store.
//!
//! ```text
//! item      = envelope                                         (first byte 0x02)
//!           / container                                        (first byte 0x03)
//! container = 0x03 || u8(n) || n × (u16be(len) || envelope)     2 ≤ n ≤ 8, len a bucket
//! ```
//!
//! Each device tries every envelope with its live prekeys; an item with none for it is skipped
//! without a word. Envelopes that do not fit one item of `MAX_DATA` bytes go into several.

use super::DeviceError;
use crate::session::codec::Reader;
use crate::session::envelope::BUCKETS;
use crate::session::envelope::ENVELOPE_VERSION;

/// First byte of a container.
pub const CONTAINER_VERSION: u8 = 3;
/// Largest stored item (storage.md §1, `MAX_DATA`).
pub const MAX_ITEM: usize = 61_440;
/// Envelopes one container carries at most: one per device of an account.
pub const MAX_ENVELOPES: usize = super::MAX_DEVICES;
/// Bytes of a container besides its envelopes: version, count, and a length per envelope.
pub fn overhead(n: usize) -> usize {
    2 + 2 * n
}

/// Groups `envelopes` (each of a bucket length), in order, into stored items: as many per
/// container as fit in [`MAX_ITEM`] and [`MAX_ENVELOPES`]; an item of one envelope is the
/// envelope itself.
pub fn pack(envelopes: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut groups: Vec<Vec<&[u8]>> = Vec::new();
    let mut size = 0;
    for e in envelopes {
        let fits = groups.last().is_some_and(|g| {
            g.len() < MAX_ENVELOPES && size + 2 + e.len() + overhead(g.len()) <= MAX_ITEM
        });
        if fits {
            if let Some(g) = groups.last_mut() {
                g.push(e);
                size += e.len();
            }
        } else {
            groups.push(vec![e]);
            size = e.len();
        }
    }
    groups
        .into_iter()
        .map(|g| match g.as_slice() {
            [one] => one.to_vec(),
            many => encode(many),
        })
        .collect()
}

fn encode(envelopes: &[&[u8]]) -> Vec<u8> {
    let total: usize = envelopes.iter().map(|e| e.len()).sum();
    let mut out = Vec::with_capacity(total + overhead(envelopes.len()));
    out.push(CONTAINER_VERSION);
    // At most MAX_ENVELOPES, lengths at most the largest bucket: both fit their fields.
    out.push(u8::try_from(envelopes.len()).unwrap_or(u8::MAX));
    for e in envelopes {
        out.extend_from_slice(&u16::try_from(e.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// The envelopes of a stored item: the item itself if it is an envelope, else those of the
/// container. Lengths are checked (every one a bucket); the envelopes themselves are opened by
/// the caller.
pub fn unpack(item: &[u8]) -> Result<Vec<&[u8]>, DeviceError> {
    match item.first() {
        Some(&ENVELOPE_VERSION) => Ok(vec![item]),
        Some(&CONTAINER_VERSION) => {
            if item.len() > MAX_ITEM {
                return Err(DeviceError::Malformed("container (too long)"));
            }
            let mut r = Reader::new(item, "container");
            r.version(CONTAINER_VERSION)?;
            let n = usize::from(r.u8()?);
            if !(2..=MAX_ENVELOPES).contains(&n) {
                return Err(DeviceError::Malformed("container (count)"));
            }
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let len = usize::from(r.u16()?);
                if !BUCKETS.contains(&len) {
                    return Err(DeviceError::Malformed("container (envelope length)"));
                }
                out.push(r.take(len)?);
            }
            r.finish()?;
            Ok(out)
        }
        Some(&v) => Err(DeviceError::UnknownVersion {
            what: "stored item",
            version: v,
        }),
        None => Err(DeviceError::Malformed("stored item (empty)")),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn env(len: usize, fill: u8) -> Vec<u8> {
        let mut e = vec![fill; len];
        e[0] = ENVELOPE_VERSION;
        e
    }

    #[test]
    fn short_messages_to_eight_devices_are_one_item() {
        let envs: Vec<Vec<u8>> = (0..8).map(|i| env(3072, i)).collect();
        let items = pack(&envs);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].len(), 8 * 3072 + overhead(8));
        let back = unpack(&items[0]).unwrap();
        assert_eq!(back, envs.iter().map(Vec::as_slice).collect::<Vec<_>>());
    }

    #[test]
    fn one_envelope_is_sent_bare_and_large_ones_split() {
        let one = vec![env(3072, 1)];
        assert_eq!(pack(&one), one);
        assert_eq!(unpack(&one[0]).unwrap(), vec![one[0].as_slice()]);
        // Three envelopes of 16384 fit one item; a fourth does not.
        let big: Vec<Vec<u8>> = (0..4).map(|i| env(16384, i)).collect();
        let items = pack(&big);
        assert_eq!(items.len(), 2);
        assert_eq!(unpack(&items[0]).unwrap().len(), 3);
        assert_eq!(items[1], big[3]);
        // The largest bucket is always alone.
        let huge: Vec<Vec<u8>> = (0..2).map(|i| env(61440, i)).collect();
        assert_eq!(pack(&huge), huge);
        assert!(pack(&big).iter().all(|i| i.len() <= MAX_ITEM));
    }

    #[test]
    fn bad_containers_are_refused() {
        let items = pack(&[env(512, 1), env(512, 2)]);
        let good = &items[0];
        assert!(unpack(&good[..good.len() - 1]).is_err());
        let mut longer = good.clone();
        longer.push(0);
        assert!(unpack(&longer).is_err());
        let mut count = good.clone();
        count[1] = 1;
        assert!(unpack(&count).is_err());
        let mut len = good.clone();
        len[3] = 1;
        assert!(unpack(&len).is_err());
        assert!(unpack(&[]).is_err());
        assert_eq!(
            unpack(&[9, 9]).err(),
            Some(DeviceError::UnknownVersion {
                what: "stored item",
                version: 9
            })
        );
    }

    proptest! {
        #[test]
        fn unpacking_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                                  first in 2u8..4) {
            if let Some(b) = bytes.first_mut() {
                *b = first;
            }
            let _ = unpack(&bytes);
        }

        #[test]
        fn packing_round_trips(sizes in proptest::collection::vec(0usize..5, 1..12)) {
            let envs: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| env(BUCKETS[s], i as u8))
                .collect();
            let items = pack(&envs);
            let mut back = Vec::new();
            for item in &items {
                prop_assert!(item.len() <= MAX_ITEM);
                back.extend(unpack(item).unwrap().into_iter().map(<[u8]>::to_vec));
            }
            prop_assert_eq!(back, envs);
        }
    }
}
