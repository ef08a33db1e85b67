//! One connection's state machine: read the head, read the body, wait for the app while
//! writing what it produces, then close. No Poll and no Python here: the server drives it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::listen::Stream;
use crate::base::config::Limits;
use crate::base::log::{self, warning};
use crate::base::metrics;
use crate::base::sys;
use crate::proto::cgi::Answer;
use crate::proto::scgi::{self, HeadError, HeadInfo, Status};
use crate::seam::notifier::{ConnId, Notifier};
use crate::seam::outbox::{Chunk, End, Outbox};
use crate::seam::request::{Body, Request};

/// How long a closing connection may take to send its end of stream after ours.
pub const LINGER: Duration = Duration::from_secs(2);

/// Most bytes one read takes while the head is incomplete. The rest of a larger body is read
/// straight into the request's buffer, or left in the kernel while workers are busy.
pub const HEAD_READ: usize = 8 * 1024;

/// Most bytes one connection's turn reads before the loop moves on to the others; the rest is
/// read in the loop's next round ([`ReadOutcome::Again`]). Without it, a fast upload on the
/// same host could keep the loop reading it, and nobody else served, until it ended.
pub const READ_BUDGET: usize = 1 << 20;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the netstring head.
    Head,
    /// Reading CONTENT_LENGTH body bytes.
    Body,
    /// The request is with the app; its output is written as it comes.
    Running,
    /// Writing a response the loop made itself (an error), then closing.
    Closing,
    /// Our side is shut down; waiting briefly for the peer's end so unread input does not
    /// turn our last bytes into a reset.
    Lingering,
}

/// The answer to a request refused before it reached the app (see [`Answer`]), for a head
/// that can never be valid: 400, naming the limit when it was too large.
fn refusal(e: HeadError) -> Answer {
    // The SCGI reference treats an oversized head as malformed: 400, naming the limit.
    let cause = match e {
        HeadError::TooLarge { .. } => format!("{e} (--max-head)"),
        _ => format!("malformed SCGI request: {e}"),
    };
    Answer::new("400 Bad Request", cause)
}

/// What reading produced.
#[derive(Debug)]
pub enum ReadOutcome {
    /// Nothing to act on yet.
    Pending,
    /// Head and body are complete: hand them to the app.
    Complete,
    /// The request cannot be served; answer with this and close.
    Refuse(Answer),
    /// The peer closed or reset the connection.
    Closed,
    /// The head is in; the body is left unread (in the kernel's buffer) for now, because
    /// enough requests already wait for a worker. [`Conn::resume`] lets it be read.
    Deferred,
    /// [`READ_BUDGET`] bytes were read and the socket may hold more: read again in the next
    /// round (no readiness event will come for what is already there).
    Again,
}

/// What a connection's socket is registered for in the loop's epoll set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Watching {
    /// Not registered.
    Nothing,
    /// Readable (edge-triggered).
    Readable,
    /// Readable and writable.
    ReadWrite,
}

/// One client connection.
pub struct Conn {
    /// The socket.
    pub stream: Stream,
    /// Tells this connection apart from later ones in the same slot.
    pub serial: u64,
    /// Where it is in its life.
    pub phase: Phase,
    /// When it was accepted.
    pub accepted: Instant,
    /// Last time bytes moved in the direction that matters for the phase.
    pub last_progress: Instant,
    /// When the head was in (when it is).
    head_at: Instant,
    /// The app's response channel, while the request is with the app.
    pub outbox: Option<Arc<Outbox>>,
    buf: Vec<u8>,
    head: Option<HeadInfo>,
    spill: Option<File>,
    body_received: u64,
    /// Body reading has begun (beyond what came with the head): it is not deferred again.
    body_started: bool,
    /// The body is deferred: the loop does not read it, and it cannot stall.
    paused: bool,
    out: VecDeque<Chunk>,
    out_pos: usize,
    end: Option<End>,
    /// Input arrived beyond the request (or is still arriving): close gently.
    extra_input: bool,
    /// A request (`METHOD URI`) with CONTENT_LENGTH 0 and a chunked Transfer-Encoding, until
    /// bytes arrive past its head: ashd's way of passing a chunked upload on, whose body the
    /// app never sees. Logged once when they come.
    unread_upload: Option<String>,
    /// The client has finished sending (a read gave end of stream). Once the request is in,
    /// that is a half-close, not a departure: the response still goes to it.
    peer_eof: bool,
    /// Bytes one turn may read ([`READ_BUDGET`]; smaller in tests).
    read_budget: usize,
    /// What the loop's epoll set watches the socket for: nothing while a request that came
    /// whole with its connection runs (it never needs the loop), readable once the loop must
    /// wait for input, writable too once output waits for room.
    pub watching: Watching,
}

impl Conn {
    /// A freshly accepted connection.
    pub fn new(stream: Stream, serial: u64, now: Instant) -> Conn {
        Conn {
            stream,
            serial,
            phase: Phase::Head,
            accepted: now,
            last_progress: now,
            head_at: now,
            outbox: None,
            buf: Vec::new(),
            head: None,
            spill: None,
            body_received: 0,
            body_started: false,
            paused: false,
            out: VecDeque::new(),
            out_pos: 0,
            end: None,
            extra_input: false,
            unread_upload: None,
            peer_eof: false,
            read_budget: READ_BUDGET,
            watching: Watching::Nothing,
        }
    }

    /// When this connection times out in its current phase, if it can.
    pub fn deadline(&self, limits: &Limits) -> Option<Instant> {
        match self.phase {
            Phase::Head => Some(self.accepted + limits.head_timeout),
            Phase::Body if self.paused => None,
            Phase::Body => Some(self.last_progress + limits.body_timeout),
            Phase::Running if self.out.is_empty() => None,
            Phase::Running | Phase::Closing => Some(self.last_progress + limits.write_timeout),
            Phase::Lingering => Some(self.last_progress + LINGER),
        }
    }

    /// Bytes of the head received so far (for log lines about stalled clients).
    pub fn bytes_received(&self) -> usize {
        // `buf` holds the head, then the body unless it went to a file.
        match &self.head {
            Some(head) => head.head_len + self.body_received as usize,
            None => self.buf.len(),
        }
    }

    /// The SCGI header block, once the head is in (empty before), for the access log.
    pub fn header_block(&self) -> &[u8] {
        match &self.head {
            Some(head) if self.buf.len() >= head.payload.end => &self.buf[head.payload.clone()],
            _ => &[],
        }
    }

    /// Whether the request names a Content-Type (a non-empty CONTENT_TYPE or HTTP_CONTENT_TYPE),
    /// once the head is in: ashd forwards no body without one.
    pub fn has_content_type(&self) -> bool {
        crate::proto::scgi::headers(self.header_block()).any(|(name, value)| {
            (name == b"CONTENT_TYPE" || name == b"HTTP_CONTENT_TYPE") && !value.is_empty()
        })
    }

    /// The declared body length and how much of it arrived.
    pub fn body_progress(&self) -> (u64, u64) {
        let declared = self.head.as_ref().map_or(0, |h| h.content_length);
        (self.body_received, declared)
    }

    /// Whether the body is deferred (see [`ReadOutcome::Deferred`]).
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Lets a deferred body be read; its stall timer starts afresh.
    pub fn resume(&mut self) {
        self.paused = false;
        self.last_progress = Instant::now();
    }

    /// Reads what the socket has, until it would block, and advances the state machine.
    /// `may_read_body` is asked once, before an in-memory body starts to be read: false leaves
    /// it unread ([`ReadOutcome::Deferred`]).
    pub fn on_readable(
        &mut self,
        scratch: &mut [u8],
        limits: &Limits,
        may_read_body: &mut dyn FnMut() -> bool,
    ) -> ReadOutcome {
        let mut taken = 0usize;
        loop {
            if taken >= self.read_budget {
                return ReadOutcome::Again;
            }
            if self.phase == Phase::Body && self.spill.is_none() {
                if !self.body_started {
                    if !may_read_body() {
                        self.paused = true;
                        return ReadOutcome::Deferred;
                    }
                    self.body_started = true;
                }
                let before = self.body_received;
                match self.read_body_in_place(self.read_budget - taken) {
                    Ok(None) => {
                        taken += (self.body_received - before) as usize;
                        continue;
                    }
                    Ok(Some(outcome)) => return outcome,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Pending,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return ReadOutcome::Closed,
                }
            }
            let room = self.read_budget - taken;
            let wanted = if self.phase == Phase::Head {
                HEAD_READ.min(room)
            } else {
                room
            }
            .min(scratch.len());
            let window = &mut scratch[..wanted];
            let n = match self.stream.read(window) {
                Ok(0) => {
                    self.peer_eof = true;
                    return match self.phase {
                        // The client shut down its sending side after its request: it still
                        // reads (a reset, should it have left, shows as an error instead).
                        Phase::Running | Phase::Closing => ReadOutcome::Pending,
                        Phase::Head | Phase::Body | Phase::Lingering => ReadOutcome::Closed,
                    };
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return ReadOutcome::Closed,
            };
            taken += n;
            match self.phase {
                Phase::Head | Phase::Body => {
                    self.last_progress = Instant::now();
                    match self.absorb(&window[..n], limits) {
                        ReadOutcome::Pending => {}
                        done => return done,
                    }
                }
                // Anything after the request is not ours to read; drop it, but remember it,
                // and tell the producer, which must then leave the close to the loop.
                _ => {
                    if !std::mem::replace(&mut self.extra_input, true) {
                        if let Some(outbox) = &self.outbox {
                            outbox.note_extra_input();
                        }
                    }
                    self.note_unread_upload();
                }
            }
        }
    }

    fn absorb(&mut self, mut data: &[u8], limits: &Limits) -> ReadOutcome {
        if self.phase == Phase::Head {
            self.buf.extend_from_slice(data);
            let info = match scgi::parse_head(&self.buf, limits.max_head) {
                Ok(Status::Partial) => return ReadOutcome::Pending,
                Ok(Status::Complete(info)) => info,
                Err(e) => return ReadOutcome::Refuse(refusal(e)),
            };
            let head_len = info.head_len;
            let content_length = info.content_length;
            if content_length == 0 && info.chunked {
                self.unread_upload = Some(log::describe_request(&self.buf[info.payload.clone()]));
            }
            // Kept before any refusal, so the access log can name the request.
            self.head = Some(info);
            self.head_at = self.last_progress;
            if content_length > limits.max_body {
                return ReadOutcome::Refuse(Answer::new(
                    "413 Content Too Large",
                    format!(
                        "request body of {content_length} bytes exceeds the {}-byte limit (--max-body)",
                        limits.max_body
                    ),
                ));
            }
            self.phase = Phase::Body;
            // The body bytes that came with the head already follow it in `buf`: leave them
            // there rather than copying them out and back, and drop what is beyond the body.
            let arrived = (self.buf.len() - head_len) as u64;
            let wanted = arrived.min(content_length);
            if wanted < arrived {
                self.extra_input = true;
                self.note_unread_upload();
            }
            if self.unread_upload.is_some() {
                // Its bytes may still be on their way: the close waits for them (a while, see
                // LINGER) rather than let them reset the answer.
                self.extra_input = true;
            }
            self.buf.truncate(head_len + wanted as usize);
            self.body_received = wanted;
            if content_length > limits.body_buffer {
                let mut file = match tempfile::tempfile() {
                    Ok(file) => file,
                    Err(e) => {
                        return ReadOutcome::Refuse(Answer::new(
                            "503 Service Unavailable",
                            format!("cannot create a temporary file for a {content_length}-byte body: {e}"),
                        ))
                    }
                };
                if let Err(e) = file.write_all(&self.buf[head_len..]) {
                    return ReadOutcome::Refuse(Answer::new(
                        "503 Service Unavailable",
                        format!("cannot store the request body in a temporary file: {e}"),
                    ));
                }
                self.buf.truncate(head_len);
                self.spill = Some(file);
            }
            // An in-memory body gets its room when its reading starts (`read_body_in_place`):
            // a deferred one holds no more than what came with the head.
            return if wanted == content_length {
                ReadOutcome::Complete
            } else {
                ReadOutcome::Pending
            };
        }
        if self.phase == Phase::Body {
            return self.absorb_body(std::mem::take(&mut data));
        }
        ReadOutcome::Pending
    }

    /// Reads the rest of an in-memory body straight into the request's buffer (no copy through
    /// the scratch buffer). It asks for one byte more than the body: if that comes, input goes
    /// on past the request, which the close must allow for. `Ok(None)`: more may be read now.
    fn read_body_in_place(&mut self, at_most: usize) -> io::Result<Option<ReadOutcome>> {
        let declared = self.head.as_ref().map_or(0, |h| h.content_length);
        let remaining = (declared - self.body_received) as usize;
        self.buf.reserve_exact(remaining + 1);
        let spare = self.buf.spare_capacity_mut();
        let want = (remaining + 1).min(at_most.max(1));
        // SAFETY: `spare` is writable memory of at least `remaining + 1` (>= `want`) bytes owned
        // by `buf`; recv writes at most `want` and reports how many it wrote.
        let got =
            sys::check(unsafe { libc::recv(self.stream.as_raw_fd(), spare.as_mut_ptr().cast(), want, 0) })?;
        if got == 0 {
            self.peer_eof = true;
            return Ok(Some(ReadOutcome::Closed));
        }
        let got = got as usize;
        let taken = got.min(remaining);
        if got > remaining {
            self.extra_input = true;
        }
        // SAFETY: recv initialised the first `got` (>= `taken`) spare bytes.
        unsafe { self.buf.set_len(self.buf.len() + taken) };
        self.body_received += taken as u64;
        self.last_progress = Instant::now();
        Ok((self.body_received == declared).then_some(ReadOutcome::Complete))
    }

    fn absorb_body(&mut self, data: &[u8]) -> ReadOutcome {
        let declared = self.head.as_ref().map_or(0, |h| h.content_length);
        let wanted = (declared - self.body_received).min(data.len() as u64) as usize;
        if wanted < data.len() {
            self.extra_input = true;
        }
        let chunk = &data[..wanted];
        if let Some(file) = &mut self.spill {
            if let Err(e) = file.write_all(chunk) {
                return ReadOutcome::Refuse(Answer::new(
                    "503 Service Unavailable",
                    format!("cannot store the request body in a temporary file: {e}"),
                ));
            }
        } else {
            self.buf.extend_from_slice(chunk);
        }
        self.body_received += wanted as u64;
        if self.body_received == declared {
            ReadOutcome::Complete
        } else {
            ReadOutcome::Pending
        }
    }

    /// Input arrived past the request (seen by whoever held the connection): close gently.
    pub fn note_extra_input(&mut self) {
        self.extra_input = true;
        self.note_unread_upload();
    }

    /// Bytes came past the head of a request with CONTENT_LENGTH 0 and a chunked
    /// Transfer-Encoding: says once that the app did not get them, and why.
    fn note_unread_upload(&mut self) {
        if let Some(request) = self.unread_upload.take() {
            warning!(
                "server",
                "{request}: body bytes follow a head with CONTENT_LENGTH 0 and HTTP_TRANSFER_ENCODING chunked; \
                 the app got an empty body. ashd passes a chunked upload on this way: send uploads \
                 through ashd with a Content-Length"
            );
        }
    }

    /// Takes the complete request's bytes and body out of the connection; it is now Running.
    pub fn take_request(&mut self) -> (Vec<u8>, std::ops::Range<usize>, Body) {
        let head = self.head.as_ref().expect("take_request after a complete head");
        let payload = head.payload.clone();
        let head_len = head.head_len;
        let body = match self.spill.take() {
            Some(file) => Body::File(file, self.body_received),
            None => Body::InBuffer(head_len..self.buf.len()),
        };
        self.phase = Phase::Running;
        self.last_progress = Instant::now();
        // `buf` holds the head and then (when not spilled) the body: one buffer, no copy.
        (std::mem::take(&mut self.buf), payload, body)
    }

    /// Takes the complete request out of the connection, with a fresh outbox for its response
    /// (tied to this socket, and known to the loop as `id`): the one place a request is
    /// assembled, for the loop and the doorway alike. The connection is now Running.
    pub fn start_request(&mut self, id: ConnId, notifier: &Arc<Notifier>, high_water: usize) -> Request {
        let (buf, payload, body) = self.take_request();
        metrics::request_started();
        let outbox = Outbox::new(
            id,
            Arc::clone(notifier),
            high_water,
            Some(self.stream.as_raw_fd()),
        );
        if self.wants_linger() {
            outbox.note_extra_input();
        }
        if self.watching == Watching::Nothing {
            // It came whole with its connection: a producer ending it need not leave the
            // loop's epoll set (see `Outbox::end_alone`).
            outbox.set_watched(false);
        }
        self.outbox = Some(Arc::clone(&outbox));
        Request {
            buf,
            payload,
            body,
            outbox,
            accepted: self.accepted,
            head_at: self.head_at,
        }
    }

    /// Queues a response the loop made itself and moves to closing.
    pub fn refuse(&mut self, refusal: &Answer) {
        self.out.clear();
        self.out_pos = 0;
        self.out.push_back(Chunk::Bytes(refusal.response()));
        self.end = Some(End::Complete);
        self.phase = Phase::Closing;
        self.last_progress = Instant::now();
        // The client may still be sending: read and drop it so our answer is not reset away.
        self.extra_input = true;
    }

    /// Collects what the app queued since the last call.
    pub fn collect_output(&mut self) {
        if let Some(outbox) = &self.outbox {
            let was_idle = self.out.is_empty();
            let end = outbox.take(&mut self.out);
            if was_idle && !self.out.is_empty() {
                // The write timeout counts from when there was something to write: the
                // producer may have been writing directly until now, unseen by the loop.
                self.last_progress = Instant::now();
            }
            if let Some(end) = end {
                self.end = Some(end);
            }
        }
    }

    /// Whether everything produced so far has been written.
    pub fn output_drained(&self) -> bool {
        self.out.is_empty()
    }

    /// How the response ended, once it has.
    pub fn end(&self) -> Option<End> {
        self.end
    }

    /// Whether the client has finished sending (see `peer_eof`).
    pub fn peer_eof(&self) -> bool {
        self.peer_eof
    }

    /// Whether to linger on close because input may still be arriving.
    pub fn wants_linger(&self) -> bool {
        self.extra_input && !self.peer_eof
    }

    /// Writes queued output until done or the socket would block. `Err` means the client is gone.
    ///
    /// Runs of in-memory chunks go out with one `writev`; a file chunk goes out with
    /// `sendfile`, from the descriptor, without a userspace copy.
    pub fn write_out(&mut self) -> io::Result<()> {
        while let Some(front) = self.out.front() {
            let result = match front {
                Chunk::File { file, offset, len } => send_file(
                    &self.stream,
                    file,
                    offset + self.out_pos as u64,
                    len - self.out_pos as u64,
                ),
                Chunk::Bytes(_) => {
                    let mut slices: [IoSlice<'_>; 16] = [IoSlice::new(&[]); 16];
                    let mut count = 0;
                    for (i, chunk) in self.out.iter().take(16).enumerate() {
                        let Chunk::Bytes(bytes) = chunk else { break };
                        let start = if i == 0 { self.out_pos } else { 0 };
                        slices[count] = IoSlice::new(&bytes[start..]);
                        count += 1;
                    }
                    self.stream.write_vectored_bufs(&slices[..count])
                }
            };
            let written = match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.last_progress = Instant::now();
            let mut left = written;
            while left > 0 {
                let front_len = self.out[0].len() as usize - self.out_pos;
                if left >= front_len {
                    left -= front_len;
                    self.out.pop_front();
                    self.out_pos = 0;
                } else {
                    self.out_pos += left;
                    left = 0;
                }
            }
            if let Some(outbox) = &self.outbox {
                // Once the queue is empty, producers may write directly again.
                outbox.written(written, self.out.is_empty());
            }
        }
        Ok(())
    }

    /// Starts a gentle close: our side ends, the peer gets [`LINGER`] to finish its side.
    pub fn start_linger(&mut self) {
        self.stream.shutdown_write();
        self.phase = Phase::Lingering;
        self.last_progress = Instant::now();
    }
}

impl Drop for Conn {
    /// The socket closes when the connection drops: first take it away from producers, under
    /// the outbox lock, so none writes to the descriptor number after it is closed (by then it
    /// may name another connection).
    fn drop(&mut self) {
        if let Some(outbox) = self.outbox.take() {
            outbox.revoke();
        }
    }
}

/// Most bytes handed to one `sendfile` call, so one large file does not monopolise the loop.
const SENDFILE_MAX: u64 = 1 << 20;

/// Sends up to `len` bytes of `file` from `offset` to the socket with `sendfile(2)`.
/// A file that ends before `len` (it shrank after the app handed it over) is an error:
/// the response can no longer match what was promised.
fn send_file(stream: &Stream, file: &File, offset: u64, len: u64) -> io::Result<usize> {
    let mut off = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset out of range"))?;
    let count = len.min(SENDFILE_MAX) as usize;
    // SAFETY: both descriptors are open for the duration of the call; `off` is a valid off_t.
    let sent = sys::check(unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut off, count) })?;
    if sent == 0 && count > 0 {
        let why = format!("the file being sent ended {len} bytes early (truncated while being sent?)");
        warning!("server", "{why}; connection cut");
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why));
    }
    Ok(sent as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn limits(body_buffer: u64) -> Limits {
        Limits {
            max_head: 64 * 1024,
            max_body: 1 << 30,
            body_buffer,
            head_timeout: std::time::Duration::from_secs(10),
            body_timeout: std::time::Duration::from_secs(10),
            write_timeout: std::time::Duration::from_secs(10),
            max_connections: 10,
            write_buffer: 64 * 1024,
            max_queue: 10,
            allow_from: None,
        }
    }

    /// One turn reads at most its budget, and says so, however much input is waiting: the
    /// loop serves the others, then comes back for the rest.
    #[test]
    fn a_turn_reads_at_most_its_budget_then_asks_for_another() {
        // A body kept in memory, and one going to a temporary file.
        for body_buffer in [1 << 20, 8 * 1024] {
            budgeted_reads(body_buffer);
        }
    }

    fn budgeted_reads(body_buffer: u64) {
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let body = vec![b'x'; 96 * 1024];
        let head = format!("CONTENT_LENGTH\0{}\0SCGI\x001\0", body.len());
        let mut request = format!("{}:{head},", head.len()).into_bytes();
        request.extend_from_slice(&body);
        theirs.write_all(&request[..64 * 1024]).unwrap();
        let mut conn = Conn::new(
            Stream::Unix(mio::net::UnixStream::from_std(ours)),
            1,
            Instant::now(),
        );
        conn.read_budget = 16 * 1024;
        let mut scratch = vec![0u8; 64 * 1024];
        let mut yes = || true;
        let limits = limits(body_buffer);
        let mut turns = 0;
        let outcome = loop {
            turns += 1;
            match conn.on_readable(&mut scratch, &limits, &mut yes) {
                ReadOutcome::Again => {
                    assert!(conn.bytes_received() <= turns * 16 * 1024, "{turns} turns");
                }
                ReadOutcome::Pending => {
                    // All that was sent is read: send the rest.
                    assert!(turns >= 4, "64 KiB waiting took {turns} turns of 16 KiB");
                    theirs.write_all(&request[64 * 1024..]).unwrap();
                }
                other => break other,
            }
        };
        assert!(matches!(outcome, ReadOutcome::Complete));
        assert!(turns >= 6, "{turns} turns");
        assert_eq!(conn.body_progress(), (body.len() as u64, body.len() as u64));
    }
}
