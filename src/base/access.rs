//! The access log: one line per request in a combined-log-like format, written by its own
//! thread (so no Python thread waits on the disk) and reopened after SIGUSR1 for log rotation.
//!
//! Line format: `REMOTE_ADDR - - [23/Nov/2026:18:25:01 +0000] "GET /uri HTTP/1.1" 200 1234
//! "referer" "user agent" 0.001234` (the last field is the seconds from accept to the end of
//! the response).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::log::{debug, error};

enum Message {
    Line(String),
    Flush(SyncSender<()>),
}

struct AccessLog {
    lines: Sender<Message>,
}

static LOG: OnceLock<AccessLog> = OnceLock::new();

enum Sink {
    Stdout,
    File(PathBuf, File),
}

fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Creates the log file if needed and hands it to `owner` (uid, gid): the process opens it
/// again after it has dropped its privileges, and after each rotation.
pub fn prepare(path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    if path == Path::new("-") {
        return Ok(());
    }
    let file = open_file(path)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Opens the log and starts its writer thread; from here on [`begin`] returns entries.
pub fn start(path: &Path) -> io::Result<()> {
    let sink = if path == Path::new("-") {
        Sink::Stdout
    } else {
        Sink::File(path.to_path_buf(), open_file(path)?)
    };
    let reopen = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(libc::SIGUSR1, Arc::clone(&reopen))?;
    let (sender, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || write_lines(sink, receiver, &reopen))?;
    let _ = LOG.set(AccessLog { lines: sender });
    Ok(())
}

fn write_lines(mut sink: Sink, receiver: Receiver<Message>, reopen: &AtomicBool) {
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Ok(first) = receiver.recv() {
        let mut flushes = Vec::new();
        let mut next = Some(first);
        // Take everything already queued, so a burst costs one write.
        while let Some(message) = next {
            match message {
                Message::Line(line) => batch.extend_from_slice(line.as_bytes()),
                Message::Flush(done) => flushes.push(done),
            }
            next = receiver.try_recv().ok();
        }
        if reopen.swap(false, Ordering::Relaxed) {
            if let Sink::File(path, file) = &mut sink {
                match open_file(path) {
                    Ok(fresh) => *file = fresh,
                    Err(e) => error!(
                        "server",
                        "cannot reopen the access log {}: {e}; still writing to the old file",
                        path.display()
                    ),
                }
            }
        }
        if !batch.is_empty() {
            let written = match &mut sink {
                Sink::Stdout => io::stdout().lock().write_all(&batch),
                Sink::File(_, file) => file.write_all(&batch),
            };
            if let Err(e) = written {
                error!("server", "cannot write the access log: {e}");
            }
            batch.clear();
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Waits (briefly) until every line logged so far is written; for the end of the process.
pub fn flush() {
    if let Some(log) = LOG.get() {
        let (done, wait) = mpsc::sync_channel(1);
        if log.lines.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(5));
        }
    }
}

/// What the log needs to know about one request; logged when dropped, so every way out of
/// a request is logged. Until [`Entry::set_result`], it records a 500 (the answer to a
/// request that failed before the app ran).
pub struct Entry {
    remote: String,
    method: String,
    uri: String,
    protocol: String,
    referer: String,
    user_agent: String,
    accepted: Instant,
    status: u16,
    bytes: u64,
    /// Logged elsewhere: nothing to write at drop.
    discarded: bool,
}

/// Starts an entry for the request with this SCGI header block, or `None` when there is no
/// access log and no `-v` (which logs each request at DEBUG level).
pub fn begin(header_block: &[u8], accepted: Instant) -> Option<Entry> {
    if LOG.get().is_none() && !super::log::enabled(super::log::Level::Debug) {
        return None;
    }
    let mut entry = Entry {
        remote: String::new(),
        method: String::new(),
        uri: String::new(),
        protocol: String::new(),
        referer: String::new(),
        user_agent: String::new(),
        accepted,
        status: 500,
        bytes: 0,
        discarded: false,
    };
    let mut script_name = String::new();
    let mut path_info = String::new();
    let mut query = String::new();
    for (name, value) in crate::proto::scgi::headers(header_block) {
        let slot = match name {
            b"REMOTE_ADDR" => &mut entry.remote,
            b"REQUEST_METHOD" => &mut entry.method,
            b"REQUEST_URI" => &mut entry.uri,
            b"SERVER_PROTOCOL" => &mut entry.protocol,
            b"HTTP_REFERER" => &mut entry.referer,
            b"HTTP_USER_AGENT" => &mut entry.user_agent,
            b"SCRIPT_NAME" => &mut script_name,
            b"PATH_INFO" => &mut path_info,
            b"QUERY_STRING" => &mut query,
            _ => continue,
        };
        if slot.is_empty() {
            escape_into(slot, value);
        }
    }
    if entry.uri.is_empty() {
        // nginx and callscgi send REQUEST_URI; rebuild it for frontends that do not.
        entry.uri = script_name + &path_info;
        if !query.is_empty() {
            entry.uri.push('?');
            entry.uri.push_str(&query);
        }
    }
    Some(entry)
}

impl Entry {
    /// Records the status sent and the number of body bytes.
    pub fn set_result(&mut self, status: u16, bytes: u64) {
        self.status = status;
        self.bytes = bytes;
    }

    /// Drops the entry without a line: the request's line was written by another entry.
    pub fn discard(mut self) {
        self.discarded = true;
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if self.discarded {
            return;
        }
        debug!(
            "server",
            "{} \"{} {}\" {} {} bytes, {:.1} ms",
            if self.remote.is_empty() { "-" } else { &self.remote },
            self.method,
            self.uri,
            self.status,
            self.bytes,
            self.accepted.elapsed().as_secs_f64() * 1000.0
        );
        let Some(log) = LOG.get() else { return };
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        let line = format!(
            "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" {:.6}\n",
            dash(&self.remote),
            clf_time(SystemTime::now()),
            dash(&self.method),
            dash(&self.uri),
            dash(&self.protocol),
            self.status,
            self.bytes,
            dash(&self.referer),
            dash(&self.user_agent),
            self.accepted.elapsed().as_secs_f64()
        );
        let _ = log.lines.send(Message::Line(line));
    }
}

/// Appends `value` with `"`, `\` and bytes outside printable ASCII as `\xHH`, as nginx does,
/// so a client cannot forge fields or lines.
fn escape_into(out: &mut String, value: &[u8]) {
    for &b in value {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\x{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
}

/// `23/Nov/2026:18:25:01 +0000` (always UTC).
fn clf_time(now: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_780), (2026, 11, 23));
        let t = UNIX_EPOCH + Duration::from_secs(1_795_449_145);
        assert_eq!(clf_time(t), "23/Nov/2026:15:52:25 +0000");
    }

    #[test]
    fn escaping() {
        let mut out = String::new();
        escape_into(&mut out, b"a\"b\\c\nd\xe9");
        assert_eq!(out, "a\\x22b\\x5Cc\\x0Ad\\xE9");
    }
}
