//! The `-t` handling models: concurrency happens where each model promises it, rplex keeps
//! long downloads off the handler threads, `timeout=`/`abort=` abort a wedged process, and a
//! bad model spec is a start-up error.

mod common;

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn start(model: &str, extra: &[&str]) -> Server {
    let apps = apps_dir_str();
    let mut args = vec!["-p", &apps, "-A", "-t", model];
    args.extend_from_slice(extra);
    args.push("overload");
    Server::start(&args)
}

/// Sends `count` requests for `path` at once; returns how long until all were answered.
fn concurrent(server: &Server, count: usize, path: &str) -> Duration {
    let started = Instant::now();
    thread::scope(|scope| {
        let handles: Vec<_> = (0..count).map(|_| scope.spawn(|| server.get(path))).collect();
        for handle in handles {
            let response = handle.join().expect("request thread");
            assert_eq!(response.status, 200, "{}", response.text());
        }
    });
    started.elapsed()
}

/// The most requests the app saw running at once since the last call.
fn peak(server: &Server) -> usize {
    let text = server.get("/stats?reset=1").text();
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("/stats said {text:?}"))
}

#[test]
fn free_runs_fifty_sleeping_requests_at_once() {
    let server = start("free", &[]);
    peak(&server);
    let took = concurrent(&server, 50, "/sleep?s=0.2");
    // Serially this takes 10 s.
    assert!(
        took < Duration::from_secs(3),
        "50 x 0.2 s took {took:?} under free"
    );
    assert!(peak(&server) >= 20, "too little concurrency under free");
}

/// The pool monitor's log lines (under -v).
fn monitor_lines(server: &Server) -> String {
    let log = server.stderr_text();
    log.lines()
        .filter(|l| l.contains("may run at once"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Requests that compute share one GIL: running them side by side only adds hand-offs, so
/// `free` settles to about one at a time, and goes back to many at once when requests block.
#[test]
fn free_runs_computing_requests_one_at_a_time_and_blocking_ones_together() {
    if external_interpreter().is_some() {
        // The external mode's worker runs up to `max` app calls at once (see the manual).
        return;
    }
    // -v: the monitor's decisions and their reasons are in the log a failure shows.
    let server = start("free", &["-v"]);
    for round in 0..2 {
        if round > 0 {
            // Right after the sleeping ones many may run; within a few ticks it settles.
            concurrent(&server, 16, "/spin?s=0.02");
        }
        peak(&server);
        concurrent(&server, 16, "/spin?s=0.02");
        let computing = peak(&server);
        assert!(
            computing <= 4,
            "round {round}: {computing} computing requests ran at once (16 sent); the monitor:\n{}",
            monitor_lines(&server)
        );
        let threads = proc_threads(server.pid());
        if round == 0 {
            // The loop, the monitor, a worker or two: not a thread per request.
            assert!(threads <= 8, "{threads} threads after 16 computing requests");
        }
        let took = concurrent(&server, 40, "/sleep?s=0.2");
        assert!(
            took < Duration::from_secs(3),
            "round {round}: 40 x 0.2 s of sleep took {took:?}"
        );
        assert!(
            peak(&server) >= 16,
            "round {round}: sleeping requests did not overlap"
        );
    }
}

/// Requests that wait on the app's own locks (a long poll) look like requests waiting for the
/// GIL from outside, but nobody computes: more run until the one that releases them does.
#[test]
fn free_runs_long_polls_until_the_request_that_ends_them() {
    let server = start("free", &[]);
    let started = Instant::now();
    thread::scope(|scope| {
        let polls: Vec<_> = (0..40).map(|_| scope.spawn(|| server.get("/poll"))).collect();
        // Queued behind the 40 polls: it runs only once they all have a thread.
        assert_eq!(server.get("/release").text(), "set\n");
        for poll in polls {
            assert_eq!(poll.join().expect("poll thread").text(), "released\n");
        }
    });
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "40 long polls and their release took {took:?}"
    );
}

/// A request that computes for long does not hold up short ones until it ends: after a
/// while one more runs beside it, sharing the GIL.
#[test]
fn a_long_computation_does_not_hold_up_short_requests() {
    let server = start("free", &[]);
    thread::scope(|scope| {
        let long = scope.spawn(|| server.get("/spin?s=3"));
        // Until it runs, the short ones could run first anyway.
        assert!(
            wait_until(Duration::from_secs(5), || peak(&server) >= 1),
            "the long request did not start"
        );
        for _ in 0..3 {
            let started = Instant::now();
            assert_eq!(server.get("/spin?s=0.001").text(), "spun\n");
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(1),
                "a 1 ms request took {took:?} beside a 3 s computation"
            );
        }
        assert_eq!(long.join().expect("long request").text(), "spun\n");
    });
}

#[test]
fn pool_max_50_runs_fifty_sleeping_requests_at_once() {
    let server = start("pool:max=50", &[]);
    peak(&server);
    let took = concurrent(&server, 50, "/sleep?s=0.2");
    assert!(
        took < Duration::from_secs(3),
        "50 x 0.2 s took {took:?} under pool:max=50"
    );
    assert!(peak(&server) >= 20, "too little concurrency under pool:max=50");
}

#[test]
fn single_runs_requests_one_after_another() {
    let server = start("single", &[]);
    peak(&server);
    let took = concurrent(&server, 10, "/sleep?s=0.2");
    assert_eq!(peak(&server), 1, "single ran requests at once");
    assert!(
        took >= Duration::from_millis(1950),
        "10 x 0.2 s took only {took:?} under single"
    );
}

#[test]
fn max_bounds_the_threads_of_free_and_pool() {
    for model in ["free:max=4", "pool:max=4,queue=100"] {
        let server = start(model, &[]);
        peak(&server);
        let took = concurrent(&server, 16, "/sleep?s=0.2");
        assert_eq!(peak(&server), 4, "{model}");
        assert!(
            took >= Duration::from_millis(750),
            "{model}: 16 x 0.2 s on 4 threads took {took:?}"
        );
    }
}

#[test]
fn rplex_calls_the_app_concurrently() {
    let server = start("rplex:max=50", &[]);
    peak(&server);
    let took = concurrent(&server, 50, "/sleep?s=0.2");
    assert!(
        took < Duration::from_secs(3),
        "50 x 0.2 s took {took:?} under rplex:max=50"
    );
    assert!(peak(&server) >= 20, "too little concurrency under rplex");
}

/// Starts `count` downloads of `mib` MiB each that nobody reads yet.
fn stalled_downloads(server: &Server, count: usize, mib: usize) -> Vec<Stream> {
    (0..count)
        .map(|_| {
            let mut stream = server.connect();
            let request = ScgiRequest::get(&format!("/big?mib={mib}")).encode();
            stream.write_all(&request).expect("send request");
            stream
        })
        .collect()
}

/// Reads a whole response and returns its length.
fn drain(stream: &mut Stream) -> usize {
    let (data, end) = stream.read_until_eof(Duration::from_secs(60));
    assert_eq!(end, ReadEnd::Eof);
    data.len()
}

/// Whether a quick request is answered within `limit` (the request is abandoned otherwise).
fn answered_within(server: &Server, limit: Duration) -> bool {
    let mut stream = server.connect();
    stream
        .write_all(&ScgiRequest::get("/sleep?s=0").encode())
        .expect("send request");
    let (data, _) = stream.read_until_eof(limit);
    data.starts_with(b"Status: 200")
}

#[test]
fn rplex_downloads_do_not_hold_handler_threads() {
    let server = start("rplex:max=2", &[]);
    let mut downloads = stalled_downloads(&server, 6, 16);
    assert!(
        answered_within(&server, Duration::from_secs(5)),
        "a short request waited behind stalled downloads under rplex:max=2"
    );
    // One response thread serves all six downloads, interleaved, to the end.
    let threads = proc_threads(server.pid());
    for download in &mut downloads {
        assert!(drain(download) > 16 << 20, "download cut short");
    }
    assert!(server.wait_for_log("closed after 256 of 256 chunks", Duration::from_secs(5)));
    assert!(
        threads <= 6,
        "{threads} threads for 2 handler threads and a response thread"
    );
}

#[test]
fn free_downloads_do_hold_handler_threads() {
    // The counterpart of the rplex test: under free:max=2 two stalled downloads block the rest.
    let server = start("free:max=2", &[]);
    let mut downloads = stalled_downloads(&server, 2, 16);
    // The event loop plus two worker threads.
    assert!(
        wait_until(Duration::from_secs(5), || proc_threads(server.pid()) >= 3),
        "setup: the downloads did not start"
    );
    assert!(
        !answered_within(&server, Duration::from_millis(1500)),
        "a short request was served although both threads of free:max=2 wait for readers"
    );
    for download in &mut downloads {
        drain(download);
    }
    assert!(answered_within(&server, Duration::from_secs(5)));
}

#[test]
fn rplex_refuses_write_with_a_clear_error() {
    let server = start("rplex", &[]);
    let response = server.get("/write");
    assert_eq!(response.status, 500);
    assert!(server.wait_for_log(
        "write() is not supported under the rplex handling model",
        Duration::from_secs(5)
    ));
    // free offers write().
    let free = start("free", &[]);
    assert_eq!(free.get("/write").text(), "written\n");
}

#[test]
fn rplex_sends_file_wrapper_responses() {
    let server = start("rplex", &[]);
    let own = std::fs::read(apps_dir().join("overload.py")).unwrap();
    assert_eq!(server.get("/file").body, own, "a real file, sent by sendfile");
    let filelike = server.get("/filelike?mib=3");
    assert_eq!(filelike.status, 200);
    assert_eq!(
        filelike.body,
        vec![b'y'; 3 << 20],
        "a BytesIO, iterated by the response thread"
    );
}

#[test]
fn rplex_closes_the_iterable_when_the_client_leaves() {
    let server = start("rplex", &[]);
    let mut stream = server.connect();
    stream
        .write_all(&ScgiRequest::get("/big?mib=50").encode())
        .unwrap();
    let mut first = vec![0u8; 1 << 20];
    stream.read_exact(&mut first).unwrap();
    drop(stream);
    assert!(
        server.wait_for_log("big response closed after", Duration::from_secs(10)),
        "the iterable was not closed"
    );
    assert!(!server.stderr_text().contains("closed after 800 of 800"));
    assert_eq!(server.get("/sleep?s=0").status, 200);
}

/// Keeps an aborting server from leaving a core file behind.
fn no_core_dumps(pid: u32) {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) on another process with a valid rlimit; no memory is shared.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_CORE, &zero, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Sends `count` requests that sleep `secs` without waiting for their answers.
fn fire(server: &Server, count: usize, secs: f64) -> Vec<Stream> {
    (0..count)
        .map(|_| {
            let mut stream = server.connect();
            let _ = stream.send_all(
                &ScgiRequest::get(&format!("/sleep?s={secs}")).encode(),
                Duration::from_secs(5),
            );
            stream
        })
        .collect()
}

#[test]
fn free_timeout_aborts_a_wedged_process() {
    let mut server = start("free:max=1,timeout=0.5", &[]);
    no_core_dumps(server.pid());
    let started = Instant::now();
    let _clients = fire(&server, 2, 30.0);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("the process did not abort");
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert!(
        server.stderr_text().contains("free timeout=0.5"),
        "{}",
        server.stderr_text()
    );
}

#[test]
fn pool_abort_aborts_a_wedged_process() {
    let mut server = start("pool:max=1,queue=1,abort=0.5", &[]);
    no_core_dumps(server.pid());
    let started = Instant::now();
    let _clients = fire(&server, 3, 30.0);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("the process did not abort");
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert!(
        server.stderr_text().contains("pool abort=0.5"),
        "{}",
        server.stderr_text()
    );
}

#[test]
fn timeouts_do_not_fire_while_requests_get_through() {
    // Busy but not wedged: every request waits less than the limit for its thread.
    let mut server = start("free:max=2,timeout=1.5", &[]);
    no_core_dumps(server.pid());
    concurrent(&server, 8, "/sleep?s=0.3");
    assert!(server.is_running(), "aborted although requests kept finishing");
}

#[test]
fn bad_models_are_start_up_errors_that_name_the_problem() {
    let cases = [
        ("threaded", "unknown handling model \"threaded\""),
        ("free:queue=3", "has no parameter \"queue\""),
        ("pool:max=0", "max=\"0\" is invalid"),
        ("pool:abort=soon", "abort=\"soon\" is invalid"),
        ("rplex:max=", "max=\"\" is invalid"),
        ("single:max=2", "has no parameter \"max\""),
    ];
    for (spec, message) in cases {
        let run = run_raw(
            &[
                "-T",
                "127.0.0.1:9",
                "-p",
                &apps_dir_str(),
                "-A",
                "-t",
                spec,
                "overload",
            ],
            &[],
            Duration::from_secs(20),
        );
        assert_eq!(
            run.status.and_then(|s| s.code()),
            Some(1),
            "-t {spec}: {}",
            run.stderr
        );
        assert!(run.stderr.contains(message), "-t {spec}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "-t {spec}: {}", run.stderr);
    }
}

/// Requests waiting in the listen backlog when the stop comes (the loop stops accepting while
/// the queue is full) are taken in and answered before the process exits, not reset.
#[test]
fn a_stop_answers_the_requests_still_in_the_listen_backlog() {
    let mut server = start("single", &["--max-queue", "1"]);
    // One runs, one waits in the queue, one is held: the loop stops accepting.
    let mut streams = fire(&server, 3, 1.0);
    assert!(server.wait_for_log("the request queue is full", Duration::from_secs(10)));
    // These wait in the listen backlog, their requests sent.
    streams.extend(fire(&server, 3, 0.1));
    std::thread::sleep(Duration::from_millis(100));
    server.signal(libc::SIGTERM);
    for (i, mut stream) in streams.into_iter().enumerate() {
        let (raw, end) = stream.read_until_eof(Duration::from_secs(20));
        assert_eq!(end, ReadEnd::Eof, "request {i}");
        let response = Response::parse(raw);
        assert_eq!(response.status, 200, "request {i}: {}", server.stderr_text());
    }
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("exits after the drain");
    assert!(status.success(), "{}", server.stderr_text());
    assert!(
        server
            .stderr_text()
            .contains("connection(s) waiting in the listen backlog"),
        "{}",
        server.stderr_text()
    );
}
