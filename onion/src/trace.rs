//! Packet construction with every intermediate value exposed, for the test-vector tool and the
//! benches. Not part of the stable API.

use crate::error::BuildError;
use crate::kdf::Derivation;
use crate::keys::{EphemeralSecret, KEY_LEN};
use crate::packet::{BuildRandomness, BuiltPacket, PathHop, SLOT_LEN, SizeClass, build_with};
use crate::session::{PathSession, SessionGrant};

/// The values derived for one layer.
#[derive(Debug, Clone)]
pub struct LayerTrace {
    /// The layer's ephemeral public key.
    pub ephemeral_public: [u8; KEY_LEN],
    /// X25519 shared secret.
    pub shared_secret: [u8; KEY_LEN],
    /// Header (AES-256-GCM) key.
    pub header_key: [u8; KEY_LEN],
    /// Payload (AES-256-GCM) key.
    pub payload_key: [u8; KEY_LEN],
    /// Filler (AES-256-CTR) key.
    pub filler_key: [u8; KEY_LEN],
    /// Reply (AES-256-GCM) key.
    pub reply_key: [u8; KEY_LEN],
    /// Reply wrap (AES-256-CTR) key.
    pub reply_wrap_key: [u8; KEY_LEN],
    /// Replay tag.
    pub replay_tag: [u8; KEY_LEN],
    /// The session id this layer's hop keeps if the packet opens path sessions.
    pub session_id: [u8; 16],
    /// The session key this layer's hop keeps if the packet opens path sessions.
    pub session_key: [u8; KEY_LEN],
    /// The routing slot plaintext.
    pub slot: [u8; SLOT_LEN],
}

/// Builds a packet from explicit randomness: one ephemeral secret per hop and the padding after
/// the last hop's slot (`832 − 104·hops` bytes). Returns the packet, a trace per layer and the
/// path session the hops keep if `open_session` is set.
pub fn build_traced(
    path: &[PathHop],
    ephemeral_secrets: &[[u8; KEY_LEN]],
    padding: &[u8],
    request: &[u8],
    class: SizeClass,
    reply_class: SizeClass,
    open_session: bool,
) -> Result<(BuiltPacket, Vec<LayerTrace>, PathSession), BuildError> {
    let randomness = BuildRandomness {
        ephemerals: ephemeral_secrets
            .iter()
            .map(EphemeralSecret::from_bytes)
            .collect(),
        padding: padding.to_vec(),
    };
    let mut slots: Vec<[u8; SLOT_LEN]> = vec![[0u8; SLOT_LEN]; path.len()];
    let (built, session) = build_with(
        path,
        randomness,
        request,
        class,
        reply_class,
        open_session,
        &mut |i, _, slot| slots[i] = *slot,
    )?;
    let mut layers = Vec::with_capacity(path.len());
    for ((e, hop), slot) in ephemeral_secrets.iter().zip(path).zip(slots) {
        let eph = EphemeralSecret::from_bytes(e);
        let public = *eph.public();
        let shared = eph
            .diffie_hellman(&hop.onion_key)
            .map_err(|_| BuildError::NonContributory { hop: layers.len() })?;
        let d = Derivation::onion(&shared, &public, hop.onion_key.as_bytes());
        let k = d.layer_keys();
        let grant = SessionGrant::derive(&d);
        layers.push(LayerTrace {
            ephemeral_public: public,
            shared_secret: *shared.as_bytes(),
            header_key: k.header.0,
            payload_key: k.payload.0,
            filler_key: k.filler.0,
            reply_key: k.reply.0,
            reply_wrap_key: k.reply_wrap.0,
            replay_tag: d.replay_tag().0,
            session_id: grant.id().0,
            session_key: grant.key_bytes(),
            slot,
        });
    }
    Ok((built, layers, session))
}

/// The keys of one layer of a path session's packet: `K(label)` under the session key with
/// `session_id || nonce` (onion.md §12.3), in the order header, payload, filler, reply, wrap.
pub fn session_layer_keys(
    key: &[u8; KEY_LEN],
    id: &[u8; 16],
    nonce: &[u8; 16],
) -> [[u8; KEY_LEN]; 5] {
    let k = Derivation::new(key, &[id, nonce]).layer_keys();
    [
        k.header.0,
        k.payload.0,
        k.filler.0,
        k.reply.0,
        k.reply_wrap.0,
    ]
}

/// Builds the next packet of `session` from explicit nonces and padding.
pub fn build_session_traced(
    session: &mut PathSession,
    nonces: &[[u8; 16]],
    padding: &[u8],
    request: &[u8],
    class: SizeClass,
    reply_class: SizeClass,
) -> Result<BuiltPacket, BuildError> {
    session.build_with(nonces, padding, request, class, reply_class)
}

/// A sender's path session from the ids and keys of its hops (test vectors).
pub fn path_session(
    hops: Vec<(crate::id::NodeId, SessionGrant)>,
    epochs: Vec<crate::Epoch>,
) -> PathSession {
    PathSession::new(hops, epochs)
}

/// Length of the padding [`build_traced`] takes for a path of `hops` layers.
pub fn padding_len(hops: usize) -> usize {
    crate::packet::padding_len(hops)
}

/// X25519 of a secret scalar and a public key through the crate's key types, refusing
/// non-contributory results; for the RFC 7748 vectors.
pub fn x25519(
    secret: &[u8; KEY_LEN],
    public: &crate::keys::OnionPublicKey,
) -> Result<[u8; KEY_LEN], crate::error::KeyError> {
    EphemeralSecret::from_bytes(secret)
        .diffie_hellman(public)
        .map(|s| *s.as_bytes())
}

/// One key agreement of a node's onion key with a sender's ephemeral public key, as a relay
/// peeling a layer makes it; the floor's X25519 term (performance.md §2).
pub fn onion_key_agreement(
    key: &crate::keys::OnionSecretKey,
    ephemeral: &[u8; KEY_LEN],
) -> Result<[u8; KEY_LEN], crate::error::KeyError> {
    key.diffie_hellman(ephemeral).map(|s| *s.as_bytes())
}
