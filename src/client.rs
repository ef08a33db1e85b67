//! `scgi-request`: send one SCGI request to a server and print the response. The binary of
//! that name and the pip-installed command run [`main`].
//!
//! A small client used to show the server answering and as a health check.
//! It builds the SCGI environment a front-end web server would send, writes
//! the request (netstring of headers, then the body), reads the CGI-style
//! response to end of stream and prints it. The exit status tells the outcome:
//! 0 for a status below 400, 1 for a 4xx/5xx status, 2 when the server cannot
//! be reached, the exchange times out, or the reply is not a CGI-style response.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;

/// Exit status for a response with a status below 400.
const EXIT_OK: u8 = 0;
/// Exit status for a response with a 4xx or 5xx status.
const EXIT_HTTP_ERROR: u8 = 1;
/// Exit status when no usable response was obtained.
const EXIT_FAILURE: u8 = 2;
/// How often `--wait` retries connecting.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Shortest time a single connection attempt under `--wait` is given.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);
/// Largest response head accepted before giving up.
const MAX_HEAD: usize = 1 << 20;

/// Command line of `scgi-request`.
#[derive(Parser, Debug)]
#[command(
    name = "scgi-request",
    bin_name = "scgi-request",
    version,
    about = "Send one SCGI request and print the response",
    after_help = "Exit status: 0 when the response status is below 400; 1 for a 4xx/5xx \
                  status; 2 when the server cannot be reached, the exchange times out, or the \
                  response is not a CGI-style response."
)]
struct Cli {
    /// HOST:PORT (e.g. 127.0.0.1:4000, [::1]:4000) or a Unix socket path (anything containing '/')
    #[arg(value_name = "ADDRESS")]
    address: OsString,

    /// Request path with optional ?query; sent as PATH_INFO (percent-decoded) below SCRIPT_NAME
    #[arg(value_name = "PATH", default_value = "/")]
    path: OsString,

    /// Request method [default: GET, or POST when --data is given]
    #[arg(short = 'X', long, value_name = "METHOD")]
    method: Option<String>,

    /// Request body; @FILE reads it from a file, @- from standard input
    #[arg(short = 'd', long, value_name = "DATA")]
    data: Option<OsString>,

    /// Extra HTTP header 'Name: value' (repeatable); sent as HTTP_NAME, Content-Type as CONTENT_TYPE
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    headers: Vec<String>,

    /// SCRIPT_NAME to send; REQUEST_URI is SCRIPT_NAME followed by PATH
    #[arg(short = 's', long, value_name = "S", default_value = "")]
    script_name: String,

    /// Print the response head too (default: only the body)
    #[arg(short = 'i', long)]
    include: bool,

    /// Retry connecting until the server accepts, for up to SECS seconds
    #[arg(short = 'w', long, value_name = "SECS", value_parser = parse_wait)]
    wait: Option<Duration>,

    /// Overall timeout for the exchange (connect, send, receive), in seconds
    #[arg(short = 't', long, value_name = "SECS", default_value = "30", value_parser = parse_timeout)]
    timeout: Duration,

    /// Print nothing; only set the exit status
    #[arg(short = 'q', long)]
    quiet: bool,
}

/// Parses a non-negative number of seconds (fractions allowed).
fn parse_wait(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("not a number of seconds: {s:?}"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("not a non-negative number of seconds: {s:?}"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// Parses a positive number of seconds (fractions allowed).
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_wait(s)?;
    if d.is_zero() {
        return Err("the timeout must be greater than zero".into());
    }
    Ok(d)
}

/// A failure that ends the program with exit status 2.
#[derive(Debug)]
struct Failure(String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Shorthand for building a [`Failure`].
fn fail<T>(msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(msg.into()))
}

/// Where the server listens.
enum Target {
    /// A TCP address as written on the command line, with its host, port and resolved addresses.
    Tcp {
        text: String,
        host: String,
        port: u16,
        addrs: Vec<SocketAddr>,
    },
    /// A Unix socket path.
    Unix(PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { text, .. } => f.write_str(text),
            Target::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Parses ADDRESS: a socket path when it contains '/', else HOST:PORT.
fn parse_address(arg: &OsString) -> Result<Target, Failure> {
    if arg.as_bytes().contains(&b'/') {
        return Ok(Target::Unix(PathBuf::from(arg)));
    }
    let Some(text) = arg.to_str() else {
        return fail("ADDRESS must be HOST:PORT or a Unix socket path containing '/'");
    };
    let Some((host, port)) = text.rsplit_once(':') else {
        return fail(format!(
            "ADDRESS {text:?} must be HOST:PORT or a Unix socket path containing '/'"
        ));
    };
    let port: u16 = match port.parse() {
        Ok(p) => p,
        Err(_) => return fail(format!("bad port in ADDRESS {text:?}")),
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return fail(format!("missing host in ADDRESS {text:?}"));
    }
    let addrs: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => return fail(format!("cannot resolve {host}: {e}")),
    };
    if addrs.is_empty() {
        return fail(format!("{host} has no addresses"));
    }
    Ok(Target::Tcp {
        text: text.to_owned(),
        host: host.to_owned(),
        port,
        addrs,
    })
}

/// Reads the request body named by `--data`.
fn load_body(data: Option<&OsString>) -> Result<Option<Vec<u8>>, Failure> {
    let Some(data) = data else { return Ok(None) };
    let bytes = data.as_bytes();
    if bytes == b"@-" {
        let mut body = Vec::new();
        if let Err(e) = io::stdin().lock().read_to_end(&mut body) {
            return fail(format!("cannot read the request body from standard input: {e}"));
        }
        Ok(Some(body))
    } else if let Some(file) = bytes.strip_prefix(b"@") {
        let path = Path::new(std::ffi::OsStr::from_bytes(file));
        match std::fs::read(path) {
            Ok(body) => Ok(Some(body)),
            Err(e) => fail(format!("cannot read {}: {e}", path.display())),
        }
    } else {
        Ok(Some(bytes.to_vec()))
    }
}

/// Whether `b` may appear in an HTTP token (method or header name).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Decodes `%XX` escapes; malformed escapes are kept as they are.
fn percent_decode(raw: &[u8]) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

/// Turns the `-H` arguments into CGI variables, in order of first appearance.
/// Repeated names are joined (`; ` for Cookie, `, ` otherwise).
fn extra_headers(args: &[String]) -> Result<Vec<(String, String)>, Failure> {
    let mut out: Vec<(String, String)> = Vec::new();
    for arg in args {
        let Some((name, value)) = arg.split_once(':') else {
            return fail(format!("header {arg:?} is not of the form 'Name: value'"));
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return fail(format!("bad header name in {arg:?}"));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            return fail(format!("header {arg:?} contains a line break"));
        }
        let upper = name.to_ascii_uppercase().replace('-', "_");
        let var = match upper.as_str() {
            "CONTENT_TYPE" => upper,
            "CONTENT_LENGTH" => return fail("Content-Length cannot be set; it is the length of --data"),
            _ => format!("HTTP_{upper}"),
        };
        if let Some((_, old)) = out.iter_mut().find(|(n, _)| *n == var) {
            old.push_str(if var == "HTTP_COOKIE" { "; " } else { ", " });
            old.push_str(value);
        } else {
            out.push((var, value.to_owned()));
        }
    }
    Ok(out)
}

/// Builds the full request: the netstring of SCGI headers followed by the body.
fn build_request(cli: &Cli, target: &Target, body: &[u8]) -> Result<Vec<u8>, Failure> {
    let method = match &cli.method {
        Some(m) => m.clone(),
        None if cli.data.is_some() => "POST".to_owned(),
        None => "GET".to_owned(),
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return fail(format!("bad request method {method:?}"));
    }
    let full = cli.path.as_bytes();
    let (raw_path, query) = match full.iter().position(|&b| b == b'?') {
        Some(q) => (&full[..q], Some(&full[q + 1..])),
        None => (full, None),
    };
    let mut path = Vec::with_capacity(raw_path.len() + 1);
    if !raw_path.starts_with(b"/") {
        path.push(b'/');
    }
    path.extend_from_slice(raw_path);
    let path_info = percent_decode(&path);
    if path_info.contains(&0) {
        return fail("PATH decodes to a NUL byte, which SCGI cannot carry");
    }
    let mut request_uri = cli.script_name.as_bytes().to_vec();
    request_uri.extend_from_slice(&path);
    if let Some(q) = query {
        request_uri.push(b'?');
        request_uri.extend_from_slice(q);
    }

    let (server_name, server_port, default_host) = match target {
        Target::Tcp { text, host, port, .. } => (host.clone(), port.to_string(), text.clone()),
        Target::Unix(_) => ("localhost".to_owned(), "80".to_owned(), "localhost".to_owned()),
    };
    let mut extra = extra_headers(&cli.headers)?;
    let host = match extra.iter().position(|(n, _)| n == "HTTP_HOST") {
        Some(i) => extra.remove(i).1,
        None => default_host,
    };
    let content_type = extra
        .iter()
        .position(|(n, _)| n == "CONTENT_TYPE")
        .map(|i| extra.remove(i).1);

    let mut vars: Vec<(&[u8], Vec<u8>)> = vec![
        (b"CONTENT_LENGTH", body.len().to_string().into_bytes()),
        (b"SCGI", b"1".to_vec()),
        (b"REQUEST_METHOD", method.into_bytes()),
        (b"SCRIPT_NAME", cli.script_name.as_bytes().to_vec()),
        (b"PATH_INFO", path_info),
        (b"QUERY_STRING", query.unwrap_or_default().to_vec()),
        (b"REQUEST_URI", request_uri),
        (b"SERVER_NAME", server_name.into_bytes()),
        (b"SERVER_PORT", server_port.into_bytes()),
        (b"SERVER_PROTOCOL", b"HTTP/1.1".to_vec()),
        (b"REMOTE_ADDR", b"127.0.0.1".to_vec()),
        (b"REMOTE_PORT", b"0".to_vec()),
        (b"HTTP_HOST", host.into_bytes()),
    ];
    if let Some(ct) = content_type {
        vars.push((b"CONTENT_TYPE", ct.into_bytes()));
    }
    for (name, value) in &extra {
        vars.push((name.as_bytes(), value.clone().into_bytes()));
    }

    let mut headers = Vec::new();
    for (name, value) in &vars {
        headers.extend_from_slice(name);
        headers.push(0);
        headers.extend_from_slice(value);
        headers.push(0);
    }
    let mut out = Vec::with_capacity(headers.len() + body.len() + 16);
    out.extend_from_slice(headers.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(&headers);
    out.push(b',');
    out.extend_from_slice(body);
    Ok(out)
}

/// A connection to the server.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(Some(d)),
            Conn::Unix(s) => s.set_read_timeout(Some(d)),
        }
    }

    fn set_write_timeout(&self, d: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_write_timeout(Some(d)),
            Conn::Unix(s) => s.set_write_timeout(Some(d)),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Connects to a Unix socket, giving up after `timeout` (a connect can block
/// while the server's accept queue is full).
fn connect_unix(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let (tx, rx) = mpsc::channel();
    let path = path.to_path_buf();
    thread::spawn(move || {
        let _ = tx.send(UnixStream::connect(path));
    });
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// One connection attempt, bounded by `timeout`.
fn connect_once(target: &Target, timeout: Duration) -> io::Result<Conn> {
    match target {
        Target::Unix(path) => connect_unix(path, timeout).map(Conn::Unix),
        Target::Tcp { addrs, .. } => {
            let mut last = None;
            for addr in addrs {
                match TcpStream::connect_timeout(addr, timeout) {
                    Ok(s) => return Ok(Conn::Tcp(s)),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no address to connect to")))
        }
    }
}

/// Connects, retrying every [`POLL_INTERVAL`] for up to `wait` when given.
fn connect(target: &Target, wait: Option<Duration>, timeout: Duration) -> Result<Conn, Failure> {
    let Some(wait) = wait else {
        return connect_once(target, timeout)
            .map_err(|e| Failure(format!("cannot connect to {target}: {e}")));
    };
    let deadline = Instant::now() + wait;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = remaining.max(MIN_ATTEMPT).min(timeout);
        let err = match connect_once(target, attempt) {
            Ok(conn) => return Ok(conn),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return fail(format!(
                "{target} did not accept a connection within {:.3}s: {err}",
                wait.as_secs_f64()
            ));
        }
        thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// Time left before `deadline`, or a timeout failure naming `what`.
fn remaining(deadline: Instant, what: &str) -> Result<Duration, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return fail(format!("timed out {what}"));
    }
    Ok(left)
}

/// Whether an I/O error is a socket timeout.
fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Sends the whole request before `deadline`. Returns the error if the server
/// closed the connection early: it may still have sent a response.
fn send(conn: &mut Conn, mut data: &[u8], deadline: Instant) -> Result<Option<io::Error>, Failure> {
    while !data.is_empty() {
        let left = remaining(deadline, "sending the request")?;
        conn.set_write_timeout(left)
            .map_err(|e| Failure(format!("cannot set a write timeout: {e}")))?;
        match conn.write(data) {
            Ok(0) => return Ok(Some(io::ErrorKind::WriteZero.into())),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return fail("timed out sending the request"),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                return Ok(Some(e))
            }
            Err(e) => return fail(format!("cannot send the request: {e}")),
        }
    }
    Ok(None)
}

/// Reads once before `deadline`; `Ok(0)` means end of stream (a reset counts as one).
fn read_some(conn: &mut Conn, buf: &mut [u8], deadline: Instant) -> Result<usize, Failure> {
    loop {
        let left = remaining(deadline, "waiting for the response")?;
        conn.set_read_timeout(left)
            .map_err(|e| Failure(format!("cannot set a read timeout: {e}")))?;
        match conn.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return fail("timed out waiting for the response"),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(0),
            Err(e) => return fail(format!("cannot read the response: {e}")),
        }
    }
}

/// Finds the end of the response head (just after its empty line), scanning
/// lines from `*line_start`, which is advanced past complete header lines.
fn find_head_end(buf: &[u8], line_start: &mut usize) -> Option<usize> {
    while let Some(nl) = buf[*line_start..].iter().position(|&b| b == b'\n') {
        let end = *line_start + nl;
        let line = &buf[*line_start..end];
        *line_start = end + 1;
        if line.is_empty() || line == b"\r" {
            return Some(end + 1);
        }
    }
    None
}

/// Checks the head lines and returns the response status (200 when absent).
fn parse_head(head: &[u8]) -> Result<u16, String> {
    let mut status = None;
    let mut lines = 0;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        lines += 1;
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or("a head line has no ':'")?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err("a head line has a bad header name".into());
        }
        if status.is_none() && name.eq_ignore_ascii_case(b"status") {
            let value = line[colon + 1..].trim_ascii();
            let code = value.get(..3).filter(|c| c.iter().all(u8::is_ascii_digit));
            let ok_end = value.len() == 3 || value[3] == b' ' || value[3] == b'\t';
            match code {
                Some(c) if ok_end && c[0] != b'0' => {
                    status = Some(c.iter().fold(0u16, |a, &d| a * 10 + u16::from(d - b'0')));
                }
                _ => return Err("the Status line is malformed".into()),
            }
        }
    }
    if lines == 0 {
        return Err("the response has no header lines".into());
    }
    Ok(status.unwrap_or(200))
}

/// A short, printable excerpt of what the server sent.
fn preview(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(200)];
    let more = if bytes.len() > cut.len() { "..." } else { "" };
    format!("\"{}{more}\"", cut.escape_ascii())
}

/// Output of the response: stdout, or nothing with `--quiet`.
struct Output {
    out: Option<io::StdoutLock<'static>>,
    /// Set when the reader of stdout went away; the rest is discarded.
    closed: bool,
}

impl Output {
    fn write(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        if self.closed || bytes.is_empty() {
            return Ok(());
        }
        match out.write_all(bytes) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(e) => fail(format!("cannot write the response: {e}")),
        }
    }

    fn flush(&mut self) -> Result<(), Failure> {
        if let (Some(out), false) = (self.out.as_mut(), self.closed) {
            match out.flush() {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                    return fail(format!("cannot write the response: {e}"))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Performs the exchange and returns the exit status.
fn run(cli: &Cli) -> Result<u8, Failure> {
    let target = parse_address(&cli.address)?;
    let body = load_body(cli.data.as_ref())?.unwrap_or_default();
    let request = build_request(cli, &target, &body)?;

    // The timeout covers connecting too, except the waiting done by --wait.
    let start = Instant::now();
    let mut conn = connect(&target, cli.wait, cli.timeout)?;
    let deadline = match cli.wait {
        Some(_) => Instant::now() + cli.timeout,
        None => start + cli.timeout,
    };
    let send_error = send(&mut conn, &request, deadline)?;

    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut line_start = 0;
    let head_end = loop {
        if let Some(end) = find_head_end(&buf, &mut line_start) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return fail(format!(
                "the response head is larger than {MAX_HEAD} bytes: {}",
                preview(&buf)
            ));
        }
        let n = read_some(&mut conn, &mut chunk, deadline)?;
        if n == 0 {
            return match (&send_error, buf.is_empty()) {
                (Some(e), true) => fail(format!(
                    "the server closed the connection while the request was being sent: {e}"
                )),
                (_, true) => fail("the server closed the connection without a response"),
                _ => fail(format!(
                    "the response is not a CGI-style response (no end of head): {}",
                    preview(&buf)
                )),
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let status = parse_head(&buf[..head_end]).map_err(|why| {
        Failure(format!(
            "the response is not a CGI-style response ({why}): {}",
            preview(&buf)
        ))
    })?;

    let mut out = Output {
        out: (!cli.quiet).then(|| io::stdout().lock()),
        closed: false,
    };
    if cli.include {
        out.write(&buf[..head_end])?;
    }
    out.write(&buf[head_end..])?;
    loop {
        let n = read_some(&mut conn, &mut chunk, deadline)?;
        if n == 0 {
            break;
        }
        out.write(&chunk[..n])?;
    }
    out.flush()?;
    Ok(if status >= 400 { EXIT_HTTP_ERROR } else { EXIT_OK })
}

/// The whole program, with the command line `argv` (the program name first); returns the
/// exit status.
pub fn main(argv: Vec<OsString>) -> u8 {
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_FAILURE } else { EXIT_OK };
        }
    };
    match run(&cli) {
        Ok(code) => code,
        Err(failure) => {
            if !cli.quiet {
                eprintln!("scgi-request: {failure}");
            }
            EXIT_FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode(b"/a%20b%2Fc"), b"/a b/c");
        assert_eq!(percent_decode(b"/%zz%4"), b"/%zz%4");
        assert_eq!(percent_decode(b"%e9%"), b"\xe9%");
    }

    #[test]
    fn finds_head_end_with_mixed_line_ends() {
        let mut start = 0;
        assert_eq!(find_head_end(b"Status: 200 OK\r\nA: b", &mut start), None);
        let buf = b"Status: 200 OK\r\nA: b\n\nbody";
        assert_eq!(find_head_end(buf, &mut start), Some(22));
    }

    #[test]
    fn parses_status() {
        assert_eq!(parse_head(b"Status: 404 Not Found\r\n\r\n"), Ok(404));
        assert_eq!(parse_head(b"Content-Type: text/plain\n\n"), Ok(200));
        assert_eq!(parse_head(b"status: 204\n\n"), Ok(204));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"Status: 2000 OK\r\n\r\n").is_err());
        assert!(parse_head(b"\r\n").is_err());
    }
}
