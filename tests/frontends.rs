//! End-to-end: nginx, Apache and lighttpd started on loopback from the configs in `contrib/`
//! (rendered into a temporary prefix: own pid file, logs and ports), the real binary behind
//! them, and an HTTP client checking what a browser would get. ashd is not packaged: its test
//! does what callscgi does, from the handler line in `contrib/ashd/`.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const APP: &str = "frontends_app";
/// Bytes of the streamed response: 320 blocks of 64 KiB.
const BIG_BLOCKS: usize = 320;
/// Blocks of 64 KiB in the answer to `/slow` (`SLOW_BLOCKS` in the app).
const SLOW_BLOCKS: usize = 4;
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

fn contrib(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib").join(path);
    fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

/// Replaces each sample value of a contrib file with the test's, checking it is there.
fn render(text: &str, replacements: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (from, to) in replacements {
        assert!(out.contains(from), "the contrib config no longer holds {from:?}");
        out = out.replace(from, to);
    }
    out
}

// ---------------------------------------------------------------------------
// A small HTTP/1.1 client: one request per connection, Connection: close.
// ---------------------------------------------------------------------------

/// What the HTTP client got.
#[derive(Debug)]
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The app's report: `KEY=VALUE` lines, values as raw bytes.
    fn report(&self, key: &str) -> Vec<u8> {
        let prefix = format!("{key}=");
        self.body
            .split(|b| *b == b'\n')
            .find_map(|line| line.strip_prefix(prefix.as_bytes()))
            .unwrap_or_else(|| panic!("no {key} in the response: {}", show_bytes(&self.body)))
            .to_vec()
    }

    fn report_str(&self, key: &str) -> String {
        String::from_utf8(self.report(key)).expect("ASCII report value")
    }
}

/// Sends `head` (request line and headers, without the final blank line) and `body`, reads
/// the whole response; `chunked` sends the body in three chunks.
fn http(port: u16, head: &str, body: &[u8], chunked: bool) -> HttpResponse {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the frontend");
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).unwrap();
    let mut out = format!("{head}\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n").into_bytes();
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        let third = body.len() / 3 + 1;
        for piece in body.chunks(third) {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else {
        if !body.is_empty() || head.starts_with("POST") {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
    }
    stream.write_all(&out).expect("send the request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("reading the response to {head:?}: {e}"));
    parse_http(raw, head.starts_with("HEAD"))
}

fn parse_http(raw: Vec<u8>, head_only: bool) -> HttpResponse {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {}", show_bytes(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    let body = if head_only {
        rest
    } else if chunked {
        dechunk(&rest)
    } else {
        rest
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
        data = &data[eol + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

// ---------------------------------------------------------------------------
// Frontend processes
// ---------------------------------------------------------------------------

/// A frontend running in the foreground from a config in its own temporary prefix.
struct Frontend {
    name: &'static str,
    child: Child,
    port: u16,
    prefix: TempDir,
    error_log: PathBuf,
}

impl Frontend {
    /// Starts `program args` and waits until it accepts HTTP on `port`.
    fn start(name: &'static str, prefix: TempDir, port: u16, program: &str, args: &[&str]) -> Frontend {
        let log_file = fs::File::create(prefix.path().join("stderr.log")).unwrap();
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let error_log = prefix.path().join("error.log");
        let mut frontend = Frontend {
            name,
            child,
            port,
            prefix,
            error_log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = frontend.child.try_wait().unwrap() {
                panic!("{name} exited with {status} at start:\n{}", frontend.logs());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return frontend;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not listen on {port}:\n{}",
                frontend.logs()
            );
            std::thread::sleep(POLL);
        }
    }

    fn logs(&self) -> String {
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
        format!(
            "--- {} stderr ---\n{}--- error log ---\n{}",
            self.name,
            read(&self.prefix.path().join("stderr.log")),
            read(&self.error_log)
        )
    }

    fn get(&self, target: &str) -> HttpResponse {
        http(self.port, &format!("GET {target} HTTP/1.1"), b"", false)
    }
}

impl Drop for Frontend {
    fn drop(&mut self) {
        let pid = self.child.id();
        let workers = descendants(pid);
        // SAFETY: kill(2) has no memory-safety preconditions.
        kill(pid, libc::SIGTERM);
        if wait_child(&mut self.child, Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for worker in workers {
            // SAFETY: as above; the frontend's own workers, by pid.
            kill(worker, libc::SIGKILL);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// The two backends every frontend gets: the app at the root, and the app at /app2.
struct Backends {
    root: Server,
    mount: Server,
}

impl Backends {
    fn start(mount_over_unix: bool) -> Backends {
        let paths = apps_dir_str();
        let root = Server::start(&["-p", &paths, "-A", APP]);
        let mount_args = ["--script-name", "/app2", "-p", &paths, "-A", APP];
        let mount = if mount_over_unix {
            Server::start_unix(&mount_args)
        } else {
            Server::start(&mount_args)
        };
        Backends { root, mount }
    }

    fn root_addr(&self) -> String {
        self.root.addr.to_string()
    }

    fn mount_addr(&self) -> String {
        self.mount.addr.to_string()
    }

    fn root_port(&self) -> String {
        match &self.root.addr {
            Addr::Tcp(a) => a.port().to_string(),
            Addr::Unix(_) => unreachable!("the root backend listens on TCP"),
        }
    }
}

fn start_nginx(backends: &Backends) -> Frontend {
    let prefix = TempDir::new("nginx");
    let dir = prefix.path().to_str().unwrap().to_string();
    let port = free_tcp_port();
    let site = render(
        &contrib("nginx/scgi-wsgi.conf"),
        &[
            ("127.0.0.1:8080", &format!("127.0.0.1:{port}")),
            ("127.0.0.1:4000", &backends.root_addr()),
            ("/run/scgi-wsgi/app2.sock", &backends.mount_addr()),
        ],
    );
    fs::write(prefix.path().join("site.conf"), site).unwrap();
    let main = format!(
        "daemon off;\nuser root;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log {dir}/access.log;\n\
           client_body_temp_path {dir}/body;\n  scgi_temp_path {dir}/scgi;\n  proxy_temp_path {dir}/proxy;\n\
           fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n\
           include {dir}/site.conf;\n}}\n"
    );
    let conf = prefix.path().join("nginx.conf");
    fs::write(&conf, main).unwrap();
    let conf = conf.to_str().unwrap().to_string();
    let args = ["-p", &dir, "-c", &conf, "-e", &format!("{dir}/error.log")];
    Frontend::start("nginx", prefix, port, "nginx", &args)
}

fn start_apache(backends: &Backends) -> Frontend {
    let prefix = TempDir::new("apache");
    let dir = prefix.path().to_str().unwrap().to_string();
    let port = free_tcp_port();
    let site = render(
        &contrib("apache/scgi-wsgi.conf"),
        &[
            ("*:8080", &format!("127.0.0.1:{port}")),
            ("127.0.0.1:4000", &backends.root_addr()),
            ("127.0.0.1:4001", &backends.mount_addr()),
        ],
    );
    fs::write(prefix.path().join("site.conf"), site).unwrap();
    let modules = "/usr/lib/apache2/modules";
    let load: String = [
        ("mpm_event_module", "mod_mpm_event.so"),
        ("authz_core_module", "mod_authz_core.so"),
        ("proxy_module", "mod_proxy.so"),
        ("proxy_scgi_module", "mod_proxy_scgi.so"),
    ]
    .iter()
    .map(|(name, file)| format!("LoadModule {name} {modules}/{file}\n"))
    .collect();
    // Debian's apache2 refuses to run its children as root: they run as www-data, and the
    // prefix must let them in for nothing but the configuration already read by the parent.
    let main = format!(
        "{load}ServerRoot {dir}\nDefaultRuntimeDir {dir}\nPidFile {dir}/apache.pid\n\
         ErrorLog {dir}/error.log\nLogLevel warn\nServerName localhost\n\
         User www-data\nGroup www-data\nListen 127.0.0.1:{port}\n\
         CustomLog {dir}/access.log \"%h %r %>s %b\"\n\
         Include {dir}/site.conf\n"
    );
    let conf = prefix.path().join("httpd.conf");
    fs::write(&conf, main).unwrap();
    let conf = conf.to_str().unwrap().to_string();
    Frontend::start("apache", prefix, port, "apache2", &["-f", &conf, "-DFOREGROUND"])
}

fn start_lighttpd(backends: &Backends) -> Frontend {
    let prefix = TempDir::new("lighttpd");
    let dir = prefix.path().to_str().unwrap().to_string();
    let port = free_tcp_port();
    let site = render(
        &contrib("lighttpd/scgi-wsgi.conf"),
        &[
            (
                "\"port\" => 4000",
                &format!("\"port\" => {}", backends.root_port()),
            ),
            ("/run/scgi-wsgi/app2.sock", &backends.mount_addr()),
        ],
    );
    fs::write(prefix.path().join("site.conf"), site).unwrap();
    fs::create_dir(prefix.path().join("www")).unwrap();
    fs::create_dir(prefix.path().join("tmp")).unwrap();
    let main = format!(
        "server.document-root = \"{dir}/www\"\nserver.bind = \"127.0.0.1\"\nserver.port = {port}\n\
         server.pid-file = \"{dir}/lighttpd.pid\"\nserver.errorlog = \"{dir}/error.log\"\n\
         server.upload-dirs = ( \"{dir}/tmp\" )\ninclude \"{dir}/site.conf\"\n"
    );
    let conf = prefix.path().join("lighttpd.conf");
    fs::write(&conf, main).unwrap();
    let conf = conf.to_str().unwrap().to_string();
    Frontend::start("lighttpd", prefix, port, "lighttpd", &["-D", "-f", &conf])
}

// ---------------------------------------------------------------------------
// The checks, the same for every frontend
// ---------------------------------------------------------------------------

fn routing_at_root_and_query(front: &Frontend) {
    let r = front.get("/hello/world?x=1&y=%20z");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.report_str("SCRIPT_NAME"), "");
    assert_eq!(r.report_str("PATH_INFO"), "/hello/world");
    assert_eq!(r.report_str("QUERY_STRING"), "x=1&y=%20z");
    let url = r.report_str("URL");
    assert!(url.starts_with("http://127.0.0.1"), "{url}");
    assert!(url.ends_with("/hello/world?x=1&y=%20z"), "{url}");

    let r = front.get("/");
    assert_eq!(
        (r.report_str("SCRIPT_NAME"), r.report_str("PATH_INFO")),
        ("".into(), "/".into())
    );
    // lighttpd without fix-root-scriptname would say SCRIPT_NAME=/one here.
    let r = front.get("/one/two/three");
    assert_eq!(
        (r.report_str("SCRIPT_NAME"), r.report_str("PATH_INFO")),
        ("".into(), "/one/two/three".into())
    );
}

fn routing_under_mount(front: &Frontend) {
    let r = front.get("/app2/x/y?q=1");
    assert_eq!(r.status, 200);
    assert_eq!(r.report_str("SCRIPT_NAME"), "/app2");
    assert_eq!(r.report_str("PATH_INFO"), "/x/y");
    assert_eq!(r.report_str("QUERY_STRING"), "q=1");
    assert!(r.report_str("URL").ends_with("/app2/x/y?q=1"));
    let r = front.get("/app2/");
    assert_eq!(
        (r.report_str("SCRIPT_NAME"), r.report_str("PATH_INFO")),
        ("/app2".into(), "/".into())
    );
}

fn non_ascii_path(front: &Frontend) {
    let r = front.get("/caf%C3%A9/%E2%82%AC?name=%C3%A9");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.report("PATH_INFO"),
        b"/caf\xc3\xa9/\xe2\x82\xac",
        "raw bytes as Latin-1"
    );
    assert_eq!(r.report_str("QUERY_STRING"), "name=%C3%A9", "the query stays raw");
    assert!(r.report_str("URL").ends_with("/caf%C3%A9/%E2%82%AC?name=%C3%A9"));
    let r = front.get("/app2/%C3%A9t%C3%A9");
    assert_eq!(r.report("SCRIPT_NAME"), b"/app2");
    assert_eq!(r.report("PATH_INFO"), b"/\xc3\xa9t\xc3\xa9");
}

fn body_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(data)?;
            child.wait_with_output()
        })
        .expect("python3 for a checksum");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn post_body(front: &Frontend) {
    let body = body_of(300_000);
    let r = http(
        front.port,
        "POST /upload HTTP/1.1\r\nContent-Type: application/octet-stream",
        &body,
        false,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.report_str("REQUEST_METHOD"), "POST");
    assert_eq!(r.report_str("BODY_LEN"), body.len().to_string());
    assert_eq!(r.report_str("BODY_SHA256"), sha256_hex(&body));
}

/// A chunked request body reaches the app whole (nginx, lighttpd); Apache refuses it itself.
fn chunked_body(front: &Frontend, accepted: bool) {
    let body = body_of(100_000);
    let r = http(
        front.port,
        "POST /chunked HTTP/1.1\r\nContent-Type: application/octet-stream",
        &body,
        true,
    );
    if accepted {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.report_str("BODY_LEN"), body.len().to_string());
        assert_eq!(r.report_str("BODY_SHA256"), sha256_hex(&body));
    } else {
        assert_eq!(
            r.status, 411,
            "{} refuses chunked bodies for SCGI with 411",
            front.name
        );
    }
}

fn head_request(front: &Frontend) {
    let r = http(front.port, "HEAD /page HTTP/1.1", b"", false);
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "HEAD got a body: {}", show_bytes(&r.body));
    assert!(r
        .header("Content-Type")
        .unwrap_or_default()
        .starts_with("text/plain"));
}

fn two_cookies(front: &Frontend) {
    let r = front.get("/cookies");
    assert_eq!(r.status, 200);
    assert_eq!(r.all("Set-Cookie"), ["a=1; Path=/", "b=2; Path=/"]);
}

fn streamed_20_mib(front: &Frontend) {
    let r = front.get("/big");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), BIG_BLOCKS * 65536, "the whole 20 MiB arrived");
    let block = b"0123456789abcdef".repeat(4096);
    assert!(
        r.body.chunks(65536).all(|c| c == block.as_slice()),
        "the bytes are intact"
    );
}

fn app_error(front: &Frontend, backend: &Server) {
    let r = front.get("/error");
    assert_eq!(r.status, 500);
    assert!(backend.wait_for_log("the app failed on purpose", Duration::from_secs(10)));
    assert_traceback_prefixed(&backend.stderr_text(), "scgi-wsgi[wsgi]: ERROR: ");
}

/// Every line of the tracebacks in `log` carries `prefix`, as every line the server writes
/// does (the app's own writes to stderr aside).
fn assert_traceback_prefixed(log: &str, prefix: &str) {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| ["Traceback", "File \"", "Error: "].iter().any(|n| l.contains(n)))
        .collect();
    assert!(lines.len() >= 3, "no traceback in:\n{log}");
    for line in lines {
        assert!(
            line.starts_with(prefix),
            "not prefixed with {prefix:?}: {line:?}\n{log}"
        );
    }
}

/// A client that goes away mid-response: the app's iterable is closed, serving goes on.
fn client_disconnects(front: &Frontend, backend: &Server) {
    let mut stream = TcpStream::connect(("127.0.0.1", front.port)).unwrap();
    // The first bytes must come while the app still streams (it ends after a minute).
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        stream,
        "GET /endless HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = vec![0u8; 256 * 1024];
    let mut total = 0;
    while total < 256 * 1024 {
        let n = stream
            .read(&mut got[total..])
            .unwrap_or_else(|e| panic!("{}: no streamed bytes: {e}", front.name));
        assert!(n > 0, "the endless response ended early");
        total += n;
    }
    stream.shutdown(Shutdown::Both).unwrap();
    drop(stream);
    assert!(
        backend.wait_for_log("endless response closed", Duration::from_secs(40)),
        "{} did not pass the disconnect on: the app was not closed",
        front.name
    );
    // Closed because the client left, not because the response ran to its end.
    let log = backend.stderr_text();
    let blocks: usize = log
        .split("endless response closed after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the block count in the close() line");
    assert!(blocks < 6000, "{}: the response ran to its end", front.name);
    assert_eq!(front.get("/after").report_str("PATH_INFO"), "/after");
}

/// Reads a response to `/chunks` until the end, noting when each of its five pieces arrived
/// (counted from `sent`). Returns everything read and the arrival times.
fn chunk_arrivals(stream: &mut impl Read, sent: Instant) -> (Vec<u8>, Vec<Duration>) {
    let mut raw = Vec::new();
    let mut arrivals = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("reading /chunks: {e} after {}", show_bytes(&raw)),
        };
        raw.extend_from_slice(&buf[..n]);
        let at = sent.elapsed();
        while arrivals.len() < 5 {
            let marker = format!("chunk-{}\n", arrivals.len());
            if !raw.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                break;
            }
            arrivals.push(at);
        }
    }
    assert_eq!(arrivals.len(), 5, "not every piece arrived: {}", show_bytes(&raw));
    (raw, arrivals)
}

/// The five pieces, made 0.2 s apart, reached the client spread out, not all at the end.
fn assert_streamed(name: &str, arrivals: &[Duration]) {
    eprintln!("{name}: /chunks pieces arrived at {arrivals:.2?}");
    let spread = arrivals[4] - arrivals[0];
    assert!(
        spread >= Duration::from_millis(500),
        "{name} held the streamed response back: its pieces arrived at {arrivals:.2?}"
    );
}

/// GET `target` (a `/chunks` page) through the frontend: the arrival time of each piece.
fn http_chunk_arrivals(front: &Frontend, target: &str) -> Vec<Duration> {
    let mut stream = TcpStream::connect(("127.0.0.1", front.port)).unwrap();
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    let port = front.port;
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let (raw, arrivals) = chunk_arrivals(&mut stream, Instant::now());
    let r = parse_http(raw, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"chunk-0\nchunk-1\nchunk-2\nchunk-3\nchunk-4\n");
    arrivals
}

/// A streamed response, through the frontend as its contrib config ships it.
fn streaming_as_shipped(front: &Frontend) {
    assert_streamed(front.name, &http_chunk_arrivals(front, "/chunks"));
}

/// The app sees the Host the client sent, port included, once: the URLs it builds for
/// itself (Flask's `url_for(..., _external=True)`) keep the port.
fn host_keeps_its_port(front: &Frontend) {
    let port = front.port;
    let r = front.get("/where");
    assert_eq!(
        r.report_str("HTTP_HOST"),
        format!("127.0.0.1:{port}"),
        "{}",
        front.name
    );
    for mount in ["", "/app2"] {
        let r = front.get(&format!("{mount}/flask/url"));
        assert_eq!(
            (r.status, String::from_utf8_lossy(&r.body).into_owned()),
            (200, format!("http://127.0.0.1:{port}{mount}/flask/url\n")),
            "{}",
            front.name
        );
    }
}

/// Everything, against one frontend.
fn exercise(front: &Frontend, backends: &Backends, chunked_accepted: bool) {
    routing_at_root_and_query(front);
    routing_under_mount(front);
    non_ascii_path(front);
    post_body(front);
    chunked_body(front, chunked_accepted);
    head_request(front);
    two_cookies(front);
    streamed_20_mib(front);
    app_error(front, &backends.root);
    client_disconnects(front, &backends.root);
    streaming_as_shipped(front);
    host_keeps_its_port(front);
}

#[test]
fn nginx_tcp_and_unix_socket() {
    let backends = Backends::start(true);
    let front = start_nginx(&backends);
    exercise(&front, &backends, true);
    // The way back to buffering that the config's comment gives: the app asks for it.
    let arrivals = http_chunk_arrivals(&front, "/chunks?buffered");
    assert!(
        arrivals[4] - arrivals[0] < Duration::from_millis(100),
        "X-Accel-Buffering: yes did not make nginx buffer: {arrivals:.2?}"
    );
}

#[test]
fn apache_mod_proxy_scgi() {
    let backends = Backends::start(false);
    let front = start_apache(&backends);
    exercise(&front, &backends, false);
}

#[test]
fn lighttpd_mod_scgi() {
    let backends = Backends::start(true);
    let front = start_lighttpd(&backends);
    exercise(&front, &backends, true);
}

// ---------------------------------------------------------------------------
// ashd: what callscgi does, with the command line from contrib/ashd
// ---------------------------------------------------------------------------

/// The scgi-wsgi arguments of the `exec callscgi scgi-wsgi ...` line in a contrib ashd file.
fn callscgi_args(file: &str) -> Vec<String> {
    let text = contrib(file);
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("exec callscgi scgi-wsgi "))
        .unwrap_or_else(|| panic!("no 'exec callscgi scgi-wsgi' line in contrib/{file}"));
    line.split_whitespace().map(str::to_string).collect()
}

/// One scgi-wsgi process started the way callscgi starts it: a listening Unix socket on fd 0.
struct Backend {
    child: Child,
    socket: PathBuf,
    stderr: PathBuf,
}

impl Backend {
    fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// What callscgi does in its anonymous mode: it makes a Unix socket, starts the program with
/// it on fd 0 and connects to it once per request. When a connect is refused (the program
/// no longer listens), it sends that program SIGTERM (`killcuraddr()` in callscgi.c) and
/// starts a new one on a new socket. At its own end it sends SIGTERM too.
struct CallScgi {
    args: Vec<String>,
    current: Backend,
    /// Programs replaced after a refused connect, each with when it was sent SIGTERM.
    replaced: Vec<(Backend, Instant)>,
    dir: TempDir,
}

impl CallScgi {
    fn start(args: &[String]) -> CallScgi {
        let dir = TempDir::new("callscgi");
        let current = Self::spawn(args, &dir, 0);
        CallScgi {
            args: args.to_vec(),
            current,
            replaced: Vec::new(),
            dir,
        }
    }

    /// Binds the `n`th socket and starts the program with it as fd 0 (our copy closes, so a
    /// program that stops listening makes connects fail).
    fn spawn(args: &[String], dir: &TempDir, n: usize) -> Backend {
        let socket = dir.path().join(format!("scgi-{n}.sock"));
        let listener = UnixListener::bind(&socket).unwrap();
        let stderr = dir.path().join(format!("stderr-{n}.log"));
        let child = server_command()
            .args(args)
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Backend {
            child,
            socket,
            stderr,
        }
    }

    fn stderr_text(&self) -> String {
        self.current.stderr_text()
    }

    /// Waits until the current program's stderr holds `needle`.
    fn wait_for_log(&self, needle: &str) -> bool {
        wait_until(Duration::from_secs(20), || self.stderr_text().contains(needle))
    }

    /// Connects for a request, replacing the program as callscgi does when it is refused.
    fn connect(&mut self) -> Stream {
        let addr = Addr::Unix(self.current.socket.clone());
        match Stream::connect(&addr) {
            Ok(stream) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                self.replace();
                let addr = Addr::Unix(self.current.socket.clone());
                Stream::connect(&addr).unwrap_or_else(|e| panic!("the new program's socket: {e}"))
            }
            Err(e) => panic!("cannot connect: {e}; stderr:\n{}", self.stderr_text()),
        }
    }

    /// callscgi's `killcuraddr()`, then a new program on a new socket.
    fn replace(&mut self) {
        let old_pid = self.current.child.id();
        kill(old_pid, libc::SIGTERM);
        let signalled = Instant::now();
        let next = Self::spawn(&self.args, &self.dir, self.replaced.len() + 1);
        let old = std::mem::replace(&mut self.current, next);
        self.replaced.push((old, signalled));
    }

    /// Sends one request and reads the whole response.
    fn send(&mut self, req: &ScgiRequest) -> Response {
        let mut stream = self.connect();
        stream.send_all(&req.encode(), REQUEST_TIMEOUT).unwrap();
        let (raw, end) = stream.read_until_eof(REQUEST_TIMEOUT);
        assert_eq!(end, ReadEnd::Eof, "stderr:\n{}", self.stderr_text());
        Response::try_parse(raw).unwrap_or_else(|(why, _)| panic!("{why}; stderr:\n{}", self.stderr_text()))
    }

    /// One request in callscgi's order (see [`callscgi_request`]); `extra` headers are added,
    /// an extra CONTENT_LENGTH replaces the body's length (ashd's chunked bodies).
    fn request(
        &mut self,
        script_name: &str,
        path_info: &str,
        query: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut req = callscgi_request(script_name, path_info, query, body);
        for (name, value) in extra {
            req = if *name == "CONTENT_LENGTH" {
                req.set_header(name, value)
            } else {
                req.header(name, value)
            };
        }
        self.send(&req)
    }

    /// callscgi's end: SIGTERM, and the server exits cleanly.
    fn terminate(mut self) {
        kill(self.current.child.id(), libc::SIGTERM);
        let status = wait_child(&mut self.current.child, Duration::from_secs(20));
        assert_eq!(
            status.map(|s| s.success()),
            Some(true),
            "stderr:\n{}",
            self.stderr_text()
        );
    }
}

impl Drop for CallScgi {
    fn drop(&mut self) {
        for backend in std::iter::once(&mut self.current).chain(self.replaced.iter_mut().map(|(b, _)| b)) {
            let _ = backend.child.kill();
            let _ = backend.child.wait();
        }
    }
}

/// A request as callscgi sends it: CONTENT_LENGTH late, X-Ash-* headers, a Content-Type.
fn callscgi_request(script_name: &str, path_info: &str, query: &str, body: &[u8]) -> ScgiRequest {
    let uri = format!(
        "{script_name}{path_info}{}{query}",
        if query.is_empty() { "" } else { "?" }
    );
    let method = if body.is_empty() { "GET" } else { "POST" };
    let content_length = body.len().to_string();
    let fields: [(&str, &str); 20] = [
        ("SERVER_SOFTWARE", "ashd/0.13"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SCGI", "1"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_METHOD", method),
        ("REQUEST_URI", &uri),
        ("SCRIPT_NAME", script_name),
        ("PATH_INFO", path_info),
        ("QUERY_STRING", query),
        ("SERVER_NAME", "127.0.0.1:8080"),
        ("SERVER_PORT", "8080"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "40000"),
        ("HTTP_HOST", "127.0.0.1:8080"),
        ("CONTENT_TYPE", "application/octet-stream"),
        ("CONTENT_LENGTH", &content_length),
        ("HTTP_X_ASH_ADDRESS", "127.0.0.1"),
        ("HTTP_X_ASH_PORT", "40000"),
        ("HTTP_X_ASH_PROTOCOL", "http"),
        ("HTTP_X_ASH_CONNECTION_ID", "1"),
    ];
    let mut req = ScgiRequest {
        headers: Vec::new(),
        body: Vec::new(),
    };
    for (name, value) in fields {
        req = req.header(name, value);
    }
    req.raw_body(body)
}

fn report_value(r: &Response, key: &str) -> Vec<u8> {
    let prefix = format!("{key}=");
    r.body
        .split(|b| *b == b'\n')
        .find_map(|line| line.strip_prefix(prefix.as_bytes()))
        .unwrap_or_else(|| panic!("no {key} in {}", show_bytes(&r.body)))
        .to_vec()
}

#[test]
fn ashd_callscgi_under_patplex() {
    let mut args = callscgi_args("ashd/patplex.rc");
    assert_eq!(args[..2], ["--script-name", "/app2"]);
    // The config's module path and module are the user's; the test serves its own app.
    let at = args
        .iter()
        .position(|a| a == "-p")
        .expect("-p in the handler line");
    args.truncate(at);
    args.extend(["-p".into(), apps_dir_str(), "-A".into(), APP.into()]);
    let mut server = CallScgi::start(&args);

    // patplex took "app2/" off the path: SCRIPT_NAME=/app2/, PATH_INFO without its slash.
    let r = server.request("/app2/", "x/%C3%A9", "a=1", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(report_value(&r, "SCRIPT_NAME"), b"/app2");
    assert_eq!(
        report_value(&r, "PATH_INFO"),
        b"/x/%C3%A9",
        "a decoded path holding a literal % is not decoded again"
    );
    assert_eq!(report_value(&r, "QUERY_STRING"), b"a=1");
    let r = server.request("/app2/", "\u{e9}", "", &[], b"");
    assert_eq!(report_value(&r, "PATH_INFO"), "/\u{e9}".as_bytes());

    let body = body_of(50_000);
    let r = server.request("/app2/", "up", "", &[], &body);
    assert_eq!(report_value(&r, "BODY_LEN"), body.len().to_string().as_bytes());
    let r = server.request("/app2/", "cookies", "", &[], b"");
    assert_eq!(r.headers_named("Set-Cookie"), ["a=1; Path=/", "b=2; Path=/"]);
    server.terminate();
}

/// The single-app line from the comment of contrib/ashd/patplex.rc, serving the test's app.
fn callscgi_root_args() -> Vec<String> {
    let text = contrib("ashd/patplex.rc");
    let line = text
        .lines()
        .find_map(|l| l.split_once("-- callscgi scgi-wsgi ").map(|(_, rest)| rest))
        .expect("the htparser line in contrib/ashd/patplex.rc");
    let mut args: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    assert_eq!(args[0], "-p");
    args[1] = apps_dir_str();
    args[3] = APP.into();
    args
}

#[test]
fn ashd_callscgi_at_the_root() {
    let mut server = CallScgi::start(&callscgi_root_args());
    let r = server.request("", "/a/b", "", &[], b"");
    assert_eq!(report_value(&r, "SCRIPT_NAME"), b"");
    assert_eq!(report_value(&r, "PATH_INFO"), b"/a/b");
    assert_eq!(report_value(&r, "HTTP_HOST"), b"127.0.0.1:8080");
    // ashd passes a chunked body on as CONTENT_LENGTH=0 followed by the de-chunked bytes:
    // the app sees an empty body, and the response still arrives whole.
    let r = server.request("", "/c", "", &[("CONTENT_LENGTH", "0")], &body_of(20_000));
    assert_eq!(report_value(&r, "BODY_LEN"), b"0");
    assert_eq!(report_value(&r, "REQUEST_METHOD"), b"POST");
    // What callscgi passes on: the Host with its port, and the pieces of a streamed response
    // as the app makes them (what htparser then does with them is ashd's).
    let r = server.request("", "/flask/url", "", &[], b"");
    assert_eq!(
        (r.status, r.text()),
        (200, "http://127.0.0.1:8080/flask/url\n".into())
    );
    let mut stream = server.connect();
    stream
        .send_all(
            &callscgi_request("", "/chunks", "", b"").encode(),
            REQUEST_TIMEOUT,
        )
        .unwrap();
    let (raw, arrivals) = chunk_arrivals(&mut stream, Instant::now());
    assert_eq!(Response::parse(raw).status, 200);
    assert_streamed("ashd (simulated callscgi)", &arrivals);
    assert_eq!(server.request("", "/error", "", &[], b"").status, 500);
    assert!(server.wait_for_log("the app failed on purpose"));
    assert_traceback_prefixed(&server.stderr_text(), "scgi-wsgi[wsgi]: ERROR: ");
    server.terminate();
}

/// A graceful drain holds behind callscgi. SIGTERM while a request runs, then a new request:
/// callscgi's connect is refused, so it starts a new server and sends the old one SIGTERM
/// again. That second SIGTERM continues the drain: the request in flight gets its whole answer.
#[test]
fn ashd_callscgi_restarting_the_server_does_not_cut_its_drain_short() {
    let mut server = CallScgi::start(&callscgi_root_args());
    let mut in_flight = server.connect();
    in_flight
        .send_all(&callscgi_request("", "/slow", "3", b"").encode(), REQUEST_TIMEOUT)
        .unwrap();
    let reader = std::thread::spawn(move || {
        let (raw, end) = in_flight.read_until_eof(REQUEST_TIMEOUT);
        (raw, end, Instant::now())
    });
    assert!(
        server.wait_for_log("slow request started"),
        "{}",
        server.stderr_text()
    );
    let first = server.current.child.id();
    kill(first, libc::SIGTERM);
    assert!(
        server.wait_for_log("no longer accepting"),
        "{}",
        server.stderr_text()
    );

    // The next request: refused by the draining server, served by a new one.
    let r = server.request("", "/after", "", &[], b"");
    assert_eq!(report_value(&r, "PATH_INFO"), b"/after");
    let (old, second_sigterm) = &mut server.replaced[0];
    assert_eq!(
        old.child.id(),
        first,
        "callscgi replaced the server that was refusing"
    );

    let (raw, end, finished) = reader.join().unwrap();
    assert!(
        finished > *second_sigterm,
        "the slow request ended before the second SIGTERM: nothing was tested"
    );
    assert_eq!(end, ReadEnd::Eof, "{}", old.stderr_text());
    let response = Response::try_parse(raw)
        .unwrap_or_else(|(why, raw)| panic!("{why}: {}\n{}", show_bytes(&raw), old.stderr_text()));
    assert_eq!(response.status, 200, "{}", old.stderr_text());
    let block = b"0123456789abcdef".repeat(4096);
    assert_eq!(response.body, block.repeat(SLOW_BLOCKS), "the whole body arrived");

    let status = wait_child(&mut old.child, Duration::from_secs(20));
    let log = old.stderr_text();
    assert_eq!(status.map(|s| s.success()), Some(true), "{log}");
    assert!(
        log.contains("SIGTERM again: still finishing 1 open connection(s)"),
        "{log}"
    );
    assert!(!log.contains("stopping at once"), "{log}");
    server.terminate();
}

/// What ashd does with request bodies, named in the log: htparser forwards no body without a
/// Content-Type (callscgi still sends the length), and a chunked upload arrives as
/// CONTENT_LENGTH 0 with the de-chunked bytes after the head.
#[test]
fn ashd_bodies_the_app_cannot_get_are_explained_in_the_log() {
    let mut args = vec!["--body-timeout".to_string(), "1".into()];
    args.extend(callscgi_root_args());
    let mut server = CallScgi::start(&args);

    let no_type = callscgi_request("", "/up", "", b"")
        .method("POST")
        .without("CONTENT_TYPE")
        .set_header("CONTENT_LENGTH", "10");
    assert_eq!(server.send(&no_type).status, 408);
    let with_type = no_type.clone().header("CONTENT_TYPE", "text/plain");
    assert_eq!(server.send(&with_type).status, 408);
    let log = server.stderr_text();
    let stalls: Vec<&str> = log.lines().filter(|l| l.contains("--body-timeout")).collect();
    assert_eq!(stalls.len(), 2, "{log}");
    assert!(
        stalls[0].contains("no Content-Type") && stalls[0].contains("ashd"),
        "{log}"
    );
    assert!(
        !stalls[1].contains("ashd"),
        "a body with a type just stalled: {log}"
    );

    let chunked = callscgi_request("", "/c", "", &body_of(20_000))
        .set_header("CONTENT_LENGTH", "0")
        .header("HTTP_TRANSFER_ENCODING", "chunked");
    let r = server.send(&chunked);
    assert_eq!(report_value(&r, "BODY_LEN"), b"0");
    assert!(
        server.wait_for_log("HTTP_TRANSFER_ENCODING chunked"),
        "{}",
        server.stderr_text()
    );
    let log = server.stderr_text();
    let warning = log
        .lines()
        .find(|l| l.contains("HTTP_TRANSFER_ENCODING chunked"))
        .unwrap();
    assert!(warning.contains("WARNING") && warning.contains("ashd"), "{log}");
    // The bytes may come a moment after the head, the answer already made: the server waits
    // for them (briefly) rather than let them reset the answer, and says so too.
    let late = callscgi_request("", "/c", "", b"")
        .method("POST")
        .header("HTTP_TRANSFER_ENCODING", "chunked");
    let mut stream = server.connect();
    stream.send_all(&late.encode(), REQUEST_TIMEOUT).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stream.send_all(&body_of(5_000), REQUEST_TIMEOUT).unwrap();
    let (raw, end) = stream.read_until_eof(REQUEST_TIMEOUT);
    assert_eq!(end, ReadEnd::Eof);
    assert_eq!(report_value(&Response::parse(raw), "BODY_LEN"), b"0");
    assert!(
        wait_until(Duration::from_secs(10), || server
            .stderr_text()
            .matches("HTTP_TRANSFER_ENCODING chunked")
            .count()
            == 2),
        "{}",
        server.stderr_text()
    );
    // An empty chunked body (nginx sends CONTENT_LENGTH 0 and the header) is no news.
    let empty = callscgi_request("", "/c", "", b"")
        .method("POST")
        .header("HTTP_TRANSFER_ENCODING", "chunked");
    assert_eq!(server.send(&empty).status, 200);
    assert_eq!(
        server
            .stderr_text()
            .matches("HTTP_TRANSFER_ENCODING chunked")
            .count(),
        2,
        "{}",
        server.stderr_text()
    );
    server.terminate();
}

#[test]
fn ashd_dirplex_wsgidir() {
    let args = callscgi_args("ashd/dirplex.rc");
    assert_eq!(args, ["scgi_wsgi.wsgidir"]);
    let rc = contrib("ashd/dirplex.rc");
    assert!(rc.contains("xset python-handler chain") && rc.contains("filename *.wsgi"));
    let dir = TempDir::new("dirplex");
    let file = dir.path().join("index.wsgi");
    fs::write(
        &file,
        "def application(environ, start_response):\n\
         \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
         \x20   return [('%s|%s' % (environ['SCRIPT_NAME'], environ['PATH_INFO'])).encode('latin-1')]\n",
    )
    .unwrap();
    let mut server = CallScgi::start(&args);
    let filename = file.to_str().unwrap();
    // What dirplex then callscgi send for /dir/index.wsgi/more.
    let extra = [
        ("HTTP_X_ASH_PYTHON_HANDLER", "chain"),
        ("SCRIPT_FILENAME", filename),
    ];
    let r = server.request("/dir/index.wsgi", "/more", "", &extra, b"");
    assert_eq!(
        (r.status, r.text()),
        (200, "/dir/index.wsgi|/more".into()),
        "{}",
        server.stderr_text()
    );
    // A file that fails to load: a 500, and its traceback in the log, line by line.
    let broken = dir.path().join("broken.wsgi");
    fs::write(&broken, "def application(:\n").unwrap();
    let extra = [
        ("HTTP_X_ASH_PYTHON_HANDLER", "chain"),
        ("SCRIPT_FILENAME", broken.to_str().unwrap()),
    ];
    assert_eq!(
        server.request("/dir/broken.wsgi", "", "", &extra, b"").status,
        500
    );
    assert!(server.wait_for_log("SyntaxError"), "{}", server.stderr_text());
    assert_traceback_prefixed(&server.stderr_text(), "scgi-wsgi[wsgidir]: ERROR: ");
    server.terminate();
}

// ---------------------------------------------------------------------------
// systemd units
// ---------------------------------------------------------------------------

/// The unit files parse, and ExecStart runs the binary with valid flags on the socket that
/// StandardInput=socket passes as fd 0.
#[test]
fn systemd_units_verify_and_their_command_serves() {
    let service = contrib("systemd/scgi-wsgi.service");
    let socket = contrib("systemd/scgi-wsgi.socket");
    assert!(
        service.contains("\nStandardInput=socket\n"),
        "the service takes the socket on fd 0"
    );
    assert!(socket.contains("\nAccept=no\n"));
    let exec = service
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(words[0], "/usr/local/bin/scgi-wsgi");

    let dir = TempDir::new("systemd");
    let unit_dir = dir.path();
    fs::write(
        unit_dir.join("scgi-wsgi.service"),
        render(
            &service,
            &[
                ("/usr/local/bin/scgi-wsgi", BIN),
                (
                    "WorkingDirectory=/srv/app",
                    &format!("WorkingDirectory={}", apps_dir_str()),
                ),
            ],
        ),
    )
    .unwrap();
    fs::write(unit_dir.join("scgi-wsgi.socket"), &socket).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit_dir.join("scgi-wsgi.socket"))
        .arg(unit_dir.join("scgi-wsgi.service"))
        .output()
        .expect("systemd-analyze (installed by .ci/setup)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let relevant: Vec<&str> = said.lines().filter(|l| l.contains("scgi-wsgi")).collect();
    assert!(
        out.status.success() && relevant.is_empty(),
        "systemd-analyze verify:\n{said}"
    );

    // Run ExecStart as systemd would, with the test's module path and app.
    let at = words.iter().position(|w| *w == "-p").unwrap();
    let apps = apps_dir_str();
    words[at + 1] = &apps;
    words[at + 3] = APP;
    let args: Vec<String> = words[1..].iter().map(|w| w.to_string()).collect();
    let mut server = CallScgi::start(&args);
    let r = server.request("", "/via/systemd", "", &[], b"");
    assert_eq!(report_value(&r, "PATH_INFO"), b"/via/systemd");
    server.terminate();
}

// ---------------------------------------------------------------------------
// The path rule straight over SCGI, for what no shipped frontend sends
// ---------------------------------------------------------------------------

/// Only REQUEST_URI (no SCRIPT_NAME, PATH_INFO or DOCUMENT_URI): its path, percent-decoded,
/// raw bytes as Latin-1, is PATH_INFO; the query string stays raw.
#[test]
fn request_uri_alone_gives_the_decoded_path() {
    let apps = apps_dir_str();
    let server = Server::start(&["-p", &apps, "-A", APP]);
    let req = ScgiRequest::get("/")
        .without("SCRIPT_NAME")
        .without("PATH_INFO")
        .set_header("REQUEST_URI", "/caf%C3%A9/x%2Fy%zz?q=%C3%A9")
        .set_header("QUERY_STRING", "q=%C3%A9");
    let r = server.request(&req);
    assert_eq!(report_value(&r, "SCRIPT_NAME"), b"");
    assert_eq!(report_value(&r, "PATH_INFO"), b"/caf\xc3\xa9/x/y%zz");
    assert_eq!(report_value(&r, "QUERY_STRING"), b"q=%C3%A9");

    let mounted = Server::start(&["--script-name", "/app2/", "-p", &apps, "-A", APP]);
    let req = ScgiRequest::get("/")
        .without("SCRIPT_NAME")
        .without("PATH_INFO")
        .set_header("REQUEST_URI", "/app2/z%20z");
    let r = mounted.request(&req);
    assert_eq!(report_value(&r, "SCRIPT_NAME"), b"/app2");
    assert_eq!(report_value(&r, "PATH_INFO"), b"/z z");
    // A path outside the mount (the frontend already took the prefix off) is kept whole.
    let r = mounted.get("/elsewhere");
    assert_eq!(report_value(&r, "SCRIPT_NAME"), b"/app2");
    assert_eq!(report_value(&r, "PATH_INFO"), b"/elsewhere");
}

#[test]
fn a_bad_mount_point_is_refused_at_start() {
    let run = run_raw(
        &["-T", "127.0.0.1:0", "--script-name", "app2", "-A", APP],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(run.status.and_then(|s| s.code()), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("--script-name") && run.stderr.contains("starts with '/'"),
        "{}",
        run.stderr
    );
}
