//! The node's operational layer: config layering and errors, the key store, metrics, the HTTP
//! endpoint and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use allium_fsutil::PrivateError;
use allium_node::config::{ConfigError, ConfigOverrides, ENV_VARS, NodeConfig};
use allium_node::http::{self, HealthReport, HealthStatus};
use allium_node::keystore::{IDENTITY_FILE, KeyStore, KeyStoreError, ONION_DIR};
use allium_node::metrics::{DropReason, Metrics, StorageMethod, StorageResult};
use allium_node::shutdown::ShutdownSignal;
use allium_onion::{Epoch, OnionSecretKey};
use rand_core::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------- config

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("node.toml");
    fs::write(&path, text).unwrap();
    path
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn config_layers_file_then_env_then_overrides() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write_config(
        tmp.path(),
        r#"
listen = "127.0.0.1:1001"
log = "warn"
network_file = "/from/file.toml"
[limits]
max_connections = 100
forward_queue = 7
"#,
    );
    let env = env_of(&[
        ("ALLIUM_NODE_LISTEN", "127.0.0.1:1002"),
        ("ALLIUM_NODE_NETWORK_FILE", "/from/env.toml"),
        ("ALLIUM_NODE_LIMITS_MAX_CONNECTIONS", "200"),
        ("ALLIUM_NODE_AUTHORITY", "yes"),
    ]);
    let overrides = ConfigOverrides {
        listen: Some(addr("127.0.0.1:1003")),
        ..ConfigOverrides::default()
    };
    let c = NodeConfig::load(Some(&file), env, overrides).unwrap();
    assert_eq!(
        c.listen,
        addr("127.0.0.1:1003"),
        "override beats env and file"
    );
    assert_eq!(
        c.network_file,
        PathBuf::from("/from/env.toml"),
        "env beats file"
    );
    assert_eq!(c.limits.max_connections, 200, "env beats file");
    assert!(c.authority, "env alone");
    assert_eq!(c.log, "warn", "file alone");
    assert_eq!(c.limits.forward_queue, 7, "file alone");
    let d = NodeConfig::default();
    assert_eq!(c.data_dir, d.data_dir, "default where nobody set it");
    assert_eq!(
        c.limits.stream_receive_window,
        d.limits.stream_receive_window
    );
    assert_eq!(c.store, d.store);
}

#[test]
fn no_file_and_no_env_gives_the_defaults() {
    let c = NodeConfig::load(None, no_env, ConfigOverrides::default()).unwrap();
    assert_eq!(c, NodeConfig::default());
    assert_eq!(c.listen, addr("0.0.0.0:4433"));
    assert_eq!(c.metrics_listen, addr("127.0.0.1:9464"));
    assert_eq!(c.limits.stream_receive_window, 256 * 1024);
    assert_eq!(c.limits.connection_receive_window, 4 * 1024 * 1024);
    assert_eq!(c.store.max_bytes, 10 * 1024 * 1024 * 1024);
    assert_eq!(c.store.mailbox_quota_bytes, 16 * 1024 * 1024);
    assert_eq!(c.replay.packets_per_epoch, 1_000_000);
}

#[test]
fn empty_env_public_addr_clears_the_file_value() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write_config(tmp.path(), "public_addr = \"192.0.2.1:4433\"\n");
    let c = NodeConfig::load(Some(&file), no_env, ConfigOverrides::default()).unwrap();
    assert_eq!(c.public_addr, Some(addr("192.0.2.1:4433")));
    let env = env_of(&[("ALLIUM_NODE_PUBLIC_ADDR", "")]);
    let c = NodeConfig::load(Some(&file), env, ConfigOverrides::default()).unwrap();
    assert_eq!(c.public_addr, None);
}

fn load_text(text: &str) -> (PathBuf, ConfigError) {
    let tmp = tempfile::tempdir().unwrap();
    let file = write_config(tmp.path(), text);
    let err = NodeConfig::load(Some(&file), no_env, ConfigOverrides::default()).unwrap_err();
    (file, err)
}

#[test]
fn bad_toml_names_the_file_and_line() {
    let (file, err) = load_text("listen = \"127.0.0.1:1\"\n[limits\n");
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
}

#[test]
fn wrong_type_names_the_key() {
    let (_, err) = load_text("[limits]\nmax_connections = \"lots\"\n");
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    assert!(msg.contains("max_connections"), "{msg}");
    assert!(msg.contains("invalid type"), "{msg}");
}

#[test]
fn bad_address_names_the_key() {
    let (_, err) = load_text("listen = \"not an address\"\n");
    let msg = err.to_string();
    assert!(msg.contains("listen"), "{msg}");
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let (_, err) = load_text("[limits]\nmax_conections = 5\n");
    let msg = err.to_string();
    assert!(msg.contains("max_conections"), "{msg}");
    let (_, err) = load_text("[storage]\nmax_bytes = 5\n");
    assert!(err.to_string().contains("storage"), "{err}");
}

#[test]
fn invalid_values_name_the_key() {
    for (text, key) in [
        ("[limits]\nidle_timeout_ms = 0\n", "limits.idle_timeout_ms"),
        (
            "[limits]\nstream_receive_window = 0\n",
            "limits.stream_receive_window",
        ),
        (
            "[limits]\nstream_receive_window = 8388608\n",
            "limits.stream_receive_window",
        ),
        ("[limits]\nkeep_alive_ms = 30000\n", "limits.keep_alive_ms"),
        (
            "[store]\nmailbox_quota_bytes = 0\n",
            "store.mailbox_quota_bytes",
        ),
        (
            "[replay]\npackets_per_epoch = 0\n",
            "replay.packets_per_epoch",
        ),
        ("log = \"allium=notalevel\"\n", "log"),
        ("public_addr = \"0.0.0.0:4433\"\n", "public_addr"),
    ] {
        let (_, err) = load_text(text);
        match &err {
            ConfigError::Invalid { key: k, .. } => assert_eq!(*k, key, "{text}"),
            other => panic!("{text}: expected Invalid, got {other:?}"),
        }
        assert!(err.to_string().contains(key), "{err}");
    }
}

#[test]
fn bad_env_value_names_the_variable_and_key() {
    let env = env_of(&[("ALLIUM_NODE_LIMITS_FORWARD_QUEUE", "many")]);
    let err = NodeConfig::load(None, env, ConfigOverrides::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Env {
                var: "ALLIUM_NODE_LIMITS_FORWARD_QUEUE",
                key: "limits.forward_queue",
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("ALLIUM_NODE_LIMITS_FORWARD_QUEUE") && msg.contains("many"),
        "{msg}"
    );

    let env = env_of(&[("ALLIUM_NODE_AUTHORITY", "maybe")]);
    let err = NodeConfig::load(None, env, ConfigOverrides::default()).unwrap_err();
    assert!(err.to_string().contains("true or false"), "{err}");
}

#[test]
fn missing_file_is_a_read_error_naming_it() {
    let err = NodeConfig::load(
        Some(Path::new("/nonexistent/allium/node.toml")),
        no_env,
        ConfigOverrides::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/allium/node.toml"),
        "{err}"
    );
}

#[test]
fn public_metrics_address_is_refused_unless_allowed() {
    for layer in ["file", "env", "override"] {
        let tmp = tempfile::tempdir().unwrap();
        let public = "0.0.0.0:9464";
        let (file, env, overrides) = match layer {
            "file" => (
                Some(write_config(
                    tmp.path(),
                    &format!("metrics_listen = \"{public}\"\n"),
                )),
                vec![],
                ConfigOverrides::default(),
            ),
            "env" => (
                None,
                vec![("ALLIUM_NODE_METRICS_LISTEN", public)],
                ConfigOverrides::default(),
            ),
            _ => (
                None,
                vec![],
                ConfigOverrides {
                    metrics_listen: Some(addr(public)),
                    ..ConfigOverrides::default()
                },
            ),
        };
        let err = NodeConfig::load(file.as_deref(), env_of(&env), overrides.clone()).unwrap_err();
        assert!(
            matches!(err, ConfigError::MetricsNotLoopback { .. }),
            "{layer}: {err:?}"
        );
        assert!(err.to_string().contains("metrics_allow_public"), "{err}");

        let mut env = env;
        env.push(("ALLIUM_NODE_METRICS_ALLOW_PUBLIC", "true"));
        let c = NodeConfig::load(file.as_deref(), env_of(&env), overrides).unwrap();
        assert_eq!(c.metrics_listen, addr(public));
    }
    // IPv6 loopback is loopback.
    let env = env_of(&[("ALLIUM_NODE_METRICS_LISTEN", "[::1]:9464")]);
    NodeConfig::load(None, env, ConfigOverrides::default()).unwrap();
}

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node.toml")
}

#[test]
fn example_config_is_the_defaults() {
    let c = NodeConfig::load(Some(&example_path()), no_env, ConfigOverrides::default()).unwrap();
    assert_eq!(c, NodeConfig::default());
}

#[test]
fn example_config_documents_every_key_and_variable() {
    let text = fs::read_to_string(example_path()).unwrap();
    for var in ENV_VARS {
        assert!(text.contains(var.name), "{} not in the example", var.name);
        let leaf = var.key.rsplit('.').next().unwrap();
        assert!(
            text.contains(&format!("{leaf} = ")),
            "{} not in the example",
            var.key
        );
    }
}

// ---------------------------------------------------------------- key store

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn keystore_init_then_open_gives_the_same_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data/node");
    let store = KeyStore::init(&dir, &mut OsRng).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(IDENTITY_FILE)), 0o600);
    assert_eq!(fs::read(dir.join(IDENTITY_FILE)).unwrap().len(), 32);
    let reopened = KeyStore::open(&dir).unwrap();
    assert_eq!(reopened.identity().public(), store.identity().public());
    assert_eq!(reopened.data_dir(), dir);
    // No temp file left behind: only the empty turn-taking files of atomic writes.
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for n in names.iter().filter(|n| n.starts_with('.')) {
        assert!(n.ends_with(".lock"), "{names:?}");
        assert_eq!(fs::metadata(dir.join(n)).unwrap().len(), 0, "{n}");
    }
}

#[test]
fn keystore_refuses_to_replace_an_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let first = KeyStore::init(tmp.path(), &mut OsRng).unwrap();
    let err = KeyStore::init(tmp.path(), &mut OsRng).unwrap_err();
    assert!(
        matches!(err, KeyStoreError::IdentityExists { .. }),
        "{err:?}"
    );
    assert_eq!(
        KeyStore::open(tmp.path()).unwrap().identity().public(),
        first.identity().public(),
        "the identity is unchanged"
    );
}

#[test]
fn keystore_open_without_identity_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let err = KeyStore::open(tmp.path()).unwrap_err();
    assert!(matches!(err, KeyStoreError::NoIdentity { .. }), "{err:?}");
    let err = KeyStore::open(&tmp.path().join("absent")).unwrap_err();
    assert!(matches!(err, KeyStoreError::NoIdentity { .. }), "{err:?}");
}

#[test]
fn keystore_refuses_a_readable_identity() {
    let tmp = tempfile::tempdir().unwrap();
    KeyStore::init(tmp.path(), &mut OsRng).unwrap();
    let path = tmp.path().join(IDENTITY_FILE);
    chmod(&path, 0o644);
    let err = KeyStore::open(tmp.path()).unwrap_err();
    assert!(
        matches!(
            err,
            KeyStoreError::Private(PrivateError::Insecure { mode: 0o644, .. })
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("chmod 600") && msg.contains(IDENTITY_FILE),
        "{msg}"
    );
    chmod(&path, 0o600);
    KeyStore::open(tmp.path()).unwrap();
}

#[test]
fn keystore_refuses_a_world_writable_directory() {
    let tmp = tempfile::tempdir().unwrap();
    KeyStore::init(tmp.path(), &mut OsRng).unwrap();
    chmod(tmp.path(), 0o777);
    let err = KeyStore::open(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("chmod 700"), "{err}");
    chmod(tmp.path(), 0o700);
}

#[test]
fn keystore_refuses_a_wrong_length_identity() {
    for len in [0, 31, 33, 64] {
        let tmp = tempfile::tempdir().unwrap();
        KeyStore::init(tmp.path(), &mut OsRng).unwrap();
        let path = tmp.path().join(IDENTITY_FILE);
        fs::write(&path, vec![7u8; len]).unwrap();
        chmod(&path, 0o600);
        let err = KeyStore::open(tmp.path()).unwrap_err();
        assert!(
            matches!(err, KeyStoreError::Private(PrivateError::WrongLength { expected: 32, found, .. }) if found == len as u64),
            "{len}: {err:?}"
        );
    }
}

#[test]
fn keystore_refuses_a_symlinked_identity() {
    let tmp = tempfile::tempdir().unwrap();
    KeyStore::init(tmp.path(), &mut OsRng).unwrap();
    let path = tmp.path().join(IDENTITY_FILE);
    let elsewhere = tmp.path().join("elsewhere.key");
    fs::rename(&path, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    let err = KeyStore::open(tmp.path()).unwrap_err();
    assert!(
        matches!(err, KeyStoreError::Private(PrivateError::NotAFile(_))),
        "{err:?}"
    );
}

#[test]
fn onion_keys_save_load_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let store = KeyStore::init(tmp.path(), &mut OsRng).unwrap();
    assert!(store.load_onion_keys().unwrap().keys.is_empty());

    let k6 = OnionSecretKey::generate(Epoch(6), &mut OsRng);
    let k5 = OnionSecretKey::generate(Epoch(5), &mut OsRng);
    store.save_onion(&k6).unwrap();
    store.save_onion(&k5).unwrap();
    let path5 = store.onion_path(Epoch(5));
    assert_eq!(path5, tmp.path().join(ONION_DIR).join("5.key"));
    assert_eq!(mode(&path5), 0o600);
    assert_eq!(mode(&tmp.path().join(ONION_DIR)), 0o700);

    let load = store.load_onion_keys().unwrap();
    assert!(load.rejected.is_empty(), "{:?}", load.rejected);
    let got: Vec<_> = load
        .keys
        .iter()
        .map(|k| (k.epoch(), *k.to_bytes()))
        .collect();
    assert_eq!(
        got,
        vec![(Epoch(5), *k5.to_bytes()), (Epoch(6), *k6.to_bytes())],
        "same keys, in epoch order"
    );

    assert!(store.delete_onion(Epoch(5)).unwrap());
    assert!(!path5.exists(), "file gone");
    assert!(
        !store.delete_onion(Epoch(5)).unwrap(),
        "second delete finds nothing"
    );
    let load = store.load_onion_keys().unwrap();
    assert_eq!(load.keys.len(), 1);
    assert_eq!(load.keys[0].epoch(), Epoch(6));

    // Re-saving an epoch replaces its file.
    let k6b = OnionSecretKey::generate(Epoch(6), &mut OsRng);
    store.save_onion(&k6b).unwrap();
    let load = store.load_onion_keys().unwrap();
    assert_eq!(*load.keys[0].to_bytes(), *k6b.to_bytes());
}

#[test]
fn malformed_onion_files_are_refused_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let store = KeyStore::init(tmp.path(), &mut OsRng).unwrap();
    store
        .save_onion(&OnionSecretKey::generate(Epoch(1), &mut OsRng))
        .unwrap();
    let dir = tmp.path().join(ONION_DIR);
    let write = |name: &str, bytes: &[u8], mode: u32| {
        let p = dir.join(name);
        fs::write(&p, bytes).unwrap();
        chmod(&p, mode);
    };
    write("2.key", &[1u8; 10], 0o600); // short
    write("3.key", &[1u8; 32], 0o644); // readable by others
    write("007.key", &[1u8; 32], 0o600); // not canonical
    write("notes.txt", b"hello", 0o600); // not a key
    write(".4.key.tmp", &[1u8; 32], 0o600); // interrupted write: ignored silently
    fs::create_dir(dir.join("5.key")).unwrap(); // not a file

    let load = store.load_onion_keys().unwrap();
    assert_eq!(load.keys.len(), 1);
    assert_eq!(load.keys[0].epoch(), Epoch(1));
    assert_eq!(load.rejected.len(), 5, "{:?}", load.rejected);
    let count = |f: fn(&KeyStoreError) -> bool| load.rejected.iter().filter(|e| f(e)).count();
    assert_eq!(
        count(|e| matches!(e, KeyStoreError::Private(PrivateError::WrongLength { .. }))),
        1
    );
    assert_eq!(
        count(|e| matches!(e, KeyStoreError::Private(PrivateError::Insecure { .. }))),
        1
    );
    assert_eq!(count(|e| matches!(e, KeyStoreError::BadFileName { .. })), 2);
    assert_eq!(
        count(|e| matches!(e, KeyStoreError::Private(PrivateError::NotAFile(_)))),
        1
    );
}

#[test]
fn keystore_debug_shows_no_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let store = KeyStore::init(tmp.path(), &mut OsRng).unwrap();
    let onion = OnionSecretKey::generate(Epoch(9), &mut OsRng);
    store.save_onion(&onion).unwrap();
    let load = store.load_onion_keys().unwrap();

    let seed_hex = hex::encode(*store.identity().seed());
    let onion_hex = hex::encode(*onion.to_bytes());
    let printed = format!("{store:?} {store:#?} {load:?} {:?}", store.identity());
    for secret in [&seed_hex, &onion_hex] {
        assert!(!printed.contains(secret.as_str()));
        // Nor any 4-byte run of it, in hex or as a decimal byte list.
        for start in (0..secret.len() - 8).step_by(2) {
            assert!(!printed.contains(&secret[start..start + 8]), "{printed}");
        }
    }
    let seed = store.identity().seed();
    let as_list = format!("{:?}", &seed[..4]).replace(['[', ']'], "");
    assert!(!printed.contains(&as_list), "{printed}");
}

// ---------------------------------------------------------------- metrics

#[test]
fn metrics_render_has_every_name_and_counts() {
    let m = Metrics::new();
    let text = m.render();
    for name in [
        "allium_packets_relayed_total",
        "allium_packets_delivered_total",
        "allium_packets_dropped",
        "allium_replays_total",
        "allium_storage_requests",
        "allium_relay_forward_seconds",
        "allium_storage_request_seconds",
        "allium_db_size_bytes",
        "allium_roster_version",
        "allium_peers_connected",
        "allium_client_connections",
        "allium_replay_filter_load",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(text.contains("allium_packets_relayed_total 0"), "{text}");

    m.relayed(Duration::from_millis(3));
    m.relayed(Duration::from_millis(4));
    m.delivered();
    m.dropped(DropReason::Replay);
    m.dropped(DropReason::QueueFull);
    m.dropped(DropReason::QueueFull);
    m.storage_request(
        StorageMethod::Store,
        StorageResult::QuotaExceeded,
        Duration::from_millis(2),
    );
    m.set_db_size(12345);
    m.set_roster_version(42);
    m.set_replay_filter_load(2.5, 3);
    m.replay_filter_rolled();
    m.replay_filter_rolled();
    let _client = m.client_connected();
    let clone = m.clone();
    clone.delivered();

    let text = m.render();
    for line in [
        "allium_packets_relayed_total 2",
        "allium_packets_delivered_total 2",
        "allium_packets_dropped_total{reason=\"replay\"} 1",
        "allium_packets_dropped_total{reason=\"queue_full\"} 2",
        "allium_replays_total 1",
        "allium_storage_requests_total{method=\"store\",result=\"quota_exceeded\"} 1",
        "allium_storage_request_seconds_count{method=\"store\"} 1",
        "allium_relay_forward_seconds_count 2",
        "allium_db_size_bytes 12345",
        "allium_roster_version 42",
        "allium_client_connections 1",
        "allium_replay_filter_load 2.5",
        "allium_replay_filter_generations 3",
        "allium_replay_filter_rolls_total 2",
        "allium_replay_filter_saturated_total 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));
}

// ---------------------------------------------------------------- HTTP

async fn get(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    // The server closes after one response, so reading to the end is reading the response.
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("server did not close the connection")
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn get_path(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")
}

#[tokio::test]
async fn http_serves_metrics_and_health_and_404s_the_rest() {
    let metrics = Metrics::new();
    metrics.set_roster_version(7);
    let _peer = metrics.peer_connected();
    let status = Arc::new(std::sync::Mutex::new(HealthStatus::Starting));
    let started = Instant::now();
    let health: http::HealthFn = {
        let metrics = metrics.clone();
        let status = status.clone();
        Arc::new(move || HealthReport::from_metrics(*status.lock().unwrap(), started, &metrics))
    };
    let shutdown = ShutdownSignal::new();
    let (addr, server) = http::serve(
        "127.0.0.1:0".parse().unwrap(),
        metrics.clone(),
        health,
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert_ne!(addr.port(), 0);

    metrics.dropped(DropReason::HeaderAuth);
    let (code, head, body) = get(addr, &get_path("/metrics")).await;
    assert_eq!(code, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(
        body.contains("allium_packets_dropped_total{reason=\"header_auth\"} 1"),
        "{body}"
    );

    let (code, head, body) = get(addr, &get_path("/health")).await;
    assert_eq!(code, 503, "starting is not healthy");
    assert!(head.contains("content-type: application/json"), "{head}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "starting");
    assert_eq!(json["roster_version"], 7);
    assert_eq!(json["peers"], 1);
    assert!(json["uptime_secs"].is_u64());

    *status.lock().unwrap() = HealthStatus::Ok;
    let (code, _, body) = get(addr, &get_path("/health?verbose=1")).await;
    assert_eq!(code, 200);
    assert!(body.contains("\"status\":\"ok\""), "{body}");

    *status.lock().unwrap() = HealthStatus::Stopping;
    let (code, _, body) = get(addr, &get_path("/health")).await;
    assert_eq!(code, 503);
    assert!(body.contains("\"status\":\"stopping\""), "{body}");

    for path in ["/", "/metricsx", "/health/", "/../etc/passwd"] {
        let (code, _, _) = get(addr, &get_path(path)).await;
        assert_eq!(code, 404, "{path}");
    }
    let (code, head, _) = get(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(code, 405);
    assert!(head.contains("allow: get"), "{head}");

    // An oversized request head is refused, not buffered.
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let (code, _, _) = get(addr, &big).await;
    assert_eq!(code, 431);

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server did not stop on shutdown")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn http_bind_failure_is_typed() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let health: http::HealthFn = Arc::new(|| HealthReport {
        status: HealthStatus::Ok,
        roster_version: 0,
        uptime_secs: 0,
        peers: 0,
        syncing: false,
        clock_offset_ms: None,
        clock_far: false,
    });
    let err = http::serve(addr, Metrics::new(), health, ShutdownSignal::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

// ---------------------------------------------------------------- shutdown

#[tokio::test]
async fn shutdown_waits_for_tracked_tasks() {
    let shutdown = ShutdownSignal::new();
    let finished = Arc::new(AtomicUsize::new(0));
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(3);
    for _ in 0..3 {
        let s = shutdown.clone();
        let finished = finished.clone();
        let started_tx = started_tx.clone();
        shutdown.spawn(async move {
            started_tx.send(()).await.unwrap();
            s.triggered().await;
            // In-flight work after the signal: it must still be awaited.
            tokio::task::yield_now().await;
            finished.fetch_add(1, Ordering::SeqCst);
        });
    }
    for _ in 0..3 {
        started_rx.recv().await.unwrap();
    }
    assert_eq!(shutdown.tasks_running(), 3);
    assert!(!shutdown.is_triggered());
    shutdown
        .wait_for_tasks(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(shutdown.is_triggered());
    assert_eq!(finished.load(Ordering::SeqCst), 3);
    assert_eq!(shutdown.tasks_running(), 0);
}

#[tokio::test]
async fn shutdown_reports_tasks_past_the_deadline() {
    let shutdown = ShutdownSignal::new();
    let (_never_tx, never_rx) = tokio::sync::oneshot::channel::<()>();
    shutdown.spawn(async move {
        let _ = never_rx.await; // ignores the signal
    });
    let err = shutdown
        .wait_for_tasks(Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(err.remaining, 1);
}

#[tokio::test]
async fn sigterm_fires_the_signal() {
    let shutdown = ShutdownSignal::new();
    let listener = shutdown.listen_for_os_signals().unwrap();
    // The handler is installed, so SIGTERM reaches it instead of ending the test process.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(10), shutdown.triggered())
        .await
        .expect("SIGTERM did not fire the signal");
    tokio::time::timeout(Duration::from_secs(10), listener)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn signal_listener_ends_on_programmatic_shutdown() {
    let shutdown = ShutdownSignal::new();
    let listener = shutdown.listen_for_os_signals().unwrap();
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), listener)
        .await
        .unwrap()
        .unwrap();
}
