//! The request head becomes the environ dict: every SCGI header, values as native strings
//! holding the raw bytes as Latin-1 (PEP 3333), plus the `wsgi.*` keys. The CGI rules are
//! `proto::cgi`'s ([`fill_environ`]); this module is their Python dict.

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::proto::cgi::{fill_environ, EnvironSink, Name, Scheme, Var};
use crate::proto::pathinfo::Mount;

/// Values that are the same in every environ, made once.
pub struct EnvironConsts {
    version: Py<PyTuple>,
    errors: Py<PyAny>,
    multithread: bool,
    multiprocess: bool,
    /// The mount point from `--script-name`, if given.
    mount: Option<Mount>,
}

impl EnvironConsts {
    /// Builds the shared values; `wsgi.errors` is the interpreter's `sys.stderr`.
    pub fn new(py: Python<'_>, multithread: bool, multiprocess: bool) -> PyResult<EnvironConsts> {
        Ok(EnvironConsts {
            version: PyTuple::new(py, [1, 0])?.unbind(),
            errors: py.import("sys")?.getattr("stderr")?.unbind(),
            multithread,
            multiprocess,
            mount: None,
        })
    }

    /// Names the app's mount point (`--script-name`): SCRIPT_NAME is then always `mount`.
    pub fn set_mount(&mut self, mount: Option<Mount>) {
        self.mount = mount;
    }
}

/// Decodes bytes as Latin-1: each byte becomes the code point of the same value.
pub fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
    // SAFETY: the pointer and length describe a live slice; a NULL result raises below.
    unsafe {
        let ptr = ffi::PyUnicode_DecodeLatin1(
            bytes.as_ptr().cast(),
            bytes.len() as ffi::Py_ssize_t,
            std::ptr::null(),
        );
        if ptr.is_null() {
            return Err(PyErr::fetch(py));
        }
        Ok(Bound::from_owned_ptr(py, ptr).cast_into_unchecked())
    }
}

/// The interned key for a well-known header name, so each request reuses one string object.
#[inline(always)]
fn known_key<'py>(py: Python<'py>, name: &[u8]) -> Option<&'py Bound<'py, PyString>> {
    // Byte-string patterns let the compiler switch on the length before comparing bytes,
    // instead of comparing the name with every key in turn.
    macro_rules! keys {
        ($($key:literal),* $(,)?) => {
            match name {
                $($key => Some(intern!(py, const_str($key))),)*
                _ => None,
            }
        };
    }
    keys!(
        b"CONTENT_LENGTH",
        b"CONTENT_TYPE",
        b"SCGI",
        b"REQUEST_METHOD",
        b"REQUEST_URI",
        b"QUERY_STRING",
        b"SCRIPT_NAME",
        b"PATH_INFO",
        b"DOCUMENT_URI",
        b"DOCUMENT_ROOT",
        b"SERVER_PROTOCOL",
        b"REQUEST_SCHEME",
        b"HTTPS",
        b"REMOTE_ADDR",
        b"REMOTE_PORT",
        b"SERVER_ADDR",
        b"SERVER_PORT",
        b"SERVER_NAME",
        b"SERVER_SOFTWARE",
        b"GATEWAY_INTERFACE",
        b"SCRIPT_FILENAME",
        b"PATH_TRANSLATED",
        b"REDIRECT_STATUS",
        b"HTTP_HOST",
        b"HTTP_USER_AGENT",
        b"HTTP_ACCEPT",
        b"HTTP_ACCEPT_ENCODING",
        b"HTTP_ACCEPT_LANGUAGE",
        b"HTTP_CONNECTION",
        b"HTTP_COOKIE",
        b"HTTP_REFERER",
        b"HTTP_CACHE_CONTROL",
        b"HTTP_ORIGIN",
        b"HTTP_AUTHORIZATION",
        b"HTTP_IF_MODIFIED_SINCE",
        b"HTTP_IF_NONE_MATCH",
        b"HTTP_X_FORWARDED_FOR",
        b"HTTP_X_FORWARDED_PROTO",
        b"HTTP_X_REAL_IP",
        b"HTTP_X_ASH_ADDRESS",
        b"HTTP_X_ASH_PORT",
        b"HTTP_X_ASH_PROTOCOL",
        b"HTTP_X_ASH_SERVER_ADDRESS",
        b"HTTP_X_ASH_SERVER_PORT",
        b"HTTP_X_ASH_FILE",
        b"HTTP_X_ASH_CONNECTION_ID",
        b"HTTP_UPGRADE_INSECURE_REQUESTS",
        b"HTTP_TRANSFER_ENCODING",
        b"HTTP_PRAGMA",
        b"HTTP_DNT",
    )
}

/// A byte-string literal as a `&str`, at compile time (the keys above are ASCII).
const fn const_str(bytes: &'static [u8]) -> &'static str {
    match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => panic!("environ keys are ASCII"),
    }
}

/// A short value that repeats across requests, interned.
#[inline(always)]
fn known_value<'py>(py: Python<'py>, value: &[u8]) -> Option<&'py Bound<'py, PyString>> {
    Some(match value {
        b"" => intern!(py, ""),
        b"0" => intern!(py, "0"),
        b"1" => intern!(py, "1"),
        b"GET" => intern!(py, "GET"),
        b"POST" => intern!(py, "POST"),
        b"HEAD" => intern!(py, "HEAD"),
        b"HTTP/1.1" => intern!(py, "HTTP/1.1"),
        b"HTTP/1.0" => intern!(py, "HTTP/1.0"),
        b"CGI/1.1" => intern!(py, "CGI/1.1"),
        b"http" => intern!(py, "http"),
        b"https" => intern!(py, "https"),
        b"on" => intern!(py, "on"),
        b"/" => intern!(py, "/"),
        b"80" => intern!(py, "80"),
        b"443" => intern!(py, "443"),
        b"127.0.0.1" => intern!(py, "127.0.0.1"),
        b"localhost" => intern!(py, "localhost"),
        _ => return None,
    })
}

/// An empty dict for an environ. On CPython's full API it is sized for a typical request up
/// front (nginx's scgi_params, a few HTTP headers, wsgi.*): growing 8 -> 16 -> 32 slots
/// costs three rehashes.
#[cfg(not(any(Py_LIMITED_API, PyPy)))]
fn environ_dict(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    const ENVIRON_PRESIZE: ffi::Py_ssize_t = 40;
    extern "C" {
        // CPython's presizing dict constructor (cpython/dictobject.h, every 3.x); pyo3-ffi
        // skips it.
        fn _PyDict_NewPresized(minused: ffi::Py_ssize_t) -> *mut ffi::PyObject;
    }
    // SAFETY: a NULL result raises below; otherwise we own the new reference to a dict.
    unsafe {
        Ok(
            Bound::from_owned_ptr_or_err(py, _PyDict_NewPresized(ENVIRON_PRESIZE))?
                .cast_into_unchecked::<PyDict>(),
        )
    }
}

/// An empty dict for an environ (the stable ABI and PyPy have no presizing constructor).
#[cfg(any(Py_LIMITED_API, PyPy))]
fn environ_dict(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    Ok(PyDict::new(py))
}

/// Sets `environ[key] = value` unless `key` is there already; true when it was new.
#[cfg(not(Py_LIMITED_API))]
#[inline(always)]
fn set_default(
    environ: &Bound<'_, PyDict>,
    key: &Bound<'_, PyString>,
    value: &Bound<'_, PyString>,
) -> PyResult<bool> {
    // Whether the key was new shows in the size: the value returned cannot tell, as equal
    // short strings are often the very same object.
    let size_before = environ.len();
    // SAFETY: dict, key and value are live objects; the result is a borrowed reference.
    let existing = unsafe { ffi::PyDict_SetDefault(environ.as_ptr(), key.as_ptr(), value.as_ptr()) };
    if existing.is_null() {
        return Err(PyErr::fetch(environ.py()));
    }
    Ok(environ.len() != size_before)
}

/// Sets `environ[key] = value` unless `key` is there already; true when it was new (the
/// stable ABI has no single call for it).
#[cfg(Py_LIMITED_API)]
#[inline(always)]
fn set_default(
    environ: &Bound<'_, PyDict>,
    key: &Bound<'_, PyString>,
    value: &Bound<'_, PyString>,
) -> PyResult<bool> {
    if environ.contains(key)? {
        return Ok(false);
    }
    environ.set_item(key, value)?;
    Ok(true)
}

/// The environ dict as [`fill_environ`] fills it: names and values decoded as Latin-1, the
/// well-known ones interned.
struct DictSink<'py> {
    environ: Bound<'py, PyDict>,
}

impl<'py> DictSink<'py> {
    #[inline(always)]
    fn key(&self, name: &[u8]) -> PyResult<Bound<'py, PyString>> {
        let py = self.environ.py();
        match known_key(py, name) {
            Some(key) => Ok(key.clone()),
            None => latin1(py, name),
        }
    }

    /// The key for `name`: a variable the rules name is interned without looking at its bytes.
    #[inline(always)]
    fn name_key(&self, name: Name<'_>) -> PyResult<Bound<'py, PyString>> {
        let py = self.environ.py();
        let var = match name {
            Name::Header(name) => return self.key(name),
            Name::Var(var) => var,
        };
        Ok(match var {
            Var::ContentType => intern!(py, "CONTENT_TYPE"),
            Var::ScriptName => intern!(py, "SCRIPT_NAME"),
            Var::PathInfo => intern!(py, "PATH_INFO"),
            Var::QueryString => intern!(py, "QUERY_STRING"),
            Var::RequestMethod => intern!(py, "REQUEST_METHOD"),
            Var::ServerProtocol => intern!(py, "SERVER_PROTOCOL"),
            Var::ServerName => intern!(py, "SERVER_NAME"),
            Var::ServerPort => intern!(py, "SERVER_PORT"),
            Var::HttpHost => intern!(py, "HTTP_HOST"),
        }
        .clone())
    }

    #[inline(always)]
    fn value(&self, value: &[u8]) -> PyResult<Bound<'py, PyString>> {
        let py = self.environ.py();
        match known_value(py, value) {
            Some(value) => Ok(value.clone()),
            None => latin1(py, value),
        }
    }
}

impl<'a> EnvironSink<'a> for DictSink<'_> {
    type Error = PyErr;

    #[inline(always)]
    fn add_new(&mut self, name: &'a [u8], value: &'a [u8]) -> PyResult<bool> {
        let key = self.key(name)?;
        let value = self.value(value)?;
        set_default(&self.environ, &key, &value)
    }

    #[inline(always)]
    fn set(&mut self, name: Name<'a>, value: &[u8]) -> PyResult<()> {
        self.environ.set_item(self.name_key(name)?, self.value(value)?)
    }

    #[inline(always)]
    fn has(&self, name: Name<'a>) -> PyResult<bool> {
        self.environ.contains(self.name_key(name)?)
    }

    fn value_of(&self, name: Name<'a>) -> PyResult<Option<Vec<u8>>> {
        let Some(value) = self.environ.get_item(self.name_key(name)?)? else {
            return Ok(None);
        };
        // Every value here came from bytes decoded as Latin-1: each character is one byte.
        let text: String = value.extract()?;
        Ok(Some(text.chars().map(|c| c as u32 as u8).collect()))
    }
}

/// Builds the environ for a request head (without `wsgi.input`, which the caller adds).
pub fn build<'py>(
    py: Python<'py>,
    header_block: &[u8],
    consts: &EnvironConsts,
) -> PyResult<Bound<'py, PyDict>> {
    let environ = environ_dict(py)?;
    let mut sink = DictSink { environ };
    let scheme = match fill_environ(header_block, consts.mount.as_ref(), &mut sink)? {
        Scheme::Https => intern!(py, "https"),
        Scheme::Http => intern!(py, "http"),
    };
    let environ = sink.environ;
    environ.set_item(intern!(py, "wsgi.version"), consts.version.bind(py))?;
    environ.set_item(intern!(py, "wsgi.url_scheme"), scheme)?;
    environ.set_item(intern!(py, "wsgi.errors"), consts.errors.bind(py))?;
    environ.set_item(intern!(py, "wsgi.multithread"), consts.multithread)?;
    environ.set_item(intern!(py, "wsgi.multiprocess"), consts.multiprocess)?;
    environ.set_item(intern!(py, "wsgi.run_once"), false)?;
    environ.set_item(intern!(py, "wsgi.input_terminated"), true)?;
    Ok(environ)
}
