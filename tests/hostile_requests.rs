//! Requests built to hurt: regression tests for what the fuzzing and fault work found in how a
//! request head becomes the environ.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn env_value(response: &Response, key: &str) -> String {
    let env: Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", response.text()));
    env[key]["str"]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {env}"))
        .to_owned()
}

/// Regression: each repeat of an HTTP_ header re-joined everything before it, so a 64 KiB head
/// of one repeated header cost seconds of CPU under the GIL (quadratic), per request.
#[test]
fn repeated_http_headers_are_joined_in_linear_time() {
    let server = Server::start(&["-p", &apps_dir_str(), "-A", "bridgeapp"]);
    let mut request = ScgiRequest::get("/env");
    let repeats = 5000;
    for _ in 0..repeats {
        request = request.header("HTTP_X_R", "xy");
    }
    assert!(
        request.encode_headers().len() < 64 * 1024,
        "within the default --max-head"
    );
    let started = Instant::now();
    let response = server.request(&request);
    let took = started.elapsed();
    assert_eq!(response.status, 200);
    let joined = env_value(&response, "HTTP_X_R");
    assert_eq!(joined, vec!["xy"; repeats].join(", "));
    // About 9 s before the fix (debug build), well under 1 s after.
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// Regression: a repeat was told from a new header by comparing value objects, and equal short
/// values ("1", "", "GET", one Latin-1 character) are often the same object, so such repeats
/// were silently dropped instead of joined.
#[test]
fn repeated_headers_with_identical_short_values_are_joined() {
    let server = Server::start(&["-p", &apps_dir_str(), "-A", "bridgeapp"]);
    let request = ScgiRequest::get("/env")
        .header("HTTP_X_ONE", "1")
        .header("HTTP_X_ONE", "1")
        .header("HTTP_X_EMPTY", "")
        .header("HTTP_X_EMPTY", "")
        .header("HTTP_X_CHAR", [0xe9u8])
        .header("HTTP_X_CHAR", [0xe9u8])
        .header("HTTP_X_METHOD", "GET")
        .header("HTTP_X_METHOD", "GET")
        .header("HTTP_COOKIE", "a")
        .header("HTTP_COOKIE", "a")
        .header("HTTP_X_THREE", "p")
        .header("HTTP_X_THREE", "q")
        .header("HTTP_X_THREE", "p")
        .header("SERVER_SOFTWARE", "first")
        .header("SERVER_SOFTWARE", "second");
    let response = server.request(&request);
    assert_eq!(env_value(&response, "HTTP_X_ONE"), "1, 1");
    assert_eq!(env_value(&response, "HTTP_X_EMPTY"), ", ");
    assert_eq!(env_value(&response, "HTTP_X_CHAR"), "\u{e9}, \u{e9}");
    assert_eq!(env_value(&response, "HTTP_X_METHOD"), "GET, GET");
    assert_eq!(env_value(&response, "HTTP_COOKIE"), "a; a");
    assert_eq!(env_value(&response, "HTTP_X_THREE"), "p, q, p");
    // Only HTTP headers are joined; for other names the first one counts.
    assert_eq!(env_value(&response, "SERVER_SOFTWARE"), "first");
}
