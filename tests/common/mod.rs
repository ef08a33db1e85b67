//! Shared integration-test harness: starts the server binary and speaks SCGI to it.
//!
//! Every wait here is a poll with a deadline. A [`Server`] kills (SIGKILL) and
//! reaps its process, and any processes it started, when dropped; when the
//! test is panicking at that point, the captured server output is printed to
//! help diagnose the failure.
#![allow(dead_code)]

pub mod load;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The server binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_scgi-wsgi");
/// The `scgi-request` client binary.
pub const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_scgi-request");

/// How long [`Server::start`] and friends wait for the server to accept.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Read/write timeout used by [`Server::request`] and [`Server::get`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between polls in every wait of this module.
pub const POLL: Duration = Duration::from_millis(10);
/// How many fresh ports [`Server::start`] tries when the port was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// The directory of test WSGI applications: `<crate>/tests/apps`.
pub fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("apps")
}

/// [`apps_dir`] as a string, ready to pass as an argument.
pub fn apps_dir_str() -> String {
    apps_dir().to_str().expect("apps dir is UTF-8").to_owned()
}

/// Sends signal `sig` to process `pid`; whether it was delivered (the process may have gone).
pub fn kill(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// The effective user id the tests run as.
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Sleeps one poll interval, but never past `deadline`.
fn poll_sleep(deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    thread::sleep(POLL.min(left));
}

/// Polls `cond` every [`POLL`] until it is true or `timeout` has passed; returns its last value.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        poll_sleep(deadline);
    }
}

// ---------------------------------------------------------------------------
// Addresses and streams
// ---------------------------------------------------------------------------

/// Where a test server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl fmt::Display for Addr {
    /// `HOST:PORT` or the socket path: the form the server's `-T`/`-u` flags
    /// and the `scgi-request` client take.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "{a}"),
            Addr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A connected client socket over TCP or Unix.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix socket connection.
    Unix(UnixStream),
}

impl Stream {
    /// Connects once to `addr`.
    pub fn connect(addr: &Addr) -> io::Result<Stream> {
        match addr {
            Addr::Tcp(a) => TcpStream::connect(a).map(Stream::Tcp),
            Addr::Unix(p) => UnixStream::connect(p).map(Stream::Unix),
        }
    }

    /// Shuts down the read half, the write half, or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }

    /// Sets the read timeout (`None`: block forever).
    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(d),
            Stream::Unix(s) => s.set_read_timeout(d),
        }
    }

    /// Sets the write timeout (`None`: block forever).
    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(d),
            Stream::Unix(s) => s.set_write_timeout(d),
        }
    }

    /// Switches non-blocking mode.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }

    /// Another handle to the same socket.
    pub fn try_clone(&self) -> io::Result<Stream> {
        match self {
            Stream::Tcp(s) => s.try_clone().map(Stream::Tcp),
            Stream::Unix(s) => s.try_clone().map(Stream::Unix),
        }
    }

    /// Writes all of `bytes`, waiting at most `timeout` for each write. Returns
    /// `Ok(false)` when the peer closed the connection first (EPIPE/ECONNRESET).
    pub fn send_all(&mut self, bytes: &[u8], timeout: Duration) -> io::Result<bool> {
        self.set_write_timeout(Some(timeout))?;
        match self.write_all(bytes) {
            Ok(()) => Ok(true),
            Err(e) if is_closed(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads until end of stream, a reset, an error, or `timeout` has passed in total.
    pub fn read_until_eof(&mut self, timeout: Duration) -> (Vec<u8>, ReadEnd) {
        let deadline = Instant::now() + timeout;
        let mut data = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (data, ReadEnd::TimedOut);
            }
            if let Err(e) = self.set_read_timeout(Some(left)) {
                return (data, ReadEnd::Error(e.kind()));
            }
            match self.read(&mut chunk) {
                Ok(0) => return (data, ReadEnd::Eof),
                Ok(n) => data.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return (data, ReadEnd::TimedOut),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (data, ReadEnd::Reset),
                Err(e) => return (data, ReadEnd::Error(e.kind())),
            }
        }
    }

    /// Whether the peer has closed the connection, checked for up to `timeout`
    /// without consuming data (pending data counts as "not closed").
    pub fn peer_closed(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is a valid pollfd for an open descriptor, and the count is 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            return false;
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            return true;
        }
        let mut byte = [0u8; 1];
        // SAFETY: reads at most one byte into `byte`, without removing it from the queue.
        let got = unsafe {
            libc::recv(
                pfd.fd,
                byte.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        got == 0 || (got < 0 && io::Error::last_os_error().kind() == io::ErrorKind::ConnectionReset)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

/// Why [`Stream::read_until_eof`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// The peer closed the connection normally.
    Eof,
    /// The peer reset the connection.
    Reset,
    /// The timeout passed first.
    TimedOut,
    /// Another error.
    Error(io::ErrorKind),
}

/// Whether an I/O error is a socket timeout.
fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Whether a write error means the peer closed the connection.
fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// Sends raw bytes on a fresh connection and reads until end of stream (or
/// `timeout`, or a reset); returns what came back. The write half stays open.
/// A server closing early (EPIPE/ECONNRESET while sending) is not an error.
pub fn exchange_raw(addr: &Addr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    exchange_raw_ex(addr, bytes, false, timeout).0
}

/// Like [`exchange_raw`], and then shuts down the write half (the server sees
/// end of stream after `bytes`); also says why reading stopped.
pub fn exchange_raw_half_close(addr: &Addr, bytes: &[u8], timeout: Duration) -> (Vec<u8>, ReadEnd) {
    exchange_raw_ex(addr, bytes, true, timeout)
}

/// Shared body of the raw exchanges.
fn exchange_raw_ex(addr: &Addr, bytes: &[u8], half_close: bool, timeout: Duration) -> (Vec<u8>, ReadEnd) {
    let mut s = Stream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    let sent = s
        .send_all(bytes, timeout)
        .unwrap_or_else(|e| panic!("cannot send to {addr}: {e}"));
    if sent && half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    s.read_until_eof(timeout)
}

// ---------------------------------------------------------------------------
// SCGI requests and CGI responses
// ---------------------------------------------------------------------------

/// Builder for an SCGI request: headers in order, and a body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScgiRequest {
    /// Header names and values, in the order they are sent.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The request body, sent after the netstring.
    pub body: Vec<u8>,
}

impl ScgiRequest {
    /// A request with the standard headers: CONTENT_LENGTH=0, SCGI=1,
    /// REQUEST_METHOD, SCRIPT_NAME="", PATH_INFO (the bytes before '?', not
    /// decoded), QUERY_STRING (after '?'), REQUEST_URI (all of `path`),
    /// SERVER_NAME=localhost, SERVER_PORT=80, SERVER_PROTOCOL=HTTP/1.1,
    /// REMOTE_ADDR=127.0.0.1.
    pub fn new(method: &str, path: &str) -> Self {
        let (path_info, query) = path.split_once('?').unwrap_or((path, ""));
        let fields: [(&str, &str); 11] = [
            ("CONTENT_LENGTH", "0"),
            ("SCGI", "1"),
            ("REQUEST_METHOD", method),
            ("SCRIPT_NAME", ""),
            ("PATH_INFO", path_info),
            ("QUERY_STRING", query),
            ("REQUEST_URI", path),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", "80"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REMOTE_ADDR", "127.0.0.1"),
        ];
        ScgiRequest {
            headers: fields
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            body: Vec::new(),
        }
    }

    /// A GET request for `path` (see [`ScgiRequest::new`]).
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// A POST request for `path` with CONTENT_TYPE appended and the body set
    /// (CONTENT_LENGTH matches it).
    pub fn post(path: &str, content_type: &str, body: &[u8]) -> Self {
        Self::new("POST", path)
            .header("CONTENT_TYPE", content_type)
            .body(body)
    }

    /// Appends a header (a duplicate name is sent twice).
    pub fn header(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }

    /// Replaces the value of the first header called `name` in place (dropping
    /// any later duplicates), or appends it when absent.
    pub fn set_header(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        let name = name.as_ref();
        match self.headers.iter().position(|(n, _)| n == name) {
            Some(i) => {
                self.headers[i].1 = value.as_ref().to_vec();
                let mut seen = false;
                self.headers.retain(|(n, _)| {
                    if n != name {
                        return true;
                    }
                    let keep = !seen;
                    seen = true;
                    keep
                });
            }
            None => self.headers.push((name.to_vec(), value.as_ref().to_vec())),
        }
        self
    }

    /// Removes every header called `name`.
    pub fn without(mut self, name: impl AsRef<[u8]>) -> Self {
        let name = name.as_ref();
        self.headers.retain(|(n, _)| n != name);
        self
    }

    /// Sets REQUEST_METHOD.
    pub fn method(self, method: &str) -> Self {
        self.set_header("REQUEST_METHOD", method)
    }

    /// Sets the body and makes CONTENT_LENGTH match it.
    pub fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.body = body.as_ref().to_vec();
        let len = self.body.len().to_string();
        self.set_header("CONTENT_LENGTH", len)
    }

    /// Sets the body without touching CONTENT_LENGTH.
    pub fn raw_body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.body = body.as_ref().to_vec();
        self
    }

    /// The value of the first header called `name`.
    pub fn header_value(&self, name: impl AsRef<[u8]>) -> Option<&[u8]> {
        let name = name.as_ref();
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The netstring of headers only: `LEN:name\0value\0...,`.
    pub fn encode_headers(&self) -> Vec<u8> {
        let mut block = Vec::new();
        for (n, v) in &self.headers {
            block.extend_from_slice(n);
            block.push(0);
            block.extend_from_slice(v);
            block.push(0);
        }
        let mut out = block.len().to_string().into_bytes();
        out.push(b':');
        out.extend_from_slice(&block);
        out.push(b',');
        out
    }

    /// The raw request: the header netstring followed by the body. CONTENT_LENGTH
    /// is whatever the headers say.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.encode_headers();
        out.extend_from_slice(&self.body);
        out
    }
}

/// A parsed CGI-style response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Everything the server sent.
    pub raw: Vec<u8>,
    /// The status code (200 when there is no Status line).
    pub status: u16,
    /// The reason phrase of the Status line ("" when absent).
    pub reason: String,
    /// Header lines other than Status, in order, bytes decoded as Latin-1, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The bytes after the empty line.
    pub body: Vec<u8>,
}

impl Response {
    /// Parses a CGI response (CRLF or bare LF line ends); panics, showing the
    /// raw bytes, if it is not one.
    pub fn parse(raw: Vec<u8>) -> Response {
        match Self::try_parse(raw) {
            Ok(r) => r,
            Err((why, raw)) => panic!(
                "not a CGI response ({why}); {} bytes received:\n{}",
                raw.len(),
                show_bytes(&raw)
            ),
        }
    }

    /// Parses a CGI response, or returns why not along with the raw bytes.
    pub fn try_parse(raw: Vec<u8>) -> Result<Response, (String, Vec<u8>)> {
        let Some(head_end) = head_end(&raw) else {
            let why = if raw.is_empty() {
                "empty response"
            } else {
                "no empty line ends the head"
            };
            return Err((why.into(), raw));
        };
        let mut status = None;
        let mut headers = Vec::new();
        for line in raw[..head_end].split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                break;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err((format!("head line without ':': {}", latin1(line)), raw));
            };
            let name = latin1(&line[..colon]);
            if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c.is_control()) {
                return Err((format!("bad header name in: {}", latin1(line)), raw));
            }
            let value = latin1(line[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case("status") {
                if status.is_some() {
                    return Err(("more than one Status line".into(), raw));
                }
                let (code, reason) = value.split_once(' ').unwrap_or((&value, ""));
                match code.parse::<u16>() {
                    Ok(c) if code.len() == 3 && (100..1000).contains(&c) => {
                        status = Some((c, reason.trim().to_owned()));
                    }
                    _ => return Err((format!("bad Status line: {value}"), raw)),
                }
            } else {
                headers.push((name, value));
            }
        }
        let (status, reason) = status.unwrap_or((200, String::new()));
        let body = raw[head_end..].to_vec();
        Ok(Response {
            raw,
            status,
            reason,
            headers,
            body,
        })
    }

    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The values of every header called `name` (case-insensitive), in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as lossy UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Where the head ends: just after the first empty line (CRLF or LF).
fn head_end(raw: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(nl) = raw[start..].iter().position(|&b| b == b'\n') {
        let end = start + nl;
        let line = &raw[start..end];
        if line.is_empty() || line == b"\r" {
            return Some(end + 1);
        }
        start = end + 1;
    }
    None
}

/// Decodes bytes as Latin-1 (as WSGI does for header values).
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// Bytes shown for a failure message: escaped, and cut when long.
pub fn show_bytes(bytes: &[u8]) -> String {
    const MAX: usize = 4096;
    let cut = &bytes[..bytes.len().min(MAX)];
    let more = if bytes.len() > MAX { "\n[...cut...]" } else { "" };
    format!("{}{more}", cut.escape_ascii())
}

// ---------------------------------------------------------------------------
// Server processes
// ---------------------------------------------------------------------------

/// Environment variable naming a Python to run every test server's app under, in the
/// external-interpreter mode (`--interpreter`); unset, the embedded interpreter is used.
pub const INTERPRETER_ENV: &str = "SCGI_WSGI_TEST_INTERPRETER";

/// The external interpreter the tests run under, if any.
pub fn external_interpreter() -> Option<String> {
    std::env::var(INTERPRETER_ENV).ok().filter(|v| !v.is_empty())
}

/// The Python the app runs under: the external interpreter, the virtualenv's of the
/// pip-installed command, or the `python3` the binary embeds.
pub fn app_python() -> String {
    external_interpreter()
        .or_else(|| {
            pip_virtualenv().map(|venv| venv.join("bin").join("python").to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "python3".to_string())
}

/// The virtualenv whose `scgi-wsgi` command the test run names ([`COMMAND_ENV`]), if any:
/// the directory above the command's `bin/`.
pub fn pip_virtualenv() -> Option<PathBuf> {
    let command = std::env::var_os(COMMAND_ENV).filter(|v| !v.is_empty())?;
    let command = std::path::absolute(PathBuf::from(command)).ok()?;
    Some(command.parent()?.parent()?.to_path_buf())
}

/// Whether the app runs in the Python of the pip-installed command (its own, not an
/// external interpreter's).
pub fn in_pip_python() -> bool {
    pip_virtualenv().is_some() && external_interpreter().is_none()
}

/// Environment variable naming the command every test server runs as, instead of the binary
/// cargo built: the `scgi-wsgi` command of a virtualenv the checkout was `pip install`ed into
/// (the pip-installed form, which runs the server inside that virtualenv's Python).
pub const COMMAND_ENV: &str = "SCGI_WSGI_TEST_COMMAND";

/// The server program the tests run: the command the test run names, or the binary.
pub fn server_program() -> String {
    std::env::var(COMMAND_ENV)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| BIN.to_string())
}

/// A command for the server, in the form and mode the test run asks for.
pub fn server_command() -> Command {
    let mut command = Command::new(server_program());
    if let Some(python) = external_interpreter() {
        command.arg("--interpreter").arg(python);
    }
    command
}

/// How [`Server::start_with`] makes the server listen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `-T 127.0.0.1:PORT` on a fresh free port.
    Tcp,
    /// `-u PATH` in a fresh temporary directory.
    Unix,
    /// A listening Unix socket made by the harness, passed as fd 0 (no flag).
    Fd0,
}

/// Output of a child process collected by a background thread.
struct Captured {
    data: Vec<u8>,
    eof: bool,
    /// The pipe's read end, open for as long as `eof` is false (the thread closes it only
    /// after setting `eof`, under the lock).
    fd: RawFd,
}

/// A shared, growing capture buffer.
type Capture = Arc<Mutex<Captured>>;

/// Starts a thread copying `src` into a new capture buffer until end of file.
///
/// The thread waits for data without the lock, then reads and appends under it: whoever
/// holds the lock and finds the pipe empty has everything the child wrote before that.
fn capture<S: Read + AsRawFd + Send + 'static>(mut src: S) -> Capture {
    let fd = src.as_raw_fd();
    let buf: Capture = Arc::new(Mutex::new(Captured {
        data: Vec::new(),
        eof: false,
        fd,
    }));
    let sink = Arc::clone(&buf);
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            let mut pollfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; `src` keeps `fd` open.
            if unsafe { libc::poll(&mut pollfd, 1, -1) } < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            let mut captured = sink.lock().unwrap();
            match src.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => captured.data.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        sink.lock().unwrap().eof = true;
        drop(src);
    });
    buf
}

/// Bytes written to the pipe `fd` and not read yet.
fn pipe_pending(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int; the caller holds the capture lock, so `fd` is open.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if rc == 0 {
        n.max(0) as usize
    } else {
        0
    }
}

/// The captured text so far, as lossy UTF-8: everything the child wrote before the call
/// (it waits, up to 10 s, for the capture thread to drain the pipe).
fn capture_text(c: &Capture) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let captured = c.lock().unwrap();
        if captured.eof || pipe_pending(captured.fd) == 0 || Instant::now() >= deadline {
            return String::from_utf8_lossy(&captured.data).into_owned();
        }
        drop(captured);
        thread::sleep(Duration::from_millis(1));
    }
}

/// Waits up to `timeout` for the capture thread to reach end of file.
fn capture_wait_eof(c: &Capture, timeout: Duration) -> bool {
    wait_until(timeout, || c.lock().unwrap().eof)
}

/// Why a started server did not become ready.
enum NotReady {
    Exited(ExitStatus),
    TimedOut,
}

/// A running server process. On drop it is killed (SIGKILL), with any
/// processes it started, and reaped. Its stdout and stderr are captured by
/// background threads.
pub struct Server {
    /// The server process.
    pub child: Child,
    /// Where it listens.
    pub addr: Addr,
    stderr: Capture,
    stdout: Capture,
    /// Exit status once reaped through [`Server::wait_exit`].
    reaped: Option<ExitStatus>,
    /// Keeps the socket directory alive as long as the server.
    _dir: Option<TempDir>,
}

impl Server {
    /// Starts the server on a fresh free loopback TCP port (`-T 127.0.0.1:PORT`
    /// goes before `args`) and waits until it accepts.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with(Listen::Tcp, args, &[])
    }

    /// Same, listening on a Unix socket in a fresh temporary directory (`-u PATH`).
    pub fn start_unix(args: &[&str]) -> Server {
        Self::start_with(Listen::Unix, args, &[])
    }

    /// Same, the way ashd's callscgi does it: the harness creates a listening
    /// Unix socket in a temporary directory and passes it as the child's fd 0.
    pub fn start_fd0(args: &[&str]) -> Server {
        Self::start_with(Listen::Fd0, args, &[])
    }

    /// Starts the server listening as `listen` with `args`, and `env` added to
    /// the inherited environment, then waits up to [`START_TIMEOUT`] until it
    /// accepts. Panics, showing its stderr, if it exits or never accepts.
    ///
    /// Readiness is checked with probe connections: each connects, sends
    /// nothing and shuts down its write half; the server is ready once it has
    /// accepted a probe and closed it.
    pub fn start_with(listen: Listen, args: &[&str], env: &[(&str, &str)]) -> Server {
        for attempt in 1..=PORT_ATTEMPTS {
            let dir = (listen != Listen::Tcp).then(|| TempDir::new("srv"));
            let mut stdin = Stdio::null();
            let (addr, mut full_args) = match listen {
                Listen::Tcp => {
                    let a = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
                    (Addr::Tcp(a), vec!["-T".to_owned(), a.to_string()])
                }
                Listen::Unix => {
                    let p = dir.as_ref().unwrap().path().join("scgi.sock");
                    let s = p.to_str().expect("socket path is UTF-8").to_owned();
                    (Addr::Unix(p), vec!["-u".to_owned(), s])
                }
                Listen::Fd0 => {
                    let p = dir.as_ref().unwrap().path().join("scgi.sock");
                    let l = UnixListener::bind(&p)
                        .unwrap_or_else(|e| panic!("cannot listen on {}: {e}", p.display()));
                    stdin = Stdio::from(OwnedFd::from(l));
                    (Addr::Unix(p), Vec::new())
                }
            };
            full_args.extend(args.iter().map(|a| a.to_string()));

            let mut cmd = server_command();
            cmd.args(&full_args)
                .envs(env.iter().copied())
                .stdin(stdin)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", server_program()));
            // Dropping the command closes this process's copy of an fd-0 listener.
            drop(cmd);
            let stdout = capture(child.stdout.take().expect("piped stdout"));
            let stderr = capture(child.stderr.take().expect("piped stderr"));
            let mut server = Server {
                child,
                addr,
                stderr,
                stdout,
                reaped: None,
                _dir: dir,
            };

            let why = match server.wait_accepting(Instant::now() + START_TIMEOUT) {
                Ok(()) => return server,
                Err(NotReady::Exited(status)) => {
                    server.reaped = Some(status);
                    capture_wait_eof(&server.stderr, Duration::from_secs(2));
                    let text = server.stderr_text();
                    if listen == Listen::Tcp
                        && attempt < PORT_ATTEMPTS
                        && text.to_ascii_lowercase().contains("address already in use")
                    {
                        continue; // Someone took the port meanwhile: try another.
                    }
                    format!("exited with {status}")
                }
                Err(NotReady::TimedOut) => format!(
                    "did not accept a connection on {} within {START_TIMEOUT:?}",
                    server.addr
                ),
            };
            let stderr = server.stderr_text();
            drop(server);
            panic!(
                "server {} {full_args:?} {why}; its stderr:\n{stderr}",
                server_program()
            );
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts the binary with exactly these args, and `env` added to the
    /// inherited environment, without waiting (stdin is null, stdout and
    /// stderr are piped). The caller must wait for or kill the child; see
    /// [`run_raw`] for a version that does.
    pub fn spawn_raw(args: &[&str], env: &[(&str, &str)]) -> Child {
        server_command()
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server_program()))
    }

    /// Takes over a server process the test started itself (stdout and stderr piped), which
    /// listens on `addr`, and waits until it accepts; panics, showing its stderr, otherwise.
    pub fn adopt(mut child: Child, addr: Addr) -> Server {
        let stdout = capture(child.stdout.take().expect("piped stdout"));
        let stderr = capture(child.stderr.take().expect("piped stderr"));
        let mut server = Server {
            child,
            addr,
            stderr,
            stdout,
            reaped: None,
            _dir: None,
        };
        if let Err(why) = server.wait_accepting(Instant::now() + START_TIMEOUT) {
            let why = match why {
                NotReady::Exited(status) => format!("exited with {status}"),
                NotReady::TimedOut => format!("did not accept within {START_TIMEOUT:?}"),
            };
            capture_wait_eof(&server.stderr, Duration::from_secs(2));
            panic!(
                "server {} {why}; its stderr:\n{}",
                server.addr,
                server.stderr_text()
            );
        }
        server
    }

    /// Polls probe connections until one is accepted and closed by the server.
    fn wait_accepting(&mut self, deadline: Instant) -> Result<(), NotReady> {
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(NotReady::Exited(status));
            }
            if Instant::now() >= deadline {
                return Err(NotReady::TimedOut);
            }
            let Ok(mut probe) = Stream::connect(&self.addr) else {
                poll_sleep(deadline);
                continue;
            };
            // A free port is an ephemeral one: before the server listens, a probe can connect
            // to itself (TCP simultaneous open) and look like an answer. Not ready, then.
            if let Stream::Tcp(tcp) = &probe {
                if tcp.local_addr().ok() == tcp.peer_addr().ok() {
                    drop(probe);
                    poll_sleep(deadline);
                    continue;
                }
            }
            let _ = probe.shutdown(Shutdown::Write);
            // Read in short slices so that a dying server is noticed at once.
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(NotReady::TimedOut);
                }
                let (_, end) = probe.read_until_eof(left.min(Duration::from_millis(100)));
                match end {
                    ReadEnd::Eof => return Ok(()),
                    // The server closes a probe gently: a reset came from something else (a
                    // listener another test held on this port for a moment, or a server that
                    // died with the probe in its backlog). Not ready; look again.
                    ReadEnd::Reset => {
                        if let Some(status) = self.child.try_wait().expect("try_wait") {
                            return Err(NotReady::Exited(status));
                        }
                        poll_sleep(deadline);
                        break;
                    }
                    ReadEnd::TimedOut => {
                        if let Some(status) = self.child.try_wait().expect("try_wait") {
                            return Err(NotReady::Exited(status));
                        }
                    }
                    ReadEnd::Error(_) => break,
                }
            }
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server wrote to stderr so far (lossy UTF-8).
    pub fn stderr_text(&self) -> String {
        capture_text(&self.stderr)
    }

    /// Everything the server wrote to stdout so far (lossy UTF-8).
    pub fn stdout_text(&self) -> String {
        capture_text(&self.stdout)
    }

    /// Polls stderr until it contains `needle`, for up to `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.stderr_text().contains(needle))
    }

    /// Sends signal `sig` (e.g. `libc::SIGTERM`) to the server process. Does
    /// nothing once the process has been reaped by [`Server::wait_exit`].
    pub fn signal(&self, sig: i32) {
        if self.reaped.is_some() {
            return;
        }
        // SAFETY: kill(2) has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            assert_eq!(
                e.raw_os_error(),
                Some(libc::ESRCH),
                "kill({}, {sig}): {e}",
                self.pid()
            );
        }
    }

    /// Polls until the server exits, for up to `timeout`; then waits briefly
    /// for the rest of its output to be captured. `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.reaped {
            return Some(status);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.reaped = Some(status);
                capture_wait_eof(&self.stderr, Duration::from_secs(2));
                capture_wait_eof(&self.stdout, Duration::from_secs(2));
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            poll_sleep(deadline);
        }
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.reaped.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// A new connection to the server; panics if it cannot connect.
    pub fn connect(&self) -> Stream {
        Stream::connect(&self.addr).unwrap_or_else(|e| {
            panic!(
                "cannot connect to {}: {e}; server stderr:\n{}",
                self.addr,
                self.stderr_text()
            )
        })
    }

    /// Sends `req` on a new connection and reads everything until the server
    /// closes it (at most [`REQUEST_TIMEOUT`]); panics on a timeout.
    pub fn request_raw(&self, req: &ScgiRequest) -> Vec<u8> {
        let mut s = self.connect();
        // A server that answers before reading the whole body may close early.
        let _ = s.send_all(&req.encode(), REQUEST_TIMEOUT);
        let (raw, end) = s.read_until_eof(REQUEST_TIMEOUT);
        if end == ReadEnd::TimedOut {
            panic!(
                "no end of response within {REQUEST_TIMEOUT:?}; received so far:\n{}\nserver stderr:\n{}",
                show_bytes(&raw),
                self.stderr_text()
            );
        }
        raw
    }

    /// Sends `req` and parses the response; panics if it is not a CGI response.
    pub fn request(&self, req: &ScgiRequest) -> Response {
        let raw = self.request_raw(req);
        match Response::try_parse(raw) {
            Ok(r) => r,
            Err((why, raw)) => panic!(
                "not a CGI response ({why}); {} bytes received:\n{}\nserver stderr:\n{}",
                raw.len(),
                show_bytes(&raw),
                self.stderr_text()
            ),
        }
    }

    /// GET `path` (see [`ScgiRequest::get`]).
    pub fn get(&self, path: &str) -> Response {
        self.request(&ScgiRequest::get(path))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            if let Ok(None) = self.child.try_wait() {
                let pid = self.pid();
                let descendants = descendants(pid);
                let _ = self.child.kill();
                for d in descendants {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe { libc::kill(d as libc::pid_t, libc::SIGKILL) };
                }
            }
            let _ = self.child.wait();
        }
        if thread::panicking() {
            capture_wait_eof(&self.stderr, Duration::from_millis(500));
            eprintln!(
                "---- server (pid {}, {}) stderr ----\n{}---- end of server stderr ----",
                self.pid(),
                self.addr,
                self.stderr_text()
            );
            let out = self.stdout_text();
            if !out.is_empty() {
                eprintln!("---- server stdout ----\n{out}---- end of server stdout ----");
            }
        }
    }
}

/// Outcome of [`run_raw`].
#[derive(Debug)]
pub struct RawRun {
    /// Exit status, or `None` when it was still running at the deadline (it was then killed).
    pub status: Option<ExitStatus>,
    /// What it wrote to stdout.
    pub stdout: Vec<u8>,
    /// What it wrote to stderr (lossy UTF-8).
    pub stderr: String,
}

/// Runs the binary with exactly `args` (and `env` added), waits up to
/// `timeout` for it to exit, kills and reaps it otherwise; for start-up failure tests.
pub fn run_raw(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> RawRun {
    finish(Server::spawn_raw(args, env), timeout)
}

/// Runs the `scgi-request` client with `args`, waiting up to `timeout`
/// (killed otherwise); stdin is null.
pub fn run_client(args: &[&str], timeout: Duration) -> RawRun {
    let child = Command::new(CLIENT_BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CLIENT_BIN}: {e}"));
    finish(child, timeout)
}

/// Collects the piped output of `child` and waits up to `timeout` for it to
/// exit; kills and reaps it otherwise.
fn finish(mut child: Child, timeout: Duration) -> RawRun {
    let out = capture(child.stdout.take().expect("piped stdout"));
    let err = capture(child.stderr.take().expect("piped stderr"));
    let status = wait_child(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    capture_wait_eof(&out, Duration::from_secs(2));
    capture_wait_eof(&err, Duration::from_secs(2));
    let stdout = out.lock().unwrap().data.clone();
    RawRun {
        status,
        stdout,
        stderr: capture_text(&err),
    }
}

/// Polls `child` until it exits, for up to `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        poll_sleep(deadline);
    }
}

/// All processes descended from `pid` (children, grandchildren, ...), from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let children = child_table();
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if !out.contains(&c) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// The direct children of `pid` (a master's workers, without their own children such as an
/// external interpreter).
pub fn children(pid: u32) -> Vec<u32> {
    child_table().remove(&pid).unwrap_or_default()
}

/// The parent of `pid`, from /proc.
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The server process that served a request whose app reported `app_pid` (its `os.getpid()`):
/// the same process when embedded; the external interpreter's parent otherwise.
pub fn serving_pid(app_pid: u32) -> u32 {
    match external_interpreter() {
        Some(_) => parent_pid(app_pid).unwrap_or(app_pid),
        None => app_pid,
    }
}

/// Parent pid -> child pids, from /proc.
fn child_table() -> HashMap<u32, Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // The command name may contain spaces and ')': fields follow the last ')'.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                children.entry(ppid).or_default().push(p);
            }
        }
    }
    children
}

// ---------------------------------------------------------------------------
// Process facts, ports, temporary directories
// ---------------------------------------------------------------------------

/// A numeric field of /proc/PID/status (e.g. "Threads", "VmRSS").
fn proc_status_field(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {path}"))
}

/// Number of threads of process `pid`.
pub fn proc_threads(pid: u32) -> usize {
    proc_status_field(pid, "Threads") as usize
}

/// Number of open file descriptors of process `pid`.
pub fn proc_fds(pid: u32) -> usize {
    let path = format!("/proc/{pid}/fd");
    std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
        .count()
}

/// What each open descriptor of `pid` points at (`fd -> target`), sorted by fd; for leak diagnostics.
pub fn proc_fd_targets(pid: u32) -> Vec<(u32, String)> {
    let path = format!("/proc/{pid}/fd");
    let mut out: Vec<(u32, String)> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((fd, target.display().to_string()))
        })
        .collect();
    out.sort();
    out
}

/// Resident set size of process `pid`, in KiB.
pub fn proc_rss_kib(pid: u32) -> u64 {
    proc_status_field(pid, "VmRSS")
}

/// A loopback TCP port that was free a moment ago; never the same port twice
/// within one test process.
pub fn free_tcp_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Mutex::default);
    loop {
        // Bound, not listening: a server starting on a port given earlier must not find its
        // readiness probe answered by this socket.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a TCP socket");
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .expect("bind 127.0.0.1:0");
        let port = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("local_addr")
            .port();
        if given.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// A fresh temporary directory (mode 0700), removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `scgi-wsgi-TAG-PID-N` in the system temporary directory (in
    /// /tmp when that one is too long for Unix socket paths).
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut base = std::env::temp_dir();
        if base.as_os_str().len() > 60 {
            base = PathBuf::from("/tmp");
        }
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(16)
            .collect();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("scgi-wsgi-{tag}-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return TempDir { path },
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("cannot create {}: {e}", path.display()),
            }
        }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
