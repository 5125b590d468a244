//! Recomputes the published test vectors and fails on any difference.
#![cfg(feature = "trace")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/vectors.rs"]
mod vectors;

use serde_json::Value;

const PUBLISHED: &str = include_str!("../../whitepaper/vectors/onion.json");

/// The first place where two JSON values differ, as a path.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = first_difference(&p, u, v) {
                            return Some(d);
                        }
                    }
                    _ => return Some(p),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path} (length {} vs {})", x.len(), y.len()));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (u, v))| first_difference(&format!("{path}[{i}]"), u, v))
        }
        _ => (a != b).then(|| path.to_string()),
    }
}

#[test]
fn published_vectors_are_reproduced_exactly() {
    let published: Value = serde_json::from_str(PUBLISHED).expect("vectors parse");
    let cases = published["cases"].as_array().expect("cases");
    assert!(cases.len() >= 6);
    for case in cases {
        let recomputed = vectors::compute(&vectors::inputs_of(case));
        if let Some(d) = first_difference("", case, &recomputed) {
            panic!("case {}: differs at {d}", case["name"]);
        }
    }
}

#[test]
fn published_session_vectors_are_reproduced_exactly() {
    let published: Value = serde_json::from_str(PUBLISHED).expect("vectors parse");
    let cases = published["session_cases"]
        .as_array()
        .expect("session_cases");
    assert!(cases.len() >= 2);
    for case in cases {
        let recomputed = vectors::compute_session(&vectors::session_inputs_of(case));
        if let Some(d) = first_difference("", case, &recomputed) {
            panic!("session case {}: differs at {d}", case["name"]);
        }
    }
}

#[test]
fn the_vector_file_is_what_the_generator_writes() {
    let published: Value = serde_json::from_str(PUBLISHED).expect("vectors parse");
    if let Some(d) = first_difference("", &published, &vectors::document()) {
        panic!("regenerate whitepaper/vectors/onion.json: differs at {d}");
    }
}

#[test]
fn vectors_cover_both_classes_several_lengths_and_an_error() {
    let published: Value = serde_json::from_str(PUBLISHED).expect("vectors parse");
    let cases = published["cases"].as_array().unwrap();
    let lengths: Vec<usize> = cases
        .iter()
        .map(|c| c["hops"].as_array().unwrap().len())
        .collect();
    assert!(lengths.contains(&1) && lengths.contains(&8));
    assert!(cases.iter().any(|c| c["inputs"]["class"] == "large"));
    assert!(cases.iter().any(|c| c["client_reads"]["error"].is_object()));
}
