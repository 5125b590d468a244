//! An epoch as one device holds it (`whitepaper/groups.md` §6–§7): a hash chain per sender
//! device, ratcheted per message so that used keys are gone, and the message format.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use super::rekey::Entry;
use super::{
    EPOCH_ID_LEN, GroupError, MAX_EPOCH_DEVICES, MAX_INNER_LEN, MAX_SKIPPED, PAD, kind, labels,
    malformed, sign_device, verify_device,
};
use crate::session::codec::Reader;
use crate::session::crypto::{self, ChainKey, MessageKey, Secret};
use crate::session::{DeviceKeys, KEY_LEN, MAX_SKIP, SIGNATURE_LEN, TAG_LEN, VERSION};

/// kind, epoch id, nonce, sealed header (sender u16, counter u32, tag).
const HEAD_LEN: usize = 1 + EPOCH_ID_LEN + 12 + 6 + TAG_LEN;
/// The largest padded plaintext that fits one sealed item.
const MAX_PLAINTEXT: usize = (MAX_INNER_LEN - HEAD_LEN - TAG_LEN) / PAD * PAD;
/// Signature and length before the payload.
const PLAIN_OVERHEAD: usize = SIGNATURE_LEN + 4;

/// The largest message payload.
pub const MAX_PAYLOAD: usize = MAX_PLAINTEXT - PLAIN_OVERHEAD;

/// `HKDF(K, group || u64be(epoch), "…/epoch-id", 16)`.
pub(crate) fn epoch_id(
    key: &[u8; KEY_LEN],
    group: &[u8; KEY_LEN],
    epoch: u64,
) -> Result<[u8; EPOCH_ID_LEN], GroupError> {
    let id = crypto::hkdf::<EPOCH_ID_LEN>(key, &[group, &epoch.to_be_bytes()], labels::EPOCH_ID)?;
    Ok(*id)
}

/// The epoch id a message names, to find the epoch that opens it.
pub fn epoch_id_of(item: &[u8]) -> Result<[u8; EPOCH_ID_LEN], GroupError> {
    let mut r = Reader::new(item, "group message");
    r.version(kind::MESSAGE)?;
    Ok(r.array()?)
}

struct Sender {
    entry: Entry,
    chain: ChainKey,
    next: u32,
}

/// A message as its reader gets it.
#[derive(Clone, PartialEq, Eq)]
pub struct Received {
    /// The writer's account.
    pub account: [u8; KEY_LEN],
    /// The writer's device (Ed25519 key from its certificate).
    pub device: [u8; KEY_LEN],
    /// The message's number in the writer's chain.
    pub counter: u32,
    /// What the writer wrote. Wiped on drop.
    pub payload: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Received")
            .field("counter", &self.counter)
            .field("len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// One epoch of a group, as one device holds it: no epoch key (it is dropped once the chains
/// are derived), the current chain key and next counter of every sender device, and the keys of
/// messages skipped over.
pub struct Epoch {
    group: [u8; KEY_LEN],
    epoch: u64,
    epoch_id: [u8; EPOCH_ID_LEN],
    list_hash: [u8; 32],
    header_key: Secret,
    senders: Vec<Sender>,
    me: usize,
    skipped: BTreeMap<(u16, u32), MessageKey>,
    order: VecDeque<(u16, u32)>,
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Epoch")
            .field("epoch", &self.epoch)
            .field("epoch_id", &hex::encode(self.epoch_id))
            .field("senders", &self.senders.len())
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

impl Epoch {
    /// The epoch of key `key`: derives the id, the header key and the first chain key of every
    /// sender, `CK_0 = HKDF(K, account || device, "…/sender-chain", 32)`.
    pub(crate) fn from_key(
        group: &[u8; KEY_LEN],
        epoch: u64,
        list_hash: &[u8; 32],
        key: &[u8; KEY_LEN],
        senders: Vec<Entry>,
        me: usize,
    ) -> Result<Self, GroupError> {
        if senders.len() > MAX_EPOCH_DEVICES || me >= senders.len() {
            return Err(GroupError::BadParts);
        }
        let header_key = crypto::hkdf::<KEY_LEN>(key, &[group], labels::HEADER_KEY)?;
        let mut chains = Vec::with_capacity(senders.len());
        for entry in senders {
            let ck = crypto::hkdf::<KEY_LEN>(
                key,
                &[&entry.account, &entry.device],
                labels::SENDER_CHAIN,
            )?;
            chains.push(Sender {
                entry,
                chain: ChainKey(ck),
                next: 0,
            });
        }
        Ok(Epoch {
            group: *group,
            epoch,
            epoch_id: epoch_id(key, group, epoch)?,
            list_hash: *list_hash,
            header_key,
            senders: chains,
            me,
            skipped: BTreeMap::new(),
            order: VecDeque::new(),
        })
    }

    /// The epoch number.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The epoch id messages name.
    pub fn epoch_id(&self) -> [u8; EPOCH_ID_LEN] {
        self.epoch_id
    }

    /// The hash of the membership list the epoch was made for.
    pub fn list_hash(&self) -> [u8; 32] {
        self.list_hash
    }

    /// The sender devices, in index order: (account, device key).
    pub fn senders(&self) -> impl Iterator<Item = ([u8; KEY_LEN], [u8; KEY_LEN])> + '_ {
        self.senders
            .iter()
            .map(|s| (s.entry.account, s.entry.device))
    }

    /// How many skipped message keys are held.
    pub fn skipped(&self) -> usize {
        self.skipped.len()
    }

    /// Encrypts `payload` as this device's next message: draws the 12-byte header nonce, steps
    /// this device's chain (deleting the key used) and signs with `device`.
    pub fn encrypt(
        &mut self,
        device: &DeviceKeys,
        payload: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, GroupError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(GroupError::TooLarge);
        }
        let me = self.me;
        let sender = &self.senders[me];
        if sender.entry.device != device.cert().signing_key() {
            return Err(GroupError::NotRecipient);
        }
        let counter = sender.next;
        let next = counter.checked_add(1).ok_or(GroupError::CounterExhausted)?;
        let index = u16::try_from(me).map_err(|_| GroupError::BadParts)?;
        let (chain, mk) = sender.chain.step()?;
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let header = [index.to_be_bytes().as_slice(), &counter.to_be_bytes()].concat();
        let sealed_header =
            crypto::aead_seal(&self.header_key, &nonce, &self.header_ad(), &header)?;
        let sig = sign_device(device, &[&self.signed(index, counter, payload)]);
        let len = u32::try_from(payload.len()).map_err(|_| GroupError::TooLarge)?;
        let padded = (PLAIN_OVERHEAD + payload.len()).div_ceil(PAD) * PAD;
        let mut plain = Zeroizing::new(Vec::with_capacity(padded));
        plain.extend_from_slice(&sig);
        plain.extend_from_slice(&len.to_be_bytes());
        plain.extend_from_slice(payload);
        plain.resize(padded, 0);
        let body = mk.encrypt(&self.body_ad(index, counter), &plain)?;
        let mut out = Vec::with_capacity(HEAD_LEN + body.len());
        out.push(kind::MESSAGE);
        out.extend_from_slice(&self.epoch_id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed_header);
        out.extend_from_slice(&body);
        let sender = &mut self.senders[me];
        sender.chain = chain;
        sender.next = next;
        Ok(out)
    }

    /// Opens a message of this epoch. A key is used up only by a message that decrypts and
    /// whose signature verifies; keys skipped over are kept (at most [`MAX_SKIPPED`]).
    pub fn decrypt(&mut self, item: &[u8]) -> Result<Received, GroupError> {
        if item.len() > MAX_INNER_LEN {
            return Err(malformed("group message (too long)"));
        }
        let mut r = Reader::new(item, "group message");
        r.version(kind::MESSAGE)?;
        let id = r.array::<EPOCH_ID_LEN>()?;
        if !crypto::ct_eq(&id, &self.epoch_id) {
            return Err(GroupError::WrongEpoch);
        }
        let nonce = r.array::<12>()?;
        let sealed_header = r.take(6 + TAG_LEN)?;
        let body = r.rest();
        if body.len() < PAD + TAG_LEN || (body.len() - TAG_LEN) % PAD != 0 {
            return Err(malformed("group message (length)"));
        }
        let header = crypto::aead_open(&self.header_key, &nonce, &self.header_ad(), sealed_header)
            .map_err(|_| GroupError::Decrypt)?;
        let mut hr = Reader::new(&header, "group message header");
        let index = hr.u16()?;
        let counter = hr.u32()?;
        hr.finish()?;
        let i = usize::from(index);
        if i == self.me {
            return Err(GroupError::OwnMessage);
        }
        let Some(sender) = self.senders.get(i) else {
            return Err(GroupError::UnknownSender);
        };
        // Find the key without changing anything; commit only once the message is proven.
        let mut new_skipped = Vec::new();
        let mut advanced = None;
        let mk = if counter < sender.next {
            self.skipped
                .get(&(index, counter))
                .cloned()
                .ok_or(GroupError::Duplicate)?
        } else {
            let gap = counter - sender.next;
            if gap > MAX_SKIP {
                return Err(GroupError::TooFarAhead { gap });
            }
            let mut chain = sender.chain.clone();
            for c in sender.next..counter {
                let (next, mk) = chain.step()?;
                new_skipped.push(((index, c), mk));
                chain = next;
            }
            let (next, mk) = chain.step()?;
            advanced = Some(next);
            mk
        };
        let plain = mk
            .decrypt(&self.body_ad(index, counter), body)
            .map_err(|_| GroupError::Decrypt)?;
        let mut pr = Reader::new(&plain, "group message plaintext");
        let sig = pr.array::<SIGNATURE_LEN>()?;
        let len = usize::try_from(pr.u32()?).map_err(|_| malformed("group message (length)"))?;
        let payload = pr.take(len)?;
        if pr.rest().iter().any(|b| *b != 0) {
            return Err(malformed("group message (padding)"));
        }
        let device = sender.entry.device;
        verify_device(&device, &[&self.signed(index, counter, payload)], &sig)?;
        let received = Received {
            account: sender.entry.account,
            device,
            counter,
            payload: Zeroizing::new(payload.to_vec()),
        };
        match advanced {
            Some(chain) => {
                let s = &mut self.senders[i];
                s.chain = chain;
                s.next = counter.checked_add(1).ok_or(GroupError::CounterExhausted)?;
                for (at, mk) in new_skipped {
                    self.keep_skipped(at, mk);
                }
            }
            None => {
                self.skipped.remove(&(index, counter));
            }
        }
        Ok(received)
    }

    fn keep_skipped(&mut self, at: (u16, u32), mk: MessageKey) {
        self.skipped.insert(at, mk);
        self.order.push_back(at);
        while self.skipped.len() > MAX_SKIPPED {
            match self.order.pop_front() {
                Some(old) => {
                    self.skipped.remove(&old);
                }
                None => break,
            }
        }
        // Entries of keys already used stay in `order` until they reach the front.
        if self.order.len() > 2 * MAX_SKIPPED {
            self.order.retain(|at| self.skipped.contains_key(at));
        }
    }

    fn header_ad(&self) -> Vec<u8> {
        [labels::HEADER, &self.group, &self.epoch_id].concat()
    }

    fn body_ad(&self, index: u16, counter: u32) -> Vec<u8> {
        [
            labels::MESSAGE,
            &self.group,
            &self.epoch_id,
            &index.to_be_bytes(),
            &counter.to_be_bytes(),
        ]
        .concat()
    }

    fn signed(&self, index: u16, counter: u32, payload: &[u8]) -> Vec<u8> {
        [
            labels::SIGNED,
            &self.group,
            &self.epoch_id,
            &index.to_be_bytes(),
            &counter.to_be_bytes(),
            payload,
        ]
        .concat()
    }

    /// The state encoding, for the device's group file. Wiped on drop.
    ///
    /// ```text
    /// 0x01 || group (32) || u64be(epoch) || epoch id (16) || list hash (32) || header key (32)
    ///      || u16be(me) || u16be(n) || n × (account (32) || device (32) || chain key (32)
    ///      || u32be(next)) || u16be(k) || k × (u16be(sender) || u32be(counter) || key (32))
    /// ```
    /// Skipped keys oldest first.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            1 + 32 + 8 + 16 + 32 + 32 + 4 + self.senders.len() * 100 + 2 + self.skipped.len() * 38,
        ));
        out.push(VERSION);
        out.extend_from_slice(&self.group);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.epoch_id);
        out.extend_from_slice(&self.list_hash);
        out.extend_from_slice(self.header_key.as_ref());
        // Both at most MAX_EPOCH_DEVICES (8000), checked when made and decoded.
        out.extend_from_slice(&u16::try_from(self.me).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(
            &u16::try_from(self.senders.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        for s in &self.senders {
            out.extend_from_slice(&s.entry.account);
            out.extend_from_slice(&s.entry.device);
            out.extend_from_slice(s.chain.0.as_ref());
            out.extend_from_slice(&s.next.to_be_bytes());
        }
        let kept: Vec<&(u16, u32)> = self
            .order
            .iter()
            .filter(|at| self.skipped.contains_key(at))
            .collect();
        // At most MAX_SKIPPED (2000).
        out.extend_from_slice(&u16::try_from(kept.len()).unwrap_or(u16::MAX).to_be_bytes());
        for at in kept {
            if let Some(mk) = self.skipped.get(at) {
                out.extend_from_slice(&at.0.to_be_bytes());
                out.extend_from_slice(&at.1.to_be_bytes());
                out.extend_from_slice(mk.0.as_ref());
            }
        }
        out
    }

    /// Decodes [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, GroupError> {
        let mut r = Reader::new(bytes, "epoch state");
        r.version(VERSION)?;
        let group = r.array::<KEY_LEN>()?;
        let epoch = r.u64()?;
        let epoch_id = r.array::<EPOCH_ID_LEN>()?;
        let list_hash = r.array::<32>()?;
        let header_key = Zeroizing::new(r.array::<KEY_LEN>()?);
        let me = usize::from(r.u16()?);
        let n = usize::from(r.u16()?);
        if n > MAX_EPOCH_DEVICES || me >= n {
            return Err(malformed("epoch state (senders)"));
        }
        let mut senders = Vec::with_capacity(n);
        for _ in 0..n {
            let entry = Entry {
                account: r.array()?,
                device: r.array()?,
            };
            let chain = ChainKey(Zeroizing::new(r.array::<KEY_LEN>()?));
            let next = r.u32()?;
            senders.push(Sender { entry, chain, next });
        }
        let k = usize::from(r.u16()?);
        if k > MAX_SKIPPED {
            return Err(malformed("epoch state (skipped keys)"));
        }
        let mut skipped = BTreeMap::new();
        let mut order = VecDeque::with_capacity(k);
        for _ in 0..k {
            let at = (r.u16()?, r.u32()?);
            let mk = MessageKey(Zeroizing::new(r.array::<KEY_LEN>()?));
            let behind = senders
                .get(usize::from(at.0))
                .is_some_and(|s: &Sender| at.1 < s.next);
            if !behind || skipped.insert(at, mk).is_some() {
                return Err(malformed("epoch state (skipped key)"));
            }
            order.push_back(at);
        }
        r.finish()?;
        Ok(Epoch {
            group,
            epoch,
            epoch_id,
            list_hash,
            header_key,
            senders,
            me,
            skipped,
            order,
        })
    }
}
