#!/usr/bin/env python3
"""Independent reference implementation of the Allium onion packet (whitepaper/onion.md, v1).

Written from onion.md and README.md alone and checked against vectors/onion.json:
build (§4), peel (§5), replies (§6), path sessions (§12), plus negative checks. Prints `N passed, M failed`.
Only the standard library and the `cryptography` package are used.
"""
import hashlib
import json
import os
import sys

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "vectors", "onion.json")

VERSION = 0x01
SESSION_VERSION = 0x02                          # path session packets (§12)
SESSION_LABELS = {"session_id": b"allium/v1/onion/session-id",
                  "session_key": b"allium/v1/onion/session-key"}
SLOT, R, H = 104, 832, 885                      # §3 constants
CLASS_SIZE = {0: 4096, 1: 65536}                # class code -> size (§3)
CLASS_CODE = {"small": 0, "large": 1}
RELAY, DELIVER = 0x01, 0x02
BASE_POINT = (9).to_bytes(32, "little")         # X25519 u = 9
LABELS = {                                      # §2; names as in the vectors' hops[i]
    "header_key": b"allium/v1/onion/header-key",
    "payload_key": b"allium/v1/onion/payload-key",
    "filler_key": b"allium/v1/onion/filler-key",
    "reply_key": b"allium/v1/onion/reply-key",
    "reply_wrap_key": b"allium/v1/onion/reply-wrap-key",
    "replay_tag": b"allium/v1/onion/replay-tag",
}


class Drop(Exception):
    """A silent drop (§5) or a refusal by the client; the message is only for diagnostics."""


# ---------------------------------------------------------------- primitives (§1, §2)

def u32be(x):
    return x.to_bytes(4, "big")


def xor(a, b):
    assert len(a) == len(b)
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def x25519(secret, u):
    # The library clamps the secret (the spec's "clamped on use") and raises on an all-zero
    # result; map that back to 0^32 so callers apply the spec's own all-zero rule.
    try:
        return X25519PrivateKey.from_private_bytes(secret).exchange(X25519PublicKey.from_public_bytes(u))
    except ValueError:
        return bytes(32)


def ed25519_public(seed):
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def cert_ok(cert, node_id, epoch, onion_pub):
    """§1.1: 132 bytes, fields as expected, signature valid under the identity."""
    if len(cert) != 132:
        return False
    ident, ep, onion, sig = cert[:32], cert[32:36], cert[36:68], cert[68:]
    if ident != node_id or int.from_bytes(ep, "big") != epoch or onion != onion_pub:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(ident).verify(
            sig, b"allium/v1/onion-key-cert" + ident + ep + onion)
        return True
    except InvalidSignature:
        return False


def derive(s, X, P):
    # K(label) = BLAKE2b(key = s, 32, X || P || label); hashlib puts the key length in the
    # parameter block and pads the key to a full block, as README.md requires.
    return {name: hashlib.blake2b(X + P + label, key=s, digest_size=32).digest()
            for name, label in LABELS.items()}


def gcm_seal(k, aad, m):
    ct = AESGCM(k).encrypt(bytes(12), m, aad)   # all-zero nonce: every key seals once (§9.3)
    return ct[:-16], ct[-16:]


def gcm_open(k, aad, c, t):
    return AESGCM(k).decrypt(bytes(12), c + t, aad)   # raises InvalidTag


def _ctr(k, block0, n):
    enc = Cipher(algorithms.AES(k), modes.CTR(block0)).encryptor()
    return enc.update(bytes(n)) + enc.finalize()


def gcm_stream(k, n):
    # GCM's data keystream starts at 0^12 || 00000002. `cryptography` increments all 128 bits
    # rather than GCM's low 32, which only differs after 2^32 blocks; packets are <= 4096 blocks.
    return _ctr(k, bytes(12) + u32be(2), n)


def ctr_stream(k, n):
    return _ctr(k, bytes(16), n)


# ---------------------------------------------------------------- building (§4)

def build(path, request, packet_class, reply_class, eph_secrets, D, flags=0):
    """path: [(node_id, epoch, onion_public)]. Returns (packet, per-layer client state).
    flags = 1 asks every hop to keep a path session (§12.1)."""
    n = len(path)
    if not 1 <= n <= 8:
        raise Drop("path must have 1..8 layers")
    layers = []                                  # step 1: keys
    for (node, epoch, onion_pub), x in zip(path, eph_secrets):
        X = x25519(x, BASE_POINT)
        s = x25519(x, onion_pub)
        if s == bytes(32):
            raise Drop("all-zero shared secret")
        layers.append(dict(node=node, epoch=epoch, P=onion_pub, X=X, s=s,
                           aad=bytes([VERSION]) + u32be(epoch) + X, **derive(s, X, onion_pub)))

    def slot(i, gamma_next):
        L = layers[i]
        if gamma_next is None:
            return bytes([DELIVER, flags]) + bytes(86) + L["tau"]
        nxt = layers[i + 1]
        return (bytes([RELAY, flags]) + bytes(2) + u32be(nxt["epoch"]) + nxt["node"] + nxt["X"]
                + gamma_next + L["tau"])

    return assemble(layers, request, packet_class, reply_class, D, slot), layers


def assemble(layers, request, packet_class, reply_class, D, slot):
    """§4 steps 2-6 for layers that carry aad, header_key, payload_key and filler_key;
    slot(i, gamma_next) is layer i's slot plaintext (gamma_next None for the last layer)."""
    n = len(layers)
    size = CLASS_SIZE[packet_class]
    P = size - H
    if len(request) > P - 5:
        raise Drop("request too long for the class")
    if len(D) != R - SLOT * n:
        raise Drop("random fill D has the wrong length")

    m = bytes([reply_class]) + u32be(len(request)) + request + bytes(P - 5 - len(request))
    for L in reversed(layers):                   # step 2: innermost layer is the destination's
        m, L["tau"] = gcm_seal(L["payload_key"], b"", m)

    phi = b""                                    # step 3: what hops 0..n-2 will append
    for L in layers[:-1]:
        S = gcm_stream(L["header_key"], R)
        phi = xor(phi, S[R - len(phi):]) + ctr_stream(L["filler_key"], SLOT)
    assert len(phi) == SLOT * (n - 1)

    last = layers[-1]                            # step 4
    T = xor(phi, gcm_stream(last["header_key"], R)[R - len(phi):])
    last["slot"] = slot(n - 1, None)
    beta, gamma = gcm_seal(last["header_key"], last["aad"], last["slot"] + D + T)
    assert beta[R - len(phi):] == phi

    for i in range(n - 2, -1, -1):               # step 5: wrap outwards
        L = layers[i]
        L["slot"] = slot(i, gamma)
        beta, gamma = gcm_seal(L["header_key"], L["aad"], L["slot"] + beta[:R - SLOT])

    return layers[0]["aad"] + gamma + beta + m   # step 6


def session_keys(sk, sid, nonce):
    """§12.2: K'(label) = BLAKE2b(key = sk, 32, sid || nonce || label), no replay tag."""
    return {name: hashlib.blake2b(sid + nonce + label, key=sk, digest_size=32).digest()
            for name, label in LABELS.items() if name != "replay_tag"}


def build_session(hops, q, request, packet_class, reply_class, nonces, D):
    """§12.3. hops: [(sid, sk)] first hop first; q: the packet's sequence number."""
    layers = []
    for (sid, sk), nonce in zip(hops, nonces):
        layers.append(dict(sid=sid, nonce=nonce, aad=bytes([SESSION_VERSION]) + bytes(4) + sid + nonce,
                           **session_keys(sk, sid, nonce)))

    def slot(i, gamma_next):
        L = layers[i]
        if gamma_next is None:
            return bytes([DELIVER]) + bytes(3) + u32be(q) + bytes(80) + L["tau"]
        nxt = layers[i + 1]
        return (bytes([RELAY]) + bytes(3) + u32be(q) + bytes(32) + nxt["sid"] + nxt["nonce"]
                + gamma_next + L["tau"])

    return assemble(layers, request, packet_class, reply_class, D, slot), layers


# ---------------------------------------------------------------- peeling (§5)

class Node:
    def __init__(self, onion_keys):
        self.keys = onion_keys                   # epoch -> (onion secret, onion public)
        self.seen = set()                        # replay memory (§7); any exact set will do
        self.sessions = {}                       # sid -> session state (§12.1)

    def peel(self, b):
        if len(b) not in CLASS_SIZE.values():
            raise Drop("bad size")
        if b[0] != VERSION:
            raise Drop("bad version")
        epoch = int.from_bytes(b[1:5], "big")
        if epoch not in self.keys:
            raise Drop("unknown epoch")
        secret, pub = self.keys[epoch]
        X, gamma = b[5:37], b[37:53]
        s = x25519(secret, X)
        if s == bytes(32):
            raise Drop("non-contributory")
        k = derive(s, X, pub)
        try:
            rho = gcm_open(k["header_key"], b[0:37], b[53:H], gamma)
        except InvalidTag:
            raise Drop("header authentication") from None
        slot = rho[:SLOT]
        if (slot[1] not in (0, 1) or slot[2:4] != bytes(2) or slot[0] not in (RELAY, DELIVER)
                or (slot[0] == DELIVER and slot[4:88] != bytes(84))):
            raise Drop("malformed slot")
        if (epoch, k["replay_tag"]) in self.seen:
            raise Drop("replay")
        self.seen.add((epoch, k["replay_tag"]))
        try:
            payload = gcm_open(k["payload_key"], b"", b[H:], slot[88:104])
        except InvalidTag:
            raise Drop("payload authentication") from None
        out = dict(keys=k, s=s, slot=slot)
        if slot[1] == 1:                         # §12.1: keep a path session for this layer
            sid = hashlib.blake2b(X + pub + SESSION_LABELS["session_id"], key=s,
                                  digest_size=32).digest()[:16]
            sk = hashlib.blake2b(X + pub + SESSION_LABELS["session_key"], key=s,
                                 digest_size=32).digest()
            out.update(session_id=sid, session_key=sk)
            self.sessions[sid] = dict(sk=sk, role=slot[0], next_node=slot[8:40], seqs=set())
        if slot[0] == RELAY:
            out["next_node"] = slot[8:40]
            out["next_packet"] = (bytes([VERSION]) + slot[4:8] + slot[40:72] + slot[72:88]
                                  + rho[SLOT:] + ctr_stream(k["filler_key"], SLOT) + payload)
            assert len(out["next_packet"]) == len(b)
            return out
        out.update(deliver(payload))
        return out


    def peel_session(self, b):
        """§12.4."""
        if len(b) not in CLASS_SIZE.values():
            raise Drop("bad size")
        if b[0] != SESSION_VERSION:
            raise Drop("bad version")
        if b[1:5] != bytes(4):
            raise Drop("malformed header")
        sid, nonce = b[5:21], b[21:37]
        sess = self.sessions.get(sid)
        if sess is None:
            raise Drop("unknown session")
        k = session_keys(sess["sk"], sid, nonce)
        try:
            rho = gcm_open(k["header_key"], b[0:37], b[53:H], b[37:53])
        except InvalidTag:
            raise Drop("header authentication") from None
        slot = rho[:SLOT]
        if (slot[1:4] != bytes(3) or slot[8:40] != bytes(32) or slot[0] != sess["role"]
                or (slot[0] == DELIVER and slot[40:88] != bytes(48))):
            raise Drop("malformed slot")
        seq = int.from_bytes(slot[4:8], "big")
        top = max(sess["seqs"], default=None)
        if seq in sess["seqs"] or (top is not None and seq + 64 <= top):
            raise Drop("replay")
        sess["seqs"].add(seq)
        try:
            payload = gcm_open(k["payload_key"], b"", b[H:], slot[88:104])
        except InvalidTag:
            raise Drop("payload authentication") from None
        out = dict(keys=k, slot=slot, seq=seq)
        if slot[0] == RELAY:
            out["next_node"] = sess["next_node"]
            out["next_packet"] = (bytes([SESSION_VERSION]) + bytes(4) + slot[40:56] + slot[56:72]
                                  + slot[72:88] + rho[SLOT:] + ctr_stream(k["filler_key"], SLOT)
                                  + payload)
            return out
        out.update(deliver(payload))
        return out


def deliver(payload):
    """§5 step 10: the destination's payload framing."""
    reply_class, L = payload[0], int.from_bytes(payload[1:5], "big")
    if (reply_class not in CLASS_SIZE or L > len(payload) - 5
            or any(payload[5 + L:])):
        raise Drop("malformed payload")
    return dict(request=payload[5:5 + L], reply_class=reply_class)


# ---------------------------------------------------------------- replies (§6)

def originate_response(rk, reply_class, body):
    size = CLASS_SIZE[reply_class]
    if len(body) > size - 21:
        raise Drop("response too long for the class")
    c, t = gcm_seal(rk, b"", b"\x00" + u32be(len(body)) + body + bytes(size - 21 - len(body)))
    return c + t


def originate_error(rk, code):
    c, t = gcm_seal(rk, b"", b"\x01" + bytes([code]) + bytes(CLASS_SIZE[0] - 18))  # always small
    return c + t


def wrap(wk, y):
    if len(y) not in CLASS_SIZE.values():
        raise Drop("not a reply of a class size")   # the relay would originate error 3
    return xor(y, ctr_stream(wk, len(y)))


def open_reply(layers, y):
    """Returns ("response", body) or ("error", hop, code); raises Drop if nothing verifies."""
    if len(y) not in CLASS_SIZE.values():
        raise Drop("reply of no class size")
    n = len(layers)
    for i, L in enumerate(layers):
        try:
            m = gcm_open(L["reply_key"], b"", y[:-16], y[-16:])
        except InvalidTag:
            y = xor(y, ctr_stream(L["reply_wrap_key"], len(y)))
            continue
        if m[0] == 0x00 and i == n - 1:
            body_len = int.from_bytes(m[1:5], "big")
            if body_len <= len(m) - 5 and not any(m[5 + body_len:]):
                return ("response", m[5:5 + body_len])
        elif m[0] == 0x01 and not any(m[2:]):
            return ("error", i, m[1])
        raise Drop(f"malformed reply from hop {i}")
    raise Drop("reply corrupted or forged on the way")


# ---------------------------------------------------------------- vector checks

def same(got, want):
    """Compare bytes with a vector value: hex string, {"hex"} or {"blake2b256", "header_hex"}."""
    if isinstance(want, str):
        return got.hex() == want
    if "hex" in want:
        return got.hex() == want["hex"]
    return (hashlib.blake2b(got, digest_size=32).hexdigest() == want["blake2b256"]
            and got[:H].hex() == want["header_hex"])


def check_case(case, state=None):
    """Checks an onion-packet case; with `state` (a dict), an opening case of §12.1 whose hops
    keep sessions, leaving the nodes and the sessions' (sid, sk) in it."""
    errs = []
    flags = 1 if state is not None else 0

    def expect(field, got, want):
        if not same(got, want):
            errs.append(field)

    inp = case["inputs"]
    hops_in = [{k: (v if k == "epoch" else bytes.fromhex(v)) for k, v in h.items()}
               for h in inp["hops"]]
    nodes, path = [], []
    for h in hops_in:
        node_id = ed25519_public(h["identity_seed"])
        onion_pub = x25519(h["onion_secret"], BASE_POINT)
        nodes.append(Node({h["epoch"]: (h["onion_secret"], onion_pub)}))
        path.append((node_id, h["epoch"], onion_pub))
    n = len(path)

    # §4: build, then compare the packet and everything the client derived per layer.
    packet, layers = build(path, bytes.fromhex(inp["request"]), CLASS_CODE[inp["class"]],
                           CLASS_CODE[inp["reply_class"]], [h["ephemeral_secret"] for h in hops_in],
                           bytes.fromhex(inp["padding"]), flags)
    expect("packet", packet, case["packet"])
    for i, (L, vh) in enumerate(zip(layers, case["hops"])):
        expect(f"hops[{i}].node_id", L["node"], vh["node_id"])
        expect(f"hops[{i}].onion_public", L["P"], vh["onion_public"])
        # §1.1: the certificate binds this onion key and epoch to the node id.
        cert = bytes.fromhex(vh["onion_key_cert"])
        if not cert_ok(cert, L["node"], L["epoch"], L["P"]):
            errs.append(f"hops[{i}].onion_key_cert does not verify")
        if cert_ok(cert[:36] + bytes([cert[36] ^ 1]) + cert[37:], L["node"], L["epoch"], L["P"]):
            errs.append(f"hops[{i}].onion_key_cert verifies after a change")
        expect(f"hops[{i}].ephemeral_public", L["X"], vh["ephemeral_public"])
        expect(f"hops[{i}].shared_secret", L["s"], vh["shared_secret"])
        expect(f"hops[{i}].slot", L["slot"], vh["slot"])
        for name in LABELS:
            expect(f"hops[{i}].{name}", L[name], vh[name])
        # The keys the spec says GCM-Seal uses must equal its own keystream (§2 notation).
        if gcm_stream(L["header_key"], 64) != gcm_seal(L["header_key"], b"", bytes(64))[0]:
            errs.append(f"hops[{i}]: GCM-Stream differs from GCM-Seal's keystream")

    # §5: peel hop by hop; each hop must see packet_in and derive what the client derived.
    b, peeled = packet, []
    for i in range(n):
        vh = case["hops"][i]
        expect(f"hops[{i}].packet_in", b, vh["packet_in"])
        try:
            out = nodes[i].peel(b)
        except Drop as e:
            errs.append(f"hops[{i}] dropped the packet: {e}")
            return errs
        peeled.append(out)
        expect(f"hops[{i}].shared_secret (hop side)", out["s"], vh["shared_secret"])
        expect(f"hops[{i}].slot (hop side)", out["slot"], vh["slot"])
        for name in LABELS:
            expect(f"hops[{i}].{name} (hop side)", out["keys"][name], vh[name])
        if flags:
            if "session_id" not in out:
                errs.append(f"hops[{i}] kept no session")
                return errs
            expect(f"hops[{i}].session_id", out["session_id"], vh["session_id"])
            expect(f"hops[{i}].session_key", out["session_key"], vh["session_key"])
        if i < n - 1:
            if "next_packet" not in out:
                errs.append(f"hops[{i}] delivered instead of relaying")
                return errs
            expect(f"hops[{i}].next_node", out["next_node"], path[i + 1][0].hex())
            b = out["next_packet"]
        else:
            if "request" not in out:
                errs.append(f"hops[{i}] relayed instead of delivering")
                return errs
            expect("destination request", out["request"], inp["request"])
            if out["reply_class"] != CLASS_CODE[inp["reply_class"]]:
                errs.append("destination reply_class")

    # §6: originate at the destination (or the erring hop), wrap back to hop 0, open at client.
    err = inp.get("error")
    if err:
        origin = err["hop"]
        y = originate_error(peeled[origin]["keys"]["reply_key"], err["code"])
    else:
        origin = n - 1
        y = originate_response(peeled[origin]["keys"]["reply_key"], peeled[origin]["reply_class"],
                               bytes.fromhex(inp["response"]))
    links = [(origin, y)]
    for i in range(origin - 1, -1, -1):
        y = wrap(peeled[i]["keys"]["reply_wrap_key"], y)
        links.append((i, y))
    if len(links) != len(case["reply_links"]):
        errs.append(f"reply_links: {len(links)} links, vectors have {len(case['reply_links'])}")
    for j, ((hop, got), vl) in enumerate(zip(links, case["reply_links"])):
        if hop != vl["from_hop"]:
            errs.append(f"reply_links[{j}].from_hop: {hop} != {vl['from_hop']}")
        expect(f"reply_links[{j}].bytes", got, vl["bytes"])

    try:
        read = open_reply(layers, y)
    except Drop as e:
        errs.append(f"client could not open the reply: {e}")
        return errs
    want = case["client_reads"]
    if "error" in want:
        if read != ("error", want["error"]["hop"], want["error"]["code"]):
            errs.append(f"client_reads: got {read}, want error {want['error']}")
    elif read[0] != "response" or read[1].hex() != want["response"]:
        errs.append(f"client_reads: got {read}, want response {want['response']}")
    if state is not None:
        state["nodes"] = nodes
        state["path"] = path
        state["hops"] = [(p["session_id"], p["session_key"]) for p in peeled]
    return errs


def check_session_case(case):
    """§12: the opening packet, then each session packet built, peeled hop by hop and answered."""
    state = {}
    errs = [f"opening: {e}" for e in check_case(case["opening"], state)]
    if errs:
        return errs
    inp, op = case["inputs"], case["opening"]["inputs"]
    cls, rcls = CLASS_CODE[op["class"]], CLASS_CODE[op["reply_class"]]
    nodes, path, hops = state["nodes"], state["path"], state["hops"]
    for q, vp in enumerate(case["packets"]):
        nonces = [bytes.fromhex(x) for x in inp["nonces"][q]]
        request = bytes.fromhex(inp["requests"][q])
        packet, layers = build_session(hops, q, request, cls, rcls, nonces,
                                       bytes.fromhex(inp["paddings"][q]))
        if not same(packet, vp["packet"]):
            errs.append(f"packets[{q}].packet")
        b, peeled = packet, []
        for i, vh in enumerate(vp["hops"]):
            if not same(b, vh["packet_in"]):
                errs.append(f"packets[{q}].hops[{i}].packet_in")
            for name in ("header_key", "payload_key", "filler_key", "reply_key", "reply_wrap_key"):
                if layers[i][name].hex() != vh[name]:
                    errs.append(f"packets[{q}].hops[{i}].{name}")
            try:
                out = nodes[i].peel_session(b)
            except Drop as e:
                errs.append(f"packets[{q}].hops[{i}] dropped the packet: {e}")
                return errs
            if out["seq"] != q:
                errs.append(f"packets[{q}].hops[{i}].seq")
            peeled.append(out)
            if "next_packet" in out:
                if out["next_node"] != path[i + 1][0]:
                    errs.append(f"packets[{q}].hops[{i}].next_node")
                b = out["next_packet"]
            elif out["request"] != request:
                errs.append(f"packets[{q}] destination request")
        try:                                     # a replay of the packet is refused at hop 0
            nodes[0].peel_session(packet)
            errs.append(f"packets[{q}]: a replay was peeled again")
        except Drop:
            pass
        y = originate_response(peeled[-1]["keys"]["reply_key"], peeled[-1]["reply_class"],
                               bytes.fromhex(inp["responses"][q]))
        for i in range(len(peeled) - 2, -1, -1):
            y = wrap(peeled[i]["keys"]["reply_wrap_key"], y)
        if not same(y, vp["reply"]):
            errs.append(f"packets[{q}].reply")
        read = open_reply(layers, y)
        if read[0] != "response" or read[1].hex() != vp["client_reads"].get("response"):
            errs.append(f"packets[{q}].client_reads: got {read}")
    return errs


def negative_checks(case):
    """Yields (name, ok). Uses a small case's packet at its first hop."""
    inp = case["inputs"]
    epoch = inp["hops"][0]["epoch"]
    packet = bytes.fromhex(case["packet"]["hex"])
    h0 = inp["hops"][0]
    secret = bytes.fromhex(h0["onion_secret"])
    keys = {epoch: (secret, x25519(secret, BASE_POINT))}

    def dropped(b, node=None):
        try:
            (node or Node(keys)).peel(b)
            return False
        except Drop as e:
            dropped.reason = str(e)
            return True

    yield "unmodified packet peels", not dropped(packet)
    # Byte 36 bit 7 is ignored by X25519 itself (RFC 7748 masks it), so only the binding of
    # X's bytes into the AAD and into K (§2) catches that flip.
    for where, pos, bit in [("version", 0, 0x10), ("epoch", 3, 0x10), ("ephemeral", 20, 0x10),
                            ("ephemeral top bit", 36, 0x80), ("header_tag", 45, 0x10),
                            ("routing", 53, 0x10), ("routing", 600, 0x10), ("payload", H, 0x10),
                            ("payload", 4095, 0x10)]:
        flipped = bytearray(packet)
        flipped[pos] ^= bit
        ok = dropped(bytes(flipped))
        yield f"bit flip in {where} (byte {pos}) is dropped ({dropped.reason if ok else '-'})", ok
    yield "all-zero ephemeral is dropped", dropped(packet[:5] + bytes(32) + packet[37:])
    yield "truncated packet is dropped", dropped(packet[:-1])
    node = Node(keys)
    yield "replay is dropped", not dropped(packet, node) and dropped(packet, node)
    try:                                        # the client must refuse an all-zero s_i too
        build([(bytes(32), epoch, bytes(32))], b"x", 0, 0, [bytes(range(32))], bytes(R - SLOT))
        yield "client refuses an all-zero shared secret", False
    except Drop:
        yield "client refuses an all-zero shared secret", True


def main():
    with open(VECTORS) as f:
        vectors = json.load(f)
    passed = failed = 0
    checks = ([(case, check_case) for case in vectors["cases"]]
              + [(case, check_session_case) for case in vectors.get("session_cases", [])])
    for case, check in checks:
        try:
            errs = check(case)
        except Exception as e:                  # a crash is a failure of this case, not the run
            errs = [f"exception {type(e).__name__}: {e}"]
        if errs:
            failed += 1
            print(f"FAIL {case['name']}: " + "; ".join(errs))
        else:
            passed += 1
            print(f"ok   {case['name']}")
    small = next(c for c in vectors["cases"] if c["inputs"]["class"] == "small")
    for name, ok in negative_checks(small):
        passed, failed = passed + ok, failed + (not ok)
        print(f"{'ok  ' if ok else 'FAIL'} negative: {name}")
    # §1.1 certificates: the vectors hold none, so there is nothing to verify.
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
