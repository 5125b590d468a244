//! Computes the onion test vectors from their inputs. Shared by the generator
//! (`examples/onion_vectors.rs`) and the test that checks the published file (`tests/vectors.rs`).

use allium_onion::trace::{build_traced, padding_len};
use allium_onion::{
    Epoch, ErrorCode, IdentityKeypair, NodeId, OnionKeyCert, OnionSecretKey, PathHop, Peeled,
    SizeClass, peel,
};
use blake2::{Blake2b, Digest, digest::consts::U32};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::{Value, json};

/// Everything a case is computed from.
pub struct Inputs {
    pub name: String,
    pub class: SizeClass,
    pub reply_class: SizeClass,
    /// The epoch of each layer's onion key.
    pub epochs: Vec<u32>,
    pub request: Vec<u8>,
    pub identity_seeds: Vec<[u8; 32]>,
    pub onion_secrets: Vec<[u8; 32]>,
    pub ephemeral_secrets: Vec<[u8; 32]>,
    pub padding: Vec<u8>,
    pub response: Vec<u8>,
    /// A hop (not the destination) that originates an error reply instead, and its code.
    pub error: Option<(usize, u8)>,
}

fn class_name(c: SizeClass) -> &'static str {
    match c {
        SizeClass::Small => "small",
        SizeClass::Large => "large",
    }
}

pub fn class_from_name(s: &str) -> SizeClass {
    match s {
        "small" => SizeClass::Small,
        "large" => SizeClass::Large,
        other => panic!("unknown class {other}"),
    }
}

/// Inputs drawn from a seeded generator, for the generator tool.
pub fn generate(
    name: &str,
    seed: u64,
    hops: usize,
    class: SizeClass,
    reply_class: SizeClass,
    error: Option<(usize, u8)>,
    epochs: Option<Vec<u32>>,
) -> Inputs {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut k = || {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        b
    };
    let identity_seeds = (0..hops).map(|_| k()).collect();
    let onion_secrets = (0..hops).map(|_| k()).collect();
    let ephemeral_secrets = (0..hops).map(|_| k()).collect();
    let mut padding = vec![0u8; padding_len(hops)];
    rng.fill_bytes(&mut padding);
    let request = format!("{name}: a request from the test vectors").into_bytes();
    let response = format!("{name}: the destination's response").into_bytes();
    Inputs {
        name: name.to_string(),
        class,
        reply_class,
        epochs: epochs.unwrap_or_else(|| vec![493_000; hops]),
        request,
        identity_seeds,
        onion_secrets,
        ephemeral_secrets,
        padding,
        response,
        error,
    }
}

fn arr(v: &Value) -> [u8; 32] {
    hex::decode(v.as_str().expect("hex string"))
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

/// Reads the inputs of a published case.
pub fn inputs_of(case: &Value) -> Inputs {
    let i = &case["inputs"];
    let hops = i["hops"].as_array().expect("hops");
    Inputs {
        name: case["name"].as_str().expect("name").to_string(),
        class: class_from_name(i["class"].as_str().expect("class")),
        reply_class: class_from_name(i["reply_class"].as_str().expect("reply_class")),
        epochs: hops
            .iter()
            .map(|h| h["epoch"].as_u64().expect("epoch") as u32)
            .collect(),
        request: hex::decode(i["request"].as_str().expect("request")).expect("hex"),
        identity_seeds: hops.iter().map(|h| arr(&h["identity_seed"])).collect(),
        onion_secrets: hops.iter().map(|h| arr(&h["onion_secret"])).collect(),
        ephemeral_secrets: hops.iter().map(|h| arr(&h["ephemeral_secret"])).collect(),
        padding: hex::decode(i["padding"].as_str().expect("padding")).expect("hex"),
        response: hex::decode(i["response"].as_str().expect("response")).expect("hex"),
        error: i["error"].as_object().map(|e| {
            (
                e["hop"].as_u64().expect("hop") as usize,
                e["code"].as_u64().expect("code") as u8,
            )
        }),
    }
}

fn blake2b256(bytes: &[u8]) -> String {
    hex::encode(Blake2b::<U32>::digest(bytes))
}

/// Full bytes for small-class values, a BLAKE2b-256 digest for large ones (which would make the
/// file megabytes long).
fn bytes_or_digest(bytes: &[u8]) -> Value {
    if bytes.len() <= SizeClass::Small.size() {
        json!({ "hex": hex::encode(bytes) })
    } else {
        json!({ "blake2b256": blake2b256(bytes), "header_hex": hex::encode(&bytes[..885]) })
    }
}

/// Computes a whole case: its inputs and every intermediate value.
pub fn compute(inp: &Inputs) -> Value {
    let hops = inp.identity_seeds.len();
    let identities: Vec<_> = inp
        .identity_seeds
        .iter()
        .map(IdentityKeypair::from_seed)
        .collect();
    let onions: Vec<_> = inp
        .onion_secrets
        .iter()
        .zip(&inp.epochs)
        .map(|(s, &e)| OnionSecretKey::from_bytes(Epoch(e), s))
        .collect();
    let path: Vec<PathHop> = identities
        .iter()
        .zip(&onions)
        .map(|(id, onion)| PathHop {
            node: NodeId::from(&id.public()),
            epoch: onion.epoch(),
            onion_key: *onion.public(),
        })
        .collect();
    let (built, layers) = build_traced(
        &path,
        &inp.ephemeral_secrets,
        &inp.padding,
        &inp.request,
        inp.class,
        inp.reply_class,
    )
    .expect("vector inputs build");

    // Walk the packet through the path, keeping what each hop received.
    let mut arriving = Vec::new();
    let mut packet = built.packet.clone();
    let mut wrappers = Vec::new();
    let mut sealer = None;
    let mut delivered = Vec::new();
    for onion in &onions {
        arriving.push(packet.clone());
        match peel(onion, &mut packet, |_, _| true).expect("vector packet peels") {
            Peeled::Forward { reply, .. } => wrappers.push(reply),
            Peeled::Deliver { request, reply } => {
                delivered = request.to_vec();
                sealer = Some(reply);
            }
        }
    }
    assert_eq!(delivered, inp.request, "destination got another request");

    // The reply: originated by the destination, or by the erring hop; wrapped by the hops before.
    let (origin, mut reply) = match inp.error {
        Some((hop, code)) => {
            let originator = wrappers.drain(hop..).next().expect("erring hop is a relay");
            (hop, originator.error(ErrorCode::from_code(code)))
        }
        None => (
            hops - 1,
            sealer
                .expect("destination")
                .seal(&inp.response)
                .expect("fits"),
        ),
    };
    let mut reply_links = vec![json!({ "from_hop": origin, "bytes": bytes_or_digest(&reply) })];
    for (i, w) in wrappers.into_iter().enumerate().rev() {
        w.wrap(&mut reply).expect("class size");
        reply_links.push(json!({ "from_hop": i, "bytes": bytes_or_digest(&reply) }));
    }
    let opened = match built.reply.open(&mut reply).expect("reply opens") {
        allium_onion::Reply::Response(body) => json!({ "response": hex::encode(body) }),
        allium_onion::Reply::Error { hop, code } => {
            json!({ "error": { "hop": hop, "code": code.code() } })
        }
    };

    let hop_values: Vec<Value> = (0..hops)
        .map(|i| {
            let l = &layers[i];
            json!({
                "node_id": hex::encode(identities[i].public().as_bytes()),
                "onion_public": hex::encode(onions[i].public().as_bytes()),
                "onion_key_cert": hex::encode(OnionKeyCert::sign(&identities[i], &onions[i]).to_bytes()),
                "ephemeral_public": hex::encode(l.ephemeral_public),
                "shared_secret": hex::encode(l.shared_secret),
                "header_key": hex::encode(l.header_key),
                "payload_key": hex::encode(l.payload_key),
                "filler_key": hex::encode(l.filler_key),
                "reply_key": hex::encode(l.reply_key),
                "reply_wrap_key": hex::encode(l.reply_wrap_key),
                "replay_tag": hex::encode(l.replay_tag),
                "slot": hex::encode(l.slot),
                "packet_in": bytes_or_digest(&arriving[i]),
            })
        })
        .collect();

    json!({
        "name": inp.name,
        "inputs": {
            "class": class_name(inp.class),
            "reply_class": class_name(inp.reply_class),
            "request": hex::encode(&inp.request),
            "padding": hex::encode(&inp.padding),
            "response": hex::encode(&inp.response),
            "error": inp.error.map(|(hop, code)| json!({ "hop": hop, "code": code })),
            "hops": (0..hops).map(|i| json!({
                "epoch": inp.epochs[i],
                "identity_seed": hex::encode(inp.identity_seeds[i]),
                "onion_secret": hex::encode(inp.onion_secrets[i]),
                "ephemeral_secret": hex::encode(inp.ephemeral_secrets[i]),
            })).collect::<Vec<_>>(),
        },
        "hops": hop_values,
        "packet": bytes_or_digest(&built.packet),
        "reply_links": reply_links,
        "client_reads": opened,
    })
}

/// The cases published in `whitepaper/vectors/onion.json`.
pub fn all_cases() -> Vec<Inputs> {
    use SizeClass::{Large, Small};
    let mixed = Some(vec![493_000, 493_001, 492_999, 493_001]);
    vec![
        generate("small-1-hop", 1, 1, Small, Small, None, None),
        generate("small-4-hops", 2, 4, Small, Small, None, None),
        generate(
            "small-4-hops-error-from-hop-1",
            3,
            4,
            Small,
            Small,
            Some((1, 2)),
            None,
        ),
        generate("small-8-hops", 4, 8, Small, Small, None, None),
        generate("large-4-hops", 5, 4, Large, Large, None, None),
        generate(
            "small-request-large-reply-3-hops",
            6,
            3,
            Small,
            Large,
            None,
            None,
        ),
        generate("small-4-hops-mixed-epochs", 7, 4, Small, Small, None, mixed),
    ]
}

/// The whole file.
pub fn document() -> Value {
    json!({
        "description": "Allium onion packet test vectors (whitepaper/onion.md). All byte strings are hex. \
            Values longer than 4096 bytes are given as their BLAKE2b-256 digest and their first 885 bytes (for a packet, its header). \
            The fields are described in section 10 of onion.md.",
        "version": 1,
        "cases": all_cases().iter().map(compute).collect::<Vec<_>>(),
    })
}
