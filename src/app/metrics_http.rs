//! The `/metrics` endpoint: a small HTTP/1.0 server on a socket of its own, kept apart from
//! the request path. It is driven by `poll(2)`: by the master's own loop (which must stay
//! single-threaded, as it forks), or by a thread of its own in a single process.
//!
//! Bounded: at most [`MAX_CLIENTS`] connections at once (more are closed at accept), a
//! request head of at most [`MAX_HEAD`] bytes, and [`CLIENT_TIMEOUT`] for the whole exchange.
//! It answers `GET /metrics` (and `HEAD`), 404 to other paths and 405 to other methods.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::base::config::ListenSpec;
use crate::base::log::{debug, warning};
use crate::base::sys;
use crate::net::listen::{Listener, Stream};

/// Most scrapes served at once.
pub const MAX_CLIENTS: usize = 8;
/// Largest request head read.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a scraper has to send its request and take the answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

struct Client {
    stream: Stream,
    head: Vec<u8>,
    /// The answer, once the head is in.
    out: Option<Vec<u8>>,
    sent: usize,
    deadline: Instant,
}

/// The endpoint's socket and the scrapes in progress.
pub struct Endpoint {
    listener: Listener,
    clients: Vec<Client>,
}

impl Endpoint {
    /// Opens the endpoint's socket.
    pub fn open(spec: &ListenSpec) -> Result<Endpoint, String> {
        let listener = Listener::open(spec, 64, false).map_err(|e| format!("--metrics: {e}"))?;
        Ok(Endpoint {
            listener,
            clients: Vec::new(),
        })
    }

    /// The descriptor of its listening socket.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.listener.raw_fd()
    }

    /// Where it listens, for log lines.
    pub fn describe(&self) -> String {
        self.listener.describe()
    }

    /// In a forked worker: lets go of the master's socket without removing its file.
    pub fn forget(mut self) {
        self.listener.forget_socket_file();
    }

    /// What to `poll(2)` for: the listener, and each client for its next step.
    pub fn poll_fds(&self, into: &mut Vec<libc::pollfd>) {
        into.push(libc::pollfd {
            fd: self.listener.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        for client in &self.clients {
            let events = if client.out.is_some() {
                libc::POLLOUT
            } else {
                libc::POLLIN
            };
            into.push(libc::pollfd {
                fd: client.stream.as_raw_fd(),
                events,
                revents: 0,
            });
        }
    }

    /// When the earliest client runs out of time.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.iter().map(|c| c.deadline).min()
    }

    /// Takes new scrapes, moves each one on as far as its socket allows, and drops those
    /// that are done or out of time. `render` makes the page (only for a `GET /metrics`).
    pub fn serve(&mut self, render: &mut dyn FnMut() -> String) {
        self.accept();
        let now = Instant::now();
        self.clients.retain_mut(|client| {
            if now >= client.deadline {
                debug!("server", "metrics: a scrape ran out of time; closing it");
                return false;
            }
            step(client, render)
        });
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok(stream) if self.clients.len() < MAX_CLIENTS => self.clients.push(Client {
                    stream,
                    head: Vec::new(),
                    out: None,
                    sent: 0,
                    deadline: Instant::now() + CLIENT_TIMEOUT,
                }),
                // Beyond the limit: closed at once, so a flood of scrapes costs nothing.
                Ok(_) => warning!(
                    "server",
                    "metrics: {MAX_CLIENTS} scrapes already in progress; closing another"
                ),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }
}

/// Moves one scrape on; false when it is over (answered, gone, or broken).
fn step(client: &mut Client, render: &mut dyn FnMut() -> String) -> bool {
    if client.out.is_none() {
        let mut buf = [0u8; 2048];
        loop {
            match client.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => client.head.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
            if client.head.len() > MAX_HEAD {
                break;
            }
        }
        client.out = answer(&client.head, render);
        if client.out.is_none() {
            return true;
        }
    }
    let out = client.out.as_deref().unwrap_or_default();
    while client.sent < out.len() {
        match client.stream.write(&out[client.sent..]) {
            Ok(0) => return false,
            Ok(n) => client.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    client.stream.shutdown_write();
    false
}

/// The answer to a request head, once it is whole (`None` before).
fn answer(head: &[u8], render: &mut dyn FnMut() -> String) -> Option<Vec<u8>> {
    let end = memchr::memmem::find(head, b"\r\n\r\n").or_else(|| memchr::memmem::find(head, b"\n\n"));
    if end.is_none() {
        if head.len() > MAX_HEAD {
            return Some(response(
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request head too large\n",
                true,
            ));
        }
        return None;
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|b| *b == b' ').filter(|w| !w.is_empty());
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    let with_body = method != b"HEAD";
    Some(match (method, path) {
        (b"GET" | b"HEAD", b"/metrics") => {
            let page = render();
            response(
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                page.as_bytes(),
                with_body,
            )
        }
        (b"GET" | b"HEAD", _) => response(
            "404 Not Found",
            "text/plain",
            b"the metrics are at /metrics\n",
            with_body,
        ),
        _ => response(
            "405 Method Not Allowed",
            "text/plain",
            b"use GET /metrics\n",
            true,
        ),
    })
}

fn response(status: &str, content_type: &str, body: &[u8], with_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body);
    }
    out
}

/// Serves `endpoint` on a thread of its own, for the life of the process (a single process:
/// a master serves its endpoint from its own loop).
pub fn spawn(mut endpoint: Endpoint, mut render: impl FnMut() -> String + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let mut fds = Vec::new();
            loop {
                fds.clear();
                endpoint.poll_fds(&mut fds);
                let timeout = endpoint.next_deadline().map_or(-1, |t| {
                    t.saturating_duration_since(Instant::now()).as_millis() as i32 + 1
                });
                // SAFETY: `fds` holds `fds.len()` pollfd entries.
                let polled =
                    sys::check(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) });
                if polled.is_err_and(|e| e.kind() != io::ErrorKind::Interrupted) {
                    // Nothing sensible to do but try again a little later.
                    std::thread::sleep(Duration::from_millis(100));
                }
                endpoint.serve(&mut render);
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_renders_the_page() {
        let mut renders = 0;
        let mut render = || {
            renders += 1;
            "page\n".to_string()
        };
        assert_eq!(answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n", &mut render), None);
        let ok = answer(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", &mut render).unwrap();
        let ok = String::from_utf8(ok).unwrap();
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\npage\n"), "{ok}");
        let head = String::from_utf8(answer(b"HEAD /metrics HTTP/1.0\n\n", &mut render).unwrap()).unwrap();
        assert!(
            head.ends_with("Content-Length: 5\r\nConnection: close\r\n\r\n"),
            "{head}"
        );
        let other = String::from_utf8(answer(b"GET / HTTP/1.0\r\n\r\n", &mut render).unwrap()).unwrap();
        assert!(other.starts_with("HTTP/1.0 404"), "{other}");
        let post =
            String::from_utf8(answer(b"POST /metrics HTTP/1.0\r\n\r\n", &mut render).unwrap()).unwrap();
        assert!(post.starts_with("HTTP/1.0 405"), "{post}");
        let big = vec![b'x'; MAX_HEAD + 1];
        let refused = String::from_utf8(answer(&big, &mut render).unwrap()).unwrap();
        assert!(refused.starts_with("HTTP/1.0 431"), "{refused}");
        assert_eq!(renders, 2);
    }
}
