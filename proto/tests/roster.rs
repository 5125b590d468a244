//! The network file, descriptors, the signed roster, directory messages and swarm assignment
//! (whitepaper `roster.md`). `ALLIUM_WRITE_VECTORS=1 cargo test -p allium-proto --test roster`
//! rewrites `whitepaper/vectors/roster.json` (review the diff: a change is a protocol change).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use allium_onion::{
    Epoch, IdentityKeypair, IdentityPublicKey, KeyError, OnionKeyCert, OnionSecretKey,
};
use allium_proto::assign::{
    assign, fold_mailbox, min_members, moved, nearest_swarm, ring_distance,
};
use allium_proto::error::DecodeError;
use allium_proto::network::{Authority, NetworkError, NetworkFile};
use allium_proto::roster::*;
use allium_proto::{Mailbox, NodeId};
use proptest::prelude::*;
use serde_json::{Value, json};

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../whitepaper/vectors/roster.json"
);
const NOW: u64 = 1_700_000_000;

// ---- helpers ---------------------------------------------------------------------------------

fn kp(seed: u8) -> IdentityKeypair {
    IdentityKeypair::from_seed(&[seed; 32])
}

fn cert(id: &IdentityKeypair, epoch: u32, onion_seed: u8) -> OnionKeyCert {
    OnionKeyCert::sign(
        id,
        &OnionSecretKey::from_bytes(Epoch(epoch), &[onion_seed; 32]),
    )
}

fn descriptor(seed: u8) -> Descriptor {
    let id = kp(seed);
    Descriptor {
        identity: id.public(),
        addresses: vec![
            format!("10.{seed}.0.1:4433").parse().unwrap(),
            "[2001:db8::1]:4433".parse().unwrap(),
        ],
        onion_keys: vec![cert(&id, 100, seed ^ 0x55), cert(&id, 101, seed ^ 0xaa)],
        software: "allium-node/0.1.0".into(),
        published_at: NOW,
    }
}

fn hexkey(k: &IdentityKeypair) -> String {
    hex::encode(k.public().as_bytes())
}

fn network_toml(authorities: &[&IdentityKeypair], threshold: u64) -> String {
    let mut s = String::from("# test network\nname = \"allium-devnet\"\n");
    for (i, a) in authorities.iter().enumerate() {
        s += &format!(
            "[[authority]]\nidentity = \"{}\"\naddress = \"127.0.0.1:{}\"\n",
            hexkey(a),
            4433 + i
        );
    }
    s += &format!(
        "[params]\nswarm_size = 3\nmin_ttl_secs = 10\nmax_ttl_secs = 1209600\nepoch_secs = 3600\n\
         allow_same_subnet = false\nroster_threshold = {threshold}\n"
    );
    s
}

/// Authority keys a network file must refuse, and why: points of small order (the neutral
/// element, the point of order 2, a point of order 8), a second spelling of a point (its y
/// coordinate not reduced: p + 3), and bytes that are no point at all (y = 2).
const REFUSED_AUTHORITY_KEYS: [(&str, &str); 5] = [
    (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "small_order",
    ),
    (
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "small_order",
    ),
    (
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "small_order",
    ),
    (
        "f0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "non_canonical",
    ),
    (
        "0200000000000000000000000000000000000000000000000000000000000000",
        "not_a_point",
    ),
];

/// The network file of the vectors with `input.identity` as its authority, and why it is
/// refused (or `accepted`).
fn network_refused_case(input: &Value) -> Value {
    let key = input["identity"].as_str().unwrap();
    let toml = network_toml(&[&kp(0xa0)], 1).replace(&hexkey(&kp(0xa0)), key);
    let refused = match NetworkFile::from_toml(&toml) {
        Ok(_) => "accepted",
        Err(NetworkError::UnusableAuthorityKey {
            index: 0,
            source: KeyError::SmallOrderIdentityKey,
        }) => "small_order",
        Err(NetworkError::UnusableAuthorityKey {
            index: 0,
            source: KeyError::NonCanonicalIdentityKey,
        }) => "non_canonical",
        Err(NetworkError::BadAuthorityKey { index: 0 }) => "not_a_point",
        Err(e) => panic!("{key}: {e}"),
    };
    json!({ "identity": key, "refused": refused })
}

fn network(authorities: &[&IdentityKeypair], threshold: u64) -> NetworkFile {
    NetworkFile::from_toml(&network_toml(authorities, threshold)).unwrap()
}

/// A roster of the nodes with seeds `seeds`, assigned from scratch with swarm size 3.
fn roster(name: &str, version: u64, seeds: &[u8]) -> Roster {
    let descs: Vec<Descriptor> = seeds.iter().map(|s| descriptor(*s)).collect();
    let keys: Vec<NodeId> = descs.iter().map(|d| d.identity.node_id()).collect();
    let a = assign(&BTreeMap::new(), &keys, 3);
    let nodes = descs
        .into_iter()
        .map(|d| {
            let swarm = a[&d.identity.node_id()];
            NodeEntry::from_descriptor(d, swarm)
        })
        .collect();
    Roster::new(name, version, NOW, 3, nodes).unwrap()
}

/// Minimal CBOR writer for hand-made (possibly invalid) test inputs.
fn head(major: u8, v: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    match v {
        0..=23 => out.push(m | v as u8),
        24..=0xff => out.extend([m | 24, v as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((v as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend((v as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend(v.to_be_bytes());
        }
    }
}

fn bstr(b: &[u8], out: &mut Vec<u8>) {
    head(2, b.len() as u64, out);
    out.extend_from_slice(b);
}

/// `{0: body, 1: [{0: id, 1: sig}...]}`.
fn envelope(body: &[u8], sigs: &[([u8; 32], [u8; 64])]) -> Vec<u8> {
    let mut out = vec![0xa2, 0x00];
    bstr(body, &mut out);
    out.push(0x01);
    head(4, sigs.len() as u64, &mut out);
    for (id, sig) in sigs {
        out.extend([0xa2, 0x00]);
        bstr(id, &mut out);
        out.push(0x01);
        bstr(sig, &mut out);
    }
    out
}

fn roster_sig(k: &IdentityKeypair, body: &[u8]) -> ([u8; 32], [u8; 64]) {
    (
        k.public().to_bytes(),
        k.sign(&[ROSTER_DOMAIN, body].concat()),
    )
}

/// The roster body with its node entries replaced by `entries` (each an encoded node entry).
fn with_entries(r: &Roster, entries: &[Vec<u8>]) -> Vec<u8> {
    let empty = Roster::new(
        r.network(),
        r.version(),
        r.published_at(),
        r.swarm_size(),
        vec![],
    )
    .unwrap()
    .encode();
    let mut out = empty[..empty.len() - 1].to_vec();
    head(4, entries.len() as u64, &mut out);
    for e in entries {
        out.extend_from_slice(e);
    }
    out
}

/// The encoded node entries of `r`, in order.
fn entries_of(r: &Roster) -> Vec<Vec<u8>> {
    r.nodes()
        .iter()
        .map(|n| {
            let one = Roster::new(
                r.network(),
                r.version(),
                r.published_at(),
                r.swarm_size(),
                vec![n.clone()],
            )
            .unwrap()
            .encode();
            let empty = with_entries(r, &[]);
            one[empty.len()..].to_vec()
        })
        .collect()
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let pos = haystack
        .windows(from.len())
        .position(|w| w == from)
        .unwrap();
    let mut out = haystack.to_vec();
    out[pos..pos + from.len()].copy_from_slice(to);
    out
}

// ---- network file ----------------------------------------------------------------------------

#[test]
fn network_file_round_trips_and_fingerprints() {
    let (a, b) = (kp(0xa0), kp(0xa1));
    let n = network(&[&a, &b], 2);
    assert_eq!(n.name(), "allium-devnet");
    assert_eq!(n.authorities().len(), 2);
    assert_eq!(n.params().swarm_size, 3);
    assert_eq!(n.params().roster_threshold, 2);
    let again = NetworkFile::from_toml(&n.to_toml()).unwrap();
    assert_eq!(again, n);
    assert_eq!(again.fingerprint(), n.fingerprint());
    // Authority order and layout do not change the fingerprint; any parameter does.
    let mut reversed = n.authorities().to_vec();
    reversed.reverse();
    let r = NetworkFile::new(n.name(), reversed, *n.params()).unwrap();
    assert_ne!(r.to_toml(), n.to_toml());
    assert_eq!(r.fingerprint(), n.fingerprint());
    assert_ne!(network(&[&a, &b], 1).fingerprint(), n.fingerprint());
    assert_eq!(n.fingerprint_hex().len(), 64);
    assert!(n.authority(&a.public()).is_some());
    assert!(n.authority(&kp(1).public()).is_none());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("network.toml");
    std::fs::write(&path, n.to_toml()).unwrap();
    assert_eq!(NetworkFile::load(&path).unwrap(), n);
    assert!(matches!(
        NetworkFile::load(&dir.path().join("absent")),
        Err(NetworkError::Io { .. })
    ));
}

#[test]
fn network_file_errors_name_the_key() {
    let a = kp(0xa0);
    let good = network_toml(&[&a], 1);
    let err = |text: &str| NetworkFile::from_toml(text).unwrap_err();
    let syntax = |text: &str, word: &str| match err(text) {
        NetworkError::Syntax(m) => assert!(m.contains(word), "{m:?} lacks {word:?}"),
        e => panic!("expected a syntax error naming {word}, got {e:?}"),
    };
    syntax(
        &good.replace("swarm_size = 3", "swarm_size = 3\nswarm_szie = 4"),
        "swarm_szie",
    );
    syntax(&format!("colour = 1\n{good}"), "colour");
    syntax(&good.replace("address =", "port = 1\naddress ="), "port");
    syntax(&good.replace("epoch_secs = 3600\n", ""), "epoch_secs");
    syntax(
        &good.replace("swarm_size = 3", "swarm_size = \"3\""),
        "swarm_size",
    );
    syntax("name = ", "");

    assert!(matches!(
        err(&good.replace("allium-devnet", "Allium")),
        NetworkError::BadName
    ));
    assert!(matches!(
        err(&good.replace("allium-devnet", "")),
        NetworkError::BadName
    ));
    let no_auth: String = good
        .lines()
        .filter(|l| {
            !l.contains("identity") && !l.contains("address") && !l.contains("[[authority]]")
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(matches!(err(&no_auth), NetworkError::NoAuthority));
    let bad_key = good.replace(&hexkey(&a), &"zz".repeat(32));
    assert!(matches!(
        err(&bad_key),
        NetworkError::BadAuthorityKey { index: 0 }
    ));
    let short_key = good.replace(&hexkey(&a), "abcd");
    assert!(matches!(
        err(&short_key),
        NetworkError::BadAuthorityKey { index: 0 }
    ));
    // Keys that decode to a point nobody can sign with, or a second spelling of one.
    for (key, refused) in REFUSED_AUTHORITY_KEYS {
        assert_eq!(
            network_refused_case(&json!({ "identity": key }))["refused"],
            json!(refused),
            "{key}"
        );
    }
    // A network file built from parts is held to the same rules.
    let small =
        IdentityPublicKey::from_bytes(&hex::decode(REFUSED_AUTHORITY_KEYS[0].0).unwrap()).unwrap();
    let from_parts = NetworkFile::new(
        "allium-devnet",
        vec![Authority {
            identity: small,
            address: "127.0.0.1:4433".parse().unwrap(),
        }],
        network(&[&a], 1).params,
    );
    assert!(matches!(
        from_parts,
        Err(NetworkError::UnusableAuthorityKey {
            index: 0,
            source: KeyError::SmallOrderIdentityKey
        })
    ));
    for addr in [
        "localhost:4433",
        "127.0.0.1",
        "127.0.0.1:0",
        "0.0.0.0:1",
        "::1:4433",
    ] {
        let t = good.replace("127.0.0.1:4433", addr);
        assert!(
            matches!(err(&t), NetworkError::BadAuthorityAddress { index: 0, .. }),
            "{addr}"
        );
    }
    let dup = network_toml(&[&a, &a], 1);
    assert!(matches!(
        err(&dup),
        NetworkError::DuplicateAuthority { index: 1 }
    ));
    let range = |from: &str, to: &str, key: &str| match err(&good.replace(from, to)) {
        NetworkError::OutOfRange { key: k, .. } => assert_eq!(k, key),
        e => panic!("{to}: {e:?}"),
    };
    range(
        "roster_threshold = 1",
        "roster_threshold = 0",
        "roster_threshold",
    );
    range(
        "roster_threshold = 1",
        "roster_threshold = 2",
        "roster_threshold",
    );
    range("swarm_size = 3", "swarm_size = 0", "swarm_size");
    range("swarm_size = 3", "swarm_size = 33", "swarm_size");
    range(
        "min_ttl_secs = 10",
        "min_ttl_secs = 2000000",
        "max_ttl_secs",
    );
    range("min_ttl_secs = 10", "min_ttl_secs = 0", "min_ttl_secs");
    range("epoch_secs = 3600", "epoch_secs = 0", "epoch_secs");
    // The messages are readable.
    let m = err(&good.replace("swarm_size = 3", "swarm_size = 40")).to_string();
    assert!(m.contains("params.swarm_size") && m.contains("40"), "{m}");
}

// ---- descriptors -----------------------------------------------------------------------------

#[test]
fn descriptor_round_trips() {
    let d = descriptor(1);
    let signed = SignedDescriptor::sign(&kp(1), &d).unwrap();
    let bytes = signed.encode();
    assert_eq!(
        SignedDescriptor::decode_and_verify(&bytes, NOW, 60).unwrap(),
        d
    );
    assert_eq!(Descriptor::decode(signed.descriptor_bytes()).unwrap(), d);
    assert_eq!(d.encode(), signed.descriptor_bytes());
}

#[test]
fn descriptor_refusals() {
    let d = descriptor(1);
    let good = SignedDescriptor::sign(&kp(1), &d).unwrap();
    let body = good.descriptor_bytes().to_vec();
    let wrap = |body: &[u8], sig: &[u8]| {
        let mut out = vec![0xa2, 0x00];
        bstr(body, &mut out);
        out.push(0x01);
        bstr(sig, &mut out);
        out
    };
    let sig = kp(1).sign(&[DESCRIPTOR_DOMAIN, &body].concat());
    assert_eq!(wrap(&body, &sig), good.encode());
    let check = |b: &[u8]| SignedDescriptor::decode_and_verify(b, NOW, 60);

    // Signed by another key, a flipped signature bit, no domain string.
    let other = kp(2).sign(&[DESCRIPTOR_DOMAIN, &body].concat());
    assert_eq!(check(&wrap(&body, &other)), Err(RosterError::BadSignature));
    let mut flipped = sig;
    flipped[10] ^= 1;
    assert_eq!(
        check(&wrap(&body, &flipped)),
        Err(RosterError::BadSignature)
    );
    assert_eq!(
        check(&wrap(&body, &kp(1).sign(&body))),
        Err(RosterError::BadSignature)
    );

    // A certificate by another identity, properly signed by the node.
    let mut foreign = d.clone();
    foreign.onion_keys[1] = cert(&kp(2), 101, 9);
    assert_eq!(
        SignedDescriptor::sign(&kp(1), &foreign),
        Err(RosterError::CertIdentityMismatch)
    );
    let fb = foreign.encode();
    let fsig = kp(1).sign(&[DESCRIPTOR_DOMAIN, &fb].concat());
    assert_eq!(
        check(&wrap(&fb, &fsig)),
        Err(RosterError::CertIdentityMismatch)
    );

    // A certificate that does not verify.
    let c = d.onion_keys[0].to_bytes();
    let mut bad_c = c;
    bad_c[100] ^= 1;
    let bb = replace(&body, &c, &bad_c);
    let bsig = kp(1).sign(&[DESCRIPTOR_DOMAIN, &bb].concat());
    assert_eq!(check(&wrap(&bb, &bsig)), Err(RosterError::BadCert));

    // Published too far ahead; exactly at the skew is fine.
    let mut future = d.clone();
    future.published_at = NOW + 61;
    let fut = SignedDescriptor::sign(&kp(1), &future).unwrap().encode();
    assert!(matches!(check(&fut), Err(RosterError::FromFuture { .. })));
    assert!(SignedDescriptor::decode_and_verify(&fut, NOW + 1, 60).is_ok());

    // Signing with the wrong key, and the shape rules.
    assert_eq!(
        SignedDescriptor::sign(&kp(2), &d),
        Err(RosterError::WrongSigner)
    );
    let mut e = d.clone();
    e.addresses.clear();
    assert_eq!(
        SignedDescriptor::sign(&kp(1), &e),
        Err(RosterError::Count("addresses"))
    );
    let mut e = d.clone();
    e.addresses.push(e.addresses[0]);
    assert_eq!(
        SignedDescriptor::sign(&kp(1), &e),
        Err(RosterError::BadAddress)
    );
    let mut e = d.clone();
    e.onion_keys.reverse();
    assert_eq!(
        SignedDescriptor::sign(&kp(1), &e),
        Err(RosterError::CertOrder)
    );
    let mut e = d.clone();
    e.software = "x".repeat(65);
    assert_eq!(
        SignedDescriptor::sign(&kp(1), &e),
        Err(RosterError::Invalid("software"))
    );

    // Truncated, trailing, garbage.
    let bytes = good.encode();
    for n in 0..bytes.len() {
        assert!(check(&bytes[..n]).is_err(), "prefix {n} accepted");
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(
        check(&trailing),
        Err(RosterError::Decode(DecodeError::TrailingBytes))
    );
    assert!(matches!(
        check(&vec![0u8; MAX_SIGNED_DESCRIPTOR_BYTES + 1]),
        Err(RosterError::Decode(DecodeError::TooLarge { .. }))
    ));
}

// ---- rosters ---------------------------------------------------------------------------------

#[test]
fn roster_round_trips_and_answers_lookups() {
    let auth = kp(0xa0);
    let net = network(&[&auth], 1);
    let r = roster("allium-devnet", 7, &[1, 2, 3, 4, 5, 6, 7]);
    let signed = r.sign(&[&auth]).unwrap();
    let bytes = signed.encode();
    let got = SignedRoster::decode_and_verify(&bytes, &net, None).unwrap();
    assert_eq!(got, r);
    assert_eq!(SignedRoster::decode(&bytes).unwrap(), signed);
    assert_eq!(got.version(), 7);
    assert_eq!(got.nodes().len(), 7);
    assert!(
        got.nodes()
            .windows(2)
            .all(|w| w[0].identity.as_bytes() < w[1].identity.as_bytes())
    );

    // 7 nodes, size 3: two swarms of 3 and 4.
    let swarms = got.swarms();
    assert_eq!(swarms.len(), 2);
    assert_eq!(swarms.values().map(Vec::len).sum::<usize>(), 7);
    let ids: BTreeSet<u64> = swarms.keys().copied().collect();
    for i in 0..200u8 {
        let mailbox = Mailbox::from_bytes([i.wrapping_mul(37); 32].map(|b| b ^ i));
        let id = got.swarm_for(&mailbox).unwrap();
        let p = fold_mailbox(&mailbox);
        let best = ids
            .iter()
            .min_by_key(|s| (ring_distance(**s, p), **s))
            .unwrap();
        assert_eq!(id, *best);
        let members = got.members_for(&mailbox);
        assert_eq!(members.len(), swarms[&id].len());
        assert!(members.iter().all(|m| m.swarm == id));
    }

    let d3 = descriptor(3);
    let entry = got.node(&d3.identity.node_id()).unwrap();
    assert_eq!(entry.addresses, d3.addresses);
    assert_eq!(
        got.onion_key(&d3.identity.node_id(), Epoch(101)),
        Some(*d3.onion_keys[1].onion_key())
    );
    assert_eq!(got.onion_key(&d3.identity.node_id(), Epoch(102)), None);
    assert_eq!(got.onion_key(&kp(99).public().node_id(), Epoch(100)), None);
    assert!(got.node(&kp(99).public().node_id()).is_none());

    // Empty roster: no swarm.
    let empty = Roster::new("allium-devnet", 1, NOW, 3, vec![]).unwrap();
    let e = SignedRoster::decode_and_verify(&empty.sign(&[&auth]).unwrap().encode(), &net, None)
        .unwrap();
    assert_eq!(e.swarm_for(&Mailbox::from_bytes([0; 32])), None);
    assert!(e.members_for(&Mailbox::from_bytes([0; 32])).is_empty());
}

#[test]
fn roster_signature_refusals() {
    let (a, b, stranger) = (kp(0xa0), kp(0xa1), kp(0xee));
    let one = network(&[&a], 1);
    let two = network(&[&a, &b], 2);
    let r = roster("allium-devnet", 3, &[1, 2, 3]);
    let body = r.encode();
    let verify =
        |bytes: &[u8], net: &NetworkFile| SignedRoster::decode_and_verify(bytes, net, None);

    assert_eq!(
        verify(&envelope(&body, &[]), &one),
        Err(RosterError::Unsigned)
    );
    let mut bad = roster_sig(&a, &body);
    bad.1[0] ^= 1;
    assert_eq!(
        verify(&envelope(&body, &[bad]), &one),
        Err(RosterError::BadSignature)
    );
    // Signed over the body without the domain string.
    let nodomain = (a.public().to_bytes(), a.sign(&body));
    assert_eq!(
        verify(&envelope(&body, &[nodomain]), &one),
        Err(RosterError::BadSignature)
    );
    assert_eq!(
        verify(&envelope(&body, &[roster_sig(&stranger, &body)]), &one),
        Err(RosterError::UnknownAuthority)
    );
    // Unknown signatures are ignored, not counted.
    assert!(
        verify(
            &envelope(
                &body,
                &[roster_sig(&stranger, &body), roster_sig(&a, &body)]
            ),
            &one
        )
        .is_ok()
    );

    // Threshold 2 of 2.
    let sa = roster_sig(&a, &body);
    let sb = roster_sig(&b, &body);
    assert_eq!(
        verify(&envelope(&body, &[sa]), &two),
        Err(RosterError::BelowThreshold {
            valid: 1,
            needed: 2
        })
    );
    assert_eq!(
        verify(&envelope(&body, &[sa, sa]), &two),
        Err(RosterError::BelowThreshold {
            valid: 1,
            needed: 2
        })
    );
    assert_eq!(
        verify(&envelope(&body, &[sa, roster_sig(&stranger, &body)]), &two),
        Err(RosterError::BelowThreshold {
            valid: 1,
            needed: 2
        })
    );
    let mut bad_b = sb;
    bad_b.1[5] ^= 1;
    assert_eq!(
        verify(&envelope(&body, &[sa, bad_b]), &two),
        Err(RosterError::BadSignature)
    );
    // A second, broken signature by an authority that already signed validly is ignored.
    assert_eq!(verify(&envelope(&body, &[sa, bad, sb]), &two).unwrap(), r);
    assert_eq!(verify(&envelope(&body, &[sb, sa]), &two).unwrap(), r);
    assert_eq!(
        verify(&r.sign(&[&a, &b]).unwrap().encode(), &two).unwrap(),
        r
    );
    // Co-signing: one authority signs, the other adds its signature to the decoded envelope.
    let mut co = SignedRoster::decode(&r.sign(&[&a]).unwrap().encode()).unwrap();
    co.add_signature(&b).unwrap();
    co.add_signature(&b).unwrap();
    assert_eq!(co.signatures().len(), 2);
    assert_eq!(verify(&co.encode(), &two).unwrap(), r);
    assert_eq!(r.sign(&[]), Err(RosterError::SignatureCount));
}

#[test]
fn roster_content_refusals() {
    let a = kp(0xa0);
    let net = network(&[&a], 1);
    let signed = |body: &[u8]| envelope(body, &[roster_sig(&a, body)]);

    // Another network's roster, properly signed.
    let other = roster("other-net", 3, &[1, 2, 3]);
    assert!(matches!(
        SignedRoster::decode_and_verify(&signed(&other.encode()), &net, None),
        Err(RosterError::WrongNetwork { .. })
    ));

    // Versions: older refused, equal and newer accepted.
    let r = roster("allium-devnet", 5, &[1, 2, 3]);
    let bytes = signed(&r.encode());
    assert_eq!(
        SignedRoster::decode_and_verify(&bytes, &net, Some(6)),
        Err(RosterError::Outdated { held: 6, got: 5 })
    );
    assert!(SignedRoster::decode_and_verify(&bytes, &net, Some(5)).is_ok());
    assert!(SignedRoster::decode_and_verify(&bytes, &net, Some(4)).is_ok());

    // A node listed twice, and nodes out of order.
    let entries = entries_of(&r);
    let dup = with_entries(
        &r,
        &[entries[0].clone(), entries[0].clone(), entries[1].clone()],
    );
    assert!(matches!(
        SignedRoster::decode_and_verify(&signed(&dup), &net, None),
        Err(RosterError::DuplicateIdentity(_))
    ));
    let unsorted = with_entries(&r, &[entries[1].clone(), entries[0].clone()]);
    assert_eq!(
        SignedRoster::decode_and_verify(&signed(&unsorted), &net, None),
        Err(RosterError::Unsorted)
    );
    assert_eq!(with_entries(&r, &entries), r.encode());
    let mut twice = r.nodes().to_vec();
    twice.push(twice[0].clone());
    assert!(matches!(
        Roster::new("allium-devnet", 1, NOW, 3, twice),
        Err(RosterError::DuplicateIdentity(_))
    ));

    // A certificate that does not verify: the authority's signature vouches for it, so the
    // roster is taken (roster.md §4.2 step 4), an audit names the node, and an authority
    // checking the body before signing it refuses it.
    let n0 = &r.nodes()[0];
    let c = n0.onion_keys[0].to_bytes();
    let mut bad_c = c;
    bad_c[70] ^= 1;
    let body = replace(&r.encode(), &c, &bad_c);
    let taken = SignedRoster::decode_and_verify(&signed(&body), &net, None).unwrap();
    assert_eq!(taken.encode(), body);
    assert_eq!(taken.audit(), vec![n0.identity.node_id()]);
    assert_eq!(
        taken.nodes()[0].verify_certificates(),
        Err(RosterError::BadCert)
    );
    assert!(
        taken.nodes()[1..]
            .iter()
            .all(|n| n.verify_certificates().is_ok())
    );
    assert!(r.audit().is_empty());
    assert_eq!(Roster::decode(&body), Err(RosterError::BadCert));
    let foreign = cert(&kp(0x42), 100, 1).to_bytes();
    let body = replace(&r.encode(), &c, &foreign);
    assert_eq!(
        SignedRoster::decode_and_verify(&signed(&body), &net, None),
        Err(RosterError::CertIdentityMismatch)
    );
    let mut e = n0.clone();
    e.onion_keys[0] = cert(&kp(0x42), 100, 1);
    assert_eq!(
        Roster::new("allium-devnet", 1, NOW, 3, vec![e]),
        Err(RosterError::CertIdentityMismatch)
    );

    // A swarm size out of range.
    let mut body = r.encode();
    let pos = body.windows(2).position(|w| w == [0x03, 0x03]).unwrap();
    body[pos + 1] = 0x00;
    assert_eq!(
        SignedRoster::decode_and_verify(&signed(&body), &net, None),
        Err(RosterError::Decode(DecodeError::InvalidValue("swarm size")))
    );
}

#[test]
fn roster_refuses_truncated_garbage_and_oversized_input() {
    let a = kp(0xa0);
    let net = network(&[&a], 1);
    let r = roster("allium-devnet", 1, &[1, 2, 3, 4]);
    let bytes = r.sign(&[&a]).unwrap().encode();
    for n in 0..bytes.len() {
        assert!(
            SignedRoster::decode_and_verify(&bytes[..n], &net, None).is_err(),
            "prefix {n}"
        );
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(
        SignedRoster::decode_and_verify(&trailing, &net, None),
        Err(RosterError::Decode(DecodeError::TrailingBytes))
    );
    assert!(matches!(
        SignedRoster::decode_and_verify(&vec![0xa2; MAX_SIGNED_ROSTER_BYTES + 1], &net, None),
        Err(RosterError::Decode(DecodeError::TooLarge { .. }))
    ));
    // A node array that claims more entries than the limit.
    let mut body = with_entries(&r, &[]);
    body.pop();
    head(4, MAX_NODES as u64 + 1, &mut body);
    assert_eq!(
        SignedRoster::decode_and_verify(&envelope(&body, &[roster_sig(&a, &body)]), &net, None),
        Err(RosterError::Decode(DecodeError::TooLong { max: MAX_NODES }))
    );
    // Every single-bit flip is refused (or, nowhere, yields another roster).
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x04;
        if let Ok(got) = SignedRoster::decode_and_verify(&b, &net, None) {
            assert_eq!(got, r, "flip at {i}");
        }
    }
}

#[test]
fn held_roster_keeps_the_last_good_one() {
    let a = kp(0xa0);
    let held = RosterHolder::new(network(&[&a], 1));
    assert_eq!(held.version(), None);
    assert!(matches!(held.answer(None), DirectoryResponse::Refused(_)));
    let v2 = roster("allium-devnet", 2, &[1, 2, 3])
        .sign(&[&a])
        .unwrap()
        .encode();
    let v1 = roster("allium-devnet", 1, &[1, 2, 3, 4])
        .sign(&[&a])
        .unwrap()
        .encode();
    let v3 = roster("allium-devnet", 3, &[1, 2, 3, 4, 5])
        .sign(&[&a])
        .unwrap()
        .encode();
    assert_eq!(held.offer(&v2), Ok(Offered::Updated));
    assert_eq!(held.offer(&v2), Ok(Offered::Same));
    assert!(matches!(
        held.offer(&v1),
        Err(RosterError::Outdated { held: 2, got: 1 })
    ));
    assert!(held.offer(&v3[..v3.len() - 1]).is_err());
    let forged = roster("allium-devnet", 9, &[1])
        .sign(&[&kp(0xee)])
        .unwrap()
        .encode();
    assert_eq!(held.offer(&forged), Err(RosterError::UnknownAuthority));
    assert_eq!(held.version(), Some(2));
    assert_eq!(held.current().unwrap().signed(), v2.as_slice());
    assert_eq!(held.answer(Some(2)), DirectoryResponse::NotModified);
    assert_eq!(held.answer(Some(1)), DirectoryResponse::Roster(v2.clone()));
    assert_eq!(held.offer(&v3), Ok(Offered::Updated));
    assert_eq!(held.current().unwrap().roster().nodes().len(), 5);
}

// ---- directory messages ----------------------------------------------------------------------

#[test]
fn directory_messages_round_trip_and_refuse_malformed_input() {
    let desc = SignedDescriptor::sign(&kp(1), &descriptor(1))
        .unwrap()
        .encode();
    for req in [
        DirectoryRequest::Register(desc.clone()),
        DirectoryRequest::GetRoster { have_version: None },
        DirectoryRequest::GetRoster {
            have_version: Some(0),
        },
        DirectoryRequest::GetRoster {
            have_version: Some(u64::MAX),
        },
        DirectoryRequest::Probe,
        DirectoryRequest::GetDelta { from: 0 },
        DirectoryRequest::GetDelta { from: u64::MAX },
    ] {
        let b = req.encode();
        assert_eq!(DirectoryRequest::decode(&b).unwrap(), req);
        for n in 0..b.len() {
            assert!(DirectoryRequest::decode(&b[..n]).is_err());
        }
    }
    for resp in [
        DirectoryResponse::Registered { roster_version: 12 },
        DirectoryResponse::Roster(vec![1, 2, 3]),
        DirectoryResponse::NotModified,
        DirectoryResponse::Refused("node unreachable at 10.0.0.1:4433".into()),
        DirectoryResponse::Alive { roster_version: 0 },
        DirectoryResponse::Alive {
            roster_version: u64::MAX,
        },
        DirectoryResponse::Delta(vec![4, 5, 6]),
    ] {
        let b = resp.encode();
        assert_eq!(DirectoryResponse::decode(&b).unwrap(), resp);
        for n in 0..b.len() {
            assert!(DirectoryResponse::decode(&b[..n]).is_err());
        }
    }
    // A long reason is cut to 256 bytes at a character boundary.
    let long = DirectoryResponse::Refused("é".repeat(200)).encode();
    match DirectoryResponse::decode(&long).unwrap() {
        DirectoryResponse::Refused(s) => assert_eq!(s, "é".repeat(128)),
        other => panic!("{other:?}"),
    }
    // Unknown type, missing field, extra field, oversized inputs.
    assert_eq!(
        DirectoryRequest::decode(&[0xa1, 0x00, 0x07]),
        Err(DecodeError::InvalidValue("directory request type"))
    );
    assert_eq!(
        DirectoryRequest::decode(&[0xa1, 0x00, 0x00]),
        Err(DecodeError::MissingKey(1))
    );
    assert_eq!(
        DirectoryRequest::decode(&[0xa2, 0x00, 0x00, 0x01, 0x40]),
        Err(DecodeError::InvalidValue("descriptor"))
    );
    assert_eq!(
        DirectoryResponse::decode(&[0xa2, 0x00, 0x02, 0x01, 0x00]),
        Err(DecodeError::UnknownKey(1))
    );
    // A probe carries nothing; a delta request needs its version.
    assert_eq!(
        DirectoryRequest::decode(&[0xa2, 0x00, 0x02, 0x01, 0x00]),
        Err(DecodeError::UnknownKey(1))
    );
    assert_eq!(
        DirectoryRequest::decode(&[0xa1, 0x00, 0x03]),
        Err(DecodeError::MissingKey(1))
    );
    assert_eq!(
        DirectoryResponse::decode(&[0xa1, 0x00, 0x04]),
        Err(DecodeError::MissingKey(1))
    );
    assert_eq!(
        DirectoryResponse::decode(&[0xa1, 0x00, 0x06]),
        Err(DecodeError::InvalidValue("directory response type"))
    );
    assert_eq!(
        DirectoryResponse::decode(&[0xa0]),
        Err(DecodeError::MissingKey(0))
    );
    assert!(matches!(
        DirectoryRequest::decode(&vec![0; MAX_DIRECTORY_REQUEST_BYTES + 1]),
        Err(DecodeError::TooLarge { .. })
    ));
    let mut big = vec![0xa2, 0x00, 0x00, 0x01];
    bstr(&[0; MAX_SIGNED_DESCRIPTOR_BYTES + 1], &mut big);
    assert!(matches!(
        DirectoryRequest::decode(&big),
        Err(DecodeError::TooLong { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let net = network(&[&kp(0xa0)], 1);
        let _ = Descriptor::decode(&bytes);
        let _ = SignedDescriptor::decode_and_verify(&bytes, NOW, 60);
        let _ = Roster::decode(&bytes);
        let _ = SignedRoster::decode(&bytes);
        let _ = SignedRoster::decode_and_verify(&bytes, &net, Some(1));
        // The cached path, with the digest of these very bytes.
        let digest = verified_digest(&net, &bytes);
        let _ = RosterHolder::new(net.clone()).offer_cached(&bytes, Some(&digest));
        let _ = DirectoryRequest::decode(&bytes);
        let _ = DirectoryResponse::decode(&bytes);
        let _ = NetworkFile::from_toml(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_rosters_never_panic(i in 0usize..4096, byte in any::<u8>(), cut in 0usize..8) {
        let a = kp(0xa0);
        let net = network(&[&a], 1);
        let r = roster("allium-devnet", 1, &[1, 2]);
        let mut bytes = r.sign(&[&a]).unwrap().encode();
        let i = i % bytes.len();
        bytes[i] = byte;
        bytes.truncate(bytes.len() - cut.min(bytes.len()));
        if let Ok(got) = SignedRoster::decode_and_verify(&bytes, &net, None) {
            prop_assert_eq!(&got, &r);
        }
        // The roster body alone, mutated, decodes or fails but never panics.
        let mut body = r.encode();
        let j = i % body.len();
        body[j] = byte;
        let _ = Roster::decode(&body);
        let _ = Descriptor::decode(&body);
        // Signed by the authority, it reaches the decoder that leaves certificates to that
        // signature (roster.md §4.2 step 4): refused with a typed error, or canonical.
        body.truncate(body.len() - cut.min(body.len()));
        let signed = envelope(&body, &[roster_sig(&a, &body)]);
        if let Ok(got) = SignedRoster::decode_and_verify(&signed, &net, None) {
            prop_assert_eq!(got.encode(), body);
        }
    }
}

// ---- assignment ------------------------------------------------------------------------------

fn node_key(i: u32) -> NodeId {
    // Spread-out keys without the cost of Ed25519 (assignment sees only bytes).
    let mut k = [0u8; 32];
    let mut x = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5151;
    for chunk in k.chunks_mut(8) {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        chunk.copy_from_slice(&x.to_be_bytes());
    }
    NodeId::from_bytes(k)
}

fn sizes(a: &BTreeMap<NodeId, u64>) -> BTreeMap<u64, usize> {
    let mut s = BTreeMap::new();
    for id in a.values() {
        *s.entry(*id).or_insert(0) += 1;
    }
    s
}

fn check_invariants(a: &BTreeMap<NodeId, u64>, nodes: &BTreeSet<NodeId>, size: usize) {
    // Every node assigned exactly once, and nothing else.
    assert_eq!(a.keys().copied().collect::<BTreeSet<_>>(), *nodes);
    let s = sizes(a);
    if s.len() > 1 {
        assert!(
            s.values().all(|n| *n >= min_members(size)),
            "undersized swarm: {s:?}"
        );
    }
}

#[test]
fn nearest_is_the_ring_nearest_with_ties_to_the_smaller_id() {
    let ids: BTreeSet<u64> = [10, 20, u64::MAX - 5].into_iter().collect();
    assert_eq!(nearest_swarm(&ids, 15), Some(10)); // tie
    assert_eq!(nearest_swarm(&ids, 16), Some(20));
    assert_eq!(nearest_swarm(&ids, 2), Some(10));
    assert_eq!(nearest_swarm(&ids, u64::MAX), Some(u64::MAX - 5));
    // 2 is 8 from 10 and 8 (wrapping) from MAX-5: tie, the smaller id wins.
    let ids2: BTreeSet<u64> = [10, u64::MAX - 5].into_iter().collect();
    assert_eq!(nearest_swarm(&ids2, 2), Some(10));
    assert_eq!(nearest_swarm(&BTreeSet::new(), 2), None);
}

#[test]
fn fresh_assignment_fills_every_swarm() {
    for size in [1usize, 2, 3, 5, 8] {
        for n in 0..40u32 {
            let nodes: Vec<NodeId> = (0..n).map(node_key).collect();
            let a = assign(&BTreeMap::new(), &nodes, size);
            let set: BTreeSet<NodeId> = nodes.iter().copied().collect();
            check_invariants(&a, &set, size);
            let s = sizes(&a);
            assert!(
                s.values().all(|m| *m >= size.min(n as usize)),
                "size {size} n {n}: {s:?}"
            );
            if n as usize >= size {
                assert_eq!(s.len(), n as usize / size);
            }
            assert_eq!(assign(&BTreeMap::new(), &nodes, size), a, "deterministic");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn assignment_is_stable(
        size in 1usize..7,
        initial in 0u32..60,
        events in proptest::collection::vec((any::<bool>(), any::<u32>()), 1..40),
    ) {
        let mut nodes: BTreeSet<NodeId> = (0..initial).map(node_key).collect();
        let mut a = assign(&BTreeMap::new(), &nodes.iter().copied().collect::<Vec<_>>(), size);
        let mut next = initial;
        for (join, pick) in events {
            let before = a.clone();
            if join || nodes.is_empty() {
                nodes.insert(node_key(next));
                next += 1;
            } else {
                let victim = *nodes.iter().nth(pick as usize % nodes.len()).unwrap();
                nodes.remove(&victim);
            }
            let list: Vec<NodeId> = nodes.iter().copied().collect();
            a = assign(&before, &list, size);
            check_invariants(&a, &nodes, size);
            let m = moved(&before, &a);
            if join {
                let created = sizes(&a).len().saturating_sub(sizes(&before).len());
                prop_assert!(created <= 1);
                if created == 0 {
                    prop_assert_eq!(m, 0, "a join moved nodes without creating a swarm");
                } else {
                    prop_assert!(m < size, "a join moved {} >= {}", m, size);
                }
            } else {
                prop_assert!(m <= size, "a leave moved {} > {}", m, size);
            }
            // Order of the input list does not matter.
            let mut rev = list.clone();
            rev.reverse();
            prop_assert_eq!(assign(&before, &rev, size), a.clone());
        }
    }
}

/// The mailboxes of the measurement: mailbox `j` is `node_key(1_000_000 + j)`.
fn measured_mailboxes() -> Vec<Mailbox> {
    (0..10_000u32)
        .map(|j| Mailbox::from_bytes(node_key(1_000_000 + j).to_bytes()))
        .collect()
}

/// The nodes that join (`node_key(0)` … `node_key(99)`, in that order), and those that then
/// leave: leave `k` removes the node at index `node_key(k)[0] mod (nodes present)` of the nodes
/// present, kept in join order.
fn measured_inputs() -> (Vec<NodeId>, Vec<usize>, Vec<NodeId>) {
    let joins: Vec<NodeId> = (0..100).map(node_key).collect();
    let mut present = joins.clone();
    let (mut indices, mut leaves) = (vec![], vec![]);
    for k in 0..40u32 {
        let idx = usize::from(node_key(k).as_bytes()[0]) % present.len();
        indices.push(idx);
        leaves.push(present.remove(idx));
    }
    (joins, indices, leaves)
}

/// The join/leave measurements reported in `roster.md` §5.4, for one swarm size.
fn measure(joins: &[NodeId], leaves: &[NodeId], mailboxes: &[Mailbox], size: usize) -> Value {
    let holder = |a: &BTreeMap<NodeId, u64>| -> Vec<Option<u64>> {
        let ids: BTreeSet<u64> = a.values().copied().collect();
        mailboxes
            .iter()
            .map(|m| nearest_swarm(&ids, fold_mailbox(m)))
            .collect()
    };
    let changed =
        |x: &[Option<u64>], y: &[Option<u64>]| x.iter().zip(y).filter(|(a, b)| a != b).count();
    // Grow one node at a time.
    let mut nodes: Vec<NodeId> = vec![];
    let mut a = BTreeMap::new();
    let (mut node_moves, mut mb_moves, mut created) = (0, 0, 0);
    for n in joins {
        nodes.push(*n);
        let b = assign(&a, &nodes, size);
        node_moves += moved(&a, &b);
        created += sizes(&b).len().saturating_sub(sizes(&a).len());
        mb_moves += changed(&holder(&a), &holder(&b));
        a = b;
    }
    let grown_swarms = sizes(&a).len();
    // Then the leaves, one at a time.
    let (mut leave_moves, mut leave_max, mut leave_mb, mut dissolved) = (0, 0, 0, 0);
    for n in leaves {
        nodes.retain(|x| x != n);
        let b = assign(&a, &nodes, size);
        let m = moved(&a, &b);
        leave_moves += m;
        leave_max = leave_max.max(m);
        dissolved += sizes(&a).len().saturating_sub(sizes(&b).len());
        leave_mb += changed(&holder(&a), &holder(&b));
        a = b;
    }
    json!({
        "swarm_size": size,
        "join_100": {"node_moves": node_moves, "swarms_created": created,
                     "swarms": grown_swarms, "mailbox_moves_per_10000": mb_moves},
        "leave_40": {"node_moves": leave_moves, "max_per_leave": leave_max,
                     "swarms_dissolved": dissolved, "swarms": sizes(&a).len(),
                     "mailbox_moves_per_10000": leave_mb},
    })
}

fn blake2b256(data: &[u8]) -> [u8; 32] {
    use blake2::{Blake2b, Digest, digest::consts::U32};
    Blake2b::<U32>::digest(data).into()
}

/// The measurement with its inputs, as published.
fn measured() -> Value {
    let (joins, indices, leaves) = measured_inputs();
    let mailboxes = measured_mailboxes();
    let all: Vec<u8> = mailboxes.iter().flat_map(|m| *m.as_bytes()).collect();
    let hexes = |v: &[NodeId]| {
        v.iter()
            .map(|n| hex::encode(n.as_bytes()))
            .collect::<Vec<_>>()
    };
    json!({
        "node_key": "node_key(i), i a u32: x = (i * 0x9e3779b97f4a7c15 mod 2^64) XOR 0x5151; \
            then four times: x = x XOR (x >> 33), x = x * 0xff51afd7ed558ccd mod 2^64, append \
            u64be(x) (32 bytes in all)",
        "joins_rule": "node_key(0), ..., node_key(99), in that order",
        "leave_rule": "leave k = 0..39 removes the node at index node_key(k)[0] mod (nodes \
            present) of the nodes present, in join order",
        "mailbox_rule": "mailbox j = node_key(1000000 + j), j = 0..9999; blake2b256 is of the \
            10,000 mailboxes concatenated",
        "joins": hexes(&joins),
        "leave_indices": indices,
        "leaves": hexes(&leaves),
        "mailboxes": {
            "count": mailboxes.len(),
            "samples": ([0usize, 1, 9_999].map(|j| json!({
                "j": j, "mailbox": hex::encode(mailboxes[j].as_bytes()),
                "folded": format!("{:016x}", fold_mailbox(&mailboxes[j])),
            }))),
            "blake2b256": hex::encode(blake2b256(&all)),
        },
        "results": ([3usize, 5].map(|size| measure(&joins, &leaves, &mailboxes, size))),
    })
}

#[test]
fn measured_moves_hold_the_bounds() {
    let report = measured();
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&report["results"]).unwrap()
    );
    for r in report["results"].as_array().unwrap() {
        let s = r["swarm_size"].as_u64().unwrap();
        let created = r["join_100"]["swarms_created"].as_u64().unwrap();
        assert!(r["join_100"]["node_moves"].as_u64().unwrap() <= created * (s - 1));
        assert!(r["leave_40"]["max_per_leave"].as_u64().unwrap() <= s);
    }
}

// ---- vectors ---------------------------------------------------------------------------------

fn b32(v: &Value) -> [u8; 32] {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn node_of(v: &Value) -> NodeId {
    NodeId::from_bytes(b32(v))
}

fn assignment_json(a: &BTreeMap<NodeId, u64>) -> Value {
    a.iter()
        .map(|(n, id)| json!({"identity": hex::encode(n.as_bytes()), "swarm_id": id}))
        .collect()
}

fn assignment_of(v: &Value) -> BTreeMap<NodeId, u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| (node_of(&e["identity"]), e["swarm_id"].as_u64().unwrap()))
        .collect()
}

/// The inputs of the descriptor `descriptor(seed)` builds.
fn descriptor_input(seed: u8) -> Value {
    let d = descriptor(seed);
    json!({
        "identity_seed": hex::encode([seed; 32]),
        "addresses": d.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "onion_secret_seeds": [hex::encode([seed ^ 0x55; 32]), hex::encode([seed ^ 0xaa; 32])],
        "epochs": [100, 101],
        "software": d.software,
        "published_at": d.published_at,
    })
}

/// The descriptor of the inputs `v`: each onion secret seed is the X25519 secret key of its
/// epoch, used as it is (clamped by X25519), and its certificate is signed by the identity.
fn descriptor_of(v: &Value) -> (IdentityKeypair, Descriptor) {
    let id = IdentityKeypair::from_seed(&b32(&v["identity_seed"]));
    let onion_keys = v["onion_secret_seeds"]
        .as_array()
        .unwrap()
        .iter()
        .zip(v["epochs"].as_array().unwrap())
        .map(|(s, e)| {
            let epoch = Epoch(u32::try_from(e.as_u64().unwrap()).unwrap());
            OnionKeyCert::sign(&id, &OnionSecretKey::from_bytes(epoch, &b32(s)))
        })
        .collect();
    let d = Descriptor {
        identity: id.public(),
        addresses: v["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().parse().unwrap())
            .collect(),
        onion_keys,
        software: v["software"].as_str().unwrap().into(),
        published_at: v["published_at"].as_u64().unwrap(),
    };
    (id, d)
}

/// A descriptor vector: the inputs, the keys and certificates they give, and the encodings.
fn descriptor_case(input: &Value) -> Value {
    let (id, d) = descriptor_of(input);
    let sd = SignedDescriptor::sign(&id, &d).unwrap();
    let mut out = input.clone();
    out["identity"] = json!(hex::encode(d.identity.as_bytes()));
    out["onion_publics"] = d
        .onion_keys
        .iter()
        .map(|c| json!(hex::encode(c.onion_key().as_bytes())))
        .collect();
    out["onion_key_certs"] = d
        .onion_keys
        .iter()
        .map(|c| json!(hex::encode(c.to_bytes())))
        .collect();
    out["descriptor_cbor"] = json!(hex::encode(sd.descriptor_bytes()));
    out["signed_descriptor_cbor"] = json!(hex::encode(sd.encode()));
    out
}

/// A roster vector: the nodes' descriptor inputs, assigned from scratch with `swarm_size`,
/// signed by the authority with seed `authority_seed`.
fn roster_case(input: &Value) -> Value {
    let descs: Vec<Descriptor> = input["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| descriptor_of(n).1)
        .collect();
    let size = input["swarm_size"].as_u64().unwrap();
    let keys: Vec<NodeId> = descs.iter().map(|d| d.identity.node_id()).collect();
    let a = assign(&BTreeMap::new(), &keys, size as usize);
    let nodes = descs
        .into_iter()
        .map(|d| {
            let swarm = a[&d.identity.node_id()];
            NodeEntry::from_descriptor(d, swarm)
        })
        .collect();
    let r = Roster::new(
        input["network"].as_str().unwrap(),
        input["version"].as_u64().unwrap(),
        input["published_at"].as_u64().unwrap(),
        size as usize,
        nodes,
    )
    .unwrap();
    let auth = IdentityKeypair::from_seed(&b32(&input["authority_seed"]));
    let mut out = input.clone();
    out["assignment"] = assignment_json(&a);
    out["roster_cbor"] = json!(hex::encode(r.encode()));
    out["signed_roster_cbor"] = json!(hex::encode(r.sign(&[&auth]).unwrap().encode()));
    out
}

/// An assignment vector: `assign(previous, nodes, swarm_size)`.
fn assignment_case(input: &Value) -> Value {
    let previous = assignment_of(&input["previous"]);
    let nodes: Vec<NodeId> = input["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(node_of)
        .collect();
    let size = input["swarm_size"].as_u64().unwrap() as usize;
    let mut out = input.clone();
    out["result"] = assignment_json(&assign(&previous, &nodes, size));
    out
}

/// Rule 5 dissolving a swarm of two: 15 nodes with swarm size 5 form three swarms of 5; the
/// members of swarm 2^62 leave one at a time, smallest key first, and the third leave leaves it
/// 2 members, under `ceil(5/2) = 3` with no spare node anywhere. Its two members join the smallest
/// remaining swarm in turn: the smaller key swarm 0 (a tie at 5 members, to the smaller id), the
/// larger key swarm 2^63 (now the smaller).
fn dissolution_input() -> Value {
    let all: Vec<NodeId> = (200..215).map(node_key).collect();
    let mut a = assign(&BTreeMap::new(), &all, 5);
    let third = 1u64 << 62;
    let mut nodes = all.clone();
    for _ in 0..2 {
        let leaver = *a.iter().find(|(_, id)| **id == third).unwrap().0;
        nodes.retain(|n| *n != leaver);
        a = assign(&a, &nodes, 5);
    }
    let leaver = *a.iter().find(|(_, id)| **id == third).unwrap().0;
    nodes.retain(|n| *n != leaver);
    let stay: Vec<NodeId> = a
        .iter()
        .filter(|(n, id)| **id == third && **n != leaver)
        .map(|(n, _)| *n)
        .collect();
    let after = assign(&a, &nodes, 5);
    assert_eq!(stay.len(), 2);
    assert_eq!(after[&stay[0]], 0);
    assert_eq!(after[&stay[1]], 1 << 63);
    json!({
        "name": "rule 5: a swarm left with 2 of 5 dissolves; its members, in ascending key \
                 order, each join the smallest remaining swarm",
        "swarm_size": 5,
        "previous": assignment_json(&a),
        "nodes": nodes.iter().map(|n| hex::encode(n.as_bytes())).collect::<Vec<_>>(),
    })
}

/// A directory message: its value and encoding.
fn directory_case(v: &Value) -> Value {
    let bytes = if let Some(r) = v.get("request") {
        let req = match r["type"].as_u64().unwrap() {
            0 => {
                DirectoryRequest::Register(hex::decode(r["descriptor"].as_str().unwrap()).unwrap())
            }
            1 => DirectoryRequest::GetRoster {
                have_version: r.get("version").map(|x| x.as_u64().unwrap()),
            },
            2 => DirectoryRequest::Probe,
            3 => DirectoryRequest::GetDelta {
                from: r["version"].as_u64().unwrap(),
            },
            t => panic!("request type {t}"),
        };
        let b = req.encode();
        assert_eq!(DirectoryRequest::decode(&b).unwrap(), req);
        b
    } else {
        let r = &v["response"];
        let resp = match r["type"].as_u64().unwrap() {
            0 => DirectoryResponse::Registered {
                roster_version: r["version"].as_u64().unwrap(),
            },
            1 => DirectoryResponse::Roster(hex::decode(r["roster"].as_str().unwrap()).unwrap()),
            2 => DirectoryResponse::NotModified,
            3 => DirectoryResponse::Refused(r["reason"].as_str().unwrap().into()),
            4 => DirectoryResponse::Alive {
                roster_version: r["version"].as_u64().unwrap(),
            },
            5 => DirectoryResponse::Delta(hex::decode(r["delta"].as_str().unwrap()).unwrap()),
            t => panic!("response type {t}"),
        };
        let b = resp.encode();
        assert_eq!(DirectoryResponse::decode(&b).unwrap(), resp);
        b
    };
    let mut out = v.clone();
    out["cbor"] = json!(hex::encode(bytes));
    out
}

fn swarm_for_case(roster: &Roster, mailbox: &Value) -> Value {
    let m = Mailbox::from_bytes(b32(mailbox));
    json!({"mailbox": mailbox, "folded": format!("{:016x}", fold_mailbox(&m)),
           "swarm_id": roster.swarm_for(&m)})
}

/// The verified digest (roster.md §4.3) of the network file's and the roster case's signed
/// roster, both published beside it.
fn verified_digest_case(net: &NetworkFile, roster: &Value) -> Value {
    let sr = hex::decode(roster["signed_roster_cbor"].as_str().unwrap()).unwrap();
    json!({
        "inputs": "network.toml (its fingerprint) and roster.signed_roster_cbor",
        "digest": hex::encode(verified_digest(net, &sr)),
    })
}

/// A roster whose authority signed a certificate that does not verify (roster.md §4.2 step 4,
/// §4.3): the roster case's body with one bit of one certificate's signature flipped, signed by
/// the authority. Roster verification takes it; an audit, and an authority checking the body,
/// find the certificate.
fn bad_certificate_case(net: &NetworkFile, roster: &Value, input: &Value) -> Value {
    let body = hex::decode(roster["roster_cbor"].as_str().unwrap()).unwrap();
    let r = Roster::decode(&body).unwrap();
    let node = &r.nodes()[input["node_index"].as_u64().unwrap() as usize];
    let cert = node.onion_keys[input["certificate_index"].as_u64().unwrap() as usize].to_bytes();
    let mut bad = cert;
    bad[input["flipped_byte"].as_u64().unwrap() as usize] ^=
        input["flip_mask"].as_u64().unwrap() as u8;
    let body = replace(&body, &cert, &bad);
    let authority = IdentityKeypair::from_seed(&b32(&roster["authority_seed"]));
    let signed = envelope(&body, &[roster_sig(&authority, &body)]);
    let taken = SignedRoster::decode_and_verify(&signed, net, None).unwrap();
    let mut out = input.clone();
    out["signed_roster_cbor"] = json!(hex::encode(&signed));
    out["verification"] = json!("accepted");
    out["audit"] = json!(
        taken
            .audit()
            .iter()
            .map(|id| hex::encode(id.as_bytes()))
            .collect::<Vec<_>>()
    );
    out["authority_check"] = json!(match Roster::decode(&body) {
        Err(RosterError::BadCert) => "bad_cert",
        _ => "other",
    });
    out
}

fn bad_certificate_input() -> Value {
    json!({
        "inputs": "roster.roster_cbor and roster.authority_seed; in node node_index's certificate \
            certificate_index (132 bytes: identity, epoch, onion key, signature), byte \
            flipped_byte XOR flip_mask (byte 68 is the signature's first)",
        "node_index": 0,
        "certificate_index": 0,
        "flipped_byte": 68,
        "flip_mask": 1,
    })
}

/// The inputs of the delta vector: version 2 of the `roster` vector's network, where node 3
/// leaves, node 8 joins and node 5 publishes new onion keys (epochs 101 and 102).
fn delta_input() -> Value {
    let mut five = descriptor_input(5);
    five["onion_secret_seeds"] = json!([hex::encode([5 ^ 0xaa; 32]), hex::encode([5 ^ 0x33; 32])]);
    five["epochs"] = json!([101, 102]);
    five["published_at"] = json!(NOW + 60);
    json!({
        "base": "roster",
        "version": 2,
        "published_at": NOW + 60,
        "leaves": [hex::encode([3u8; 32])],
        "joins": [descriptor_input(8)],
        "changes": [five],
    })
}

/// The delta vector: the roster `base` (a `roster` vector) becomes version `version`, with the
/// nodes of `leaves` (identity seeds) removed, `joins` added and `changes` replacing the
/// descriptors of their nodes; swarms are assigned from `base`'s assignment (§5.2), signed by
/// `base`'s authority. Gives the new roster, the delta from `base` and the directory response
/// carrying it, and checks that the delta applied to `base` rebuilds the new roster's bytes.
fn delta_case(input: &Value, base: &Value) -> Value {
    let auth = IdentityKeypair::from_seed(&b32(&base["authority_seed"]));
    let net = network(&[&auth], 1);
    let base_signed = hex::decode(base["signed_roster_cbor"].as_str().unwrap()).unwrap();
    let old = SignedRoster::decode_and_verify(&base_signed, &net, None).unwrap();
    let leaves: Vec<IdentityPublicKey> = input["leaves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| IdentityKeypair::from_seed(&b32(s)).public())
        .collect();
    let mut descs: BTreeMap<NodeId, Descriptor> = base["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| descriptor_of(n).1)
        .filter(|d| !leaves.contains(&d.identity))
        .map(|d| (d.identity.node_id(), d))
        .collect();
    for n in input["joins"]
        .as_array()
        .unwrap()
        .iter()
        .chain(input["changes"].as_array().unwrap())
    {
        let d = descriptor_of(n).1;
        descs.insert(d.identity.node_id(), d);
    }
    let keys: Vec<NodeId> = descs.keys().copied().collect();
    let size = base["swarm_size"].as_u64().unwrap() as usize;
    let a = assign(&old.assignment(), &keys, size);
    let nodes = descs
        .into_values()
        .map(|d| {
            let swarm = a[&d.identity.node_id()];
            NodeEntry::from_descriptor(d, swarm)
        })
        .collect();
    let new = Roster::new(
        old.network(),
        input["version"].as_u64().unwrap(),
        input["published_at"].as_u64().unwrap(),
        size,
        nodes,
    )
    .unwrap();
    let signed = new.sign(&[&auth]).unwrap();
    let delta = RosterDelta::between(&RosterSummary::of(&old), &signed).unwrap();
    let delta_bytes = delta.encode();
    let (rebuilt, rebuilt_signed) = RosterDelta::decode(&delta_bytes)
        .unwrap()
        .apply(&old, &net)
        .unwrap();
    assert_eq!(rebuilt.encode(), new.encode());
    assert_eq!(rebuilt_signed, signed.encode());
    let mut out = input.clone();
    out["assignment"] = assignment_json(&a);
    out["roster_cbor"] = json!(hex::encode(new.encode()));
    out["signed_roster_cbor"] = json!(hex::encode(signed.encode()));
    out["delta_cbor"] = json!(hex::encode(&delta_bytes));
    out["response_cbor"] = json!(hex::encode(DirectoryResponse::Delta(delta_bytes).encode()));
    out
}

fn vectors() -> Value {
    let auth = kp(0xa0);
    let net = network(&[&auth], 1);
    let addr: SocketAddr = "127.0.0.1:4433".parse().unwrap();
    let desc = descriptor_case(&descriptor_input(1));
    let roster_in = json!({
        "network": "allium-devnet",
        "version": 1,
        "published_at": NOW,
        "swarm_size": 3,
        "authority_seed": hex::encode([0xa0u8; 32]),
        "nodes": (1..=7).map(descriptor_input).collect::<Vec<_>>(),
    });
    let r = roster("allium-devnet", 1, &[1, 2, 3, 4, 5, 6, 7]);
    let mailboxes = [
        [0u8; 32],
        [0xff; 32],
        std::array::from_fn(|i| i as u8),
        *kp(9).public().as_bytes(),
    ];
    let directory = [
        (
            "register",
            json!({"request": {"type": 0, "descriptor": desc["signed_descriptor_cbor"]}}),
        ),
        ("get_roster_none", json!({"request": {"type": 1}})),
        (
            "get_roster_7",
            json!({"request": {"type": 1, "version": 7}}),
        ),
        (
            "registered_7",
            json!({"response": {"type": 0, "version": 7}}),
        ),
        (
            "roster",
            json!({"response": {"type": 1, "roster": hex::encode(b"signed roster bytes")}}),
        ),
        ("not_modified", json!({"response": {"type": 2}})),
        (
            "refused",
            json!({"response": {"type": 3, "reason": "unreachable"}}),
        ),
        ("probe", json!({"request": {"type": 2}})),
        ("get_delta_7", json!({"request": {"type": 3, "version": 7}})),
        ("alive_7", json!({"response": {"type": 4, "version": 7}})),
        (
            "delta",
            json!({"response": {"type": 5, "delta": hex::encode(b"roster delta bytes")}}),
        ),
    ];
    json!({
        "description": "Allium roster test vectors (whitepaper/roster.md, section 8). Byte strings \
            are hex. Each value is given with the inputs it is computed from. An identity_seed \
            (and authority_seed) is an Ed25519 secret key (RFC 8032 seed). Each of \
            onion_secret_seeds is the X25519 secret key of the onion key for the epoch at the \
            same place in epochs, used as it is (X25519 clamps it, RFC 7748): its public key is \
            in onion_publics and its certificate (onion.md section 1.1), signed by the identity, \
            in onion_key_certs.",
        "network": {
            "toml": net.to_toml(),
            "authority_seed": hex::encode([0xa0u8; 32]),
            "canonical_cbor": hex::encode(net.canonical_bytes()),
            "fingerprint": net.fingerprint_hex(),
            "authority_address": addr.to_string(),
        },
        "network_refused": REFUSED_AUTHORITY_KEYS
            .iter()
            .map(|(k, _)| network_refused_case(&json!({ "identity": k })))
            .collect::<Vec<_>>(),
        "descriptor": desc,
        "roster": roster_case(&roster_in),
        "roster_delta": delta_case(&delta_input(), &roster_case(&roster_in)),
        "verified_roster_digest": verified_digest_case(&net, &roster_case(&roster_in)),
        "roster_bad_certificate": bad_certificate_case(&net, &roster_case(&roster_in), &bad_certificate_input()),
        "swarm_for": mailboxes.iter().map(|m| swarm_for_case(&r, &json!(hex::encode(m)))).collect::<Vec<_>>(),
        "assignment_cases": [assignment_case(&dissolution_input())],
        "measured_moves": measured(),
        "directory": directory
            .iter()
            .map(|(n, v)| (n.to_string(), directory_case(v)))
            .collect::<serde_json::Map<_, _>>(),
    })
}

/// Rebuilds every value of the file from the inputs published in it.
fn rebuild(p: &Value) -> Value {
    let mut out = p.clone();
    let net = NetworkFile::from_toml(p["network"]["toml"].as_str().unwrap()).unwrap();
    let auth = IdentityKeypair::from_seed(&b32(&p["network"]["authority_seed"]));
    assert_eq!(net.authorities()[0].identity, auth.public());
    out["network"]["canonical_cbor"] = json!(hex::encode(net.canonical_bytes()));
    out["network"]["fingerprint"] = json!(net.fingerprint_hex());
    out["network_refused"] = p["network_refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(network_refused_case)
        .collect();
    let strip = |v: &Value, keys: &[&str]| {
        let mut v = v.clone();
        for k in keys {
            v.as_object_mut().unwrap().remove(*k);
        }
        v
    };
    out["descriptor"] = descriptor_case(&strip(
        &p["descriptor"],
        &[
            "identity",
            "onion_publics",
            "onion_key_certs",
            "descriptor_cbor",
            "signed_descriptor_cbor",
        ],
    ));
    out["roster"] = roster_case(&strip(
        &p["roster"],
        &["assignment", "roster_cbor", "signed_roster_cbor"],
    ));
    out["roster_delta"] = delta_case(
        &strip(
            &p["roster_delta"],
            &[
                "assignment",
                "roster_cbor",
                "signed_roster_cbor",
                "delta_cbor",
                "response_cbor",
            ],
        ),
        &out["roster"],
    );
    let sr = hex::decode(out["roster"]["signed_roster_cbor"].as_str().unwrap()).unwrap();
    let r = SignedRoster::decode_and_verify(&sr, &net, None).unwrap();
    out["verified_roster_digest"] = verified_digest_case(&net, &out["roster"]);
    out["roster_bad_certificate"] = bad_certificate_case(
        &net,
        &out["roster"],
        &strip(
            &p["roster_bad_certificate"],
            &[
                "signed_roster_cbor",
                "verification",
                "audit",
                "authority_check",
            ],
        ),
    );
    out["swarm_for"] = p["swarm_for"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| swarm_for_case(&r, &c["mailbox"]))
        .collect();
    out["assignment_cases"] = p["assignment_cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| assignment_case(&strip(c, &["result"])))
        .collect();
    for (name, c) in p["directory"].as_object().unwrap() {
        out["directory"][name] = directory_case(&strip(c, &["cbor"]));
    }
    // The measurement: the published joins and leaves, the leave indices they follow from, and
    // the mailboxes from their generator.
    let m = &p["measured_moves"];
    let joins: Vec<NodeId> = m["joins"].as_array().unwrap().iter().map(node_of).collect();
    let mut present = joins.clone();
    let leaves: Vec<NodeId> = m["leave_indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| present.remove(i.as_u64().unwrap() as usize))
        .collect();
    assert_eq!(
        leaves,
        m["leaves"]
            .as_array()
            .unwrap()
            .iter()
            .map(node_of)
            .collect::<Vec<_>>()
    );
    let mailboxes = measured_mailboxes();
    let all: Vec<u8> = mailboxes.iter().flat_map(|x| *x.as_bytes()).collect();
    assert_eq!(
        m["mailboxes"]["blake2b256"],
        json!(hex::encode(blake2b256(&all)))
    );
    out["measured_moves"]["results"] = m["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            measure(
                &joins,
                &leaves,
                &mailboxes,
                r["swarm_size"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    out
}

#[test]
fn vectors_match_the_whitepaper() {
    let computed = vectors();
    if std::env::var_os("ALLIUM_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&computed).unwrap() + "\n";
        std::fs::write(VECTORS, text).unwrap();
    }
    let published: Value =
        serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    assert_eq!(
        published, computed,
        "whitepaper/vectors/roster.json differs from the code"
    );
    // Every value is what the inputs published beside it give.
    assert_eq!(
        rebuild(&published),
        published,
        "a value in whitepaper/vectors/roster.json is not recomputed from its inputs"
    );
    // The published bytes verify and re-encode to themselves.
    let net = NetworkFile::from_toml(published["network"]["toml"].as_str().unwrap()).unwrap();
    let sr = hex::decode(published["roster"]["signed_roster_cbor"].as_str().unwrap()).unwrap();
    let r = SignedRoster::decode_and_verify(&sr, &net, None).unwrap();
    assert_eq!(
        r.encode(),
        hex::decode(published["roster"]["roster_cbor"].as_str().unwrap()).unwrap()
    );
    assert_eq!(r.sign(&[&kp(0xa0)]).unwrap().encode(), sr);
    let sd = hex::decode(
        published["descriptor"]["signed_descriptor_cbor"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    SignedDescriptor::decode_and_verify(&sd, NOW, 0).unwrap();
}

/// A cached roster is checked as a fresh one whatever digest comes with it (roster.md §4.3):
/// the digest recorded is the one the vector gives, the same roster loads with it, without it
/// or with a wrong one, and it never covers for the authority's signature, the network or the
/// version rule.
#[test]
fn a_cached_roster_is_checked_as_a_fresh_one_whatever_its_digest() {
    let a = kp(0xa0);
    let net = network(&[&a], 1);
    let r = roster("allium-devnet", 5, &[1, 2, 3]);
    let good = r.sign(&[&a]).unwrap().encode();

    // A full check, then the recorded digest: the same roster, either way.
    let first = RosterHolder::new(net.clone());
    assert_eq!(first.offer(&good), Ok(Offered::Updated));
    let digest = first.current().unwrap().verified_digest();
    assert_eq!(digest, verified_digest(&net, &good));
    let cached = RosterHolder::new(net.clone());
    assert_eq!(
        cached.offer_cached(&good, Some(&digest)),
        Ok(Offered::Updated)
    );
    assert_eq!(cached.current().unwrap().roster(), &r);
    assert_eq!(cached.current().unwrap().verified_digest(), digest);

    for d in [None, Some(&[0u8; 32])] {
        let h = RosterHolder::new(net.clone());
        assert_eq!(h.offer_cached(&good, d), Ok(Offered::Updated));
        assert_eq!(h.current().unwrap().roster(), &r);
    }

    // The digest never covers for the authority's signature, the network or the version rule.
    let mut forged = good.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(
        RosterHolder::new(net.clone()).offer_cached(&forged, Some(&verified_digest(&net, &forged))),
        Err(RosterError::BadSignature)
    );
    // Every single-bit flip of the cached bytes, with the digest of the flipped bytes (as a
    // writer of both files could record), is refused or yields the same roster.
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x04;
        let d = verified_digest(&net, &b);
        if RosterHolder::new(net.clone())
            .offer_cached(&b, Some(&d))
            .is_ok()
        {
            let h = RosterHolder::new(net.clone());
            h.offer_cached(&b, Some(&d)).unwrap();
            assert_eq!(h.current().unwrap().roster(), &r, "flip at {i}");
        }
    }
    let other_net = network(&[&a, &kp(0xa1)], 1);
    assert_ne!(verified_digest(&other_net, &good), digest);
    let newer = roster("allium-devnet", 6, &[1, 2, 3])
        .sign(&[&a])
        .unwrap()
        .encode();
    let holder = RosterHolder::new(net.clone());
    assert_eq!(holder.offer(&newer), Ok(Offered::Updated));
    assert!(matches!(
        holder.offer_cached(&good, Some(&digest)),
        Err(RosterError::Outdated { held: 6, got: 5 })
    ));
}

// ---- roster deltas (roster.md §6.3) ----------------------------------------------------------

/// A hand-made delta: `{0: base, 1: version, 2: published_at, 3: swarm size, 4: removed,
/// 5: entries, 6: signatures}`.
fn delta_bytes(
    base: u64,
    r: &Roster,
    removed: &[[u8; 32]],
    entries: &[Vec<u8>],
    sigs: &[([u8; 32], [u8; 64])],
) -> Vec<u8> {
    let mut out = vec![0xa7, 0x00];
    head(0, base, &mut out);
    out.push(0x01);
    head(0, r.version(), &mut out);
    out.push(0x02);
    head(0, r.published_at(), &mut out);
    out.push(0x03);
    head(0, r.swarm_size() as u64, &mut out);
    out.push(0x04);
    head(4, removed.len() as u64, &mut out);
    for id in removed {
        bstr(id, &mut out);
    }
    out.push(0x05);
    head(4, entries.len() as u64, &mut out);
    for e in entries {
        out.extend_from_slice(e);
    }
    out.push(0x06);
    head(4, sigs.len() as u64, &mut out);
    for (id, sig) in sigs {
        out.extend([0xa2, 0x00]);
        bstr(id, &mut out);
        out.push(0x01);
        bstr(sig, &mut out);
    }
    out
}

fn id_bytes(seed: u8) -> [u8; 32] {
    kp(seed).public().to_bytes()
}

#[test]
fn a_delta_rebuilds_the_signed_roster_and_a_holder_answers_with_it() {
    let a = kp(0xa0);
    let net = network(&[&a], 1);
    let v1 = roster("allium-devnet", 1, &[1, 2, 3, 4]);
    let v2 = roster("allium-devnet", 2, &[1, 2, 4, 5]);
    let s1 = v1.sign(&[&a]).unwrap();
    let s2 = v2.sign(&[&a]).unwrap();
    let delta = RosterDelta::between(&RosterSummary::of(&v1), &s2).unwrap();
    assert_eq!(delta.removed(), &[kp(3).public().node_id()]);
    assert_eq!(delta.changed().len(), 1);
    let (rebuilt, signed) = delta.apply(&v1, &net).unwrap();
    assert_eq!(rebuilt, v2);
    assert_eq!(signed, s2.encode());
    // Re-encoding the decoded delta gives its bytes.
    let bytes = delta.encode();
    assert_eq!(RosterDelta::decode(&bytes).unwrap().encode(), bytes);

    // A server holding v2 after v1 answers a delta from v1, the roster from anything else.
    let server = RosterHolder::new(net.clone());
    assert_eq!(
        server.answer_delta(1),
        DirectoryResponse::Refused("no roster yet".into())
    );
    server.offer(&s1.encode()).unwrap();
    server.offer(&s2.encode()).unwrap();
    assert_eq!(server.answer_delta(2), DirectoryResponse::NotModified);
    assert_eq!(
        server.answer_delta(1),
        DirectoryResponse::Delta(bytes.clone())
    );
    assert_eq!(
        server.answer_delta(0),
        DirectoryResponse::Roster(s2.encode())
    );
    assert_eq!(
        server.answer_delta(3),
        DirectoryResponse::Roster(s2.encode())
    );
    assert_eq!(
        server.answer_probe(),
        DirectoryResponse::Alive { roster_version: 2 }
    );

    // A node holding v1 takes the delta; the result is what the whole roster would give.
    let node = RosterHolder::new(net.clone());
    assert!(matches!(
        node.apply_delta(&bytes),
        Err(DeltaError::WrongBase { held: 0, base: 1 })
    ));
    node.offer(&s1.encode()).unwrap();
    assert_eq!(node.apply_delta(&bytes), Ok(Offered::Updated));
    let held = node.current().unwrap();
    assert_eq!(held.signed(), s2.encode().as_slice());
    assert_eq!(held.roster(), &v2);
    assert_eq!(held.verified_digest(), verified_digest(&net, &s2.encode()));
    // The node now answers deltas from v1 in turn.
    assert_eq!(
        node.answer_delta(1),
        DirectoryResponse::Delta(bytes.clone())
    );
    // Applying it again: its base is no longer held.
    assert!(matches!(
        node.apply_delta(&bytes),
        Err(DeltaError::WrongBase { held: 2, base: 1 })
    ));
}

#[test]
fn a_server_answers_deltas_from_its_last_versions_only() {
    let a = kp(0xa0);
    let net = network(&[&a], 1);
    let server = RosterHolder::new(net.clone());
    let total = DELTA_HISTORY as u64 + 3;
    for v in 1..=total {
        let seeds: Vec<u8> = (1..=(v as u8 + 1)).collect();
        let s = roster("allium-devnet", v, &seeds).sign(&[&a]).unwrap();
        server.offer(&s.encode()).unwrap();
    }
    for from in 1..total {
        let remembered = from >= total - DELTA_HISTORY as u64;
        match server.answer_delta(from) {
            DirectoryResponse::Delta(_) => assert!(remembered, "delta from {from}"),
            DirectoryResponse::Roster(_) => assert!(!remembered, "roster from {from}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn delta_refusals() {
    let a = kp(0xa0);
    let net = network(&[&a], 1);
    let v1 = roster("allium-devnet", 1, &[1, 2, 3]);
    let v2 = roster("allium-devnet", 2, &[1, 2, 4]);
    let body2 = v2.encode();
    let sig2 = roster_sig(&a, &body2);
    let e2 = entries_of(&v2);
    let e1 = entries_of(&v1);
    // Entries of v2 in identity order: find node 4's.
    let four = v2
        .nodes()
        .iter()
        .position(|n| n.identity == kp(4).public())
        .unwrap();
    let apply = |bytes: &[u8]| RosterDelta::decode(bytes)?.apply(&v1, &net);

    let good = delta_bytes(1, &v2, &[id_bytes(3)], &[e2[four].clone()], &[sig2]);
    assert_eq!(apply(&good).unwrap().1, envelope(&body2, &[sig2]));

    assert!(matches!(
        apply(&delta_bytes(
            7,
            &v2,
            &[id_bytes(3)],
            &[e2[four].clone()],
            &[sig2]
        )),
        Err(DeltaError::WrongBase { held: 1, base: 7 })
    ));
    let v1b = roster("allium-devnet", 1, &[1, 2, 4]);
    assert!(matches!(
        apply(&delta_bytes(1, &v1b, &[], &[], &[sig2])),
        Err(DeltaError::NotNewer {
            base: 1,
            version: 1
        })
    ));
    assert_eq!(
        apply(&delta_bytes(
            1,
            &v2,
            &[id_bytes(9)],
            &[e2[four].clone()],
            &[sig2]
        )),
        Err(DeltaError::RemovesAbsent)
    );
    // Node 1 removed and listed again.
    let one = v1
        .nodes()
        .iter()
        .position(|n| n.identity == kp(1).public())
        .unwrap();
    let mut changed = e2.clone();
    changed.retain(|e| e != &e1[one]);
    let mut with_one = vec![e1[one].clone(), e2[four].clone()];
    with_one.sort_by_key(|e| e[4..36].to_vec());
    assert_eq!(
        apply(&delta_bytes(
            1,
            &v2,
            &[id_bytes(1), id_bytes(3)],
            &with_one,
            &[sig2]
        )),
        Err(DeltaError::RemovedAndAdded)
    );
    // Node 1 listed as changed but equal to v1's entry.
    assert_eq!(
        apply(&delta_bytes(1, &v2, &[id_bytes(3)], &with_one, &[sig2])),
        Err(DeltaError::Unchanged)
    );
    // A delta that leaves out a change rebuilds other bytes: the signature does not verify.
    assert_eq!(
        apply(&delta_bytes(1, &v2, &[], &[e2[four].clone()], &[sig2])),
        Err(DeltaError::Roster(RosterError::BadSignature))
    );
    assert_eq!(
        apply(&delta_bytes(
            1,
            &v2,
            &[id_bytes(3)],
            &[e2[four].clone()],
            &[]
        )),
        Err(DeltaError::Roster(RosterError::Unsigned))
    );
    let forged = roster_sig(&kp(0xee), &body2);
    assert_eq!(
        apply(&delta_bytes(
            1,
            &v2,
            &[id_bytes(3)],
            &[e2[four].clone()],
            &[forged]
        )),
        Err(DeltaError::Roster(RosterError::UnknownAuthority))
    );
    // Lists out of order or repeated.
    let mut two = [id_bytes(3), id_bytes(2)];
    two.sort();
    two.reverse();
    assert_eq!(
        apply(&delta_bytes(1, &v2, &two, &[], &[sig2])),
        Err(DeltaError::Roster(RosterError::Unsorted))
    );
    assert!(matches!(
        apply(&delta_bytes(
            1,
            &v2,
            &[id_bytes(3), id_bytes(3)],
            &[],
            &[sig2]
        )),
        Err(DeltaError::Roster(RosterError::DuplicateIdentity(_)))
    ));
    // A changed entry altered after signing is refused: the signatures over the rebuilt roster
    // no longer cover it (its certificates' own signatures are not what refuses it, §4.3).
    let mut bad = e2[four].clone();
    let n = bad.len();
    bad[n - 30] ^= 1;
    assert!(apply(&delta_bytes(1, &v2, &[], &[bad], &[sig2])).is_err());
    // Truncations and trailing bytes.
    for n in 0..good.len() {
        assert!(RosterDelta::decode(&good[..n]).is_err());
    }
    let mut long = good.clone();
    long.push(0);
    assert!(RosterDelta::decode(&long).is_err());
    // The held roster stays when a delta is refused.
    let node = RosterHolder::new(net.clone());
    node.offer(&v1.sign(&[&a]).unwrap().encode()).unwrap();
    assert!(
        node.apply_delta(&delta_bytes(1, &v2, &[], &[], &[sig2]))
            .is_err()
    );
    assert_eq!(node.version(), Some(1));
}

/// Descriptors of nodes 1..=12, signed once for every case.
fn pool() -> &'static [Descriptor] {
    static POOL: std::sync::OnceLock<Vec<Descriptor>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| (1..=12).map(descriptor).collect())
}

/// The roster of the pool's nodes in `members` (a bit mask), each with a swarm from `swarms`
/// and a software name that depends on `flavour`'s bit.
fn random_roster(version: u64, members: u16, swarms: &[u8], flavour: u16) -> Roster {
    let nodes = pool()
        .iter()
        .enumerate()
        .filter(|(i, _)| members & (1 << i) != 0)
        .map(|(i, d)| {
            let mut d = d.clone();
            if flavour & (1 << i) != 0 {
                d.software = format!("allium-node/0.{i}");
            }
            NodeEntry::from_descriptor(d, u64::from(swarms[i % swarms.len()]) << 56)
        })
        .collect();
    Roster::new("allium-devnet", version, NOW + version, 3, nodes).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// apply(delta(a, b), a) == b, for any two rosters of the same network.
    #[test]
    fn applying_the_delta_between_two_rosters_gives_the_second(
        ma in any::<u16>(), mb in any::<u16>(),
        sa in proptest::collection::vec(0u8..4, 1..12),
        sb in proptest::collection::vec(0u8..4, 1..12),
        fa in any::<u16>(), fb in any::<u16>(),
        va in 0u64..1000, step in 1u64..5,
    ) {
        let auth = kp(0xa0);
        let net = network(&[&auth], 1);
        let a = random_roster(va, ma, &sa, fa);
        let b = random_roster(va + step, mb, &sb, fb);
        let sb_ = b.sign(&[&auth]).unwrap();
        let delta = RosterDelta::between(&RosterSummary::of(&a), &sb_).unwrap();
        let bytes = delta.encode();
        let (rebuilt, signed) = RosterDelta::decode(&bytes).unwrap().apply(&a, &net).unwrap();
        prop_assert_eq!(&rebuilt, &b);
        prop_assert_eq!(signed, sb_.encode());
        // Only what changed travels.
        let differs = b.nodes().iter().filter(|n| a.node(&n.identity.node_id()) != Some(*n)).count();
        prop_assert_eq!(delta.changed().len(), differs);
        let gone = a.nodes().iter().filter(|n| b.node(&n.identity.node_id()).is_none()).count();
        prop_assert_eq!(delta.removed().len(), gone);
    }

    #[test]
    fn delta_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..800)) {
        let net = network(&[&kp(0xa0)], 1);
        let base = roster("allium-devnet", 1, &[1, 2]);
        if let Ok(d) = RosterDelta::decode(&bytes) {
            prop_assert_eq!(d.encode(), bytes.clone());
            let _ = d.apply(&base, &net);
        }
        let holder = RosterHolder::new(net);
        let _ = holder.apply_delta(&bytes);
    }

    #[test]
    fn mutated_deltas_never_panic_nor_pass(i in 0usize..4096, byte in any::<u8>(), cut in 0usize..8) {
        let auth = kp(0xa0);
        let net = network(&[&auth], 1);
        let a = roster("allium-devnet", 1, &[1, 2, 3]);
        let b = roster("allium-devnet", 2, &[1, 3, 4]);
        let sb_ = b.sign(&[&auth]).unwrap();
        let mut bytes = RosterDelta::between(&RosterSummary::of(&a), &sb_).unwrap().encode();
        let i = i % bytes.len();
        bytes[i] = byte;
        bytes.truncate(bytes.len() - cut.min(bytes.len()));
        if let Ok((got, signed)) = RosterDelta::decode(&bytes).and_then(|d| d.apply(&a, &net)) {
            // Only a change the signature does not cover (none here) could pass.
            prop_assert_eq!(got, b);
            prop_assert_eq!(signed, sb_.encode());
        }
    }
}
