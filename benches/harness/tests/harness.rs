//! The benchmark tools checked against each other, so the harness cannot rot unnoticed:
//! the load generator against the ceiling server must move requests without errors, and must
//! count errors when the server misbehaves.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The ceiling server, stopped (by PID) when dropped.
struct Ceiling {
    child: Child,
    addr: String,
}

impl Ceiling {
    fn start() -> Ceiling {
        let mut child = Command::new(env!("CARGO_BIN_EXE_scgi-ceiling"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start scgi-ceiling");
        // It prints its address once it is accepting: read that line rather than sleeping.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the ceiling's address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Ceiling { child, addr }
    }
}

impl Drop for Ceiling {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs scgi-load with `args` and returns its JSON report.
fn load(addr: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_scgi-load"))
        .args(["--connect", addr, "--json", "--warmup", "0.1"])
        .args(args)
        .output()
        .expect("run scgi-load");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "scgi-load failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A number field of the flat JSON report.
fn field(report: &str, name: &str) -> f64 {
    let key = format!("\"{name}\": ");
    let start = report
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {report}"))
        + key.len();
    let rest = &report[start..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{name} in {report}"))
}

fn errors(report: &str) -> &str {
    let start = report.find("\"errors\": {").unwrap() + "\"errors\": {".len();
    &report[start..start + report[start..].find('}').unwrap()]
}

#[test]
fn every_route_of_the_ceiling_serves_without_errors() {
    let ceiling = Ceiling::start();
    let cases: [&[&str]; 4] = [
        &["--path", "/hello", "--expect-len", "14"],
        &["--path", "/big", "--expect-len", "102400"],
        &["--path", "/echo", "--body", "65536", "--expect-len", "65536"],
        &["--path", "/sleep", "--expect-len", "14"],
    ];
    for case in cases {
        let report = load(
            &ceiling.addr,
            &[&["--duration", "1", "--concurrency", "8"], case].concat(),
        );
        assert!(field(&report, "requests") > 0.0, "{case:?}: {report}");
        assert_eq!(errors(&report), "", "{case:?}: {report}");
        assert!(field(&report, "p50_ms") > 0.0, "{case:?}: {report}");
        assert!(field(&report, "p99_ms") >= field(&report, "p50_ms"), "{report}");
    }
}

#[test]
fn sleep_route_takes_its_ten_milliseconds() {
    let ceiling = Ceiling::start();
    let report = load(
        &ceiling.addr,
        &["--path", "/sleep", "--duration", "1", "--concurrency", "4"],
    );
    assert!(field(&report, "p50_ms") >= 10.0, "{report}");
    // Closed loop of 4 clients at >= 10 ms each: at most 400 requests/s.
    assert!(field(&report, "rps") <= 410.0, "{report}");
}

#[test]
fn stalled_connections_stay_open_while_the_load_runs() {
    let ceiling = Ceiling::start();
    let report = load(
        &ceiling.addr,
        &["--duration", "1", "--stalled", "200", "--expect-len", "14"],
    );
    assert_eq!(field(&report, "stalled_open"), 200.0, "{report}");
    assert!(field(&report, "requests") > 0.0, "{report}");
    assert_eq!(errors(&report), "", "{report}");
}

#[test]
fn wrong_lengths_and_statuses_are_counted_as_errors() {
    let ceiling = Ceiling::start();
    let report = load(&ceiling.addr, &["--duration", "0.5", "--expect-len", "13"]);
    assert_eq!(field(&report, "requests"), 0.0, "{report}");
    assert!(errors(&report).contains("\"length\""), "{report}");
    let report = load(&ceiling.addr, &["--duration", "0.5", "--path", "/nowhere"]);
    assert!(errors(&report).contains("\"status\""), "{report}");
}

#[test]
fn a_server_that_hangs_up_at_once_is_counted_as_errors() {
    // A listener that accepts, reads a little and closes without answering.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let done = Arc::new(AtomicBool::new(false));
    let finished = Arc::clone(&done);
    let rude = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        while !finished.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    let mut buf = [0u8; 16];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(b"");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
    let report = load(&addr, &["--duration", "0.5", "--concurrency", "2"]);
    done.store(true, Ordering::Relaxed);
    rude.join().unwrap();
    assert_eq!(field(&report, "requests"), 0.0, "{report}");
    // Closing with request bytes unread makes the kernel send a reset instead of an end of stream.
    let kinds = errors(&report);
    assert!(
        kinds.contains("\"empty\"") || kinds.contains("\"reset\""),
        "{report}"
    );
}

#[test]
fn bad_flags_are_refused_with_their_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_scgi-load"))
        .args(["--connect", "127.0.0.1:1", "--concurency", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--concurency"));
}
