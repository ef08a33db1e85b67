//! Clients that keep a server busy, and the worker processes of a master: what the
//! process and observability tests share.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::*;

/// One request on a fresh connection, never panicking: the response, or why there is none.
pub fn try_get(addr: &Addr, path: &str) -> Result<Response, String> {
    let mut stream = Stream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let sent = stream
        .send_all(&ScgiRequest::get(path).encode(), Duration::from_secs(10))
        .map_err(|e| format!("send: {e}"))?;
    if !sent {
        return Err("closed while sending".into());
    }
    let (raw, end) = stream.read_until_eof(Duration::from_secs(20));
    if end != ReadEnd::Eof {
        return Err(format!("read ended with {end:?} after {} bytes", raw.len()));
    }
    Response::try_parse(raw).map_err(|(why, raw)| format!("{why}: {}", show_bytes(&raw)))
}

/// Clients sending requests in a loop until stopped, counting what happened.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Load {
    /// Starts `clients` threads, each sending GET `path` one after another.
    pub fn start(addr: &Addr, path: &str, clients: usize) -> Load {
        let mut load = Load {
            stop: Arc::default(),
            sent: Arc::default(),
            ok: Arc::default(),
            failures: Arc::default(),
            bodies: Arc::default(),
            threads: Vec::new(),
            started: Instant::now(),
        };
        for _ in 0..clients {
            let (addr, path) = (addr.clone(), path.to_string());
            let (stop, sent, ok) = (
                Arc::clone(&load.stop),
                Arc::clone(&load.sent),
                Arc::clone(&load.ok),
            );
            let (failures, bodies) = (Arc::clone(&load.failures), Arc::clone(&load.bodies));
            load.threads.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    match try_get(&addr, &path) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            bodies.lock().unwrap().push(r.text());
                        }
                        Ok(r) => failures
                            .lock()
                            .unwrap()
                            .push(format!("status {}: {}", r.status, r.text())),
                        Err(why) => failures.lock().unwrap().push(why),
                    }
                }
            }));
        }
        load
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests than now have succeeded; panics after `timeout`.
    pub fn wait_for_more(&self, n: u64, timeout: Duration, server: &Server) {
        let target = self.ok() + n;
        assert!(
            wait_until(timeout, || self.ok() >= target),
            "only {} of {target} requests succeeded; failures: {:?}\nserver stderr:\n{}",
            self.ok(),
            self.failures.lock().unwrap(),
            server.stderr_text()
        );
    }

    /// Stops the clients; returns (sent, failures, seconds).
    pub fn finish(mut self) -> (u64, Vec<String>, f64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("load thread");
        }
        let failures = self.failures.lock().unwrap().clone();
        let bodies = self.bodies.lock().unwrap().clone();
        (
            self.sent.load(Ordering::Relaxed),
            failures,
            self.started.elapsed().as_secs_f64(),
            bodies,
        )
    }
}

/// The worker processes of a master, from /proc: its children running what it runs (this
/// program, or the Python of the pip-installed command; not an external interpreter some of
/// them start).
pub fn workers(server: &Server) -> Vec<u32> {
    let Ok(ours) = std::fs::read_link(format!("/proc/{}/exe", server.pid())) else {
        return Vec::new();
    };
    children(server.pid())
        .into_iter()
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == ours))
        .collect()
}

/// Waits until the master has exactly `n` workers, none of `gone`, each of them serving
/// (it logged `serving ... (pid N)`, just before it starts accepting).
pub fn wait_for_workers(server: &Server, n: usize, gone: &[u32]) -> Vec<u32> {
    let mut now = Vec::new();
    let settled = wait_until(Duration::from_secs(30), || {
        now = workers(server);
        let log = server.stderr_text();
        now.len() == n
            && !now.iter().any(|p| gone.contains(p))
            && now.iter().all(|p| log.contains(&format!(" (pid {p})\n")))
    });
    assert!(
        settled,
        "expected {n} workers without {gone:?}, have {now:?}; stderr:\n{}",
        server.stderr_text()
    );
    now
}
