//! The bridge end to end: the real binary over TCP, a Unix socket and fd 0, with the apps
//! in tests/apps: command line, environ, wsgi.input, responses, errors, bad input, signals.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn bridge(extra: &[&str]) -> Vec<String> {
    let mut args = vec!["-p".to_string(), apps_dir_str()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn start(listen: Listen, extra: &[&str]) -> Server {
    let args = bridge(extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with(listen, &refs, &[])
}

fn json(response: &Response) -> Value {
    assert_eq!(response.status, 200, "body: {}", response.text());
    serde_json::from_slice(&response.body).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", response.text()))
}

fn env_str<'a>(env: &'a Value, key: &str) -> &'a str {
    env[key]["str"]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing from environ: {env}"))
}

#[test]
fn serves_over_tcp_unix_and_fd0() {
    for listen in [Listen::Tcp, Listen::Unix, Listen::Fd0] {
        let server = start(listen, &["-A", "bridgeapp"]);
        let env = json(&server.get("/env?x=1"));
        assert_eq!(env_str(&env, "PATH_INFO"), "/env", "{listen:?}");
        assert_eq!(env_str(&env, "QUERY_STRING"), "x=1", "{listen:?}");
    }
}

#[test]
fn wmain_receives_the_trailing_arguments_as_strings() {
    let server = start(Listen::Tcp, &["bridgeapp", "one", "-two", "--three=3"]);
    let args = json(&server.get("/args"));
    assert_eq!(args, serde_json::json!(["one", "-two", "--three=3"]));
}

#[test]
fn environ_holds_every_header_and_the_wsgi_keys() {
    let server = start(Listen::Tcp, &["-A", "bridgeapp"]);
    let request = ScgiRequest::get("/env")
        .header("HTTP_X_CUSTOM", "value")
        .header("EXTRA_VAR", "");
    let env = json(&server.request(&request));
    for (key, value) in [
        ("REQUEST_METHOD", "GET"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("CONTENT_LENGTH", "0"),
        ("SCGI", "1"),
        ("HTTP_X_CUSTOM", "value"),
        ("EXTRA_VAR", ""),
        ("SCRIPT_NAME", ""),
        ("wsgi.url_scheme", "http"),
    ] {
        assert_eq!(env_str(&env, key), value, "{key}");
    }
    assert_eq!(env["wsgi.version"]["repr"], "(1, 0)");
    assert_eq!(env["wsgi.multithread"]["repr"], "True");
    assert_eq!(env["wsgi.multiprocess"]["repr"], "False");
    assert_eq!(env["wsgi.run_once"]["repr"], "False");
    assert_eq!(env["wsgi.input_terminated"]["repr"], "True");
    assert_eq!(env["wsgi.input"]["type"], "InputStream");
    assert_eq!(env["_errors_is_stderr"], true);
}

#[test]
fn environ_values_are_latin1_not_utf8() {
    let server = start(Listen::Tcp, &["-A", "bridgeapp"]);
    // "/caf\u{e9}" as raw UTF-8 bytes, and a byte that is not valid UTF-8 at all.
    let request = ScgiRequest::get("/env")
        .set_header("REQUEST_URI", b"/caf\xc3\xa9?q=\xff")
        .header("HTTP_X_RAW", b"\xe2\x82\xac\xff");
    let env = json(&server.request(&request));
    assert_eq!(env["REQUEST_URI"]["latin1_hex"], "2f636166c3a93f713dff");
    assert_eq!(env["HTTP_X_RAW"]["latin1_hex"], "e282acff");
    // Each byte is one code point: the UTF-8 sequence for e-acute stays two characters.
    assert_eq!(env_str(&env, "HTTP_X_RAW").chars().count(), 4);
}

#[test]
fn content_length_is_accepted_late_as_callscgi_sends_it() {
    let server = start(Listen::Fd0, &["-A", "bridgeapp"]);
    let mut request = ScgiRequest::post("/input?read", "text/plain", b"late length");
    let cl = request.headers.remove(0);
    assert_eq!(cl.0, b"CONTENT_LENGTH");
    request.headers.push(cl);
    let result = json(&server.request(&request));
    assert_eq!(result[0], hex(b"late length"));
}

#[test]
fn url_scheme_follows_ash_protocol_then_https() {
    let server = start(Listen::Tcp, &["-A", "bridgeapp"]);
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[], "http"),
        (&[("HTTPS", "on")], "https"),
        (&[("HTTPS", "1")], "https"),
        (&[("HTTPS", "off")], "http"),
        (&[("HTTP_X_ASH_PROTOCOL", "https")], "https"),
        (&[("HTTP_X_ASH_PROTOCOL", "http"), ("HTTPS", "on")], "http"),
    ];
    for (headers, scheme) in cases {
        let mut request = ScgiRequest::get("/env");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let env = json(&server.request(&request));
        assert_eq!(env_str(&env, "wsgi.url_scheme"), scheme, "{headers:?}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn wsgi_input_reads_exactly_the_body() {
    let server = start(Listen::Tcp, &["-A", "bridgeapp"]);
    let body = b"ab\ncdef\n\nlast";
    let cases: [(&str, Vec<String>); 8] = [
        ("read", vec![hex(body), hex(b"")]),
        (
            "read-n",
            vec![hex(b"ab\n"), hex(b"cdef"), hex(b"\n\nlast"), hex(b"")],
        ),
        ("read-none", vec![hex(body), hex(b"")]),
        (
            "readline",
            vec![hex(b"ab\n"), hex(b"cdef\n"), hex(b"\n"), hex(b"last"), hex(b"")],
        ),
        (
            "readline-n",
            vec![hex(b"ab"), hex(b"\n"), hex(b"cdef\n"), hex(b"\n")],
        ),
        (
            "readlines",
            vec![hex(b"ab\n"), hex(b"cdef\n"), hex(b"\n"), hex(b"last")],
        ),
        (
            "readlines-hint",
            vec![hex(b"ab\n"), hex(b"cdef\n"), "|".into(), hex(b"\nlast")],
        ),
        (
            "iter",
            vec![hex(b"ab\n"), hex(b"cdef\n"), hex(b"\n"), hex(b"last")],
        ),
    ];
    for (op, expected) in cases {
        let request = ScgiRequest::post(&format!("/input?{op}"), "text/plain", body);
        let result = json(&server.request(&request));
        assert_eq!(result, serde_json::json!(expected), "wsgi.input {op}");
    }
}

#[test]
fn bytes_after_content_length_are_never_visible() {
    let server = start(Listen::Tcp, &["-A", "bridgeapp"]);
    let request = ScgiRequest::post("/input?read", "text/plain", b"12345").raw_body(b"12345EXTRA-BYTES");
    let result = json(&server.request(&request));
    assert_eq!(result[0], hex(b"12345"));
    assert_eq!(result[1], hex(b""));
}

#[test]
fn large_bodies_spill_to_a_file_and_read_back_whole() {
    let server = start(Listen::Tcp, &["-A", "bridgeapp", "--body-buffer", "64K"]);
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let request = ScgiRequest::post("/input?size", "application/octet-stream", &body);
    let result = json(&server.request(&request));
    assert_eq!(result[0], body.len());
    assert_eq!(result[1], hex(&body[..16]));
    assert_eq!(result[2], hex(&body[body.len() - 16..]));
    assert_eq!(result[3], hex(b""));
}

#[test]
fn response_is_a_cgi_head_with_crlf_and_content_length() {
    let server = start(Listen::Tcp, &["-A", "bridgeapp"]);
    let raw = server.request_raw(&ScgiRequest::get("/sleep?0"));
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("Status: 200 OK\r\n"), "{text}");
    assert!(text.contains("\r\nContent-Type: text/plain\r\n"), "{text}");
    assert!(
        text.contains("\r\nContent-Length: 11\r\n\r\nslept 0.00\n"),
        "{text}"
    );
    assert!(!text.contains("HTTP/1."), "never an HTTP status line: {text}");
}

#[test]
fn app_error_before_the_head_gives_500_and_a_traceback() {
    let server = start(Listen::Tcp, &["-A", "bridgeapp"]);
    let response = server.get("/fail-before");
    assert_eq!(response.status, 500);
    assert!(server.wait_for_log("deliberate failure before the response", Duration::from_secs(5)));
    let log = server.stderr_text();
    assert!(log.contains("Traceback"), "{log}");
    assert!(
        log.contains("GET /fail-before"),
        "the log line names the request: {log}"
    );
    // The server goes on serving.
    assert_eq!(server.get("/sleep?0").status, 200);
}

#[test]
fn app_error_after_the_head_cuts_the_connection() {
    let server = start(Listen::Tcp, &["-A", "bridgeapp"]);
    let mut stream = server.connect();
    stream
        .write_all(&ScgiRequest::get("/fail-after").encode())
        .unwrap();
    let (raw, _end) = stream.read_until_eof(Duration::from_secs(10));
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("Status: 200 OK\r\n"), "{text}");
    assert!(
        text.ends_with("first part\n"),
        "the response stops where the app failed: {text}"
    );
    assert!(server.wait_for_log("deliberate failure mid-response", Duration::from_secs(5)));
    assert_eq!(server.get("/sleep?0").status, 200);
}

#[test]
fn close_is_called_after_success_and_after_failure() {
    let server = start(Listen::Tcp, &["-A", "bridgeapp", "-t", "single"]);
    assert_eq!(server.get("/closing").text(), "one two");
    let _ = server.request_raw(&ScgiRequest::get("/closing?fail"));
    assert_eq!(json(&server.get("/closed")), serde_json::json!([false, true]));
}

#[test]
fn header_values_with_cr_lf_nul_or_non_latin1_are_refused() {
    let server = start(Listen::Tcp, &["-A", "bridgeapp"]);
    for (case, error) in [
        ("crlf", "ValueError"),
        ("lf", "ValueError"),
        ("nul", "ValueError"),
        ("nonlatin", "ValueError"),
    ] {
        let response = server.get(&format!("/bad-header?{case}"));
        assert_eq!(response.text(), format!("refused: {error}"), "{case}");
        assert!(
            !String::from_utf8_lossy(&response.raw).contains("Injected"),
            "{case}"
        );
    }
}

#[test]
fn head_without_body_is_sent_when_the_iterable_is_empty() {
    let server = start(Listen::Tcp, &["-A", "bridgeapp"]);
    let response = server.get("/empty");
    assert_eq!(response.status, 204);
    assert_eq!(response.header("X-Empty"), Some("yes"));
    assert!(response.body.is_empty());
}

/// Every malformed request from the SCGI reference gets a 400 naming the cause, one log line,
/// and the server keeps serving.
#[test]
fn malformed_requests_get_400_and_the_server_goes_on() {
    let server = start(Listen::Tcp, &["-A", "bridgeapp", "--max-head", "1K"]);
    let cases: [(&str, &[u8], &str); 9] = [
        ("http request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "non-digit"),
        ("letters in length", b"1x:abc,", "non-digit"),
        ("missing colon", b"12345678901234567890123", "limit"),
        ("missing comma", b"16:CONTENT_LENGTH\x000\x00;", "','"),
        ("odd fields", b"22:CONTENT_LENGTH\x000\x00SCGI\x00,", "odd"),
        ("no content length", b"7:SCGI\x001\x00,", "CONTENT_LENGTH"),
        (
            "content length not decimal",
            b"19:CONTENT_LENGTH\x00-12\x00,",
            "CONTENT_LENGTH",
        ),
        ("head over the limit", b"5000:", "limit"),
        (
            "empty name",
            b"20:CONTENT_LENGTH\x000\x00\x00x\x00,",
            "empty header name",
        ),
    ];
    for (name, bytes, cause) in cases {
        let raw = exchange_raw(&server.addr, bytes, Duration::from_secs(10));
        let response = Response::parse(raw);
        assert_eq!(response.status, 400, "{name}: {}", response.text());
        assert!(
            response.text().contains(cause),
            "{name}: body {:?} should name {cause:?}",
            response.text()
        );
        assert_eq!(server.get("/sleep?0").status, 200, "still serving after {name}");
    }
    let log = server.stderr_text();
    assert!(
        log.matches("WARNING: 400 Bad Request").count() >= cases.len(),
        "{log}"
    );
}

#[test]
fn body_over_the_limit_gets_413() {
    let server = start(Listen::Tcp, &["-A", "bridgeapp", "--max-body", "1K"]);
    let request = ScgiRequest::post("/input?read", "text/plain", &[b'x'; 2000]);
    let response = server.request(&request);
    assert_eq!(response.status, 413);
    assert!(response.text().contains("--max-body"), "{}", response.text());
}

#[test]
fn a_body_that_never_arrives_times_out_with_408() {
    let server = start(Listen::Tcp, &["-A", "bridgeapp", "--body-timeout", "0.5"]);
    let request = ScgiRequest::post("/input?read", "text/plain", b"0123456789").raw_body(b"0123");
    let started = Instant::now();
    let raw = exchange_raw(&server.addr, &request.encode(), Duration::from_secs(10));
    let response = Response::parse(raw);
    assert_eq!(response.status, 408, "{}", response.text());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(server.wait_for_log("--body-timeout", Duration::from_secs(5)));
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let mut server = start(Listen::Tcp, &["-A", "bridgeapp"]);
    let mut stream = server.connect();
    stream.write_all(&ScgiRequest::get("/sleep?1").encode()).unwrap();
    assert!(server.wait_for_log("", Duration::from_secs(1)));
    // Give the request time to reach the app before the signal.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && proc_threads(server.pid()) < 2 {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    server.signal(libc::SIGTERM);
    let (raw, _) = stream.read_until_eof(Duration::from_secs(10));
    let response = Response::parse(raw);
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "slept 1.00\n");
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("server exits after the drain");
    assert_eq!(status.code(), Some(0), "{}", server.stderr_text());
    // New connections are refused once it stopped accepting.
    assert!(Stream::connect(&server.addr).is_err());
}

#[test]
fn sigterm_counts_only_the_requests_still_in_flight() {
    let mut server = start(Listen::Tcp, &["-A", "bridgeapp"]);
    for _ in 0..3 {
        assert_eq!(server.get("/pid").status, 200);
    }
    // Answered and ended, though the loop may not have closed their descriptors yet: the
    // signal comes well within the time it takes for that when nothing else happens.
    std::thread::sleep(Duration::from_millis(5));
    server.signal(libc::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("server exits after the drain");
    assert_eq!(status.code(), Some(0), "{}", server.stderr_text());
    let log = server.stderr_text();
    assert!(
        log.contains("SIGTERM: no longer accepting; finishing 0 open connection(s)"),
        "{log}"
    );
}

#[test]
fn app_logging_uses_the_original_format_unless_minus_l() {
    let server = start(Listen::Tcp, &["-A", "bridgeapp"]);
    server.get("/log");
    assert!(server.wait_for_log(
        "scgi-wsgi[bridgeapp]: INFO: hello from the app",
        Duration::from_secs(5)
    ));
    let quiet = start(Listen::Tcp, &["-L", "-A", "bridgeapp"]);
    quiet.get("/log");
    quiet.get("/sleep?0");
    assert!(
        !quiet.stderr_text().contains("scgi-wsgi[bridgeapp]"),
        "{}",
        quiet.stderr_text()
    );
}

#[test]
fn verbose_logs_one_line_per_request() {
    let server = start(Listen::Tcp, &["-v", "-A", "bridgeapp"]);
    assert_eq!(server.get("/pid").status, 200);
    assert_eq!(server.get("/no-such-route").status, 404);
    assert!(server.wait_for_log("\"GET /no-such-route\" 404", Duration::from_secs(5)));
    assert!(server.wait_for_log("DEBUG: 127.0.0.1 \"GET /pid\" 200", Duration::from_secs(5)));
    let quiet = start(Listen::Tcp, &["-A", "bridgeapp"]);
    assert_eq!(quiet.get("/pid").status, 200);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !quiet.stderr_text().contains("\"GET /pid\""),
        "{}",
        quiet.stderr_text()
    );
}

/// ASHD_USESYSLOG asks for syslog; with no syslog socket (a container) the lines stay on
/// stderr, with a warning, rather than vanishing.
#[test]
fn syslog_without_a_syslog_socket_falls_back_to_stderr() {
    let args = bridge(&["-A", "bridgeapp"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_with(Listen::Tcp, &refs, &[("ASHD_USESYSLOG", "1")]);
    server.get("/log");
    std::thread::sleep(Duration::from_millis(300));
    let log = server.stderr_text();
    if std::path::Path::new("/dev/log").exists() {
        assert!(!log.contains("no /dev/log"), "{log}");
        assert!(
            !log.contains("hello from the app"),
            "the app's line goes to syslog: {log}"
        );
    } else {
        assert!(
            log.contains("ASHD_USESYSLOG is set but there is no /dev/log: logging to stderr"),
            "{log}"
        );
        assert!(
            log.contains("scgi-wsgi[bridgeapp]: INFO: hello from the app"),
            "{log}"
        );
        assert!(!log.contains("Logging error"), "{log}");
    }
}

/// The set-up happens when the app first imports `logging`, however late; the embedded server
/// imports neither it nor `scgi_wsgi.wsgidir` for an app that does not (memory: about 0.7 MiB).
#[test]
fn logging_set_up_applies_to_a_late_import_and_costs_nothing_before() {
    let server = start(Listen::Tcp, &["-A", "latelog"]);
    let response = server.get("/");
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(server.wait_for_log(
        "scgi-wsgi[latelog]: INFO: logged from a late import",
        Duration::from_secs(5)
    ));
    assert!(
        response.text().ends_with("wsgidir has application\n"),
        "{}",
        response.text()
    );
    if external_interpreter().is_none() {
        assert!(
            response.text().starts_with("loaded at start: none;"),
            "{}",
            response.text()
        );
    }
}

#[test]
fn the_interpreter_is_the_python3_the_binary_was_built_for() {
    let python = std::process::Command::new(app_python())
        .args([
            "-c",
            "import json, sys, flask; print(json.dumps([sys.prefix, sys.version, flask.__file__]))",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        python.status.success(),
        "{}",
        String::from_utf8_lossy(&python.stderr)
    );
    // JSON: PyPy's sys.version spans two lines.
    let facts: Vec<String> = serde_json::from_slice(&python.stdout).unwrap();
    let (prefix, version, flask) = (facts[0].as_str(), facts[1].as_str(), facts[2].as_str());
    let server = start(Listen::Tcp, &["-A", "bridgeapp"]);
    let info = json(&server.get("/interp"));
    assert_eq!(info["prefix"], prefix);
    assert_eq!(info["version"], version);
    assert_eq!(
        info["flask_file"], flask,
        "a package installed for python3 imports"
    );
    let paths: Vec<&str> = info["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(paths[0], apps_dir_str(), "-p comes first on sys.path");
    assert!(
        !paths.contains(&""),
        "the working directory is not on sys.path: {paths:?}"
    );
}

#[test]
fn a_virtualenv_is_used_from_the_flag_or_virtual_env() {
    let dir = TempDir::new("venv");
    let venv = dir.path().join("env");
    // A virtualenv of the Python the app runs under (the embedded one, or the external one).
    let made = std::process::Command::new(app_python())
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(made.success());
    let purelib = std::process::Command::new(venv.join("bin").join("python"))
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
        .output()
        .unwrap();
    let site = std::path::PathBuf::from(String::from_utf8(purelib.stdout).unwrap().trim());
    std::fs::write(site.join("venvonly.py"), "MARK = 'from the venv'\n").unwrap();
    let venv_str = venv.to_str().unwrap();
    if in_pip_python() {
        pip_form_keeps_its_own_virtualenv(venv_str);
    } else {
        let by_flag = start(Listen::Tcp, &["-H", venv_str, "-A", "bridgeapp"]);
        let info = json(&by_flag.get("/interp"));
        assert_eq!(info["prefix"], venv_str);
        assert_eq!(info["venvonly"], "from the venv");
        let args = bridge(&["-A", "bridgeapp"]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let by_env = Server::start_with(Listen::Tcp, &refs, &[("VIRTUAL_ENV", venv_str)]);
        let info = json(&by_env.get("/interp"));
        assert_eq!(info["prefix"], venv_str);
        assert_eq!(info["venvonly"], "from the venv");
    }
    // Not a virtualenv: a clear start-up error.
    let run = run_raw(
        &["-T", "127.0.0.1:0", "-H", "/nonexistent-dir", "-A", "bridgeapp"],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(run.status.and_then(|s| s.code()), Some(1));
    assert!(
        run.stderr.contains("virtualenv") && run.stderr.contains("pyvenv.cfg"),
        "{}",
        run.stderr
    );
}

/// The pip-installed command runs in its own virtualenv's Python: `-H` naming another is a
/// start-up error that says what to run instead; `VIRTUAL_ENV` naming another (a shell's
/// activated one) is noted, and the app keeps the command's own packages.
fn pip_form_keeps_its_own_virtualenv(other: &str) {
    let own = pip_virtualenv().unwrap();
    let run = run_raw(
        &["-T", "127.0.0.1:0", "-H", other, "-A", "bridgeapp"],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(run.status.and_then(|s| s.code()), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(other) && run.stderr.contains("runs in the Python of"),
        "{}",
        run.stderr
    );
    let args = bridge(&["-A", "bridgeapp"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let by_env = Server::start_with(Listen::Tcp, &refs, &[("VIRTUAL_ENV", other)]);
    let info = json(&by_env.get("/interp"));
    assert_eq!(info["prefix"], own.to_str().unwrap());
    assert!(info["venvonly"].is_null(), "{info}");
    assert!(
        by_env
            .stderr_text()
            .contains(&format!("WARNING: VIRTUAL_ENV is {other}")),
        "{}",
        by_env.stderr_text()
    );
    // One that is no virtualenv at all (a stale variable) is noted and left aside the same way.
    let stale = "/nonexistent/virtualenv";
    let by_stale = Server::start_with(Listen::Tcp, &refs, &[("VIRTUAL_ENV", stale)]);
    assert_eq!(json(&by_stale.get("/interp"))["prefix"], own.to_str().unwrap());
    assert!(
        by_stale
            .stderr_text()
            .contains(&format!("WARNING: VIRTUAL_ENV is {stale}")),
        "{}",
        by_stale.stderr_text()
    );
}

fn start_failure(args: &[&str]) -> String {
    let mut full = vec!["-p", "TESTAPPS", "-T", "127.0.0.1:0"];
    full.extend_from_slice(args);
    let apps = apps_dir_str();
    let full: Vec<&str> = full
        .iter()
        .map(|a| if *a == "TESTAPPS" { apps.as_str() } else { a })
        .collect();
    let run = run_raw(&full, &[], Duration::from_secs(20));
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(1),
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.stderr.trim().lines().count(), 1, "one line: {}", run.stderr);
    run.stderr
}

#[test]
fn start_up_errors_are_one_line_naming_module_and_name() {
    let message = start_failure(&["nosuchmodule"]);
    assert!(message.contains("nosuchmodule"), "{message}");
    let message = start_failure(&["noapp"]);
    assert!(
        message.contains("noapp") && message.contains("wmain"),
        "{message}"
    );
    let message = start_failure(&["-A", "noapp"]);
    assert!(
        message.contains("noapp") && message.contains("application"),
        "{message}"
    );
    let message = start_failure(&["badimport"]);
    assert!(
        message.contains("badimport") && message.contains("ZeroDivisionError"),
        "{message}"
    );
    let message = start_failure(&["-t", "threaded", "bridgeapp"]);
    assert!(message.contains("threaded"), "{message}");
    let message = start_failure(&["-t", "free:nonsense=1", "bridgeapp"]);
    assert!(message.contains("nonsense"), "{message}");
}

#[test]
fn fd0_that_is_not_a_listening_socket_is_a_clear_error() {
    let run = run_raw(&["-A", "bridgeapp"], &[], Duration::from_secs(20));
    assert_eq!(run.status.and_then(|s| s.code()), Some(1));
    assert!(
        run.stderr.contains("fd 0") && run.stderr.contains("-T") && run.stderr.contains("-u"),
        "{}",
        run.stderr
    );
}

#[test]
fn help_goes_to_stdout_and_exits_0() {
    let run = run_raw(&["-h"], &[], Duration::from_secs(20));
    assert_eq!(run.status.and_then(|s| s.code()), Some(0));
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(out.contains("HANDLER-MODULE") && out.contains("-T"), "{out}");
    let run = run_raw(&["--version"], &[], Duration::from_secs(20));
    assert!(String::from_utf8_lossy(&run.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn unix_socket_replaces_a_stale_file_and_refuses_a_live_one() {
    let dir = TempDir::new("unix");
    let path = dir.path().join("app.sock");
    // A stale socket: bound, then its listener gone.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let path_str = path.to_str().unwrap();
    let apps = apps_dir_str();
    let mut child = Server::spawn_raw(
        &[
            "-u",
            path_str,
            "--unix-mode",
            "600",
            "-p",
            &apps,
            "-A",
            "bridgeapp",
        ],
        &[],
    );
    let addr = Addr::Unix(path.clone());
    assert!(wait_until(Duration::from_secs(20), || Stream::connect(&addr).is_ok()));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A second server must not take the live socket over.
    let run = run_raw(
        &["-u", path_str, "-p", &apps, "-A", "bridgeapp"],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(run.status.and_then(|s| s.code()), Some(1));
    assert!(run.stderr.contains("in use"), "{}", run.stderr);
    kill(child.id(), libc::SIGTERM);
    let status = wait_child(&mut child, Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0));
    assert!(!path.exists(), "the socket file is removed at exit");
}

/// Stop signals during a drain: a repeated SIGTERM (callscgi sends one when it replaces a
/// server that stopped accepting) goes on draining; a second SIGINT (Ctrl-C twice) or a
/// SIGQUIT stops at once.
#[test]
fn a_repeated_sigterm_goes_on_draining_a_second_sigint_or_a_sigquit_stops_at_once() {
    let apps = apps_dir_str();
    let cases = [
        (
            libc::SIGTERM,
            libc::SIGTERM,
            false,
            "SIGTERM again: still finishing 1 open connection(s)",
        ),
        (
            libc::SIGINT,
            libc::SIGTERM,
            false,
            "SIGTERM: still finishing 1 open connection(s)",
        ),
        (
            libc::SIGTERM,
            libc::SIGINT,
            false,
            "SIGINT: still finishing 1 open connection(s)",
        ),
        (
            libc::SIGINT,
            libc::SIGINT,
            true,
            "SIGINT again: stopping at once (1 connection(s) open)",
        ),
        (
            libc::SIGTERM,
            libc::SIGQUIT,
            true,
            "SIGQUIT: stopping at once (1 connection(s) open)",
        ),
    ];
    for (first, second, at_once, said) in cases {
        let mut server = Server::start(&["-p", &apps, "-A", "frontends_app"]);
        let mut stream = server.connect();
        stream.write_all(&ScgiRequest::get("/slow?1.5").encode()).unwrap();
        assert!(server.wait_for_log("slow request started", Duration::from_secs(10)));
        server.signal(first);
        assert!(server.wait_for_log("no longer accepting", Duration::from_secs(10)));
        server.signal(second);
        assert!(
            server.wait_for_log(said, Duration::from_secs(10)),
            "{first} then {second}:\n{}",
            server.stderr_text()
        );
        let (raw, _) = stream.read_until_eof(Duration::from_secs(10));
        let answered = Response::try_parse(raw).is_ok_and(|r| r.status == 200 && r.body.len() == 4 * 65536);
        assert_eq!(
            answered,
            !at_once,
            "{first} then {second}:\n{}",
            server.stderr_text()
        );
        let status = server
            .wait_exit(Duration::from_secs(10))
            .expect("the server exits");
        assert_eq!(status.code(), Some(0), "{}", server.stderr_text());
    }
}
