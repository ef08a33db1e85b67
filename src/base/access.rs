//! The access log: one line per request (in a [`LineFormat`]: combined by default, JSON, or
//! a template), written by its own thread (so no Python thread waits on the disk) and
//! reopened after SIGUSR1 for log rotation.
//!
//! Every way out of a request goes through an [`Entry`], which also counts the request for
//! the metrics when they are on (`base::metrics`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

pub use super::access_format::LineFormat;
use super::access_format::Record;
use super::log::{self, debug, error, Level};
use super::metrics;

enum Message {
    Line(String),
    Flush(SyncSender<()>),
}

struct AccessLog {
    lines: Sender<Message>,
    format: LineFormat,
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

/// Opens the log and starts its writer thread; from here on entries write lines in `format`.
pub fn start(path: &Path, format: LineFormat) -> io::Result<()> {
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
    let _ = LOG.set(AccessLog {
        lines: sender,
        format,
    });
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

/// What the log needs to know about one request; written when dropped, so every way out of
/// a request is logged (and counted). Until [`Entry::set_result`], it records a 500 (the
/// answer to a request that failed before the app ran).
pub struct Entry {
    accepted: Instant,
    head_at: Instant,
    status: u16,
    bytes: u64,
    /// The request was handed to the app side (not refused by the loop).
    in_app: bool,
    /// Logged elsewhere: nothing to write or count at drop.
    discarded: bool,
    /// The request's fields, when a line is to be written (an access log, or `-v`).
    detail: Option<Box<Record>>,
}

/// Whether entries are wanted at all: an access log, `-v`, or metrics.
fn wanted() -> (bool, bool) {
    let lines = LOG.get().is_some() || log::enabled(Level::Debug);
    (lines, lines || metrics::enabled())
}

/// Starts an entry for a request handed to the app side, with this SCGI header block, accepted
/// at `accepted` and whose head was in at `head_at`; `None` when there is no access log, no
/// `-v` and no metrics.
pub fn begin(header_block: &[u8], accepted: Instant, head_at: Instant) -> Option<Entry> {
    let (lines, any) = wanted();
    if !any {
        return None;
    }
    Some(Entry {
        accepted,
        head_at,
        status: 500,
        bytes: 0,
        in_app: true,
        discarded: false,
        detail: lines.then(|| Box::new(record(header_block))),
    })
}

/// Starts an entry for an answer the loop makes itself (a refusal), with what is known of
/// the request (nothing, before its head is in).
pub fn begin_answer(header_block: &[u8], accepted: Instant) -> Option<Entry> {
    let mut entry = begin(header_block, accepted, accepted)?;
    entry.in_app = false;
    Some(entry)
}

/// The request's fields, from its header block.
fn record(header_block: &[u8]) -> Record {
    let mut record = Record::default();
    let mut script_name = Vec::new();
    let mut path_info = Vec::new();
    for (name, value) in crate::proto::scgi::headers(header_block) {
        let slot = match name {
            b"REMOTE_ADDR" => &mut record.remote,
            b"REQUEST_METHOD" => &mut record.method,
            b"REQUEST_URI" => &mut record.uri,
            b"SERVER_PROTOCOL" => &mut record.protocol,
            b"HTTP_REFERER" => &mut record.referer,
            b"HTTP_USER_AGENT" => &mut record.user_agent,
            b"SCRIPT_NAME" => &mut script_name,
            b"PATH_INFO" => &mut path_info,
            b"QUERY_STRING" => &mut record.query,
            _ => continue,
        };
        if slot.is_empty() {
            slot.extend_from_slice(value);
        }
    }
    if record.uri.is_empty() {
        // nginx and callscgi send REQUEST_URI; rebuild it for frontends that do not.
        record.path = [script_name, path_info].concat();
        record.uri = record.path.clone();
        if !record.query.is_empty() {
            record.uri.push(b'?');
            record.uri.extend_from_slice(&record.query);
        }
    } else {
        let end = memchr::memchr(b'?', &record.uri).unwrap_or(record.uri.len());
        record.path = record.uri[..end].to_vec();
    }
    record
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
        metrics::request_ended(self.status, self.head_at, self.in_app);
        let Some(mut record) = self.detail.take() else {
            return;
        };
        record.status = self.status;
        record.bytes = self.bytes;
        record.duration = self.accepted.elapsed();
        debug!(
            "server",
            "{} \"{} {}\" {} {} bytes, {:.1} ms",
            String::from_utf8_lossy(if record.remote.is_empty() {
                b"-"
            } else {
                &record.remote
            }),
            log::printable(&String::from_utf8_lossy(&record.method), &[]),
            log::printable(&String::from_utf8_lossy(&record.uri), &[]),
            record.status,
            record.bytes,
            record.duration.as_secs_f64() * 1000.0
        );
        let Some(access) = LOG.get() else { return };
        record.time = SystemTime::now();
        record.pid = std::process::id();
        let _ = access.lines.send(Message::Line(access.format.line(&record)));
    }
}
