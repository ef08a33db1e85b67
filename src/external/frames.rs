//! The frames between this process and the worker (see `worker.py` for their kinds): the
//! reader that takes them with the descriptors passed beside them, and the writer thread.

use std::collections::VecDeque;
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Receiver;

use crate::base::log::debug;

use crate::seam::request::Body;

/// Largest body frame sent to the worker.
const BODY_FRAME: usize = 64 * 1024;
/// A frame to the worker.
pub(super) enum ToWorker {
    /// Send a request: environ pairs, then the body, then "end of body".
    Request {
        id: u32,
        environ: Vec<u8>,
        buf: Vec<u8>,
        body: Body,
    },
    /// The client has taken this many bytes.
    Written { id: u32, total: u64 },
    /// The client is gone.
    Cancel { id: u32 },
    /// Send the Python stacks of these requests (each in a 'K' frame, then a 'K' frame with
    /// id 0 to end).
    Stacks { ids: Vec<u32> },
}

/// Reads frames from the worker with `recvmsg`, keeping the descriptors that arrive with
/// 'P' frames (SCM_RIGHTS) in order, so each 'P' frame takes the next one.
pub(super) struct FrameReader {
    stream: UnixStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    pub(super) fds: VecDeque<OwnedFd>,
}

impl FrameReader {
    pub(super) fn new(stream: UnixStream) -> FrameReader {
        FrameReader {
            stream,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            fds: VecDeque::new(),
        }
    }

    /// One `recvmsg` into `into`; descriptors that came with it join the queue.
    fn recv(&mut self, into: &mut [u8]) -> io::Result<usize> {
        const MAX_FDS: usize = 16;
        let mut control = [0u64; (MAX_FDS * 4 + 64) / 8];
        let mut iov = libc::iovec {
            iov_base: into.as_mut_ptr().cast(),
            iov_len: into.len(),
        };
        // SAFETY: msghdr points at live buffers for the duration of the call; the control
        // messages are read back with the CMSG_* helpers within the length the kernel set.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            let n = loop {
                let n = libc::recvmsg(self.stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
                if n >= 0 {
                    break n as usize;
                }
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            };
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg) as *const i32;
                    let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                    for i in 0..count {
                        self.fds
                            .push_back(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            Ok(n)
        }
    }

    /// Fills `out` completely, from what is buffered and then from the socket.
    fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut filled = 0;
        while filled < out.len() {
            if self.start == self.end {
                if out.len() - filled >= self.buf.len() {
                    // Large payloads go straight to their destination.
                    let n = self.recv(&mut out[filled..])?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    filled += n;
                    continue;
                }
                let mut buf = std::mem::take(&mut self.buf);
                let n = self.recv(&mut buf);
                self.buf = buf;
                let n = n?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.start = 0;
                self.end = n;
            }
            let take = (self.end - self.start).min(out.len() - filled);
            out[filled..filled + take].copy_from_slice(&self.buf[self.start..self.start + take]);
            self.start += take;
            filled += take;
        }
        Ok(())
    }

    pub(super) fn next_frame(&mut self) -> io::Result<(u8, u32, Vec<u8>)> {
        let mut header = [0u8; 9];
        self.read_exact(&mut header)?;
        let id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
        let mut payload = vec![0u8; len];
        self.read_exact(&mut payload)?;
        Ok((header[0], id, payload))
    }
}

fn write_frame(writer: &mut impl Write, kind: u8, id: u32, payload: &[u8]) -> io::Result<()> {
    let mut header = [0u8; 9];
    header[0] = kind;
    header[1..5].copy_from_slice(&id.to_be_bytes());
    header[5..9].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    writer.write_all(&header)?;
    writer.write_all(payload)
}

/// Serialises a head the worker checked (STATUS NUL NAME NUL VALUE NUL ...) as a CGI head,
/// checking again that nothing in it can end a line.
pub(super) fn cgi_head(fields: &[u8]) -> Option<Vec<u8>> {
    let mut parts = fields.split(|b| *b == 0);
    let status = parts.next()?;
    let clean = |bytes: &[u8]| bytes.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    if status.len() < 3 || !clean(status) {
        return None;
    }
    let mut head = Vec::with_capacity(fields.len() + 64);
    head.extend_from_slice(b"Status: ");
    head.extend_from_slice(status);
    head.extend_from_slice(b"\r\n");
    let rest: Vec<&[u8]> = parts.collect();
    // The payload ends with NUL, so the split leaves one empty piece at the end.
    let pairs = rest.split_last().map(|(_, pairs)| pairs).unwrap_or(&[]);
    if pairs.len() % 2 != 0 {
        return None;
    }
    for pair in pairs.chunks(2) {
        let (name, value) = (pair[0], pair[1]);
        if name.is_empty() || !clean(name) || name.contains(&b':') || !clean(value) {
            return None;
        }
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Some(head)
}

pub(super) fn write_to_worker(stream: UnixStream, frames: Receiver<ToWorker>) {
    let mut out = BufWriter::with_capacity(64 * 1024, stream);
    let result = (|| -> io::Result<()> {
        while let Ok(first) = frames.recv() {
            let mut next = Some(first);
            while let Some(frame) = next {
                write_one(&mut out, frame)?;
                next = frames.try_recv().ok();
            }
            out.flush()?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        debug!("server", "writing to the Python worker stopped: {e}");
    }
    // Dropping the socket tells the worker to finish.
    if let Ok(stream) = out.into_inner() {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
}

fn write_one(out: &mut impl Write, frame: ToWorker) -> io::Result<()> {
    match frame {
        ToWorker::Request {
            id,
            environ,
            buf,
            body,
        } => {
            write_frame(out, b'R', id, &environ)?;
            match body {
                Body::InBuffer(range) => {
                    for piece in buf[range].chunks(BODY_FRAME) {
                        write_frame(out, b'B', id, piece)?;
                    }
                }
                Body::File(file, len) => {
                    let mut block = vec![0u8; BODY_FRAME];
                    let mut at = 0u64;
                    while at < len {
                        let n = (len - at).min(BODY_FRAME as u64) as usize;
                        file.read_exact_at(&mut block[..n], at)?;
                        write_frame(out, b'B', id, &block[..n])?;
                        at += n as u64;
                    }
                }
            }
            write_frame(out, b'E', id, &[])
        }
        ToWorker::Written { id, total } => write_frame(out, b'W', id, &total.to_be_bytes()),
        ToWorker::Cancel { id } => write_frame(out, b'C', id, &[]),
        ToWorker::Stacks { ids } => {
            let payload: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
            write_frame(out, b'K', 0, &payload)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_fields_become_a_cgi_head() {
        let head = cgi_head(b"200 OK\0Content-Type\0text/plain\0X-A\0\0").unwrap();
        assert_eq!(
            head,
            b"Status: 200 OK\r\nContent-Type: text/plain\r\nX-A: \r\n\r\n"
        );
        assert_eq!(
            cgi_head(b"404 Not Found\0").unwrap(),
            b"Status: 404 Not Found\r\n\r\n"
        );
    }

    #[test]
    fn head_fields_that_could_split_the_response_are_refused() {
        for bad in [
            &b"200 OK\r\nX: y\0"[..],
            b"200 OK\0X-A\0a\nb\0",
            b"200 OK\0X-A\0a\rb\0",
            b"200 OK\0X\nA\0b\0",
            b"200 OK\0Odd\0",
            b"200 OK\0\0value\0",
            b"20\0",
        ] {
            assert!(cgi_head(bad).is_none(), "{bad:?}");
        }
    }
}
