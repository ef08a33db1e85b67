//! The listening socket: the one on fd 0 (callscgi's convention), TCP, or a Unix path;
//! and the accepted connection type that the event loop reads and writes.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use socket2::{Domain, Socket, Type};

use crate::base::config::{AllowList, ListenSpec};
use crate::base::error::ListenError;
use crate::base::log::{info, warning};
use crate::base::metrics::{self, Refused};
use crate::base::sys;

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP, IPv4 or IPv6.
    Tcp(TcpListener),
    /// A Unix stream socket; `created` is the path to remove at exit when we made it.
    Unix(UnixListener, Option<PathBuf>),
}

/// An accepted connection.
#[derive(Debug)]
pub enum Stream {
    /// Over TCP.
    Tcp(TcpStream),
    /// Over a Unix socket.
    Unix(UnixStream),
}

impl Listener {
    /// Opens the listener the configuration names. `defer_accept` applies to a TCP socket
    /// created here (see [`DEFER_ACCEPT_SECS`]); a socket passed in keeps its settings.
    pub fn open(spec: &ListenSpec, backlog: i32, defer_accept: bool) -> Result<Listener, ListenError> {
        match spec {
            ListenSpec::Stdin => from_fd(0),
            ListenSpec::Activated => adopt(ACTIVATED_FD, ListenError::ActivatedNotListening),
            ListenSpec::Tcp { host, port } => bind_tcp(host, *port, backlog, defer_accept),
            ListenSpec::Unix { path, mode } => bind_unix(path, *mode, backlog),
        }
    }

    /// Accepts one connection; `WouldBlock` when none is waiting.
    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                // Responses are written whole or in large pieces: do not hold back small tails.
                // Linux copies TCP_NODELAY from the listener (see `nodelay_for_accepted`),
                // which saves a system call per connection; elsewhere set it here.
                #[cfg(not(target_os = "linux"))]
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
        }
    }

    /// How long the kernel holds back a TCP connection that has sent nothing before letting
    /// it be accepted anyway (`TCP_DEFER_ACCEPT`, however it was set); zero when it does not.
    pub fn accept_deferral(&self) -> Duration {
        match self {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Listener::Tcp(l) => sockopt_int(l.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT)
                .map_or(Duration::ZERO, |secs| Duration::from_secs(secs.max(0) as u64)),
            _ => Duration::ZERO,
        }
    }

    /// A description for log lines, e.g. `tcp 127.0.0.1:4000` or `unix /run/app.sock`.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(addr) => format!("tcp {addr}"),
                Err(_) => "tcp".into(),
            },
            Listener::Unix(l, _) => match l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf))
            {
                Some(path) => format!("unix {}", path.display()),
                None => "unix socket".into(),
            },
        }
    }

    /// Leaves the socket file alone at drop: for a worker process, whose master owns the file.
    pub fn forget_socket_file(&mut self) {
        if let Listener::Unix(_, created) = self {
            *created = None;
        }
    }

    /// The descriptor of the listening socket.
    pub fn raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l, _) => l.as_raw_fd(),
        }
    }

    /// The socket file this process created, if any.
    pub fn created_socket_file(&self) -> Option<&Path> {
        match self {
            Listener::Unix(_, Some(path)) => Some(path),
            _ => None,
        }
    }

    /// Removes the socket file this process created, if any.
    pub fn remove_socket_file(&mut self) {
        if let Listener::Unix(_, Some(path)) = self {
            match std::fs::remove_file(&*path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warning!(
                    "server",
                    "cannot remove the socket file {}: {e} (after --user, its directory must be writable by that user)",
                    path.display()
                ),
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.remove_socket_file();
    }
}

impl Source for Listener {
    fn register(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.register(registry, token, interests),
            Listener::Unix(l, _) => l.register(registry, token, interests),
        }
    }
    fn reregister(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.reregister(registry, token, interests),
            Listener::Unix(l, _) => l.reregister(registry, token, interests),
        }
    }
    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.deregister(registry),
            Listener::Unix(l, _) => l.deregister(registry),
        }
    }
}

impl Stream {
    /// Closes the sending side, so the peer sees the end of the response.
    pub fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }

    /// Writes several buffers in one call.
    pub fn write_vectored_bufs(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
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

impl Source for Stream {
    fn register(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(registry, token, interests),
            Stream::Unix(s) => s.register(registry, token, interests),
        }
    }
    fn reregister(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(registry, token, interests),
            Stream::Unix(s) => s.reregister(registry, token, interests),
        }
    }
    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(registry),
            Stream::Unix(s) => s.deregister(registry),
        }
    }
}

/// Least time between two log lines about peers refused for `--allow-from`.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// When the last refusal line was logged, and how many refusals were not logged since.
static REFUSALS: Mutex<(Option<Instant>, u64)> = Mutex::new((None, 0));

/// Whether the peer of a connection just accepted may be served under `--allow-from`
/// (`allow`; `None`: anyone). One that may not is counted, logged (one line, at most every
/// 10 s with the count of those in between), and should be closed at once: it never reaches
/// the app. A connection whose peer is already gone is not served either.
pub fn admitted(stream: &Stream, allow: Option<&AllowList>) -> bool {
    let (Some(allow), Stream::Tcp(tcp)) = (allow, stream) else {
        return true;
    };
    let peer = match tcp.peer_addr() {
        Ok(peer) => peer.ip(),
        Err(_) => return false,
    };
    if allow.permits(peer) {
        return true;
    }
    metrics::refused(Refused::NotAllowed);
    let mut refusals = REFUSALS.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    if refusals
        .0
        .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL)
    {
        refusals.1 += 1;
        return false;
    }
    let earlier = std::mem::take(&mut refusals.1);
    refusals.0 = Some(now);
    drop(refusals);
    let more = if earlier > 0 {
        format!(" ({earlier} more refused since the last such line)")
    } else {
        String::new()
    };
    warning!(
        "server",
        "refused a connection from {peer}: not in --allow-from{more}"
    );
    false
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> ListenError {
    let what = what.into();
    move |source| ListenError::Io { what, source }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_sockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is an int that outlives the call, and `len` is its size.
    sys::check(unsafe { libc::setsockopt(fd, level, name, (&value as *const libc::c_int).cast(), len) })
        .map(|_| ())
}

fn sockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is an int that outlives the call, and `len` holds its size.
    sys::check(unsafe {
        libc::getsockopt(fd, level, name, (&mut value as *mut libc::c_int).cast(), &mut len)
    })?;
    Ok(value)
}

/// The first descriptor systemd's socket activation passes (`SD_LISTEN_FDS_START`).
pub const ACTIVATED_FD: RawFd = 3;

/// Takes over an already listening socket, e.g. the one callscgi passes on fd 0. A listening
/// socket on fd 0 moves to a descriptor of its own, and fd 0 becomes /dev/null: the app's
/// child processes then get an empty standard input, not the listening socket (or, with the
/// socket close-on-exec, no standard input at all).
pub fn from_fd(fd: RawFd) -> Result<Listener, ListenError> {
    if fd == 0 && sockopt_int(0, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).is_ok_and(|v| v != 0) {
        if let Ok(moved) = move_off_stdin() {
            return adopt(moved, ListenError::Fd0NotListening);
        }
    }
    adopt(fd, ListenError::Fd0NotListening)
}

/// Copies fd 0 to a new close-on-exec descriptor and puts /dev/null on fd 0; returns the copy.
fn move_off_stdin() -> io::Result<RawFd> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) takes and returns descriptor numbers only.
    let moved = sys::check(unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: dup2 takes descriptor numbers only; both are open.
    if let Err(e) = sys::check(unsafe { libc::dup2(null.as_raw_fd(), 0) }) {
        // SAFETY: `moved` was made above and is owned by nothing else.
        let _ = sys::check(unsafe { libc::close(moved) });
        return Err(e);
    }
    Ok(moved)
}

/// Takes over listening socket `fd`; `not_listening` words the error when it is not one.
fn adopt(fd: RawFd, not_listening: fn(String) -> ListenError) -> Result<Listener, ListenError> {
    let listening = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::ENOTSOCK) => "it is not a socket".to_string(),
            Some(libc::EBADF) => "it is closed".to_string(),
            _ => e.to_string(),
        };
        not_listening(why)
    })?;
    if listening == 0 {
        return Err(not_listening("it is a socket, but not listening".into()));
    }
    let domain = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
        .map_err(io_error(format!("cannot query fd {fd}")))?;
    // SAFETY: `fd` is an open socket (SO_ACCEPTCONN answered), passed to this process; from
    // here on the listener owns it, for the life of the process.
    let socket = unsafe { Socket::from_raw_fd(fd) };
    socket
        .set_nonblocking(true)
        .map_err(io_error(format!("cannot make fd {fd} non-blocking")))?;
    let _ = socket.set_cloexec(true);
    match domain {
        libc::AF_INET | libc::AF_INET6 => {
            nodelay_for_accepted(&socket);
            Ok(Listener::Tcp(TcpListener::from_std(socket.into())))
        }
        libc::AF_UNIX => Ok(Listener::Unix(UnixListener::from_std(socket.into()), None)),
        other => {
            std::mem::forget(socket);
            if fd == 0 {
                Err(ListenError::Fd0Family(other))
            } else {
                Err(not_listening(format!(
                    "it is a socket of unsupported address family {other}"
                )))
            }
        }
    }
}

/// Sets TCP_NODELAY on a listening socket: Linux gives accepted connections the listener's
/// setting, so no connection needs its own system call for it.
fn nodelay_for_accepted(socket: &Socket) {
    let _ = socket.set_tcp_nodelay(true);
}

/// The `TCP_DEFER_ACCEPT` of TCP sockets this program creates: a connection is accepted once
/// its first bytes arrive (a frontend sends its request as it connects), so the loop is woken
/// once per request, finds it whole, and never has to watch the connection for it. One that
/// sends nothing is let through after about this long (the kernel resends its SYN-ACK once),
/// and its head timeout counts from when it connected all the same (see `Server::adopt`).
pub const DEFER_ACCEPT_SECS: libc::c_int = 1;

fn bind_tcp(host: &str, port: u16, backlog: i32, defer_accept: bool) -> Result<Listener, ListenError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|source| ListenError::Resolve {
            host: host.to_string(),
            port,
            source,
        })?
        .collect();
    let mut last_error = None;
    for addr in addrs {
        let bound = (|| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
            socket.set_reuse_address(true)?;
            if addr.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.bind(&addr.into())?;
            nodelay_for_accepted(&socket);
            #[cfg(any(target_os = "linux", target_os = "android"))]
            if defer_accept {
                set_sockopt_int(
                    socket.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_DEFER_ACCEPT,
                    DEFER_ACCEPT_SECS,
                )?;
            }
            socket.listen(backlog)?;
            socket.set_nonblocking(true)?;
            Ok::<_, io::Error>(socket)
        })();
        match bound {
            Ok(socket) => return Ok(Listener::Tcp(TcpListener::from_std(socket.into()))),
            Err(source) => {
                last_error = Some(ListenError::Bind {
                    addr: addr.to_string(),
                    source,
                })
            }
        }
    }
    Err(last_error.unwrap_or_else(|| ListenError::Resolve {
        host: host.to_string(),
        port,
        source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
    }))
}

fn bind_unix(path: &Path, mode: Option<u32>, backlog: i32) -> Result<Listener, ListenError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // Another server may still own it: only a refused connection proves it stale.
            match StdUnixStream::connect(path) {
                Ok(_) => return Err(ListenError::UnixInUse(path.to_path_buf())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    info!("server", "removing stale socket {}", path.display());
                    std::fs::remove_file(path)
                        .map_err(io_error(format!("cannot remove stale socket {}", path.display())))?;
                }
                Err(e) => {
                    return Err(ListenError::Io {
                        what: format!("cannot check whether {} is in use", path.display()),
                        source: e,
                    })
                }
            }
        }
        Ok(_) => return Err(ListenError::UnixNotSocket(path.to_path_buf())),
        Err(_) => {}
    }
    let bound = (|| {
        let socket = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
        socket.bind(&socket2::SockAddr::unix(path)?)?;
        Ok::<_, io::Error>(socket)
    })()
    .map_err(|source| ListenError::Bind {
        addr: path.display().to_string(),
        source,
    })?;
    // The file is ours now: remove it again if the rest of the set-up fails.
    let setup = (|| {
        if let Some(mode) = mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        bound.listen(backlog)?;
        bound.set_nonblocking(true)
    })();
    if let Err(source) = setup {
        let _ = std::fs::remove_file(path);
        return Err(ListenError::Bind {
            addr: path.display().to_string(),
            source,
        });
    }
    Ok(Listener::Unix(
        UnixListener::from_std(bound.into()),
        Some(path.to_path_buf()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_tcp_connections_have_nodelay() {
        let listener = bind_tcp("127.0.0.1", 0, 16, false).unwrap();
        let Listener::Tcp(tcp) = &listener else {
            panic!("a TCP listener");
        };
        let _client = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        // The connection is queued once connect() returns; accept may still race: retry briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let stream = loop {
            match listener.accept() {
                Ok(stream) => break stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                    std::thread::yield_now()
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        let Stream::Tcp(stream) = stream else {
            panic!("a TCP stream");
        };
        assert!(
            stream.nodelay().unwrap(),
            "TCP_NODELAY is off on an accepted connection"
        );
    }

    #[test]
    fn tcp_sockets_created_here_defer_accepting_unless_told_not_to() {
        let deferring = bind_tcp("127.0.0.1", 0, 16, true).unwrap();
        assert_eq!(
            deferring.accept_deferral(),
            std::time::Duration::from_secs(DEFER_ACCEPT_SECS as u64)
        );
        let Listener::Tcp(tcp) = &deferring else {
            panic!("a TCP listener");
        };
        // A connection that has sent nothing is not handed over; one that has, is.
        let _silent = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        let mut talking = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        std::io::Write::write_all(&mut talking, b"1:").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut accepted = loop {
            match deferring.accept() {
                Ok(stream) => break stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        let mut first = [0u8; 2];
        accepted.read_exact(&mut first).unwrap();
        assert_eq!(
            &first, b"1:",
            "the first connection handed over is the one that spoke"
        );
        assert_eq!(
            deferring.accept().map(|_| ()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "the silent connection was handed over at once"
        );

        let plain = bind_tcp("127.0.0.1", 0, 16, false).unwrap();
        assert_eq!(plain.accept_deferral(), std::time::Duration::ZERO);
    }
}
