//! Seeing inside a running server: `--metrics` (exact counts, summed over workers, kept when
//! a worker is replaced), recycling on `--max-rss` and `--max-lifetime` without a failed
//! request, the Python stack of a hung request and on SIGUSR2, the access log formats, and
//! `--allow-from` keeping other peers from the app.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use common::load::*;
use common::*;

/// The metrics page of the endpoint on `port`, over plain HTTP.
fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the metrics page");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.to_string()
}

/// Every sample of a page: `name{labels}` to its value.
fn samples(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of one series (0 when absent).
fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

fn metrics_arg(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

#[test]
fn metrics_of_two_workers_add_up_to_exactly_what_was_sent() {
    let (apps, port) = (apps_dir_str(), free_tcp_port());
    let mut server = Server::start(&[
        "--processes",
        "2",
        "--metrics",
        &metrics_arg(port),
        "-p",
        &apps,
        "-A",
        "observeapp",
    ]);
    wait_for_workers(&server, 2, &[]);
    for _ in 0..7 {
        assert_eq!(server.get("/ok").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(server.get("/status?404").status, 404);
    }
    for _ in 0..2 {
        assert_eq!(server.get("/fail").status, 500);
    }
    let refused = exchange_raw(&server.addr, b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(10));
    assert!(refused.starts_with(b"Status: 400"), "{}", show_bytes(&refused));
    // A request's counts land as its response ends, just after the client has it.
    let mut now = HashMap::new();
    let counted = wait_until(Duration::from_secs(10), || {
        now = samples(&scrape(port));
        value(&now, "scgi_wsgi_request_duration_seconds_count") >= 13.0
    });
    assert!(counted, "not all 13 requests counted: {now:?}");
    let expected = [
        ("scgi_wsgi_requests_total{code=\"200\"}", 7.0),
        ("scgi_wsgi_requests_total{code=\"404\"}", 3.0),
        ("scgi_wsgi_requests_total{code=\"500\"}", 2.0),
        ("scgi_wsgi_requests_total{code=\"400\"}", 1.0),
        ("scgi_wsgi_request_duration_seconds_count", 13.0),
        ("scgi_wsgi_request_queue_seconds_count", 12.0),
        ("scgi_wsgi_app_errors_total", 2.0),
        ("scgi_wsgi_refusals_total{cause=\"400\"}", 1.0),
        ("scgi_wsgi_requests_in_flight", 0.0),
        ("scgi_wsgi_workers", 2.0),
    ];
    for (series, want) in expected {
        assert_eq!(value(&now, series), want, "{series} in {now:#?}");
    }
    // A worker replaced: what it counted stays in the sums.
    let victim = workers(&server)[0];
    assert!(kill(victim, libc::SIGKILL));
    wait_for_workers(&server, 2, &[victim]);
    let after = samples(&scrape(port));
    assert_eq!(
        value(&after, "scgi_wsgi_requests_total{code=\"200\"}"),
        7.0,
        "{after:#?}"
    );
    assert_eq!(
        value(&after, "scgi_wsgi_worker_restarts_total{reason=\"died\"}"),
        1.0
    );
    assert_eq!(value(&after, "scgi_wsgi_workers"), 2.0);
    // The master serves the page alone: it answers while its workers are stopped.
    for pid in workers(&server) {
        kill(pid, libc::SIGSTOP);
    }
    let stopped = samples(&scrape(port));
    assert_eq!(value(&stopped, "scgi_wsgi_requests_total{code=\"404\"}"), 3.0);
    for pid in workers(&server) {
        kill(pid, libc::SIGCONT);
    }
    server.signal(libc::SIGTERM);
    assert!(server
        .wait_exit(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}

#[test]
fn a_single_process_serves_its_metrics_on_a_thread_and_bounds_the_endpoint() {
    let (apps, port) = (apps_dir_str(), free_tcp_port());
    let server = Server::start(&["--metrics", &metrics_arg(port), "-p", &apps, "-A", "observeapp"]);
    assert_eq!(server.get("/ok").status, 200);
    let counted = wait_until(Duration::from_secs(10), || {
        value(&samples(&scrape(port)), "scgi_wsgi_requests_total{code=\"200\"}") == 1.0
    });
    assert!(counted);
    // Anything but GET /metrics is turned away, and a silent scraper does not hold the
    // endpoint (nor the server) up.
    let _silent: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut other = TcpStream::connect(("127.0.0.1", port)).unwrap();
    other.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    other.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 404"), "{answer}");
    assert_eq!(server.get("/ok").status, 200);
    assert!(scrape(port).contains("scgi_wsgi_connections_open"));
}

/// Load on `addr` until `done` says enough happened; no request may fail meanwhile.
fn load_until(server: &Server, path: &str, clients: usize, done: impl Fn() -> bool) -> Vec<String> {
    let load = Load::start(&server.addr, path, clients);
    let happened = wait_until(Duration::from_secs(60), done);
    let (sent, failures, secs, bodies) = load.finish();
    eprintln!("{sent} requests in {secs:.1} s, {} failed", failures.len());
    assert!(happened, "not seen in time; stderr:\n{}", server.stderr_text());
    assert!(
        failures.is_empty(),
        "{failures:?}\nstderr:\n{}",
        server.stderr_text()
    );
    bodies
}

#[test]
fn a_worker_over_max_rss_is_replaced_without_a_failed_request() {
    let (apps, port) = (apps_dir_str(), free_tcp_port());
    let server = Server::start(&[
        "--processes",
        "2",
        "--max-rss",
        "250",
        "--metrics",
        &metrics_arg(port),
        "-p",
        &apps,
        "-A",
        "observeapp",
    ]);
    wait_for_workers(&server, 2, &[]);
    let first = workers(&server);
    // Every /leak keeps 4 MiB more; /ok requests go on beside them.
    let ok = Load::start(&server.addr, "/ok", 2);
    load_until(&server, "/leak?4", 2, || {
        value(
            &samples(&scrape(port)),
            "scgi_wsgi_worker_restarts_total{reason=\"max_rss\"}",
        ) >= 2.0
    });
    let (_, failures, _, _) = ok.finish();
    assert!(failures.is_empty(), "{failures:?}");
    let log = server.stderr_text();
    assert!(
        log.contains("is over --max-rss 250 MiB; asking to be replaced"),
        "{log}"
    );
    assert!(
        log.contains("passed --max-rss; starting its replacement"),
        "{log}"
    );
    assert!(log.contains("finishes its requests and exits"), "{log}");
    let now = wait_for_workers(&server, 2, &[]);
    assert!(now.iter().any(|p| !first.contains(p)), "{first:?} -> {now:?}");
}

#[test]
fn workers_are_replaced_after_max_lifetime_without_a_failed_request() {
    let (apps, port) = (apps_dir_str(), free_tcp_port());
    let server = Server::start(&[
        "--processes",
        "2",
        "--max-lifetime",
        "1.5",
        "--max-lifetime-jitter",
        "0.5",
        "--metrics",
        &metrics_arg(port),
        "-p",
        &apps,
        "-A",
        "observeapp",
    ]);
    wait_for_workers(&server, 2, &[]);
    let bodies = load_until(&server, "/pid", 3, || {
        value(
            &samples(&scrape(port)),
            "scgi_wsgi_worker_restarts_total{reason=\"max_lifetime\"}",
        ) >= 4.0
    });
    let pids: std::collections::HashSet<&String> = bodies.iter().collect();
    assert!(pids.len() >= 4, "only {} processes served: {pids:?}", pids.len());
    assert!(server
        .stderr_text()
        .contains("(--max-lifetime, with its jitter); asking to be replaced"));
}

#[test]
fn without_a_master_max_lifetime_drains_and_exits_with_status_0() {
    let apps = apps_dir_str();
    let mut server = Server::start(&[
        "--max-lifetime",
        "1",
        "--max-lifetime-jitter",
        "0",
        "-p",
        &apps,
        "-A",
        "observeapp",
    ]);
    // A request in flight as the lifetime ends is finished, whole.
    let addr = server.addr.clone();
    let in_flight = thread::spawn(move || try_get(&addr, "/nap?1.5"));
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        server.stderr_text()
    );
    let response = in_flight.join().unwrap().expect("the request in flight");
    assert_eq!((response.status, response.text()), (200, "rested\n".to_string()));
    let log = server.stderr_text();
    assert!(
        log.contains("(--max-lifetime, with its jitter); asking to be replaced"),
        "{log}"
    );
    assert!(
        log.contains("no master process (--processes 1): finishing open requests and exiting"),
        "{log}"
    );
}

#[test]
fn a_hung_request_has_its_python_stack_logged_before_the_504() {
    let apps = apps_dir_str();
    let server = Server::start(&["--request-timeout", "1", "-p", &apps, "-A", "observeapp"]);
    let response = server.get("/stuck");
    assert_eq!(response.status, 504);
    // The line saying so follows the answer.
    assert!(server.wait_for_log("answered 504", Duration::from_secs(10)));
    let log = server.stderr_text();
    let stack_at = log
        .find("its Python stack, most recent call last:")
        .unwrap_or_else(|| panic!("{log}"));
    let answered_at = log.find("answered 504").unwrap_or_else(|| panic!("{log}"));
    assert!(stack_at < answered_at, "the stack comes first:\n{log}");
    let stack = &log[stack_at..answered_at];
    for frame in ["in application", "in stuck_in_the_app", "observeapp.py\", line"] {
        assert!(stack.contains(frame), "no {frame:?} in the stack:\n{log}");
    }
    assert!(
        stack
            .lines()
            .skip(1)
            .all(|l| l.starts_with("scgi-wsgi[server]: ERROR: ")),
        "every line of the stack has the prefix:\n{stack}"
    );
}

#[test]
fn sigusr2_logs_the_stack_of_a_running_request_and_stops_nothing() {
    let apps = apps_dir_str();
    let server = Server::start(&["-p", &apps, "-A", "observeapp"]);
    let addr = server.addr.clone();
    let napping = thread::spawn(move || try_get(&addr, "/nap?3"));
    assert!(server.wait_for_log("observeapp saw /nap", Duration::from_secs(10)));
    server.signal(libc::SIGUSR2);
    assert!(
        server.wait_for_log("in napping_in_the_app", Duration::from_secs(10)),
        "{}",
        server.stderr_text()
    );
    assert!(server.stderr_text().contains("SIGUSR2: "));
    let response = napping.join().unwrap().expect("the napping request");
    assert_eq!(response.status, 200);
    assert_eq!(server.get("/ok").status, 200);
    // With nothing running, it says so. (The client has its response a moment before the
    // worker thread has ended the request: ask again until it has.)
    let idle = wait_until(Duration::from_secs(10), || {
        server.signal(libc::SIGUSR2);
        server.wait_for_log(
            "SIGUSR2: no request is running in the app",
            Duration::from_millis(500),
        )
    });
    assert!(idle, "{}", server.stderr_text());
}

/// Serves a few requests with `--access-log-format FORMAT` and returns the log's lines.
fn access_lines(format: &str, wanted: usize) -> (Vec<String>, u32) {
    let dir = TempDir::new("access-format");
    let path = dir.path().join("access.log");
    let path_arg = path.to_str().unwrap().to_string();
    let apps = apps_dir_str();
    let server = Server::start(&[
        "--access-log",
        &path_arg,
        "--access-log-format",
        format,
        "-p",
        &apps,
        "-A",
        "observeapp",
    ]);
    let probe = ScgiRequest::get("/status?404").header("HTTP_USER_AGENT", "probe \"1\"");
    assert_eq!(server.request(&probe).status, 404);
    assert_eq!(server.get("/ok").status, 200);
    let mut lines = Vec::new();
    let written = wait_until(Duration::from_secs(10), || {
        lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        lines.len() >= wanted
    });
    assert!(written, "{lines:?}");
    (lines, server.pid())
}

#[test]
fn access_log_lines_parse_back_in_each_format() {
    let (json, pid) = access_lines("json", 2);
    let first: serde_json::Value = serde_json::from_str(&json[0]).expect("a JSON object per line");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/status");
    assert_eq!(first["query"], "404");
    assert_eq!(first["status"], 404);
    assert_eq!(first["bytes"], 11);
    assert_eq!(first["user_agent"], "probe \"1\"");
    assert_eq!(first["pid"], pid);
    assert!(first["duration_us"].as_u64().is_some_and(|us| us < 10_000_000));
    assert!(first["time"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z') && t.contains('T')));

    let (template, pid) = access_lines("{method}|{path}|{query}|{status}|{bytes}|{pid}", 2);
    assert_eq!(template[0], format!("GET|/status|404|404|11|{pid}"));
    assert_eq!(template[1], format!("GET|/ok|-|200|3|{pid}"));

    let (combined, _) = access_lines("combined", 2);
    let fields: Vec<&str> = combined[0].split('"').collect();
    assert_eq!(fields[1], "GET /status?404 HTTP/1.1");
    assert_eq!(
        fields[2].split_whitespace().collect::<Vec<_>>()[..2],
        ["404", "11"]
    );
    assert_eq!(fields[5], "probe \\x221\\x22");

    let bad = run_raw(
        &[
            "-T",
            "127.0.0.1:1",
            "--access-log",
            "-",
            "--access-log-format",
            "{nope}",
            "x",
        ],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(bad.status.and_then(|s| s.code()), Some(1));
    assert!(
        bad.stderr.contains("--access-log-format") && bad.stderr.contains("unknown field {nope}"),
        "{}",
        bad.stderr
    );
}

#[test]
fn a_peer_outside_allow_from_never_reaches_the_app() {
    let (apps, port) = (apps_dir_str(), free_tcp_port());
    let server = Server::start(&[
        "--allow-from",
        "10.0.0.0/8,fd00::/8",
        "--metrics",
        &metrics_arg(port),
        "-p",
        &apps,
        "-A",
        "observeapp",
    ]);
    // (Any probe of the harness waiting for the server to listen was refused too.)
    let refused = || {
        value(
            &samples(&scrape(port)),
            "scgi_wsgi_refusals_total{cause=\"allow_from\"}",
        )
    };
    let before = refused();
    let answer = exchange_raw(
        &server.addr,
        &ScgiRequest::get("/ok").encode(),
        Duration::from_secs(10),
    );
    assert!(answer.is_empty(), "{}", show_bytes(&answer));
    assert!(server.wait_for_log(
        "refused a connection from 127.0.0.1: not in --allow-from",
        Duration::from_secs(10)
    ));
    let counted = wait_until(Duration::from_secs(10), || refused() == before + 1.0);
    assert!(counted, "{before} -> {}", refused());
    assert!(
        !server.stderr_text().contains("observeapp saw"),
        "{}",
        server.stderr_text()
    );

    let open = Server::start(&[
        "--allow-from",
        "127.0.0.0/8",
        "--allow-from",
        "::1",
        "-p",
        &apps,
        "-A",
        "observeapp",
    ]);
    assert_eq!(open.get("/ok").status, 200);
    assert!(open.stderr_text().contains("observeapp saw /ok"));

    let dir = TempDir::new("allow-unix");
    let socket = dir.path().join("s.sock");
    let unix = run_raw(
        &[
            "-u",
            socket.to_str().unwrap(),
            "--allow-from",
            "127.0.0.1",
            "-A",
            "observeapp",
        ],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(unix.status.and_then(|s| s.code()), Some(1));
    assert!(unix.stderr.contains("--allow-from"), "{}", unix.stderr);
}
