//! `wsgi.file_wrapper`: an app returns a file wrapped in it, and when the file is a real one
//! (it has a `fileno()` naming a regular file) the event loop sends it with `sendfile`,
//! without the bytes passing through Python.
//!
//! Anything else (a `BytesIO`, a socket, a pipe) is iterated like `wsgiref`'s wrapper does:
//! `read(blksize)` until it returns nothing.

use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::base::log::warning;
use crate::base::sys;

/// Block size when the app names none (as in `wsgiref.util.FileWrapper`).
const DEFAULT_BLKSIZE: usize = 8192;

/// The object offered as `environ["wsgi.file_wrapper"]`.
#[pyclass(module = "scgi_wsgi", name = "FileWrapper")]
pub struct FileWrapper {
    /// The wrapped file-like object.
    #[pyo3(get)]
    filelike: Py<PyAny>,
    /// How many bytes each `read` asks for on the fallback path.
    #[pyo3(get)]
    blksize: usize,
}

/// What the loop needs to send a wrapped file by itself.
pub struct FileSource {
    /// A duplicate of the app's descriptor: the app may close its file object at once.
    pub file: File,
    /// The file object's current position, where sending starts (PEP 3333: the file is
    /// sent from where it stands, as iterating it would).
    pub offset: u64,
    /// Bytes from `offset` to the end of the file as it is now.
    pub len: u64,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize = DEFAULT_BLKSIZE))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> PyResult<FileWrapper> {
        if blksize == 0 {
            return Err(PyValueError::new_err("file_wrapper() blksize must be positive"));
        }
        Ok(FileWrapper { filelike, blksize })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The fallback path: the next `read(blksize)`, until the file has nothing more.
    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1(intern!(py, "read"), (self.blksize,))?;
        // A non-bytes result is passed on as is: the response loop refuses it with a clear error.
        if data.is_truthy()? {
            Ok(Some(data))
        } else {
            Ok(None)
        }
    }

    /// Closes the wrapped object, if it can be closed (PEP 3333).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(close) = self.filelike.bind(py).getattr_opt(intern!(py, "close"))? {
            close.call0()?;
        }
        Ok(())
    }
}

impl FileWrapper {
    /// The file to send with `sendfile`, when the wrapped object is backed by a regular file;
    /// `None` means "iterate it instead". Errors from the app's object (a `fileno()` that
    /// raises, a `tell()` that fails) also mean "iterate it": that path reports them, if real.
    pub fn file_source(&self, py: Python<'_>) -> Option<FileSource> {
        let filelike = self.filelike.bind(py);
        // Only a plain binary file object reads back the file's own bytes: `gzip.open`, codec
        // readers and other wrappers have a `fileno()` too, but transform what they read, and a
        // text file's `tell()` is no byte offset. Anything else is iterated (PEP 3333: the same
        // result as `iter(lambda: filelike.read(blksize), b'')`).
        if !is_plain_binary_file(py, filelike) {
            return None;
        }
        let fd: RawFd = filelike
            .getattr_opt(intern!(py, "fileno"))
            .ok()??
            .call0()
            .ok()?
            .extract()
            .ok()?;
        // SAFETY: a zeroed stat is valid to be filled in.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes into `stat`; a bad descriptor only makes it fail.
        if fd < 0 || sys::check(unsafe { libc::fstat(fd, &mut stat) }).is_err() {
            return None;
        }
        // sendfile reads only from files that support it; regular files always do. A size of
        // 0 may not mean empty (procfs files are generated as they are read): iterate those.
        if stat.st_mode & libc::S_IFMT != libc::S_IFREG || stat.st_size == 0 {
            return None;
        }
        // Data the app wrote through a buffered object must be on the file before we send it.
        if let Ok(Some(flush)) = filelike.getattr_opt(intern!(py, "flush")) {
            let _ = flush.call0();
        }
        // The object's own idea of its position counts (a buffered reader may have read ahead).
        let offset = match filelike.getattr_opt(intern!(py, "tell")) {
            Ok(Some(tell)) => tell.call0().ok()?.extract::<u64>().ok()?,
            _ => {
                // SAFETY: lseek on a valid descriptor has no memory effects.
                let pos = sys::check(unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }).ok()?;
                u64::try_from(pos).ok()?
            }
        };
        let len = u64::try_from(stat.st_size).ok()?.saturating_sub(offset);
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor that we own, or -1.
        let dup = match sys::check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) }) {
            Ok(dup) => dup,
            Err(e) => {
                warning!(
                    "wsgi",
                    "cannot duplicate the descriptor of a wrapped file ({e}); sending it through Python"
                );
                return None;
            }
        };
        // SAFETY: `dup` is a fresh descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(dup) };
        Some(FileSource { file, offset, len })
    }
}

/// Whether `filelike` is one of the `io` classes `open(path, "rb")` (or `"r+b"`, or unbuffered)
/// returns, or a subclass that keeps its `read`: reading it gives the file's bytes unchanged.
fn is_plain_binary_file(py: Python<'_>, filelike: &Bound<'_, PyAny>) -> bool {
    static FILE_IO: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static BUFFERED_READER: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static BUFFERED_RANDOM: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let kind = filelike.get_type();
    for (cell, name) in [
        (&FILE_IO, "FileIO"),
        (&BUFFERED_READER, "BufferedReader"),
        (&BUFFERED_RANDOM, "BufferedRandom"),
    ] {
        let Ok(base) = cell.import(py, "io", name) else {
            return false;
        };
        if kind.is(base) {
            return true;
        }
        if kind.is_subclass(base).unwrap_or(false) {
            let read = intern!(py, "read");
            return match (kind.getattr(read), base.getattr(read)) {
                (Ok(own), Ok(original)) => own.is(&original),
                _ => false,
            };
        }
    }
    false
}
