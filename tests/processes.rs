//! Production operation: worker processes under a master (restart, reload, recycling, hung
//! requests, signals), socket activation, privilege drop, pid file, access log.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::load::*;
use common::*;

/// The interpreter the server embeds (recorded by the build script).
const BUILD_PYTHON: &str = env!("SCGI_WSGI_BUILD_PYTHON");

fn pid_of(response: &Response) -> u32 {
    let app_pid = response
        .text()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a pid: {:?}", response.text()));
    serving_pid(app_pid)
}

#[test]
fn workers_share_the_socket_and_say_multiprocess() {
    let apps = apps_dir_str();
    let server = Server::start(&["--processes", "3", "-p", &apps, "-A", "procapp"]);
    let pids = wait_for_workers(&server, 3, &[]);
    assert!(!pids.contains(&server.pid()));
    let env = server.get("/env");
    assert_eq!(env.text(), "multiprocess=True multithread=True");
    // Every request is served by a worker, never by the master.
    for _ in 0..20 {
        let pid = pid_of(&server.get("/pid"));
        assert!(pids.contains(&pid), "{pid} is not one of the workers {pids:?}");
    }
    let single = Server::start(&["-p", &apps, "-A", "procapp"]);
    assert_eq!(single.get("/env").text(), "multiprocess=False multithread=True");
    // --processes 1 keeps today's shape: no master, the process started serves itself.
    assert_eq!(pid_of(&single.get("/pid")), single.pid());
    assert!(workers(&single).is_empty());
}

/// The master never imports the app (in the pip-installed form it is a Python process, and
/// still only its workers load the app): each worker imports it once, after the fork.
#[test]
fn only_workers_import_the_app() {
    let dir = TempDir::new("imports");
    let log = dir.path().join("imports.log");
    std::fs::write(
        dir.path().join("importlog.py"),
        "import os\n\
         with open(os.environ['IMPORT_LOG'], 'a') as f:\n    f.write('%d\\n' % os.getpid())\n\
         def application(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         return [str(os.getpid()).encode()]\n",
    )
    .unwrap();
    let module_dir = dir.path().to_str().unwrap();
    let args = ["--processes", "2", "-p", module_dir, "-A", "importlog"];
    let server = Server::start_with(Listen::Tcp, &args, &[("IMPORT_LOG", log.to_str().unwrap())]);
    let mut pids = wait_for_workers(&server, 2, &[]);
    let served = pid_of(&server.get("/"));
    assert!(
        pids.contains(&served),
        "{served} is not one of the workers {pids:?}"
    );
    // (In the external-interpreter mode, each worker's interpreter process imports it.)
    let mut imported: Vec<u32> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| serving_pid(line.parse().unwrap()))
        .collect();
    assert!(!imported.contains(&server.pid()), "the master imported the app");
    imported.sort_unstable();
    pids.sort_unstable();
    assert_eq!(imported, pids, "each worker imports the app once");
}

/// The app's own child processes are not the server: a `multiprocessing` pool forked from a
/// worker (the fork start method, the default before Python 3.14) is ended with SIGTERM when
/// the app leaves it, and that SIGTERM must not reach the server's handler (which used to
/// take it for its own and drain and exit). With and without a master.
#[test]
fn the_apps_forked_children_do_not_take_the_servers_signals() {
    // The embedded interpreter's question: in the external mode the app forks from the
    // worker process, which has no handler of the server's (it gives forked children the
    // default actions too), and forking a pool from its threads under PyPy now and then
    // deadlocks in the child, a hazard of forking a threaded process that is not ours.
    if external_interpreter().is_some() {
        return;
    }
    let apps = apps_dir_str();
    for processes in ["1", "2"] {
        let server = Server::start(&["--processes", processes, "-p", &apps, "-A", "procapp"]);
        for _ in 0..3 {
            let r = server.get("/pool");
            assert_eq!(
                (r.status, r.text()),
                (200, "0 1 4 9".to_string()),
                "{}",
                server.stderr_text()
            );
        }
        // Still serving, in the same processes, with nothing stopped.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(server.get("/pid").status, 200);
        let log = server.stderr_text();
        assert!(!log.contains("SIGTERM"), "--processes {processes}: {log}");
        assert!(!log.contains("exited"), "--processes {processes}: {log}");
    }
}

/// A child the app forks and keeps (a pool made at import, fork start method) does not hold
/// the listening socket: once the server stops accepting, a new connection is refused at once
/// (callscgi then starts a new server) instead of waiting in a backlog nobody takes.
#[test]
fn the_apps_forked_children_do_not_hold_the_listening_socket() {
    let apps = apps_dir_str();
    for listen in [Listen::Tcp, Listen::Fd0] {
        let args = ["-p", &apps, "-A", "procapp"];
        let mut server = Server::start_with(listen, &args, &[("PROCAPP_FORK_POOL", "1")]);
        let mut slow = server.connect();
        slow.write_all(
            &ScgiRequest::get("/sleep")
                .set_header("QUERY_STRING", "3")
                .encode(),
        )
        .unwrap();
        assert!(server.wait_for_log("sleeping in", Duration::from_secs(10)));
        server.signal(libc::SIGTERM);
        assert!(server.wait_for_log("no longer accepting", Duration::from_secs(10)));
        let refused = wait_until(Duration::from_secs(2), || Stream::connect(&server.addr).is_err());
        assert!(
            refused,
            "{listen:?}: connections still accepted after SIGTERM\n{}",
            server.stderr_text()
        );
        let (raw, _) = slow.read_until_eof(Duration::from_secs(10));
        assert_eq!(Response::parse(raw).status, 200, "{}", server.stderr_text());
        assert!(server
            .wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success()));
    }
}

/// An app that sets its own SIGTERM handler at import does not take the server's stop signal
/// away (Python would run that handler only on the main thread, which here runs the event
/// loop, so SIGTERM was lost and the server could not be stopped): the server puts its own
/// handler back and says so, with and without a master.
#[test]
fn an_app_that_takes_the_servers_signals_at_import_does_not_keep_them() {
    let apps = apps_dir_str();
    for processes in ["1", "2"] {
        let mut server = Server::start(&["--processes", processes, "-p", &apps, "-A", "signalapp"]);
        assert_eq!(server.get("/").status, 200);
        if processes == "2" {
            // Both serving: a SIGTERM that reaches a worker still importing the app, after the
            // app set its handler and before the worker's own, is the app's (see the manual).
            wait_for_workers(&server, 2, &[]);
        }
        server.signal(libc::SIGTERM);
        let status = server.wait_exit(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "--processes {processes}: {status:?}\n{}",
            server.stderr_text()
        );
        if external_interpreter().is_none() {
            // (A worker under a master installs its stop handlers after the import anyway.)
            let taken = if processes == "1" {
                "SIGTERM, SIGUSR1"
            } else {
                "SIGUSR1"
            };
            assert!(
                server
                    .stderr_text()
                    .contains(&format!("the app set its own handler for {taken} at import")),
                "{}",
                server.stderr_text()
            );
        }
    }
}

/// The socket callscgi passes on fd 0 is not the app's standard input, nor its child
/// processes': they read /dev/null (the socket moves to a descriptor of its own).
#[test]
fn the_listening_socket_on_fd_0_is_not_the_apps_standard_input() {
    let apps = apps_dir_str();
    let server = Server::start_with(Listen::Fd0, &["-p", &apps, "-A", "procapp"], &[]);
    let r = server.get("/stdin");
    assert_eq!(
        (r.status, r.text()),
        (200, "/dev/null /dev/null".to_string()),
        "{}",
        server.stderr_text()
    );
    assert_eq!(server.get("/pid").status, 200);
}

/// A backlog full of connections that sent half a head (stalled clients), with a complete
/// request behind them: the stalled ones are no work for the workers, so a process takes them
/// as fast as it can, and the request is answered at once. (Regression: with processes
/// sharing the socket, each counted them against its share and took two per wake-up, so the
/// request behind 1,000 of them waited 15 s.)
#[test]
fn stalled_connections_in_the_backlog_do_not_hold_up_the_request_behind_them() {
    let apps = apps_dir_str();
    for processes in ["1", "2"] {
        let server = Server::start(&["--processes", processes, "-p", &apps, "-A", "procapp"]);
        let acceptors = if processes == "1" {
            vec![server.pid()]
        } else {
            wait_for_workers(&server, 2, &[])
        };
        // Stopped, the server accepts nothing: everything below waits in the backlog.
        for pid in &acceptors {
            // SAFETY: signals a process this test started.
            kill(*pid, libc::SIGSTOP);
        }
        let stalled: Vec<Stream> = (0..600)
            .map(|_| {
                let mut stream = Stream::connect(&server.addr).unwrap();
                stream.write_all(b"70:CONTENT_LENGTH\x000\x00SCGI").unwrap();
                stream
            })
            .collect();
        let mut behind = Stream::connect(&server.addr).unwrap();
        behind.write_all(&ScgiRequest::get("/pid").encode()).unwrap();
        let resumed = Instant::now();
        for pid in &acceptors {
            // SAFETY: as above.
            kill(*pid, libc::SIGCONT);
        }
        let (raw, end) = behind.read_until_eof(Duration::from_secs(20));
        let took = resumed.elapsed();
        assert_eq!(end, ReadEnd::Eof, "--processes {processes}");
        assert_eq!(Response::parse(raw).status, 200, "--processes {processes}");
        assert!(
            took < Duration::from_secs(3),
            "--processes {processes}: the request behind the stalled connections took {took:?}"
        );
        drop(stalled);
    }
}

/// A process whose workers are busy leaves new connections to its siblings: requests that
/// compute are spread over both processes, not queued behind one of them.
#[test]
fn busy_workers_leave_new_connections_to_their_siblings() {
    if external_interpreter().is_some() {
        // The external mode's worker takes up to `max` requests at once in each process.
        return;
    }
    let apps = apps_dir_str();
    let server = Server::start(&["--processes", "2", "-p", &apps, "-A", "procapp"]);
    let pids = wait_for_workers(&server, 2, &[]);
    let served: Vec<u32> = thread::scope(|s| {
        let handles: Vec<_> = (0..24)
            .map(|_| s.spawn(|| pid_of(&server.get("/spin?0.02"))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for pid in &pids {
        let count = served.iter().filter(|p| *p == pid).count();
        assert!(
            count >= 6,
            "worker {pid} served {count} of 24 computing requests: {served:?}"
        );
    }
}

#[test]
fn every_listener_kind_is_shared() {
    let apps = apps_dir_str();
    for listen in [Listen::Unix, Listen::Fd0] {
        let server = Server::start_with(listen, &["--processes", "2", "-p", &apps, "-A", "procapp"], &[]);
        let pids = wait_for_workers(&server, 2, &[]);
        let pid = pid_of(&server.get("/pid"));
        assert!(pids.contains(&pid), "{listen:?}: {pid} not in {pids:?}");
        let Addr::Unix(path) = server.addr.clone() else {
            unreachable!()
        };
        // A worker that stops must not remove the master's socket file.
        let mut server = server;
        let victim = pids[0];
        kill(victim, libc::SIGKILL);
        wait_for_workers(&server, 2, &[victim]);
        assert!(path.exists(), "{listen:?}: socket file gone after a worker died");
        assert_eq!(server.get("/env").status, 200);
        server.signal(libc::SIGTERM);
        assert!(server
            .wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success()));
        if listen == Listen::Unix {
            assert!(!path.exists(), "the master removes the socket file it made");
        }
    }
}

#[test]
fn once_told_to_stop_the_master_no_longer_accepts_either() {
    let apps = apps_dir_str();
    for listen in [Listen::Tcp, Listen::Unix] {
        let mut server = Server::start_with(listen, &["--processes", "2", "-p", &apps, "-A", "procapp"], &[]);
        wait_for_workers(&server, 2, &[]);
        let mut slow = server.connect();
        slow.write_all(
            &ScgiRequest::get("/sleep")
                .set_header("QUERY_STRING", "4")
                .encode(),
        )
        .unwrap();
        assert!(server.wait_for_log("sleeping in", Duration::from_secs(10)));
        server.signal(libc::SIGTERM);
        assert!(server.wait_for_log("SIGTERM: stopping 2 worker(s)", Duration::from_secs(10)));
        // Refused at once (the request in flight still finishes), and a socket file made by
        // -u is gone: not accepted into a backlog nobody takes from any more.
        let refused = wait_until(Duration::from_secs(2), || Stream::connect(&server.addr).is_err());
        assert!(
            refused,
            "{listen:?}: still accepting after SIGTERM\n{}",
            server.stderr_text()
        );
        if let Addr::Unix(path) = &server.addr {
            assert!(
                !path.exists(),
                "the socket file is removed when the server stops accepting"
            );
        }
        let (raw, _) = slow.read_until_eof(Duration::from_secs(10));
        assert_eq!(Response::parse(raw).status, 200, "{}", server.stderr_text());
        assert!(server
            .wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success()));
    }
}

#[test]
fn a_killed_worker_is_replaced_under_load() {
    let apps = apps_dir_str();
    let server = Server::start(&["--processes", "2", "-p", &apps, "-A", "procapp"]);
    let before = wait_for_workers(&server, 2, &[]);
    let clients = 4;
    let load = Load::start(&server.addr, "/pid", clients);
    load.wait_for_more(50, Duration::from_secs(60), &server);
    let victim = before[0];
    kill(victim, libc::SIGKILL);
    assert!(
        server.wait_for_log(
            &format!("worker {victim} was killed by signal 9 (SIGKILL); starting a replacement"),
            Duration::from_secs(10)
        ),
        "{}",
        server.stderr_text()
    );
    let after = wait_for_workers(&server, 2, &[victim]);
    load.wait_for_more(50, Duration::from_secs(60), &server);
    let (sent, failures, secs, _) = load.finish();
    eprintln!(
        "kill under load: {sent} requests in {secs:.1} s, {} failed",
        failures.len()
    );
    // Only what the killed worker held at that instant may fail: one per client at most.
    assert!(failures.len() <= clients, "{failures:?}");
    for _ in 0..10 {
        let pid = pid_of(&server.get("/pid"));
        assert!(after.contains(&pid));
    }
}

const APP_V1: &str = "def application(environ, start_response):\n    \
    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'v1']\n";

/// Version `n` of the reloaded app: each request spends 20 ms in the app, so that requests
/// are in flight in the old workers when they are told to stop.
fn app_version(n: u32) -> String {
    format!(
        "import time\n\ndef application(environ, start_response):\n    time.sleep(0.02)\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'version {n}']\n"
    )
}

#[test]
fn sighup_under_load_fails_nothing_and_serves_the_new_code() {
    let dir = TempDir::new("reload");
    let app = dir.path().join("reloadapp.py");
    std::fs::write(&app, app_version(1)).unwrap();
    let path = dir.path().to_str().unwrap();
    let server = Server::start_with(
        Listen::Tcp,
        &["--processes", "2", "-p", path, "-A", "reloadapp"],
        &[("PYTHONDONTWRITEBYTECODE", "1")],
    );
    let mut old = wait_for_workers(&server, 2, &[]);
    let clients = 8;
    let load = Load::start(&server.addr, "/", clients);
    load.wait_for_more(100, Duration::from_secs(60), &server);
    for version in 2..=4 {
        std::fs::write(&app, app_version(version)).unwrap();
        server.signal(libc::SIGHUP);
        let done = "reload: 2 new worker(s) ready";
        assert!(
            wait_until(Duration::from_secs(30), || server
                .stderr_text()
                .matches(&done)
                .count()
                == version as usize - 1),
            "{}",
            server.stderr_text()
        );
        let new = wait_for_workers(&server, 2, &old);
        load.wait_for_more(100, Duration::from_secs(60), &server);
        eprintln!("reload {}: workers {old:?} -> {new:?}", version - 1);
        old = new;
    }
    let (sent, failures, secs, bodies) = load.finish();
    eprintln!(
        "reload under load: 3 reloads, {sent} requests from {clients} clients in {secs:.1} s, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{} failed: {failures:?}", failures.len());
    for version in 1..=4 {
        let text = format!("version {version}");
        assert!(bodies.contains(&text), "{text} never served");
    }
    // Once the old workers are gone, only the new code answers.
    for _ in 0..20 {
        assert_eq!(server.get("/").text(), "version 4");
    }
}

#[test]
fn a_reload_whose_app_fails_to_import_keeps_the_old_workers() {
    let dir = TempDir::new("badreload");
    let app = dir.path().join("reloadapp.py");
    std::fs::write(&app, APP_V1).unwrap();
    let path = dir.path().to_str().unwrap();
    let server = Server::start_with(
        Listen::Tcp,
        &["--processes", "2", "-p", path, "-A", "reloadapp"],
        &[("PYTHONDONTWRITEBYTECODE", "1")],
    );
    let old = wait_for_workers(&server, 2, &[]);
    std::fs::write(&app, "def broken(:\n").unwrap();
    server.signal(libc::SIGHUP);
    assert!(
        server.wait_for_log("reload failed: new worker", Duration::from_secs(30)),
        "{}",
        server.stderr_text()
    );
    assert!(
        server
            .stderr_text()
            .contains("cannot import handler module \"reloadapp\": SyntaxError"),
        "{}",
        server.stderr_text()
    );
    assert_eq!(wait_for_workers(&server, 2, &[]), old);
    assert_eq!(server.get("/").text(), "v1");
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    sigterm_drains(false);
}

/// systemd's default KillMode signals every process of the service: a worker then gets
/// SIGTERM twice (directly and from the master) and must still finish its requests.
#[test]
fn sigterm_to_every_process_still_drains() {
    sigterm_drains(true);
}

fn sigterm_drains(to_every_process: bool) {
    let apps = apps_dir_str();
    let mut server = Server::start(&["--processes", "2", "-p", &apps, "-A", "procapp"]);
    let pids = wait_for_workers(&server, 2, &[]);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let addr = server.addr.clone();
            thread::spawn(move || try_get(&addr, "/sleep?1.5"))
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(20), || server
            .stderr_text()
            .matches("sleeping in")
            .count()
            == 4),
        "{}",
        server.stderr_text()
    );
    if to_every_process {
        for pid in &pids {
            kill(*pid, libc::SIGTERM);
        }
    }
    server.signal(libc::SIGTERM);
    for client in clients {
        let response = client.join().unwrap().expect("a request in flight completes");
        assert_eq!(response.status, 200);
        assert!(response.text().starts_with("slept "));
    }
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the master exits");
    assert!(status.success(), "{status}");
    assert!(server
        .stderr_text()
        .contains("all workers have exited; master exiting"));
    assert!(
        Stream::connect(&server.addr).is_err(),
        "still accepting after exit"
    );
}

/// To the master, a repeated SIGTERM continues the drain (the hung request goes on); SIGQUIT,
/// or a second SIGINT (Ctrl-C twice), stops the workers at once.
#[test]
fn a_repeated_sigterm_goes_on_draining_sigquit_or_a_second_sigint_stops_at_once() {
    for (signals, at_once) in [
        (
            [libc::SIGTERM, libc::SIGTERM, libc::SIGQUIT],
            "SIGQUIT: stopping ",
        ),
        (
            [libc::SIGINT, libc::SIGTERM, libc::SIGINT],
            "SIGINT again: stopping ",
        ),
    ] {
        let apps = apps_dir_str();
        let mut server = Server::start(&["--processes", "2", "-p", &apps, "-A", "procapp"]);
        wait_for_workers(&server, 2, &[]);
        let addr = server.addr.clone();
        let client = thread::spawn(move || try_get(&addr, "/hang"));
        assert!(server.wait_for_log("hanging in", Duration::from_secs(20)));
        let started = Instant::now();
        server.signal(signals[0]);
        assert!(server.wait_for_log("stopping 2 worker(s); they finish", Duration::from_secs(10)));
        server.signal(signals[1]);
        // By now the idle worker may have exited: the one holding the request remains.
        assert!(
            server.wait_for_log("already stopping; ", Duration::from_secs(10)),
            "{}",
            server.stderr_text()
        );
        assert!(
            server.is_running() && !client.is_finished(),
            "{}",
            server.stderr_text()
        );
        server.signal(signals[2]);
        // (The idle worker may be gone by now, or not yet.)
        assert!(
            wait_until(Duration::from_secs(10), || server
                .stderr_text()
                .lines()
                .any(|l| l.contains(at_once) && l.ends_with(" worker(s) at once"))),
            "{}",
            server.stderr_text()
        );
        let status = server
            .wait_exit(Duration::from_secs(20))
            .expect("the master exits");
        assert!(status.success(), "{status}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "took {:?}",
            started.elapsed()
        );
        assert!(
            client.join().unwrap().is_err(),
            "the hung request cannot have completed"
        );
    }
}

#[test]
fn max_requests_recycles_workers_without_failures() {
    let apps = apps_dir_str();
    let server = Server::start(&[
        "--processes",
        "2",
        "--max-requests",
        "30",
        "--max-requests-jitter",
        "10",
        "-p",
        &apps,
        "-A",
        "procapp",
    ]);
    wait_for_workers(&server, 2, &[]);
    let load = Load::start(&server.addr, "/pid", 6);
    load.wait_for_more(400, Duration::from_secs(120), &server);
    let (sent, failures, secs, bodies) = load.finish();
    let mut per_worker = std::collections::HashMap::<&String, u32>::new();
    for pid in &bodies {
        *per_worker.entry(pid).or_default() += 1;
    }
    let pids: Vec<&String> = per_worker.keys().copied().collect();
    let busiest = per_worker.values().copied().max().unwrap_or(0);
    eprintln!(
        "max-requests under load: {sent} requests in {secs:.1} s, {} failed, {} distinct workers, the busiest served {busiest}",
        failures.len(),
        pids.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    // A worker stops accepting as soon as it reaches its limit (30 to 40): it may finish
    // what it has already accepted, no more.
    assert!(
        busiest <= 60,
        "a worker served {busiest} requests: {per_worker:?}"
    );
    assert!(
        pids.len() >= 8,
        "only {} workers served: {per_worker:?}",
        pids.len()
    );
    assert!(server
        .stderr_text()
        .contains("reached --max-requests; replacing it"));
    wait_for_workers(&server, 2, &[]);
}

#[test]
fn a_request_past_the_timeout_gets_504_and_its_worker_is_replaced() {
    let apps = apps_dir_str();
    let server = Server::start(&[
        "--processes",
        "2",
        "--request-timeout",
        "1",
        "--graceful-timeout",
        "5",
        "-p",
        &apps,
        "-A",
        "procapp",
    ]);
    wait_for_workers(&server, 2, &[]);
    let started = Instant::now();
    let addr = server.addr.clone();
    let client = thread::spawn(move || try_get(&addr, "/hang?x=1"));
    // The app's print may reach stderr in pieces: read only whole lines.
    let mut app_pid = None;
    let printed = wait_until(Duration::from_secs(20), || {
        let text = server.stderr_text();
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        app_pid = whole
            .lines()
            .find_map(|l| l.strip_prefix("hanging in "))
            .and_then(|p| p.trim().parse::<u32>().ok());
        app_pid.is_some()
    });
    assert!(printed, "the app printed no pid: {}", server.stderr_text());
    let hung = serving_pid(app_pid.unwrap());
    // Others are served meanwhile.
    assert_eq!(server.get("/env").status, 200);
    let response = client.join().unwrap().expect("a response to the hung request");
    assert_eq!(response.status, 504, "{}", response.text());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        server.wait_for_log(
            "request GET /hang?x=1 has been in the app for",
            Duration::from_secs(5)
        ),
        "{}",
        server.stderr_text()
    );
    assert!(server.wait_for_log(
        &format!("worker {hung} has a request past --request-timeout; replacing it"),
        Duration::from_secs(5)
    ));
    let now = wait_for_workers(&server, 2, &[hung]);
    for _ in 0..10 {
        assert!(now.contains(&pid_of(&server.get("/pid"))));
    }
}

/// Starts the server as systemd would: the listening socket on fd 3, LISTEN_FDS=1 and
/// LISTEN_PID set to the server's own pid (by a shell that then execs it).
fn start_activated(extra: &[&str]) -> (Server, SocketAddr) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();
    let apps = apps_dir_str();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
        .arg(server_program())
        .args(
            external_interpreter()
                .map(|python| vec!["--interpreter".to_string(), python])
                .unwrap_or_default(),
        )
        .args(extra)
        .args(["-p", &apps, "-A", "procapp"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if fd == 3 {
                // Already in place: only let it survive exec.
                libc::fcntl(3, libc::F_SETFD, 0);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("start the server through sh");
    drop(listener);
    (Server::adopt(child, Addr::Tcp(addr)), addr)
}

#[test]
fn socket_activation_passes_the_socket_on_fd_3() {
    let (single, _) = start_activated(&[]);
    assert_eq!(pid_of(&single.get("/pid")), single.pid());
    let (multi, _) = start_activated(&["--processes", "2"]);
    let pids = wait_for_workers(&multi, 2, &[]);
    assert!(pids.contains(&pid_of(&multi.get("/pid"))));
    assert!(multi
        .stderr_text()
        .contains("starting 2 workers on tcp 127.0.0.1:"));
}

#[test]
fn activation_variables_for_another_process_are_ignored() {
    // LISTEN_PID names some other process: fd 0 is used, as without the variables.
    let run = run_raw(
        &["-A", "procapp"],
        &[("LISTEN_PID", "1"), ("LISTEN_FDS", "1")],
        Duration::from_secs(20),
    );
    assert_eq!(run.status.and_then(|s| s.code()), Some(1));
    assert!(run.stderr.contains("fd 0"), "{}", run.stderr);
}

#[test]
fn the_socket_file_belongs_to_the_user_and_group_switched_to() {
    let apps = apps_dir_str();
    let args = [
        "--group",
        "nogroup",
        "--unix-mode",
        "660",
        "-p",
        &apps,
        "-A",
        "procapp",
    ];
    if euid() != 0 {
        let run = run_raw(&args, &[], Duration::from_secs(20));
        assert_eq!(run.status.and_then(|s| s.code()), Some(1), "{}", run.stderr);
        return;
    }
    let mut server = Server::start_with(Listen::Unix, &args, &[]);
    let Addr::Unix(path) = server.addr.clone() else {
        unreachable!()
    };
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.gid(), 65534, "the frontend's group (--group) may connect");
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(server.get("/env").status, 200);
    server.signal(libc::SIGTERM);
    assert!(server
        .wait_exit(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    assert!(!path.exists(), "{}", server.stderr_text());
}

#[test]
fn privileges_are_dropped_after_binding() {
    let apps = apps_dir_str();
    let dir = TempDir::new("user");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = dir.path().join("access.log");
    let log_str = log.to_str().unwrap();
    let port = free_tcp_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "-T",
        &listen,
        "--processes",
        "2",
        "--user",
        "nobody",
        "--access-log",
        log_str,
        "-p",
        &apps,
        "-A",
        "procapp",
    ];
    if euid() != 0 {
        let run = run_raw(&args, &[], Duration::from_secs(20));
        assert_eq!(run.status.and_then(|s| s.code()), Some(1));
        assert!(
            run.stderr.contains("only root can switch users"),
            "{}",
            run.stderr
        );
        return;
    }
    // The group alone can be switched whatever the interpreter's location (root reads all).
    let server = Server::start(&[
        "--processes",
        "2",
        "--group",
        "nogroup",
        "-p",
        &apps,
        "-A",
        "procapp",
    ]);
    let ids = server.get("/ids").text();
    assert!(ids.starts_with("uid=0 gid=65534 groups=65534 "), "{ids}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let gid_line = status.lines().find(|l| l.starts_with("Gid:")).unwrap();
    assert!(
        gid_line.split_whitespace().skip(1).all(|id| id == "65534"),
        "{gid_line}"
    );
    drop(server);
    // The interpreter the app runs under: the embedded one, the external one on PATH, or the
    // pip-installed command's.
    let python = match external_interpreter() {
        Some(command) if !command.contains('/') => std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|dir| dir.join(&command))
            .find(|p| p.is_file())
            .expect("the external interpreter is on PATH")
            .to_string_lossy()
            .into_owned(),
        Some(path) => path,
        // The pip-installed command's process is its virtualenv's Python (the installed one).
        None if in_pip_python() => std::fs::canonicalize(app_python())
            .unwrap()
            .to_string_lossy()
            .into_owned(),
        None => BUILD_PYTHON.to_string(),
    };
    let nobody_reaches_python = Command::new("test")
        .args(["-x", &python])
        .uid(65534)
        .gid(65534)
        .status()
        .expect("run test(1)")
        .success();
    if nobody_reaches_python {
        let server = Server::start_with(Listen::Tcp, &args[2..], &[]);
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            uid_line.split_whitespace().skip(1).all(|id| id == "65534"),
            "{uid_line}"
        );
        let ids = server.get("/ids").text();
        assert!(ids.starts_with("uid=65534 gid=65534 groups=65534 "), "{ids}");
    } else {
        // This interpreter lives where nobody cannot reach it: the server must say so, by
        // name, instead of letting Python fail obscurely.
        let run = run_raw(&args, &[], Duration::from_secs(20));
        assert_eq!(run.status.and_then(|s| s.code()), Some(1), "{}", run.stderr);
        assert!(
            run.stderr.contains(&format!(
                "the Python installation ({python}) is not reachable as uid 65534"
            )),
            "{}",
            run.stderr
        );
    }
    // Created before the switch, for the user the workers run as.
    assert_eq!(std::fs::metadata(&log).unwrap().uid(), 65534);
}

#[test]
fn pid_file_chdir_and_umask() {
    let apps = apps_dir_str();
    let dir = TempDir::new("pidfile");
    let dir_str = dir.path().to_str().unwrap();
    let mut server = Server::start(&[
        "--processes",
        "2",
        "--chdir",
        dir_str,
        "--pid-file",
        "server.pid",
        "--umask",
        "077",
        "--access-log",
        "access.log",
        "-p",
        &apps,
        "-A",
        "procapp",
    ]);
    let pid_file = dir.path().join("server.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{}\n", server.pid())
    );
    let ids = server.get("/ids").text();
    let cwd = std::fs::canonicalize(dir.path()).unwrap();
    assert!(ids.ends_with(&format!("cwd={}", cwd.display())), "{ids}");
    let mode = std::fs::metadata(dir.path().join("access.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "access log created under umask 077");
    server.signal(libc::SIGTERM);
    assert!(server
        .wait_exit(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    assert!(!pid_file.exists(), "the pid file is removed at exit");
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn access_log_lines_and_reopen_on_sigusr1() {
    let apps = apps_dir_str();
    let dir = TempDir::new("access");
    let log = dir.path().join("access.log");
    let log_str = log.to_str().unwrap();
    for processes in ["1", "2"] {
        let _ = std::fs::remove_file(&log);
        let server = Server::start(&[
            "--processes",
            processes,
            "--access-log",
            log_str,
            "-p",
            &apps,
            "-A",
            "procapp",
        ]);
        let request = ScgiRequest::get("/env?a=\"b\"")
            .header("HTTP_REFERER", "http://example.org/")
            .header("HTTP_USER_AGENT", "tester/1.0")
            .set_header("REMOTE_ADDR", "192.0.2.7");
        let response = server.request(&request);
        assert_eq!(response.status, 200);
        assert!(wait_until(Duration::from_secs(10), || read_lines(&log).len() == 1));
        let line = &read_lines(&log)[0];
        assert!(line.starts_with("192.0.2.7 - - ["), "{line}");
        let expected = format!(
            "] \"GET /env?a=\\x22b\\x22 HTTP/1.1\" 200 {} \"http://example.org/\" \"tester/1.0\" ",
            response.body.len()
        );
        assert!(line.contains(&expected), "{line}\nexpected: {expected}");
        let seconds: f64 = line.rsplit(' ').next().unwrap().parse().expect("a duration");
        assert!((0.0..10.0).contains(&seconds), "{line}");
        assert_eq!(server.get("/nothing-here").status, 404);
        assert!(wait_until(Duration::from_secs(10), || read_lines(&log).len() == 2));
        assert!(read_lines(&log)[1].contains("\"GET /nothing-here HTTP/1.1\" 404 10 \"-\" \"-\""));
        // Rotation: move the file away, signal, and the next line goes to a new file.
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&log, &rotated).unwrap();
        server.signal(libc::SIGUSR1);
        let mut fresh = false;
        wait_until(Duration::from_secs(10), || {
            // Signal delivery races with the request: keep asking until the new file appears.
            let _ = server.get("/pid");
            fresh = !read_lines(&log).is_empty();
            fresh
        });
        assert!(
            fresh,
            "no new access log after SIGUSR1; stderr:\n{}",
            server.stderr_text()
        );
        assert!(read_lines(&log)[0].contains("\"GET /pid HTTP/1.1\" 200 "));
        assert!(read_lines(&rotated).len() >= 2);
    }
}

/// Every answer has its access log line with the status and body bytes the client got: the
/// loop's own refusals (400, 413), the 500 for an app that failed, the 504 for one that ran
/// too long, and a streamed response under rplex.
#[test]
fn access_log_has_a_line_for_every_answer() {
    let apps = apps_dir_str();
    let dir = TempDir::new("access-all");
    let log = dir.path().join("access.log");
    let log_str = log.to_str().unwrap();
    for model in ["free", "rplex"] {
        let _ = std::fs::remove_file(&log);
        let server = Server::start(&[
            "--processes",
            "2",
            "-t",
            model,
            "--access-log",
            log_str,
            "--max-body",
            "1K",
            "--request-timeout",
            "0.5",
            "-p",
            &apps,
            "-A",
            "procapp",
        ]);
        let wait_for = |count: usize| {
            assert!(
                wait_until(Duration::from_secs(10), || read_lines(&log).len() >= count),
                "-t {model}: {:?}\n{}",
                read_lines(&log),
                server.stderr_text()
            )
        };
        let stream = server.get("/stream");
        assert_eq!((stream.status, stream.text().as_str()), (200, "one two\n"));
        wait_for(1);
        assert!(
            read_lines(&log)[0].contains("\"GET /stream HTTP/1.1\" 200 8 "),
            "-t {model}: {:?}",
            read_lines(&log)
        );
        let failed = server.get("/fail");
        assert_eq!(failed.status, 500);
        wait_for(2);
        let expected = format!("\"GET /fail HTTP/1.1\" 500 {} ", failed.body.len());
        assert!(
            read_lines(&log)[1].contains(&expected),
            "-t {model}: {:?}",
            read_lines(&log)
        );
        let big = server.request(&ScgiRequest::post("/env", "text/plain", &[b'x'; 2000]));
        assert_eq!(big.status, 413);
        wait_for(3);
        let expected = format!("\"POST /env HTTP/1.1\" 413 {} ", big.body.len());
        assert!(
            read_lines(&log)[2].contains(&expected),
            "-t {model}: {:?}",
            read_lines(&log)
        );
        let bad = Response::parse(exchange_raw(&server.addr, b"5:abcde,", Duration::from_secs(10)));
        assert_eq!(bad.status, 400);
        wait_for(4);
        let expected = format!("\"- - -\" 400 {} ", bad.body.len());
        assert!(
            read_lines(&log)[3].contains(&expected),
            "-t {model}: {:?}",
            read_lines(&log)
        );
        let hung = server.get("/hang");
        assert_eq!(hung.status, 504);
        wait_for(5);
        assert!(
            read_lines(&log)[4].contains("\"GET /hang HTTP/1.1\" 504 20 "),
            "-t {model}: {:?}",
            read_lines(&log)
        );
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(read_lines(&log).len(), 5, "one line each: {:?}", read_lines(&log));
    }
}

#[test]
fn a_worker_that_cannot_start_stops_the_master_with_status_1() {
    let apps = apps_dir_str();
    let listen = format!("127.0.0.1:{}", free_tcp_port());
    let run = run_raw(
        &[
            "-T",
            &listen,
            "--processes",
            "2",
            "-p",
            &apps,
            "-A",
            "no_such_module_here",
        ],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(run.status.and_then(|s| s.code()), Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("no_such_module_here"), "{}", run.stderr);
    assert!(run.stderr.contains("while starting"), "{}", run.stderr);
}

#[test]
fn sighup_without_workers_is_ignored_with_a_note() {
    let apps = apps_dir_str();
    let mut server = Server::start(&["-p", &apps, "-A", "procapp"]);
    server.signal(libc::SIGHUP);
    assert!(server.wait_for_log(
        "SIGHUP ignored: reloading needs --processes 2",
        Duration::from_secs(10)
    ));
    assert!(server.is_running());
    assert_eq!(server.get("/env").status, 200);
}

#[test]
fn sigusr1_without_an_access_log_is_ignored_with_a_note() {
    let apps = apps_dir_str();
    for processes in ["1", "2"] {
        let mut server = Server::start(&["--processes", processes, "-p", &apps, "-A", "procapp"]);
        assert_eq!(server.get("/env").status, 200);
        // As a rotation hook does: every process of the server, not only the one in front.
        let mut pids = descendants(server.pid());
        pids.push(server.pid());
        for pid in pids {
            kill(pid, libc::SIGUSR1);
        }
        assert!(server.wait_for_log(
            "SIGUSR1 ignored: there is no --access-log to reopen",
            Duration::from_secs(10)
        ));
        std::thread::sleep(Duration::from_millis(200));
        assert!(server.is_running(), "{}", server.stderr_text());
        assert_eq!(server.get("/env").status, 200, "{}", server.stderr_text());
    }
}

#[test]
fn without_a_master_a_timed_out_request_makes_the_process_exit() {
    let apps = apps_dir_str();
    let mut server = Server::start(&["--request-timeout", "0.5", "-p", &apps, "-A", "procapp"]);
    let response = try_get(&server.addr, "/hang").expect("a response to the hung request");
    assert_eq!(response.status, 504);
    // It drains and exits for whatever started it (callscgi, systemd) to start a fresh one.
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("the process exits");
    assert!(status.success(), "{status}");
    let log = server.stderr_text();
    assert!(log.contains("request GET /hang has been in the app for"), "{log}");
    // Nobody sent it a stop signal: the log says why it stops.
    assert!(log.contains("being replaced: no longer accepting"), "{log}");
    assert!(!log.contains("SIGTERM:"), "{log}");
}

/// Under a master, every line a worker writes names it: the server's own lines, an app
/// error's traceback and the app's `logging` records (tracebacks included) all read
/// `scgi-wsgi[NAME]: LEVEL: worker PID: ...`, PID one of the workers (in the external mode
/// too, where the app runs in a child of the worker). The master's lines name no worker.
#[test]
fn worker_lines_say_which_worker_on_every_line() {
    let apps = apps_dir_str();
    let server = Server::start(&["--processes", "2", "-p", &apps, "-A", "procapp"]);
    let pids = wait_for_workers(&server, 2, &[]);
    assert_eq!(server.get("/fail").status, 500);
    assert_eq!(server.get("/log-error").text(), "logged");
    assert!(wait_until(Duration::from_secs(10), || {
        let log = server.stderr_text();
        log.contains("RuntimeError: deliberate failure") && log.contains("ValueError: logged on purpose")
    }));
    let log = server.stderr_text();
    // The worker named on a line, if any, after the `scgi-wsgi[NAME]: LEVEL: ` prefix.
    let worker_of = |line: &str| -> Option<u32> {
        let rest = line.split_once("]: ")?.1.split_once(": ")?.1;
        rest.strip_prefix("worker ")?.split_once(": ")?.0.parse().ok()
    };
    let traceback_lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            [
                "Traceback",
                "File \"",
                "deliberate failure",
                "logged on purpose",
                "caught and logged",
            ]
            .iter()
            .any(|needle| l.contains(needle))
        })
        .collect();
    assert!(traceback_lines.len() >= 8, "{log}");
    for line in traceback_lines {
        let from_app = line.starts_with("scgi-wsgi[wsgi]: ERROR: worker ")
            || line.starts_with("scgi-wsgi[procapp]: ERROR: worker ");
        assert!(from_app, "not prefixed with its worker: {line:?}\n{log}");
        let pid = worker_of(line).unwrap_or_else(|| panic!("no worker pid in {line:?}"));
        assert!(
            pids.contains(&pid),
            "{pid} is not one of the workers {pids:?}: {line:?}"
        );
    }
    for pid in &pids {
        assert!(
            log.contains(&format!(
                "scgi-wsgi[server]: INFO: worker {pid}: serving procapp on "
            )),
            "{log}"
        );
    }
    let master = log
        .lines()
        .find(|l| l.contains("master process"))
        .expect("the master's first line");
    assert_eq!(worker_of(master), None, "{master}");
}
