//! Real Flask, Django and Bottle apps (tests/apps/fw_*.py) served by the binary: each
//! response must match what the framework's own test client returns for the same request
//! (tests/apps/fw_testclient.py prints those).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{apps_dir, apps_dir_str, kill, Response, ScgiRequest, Server};

/// One request, given to both the server (over SCGI) and the test client.
struct Case {
    method: &'static str,
    /// Decoded path, sent as raw UTF-8 bytes in PATH_INFO (as frontends send it).
    path: &'static str,
    query: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    cookie: &'static str,
}

const fn get(path: &'static str) -> Case {
    Case {
        method: "GET",
        path,
        query: "",
        content_type: "",
        body: b"",
        cookie: "",
    }
}

fn cases() -> Vec<Case> {
    vec![
        get("/hello"),
        Case {
            method: "HEAD",
            ..get("/hello")
        },
        get("/user/ann"),
        // Non-ASCII: PATH_INFO carries the UTF-8 bytes, which the environ holds as Latin-1.
        get("/user/Zo\u{eb}-\u{65e5}\u{672c}"),
        Case {
            query: "a=1&b=%C3%A9&a=2&empty=",
            ..get("/query")
        },
        Case {
            method: "POST",
            content_type: "application/x-www-form-urlencoded",
            body: b"name=Ann&tags=a&tags=b&note=caf%C3%A9",
            ..get("/form")
        },
        Case {
            method: "POST",
            content_type: "application/json",
            body: "{\"name\": \"Zo\u{eb}\", \"n\": [1, 2.5, null], \"ok\": true}".as_bytes(),
            ..get("/json")
        },
        Case {
            cookie: "flavour=oat; n=1",
            ..get("/cookie")
        },
        get("/cookie"),
        get("/redirect"),
        get("/stream"),
        get("/download"),
        get("/missing"),
    ]
}

/// Headers whose values must be identical (in order); Content-Length is checked apart.
const COMPARED: [&str; 8] = [
    "Content-Type",
    "Content-Disposition",
    "Location",
    "Set-Cookie",
    "ETag",
    "Last-Modified",
    "Cache-Control",
    "Accept-Ranges",
];

/// What the framework's test client returned.
#[derive(Debug)]
struct Expected {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex from the helper"))
        .collect()
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// Runs every case through `framework`'s test client in one `python3` process.
fn test_client_results(framework: &str, cases: &[Case]) -> Vec<Expected> {
    let mut input = String::new();
    for c in cases {
        let fields = [
            hex(c.method.as_bytes()),
            hex(c.path.as_bytes()),
            hex(c.query.as_bytes()),
            hex(c.content_type.as_bytes()),
            hex(c.body),
            hex(c.cookie.as_bytes()),
        ];
        input.push_str(&fields.join("\t"));
        input.push('\n');
    }
    // The framework's own test client, under the Python the app runs under.
    let mut child = Command::new(common::app_python())
        .arg(apps_dir().join("fw_testclient.py"))
        .arg(framework)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run the app's Python");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    // Collect the output on another thread (it exceeds a pipe buffer), with a deadline.
    let pid = child.id();
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    let output = match result.recv_timeout(Duration::from_secs(60)) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) has no memory-safety preconditions; the helper is our child.
            kill(pid, libc::SIGKILL);
            panic!("the {framework} test-client helper did not finish within 60 s");
        }
    };
    assert!(
        output.status.success(),
        "the {framework} test-client helper failed ({:?}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut results = Vec::new();
    let mut current: Option<Expected> = None;
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "status" => {
                current = Some(Expected {
                    status: rest.parse().unwrap(),
                    headers: Vec::new(),
                    body: Vec::new(),
                })
            }
            "header" => {
                let (name, value) = rest.split_once(' ').unwrap();
                let e = current.as_mut().unwrap();
                e.headers.push((latin1(&unhex(name)), latin1(&unhex(value))));
            }
            "body" => current.as_mut().unwrap().body = unhex(rest),
            "end" => results.push(current.take().unwrap()),
            other => panic!("unexpected helper output {other:?}"),
        }
    }
    assert_eq!(results.len(), cases.len(), "one result per case");
    results
}

fn scgi_request(c: &Case) -> ScgiRequest {
    let uri = if c.query.is_empty() {
        c.path.to_string()
    } else {
        format!("{}?{}", c.path, c.query)
    };
    let mut req = ScgiRequest::new(c.method, &uri).header("HTTP_HOST", "localhost");
    if !c.content_type.is_empty() || !c.body.is_empty() {
        req = req.header("CONTENT_TYPE", c.content_type).body(c.body);
    }
    if !c.cookie.is_empty() {
        req = req.header("HTTP_COOKIE", c.cookie);
    }
    req
}

fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

fn compare(framework: &str, case: &Case, got: &Response, want: &Expected) {
    let what = format!("{framework}: {} {} {}", case.method, case.path, case.query);
    assert_eq!(got.status, want.status, "{what}: status; server sent {got:?}");
    for name in COMPARED {
        assert_eq!(
            got.headers_named(name),
            values(&want.headers, name),
            "{what}: {name} headers differ"
        );
    }
    // HEAD: the app's body (if any) is what the server passes on; test clients drop it.
    if case.method != "HEAD" {
        assert!(
            got.body == want.body,
            "{what}: body differs:\nserver:      {:?}\ntest client: {:?}",
            got.text(),
            String::from_utf8_lossy(&want.body)
        );
    }
    // Content-Length: the app's when it set one; otherwise one the server may add must be right.
    match values(&want.headers, "Content-Length").as_slice() {
        [declared] => assert_eq!(
            got.header("Content-Length"),
            Some(*declared),
            "{what}: Content-Length"
        ),
        [] if case.method != "HEAD" => {
            if let Some(len) = got.header("Content-Length") {
                assert_eq!(
                    len,
                    got.body.len().to_string(),
                    "{what}: Content-Length added by the server"
                );
            }
        }
        _ => {}
    }
}

fn check_framework(framework: &str, module: &str) {
    let cases = cases();
    let expected = test_client_results(framework, &cases);
    let server = Server::start(&["-p", &apps_dir_str(), "-A", module]);
    for (case, want) in cases.iter().zip(&expected) {
        let got = server.request(&scgi_request(case));
        compare(framework, case, &got, want);
    }
    let log = server.stderr_text();
    // The frameworks' own loggers may warn (Django logs its 404s); the server may not.
    for complaint in [
        "Traceback",
        "[wsgi]: ERROR",
        "[wsgi]: WARNING",
        "[server]: ERROR",
        "[server]: WARNING",
    ] {
        assert!(
            !log.contains(complaint),
            "{framework}: the server logged {complaint:?}:\n{log}"
        );
    }
}

#[test]
fn flask_matches_its_test_client() {
    check_framework("flask", "fw_flask");
}

#[test]
fn django_matches_its_test_client() {
    check_framework("django", "fw_django");
}

#[test]
fn bottle_matches_werkzeugs_test_client() {
    check_framework("bottle", "fw_bottle");
}
