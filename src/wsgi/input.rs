//! `wsgi.input`: a read-only stream over the complete, already received request body.
//! Reading past the end gives `b""`; bytes after CONTENT_LENGTH were never kept.

use std::fs::File;
use std::os::unix::fs::FileExt;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::seam::request::Body;

/// How much of a spilled body to read per step while looking for a line end.
const LINE_SCAN: usize = 8192;

enum Source {
    /// The body is `buf[start..start + len]`.
    Memory { buf: Vec<u8>, start: usize },
    /// The body is the whole (unlinked) file.
    File(File),
}

/// The `wsgi.input` object.
#[pyclass(module = "scgi_wsgi", name = "InputStream")]
pub struct InputStream {
    source: Source,
    len: u64,
    pos: u64,
}

impl InputStream {
    /// Wraps a request's buffer and body.
    pub fn new(buf: Vec<u8>, body: Body) -> InputStream {
        match body {
            Body::InBuffer(range) => InputStream {
                len: range.len() as u64,
                source: Source::Memory {
                    buf,
                    start: range.start,
                },
                pos: 0,
            },
            Body::File(file, len) => InputStream {
                source: Source::File(file),
                len,
                pos: 0,
            },
        }
    }

    fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    /// Reads up to `n` bytes (n bounded by what remains) and advances.
    fn take<'py>(&mut self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyBytes>> {
        let n = n.min(self.remaining() as usize);
        let out = match &self.source {
            Source::Memory { buf, start } => {
                let from = start + self.pos as usize;
                PyBytes::new(py, &buf[from..from + n])
            }
            Source::File(file) => {
                let pos = self.pos;
                let mut data = vec![0u8; n];
                // Disk reads happen without the GIL.
                py.detach(|| file.read_exact_at(&mut data, pos))
                    .map_err(|e| PyOSError::new_err(format!("cannot read the spooled request body: {e}")))?;
                PyBytes::new(py, &data)
            }
        };
        self.pos += n as u64;
        Ok(out)
    }

    /// Length of the next line (including its newline), at most `limit` bytes.
    fn line_len(&self, py: Python<'_>, limit: usize) -> PyResult<usize> {
        let limit = limit.min(self.remaining() as usize);
        match &self.source {
            Source::Memory { buf, start } => {
                let from = start + self.pos as usize;
                let window = &buf[from..from + limit];
                Ok(memchr::memchr(b'\n', window).map_or(limit, |i| i + 1))
            }
            Source::File(file) => {
                let mut scanned = 0;
                let mut block = vec![0u8; LINE_SCAN];
                while scanned < limit {
                    let want = (limit - scanned).min(LINE_SCAN);
                    let at = self.pos + scanned as u64;
                    py.detach(|| file.read_exact_at(&mut block[..want], at))
                        .map_err(|e| {
                            PyOSError::new_err(format!("cannot read the spooled request body: {e}"))
                        })?;
                    if let Some(i) = memchr::memchr(b'\n', &block[..want]) {
                        return Ok(scanned + i + 1);
                    }
                    scanned += want;
                }
                Ok(limit)
            }
        }
    }
}

/// A size argument as Python code passes it: None or negative means "no limit".
fn limit(size: Option<i64>) -> usize {
    match size {
        Some(n) if n >= 0 => usize::try_from(n).unwrap_or(usize::MAX),
        _ => usize::MAX,
    }
}

#[pymethods]
impl InputStream {
    /// read(size=-1): up to `size` bytes, or the rest of the body.
    #[pyo3(signature = (size = None))]
    fn read<'py>(&mut self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        self.take(py, limit(size))
    }

    /// readline(size=-1): the next line including its newline, at most `size` bytes.
    #[pyo3(signature = (size = None))]
    fn readline<'py>(&mut self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let n = self.line_len(py, limit(size))?;
        self.take(py, n)
    }

    /// readlines(hint=-1): the remaining lines, stopping once about `hint` bytes were read.
    #[pyo3(signature = (hint = None))]
    fn readlines<'py>(&mut self, py: Python<'py>, hint: Option<i64>) -> PyResult<Bound<'py, PyList>> {
        let hint = match hint {
            Some(n) if n > 0 => n as u64,
            _ => u64::MAX,
        };
        let lines = PyList::empty(py);
        let mut total = 0u64;
        while self.remaining() > 0 && total < hint {
            let n = self.line_len(py, usize::MAX)?;
            total += n as u64;
            lines.append(self.take(py, n)?)?;
        }
        Ok(lines)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        if self.remaining() == 0 {
            return Ok(None);
        }
        let n = self.line_len(py, usize::MAX)?;
        self.take(py, n).map(Some)
    }

    /// Always true: the body can be read.
    fn readable(&self) -> bool {
        true
    }

    /// Nothing to release early; present because file-like consumers call it.
    fn close(&self) {}
}
