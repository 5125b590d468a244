//! Computes the onion test vectors from their inputs. Shared by the generator
//! (`examples/onion_vectors.rs`) and the test that checks the published file (`tests/vectors.rs`).

use allium_onion::trace::{build_session_traced, build_traced, padding_len, session_layer_keys};
use allium_onion::{
    Epoch, ErrorCode, IdentityKeypair, NodeId, OnionKeyCert, OnionSecretKey, PathHop, PathSession,
    Peeled, SessionRole, SessionTable, SizeClass, peel, peel_session,
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
    compute_opening(inp, false).0
}

/// A case whose slots ask the hops to keep path sessions (`open_session`) or not; with the
/// sender's session and every hop's table as the hops filled them while peeling.
fn compute_opening(inp: &Inputs, open_session: bool) -> (Value, PathSession, Vec<SessionTable>) {
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
    let (built, layers, session) = build_traced(
        &path,
        &inp.ephemeral_secrets,
        &inp.padding,
        &inp.request,
        inp.class,
        inp.reply_class,
        open_session,
    )
    .expect("vector inputs build");

    // Walk the packet through the path, keeping what each hop received.
    let mut arriving = Vec::new();
    let mut packet = built.packet.clone();
    let mut wrappers = Vec::new();
    let mut sealer = None;
    let mut delivered = Vec::new();
    let mut tables = Vec::new();
    for onion in &onions {
        arriving.push(packet.clone());
        let mut table = SessionTable::new(1);
        let (role, opened) =
            match peel(onion, &mut packet, |_, _| true).expect("vector packet peels") {
                Peeled::Forward {
                    reply,
                    next,
                    opened,
                } => {
                    wrappers.push(reply);
                    (SessionRole::Relay { next }, opened)
                }
                Peeled::Deliver {
                    request,
                    reply,
                    opened,
                } => {
                    delivered = request.to_vec();
                    sealer = Some(reply);
                    (SessionRole::Deliver, opened)
                }
            };
        assert_eq!(
            opened.is_some(),
            open_session,
            "a hop keeps a session only when asked"
        );
        if let Some(grant) = opened {
            table
                .open(grant, role, onion.epoch(), 0)
                .expect("an empty table keeps it");
        }
        tables.push(table);
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
            let mut values = json!({
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
            });
            if open_session {
                values["session_id"] = json!(hex::encode(l.session_id));
                values["session_key"] = json!(hex::encode(l.session_key));
            }
            values
        })
        .collect();

    let case = json!({
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
    });
    (case, session, tables)
}

/// A path session's case: the opening packet, then session packets on it.
pub struct SessionInputs {
    pub opening: Inputs,
    /// Per session packet, one nonce per hop.
    pub nonces: Vec<Vec<[u8; 16]>>,
    /// Per session packet, the random bytes after the last slot.
    pub paddings: Vec<Vec<u8>>,
    pub requests: Vec<Vec<u8>>,
    pub responses: Vec<Vec<u8>>,
}

/// Session inputs drawn from a seeded generator.
pub fn generate_session(name: &str, seed: u64, hops: usize, packets: usize) -> SessionInputs {
    let opening = generate(
        name,
        seed,
        hops,
        SizeClass::Small,
        SizeClass::Small,
        None,
        None,
    );
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5e55_1011);
    let mut nonces = Vec::new();
    let mut paddings = Vec::new();
    for _ in 0..packets {
        nonces.push(
            (0..hops)
                .map(|_| {
                    let mut n = [0u8; 16];
                    rng.fill_bytes(&mut n);
                    n
                })
                .collect(),
        );
        let mut padding = vec![0u8; padding_len(hops)];
        rng.fill_bytes(&mut padding);
        paddings.push(padding);
    }
    SessionInputs {
        opening,
        nonces,
        paddings,
        requests: (0..packets)
            .map(|k| format!("{name}: session request {k}").into_bytes())
            .collect(),
        responses: (0..packets)
            .map(|k| format!("{name}: session response {k}").into_bytes())
            .collect(),
    }
}

fn hex_list(v: &Value) -> Vec<Vec<u8>> {
    v.as_array()
        .expect("list")
        .iter()
        .map(|x| hex::decode(x.as_str().expect("hex string")).expect("hex"))
        .collect()
}

/// Reads the inputs of a published session case.
pub fn session_inputs_of(case: &Value) -> SessionInputs {
    let i = &case["inputs"];
    SessionInputs {
        opening: inputs_of(&case["opening"]),
        nonces: i["nonces"]
            .as_array()
            .expect("nonces")
            .iter()
            .map(|per| {
                hex_list(per)
                    .into_iter()
                    .map(|n| n.try_into().expect("16-byte nonce"))
                    .collect()
            })
            .collect(),
        paddings: hex_list(&i["paddings"]),
        requests: hex_list(&i["requests"]),
        responses: hex_list(&i["responses"]),
    }
}

/// Computes a session case: the opening packet and every session packet through the hops.
pub fn compute_session(inp: &SessionInputs) -> Value {
    let (opening, mut session, mut tables) = compute_opening(&inp.opening, true);
    let hop_sessions: Vec<([u8; 16], [u8; 32])> = opening["hops"]
        .as_array()
        .expect("hops")
        .iter()
        .map(|h| {
            let id = hex::decode(h["session_id"].as_str().expect("id")).expect("hex");
            let key = hex::decode(h["session_key"].as_str().expect("key")).expect("hex");
            (id.try_into().expect("16"), key.try_into().expect("32"))
        })
        .collect();
    let (class, reply_class) = (inp.opening.class, inp.opening.reply_class);
    let mut packets = Vec::new();
    for (k, request) in inp.requests.iter().enumerate() {
        let built = build_session_traced(
            &mut session,
            &inp.nonces[k],
            &inp.paddings[k],
            request,
            class,
            reply_class,
        )
        .expect("session packet builds");
        let mut packet = built.packet.clone();
        let mut hop_values = Vec::new();
        let mut wrappers = Vec::new();
        let mut sealer = None;
        for (i, table) in tables.iter_mut().enumerate() {
            let (id, key) = &hop_sessions[i];
            let [
                header_key,
                payload_key,
                filler_key,
                reply_key,
                reply_wrap_key,
            ] = session_layer_keys(key, id, &inp.nonces[k][i]);
            hop_values.push(json!({
                "header_key": hex::encode(header_key),
                "payload_key": hex::encode(payload_key),
                "filler_key": hex::encode(filler_key),
                "reply_key": hex::encode(reply_key),
                "reply_wrap_key": hex::encode(reply_wrap_key),
                "packet_in": bytes_or_digest(&packet),
            }));
            let looked_up = &*table;
            let mut accepted = None;
            let peeled = peel_session(
                &mut packet,
                |s| looked_up.get(s, 0),
                |s, seq| {
                    assert_eq!(seq as usize, k, "the k-th packet has seq k");
                    accepted = Some((*s, seq));
                    true
                },
            )
            .expect("session packet peels");
            match peeled {
                Peeled::Forward { reply, .. } => wrappers.push(reply),
                Peeled::Deliver {
                    request: got,
                    reply,
                    ..
                } => {
                    assert_eq!(got, &request[..], "destination got another request");
                    sealer = Some(reply);
                }
            }
            let (s, seq) = accepted.expect("the window was asked");
            assert!(table.accept(&s, seq), "a new sequence number");
        }
        let mut reply = sealer
            .expect("destination")
            .seal(&inp.responses[k])
            .expect("fits");
        for w in wrappers.into_iter().rev() {
            w.wrap(&mut reply).expect("class size");
        }
        let client_reads = match built.reply.open(&mut reply.clone()).expect("reply opens") {
            allium_onion::Reply::Response(body) => json!({ "response": hex::encode(body) }),
            allium_onion::Reply::Error { hop, code } => {
                json!({ "error": { "hop": hop, "code": code.code() } })
            }
        };
        packets.push(json!({
            "hops": hop_values,
            "packet": bytes_or_digest(&built.packet),
            "reply": bytes_or_digest(&reply),
            "client_reads": client_reads,
        }));
    }
    let hexes = |v: &[Vec<u8>]| v.iter().map(hex::encode).collect::<Vec<_>>();
    json!({
        "name": inp.opening.name,
        "opening": opening,
        "inputs": {
            "nonces": inp.nonces.iter().map(|per| per.iter().map(hex::encode).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "paddings": hexes(&inp.paddings),
            "requests": hexes(&inp.requests),
            "responses": hexes(&inp.responses),
        },
        "packets": packets,
    })
}

/// The path session cases published in `whitepaper/vectors/onion.json`.
pub fn all_session_cases() -> Vec<SessionInputs> {
    vec![
        generate_session("session-small-4-hops", 11, 4, 3),
        generate_session("session-small-1-hop", 12, 1, 2),
    ]
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
            The fields are described in sections 10 and 12.7 of onion.md.",
        "version": 1,
        "cases": all_cases().iter().map(compute).collect::<Vec<_>>(),
        "session_cases": all_session_cases().iter().map(compute_session).collect::<Vec<_>>(),
    })
}
