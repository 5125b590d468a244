//! Packet construction with every intermediate value exposed, for the test-vector tool and the
//! benches. Not part of the stable API.

use crate::error::BuildError;
use crate::keys::{EphemeralSecret, KEY_LEN};
use crate::packet::{BuildRandomness, BuiltPacket, PathHop, SLOT_LEN, SizeClass, build_with};

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
    /// The routing slot plaintext.
    pub slot: [u8; SLOT_LEN],
}

/// Builds a packet from explicit randomness: one ephemeral secret per hop and the padding after
/// the last hop's slot (`832 − 104·hops` bytes). Returns the packet and a trace per layer.
pub fn build_traced(
    path: &[PathHop],
    ephemeral_secrets: &[[u8; KEY_LEN]],
    padding: &[u8],
    request: &[u8],
    class: SizeClass,
    reply_class: SizeClass,
) -> Result<(BuiltPacket, Vec<LayerTrace>), BuildError> {
    let randomness = BuildRandomness {
        ephemerals: ephemeral_secrets
            .iter()
            .map(EphemeralSecret::from_bytes)
            .collect(),
        padding: padding.to_vec(),
    };
    let shared: Vec<[u8; KEY_LEN]> = ephemeral_secrets
        .iter()
        .zip(path)
        .map(|(e, hop)| {
            EphemeralSecret::from_bytes(e)
                .diffie_hellman(&hop.onion_key)
                .map(|s| *s.as_bytes())
                .unwrap_or([0u8; KEY_LEN])
        })
        .collect();
    let mut layers: Vec<Option<LayerTrace>> = vec![None; path.len()];
    let built = build_with(
        path,
        randomness,
        request,
        class,
        reply_class,
        &mut |i, k, slot| {
            layers[i] = Some(LayerTrace {
                ephemeral_public: *EphemeralSecret::from_bytes(&ephemeral_secrets[i]).public(),
                shared_secret: shared[i],
                header_key: k.header.0,
                payload_key: k.payload.0,
                filler_key: k.filler.0,
                reply_key: k.reply.0,
                reply_wrap_key: k.reply_wrap.0,
                replay_tag: k.replay.0,
                slot: *slot,
            });
        },
    )?;
    Ok((built, layers.into_iter().flatten().collect()))
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
