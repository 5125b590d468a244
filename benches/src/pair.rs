//! Two devices with an established session, made in-process: what the delivery measurement
//! sends with, and what the floor opens (`whitepaper/sessions.md`).

use allium_client::identity::Identity;
use allium_client::session::{
    DeviceKeys, PREKEY_LIFETIME_MS, Payload, PrekeyBundle, PrekeyStore, Session, SessionError,
    envelope,
};
use rand_core::{CryptoRngCore, OsRng};

/// One side: its device keys, prekeys and published bundle.
#[derive(Debug)]
pub struct Side {
    /// The account.
    pub account: Identity,
    /// The device.
    pub keys: DeviceKeys,
    /// Its prekey secrets.
    pub prekeys: PrekeyStore,
    /// Its bundle.
    pub bundle: PrekeyBundle,
}

impl Side {
    fn new(now: u64, rng: &mut impl CryptoRngCore) -> Result<Side, SessionError> {
        let account = Identity::generate_with(rng);
        let keys = DeviceKeys::generate(&account, 1, now, rng);
        let mut prekeys = PrekeyStore::new();
        let bundle = prekeys.rotate(&keys, now, PREKEY_LIFETIME_MS, rng)?;
        Ok(Side {
            account,
            keys,
            prekeys,
            bundle,
        })
    }
}

/// Alice and Bob with a session both have answered (past the start and the first KEM steps),
/// Alice sending.
#[derive(Debug)]
pub struct Pair {
    /// The sender.
    pub alice: Side,
    /// The receiver.
    pub bob: Side,
    /// Alice's session.
    pub a: Session,
    /// Bob's session.
    pub b: Session,
}

impl Pair {
    /// Two fresh devices and a session between them.
    pub fn new(now: u64) -> Result<Pair, SessionError> {
        let rng = &mut OsRng;
        let (alice, bob) = (Side::new(now, rng)?, Side::new(now, rng)?);
        let mut a = Session::initiate(&alice.keys, &bob.bundle, now, rng)?;
        let first = envelope::open(
            &bob.prekeys,
            &envelope::seal(&alice.keys, &bob.bundle, &a.encrypt(b"hi")?, now, rng)?,
            now,
        )?;
        let Payload::Start(start) = &first.payload else {
            return Err(SessionError::WrongSession);
        };
        let (mut b, _) = Session::accept(&bob.keys, &bob.prekeys, &first.sender, start, now, rng)?;
        let reply = envelope::open(
            &alice.prekeys,
            &envelope::seal(&bob.keys, &alice.bundle, &b.encrypt(b"hello")?, now, rng)?,
            now,
        )?;
        a.decrypt(&reply.sender, &reply.payload, now, rng)?;
        Ok(Pair { alice, bob, a, b })
    }

    /// Alice seals `text` to Bob.
    pub fn seal(&mut self, text: &[u8], now: u64) -> Result<Vec<u8>, SessionError> {
        let payload = self.a.encrypt(text)?;
        envelope::seal(
            &self.alice.keys,
            &self.bob.bundle,
            &payload,
            now,
            &mut OsRng,
        )
    }

    /// Bob opens and decrypts an envelope: the text, or why not.
    pub fn open(&mut self, sealed: &[u8], now: u64) -> Result<Vec<u8>, SessionError> {
        let opened = envelope::open(&self.bob.prekeys, sealed, now)?;
        let text = self
            .b
            .decrypt(&opened.sender, &opened.payload, now, &mut OsRng)?;
        Ok(text.to_vec())
    }
}
