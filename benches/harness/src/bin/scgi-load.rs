//! The load generator: a closed loop of `--concurrency` clients, each sending one SCGI request
//! per new connection and reading the response to its end, for `--duration` seconds after a
//! `--warmup`. Optionally holds `--stalled N` connections open that sent half a head first.
//!
//! Prints requests/s, latency percentiles (exact: every latency is kept and sorted) and errors
//! by kind; `--json` prints one JSON object instead, for the driver script.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use scgi_bench::{parse_response_head, routes, scgi_request, Flags};

const USAGE: &str = "usage: scgi-load --connect HOST:PORT [--path /hello] [--method GET] [--body BYTES]
    [--expect-len BYTES] [--concurrency 32] [--duration 10] [--warmup 1] [--timeout 10]
    [--stalled 0] [--requests N] [--json]";

/// Tokens at and above this are stalled connections.
const STALLED_BASE: usize = 1 << 30;

/// One client of the closed loop.
struct Client {
    stream: Option<TcpStream>,
    started: Instant,
    sent: usize,
    connected: bool,
    /// The first bytes of the response, until its head is complete.
    head: Vec<u8>,
    /// Status and head length, once the head is in.
    parsed: Option<(u16, usize)>,
    received: usize,
}

struct Stats {
    latencies_us: Vec<u32>,
    errors: BTreeMap<&'static str, u64>,
    recording: bool,
}

impl Stats {
    fn error(&mut self, kind: &'static str) {
        if self.recording {
            *self.errors.entry(kind).or_default() += 1;
        }
    }
}

struct Settings {
    addr: SocketAddr,
    request: Vec<u8>,
    expect_len: Option<usize>,
    timeout: Duration,
    /// Stop the measured phase after this many responses (a fixed amount of work, for profilers).
    requests: Option<usize>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scgi-load: {e}\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let flags = Flags::parse(std::env::args().skip(1), &["json"])?;
    let known = [
        "connect",
        "path",
        "method",
        "body",
        "expect-len",
        "concurrency",
        "duration",
        "warmup",
        "timeout",
        "stalled",
        "requests",
    ];
    if let Some(bad) = flags.unknown(&known).first() {
        return Err(format!("unknown flag --{bad}"));
    }
    let target: String = flags.opt("connect")?.ok_or("--connect HOST:PORT is required")?;
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("--connect {target:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--connect {target:?} resolves to no address"))?;
    let path: String = flags.get("path", routes::HELLO.to_string())?;
    let body: usize = flags.get("body", 0)?;
    let method: String = flags.get("method", if body > 0 { "POST" } else { "GET" }.to_string())?;
    let concurrency: usize = flags.get("concurrency", 32)?;
    let requests: Option<usize> = flags.opt("requests")?;
    // With a request count, the count ends the run unless a duration is given too.
    let duration: f64 = flags.get("duration", if requests.is_some() { 86400.0 } else { 10.0 })?;
    let warmup: f64 = flags.get("warmup", 1.0)?;
    let timeout: f64 = flags.get("timeout", 10.0)?;
    let stalled: usize = flags.get("stalled", 0)?;
    if concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    for (name, value) in [("duration", duration), ("timeout", timeout)] {
        if !(value.is_finite() && value > 0.0) {
            return Err(format!("--{name} must be a number of seconds above 0"));
        }
    }
    if !(warmup.is_finite() && warmup >= 0.0) {
        return Err("--warmup must be a number of seconds, 0 or more".into());
    }
    scgi_bench::raise_fd_limit();
    let settings = Settings {
        addr,
        request: scgi_request(&method, &path, "localhost", 80, body),
        expect_len: flags.opt("expect-len")?,
        timeout: Duration::from_secs_f64(timeout),
        requests,
    };
    let report = drive(
        &settings,
        concurrency,
        stalled,
        Duration::from_secs_f64(warmup),
        Duration::from_secs_f64(duration),
    )
    .map_err(|e| format!("event loop failed: {e}"))?;
    if flags.has("json") {
        println!("{}", report.json());
    } else {
        println!("{}", report.text());
    }
    Ok(())
}

struct Report {
    requests: u64,
    elapsed: f64,
    latencies_us: Vec<u32>,
    errors: BTreeMap<&'static str, u64>,
    stalled_open: usize,
    stalled_reopened: u64,
}

impl Report {
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        self.latencies_us[rank.clamp(1, self.latencies_us.len()) - 1] as f64 / 1000.0
    }

    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed
    }

    fn json(&self) -> String {
        let errors: Vec<String> = self.errors.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
        format!(
            "{{\"requests\": {}, \"elapsed\": {:.3}, \"rps\": {:.1}, \"p50_ms\": {:.3}, \"p90_ms\": {:.3}, \
             \"p99_ms\": {:.3}, \"max_ms\": {:.3}, \"errors\": {{{}}}, \"stalled_open\": {}, \"stalled_reopened\": {}}}",
            self.requests,
            self.elapsed,
            self.rps(),
            self.percentile_ms(50.0),
            self.percentile_ms(90.0),
            self.percentile_ms(99.0),
            self.percentile_ms(100.0),
            errors.join(", "),
            self.stalled_open,
            self.stalled_reopened
        )
    }

    fn text(&self) -> String {
        let errors: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{} requests in {:.2} s: {:.0} req/s; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             errors: {}; stalled connections open: {} (reopened {})",
            self.requests,
            self.elapsed,
            self.rps(),
            self.percentile_ms(50.0),
            self.percentile_ms(90.0),
            self.percentile_ms(99.0),
            self.percentile_ms(100.0),
            if errors.is_empty() { "none".to_string() } else { errors.join(" ") },
            self.stalled_open,
            self.stalled_reopened
        )
    }
}

/// Half of a request head: enough to look like a slow client, never enough to be served.
fn stalled_prefix(request: &[u8]) -> &[u8] {
    let colon = request.iter().position(|&b| b == b':').unwrap_or(0);
    &request[..(colon + 1 + 20).min(request.len() / 2)]
}

fn open_stalled(poll: &Poll, addr: SocketAddr, token: Token) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    poll.registry()
        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
    Ok(stream)
}

/// Stalled connections, each with whether it has sent its half head.
type Stalls = Vec<(Option<TcpStream>, bool)>;

/// Opens `stalled` connections that each send half a head, and waits (up to 5 s) until they
/// have; returns them and how many had to be reopened.
fn open_stalls(
    poll: &mut Poll,
    settings: &Settings,
    stalled: usize,
    events: &mut Events,
    scratch: &mut [u8],
) -> io::Result<(Stalls, u64)> {
    let prefix = stalled_prefix(&settings.request);
    let mut stalls: Stalls = Vec::with_capacity(stalled);
    for i in 0..stalled {
        let stream = open_stalled(poll, settings.addr, Token(STALLED_BASE + i)).ok();
        stalls.push((stream, false));
    }
    let mut reopened = 0u64;
    let settle_deadline = Instant::now() + Duration::from_secs(5);
    while stalls.iter().any(|(s, sent)| s.is_some() && !sent) && Instant::now() < settle_deadline {
        poll.poll(events, Some(Duration::from_millis(50)))?;
        for event in events.iter() {
            let i = event.token().0 - STALLED_BASE;
            stall_event(
                poll,
                settings.addr,
                &mut stalls[i],
                i,
                prefix,
                scratch,
                &mut reopened,
            );
        }
    }
    Ok((stalls, reopened))
}

/// Counts a timeout for every client whose request has taken longer than allowed, and starts
/// it afresh.
fn expire_clients(poll: &Poll, settings: &Settings, clients: &mut [Client], stats: &mut Stats, now: Instant) {
    for (i, client) in clients.iter_mut().enumerate() {
        if client.stream.is_some() && now.duration_since(client.started) > settings.timeout {
            stats.error("timeout");
            client.stream = None;
            start(poll, settings, client, i, stats);
        }
    }
}

fn drive(
    settings: &Settings,
    concurrency: usize,
    stalled: usize,
    warmup: Duration,
    duration: Duration,
) -> io::Result<Report> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 256 * 1024];
    let mut stats = Stats {
        latencies_us: Vec::with_capacity(1 << 16),
        errors: BTreeMap::new(),
        recording: false,
    };

    // Stalled connections first: each sends half a head once connected, then never more.
    let prefix = stalled_prefix(&settings.request);
    let (mut stalls, mut stalled_reopened) =
        open_stalls(&mut poll, settings, stalled, &mut events, &mut scratch)?;

    let mut clients: Vec<Client> = (0..concurrency)
        .map(|_| Client {
            stream: None,
            started: Instant::now(),
            sent: 0,
            connected: false,
            head: Vec::with_capacity(512),
            parsed: None,
            received: 0,
        })
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        start(&poll, settings, client, i, &mut stats);
    }
    let mut phase_end = Instant::now() + warmup;
    let mut measure_start = Instant::now();
    let mut last_scan = Instant::now();
    loop {
        poll.poll(&mut events, Some(Duration::from_millis(20)))?;
        for event in events.iter() {
            let key = event.token().0;
            if key >= STALLED_BASE {
                let i = key - STALLED_BASE;
                stall_event(
                    &poll,
                    settings.addr,
                    &mut stalls[i],
                    i,
                    prefix,
                    &mut scratch,
                    &mut stalled_reopened,
                );
                continue;
            }
            let client = &mut clients[key];
            if client_event(settings, client, &mut scratch, &mut stats) {
                start(&poll, settings, client, key, &mut stats);
            }
        }
        let now = Instant::now();
        let enough = stats.recording
            && settings
                .requests
                .is_some_and(|n| stats.latencies_us.len() + stats.errors.values().sum::<u64>() as usize >= n);
        if now >= phase_end || enough {
            if stats.recording {
                break;
            }
            stats.recording = true;
            stats.latencies_us.clear();
            stats.errors.clear();
            stalled_reopened = 0;
            measure_start = now;
            phase_end = now + duration;
        }
        if now.duration_since(last_scan) >= Duration::from_millis(100) {
            last_scan = now;
            expire_clients(&poll, settings, &mut clients, &mut stats, now);
        }
    }
    let elapsed = measure_start.elapsed().as_secs_f64();
    let mut latencies_us = std::mem::take(&mut stats.latencies_us);
    latencies_us.sort_unstable();
    Ok(Report {
        requests: latencies_us.len() as u64,
        elapsed,
        latencies_us,
        errors: stats.errors,
        stalled_open: stalls.iter().filter(|(s, sent)| s.is_some() && *sent).count(),
        stalled_reopened,
    })
}

/// Keeps one stalled connection open: sends its half head once, reopens it when the server drops it.
fn stall_event(
    poll: &Poll,
    addr: SocketAddr,
    slot: &mut (Option<TcpStream>, bool),
    i: usize,
    prefix: &[u8],
    scratch: &mut [u8],
    reopened: &mut u64,
) {
    let Some(stream) = &mut slot.0 else { return };
    let mut dropped = false;
    if !slot.1 {
        match stream.peer_addr() {
            Ok(_) => match stream.write(prefix) {
                Ok(n) if n == prefix.len() => slot.1 = true,
                Ok(_) => dropped = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => dropped = true,
            },
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                if stream.take_error().ok().flatten().is_some() {
                    dropped = true;
                }
            }
            Err(_) => dropped = true,
        }
    }
    loop {
        match stream.read(scratch) {
            Ok(0) => {
                dropped = true;
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::NotConnected => {
                break
            }
            Err(_) => {
                dropped = true;
                break;
            }
        }
    }
    if dropped {
        let _ = poll.registry().deregister(stream);
        *reopened += 1;
        *slot = (open_stalled(poll, addr, Token(STALLED_BASE + i)).ok(), false);
    }
}

/// Starts a client's next request on a new connection.
fn start(poll: &Poll, settings: &Settings, client: &mut Client, key: usize, stats: &mut Stats) {
    client.started = Instant::now();
    client.sent = 0;
    client.connected = false;
    client.head.clear();
    client.parsed = None;
    client.received = 0;
    client.stream = None;
    // Connecting can fail at once (no ports left, refused); count it and retry on the next tick.
    for _ in 0..3 {
        match TcpStream::connect(settings.addr) {
            Ok(mut stream) => {
                let interest = Interest::READABLE | Interest::WRITABLE;
                if poll
                    .registry()
                    .register(&mut stream, Token(key), interest)
                    .is_ok()
                {
                    client.stream = Some(stream);
                    return;
                }
                stats.error("connect");
            }
            Err(_) => stats.error("connect"),
        }
    }
}

/// Handles readiness for a client; true when its request is over (done or failed).
fn client_event(settings: &Settings, client: &mut Client, scratch: &mut [u8], stats: &mut Stats) -> bool {
    let Some(stream) = &mut client.stream else {
        return true;
    };
    if !client.connected {
        match stream.peer_addr() {
            Ok(_) => client.connected = true,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                if let Ok(Some(_)) | Err(_) = stream.take_error() {
                    stats.error("connect");
                    return true;
                }
                return false;
            }
            Err(_) => {
                stats.error("connect");
                return true;
            }
        }
    }
    while client.sent < settings.request.len() {
        match stream.write(&settings.request[client.sent..]) {
            Ok(0) => {
                stats.error("write");
                return true;
            }
            Ok(n) => client.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                stats.error("write");
                return true;
            }
        }
    }
    loop {
        match stream.read(scratch) {
            Ok(0) => return finish(settings, client, stats),
            Ok(n) => {
                if client.parsed.is_none() {
                    client.head.extend_from_slice(&scratch[..n]);
                    match parse_response_head(&client.head) {
                        None => {}
                        Some(Ok(parsed)) => client.parsed = Some(parsed),
                        Some(Err(_)) => {
                            stats.error("bad-head");
                            return true;
                        }
                    }
                }
                client.received += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                stats.error("reset");
                return true;
            }
            Err(_) => {
                stats.error("read");
                return true;
            }
        }
    }
}

/// The server closed the connection: judge the response and record it.
fn finish(settings: &Settings, client: &mut Client, stats: &mut Stats) -> bool {
    client.stream = None;
    let Some((status, head_len)) = client.parsed else {
        stats.error(if client.received == 0 { "empty" } else { "bad-head" });
        return true;
    };
    if status != 200 {
        stats.error("status");
        return true;
    }
    let body_len = client.received - head_len;
    if settings.expect_len.is_some_and(|want| want != body_len) {
        stats.error("length");
        return true;
    }
    if stats.recording {
        let micros = client.started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        stats.latencies_us.push(micros);
    }
    true
}
