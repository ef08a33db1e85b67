//! Log lines in the original's format, `scgi-wsgi[NAME]: LEVEL: message`, on stderr or syslog;
//! in a worker under a master, `scgi-wsgi[NAME]: LEVEL: worker PID: message`.
//!
//! Each line goes out in one `write(2)` so lines from different threads never interleave,
//! and the Python side's `logging` output (configured to the same format, with the same
//! worker tag: see [`worker_tag`]) shares the stream.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};

use super::sys::retry;

/// Severity of a log line; names match Python's `logging` level names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Per-request detail, off by default.
    Debug = 10,
    /// Start-up, shutdown and other normal events.
    Info = 20,
    /// Something a client or an app did wrong; the server goes on.
    Warning = 30,
    /// Something failed; the server goes on.
    Error = 40,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
        }
    }

    fn syslog_priority(self) -> libc::c_int {
        match self {
            Level::Debug => libc::LOG_DEBUG,
            Level::Info => libc::LOG_INFO,
            Level::Warning => libc::LOG_WARNING,
            Level::Error => libc::LOG_ERR,
        }
    }
}

static USE_SYSLOG: AtomicBool = AtomicBool::new(false);
static MIN_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
/// This process's pid when it is a worker under a master (its lines name it); 0 otherwise.
static WORKER_PID: AtomicU32 = AtomicU32::new(0);

/// Marks later lines as this worker's: `worker PID: ` after the level (right after fork).
pub fn set_worker(pid: u32) {
    WORKER_PID.store(pid, Ordering::Relaxed);
}

/// What follows `LEVEL: ` on every line of this process: `worker PID: ` in a worker under a
/// master, else nothing. Python's `logging` is given the same (see `wsgi::interp`).
pub fn worker_tag() -> String {
    match WORKER_PID.load(Ordering::Relaxed) {
        0 => String::new(),
        pid => format!("worker {pid}: "),
    }
}

/// Sends later lines to syslog (facility daemon) instead of stderr, as `ASHD_USESYSLOG` asks.
pub fn use_syslog() {
    // openlog keeps the pointer: the identity must live for the rest of the process.
    static IDENT: &[u8] = b"scgi-wsgi\0";
    // SAFETY: IDENT is NUL-terminated and static; openlog has no other requirement.
    unsafe { libc::openlog(IDENT.as_ptr().cast(), libc::LOG_PID, libc::LOG_DAEMON) };
    USE_SYSLOG.store(true, Ordering::Relaxed);
}

/// Lowers or raises the threshold below which lines are dropped.
pub fn set_min_level(level: Level) {
    MIN_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether a line at `level` would be written (to skip formatting work otherwise).
pub fn enabled(level: Level) -> bool {
    level as u8 >= MIN_LEVEL.load(Ordering::Relaxed)
}

/// Writes one log line (or, for a multi-line message, one prefixed line per message line).
pub fn write(level: Level, name: &str, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let mut message = String::with_capacity(128);
    let _ = message.write_fmt(args);
    let tag = worker_tag();
    if USE_SYSLOG.load(Ordering::Relaxed) {
        for line in message.lines() {
            let text =
                format!("[{name}]: {}: {tag}{}", level.name(), printable(line, &['\t'])).replace('\0', " ");
            if let Ok(text) = std::ffi::CString::new(text) {
                let priority = libc::LOG_DAEMON | level.syslog_priority();
                // SAFETY: a constant "%s" format with one NUL-terminated string argument.
                unsafe { libc::syslog(priority, c"%s".as_ptr(), text.as_ptr()) };
            }
        }
        return;
    }
    let mut out = String::with_capacity(message.len() + 48);
    for line in message.lines() {
        // A carriage return or a terminal escape from a client's bytes must not rewrite
        // what a reader of the log sees.
        let _ = writeln!(
            out,
            "scgi-wsgi[{name}]: {}: {tag}{}",
            level.name(),
            printable(line, &['\t'])
        );
    }
    write_stderr(out.as_bytes());
}

/// `text` with its control characters (line breaks included, except those in `keep`)
/// written as escapes, for values that come from clients: `GET /x\r\n...` stays on one line.
pub fn printable<'a>(text: &'a str, keep: &[char]) -> std::borrow::Cow<'a, str> {
    if !text.chars().any(|c| c.is_control() && !keep.contains(&c)) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' if !keep.contains(&c) => out.push_str("\\n"),
            '\r' if !keep.contains(&c) => out.push_str("\\r"),
            c if c.is_control() && !keep.contains(&c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.into()
}

/// `GET /path?query` for log lines, from a request's SCGI header block (REQUEST_URI, else
/// SCRIPT_NAME and PATH_INFO), control characters escaped.
pub fn describe_request(header_block: &[u8]) -> String {
    let value = |name: &[u8]| {
        crate::proto::scgi::headers(header_block)
            .find_map(|(n, v)| (n == name).then_some(v))
            .unwrap_or_default()
    };
    let text = |name: &[u8]| String::from_utf8_lossy(value(name)).into_owned();
    let uri = match value(b"REQUEST_URI") {
        b"" => text(b"SCRIPT_NAME") + &text(b"PATH_INFO"),
        uri => String::from_utf8_lossy(uri).into_owned(),
    };
    let method = text(b"REQUEST_METHOD");
    format!("{} {}", printable(&method, &[]), printable(&uri, &[]))
}

/// Prints a start-up failure on one line and gives exit status 1. In a worker under a master
/// (whose own line then says the worker failed) it is an ERROR line naming the worker.
pub fn fatal(message: impl std::fmt::Display) -> u8 {
    if WORKER_PID.load(Ordering::Relaxed) != 0 {
        write(Level::Error, "server", format_args!("{message}"));
    } else {
        write_stderr(format!("scgi-wsgi: {message}\n").as_bytes());
    }
    1
}

/// Writes bytes to fd 2 in as few calls as the kernel allows, ignoring failures (nowhere to report them).
pub fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe the live slice `bytes`.
        let written = retry(|| unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) });
        match written {
            Ok(n) if n > 0 => bytes = &bytes[n as usize..],
            _ => return,
        }
    }
}

/// Logs at INFO under a component name: `info!("server", "listening on {}", addr)`.
macro_rules! info {
    ($name:expr, $($arg:tt)+) => { $crate::base::log::write($crate::base::log::Level::Info, $name, format_args!($($arg)+)) };
}
/// Logs at WARNING under a component name.
macro_rules! warning {
    ($name:expr, $($arg:tt)+) => { $crate::base::log::write($crate::base::log::Level::Warning, $name, format_args!($($arg)+)) };
}
/// Logs at ERROR under a component name.
macro_rules! error {
    ($name:expr, $($arg:tt)+) => { $crate::base::log::write($crate::base::log::Level::Error, $name, format_args!($($arg)+)) };
}
/// Logs at DEBUG under a component name (skipped cheaply when debug lines are off).
macro_rules! debug {
    ($name:expr, $($arg:tt)+) => {
        if $crate::base::log::enabled($crate::base::log::Level::Debug) {
            $crate::base::log::write($crate::base::log::Level::Debug, $name, format_args!($($arg)+))
        }
    };
}
pub(crate) use {debug, error, info, warning};

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped_unless_kept() {
        assert_eq!(printable("GET /plain", &[]), "GET /plain");
        assert_eq!(printable("a\r\nb\x1b[K\u{85}", &[]), r"a\r\nb\x1b[K\x85");
        assert_eq!(printable("tab\there", &['\t']), "tab\there");
        assert_eq!(printable("tab\there", &[]), r"tab\x09here");
        assert_eq!(printable("café 日本", &[]), "café 日本");
    }
}
