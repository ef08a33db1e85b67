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

/// A client that shuts down its sending side once its request is sent (as `nc -N` and many
/// scripts do) still reads: it gets the whole response, whether the end of its input reaches
/// the server with the request or later, while the app runs or while a large body is read.
#[test]
fn a_client_that_half_closes_after_its_request_gets_the_response() {
    let server = Server::start(&["-p", &apps_dir_str(), "--body-buffer", "16K", "-A", "bridgeapp"]);
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let cases = [
        (
            ScgiRequest::get("/sleep").set_header("QUERY_STRING", "0.05"),
            "slept",
        ),
        (
            ScgiRequest::post("/input", "application/octet-stream", &body).set_header("QUERY_STRING", "size"),
            "300000",
        ),
    ];
    for (request, expect) in &cases {
        for round in 0..8 {
            let (raw, end) =
                exchange_raw_half_close(&server.addr, &request.encode(), Duration::from_secs(20));
            assert_eq!(end, ReadEnd::Eof, "round {round}");
            let response = Response::parse(raw);
            assert_eq!(response.status, 200, "round {round}: {}", server.stderr_text());
            assert!(
                response.text().contains(expect),
                "round {round}: {}\n{}",
                response.text(),
                server.stderr_text()
            );
        }
    }
}

/// A request cut short by the client's half-close is answered 400, naming what was missing.
#[test]
fn a_request_cut_short_by_a_half_close_is_answered_400() {
    let server = Server::start(&["-p", &apps_dir_str(), "-A", "bridgeapp"]);
    let whole = ScgiRequest::post("/input", "text/plain", b"0123456789").encode();
    let short_body = &whole[..whole.len() - 5];
    let (raw, end) = exchange_raw_half_close(&server.addr, short_body, Duration::from_secs(10));
    assert_eq!(end, ReadEnd::Eof);
    assert_eq!(Response::parse(raw).status, 400);
    assert!(server.wait_for_log("after 5 of 10 body bytes", Duration::from_secs(5)));
    let (raw, end) = exchange_raw_half_close(&server.addr, &whole[..20], Duration::from_secs(10));
    assert_eq!(end, ReadEnd::Eof);
    assert_eq!(Response::parse(raw).status, 400);
    assert!(server.wait_for_log(
        "after 20 bytes of an incomplete SCGI head",
        Duration::from_secs(5)
    ));
    // Nothing came at all: closed without a word.
    let (raw, end) = exchange_raw_half_close(&server.addr, b"", Duration::from_secs(10));
    assert_eq!(end, ReadEnd::Eof);
    assert!(raw.is_empty());
    let fine = server.request(&ScgiRequest::get("/sleep").set_header("QUERY_STRING", "0"));
    assert_eq!(fine.status, 200);
}

/// A client's bytes in a log line (the request line of a failed request) cannot forge other
/// lines or move the cursor: line breaks, carriage returns and escapes are written escaped.
#[test]
fn request_lines_in_the_log_cannot_forge_lines() {
    let server = Server::start(&["-p", &apps_dir_str(), "-A", "bridgeapp"]);
    let uri = "/fail-before?\r\x1b[2Kscgi-wsgi[server]: INFO: all is well\nforged line";
    let request = ScgiRequest::get("/fail-before")
        .set_header("REQUEST_URI", uri)
        .set_header("REQUEST_METHOD", "GET\nforged method");
    assert_eq!(server.request(&request).status, 500);
    assert!(server.wait_for_log("answering 500", Duration::from_secs(5)));
    let log = server.stderr_text();
    assert!(!log.contains('\r') && !log.contains('\x1b'), "{log:?}");
    // Every line is one of ours, with its prefix; the forged ones are not lines at all.
    assert!(log.lines().all(|l| l.starts_with("scgi-wsgi[")), "{log}");
    assert!(!log.lines().any(|l| l.contains(": forged")), "{log}");
    assert!(
        log.contains(r"GET\nforged method /fail-before?\r\x1b[2Kscgi-wsgi"),
        "{log}"
    );
}

/// Bytes past the request, sent in the same write as the request (a confused or hostile
/// client): the request is served, the response arrives whole and ends cleanly, and the
/// server reads and drops the rest (all 8 MiB of it, more than socket buffers hold) instead of
/// resetting the connection under the response; then it goes on serving.
#[test]
fn bytes_sent_past_the_request_do_not_cut_its_response() {
    let server = Server::start(&["-p", &apps_dir_str(), "-A", "bridgeapp"]);
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    for (round, junk_len) in [16usize, 4000, 8 << 20].into_iter().enumerate() {
        let mut bytes = ScgiRequest::post("/input", "application/octet-stream", &body)
            .set_header("QUERY_STRING", "size")
            .encode();
        bytes.extend(std::iter::repeat_n(b'x', junk_len));
        let mut stream = server.connect();
        // The client sends everything before it reads anything.
        let writer = {
            let mut stream = stream.try_clone().unwrap();
            std::thread::spawn(move || {
                use std::io::Write;
                stream.write_all(&bytes)
            })
        };
        let (raw, end) = stream.read_until_eof(Duration::from_secs(20));
        let written = writer.join().unwrap();
        assert!(
            written.is_ok(),
            "round {round}: the server did not take the bytes past the request: {written:?}"
        );
        assert_eq!(end, ReadEnd::Eof, "round {round}: {}", server.stderr_text());
        let response = Response::parse(raw);
        assert_eq!(response.status, 200, "round {round}");
        assert!(
            response.text().contains("200000"),
            "round {round}: {}",
            response.text()
        );
    }
    let fine = server.request(&ScgiRequest::get("/sleep").set_header("QUERY_STRING", "0"));
    assert_eq!(fine.status, 200);
}
