//! The external-interpreter mode's own promises: a worker process that dies is replaced and
//! the request it held is answered 502 (or cut, once its response began), never left
//! hanging; an interpreter that cannot run is a clear start-up error.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

/// Starts the server in the external mode: under the test run's interpreter, else python3.
fn start(extra: &[&str]) -> Server {
    let apps = apps_dir_str();
    let mut args: Vec<&str> = Vec::new();
    if external_interpreter().is_none() {
        args.extend(["--interpreter", "python3"]);
    }
    args.extend(extra);
    args.extend(["-p", &apps, "-A", "dyingapp"]);
    Server::start(&args)
}

fn app_pid(server: &Server) -> u32 {
    let response = server.get("/");
    assert_eq!(response.status, 200, "{}", server.stderr_text());
    response.text().trim_start_matches("pid ").parse().unwrap()
}

#[test]
fn a_worker_that_dies_is_replaced_and_its_request_gets_502() {
    let server = start(&[]);
    let first = app_pid(&server);
    let response = server.get("/die-before");
    assert_eq!(response.status, 502, "{}", response.text());
    assert!(server.wait_for_log("Python worker process", Duration::from_secs(5)));
    assert!(
        server.stderr_text().contains("request(s) in it failed"),
        "{}",
        server.stderr_text()
    );
    // A new worker serves the next requests.
    assert!(
        wait_until(Duration::from_secs(20), || server.get("/").status == 200),
        "{}",
        server.stderr_text()
    );
    assert_ne!(app_pid(&server), first, "the dead worker was replaced");
}

#[test]
fn a_worker_that_dies_mid_response_cuts_the_connection() {
    let server = start(&[]);
    let mut stream = server.connect();
    stream
        .write_all(&ScgiRequest::get("/die-after").encode())
        .unwrap();
    let (raw, _) = stream.read_until_eof(Duration::from_secs(10));
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("Status: 200 OK\r\n"), "{text}");
    assert!(
        text.ends_with("partial response\n"),
        "the response stops where the worker died: {text}"
    );
    assert!(wait_until(Duration::from_secs(20), || server.get("/").status == 200));
}

#[test]
fn requests_queued_behind_a_dying_worker_are_served_by_its_successor() {
    // One app call at a time: the requests behind the dying one wait in this process.
    let server = start(&["-t", "single"]);
    let dying = {
        let addr = server.addr.clone();
        std::thread::spawn(move || {
            exchange_raw(&addr, &ScgiRequest::get("/die-before").encode(), REQUEST_TIMEOUT)
        })
    };
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let addr = server.addr.clone();
            std::thread::spawn(move || exchange_raw(&addr, &ScgiRequest::get("/").encode(), REQUEST_TIMEOUT))
        })
        .collect();
    let status = Response::parse(dying.join().unwrap()).status;
    assert!(status == 502 || status == 200, "{status}");
    for handle in waiting {
        let response = Response::parse(handle.join().unwrap());
        assert!(
            response.status == 200 || response.status == 502,
            "a queued request was answered {}",
            response.status
        );
    }
    assert_eq!(server.get("/").status, 200);
}

#[test]
fn an_interpreter_that_cannot_run_is_a_clear_start_up_error() {
    let apps = apps_dir_str();
    let run = run_raw(
        &[
            "-T",
            "127.0.0.1:0",
            "--interpreter",
            "no-such-python-here",
            "-p",
            &apps,
            "-A",
            "dyingapp",
        ],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(run.status.and_then(|s| s.code()), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("no-such-python-here") && run.stderr.trim().lines().count() == 1,
        "{}",
        run.stderr
    );
}

#[test]
fn a_stop_signal_sent_to_every_process_still_lets_the_request_in_flight_finish() {
    let mut server = start(&[]);
    let worker = app_pid(&server);
    let mut stream = server.connect();
    stream
        .write_all(
            &ScgiRequest::get("/sleep")
                .set_header("QUERY_STRING", "1")
                .encode(),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // As Ctrl-C or systemd's default KillMode do: the front and its worker process both get it.
    for sig in [libc::SIGUSR1, libc::SIGHUP, libc::SIGINT] {
        kill(worker, sig);
    }
    server.signal(libc::SIGINT);
    let (raw, _) = stream.read_until_eof(Duration::from_secs(10));
    let response = Response::parse(raw);
    assert_eq!(response.status, 200, "{}", server.stderr_text());
    assert_eq!(response.text(), "slept\n");
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("the server exits after the drain");
    assert_eq!(status.code(), Some(0), "{}", server.stderr_text());
    assert!(
        !server.stderr_text().contains("ended ("),
        "{}",
        server.stderr_text()
    );
}

#[test]
fn the_apps_child_processes_get_the_usual_signal_defaults() {
    let server = start(&[]);
    let response = server.get("/child-sigterm");
    assert_eq!(response.status, 200, "{}", server.stderr_text());
    assert_eq!(response.text(), "default True");
}

/// The worker's source and configuration travel in its environment, out of the command line
/// that ps shows, and the app does not find them there either.
#[test]
fn the_worker_command_line_stays_short() {
    let server = start(&[]);
    let worker = app_pid(&server);
    let cmdline = std::fs::read(format!("/proc/{worker}/cmdline")).unwrap();
    assert!(
        cmdline.len() < 300,
        "{} bytes: {}",
        cmdline.len(),
        String::from_utf8_lossy(&cmdline)
    );
    assert_eq!(server.get("/worker-variables").text(), "[]");
}
