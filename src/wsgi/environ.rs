//! The request head becomes the environ dict: every SCGI header, values as native strings
//! holding the raw bytes as Latin-1 (PEP 3333), plus the `wsgi.*` keys.

use std::collections::HashMap;

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::scgi;
use crate::wsgi::pathinfo::{self, Mount, SentPaths};

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

/// Entries an environ holds without growing: nginx's scgi_params, a few HTTP headers, wsgi.*.
const ENVIRON_PRESIZE: ffi::Py_ssize_t = 40;

extern "C" {
    // CPython's presizing dict constructor (cpython/dictobject.h, every 3.x); pyo3-ffi skips it.
    fn _PyDict_NewPresized(minused: ffi::Py_ssize_t) -> *mut ffi::PyObject;
}

/// Builds the environ for a request head (without `wsgi.input`, which the caller adds).
pub fn build<'py>(
    py: Python<'py>,
    header_block: &[u8],
    consts: &EnvironConsts,
) -> PyResult<Bound<'py, PyDict>> {
    // Sized for a typical request up front: growing 8 -> 16 -> 32 slots costs three rehashes.
    // SAFETY: a NULL result raises below; otherwise we own the new reference to a dict.
    let environ = unsafe {
        Bound::from_owned_ptr_or_err(py, _PyDict_NewPresized(ENVIRON_PRESIZE))?
            .cast_into_unchecked::<PyDict>()
    };
    let mut facts = HeadFacts::default();
    // Repeated HTTP_ headers, joined as raw bytes and stored once at the end: joining in the
    // dict each time was quadratic (a 64 KiB head of duplicates took seconds under the GIL).
    let mut repeated: HashMap<&[u8], Vec<u8>> = HashMap::new();
    for (name, value) in scgi::headers(header_block) {
        facts.note(name, value);
        if is_content_duplicate(name) {
            continue;
        }
        if let Some(joined) = repeated.get_mut(name) {
            joined.extend_from_slice(join_separator(name));
            joined.extend_from_slice(value);
            continue;
        }
        let key = match known_key(py, name) {
            Some(key) => key.clone(),
            None => latin1(py, name)?,
        };
        let value_obj = match known_value(py, value) {
            Some(v) => v.clone(),
            None => latin1(py, value)?,
        };
        // Whether the key was new shows in the size: the value returned cannot tell, as equal
        // short strings are often the very same object.
        let size_before = environ.len();
        // SAFETY: dict, key and value are live objects; the result is a borrowed reference.
        let existing = unsafe { ffi::PyDict_SetDefault(environ.as_ptr(), key.as_ptr(), value_obj.as_ptr()) };
        if existing.is_null() {
            return Err(PyErr::fetch(py));
        }
        if environ.len() == size_before && name.starts_with(b"HTTP_") {
            // The same HTTP header twice (nginx and ashd pass them so): join as a proxy would.
            // SAFETY: `existing` is a live borrowed reference into the dict.
            let first = unsafe { Bound::from_borrowed_ptr(py, existing) };
            let first: String = first.extract()?;
            let mut joined: Vec<u8> = first.chars().map(|c| c as u32 as u8).collect();
            joined.extend_from_slice(join_separator(name));
            joined.extend_from_slice(value);
            repeated.insert(name, joined);
        }
    }
    for (name, joined) in &repeated {
        environ.set_item(latin1(py, name)?, latin1(py, joined)?)?;
    }
    if let Some(content_type) = facts.content_type_from_header() {
        environ.set_item(intern!(py, "CONTENT_TYPE"), latin1(py, content_type)?)?;
    }
    // Frontends disagree on SCRIPT_NAME and PATH_INFO; see `pathinfo` for the one rule.
    let paths = &facts.paths;
    let (script_name, path_info) = pathinfo::split(paths, consts.mount.as_ref());
    if paths.script_name != Some(&*script_name) {
        environ.set_item(intern!(py, "SCRIPT_NAME"), latin1(py, &script_name)?)?;
    }
    if paths.path_info != Some(&*path_info) {
        environ.set_item(intern!(py, "PATH_INFO"), latin1(py, &path_info)?)?;
    }
    let scheme = if facts.scheme() == b"https" {
        intern!(py, "https")
    } else {
        intern!(py, "http")
    };
    fill_cgi_defaults(py, &environ, scheme)?;
    environ.set_item(intern!(py, "wsgi.version"), consts.version.bind(py))?;
    environ.set_item(intern!(py, "wsgi.url_scheme"), scheme)?;
    environ.set_item(intern!(py, "wsgi.errors"), consts.errors.bind(py))?;
    environ.set_item(intern!(py, "wsgi.multithread"), consts.multithread)?;
    environ.set_item(intern!(py, "wsgi.multiprocess"), consts.multiprocess)?;
    environ.set_item(intern!(py, "wsgi.run_once"), false)?;
    environ.set_item(intern!(py, "wsgi.input_terminated"), true)?;
    Ok(environ)
}

/// What goes between the values of a repeated HTTP header: cookies use `; ` (RFC 6265).
fn join_separator(name: &[u8]) -> &'static [u8] {
    if name == b"HTTP_COOKIE" {
        b"; "
    } else {
        b", "
    }
}

/// Re-makes a str whose characters are all below 256 (joined header values) without a UTF-8 trip.
fn latin1_from_str<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyString>> {
    let bytes: Vec<u8> = text.chars().map(|c| c as u32 as u8).collect();
    latin1(py, &bytes)
}

/// Gives the CGI variables PEP 3333 requires a value when the frontend left them out.
fn fill_cgi_defaults(
    py: Python<'_>,
    environ: &Bound<'_, PyDict>,
    scheme: &Bound<'_, PyString>,
) -> PyResult<()> {
    for key in [
        intern!(py, "SCRIPT_NAME"),
        intern!(py, "PATH_INFO"),
        intern!(py, "QUERY_STRING"),
    ] {
        if !environ.contains(key)? {
            environ.set_item(key, intern!(py, ""))?;
        }
    }
    if !environ.contains(intern!(py, "REQUEST_METHOD"))? {
        environ.set_item(intern!(py, "REQUEST_METHOD"), intern!(py, "GET"))?;
    }
    if !environ.contains(intern!(py, "SERVER_PROTOCOL"))? {
        environ.set_item(intern!(py, "SERVER_PROTOCOL"), intern!(py, "HTTP/1.0"))?;
    }
    let has_name = environ.contains(intern!(py, "SERVER_NAME"))?;
    let has_port = environ.contains(intern!(py, "SERVER_PORT"))?;
    if has_name && has_port {
        return Ok(());
    }
    // ashd sends neither without a Host header; derive them from it as CGI servers do.
    let host: Option<String> = environ
        .get_item(intern!(py, "HTTP_HOST"))?
        .map(|h| h.extract())
        .transpose()?;
    let (host_name, host_port) = host.as_deref().map_or((None, None), |h| {
        let (name, port) = split_host_str(h);
        (Some(name), port)
    });
    if !has_name {
        let name = match host_name {
            Some(name) => latin1_from_str(py, name)?,
            None => intern!(py, "localhost").clone(),
        };
        environ.set_item(intern!(py, "SERVER_NAME"), name)?;
    }
    if !has_port {
        let port = match host_port {
            Some(port) => port,
            None if scheme.to_str()? == "https" => "443",
            None => "80",
        };
        environ.set_item(intern!(py, "SERVER_PORT"), port)?;
    }
    Ok(())
}

/// A Host header's name and port: `example.org:8080` gives both, `[::1]:80` keeps the brackets
/// on the name, and a value with no numeric port after its last colon is all name.
fn split_host(host: &[u8]) -> (&[u8], Option<&[u8]>) {
    match host.iter().rposition(|b| *b == b':') {
        Some(i) if host[i + 1..].iter().all(u8::is_ascii_digit) && !host[..i].ends_with(b":") => {
            (&host[..i], (i + 1 < host.len()).then(|| &host[i + 1..]))
        }
        _ => (host, None),
    }
}

/// [`split_host`] for a `str` (the cuts fall on ASCII characters).
fn split_host_str(host: &str) -> (&str, Option<&str>) {
    let (name, port) = split_host(host.as_bytes());
    (&host[..name.len()], port.map(|p| &host[host.len() - p.len()..]))
}

/// Headers nginx (among others) passes twice, as `HTTP_CONTENT_TYPE` and `HTTP_CONTENT_LENGTH`
/// beside the CGI variables: RFC 3875 lets a server leave them out, and PEP 3333's validator
/// rejects an environ that has them, so they are not passed on.
fn is_content_duplicate(name: &[u8]) -> bool {
    name == b"HTTP_CONTENT_TYPE" || name == b"HTTP_CONTENT_LENGTH"
}

/// What both environ builders need from a head besides the variables themselves.
#[derive(Default)]
struct HeadFacts<'a> {
    ash_protocol: Option<&'a [u8]>,
    https: bool,
    paths: SentPaths<'a>,
    content_type: bool,
    http_content_type: Option<&'a [u8]>,
}

impl<'a> HeadFacts<'a> {
    /// Takes note of one header (the first of a repeated path header wins, as in the dict).
    fn note(&mut self, name: &[u8], value: &'a [u8]) {
        match name {
            b"HTTP_X_ASH_PROTOCOL" => self.ash_protocol = Some(value),
            b"HTTPS" => self.https = value.eq_ignore_ascii_case(b"on") || value == b"1",
            b"SCRIPT_NAME" => _ = self.paths.script_name.get_or_insert(value),
            b"PATH_INFO" => _ = self.paths.path_info.get_or_insert(value),
            b"DOCUMENT_URI" => _ = self.paths.document_uri.get_or_insert(value),
            b"REQUEST_URI" => _ = self.paths.request_uri.get_or_insert(value),
            b"CONTENT_TYPE" => self.content_type = true,
            b"HTTP_CONTENT_TYPE" => _ = self.http_content_type.get_or_insert(value),
            _ => {}
        }
    }

    /// CONTENT_TYPE from the Content-Type header, when the frontend passed only the header.
    fn content_type_from_header(&self) -> Option<&'a [u8]> {
        self.http_content_type.filter(|_| !self.content_type)
    }

    /// `wsgi.url_scheme`: X-Ash-Protocol when it says http or https, then HTTPS=on/1, else http.
    fn scheme(&self) -> &'static [u8] {
        match self.ash_protocol {
            Some(b"https") => b"https",
            Some(b"http") => b"http",
            _ if self.https => b"https",
            _ => b"http",
        }
    }
}

/// A CGI variable: name and value, borrowed from the head unless computed.
type CgiPair<'a> = (std::borrow::Cow<'a, [u8]>, std::borrow::Cow<'a, [u8]>);

/// The CGI variables for a request as `NAME NUL VALUE NUL ...` bytes, by the same rules as
/// [`build`] (duplicates joined, defaults filled), plus `wsgi.url_scheme`: what the
/// external-interpreter worker turns into its environ.
pub fn cgi_pairs(header_block: &[u8], mount: Option<&Mount>) -> Vec<u8> {
    use std::borrow::Cow;
    let mut pairs: Vec<CgiPair<'_>> = Vec::with_capacity(32);
    // Where each name stands in `pairs`: repeats are found and joined in linear time (this
    // runs on the event loop, and a hostile head may repeat one header thousands of times).
    let mut index: HashMap<&[u8], usize> = HashMap::with_capacity(32);
    let mut facts = HeadFacts::default();
    for (name, value) in scgi::headers(header_block) {
        facts.note(name, value);
        if is_content_duplicate(name) {
            continue;
        }
        match index.get(name) {
            Some(&at) if name.starts_with(b"HTTP_") => {
                let joined = pairs[at].1.to_mut();
                joined.extend_from_slice(join_separator(name));
                joined.extend_from_slice(value);
            }
            Some(_) => {}
            None => {
                index.insert(name, pairs.len());
                pairs.push((Cow::Borrowed(name), Cow::Borrowed(value)));
            }
        }
    }
    if let Some(content_type) = facts.content_type_from_header() {
        pairs.push((Cow::Borrowed(b"CONTENT_TYPE"), Cow::Borrowed(content_type)));
    }
    let scheme = facts.scheme();
    let paths = facts.paths;
    // The same SCRIPT_NAME/PATH_INFO rule as the embedded environ.
    let (script_name, path_info) = pathinfo::split(&paths, mount);
    for (key, value) in [(&b"SCRIPT_NAME"[..], script_name), (b"PATH_INFO", path_info)] {
        match pairs.iter_mut().find(|(n, _)| n.as_ref() == key) {
            Some((_, existing)) => *existing = value,
            None => pairs.push((Cow::Borrowed(key), value)),
        }
    }
    let has = |pairs: &[CgiPair<'_>], key: &[u8]| pairs.iter().any(|(n, _)| n.as_ref() == key);
    for (key, default) in [
        (&b"QUERY_STRING"[..], &b""[..]),
        (b"REQUEST_METHOD", b"GET"),
        (b"SERVER_PROTOCOL", b"HTTP/1.0"),
    ] {
        if !has(&pairs, key) {
            pairs.push((Cow::Borrowed(key), Cow::Borrowed(default)));
        }
    }
    let host = pairs
        .iter()
        .find(|(n, _)| n.as_ref() == b"HTTP_HOST")
        .map(|(_, v)| v.to_vec());
    let (host_name, host_port) = match &host {
        Some(host) => {
            let (name, port) = split_host(host);
            (Some(name.to_vec()), port.map(<[u8]>::to_vec))
        }
        None => (None, None),
    };
    if !has(&pairs, b"SERVER_NAME") {
        let name = host_name.unwrap_or_else(|| b"localhost".to_vec());
        pairs.push((Cow::Borrowed(b"SERVER_NAME"), Cow::Owned(name)));
    }
    if !has(&pairs, b"SERVER_PORT") {
        let port = host_port.unwrap_or_else(|| {
            if scheme == b"https" {
                b"443".to_vec()
            } else {
                b"80".to_vec()
            }
        });
        pairs.push((Cow::Borrowed(b"SERVER_PORT"), Cow::Owned(port)));
    }
    pairs.push((Cow::Borrowed(b"wsgi.url_scheme"), Cow::Borrowed(scheme)));
    let mut out = Vec::with_capacity(header_block.len() + 128);
    for (name, value) in &pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(headers: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in headers {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.extend_from_slice(value.as_bytes());
            out.push(0);
        }
        out
    }

    fn pairs(bytes: &[u8]) -> Vec<(String, String)> {
        let fields: Vec<&[u8]> = bytes.split(|b| *b == 0).collect();
        fields[..fields.len() - 1]
            .chunks(2)
            .map(|p| {
                (
                    String::from_utf8_lossy(p[0]).into(),
                    String::from_utf8_lossy(p[1]).into(),
                )
            })
            .collect()
    }

    fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
        pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn cgi_pairs_join_repeats_fill_defaults_and_name_the_scheme() {
        let head = block(&[
            ("CONTENT_LENGTH", "0"),
            ("HTTP_COOKIE", "a=1"),
            ("HTTP_ACCEPT", "x"),
            ("HTTP_COOKIE", "b=2"),
            ("HTTP_ACCEPT", "y"),
            ("REQUEST_METHOD", "GET"),
            ("REQUEST_METHOD", "POST"),
            ("HTTPS", "on"),
            ("HTTP_HOST", "example.org:8443"),
            ("REQUEST_URI", "/caf%C3%A9?q=1"),
        ]);
        let got = pairs(&cgi_pairs(&head, None));
        assert_eq!(get(&got, "HTTP_COOKIE"), Some("a=1; b=2"));
        assert_eq!(get(&got, "HTTP_ACCEPT"), Some("x, y"));
        assert_eq!(
            get(&got, "REQUEST_METHOD"),
            Some("GET"),
            "the first non-HTTP_ value wins"
        );
        assert_eq!(get(&got, "wsgi.url_scheme"), Some("https"));
        assert_eq!(get(&got, "SERVER_NAME"), Some("example.org"));
        assert_eq!(get(&got, "SERVER_PORT"), Some("8443"), "the Host header's port");
        assert_eq!(get(&got, "SCRIPT_NAME"), Some(""));
        assert_eq!(get(&got, "PATH_INFO"), Some("/café"));
        assert_eq!(get(&got, "QUERY_STRING"), Some(""));
        assert_eq!(got.iter().filter(|(k, _)| k == "HTTP_COOKIE").count(), 1);
    }

    #[test]
    fn cgi_pairs_join_a_head_of_thousands_of_repeats() {
        let mut headers = vec![("CONTENT_LENGTH", "0")];
        headers.extend(std::iter::repeat_n(("HTTP_X", "v"), 10_000));
        let got = pairs(&cgi_pairs(&block(&headers), None));
        let joined = get(&got, "HTTP_X").unwrap();
        assert_eq!(joined.len(), 10_000 + 2 * 9_999);
        assert!(joined.split(", ").all(|v| v == "v"));
    }

    #[test]
    fn ash_protocol_decides_the_scheme_before_https() {
        let head = block(&[("HTTP_X_ASH_PROTOCOL", "http"), ("HTTPS", "on")]);
        assert_eq!(
            get(&pairs(&cgi_pairs(&head, None)), "wsgi.url_scheme"),
            Some("http")
        );
        let head = block(&[("HTTP_X_ASH_PROTOCOL", "gopher"), ("HTTPS", "1")]);
        assert_eq!(
            get(&pairs(&cgi_pairs(&head, None)), "wsgi.url_scheme"),
            Some("https")
        );
    }

    #[test]
    fn the_content_headers_nginx_repeats_are_left_out() {
        let head = block(&[
            ("CONTENT_LENGTH", "3"),
            ("CONTENT_TYPE", "text/plain"),
            ("HTTP_CONTENT_LENGTH", "3"),
            ("HTTP_CONTENT_TYPE", "text/plain"),
        ]);
        let got = pairs(&cgi_pairs(&head, None));
        assert_eq!(get(&got, "CONTENT_TYPE"), Some("text/plain"));
        assert_eq!(get(&got, "HTTP_CONTENT_TYPE"), None);
        assert_eq!(get(&got, "HTTP_CONTENT_LENGTH"), None);
        // A frontend that passed only the header: its value becomes CONTENT_TYPE.
        let head = block(&[("CONTENT_LENGTH", "3"), ("HTTP_CONTENT_TYPE", "text/csv")]);
        let got = pairs(&cgi_pairs(&head, None));
        assert_eq!(get(&got, "CONTENT_TYPE"), Some("text/csv"));
        assert_eq!(got.iter().filter(|(k, _)| k == "CONTENT_TYPE").count(), 1);
    }

    #[test]
    fn host_headers_split_into_name_and_port() {
        assert_eq!(
            split_host(b"example.org:8080"),
            (&b"example.org"[..], Some(&b"8080"[..]))
        );
        assert_eq!(split_host(b"example.org"), (&b"example.org"[..], None));
        assert_eq!(split_host(b"example.org:"), (&b"example.org"[..], None));
        assert_eq!(split_host(b"[::1]:8000"), (&b"[::1]"[..], Some(&b"8000"[..])));
        assert_eq!(split_host(b"[::1]"), (&b"[::1]"[..], None));
        assert_eq!(split_host(b"::1"), (&b"::1"[..], None));
        assert_eq!(split_host_str("h\u{e9}te:81"), ("h\u{e9}te", Some("81")));
        let head = block(&[("CONTENT_LENGTH", "0"), ("HTTP_HOST", "example.org:8080")]);
        let got = pairs(&cgi_pairs(&head, None));
        assert_eq!(get(&got, "SERVER_NAME"), Some("example.org"));
        assert_eq!(get(&got, "SERVER_PORT"), Some("8080"));
        let head = block(&[
            ("CONTENT_LENGTH", "0"),
            ("HTTP_HOST", "example.org"),
            ("HTTPS", "on"),
        ]);
        assert_eq!(get(&pairs(&cgi_pairs(&head, None)), "SERVER_PORT"), Some("443"));
    }
}
