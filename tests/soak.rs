//! Soak test: one server under a mixed load of good requests, malformed requests, stalled
//! clients and early disconnects. No good request may fail, and the server's RSS and
//! descriptor count must stay flat from the second period to the end.
//!
//! The normal test suite runs it for a few seconds (periods of 2 s). The real soak is a
//! separate command (see README.md, "Soak test"), with periods of one minute:
//!
//!     SCGI_WSGI_SOAK_MINUTES=10 cargo test --release --test soak -- --nocapture

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Head and body timeouts given to the server, so stalled clients are dropped while we watch.
const STALL_TIMEOUT_SECS: &str = "2";
/// Connections the stalling client keeps open at once.
const STALLED_AT_ONCE: usize = 16;
/// Threads sending good requests.
const GOOD_CLIENTS: usize = 4;

/// Counters shared by the load threads.
#[derive(Default)]
struct Tally {
    good_ok: AtomicU64,
    good_failed: AtomicU64,
    malformed: AtomicU64,
    stalled: AtomicU64,
    disconnected: AtomicU64,
    first_failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.good_failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_failures.lock().unwrap();
        if first.len() < 10 {
            first.push(what);
        }
    }
}

/// A small deterministic generator (xorshift), so runs are repeatable and need no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One good request, checked byte for byte.
fn good_request(server: &Server, rng: &mut Rng, tally: &Tally) {
    let (request, expected): (ScgiRequest, Vec<u8>) = match rng.below(10) {
        0..=4 => (ScgiRequest::get("/ok"), b"ok".to_vec()),
        5..=7 => {
            // Mostly small bodies, sometimes one that spills to a temporary file.
            let len = if rng.below(8) == 0 {
                (1 << 20) + rng.below(512 * 1024) as usize
            } else {
                rng.below(64 * 1024) as usize
            };
            let body = vec![b'b'; len];
            (
                ScgiRequest::post("/body-length", "application/octet-stream", &body),
                len.to_string().into_bytes(),
            )
        }
        _ => (ScgiRequest::get("/stream?4"), vec![b'x'; 4 * 65536]),
    };
    let mut stream = match Stream::connect(&server.addr) {
        Ok(s) => s,
        Err(e) => return tally.fail(format!("connect: {e}")),
    };
    if let Err(e) = stream.write_all(&request.encode()) {
        return tally.fail(format!("send: {e}"));
    }
    let (raw, end) = stream.read_until_eof(Duration::from_secs(30));
    match Response::try_parse(raw) {
        Ok(r) if end == ReadEnd::Eof && r.status == 200 && r.body == expected => {
            tally.good_ok.fetch_add(1, Ordering::Relaxed);
        }
        Ok(r) => tally.fail(format!(
            "{:?}: status {}, {} body bytes (expected {}), end {end:?}",
            String::from_utf8_lossy(request.header_value("REQUEST_URI").unwrap_or_default()),
            r.status,
            r.body.len(),
            expected.len()
        )),
        Err((why, raw)) => tally.fail(format!("{why}: {}", show_bytes(&raw[..raw.len().min(200)]))),
    }
}

/// Garbage, broken netstrings, bad CONTENT_LENGTH: the server must answer or close.
fn malformed_request(server: &Server, rng: &mut Rng, tally: &Tally) {
    let good = ScgiRequest::get("/ok").encode();
    let bytes: Vec<u8> = match rng.below(6) {
        0 => b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        1 => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
        2 => b"99999999999:".to_vec(),
        3 => ScgiRequest::get("/ok")
            .set_header("CONTENT_LENGTH", "-1")
            .encode(),
        4 => {
            let mut g = good.clone();
            let i = rng.below(g.len() as u64) as usize;
            g[i] = rng.next() as u8;
            g
        }
        _ => good[..rng.below(good.len() as u64) as usize].to_vec(),
    };
    let (_, end) = exchange_raw_half_close(&server.addr, &bytes, Duration::from_secs(20));
    if end == ReadEnd::TimedOut {
        tally.fail("a malformed request was neither answered nor closed".into());
    }
    tally.malformed.fetch_add(1, Ordering::Relaxed);
}

/// Clients that send part of a request and then nothing; the server times them out.
fn stall_loop(server: &Server, stop: &AtomicBool, tally: &Tally) {
    let mut rng = Rng(0x5eed_57a1);
    let mut open = std::collections::VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        let request = ScgiRequest::post("/body-length", "text/plain", &[b'z'; 4096]).encode();
        let cut = 1 + rng.below(request.len() as u64 - 1) as usize;
        if let Ok(mut s) = Stream::connect(&server.addr) {
            let _ = s.write_all(&request[..cut]);
            open.push_back(s);
            tally.stalled.fetch_add(1, Ordering::Relaxed);
        }
        if open.len() >= STALLED_AT_ONCE {
            let mut s: Stream = open.pop_front().unwrap();
            // The server must have given up on it by now or soon (408 or a close).
            let (_, end) = s.read_until_eof(Duration::from_secs(20));
            if end == ReadEnd::TimedOut {
                tally.fail("a stalled client was never timed out".into());
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Clients that go away early: before the head is complete, right after sending, or in the
/// middle of a response; half of them with a reset.
fn early_disconnect(server: &Server, rng: &mut Rng, tally: &Tally) {
    let Ok(mut s) = Stream::connect(&server.addr) else {
        return;
    };
    let request = match rng.below(3) {
        0 => ScgiRequest::get("/stream?200").encode(),
        1 => ScgiRequest::get("/sleep?0.05").encode(),
        _ => {
            let r = ScgiRequest::post("/body-length", "text/plain", &vec![b'e'; 100_000]).encode();
            r[..r.len() / 2].to_vec()
        }
    };
    let _ = s.write_all(&request);
    if rng.below(2) == 0 {
        let mut buf = [0u8; 4096];
        let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
        let _ = std::io::Read::read(&mut s, &mut buf);
    }
    if rng.below(2) == 0 {
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    } else {
        let _ = s.shutdown(Shutdown::Both);
    }
    drop(s);
    tally.disconnected.fetch_add(1, Ordering::Relaxed);
}

/// One line of figures.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: usize,
    threads: usize,
}

fn sample(pid: u32) -> Sample {
    Sample {
        rss_kib: proc_rss_kib(pid),
        fds: proc_fds(pid),
        threads: proc_threads(pid),
    }
}

#[test]
fn soak_mixed_load() {
    let (periods, period) = match std::env::var("SCGI_WSGI_SOAK_MINUTES") {
        Ok(m) => (
            m.parse::<u32>()
                .expect("SCGI_WSGI_SOAK_MINUTES is a whole number"),
            Duration::from_secs(60),
        ),
        // The short run in the normal suite: the same load, periods of two seconds.
        Err(_) => (4, Duration::from_secs(2)),
    };
    assert!(
        periods >= 3,
        "a soak needs at least 3 periods to compare period 2 with the end"
    );
    let server = Server::start(&[
        "-p",
        &apps_dir_str(),
        "--head-timeout",
        STALL_TIMEOUT_SECS,
        "--body-timeout",
        STALL_TIMEOUT_SECS,
        "-A",
        "faultapp",
    ]);
    let pid = server.pid();
    let tally = Tally::default();
    let before = sample(pid);
    let unit = if period >= Duration::from_secs(60) {
        "minute"
    } else {
        "period"
    };
    println!("soak: {periods} {unit}s of {period:?}; server pid {pid}; at start {before:?}");
    let samples = run_load(&server, &tally, periods, period, unit);

    let failures = tally.first_failures.lock().unwrap().clone();
    assert_eq!(
        tally.good_failed.load(Ordering::Relaxed),
        0,
        "failed good requests, first ones:\n{}\nserver stderr (end):\n{}",
        failures.join("\n"),
        tail(&server.stderr_text(), 4000)
    );
    assert!(
        tally.good_ok.load(Ordering::Relaxed) > 0,
        "no good request went through"
    );

    assert_flat(&samples, before, pid);
    assert_eq!(server.get("/ok").text(), "ok");
}

/// Runs the mixed load for `periods` periods of `period`, sampling the server at the end of
/// each.
fn run_load(server: &Server, tally: &Tally, periods: u32, period: Duration, unit: &str) -> Vec<Sample> {
    let pid = server.pid();
    let stop = AtomicBool::new(false);
    let mut samples = Vec::new();
    thread::scope(|s| {
        for i in 0..GOOD_CLIENTS {
            let stop = &stop;
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ i as u64);
                while !stop.load(Ordering::Relaxed) {
                    good_request(server, &mut rng, tally);
                }
            });
        }
        s.spawn(|| {
            let mut rng = Rng(0xbad_f00d);
            while !stop.load(Ordering::Relaxed) {
                malformed_request(server, &mut rng, tally);
            }
        });
        s.spawn(|| stall_loop(server, &stop, tally));
        s.spawn(|| {
            let mut rng = Rng(0xd15c_0111);
            while !stop.load(Ordering::Relaxed) {
                early_disconnect(server, &mut rng, tally);
            }
        });
        let started = Instant::now();
        for n in 1..=periods {
            let due = started + period * n;
            thread::sleep(due.saturating_duration_since(Instant::now()));
            let figures = sample(pid);
            samples.push(figures);
            println!(
                "soak {unit} {n}: RSS {} KiB, fds {}, threads {}; good ok {}, good failed {}, malformed {}, stalled {}, disconnects {}",
                figures.rss_kib,
                figures.fds,
                figures.threads,
                tally.good_ok.load(Ordering::Relaxed),
                tally.good_failed.load(Ordering::Relaxed),
                tally.malformed.load(Ordering::Relaxed),
                tally.stalled.load(Ordering::Relaxed),
                tally.disconnected.load(Ordering::Relaxed),
            );
        }
        stop.store(true, Ordering::Relaxed);
    });
    samples
}

/// Checks that RSS and descriptors stayed flat from period 2 to the end, and that every
/// connection went once the load stopped.
fn assert_flat(samples: &[Sample], before: Sample, pid: u32) {
    // Flat from period 2 to the end. Descriptors are sampled under load, so they vary with
    // the connections in flight (stalled ones included); RSS must not trend upwards.
    let from = samples[1];
    let last = *samples.last().unwrap();
    let in_flight = STALLED_AT_ONCE + 2 * GOOD_CLIENTS + 16;
    let rss_allowance = (from.rss_kib / 10).max(8 * 1024);
    println!(
        "soak: RSS period 2 {} KiB -> end {} KiB (allowed +{rss_allowance}); fds period 2 {} -> end {} (allowed +{in_flight})",
        from.rss_kib, last.rss_kib, from.fds, last.fds
    );
    for (i, s) in samples.iter().enumerate().skip(1) {
        assert!(
            s.rss_kib <= from.rss_kib + rss_allowance,
            "RSS grew: period {} has {} KiB, period 2 had {} KiB",
            i + 1,
            s.rss_kib,
            from.rss_kib
        );
        assert!(
            s.fds <= before.fds + in_flight,
            "descriptors grew: period {} has {}, at start {}",
            i + 1,
            s.fds,
            before.fds
        );
    }
    // Once the load stops, every connection goes, stalled ones included.
    let settled = wait_until(Duration::from_secs(15), || proc_fds(pid) <= before.fds);
    assert!(
        settled,
        "descriptors did not come back to {} after the load: {:?}",
        before.fds,
        proc_fd_targets(pid)
    );
}

/// The last `n` bytes of a log, for failure messages.
fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
