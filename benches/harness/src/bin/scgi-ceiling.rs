//! The ceiling: an SCGI responder with no Python, serving the benchmark routes from one
//! event-loop thread. What it reaches is the most an SCGI server can do on this machine.
//!
//! Usage: `scgi-ceiling [--listen HOST:PORT]` (default 127.0.0.1:0); prints
//! `listening on ADDR` once it accepts connections.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use scgi_bench::{parse_scgi_head, routes, Flags};

const LISTENER: Token = Token(usize::MAX);
const SLEEP: Duration = Duration::from_millis(10);

/// What a connection is doing.
enum Stage {
    Reading,
    /// Waiting out the `/sleep` delay.
    Sleeping,
    Writing,
}

struct Conn {
    stream: TcpStream,
    stage: Stage,
    input: Vec<u8>,
    head: Vec<u8>,
    body: Body,
    written: usize,
}

/// The response body: a shared static one, or the echoed request body.
enum Body {
    Static(&'static [u8]),
    Echo(std::ops::Range<usize>),
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scgi-ceiling: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sets TCP_DEFER_ACCEPT (one second) on the listener: the kernel hands over a connection
/// once its first bytes arrive.
fn defer_accept(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    let secs: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a pointer to an int of the size given.
    unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn run() -> Result<(), String> {
    let flags = Flags::parse(std::env::args().skip(1), &[])?;
    if let Some(bad) = flags.unknown(&["listen"]).first() {
        return Err(format!("unknown flag --{bad} (known: --listen HOST:PORT)"));
    }
    let addr: SocketAddr = flags.get("listen", "127.0.0.1:0".parse().unwrap())?;
    scgi_bench::raise_fd_limit();
    let big: &'static [u8] = vec![b'x'; routes::BIG_LEN].leak();
    let mut listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    // Connections come through once their request has (as uWSGI's and scgi-wsgi's do).
    defer_accept(&listener);
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| e.to_string())?;
    println!("listening on {local}");
    let _ = io::stdout().flush();

    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut sleepers: VecDeque<(Instant, usize)> = VecDeque::new();
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        let timeout = sleepers
            .front()
            .map(|(t, _)| t.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll failed: {e}"));
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let key = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            if poll
                                .registry()
                                .register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE)
                                .is_err()
                            {
                                free.push(key);
                                continue;
                            }
                            conns[key] = Some(Conn {
                                stream,
                                stage: Stage::Reading,
                                input: Vec::new(),
                                head: Vec::new(),
                                body: Body::Static(b""),
                                written: 0,
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
                continue;
            }
            let key = event.token().0;
            let done = match conns.get_mut(key).and_then(Option::as_mut) {
                Some(conn) => advance(conn, &mut scratch, big, key, &mut sleepers),
                None => false,
            };
            if done {
                close(&poll, &mut conns, &mut free, key);
            }
        }
        let now = Instant::now();
        while sleepers.front().is_some_and(|(t, _)| *t <= now) {
            let (_, key) = sleepers.pop_front().unwrap();
            let done = match conns.get_mut(key).and_then(Option::as_mut) {
                Some(conn) => {
                    conn.stage = Stage::Writing;
                    write_out(conn)
                }
                None => false,
            };
            if done {
                close(&poll, &mut conns, &mut free, key);
            }
        }
    }
}

fn close(poll: &Poll, conns: &mut [Option<Conn>], free: &mut Vec<usize>, key: usize) {
    if let Some(mut conn) = conns[key].take() {
        let _ = poll.registry().deregister(&mut conn.stream);
        free.push(key);
    }
}

/// Reads and writes what the socket allows; true when the connection is finished.
fn advance(
    conn: &mut Conn,
    scratch: &mut [u8],
    big: &'static [u8],
    key: usize,
    sleepers: &mut VecDeque<(Instant, usize)>,
) -> bool {
    if let Stage::Reading = conn.stage {
        loop {
            match conn.stream.read(scratch) {
                Ok(0) => return true,
                Ok(n) => conn.input.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
        let head = match parse_scgi_head(&conn.input) {
            Ok(Some(head)) => head,
            Ok(None) => return false,
            Err(cause) => {
                conn.head = format!(
                    "Status: 400 Bad Request\r\nContent-Length: {}\r\n\r\n",
                    cause.len()
                )
                .into_bytes();
                conn.head.extend_from_slice(cause.as_bytes());
                conn.stage = Stage::Writing;
                return write_out(conn);
            }
        };
        if conn.input.len() < head.head_len + head.content_length {
            return false;
        }
        let path = scgi_bench::header(&conn.input[head.payload.clone()], b"PATH_INFO").unwrap_or(b"");
        let (status, body) = match path {
            p if p == routes::HELLO.as_bytes() || p == routes::SLEEP.as_bytes() => {
                ("200 OK", Body::Static(routes::HELLO_BODY))
            }
            p if p == routes::BIG.as_bytes() => ("200 OK", Body::Static(big)),
            p if p == routes::ECHO.as_bytes() => (
                "200 OK",
                Body::Echo(head.head_len..head.head_len + head.content_length),
            ),
            _ => ("404 Not Found", Body::Static(b"not found\n")),
        };
        let length = match &body {
            Body::Static(b) => b.len(),
            Body::Echo(r) => r.len(),
        };
        conn.head =
            format!("Status: {status}\r\nContent-Type: text/plain\r\nContent-Length: {length}\r\n\r\n")
                .into_bytes();
        conn.body = body;
        if path == routes::SLEEP.as_bytes() {
            conn.stage = Stage::Sleeping;
            sleepers.push_back((Instant::now() + SLEEP, key));
            return false;
        }
        conn.stage = Stage::Writing;
    }
    match conn.stage {
        Stage::Writing => write_out(conn),
        _ => false,
    }
}

/// Writes the response; true when all of it is out (or the client is gone).
fn write_out(conn: &mut Conn) -> bool {
    loop {
        let body: &[u8] = match &conn.body {
            Body::Static(b) => b,
            Body::Echo(r) => &conn.input[r.clone()],
        };
        let total = conn.head.len() + body.len();
        if conn.written >= total {
            return true;
        }
        let slices = if conn.written < conn.head.len() {
            [IoSlice::new(&conn.head[conn.written..]), IoSlice::new(body)]
        } else {
            [
                IoSlice::new(&body[conn.written - conn.head.len()..]),
                IoSlice::new(&[]),
            ]
        };
        match conn.stream.write_vectored(&slices) {
            Ok(0) => return true,
            Ok(n) => conn.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}
