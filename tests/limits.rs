//! Limits, timeouts and flow control: each limit answers as documented and logs one line
//! naming its flag; a slow reader keeps memory bounded; a client that leaves stops the work;
//! stalled and fleeting clients do not slow normal requests down.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn start(extra: &[&str]) -> Server {
    let apps = apps_dir_str();
    let mut args = vec!["-p", &apps, "-A"];
    args.extend_from_slice(extra);
    args.push("overload");
    Server::start(&args)
}

/// Sends raw bytes, keeps the connection open, and reads the answer (at most `timeout`).
fn raw_answer(server: &Server, bytes: &[u8], timeout: Duration) -> (Response, Duration) {
    let started = Instant::now();
    let raw = exchange_raw(&server.addr, bytes, timeout);
    (Response::parse(raw), started.elapsed())
}

#[test]
fn max_head_answers_400_naming_the_flag() {
    let server = start(&["--max-head", "200"]);
    let request = ScgiRequest::get("/sleep?s=0").header("HTTP_X_PAD", "p".repeat(300));
    let (response, _) = raw_answer(&server, &request.encode(), Duration::from_secs(10));
    assert_eq!(response.status, 400);
    assert!(response.text().contains("--max-head"), "{}", response.text());
    assert!(server.wait_for_log("400 Bad Request", Duration::from_secs(5)));
    assert!(server
        .stderr_text()
        .lines()
        .any(|l| l.contains("400 Bad Request") && l.contains("--max-head")));
    // A head under the limit passes.
    assert_eq!(server.get("/sleep?s=0").status, 200);
}

#[test]
fn max_body_answers_413_naming_the_flag() {
    let server = start(&["--max-body", "1000"]);
    let request = ScgiRequest::post("/echo", "application/octet-stream", &[b'b'; 2000]);
    let (response, _) = raw_answer(&server, &request.encode(), Duration::from_secs(10));
    assert_eq!(response.status, 413);
    assert!(server.wait_for_log("--max-body", Duration::from_secs(5)));
    let fits = ScgiRequest::post("/echo", "application/octet-stream", &[b'b'; 1000]);
    assert_eq!(server.request(&fits).text(), "1000\n");
}

#[test]
fn bodies_over_the_buffer_size_spill_to_a_file_and_arrive_whole() {
    let server = start(&["--body-buffer", "1K"]);
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let request = ScgiRequest::post("/echo", "application/octet-stream", &body);
    assert_eq!(server.request(&request).text(), "300000\n");
}

#[test]
fn head_timeout_answers_408_naming_the_flag() {
    let server = start(&["--head-timeout", "0.5"]);
    let half = &ScgiRequest::get("/sleep?s=0").encode()[..20];
    let (response, took) = raw_answer(&server, half, Duration::from_secs(10));
    assert_eq!(response.status, 408);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(server.wait_for_log("--head-timeout", Duration::from_secs(5)));
    // A connection that sends nothing at all is closed quietly at the same deadline.
    let silent = server.connect();
    assert!(wait_until(Duration::from_secs(5), || silent
        .peer_closed(Duration::from_millis(50))));
}

#[test]
fn body_timeout_answers_408_naming_the_flag() {
    let server = start(&["--body-timeout", "0.5"]);
    let request = ScgiRequest::post("/echo", "text/plain", &[b'x'; 100]).encode();
    let partial = &request[..request.len() - 90];
    let (response, took) = raw_answer(&server, partial, Duration::from_secs(10));
    assert_eq!(response.status, 408);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(server.wait_for_log("--body-timeout", Duration::from_secs(5)));
    assert!(server.stderr_text().contains("stalled at 10 of 100 bytes"));
}

#[test]
fn write_timeout_drops_a_client_that_stops_reading_and_closes_the_iterable() {
    let server = start(&["--write-timeout", "0.5"]);
    let mut stream = server.connect();
    stream
        .write_all(&ScgiRequest::get("/big?mib=50").encode())
        .unwrap();
    assert!(server.wait_for_log("--write-timeout", Duration::from_secs(10)));
    assert!(server.wait_for_log("big response closed after", Duration::from_secs(10)));
    assert!(!server.stderr_text().contains("closed after 800 of 800"));
    drop(stream);
}

#[test]
fn a_client_that_leaves_mid_response_stops_the_app() {
    let server = start(&[]);
    let mut stream = server.connect();
    stream
        .write_all(&ScgiRequest::get("/big?mib=50").encode())
        .unwrap();
    let mut first = vec![0u8; 1 << 20];
    stream.read_exact(&mut first).unwrap();
    drop(stream);
    assert!(server.wait_for_log("big response closed after", Duration::from_secs(10)));
    let log = server.stderr_text();
    let sent: usize = log
        .split("closed after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("chunk count in the log");
    // 1 MiB read + the 256 KiB write buffer + socket buffers: far from all 800 chunks.
    assert!(
        sent < 200,
        "the app produced {sent} chunks for a client that left after 16"
    );
    assert!(!log.contains("ERROR"), "a client leaving is not an error:\n{log}");
}

#[test]
fn max_connections_leaves_the_rest_in_the_backlog() {
    let server = start(&["--max-connections", "2", "--head-timeout", "30"]);
    // Each sends a first byte of its head, so the listener (deferring accepts until data
    // comes) lets it through and it holds a slot.
    let idle: Vec<Stream> = (0..2)
        .map(|_| {
            let mut stream = server.connect();
            stream.write_all(b"1").unwrap();
            stream
        })
        .collect();
    waits_for_a_slot(&server, idle, 2);
}

/// With `holders` in every one of the `limit` connection slots, a request on a new connection
/// waits (and the limit is logged); once they close, it is served.
fn waits_for_a_slot(server: &Server, holders: Vec<Stream>, limit: usize) {
    let mut next = server.connect();
    next.write_all(&ScgiRequest::get("/sleep?s=0").encode()).unwrap();
    let (early, _) = next
        .try_clone()
        .unwrap()
        .read_until_eof(Duration::from_millis(700));
    assert!(
        early.is_empty(),
        "served a connection beyond --max-connections {limit}"
    );
    assert!(server.wait_for_log("--max-connections", Duration::from_secs(5)));
    drop(holders);
    let (late, end) = next.read_until_eof(Duration::from_secs(10));
    assert_eq!(end, ReadEnd::Eof);
    assert_eq!(Response::parse(late).status, 200);
}

#[test]
fn a_silent_connection_waits_in_the_kernel_unless_accepts_are_not_deferred() {
    // By default the kernel holds a connection back until its first bytes come (for about a
    // second), so one that sends nothing takes no slot meanwhile.
    let server = start(&["--max-connections", "1", "--head-timeout", "30"]);
    let _silent = server.connect();
    thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    assert_eq!(server.get("/sleep?s=0").status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );

    // --no-defer-accept: it is accepted at once and holds the only slot.
    let server = start(&[
        "--no-defer-accept",
        "--max-connections",
        "1",
        "--head-timeout",
        "30",
    ]);
    let silent = server.connect();
    thread::sleep(Duration::from_millis(100));
    waits_for_a_slot(&server, vec![silent], 1);
}

#[test]
fn a_silent_connection_is_closed_at_its_head_timeout_counted_from_connecting() {
    // The kernel lets it through after about a second of silence; the head timeout still
    // counts from the connect, not from then.
    let server = start(&["--head-timeout", "2"]);
    let started = Instant::now();
    let silent = server.connect();
    assert!(wait_until(Duration::from_secs(10), || silent
        .peer_closed(Duration::from_millis(20))));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(2800),
        "closed after {took:?}, with --head-timeout 2"
    );
}

#[test]
fn a_full_queue_pauses_accepting_and_drops_nobody() {
    let server = start(&["-t", "free:max=1", "--max-queue", "1"]);
    let started = Instant::now();
    // One request runs, one waits in the queue, the rest wait in the loop or the backlog.
    let answers: Vec<u16> = thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| server.get("/sleep?s=0.3").status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(answers, [200; 6]);
    assert!(
        started.elapsed() >= Duration::from_millis(1750),
        "{:?}",
        started.elapsed()
    );
    assert!(server.wait_for_log("the request queue is full", Duration::from_secs(5)));
    assert!(server.stderr_text().contains("--max-queue"));
}

#[test]
fn pool_queue_holds_a_burst_without_refusing() {
    let server = start(&["-t", "pool:max=2,queue=1"]);
    let answers: Vec<u16> = thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|_| scope.spawn(|| server.get("/sleep?s=0.05").status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(answers, [200; 20]);
}

#[test]
fn bad_limit_values_are_start_up_errors_that_name_the_flag() {
    let cases: [(&[&str], &str); 5] = [
        (&["--write-buffer", "lots"], "--write-buffer"),
        (&["--write-buffer", "10"], "--write-buffer"),
        (&["--max-queue", "0"], "--max-queue"),
        (&["--head-timeout=-1"], "--head-timeout"),
        (&["--max-head", "1X"], "--max-head"),
    ];
    for (flags, named) in cases {
        let apps = apps_dir_str();
        let mut args = vec!["-T", "127.0.0.1:9", "-p", &apps, "-A"];
        args.extend_from_slice(flags);
        args.push("overload");
        let run = run_raw(&args, &[], Duration::from_secs(20));
        assert_eq!(
            run.status.and_then(|s| s.code()),
            Some(1),
            "{flags:?}: {}",
            run.stderr
        );
        assert!(run.stderr.contains(named), "{flags:?}: {}", run.stderr);
    }
}

/// The largest RSS (KiB) seen while `stream` reads a whole response slowly.
fn read_slowly(stream: &mut Stream, pid: u32, expect: usize) -> u64 {
    // First do not read at all: an unbounded server would buffer everything now.
    let pause_until = Instant::now() + Duration::from_secs(1);
    let mut peak = 0;
    while Instant::now() < pause_until {
        peak = peak.max(proc_rss_kib(pid));
        thread::sleep(Duration::from_millis(20));
    }
    let mut got = 0;
    let mut buf = vec![0u8; 256 * 1024];
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reads = 0u64;
    loop {
        let n = stream.read(&mut buf).expect("read response");
        if n == 0 {
            break;
        }
        got += n;
        reads += 1;
        if reads % 16 == 0 {
            peak = peak.max(proc_rss_kib(pid));
            thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(got >= expect, "got {got} of {expect} bytes");
    peak
}

#[test]
fn a_slow_reader_of_50_mib_keeps_server_memory_bounded() {
    for model in ["free", "rplex"] {
        let server = start(&["-t", model]);
        // Warm up: the app, its code paths and the allocator have run once.
        assert_eq!(server.get("/big?mib=1").body.len(), 1 << 20);
        let before = proc_rss_kib(server.pid());
        let mut stream = server.connect();
        stream
            .write_all(&ScgiRequest::get("/big?mib=50").encode())
            .unwrap();
        let peak = read_slowly(&mut stream, server.pid(), 50 << 20);
        let growth_mib = peak.saturating_sub(before) as f64 / 1024.0;
        eprintln!("{model}: RSS {before} KiB before, {peak} KiB at most while serving 50 MiB slowly");
        assert!(growth_mib < 30.0, "{model}: RSS grew by {growth_mib:.1} MiB");
        assert!(server.wait_for_log("closed after 800 of 800", Duration::from_secs(5)));
    }
}

/// Raises this process's soft open-file limit to the hard one (the test opens 1000s of sockets).
/// Sends one upload per thread, all at once, and returns their answers in order.
fn uploads(server: &Server, bodies: &[Vec<u8>]) -> Vec<thread::JoinHandle<Response>> {
    bodies
        .iter()
        .map(|body| {
            let addr = server.addr.clone();
            let request = ScgiRequest::post("/digest", "application/octet-stream", body).encode();
            thread::spawn(move || Response::parse(exchange_raw(&addr, &request, Duration::from_secs(60))))
        })
        .collect()
}

/// Keeps the single worker busy for `secs` seconds (from a moment after the call returns).
fn occupy_the_worker(server: &Server, secs: &str) -> thread::JoinHandle<Response> {
    let addr = server.addr.clone();
    let request = ScgiRequest::get(&format!("/sleep?s={secs}")).encode();
    let busy = thread::spawn(move || Response::parse(exchange_raw(&addr, &request, Duration::from_secs(30))));
    thread::sleep(Duration::from_millis(200));
    busy
}

fn digest(body: &[u8]) -> String {
    // CRC-32 (IEEE), as Python's zlib.crc32 computes it.
    let mut crc = !0u32;
    for &byte in body {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    format!("{} {}\n", body.len(), !crc)
}

/// While the worker is busy, 40 uploads of 200 KiB arrive: the server reads a few bodies ahead
/// and leaves the rest in the kernel's socket buffers, so its memory does not grow by 8 MB;
/// then every body arrives whole, in the app, as sent.
#[test]
fn uploads_waiting_for_a_worker_stay_out_of_server_memory() {
    let server = start(&["-t", "single", "--body-buffer", "1M"]);
    let bodies: Vec<Vec<u8>> = (0..40u32)
        .map(|n| {
            (0..200 * 1024u32)
                .map(|i| (i.wrapping_mul(n + 7) >> 3) as u8)
                .collect()
        })
        .collect();
    // Warm up the paths and the allocator with a few uploads in a row.
    for body in &bodies[..4] {
        assert_eq!(
            server.request(&ScgiRequest::post("/digest", "x/y", body)).text(),
            digest(body)
        );
    }
    let before = proc_rss_kib(server.pid());
    let busy = occupy_the_worker(&server, "2");
    let answers = uploads(&server, &bodies);
    let mut peak = before;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        peak = peak.max(proc_rss_kib(server.pid()));
        thread::sleep(Duration::from_millis(20));
    }
    for (answer, body) in answers.into_iter().zip(&bodies) {
        let response = answer.join().unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.text(), digest(body));
    }
    assert_eq!(busy.join().unwrap().text(), "slept\n");
    let growth_kib = peak.saturating_sub(before);
    eprintln!("RSS {before} KiB before, {peak} KiB at most with 40 uploads waiting");
    assert!(
        growth_kib < 4 * 1024,
        "RSS grew by {growth_kib} KiB for 8,000 KiB of waiting uploads"
    );
}

/// A body the server leaves unread while workers are busy is not a stalled client: it does not
/// time out (--body-timeout, nor the head's timer that is still set), however long the wait.
#[test]
fn a_body_left_unread_while_workers_are_busy_does_not_time_out() {
    let server = start(&["-t", "single", "--head-timeout", "0.5", "--body-timeout", "0.3"]);
    let bodies: Vec<Vec<u8>> = (0..8u8).map(|n| vec![n; 100 * 1024]).collect();
    let busy = occupy_the_worker(&server, "1.5");
    for (answer, body) in uploads(&server, &bodies).into_iter().zip(&bodies) {
        let response = answer.join().unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.text(), digest(body));
    }
    assert_eq!(busy.join().unwrap().text(), "slept\n");
    let log = server.stderr_text();
    assert!(
        !log.contains("--body-timeout") && !log.contains("--head-timeout"),
        "{log}"
    );
}

/// Sockets the process has open.
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn connections_the_worker_ends_are_closed_when_the_server_goes_idle() {
    // A response written whole by the worker ends without waking the loop, which closes the
    // descriptor when it next looks: it must look even when no other request comes.
    let server = start(&[]);
    let pid = server.pid();
    // The listener and the loop's own sockets, before any request.
    let settled = open_sockets(pid);
    assert!(settled > 0, "no sockets seen in /proc/{pid}/fd");
    for _ in 0..20 {
        let mut stream = server.connect();
        stream
            .send_all(&ScgiRequest::get("/sleep?s=0").encode(), Duration::from_secs(5))
            .unwrap();
        let (raw, end) = stream.read_until_eof(Duration::from_secs(5));
        assert!(matches!(end, ReadEnd::Eof), "{end:?}");
        assert_eq!(Response::parse(raw).status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(2), || open_sockets(pid) <= settled),
        "{} sockets still open 2 s after the last response, {settled} before",
        open_sockets(pid)
    );
}

fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

#[test]
fn stalled_and_fleeting_clients_do_not_slow_normal_requests() {
    let nofile = raise_nofile();
    assert!(
        nofile >= 2600,
        "RLIMIT_NOFILE hard limit {nofile} is too low for this test"
    );
    let server = start(&[]);
    let pid = server.pid();
    let quiet_rss = proc_rss_kib(pid);
    let quiet_threads = proc_threads(pid);

    // 1000 connections that send half a head and stall.
    let half = &ScgiRequest::get("/sleep?s=0").encode()[..30];
    let stalled: Vec<Stream> = (0..1000)
        .map(|_| {
            let mut s = server.connect();
            s.write_all(half).unwrap();
            s
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || proc_fds(pid) >= 1000),
        "the server did not take the stalled connections ({} fds)",
        proc_fds(pid)
    );
    // 1000 that connect and close at once, from another thread, while we measure.
    let churning = AtomicBool::new(true);
    let (latencies, rss, threads, fds) = thread::scope(|scope| {
        let churn = scope.spawn(|| {
            let mut n = 0;
            while n < 1000 {
                if let Ok(s) = Stream::connect(&server.addr) {
                    let _ = s.shutdown(Shutdown::Both);
                    n += 1;
                }
            }
            churning.store(false, Ordering::Relaxed);
        });
        let mut latencies = Vec::new();
        let mut rss = 0;
        let mut threads = 0;
        let mut fds = 0;
        while latencies.len() < 200 || churning.load(Ordering::Relaxed) {
            let t = Instant::now();
            assert_eq!(server.get("/sleep?s=0").status, 200);
            latencies.push(t.elapsed());
            if latencies.len() % 20 == 0 {
                rss = rss.max(proc_rss_kib(pid));
                threads = threads.max(proc_threads(pid));
                fds = fds.max(proc_fds(pid));
            }
        }
        churn.join().unwrap();
        (latencies, rss, threads, fds)
    });
    let mut sorted = latencies.clone();
    sorted.sort();
    let p50 = sorted[sorted.len() / 2];
    let p99 = sorted[sorted.len() * 99 / 100];
    eprintln!(
        "stalled clients: {} normal requests, p50 {p50:?}, p99 {p99:?}, max {:?}; \
         server RSS {quiet_rss} KiB idle, {rss} KiB at most under load; threads {quiet_threads} idle, {threads} at most; \
         {fds} fds at most",
        sorted.len(),
        sorted[sorted.len() - 1]
    );
    // Were the stalled clients holding anything up, requests would wait for their 10 s head timeout.
    assert!(
        p99 < Duration::from_millis(500),
        "p99 {p99:?} with stalled clients"
    );
    // Workers for the sequential normal requests, not a thread per connection.
    assert!(
        threads <= quiet_threads + 8,
        "{threads} threads under a connection flood"
    );
    assert!(
        rss < quiet_rss + 64 * 1024,
        "RSS {rss} KiB under a connection flood"
    );
    // The stalled ones are still held (their head timeout is 10 s), not dropped early.
    assert!(!stalled[0].peer_closed(Duration::ZERO));
    drop(stalled);
}

/// Sends `bytes` on a new connection while the one worker is busy and the queue is full, so
/// that the connection waits in the listen backlog and its whole request is there when it is
/// accepted: it goes to the app before the loop ever watches its socket. Returns the
/// connection, the writer of `bytes`, and the two requests that kept the server busy.
fn send_behind_a_full_queue(
    server: &Server,
    bytes: Vec<u8>,
) -> (
    Stream,
    thread::JoinHandle<std::io::Result<()>>,
    [thread::JoinHandle<Response>; 2],
) {
    let busy = occupy_the_worker(server, "1");
    // Fills the queue: accepting pauses, so the next connection waits in the backlog.
    let queued = {
        let addr = server.addr.clone();
        let request = ScgiRequest::get("/sleep?s=0").encode();
        thread::spawn(move || Response::parse(exchange_raw(&addr, &request, Duration::from_secs(30))))
    };
    thread::sleep(Duration::from_millis(200));
    let stream = server.connect();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        thread::spawn(move || stream.write_all(&bytes))
    };
    (stream, writer, [busy, queued])
}

/// Reads the response on `stream` to its end (which must be a clean one), checks that the
/// two requests that kept the server busy were served, and returns the response.
fn served_behind_a_full_queue(
    server: &Server,
    stream: &mut Stream,
    others: [thread::JoinHandle<Response>; 2],
) -> Response {
    let (raw, end) = stream.read_until_eof(Duration::from_secs(20));
    assert_eq!(end, ReadEnd::Eof, "{}", server.stderr_text());
    for other in others {
        assert_eq!(other.join().unwrap().status, 200);
    }
    Response::parse(raw)
}

/// A request taken whole from the backlog with bytes past it (8 MiB of them, more than the
/// socket buffers hold): the loop must start watching the socket once the response is out,
/// to read and drop the rest; otherwise the client's writes stall, and the close resets the
/// connection under them.
#[test]
fn a_request_taken_whole_from_the_backlog_with_bytes_past_it_is_served_and_drained() {
    let server = start(&["-t", "free:max=1", "--max-queue", "1"]);
    let body = vec![7u8; 1000];
    let mut bytes = ScgiRequest::post("/digest", "application/octet-stream", &body).encode();
    bytes.extend(std::iter::repeat_n(b'x', 8 << 20));
    let (mut stream, writer, others) = send_behind_a_full_queue(&server, bytes);
    let response = served_behind_a_full_queue(&server, &mut stream, others);
    let written = writer.join().unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), digest(&body));
    assert!(
        written.is_ok(),
        "the server did not take the bytes past the request: {written:?}"
    );
}

/// A request taken whole from the backlog whose response the client does not read at first:
/// what the socket does not take waits with the loop, which must then start watching the
/// socket for room, and the whole response arrives once the client reads.
#[test]
fn a_request_taken_whole_from_the_backlog_gets_a_response_larger_than_the_socket_takes() {
    let server = start(&["-t", "free:max=1", "--max-queue", "1"]);
    let bytes = ScgiRequest::get("/big?mib=8").encode();
    let (mut stream, writer, others) = send_behind_a_full_queue(&server, bytes);
    writer.join().unwrap().unwrap();
    // The worker is free after about a second; by 1.5 s the response has filled the socket.
    thread::sleep(Duration::from_millis(1500));
    let response = served_behind_a_full_queue(&server, &mut stream, others);
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 8 << 20);
}

/// A request taken whole from the backlog that runs a while, and bytes the client sends past it
/// meanwhile (8 MiB, more than the socket buffers hold): once the request has run a moment the
/// loop watches its socket, so the bytes are read and dropped and the end lingers, instead of
/// the client's writes stalling and the close resetting the connection under them.
#[test]
fn bytes_sent_past_a_running_request_taken_whole_are_drained() {
    let server = start(&["-t", "free:max=1", "--max-queue", "1"]);
    // Runs from about 1 s (when the worker is free) to about 3 s.
    let bytes = ScgiRequest::get("/sleep?s=2").encode();
    let (mut stream, writer, others) = send_behind_a_full_queue(&server, bytes);
    writer.join().unwrap().unwrap();
    let late = {
        let mut stream = stream.try_clone().unwrap();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(1800));
            stream.write_all(&vec![b'x'; 8 << 20])
        })
    };
    let response = served_behind_a_full_queue(&server, &mut stream, others);
    let written = late.join().unwrap();
    assert_eq!(response.status, 200);
    assert!(
        written.is_ok(),
        "the server did not take the bytes past the request: {written:?}"
    );
}
