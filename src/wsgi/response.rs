//! `start_response`, `write`, and the loop that calls the app and iterates its response.
//!
//! The head is checked when `start_response` is called and sent with the first non-empty body
//! chunk (or `write`). The iterable's `close()` is called on every path. An error before
//! anything was sent becomes a 500; after that, the connection is cut.

use std::sync::Arc;

use pyo3::exceptions::{PyBrokenPipeError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyIterator, PyList, PyString, PyTuple};

use super::app::traceback_text;
use super::environ::{self, EnvironConsts};
use super::file_wrapper::{FileSource, FileWrapper};
use super::input::InputStream;
use crate::base::access;
use crate::base::log::{self, debug, error, warning};
use crate::base::metrics;
use crate::pool::waiting_on_client;
use crate::proto::cgi::INTERNAL_ERROR;
use crate::seam::outbox::{Chunk, ClientGone, End, Outbox};
use crate::seam::request::{Body, Request};

/// From this size on, a response chunk is written to the socket without the GIL, so other
/// Python threads run meanwhile; below it, releasing and taking the GIL back costs more.
const DETACH_AT: usize = 64 * 1024;

/// Response headers a WSGI app must not set (PEP 3333: hop-by-hop headers belong to the server).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
];

/// A checked, serialised response head waiting for the first body bytes.
struct Head {
    bytes: Vec<u8>,
    content_length: Option<u64>,
}

/// Per-response state shared by `start_response`, `write` and the iteration loop.
struct ResponseState {
    outbox: Arc<Outbox>,
    pending: Option<Head>,
    head_sent: bool,
    content_length: Option<u64>,
    body_sent: u64,
    overflow_logged: bool,
    is_head_request: bool,
    /// rplex: the response thread does the waiting (it parks the response instead), and
    /// `write` is not offered.
    multiplexed: bool,
    /// The status code given to start_response (for the access log).
    status: u16,
}

impl ResponseState {
    /// Sends body bytes (with the head before the first ones), honouring Content-Length,
    /// and waits without the GIL when the client is behind. `end` ends the response with them.
    fn send(&mut self, py: Python<'_>, data: &[u8], end: Option<End>) -> PyResult<()> {
        let mut data = data;
        if let Some(declared) = self.content_length {
            let allowed = declared.saturating_sub(self.body_sent);
            if (data.len() as u64) > allowed {
                if !self.overflow_logged {
                    warning!(
                        "wsgi",
                        "app sent more than its Content-Length of {declared} bytes; the excess is dropped"
                    );
                    self.overflow_logged = true;
                }
                data = &data[..allowed as usize];
            }
        }
        let head = if self.head_sent {
            Vec::new()
        } else {
            let head = self.pending.take().ok_or_else(|| {
                PyRuntimeError::new_err("the app produced body data before calling start_response()")
            })?;
            self.head_sent = true;
            head.bytes
        };
        self.body_sent += data.len() as u64;
        // The body is borrowed from the app's bytes (which the caller holds): written to the
        // socket from there when it takes them, copied only when it does not.
        let slices = [head.as_slice(), data];
        if head.len() + data.len() >= DETACH_AT {
            let outbox = &self.outbox;
            py.detach(|| outbox.send_slices(&slices, end))
                .map_err(client_gone)?;
        } else {
            self.outbox.send_slices(&slices, end).map_err(client_gone)?;
        }
        if self.outbox.is_full() && !self.multiplexed {
            let outbox = Arc::clone(&self.outbox);
            // Counted as blocked, so the pool may run another request meanwhile.
            py.detach(move || waiting_on_client(|| outbox.wait_for_room()))
                .map_err(client_gone)?;
        }
        Ok(())
    }

    /// Sends a whole response body that is a file (see [`FileWrapper`]): the loop sends it with
    /// `sendfile`. Content-Length is honoured, or added when the app gave none.
    fn send_file(&mut self, py: Python<'_>, source: FileSource) -> PyResult<()> {
        let FileSource {
            file,
            offset,
            mut len,
        } = source;
        if let Some(head) = self.pending.as_mut().filter(|h| h.content_length.is_none()) {
            // Nothing was sent yet and the length is known: tell the client.
            head.bytes.truncate(head.bytes.len() - 2);
            head.bytes
                .extend_from_slice(format!("Content-Length: {len}\r\n\r\n").as_bytes());
            head.content_length = Some(len);
            self.content_length = head.content_length;
        }
        if let Some(declared) = self.content_length {
            // PEP 3333: a wrapped file is sent until Content-Length bytes have gone out, which
            // is how a range is served: not an app error.
            len = len.min(declared.saturating_sub(self.body_sent));
        }
        if !self.head_sent {
            let head = self.pending.take().ok_or_else(|| {
                PyRuntimeError::new_err("the app produced body data before calling start_response()")
            })?;
            self.head_sent = true;
            self.outbox.send(head.bytes, None).map_err(client_gone)?;
        }
        self.body_sent += len;
        self.outbox
            .send_chunk(Chunk::File { file, offset, len }, None)
            .map_err(client_gone)?;
        // The response is complete once handed over: no waiting for the client here, the
        // worker is free while the loop sends the file.
        self.finish(py)
    }

    /// Ends a response that ran its course: sends a head still pending, checks the length.
    fn finish(&mut self, py: Python<'_>) -> PyResult<()> {
        if !self.head_sent {
            if self.pending.is_none() {
                return Err(PyRuntimeError::new_err(
                    "the app returned without calling start_response()",
                ));
            }
            return self.send(py, b"", Some(End::Complete));
        }
        match self.content_length {
            Some(declared) if self.body_sent < declared && !self.is_head_request => {
                warning!(
                    "wsgi",
                    "response shorter than its Content-Length: {} of {declared} bytes; connection cut",
                    self.body_sent
                );
                self.outbox.finish(End::Abort);
            }
            _ => self.outbox.finish(End::Complete),
        }
        Ok(())
    }
}

fn client_gone(_: ClientGone) -> PyErr {
    PyBrokenPipeError::new_err("the client closed the connection")
}

/// The `start_response` callable handed to the app; its `write` method is the WSGI `write`.
#[pyclass(module = "scgi_wsgi", name = "StartResponse")]
pub struct StartResponse {
    state: ResponseState,
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        {
            let mut this = slf.borrow_mut();
            match exc_info.filter(|e| !e.is_none()) {
                Some(exc_info) if this.state.head_sent => {
                    // PEP 3333: too late to change the response; re-raise the app's error.
                    let value = exc_info.get_item(1)?;
                    return Err(PyErr::from_value(value));
                }
                Some(_) => {}
                None if this.state.pending.is_some() || this.state.head_sent => {
                    return Err(PyRuntimeError::new_err(
                        "start_response() called a second time without exc_info",
                    ));
                }
                None => {}
            }
            let head = build_head(status, headers)?;
            this.state.status = status_code(&head.bytes);
            this.state.content_length = head.content_length;
            this.state.pending = Some(head);
        }
        slf.getattr(intern!(py, "write"))
    }

    /// The WSGI `write(data)` callable: sends `data` at once.
    fn write(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let bytes = data
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err(format!("write() takes bytes, not {}", type_name(data))))?;
        if self.state.multiplexed {
            return Err(PyRuntimeError::new_err(
                "write() is not supported under the rplex handling model: return the body as an iterable, or use -t free or -t pool",
            ));
        }
        if !self.state.head_sent && self.state.pending.is_none() {
            return Err(PyRuntimeError::new_err("write() called before start_response()"));
        }
        self.state.send(py, bytes.as_bytes(), None)
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A str argument as Latin-1 bytes; anything else, or a character above U+00FF, is an error.
fn latin1_bytes(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    let text = obj
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("{what} must be a str, not {}", type_name(obj))))?
        .to_cow()?;
    if text.is_ascii() {
        return Ok(text.as_bytes().to_vec());
    }
    text.chars()
        .map(|c| u8::try_from(c as u32).ok())
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| PyValueError::new_err(format!("{what} {text:?} has a character that is not Latin-1")))
}

/// RFC 9110 token characters, the only ones allowed in a header name.
fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// No control characters (CR, LF, NUL, ...) except horizontal tab: nothing that could end a line.
fn is_field_text(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Checks status and headers and serialises them as a CGI response head.
fn build_head(status: &Bound<'_, PyAny>, headers: &Bound<'_, PyAny>) -> PyResult<Head> {
    let status = latin1_bytes(status, "status")?;
    let well_formed = status.len() >= 3
        && status[..3].iter().all(u8::is_ascii_digit)
        && status[0] != b'0'
        && (status.len() == 3 || status[3] == b' ')
        && is_field_text(&status);
    if !well_formed {
        return Err(PyValueError::new_err(format!(
            "status {:?} is not a three-digit code followed by a space and a reason phrase",
            String::from_utf8_lossy(&status)
        )));
    }
    if !(headers.is_instance_of::<PyList>() || headers.is_instance_of::<PyTuple>()) {
        return Err(PyTypeError::new_err(format!(
            "headers must be a list of (name, value) tuples, not {}",
            type_name(headers)
        )));
    }
    let mut bytes = Vec::with_capacity(128);
    bytes.extend_from_slice(b"Status: ");
    bytes.extend_from_slice(&status);
    bytes.extend_from_slice(b"\r\n");
    let mut content_length = None;
    for item in headers.try_iter()? {
        let item = item?;
        let pair = item
            .cast::<PyTuple>()
            .ok()
            .filter(|t| t.len() == 2)
            .ok_or_else(|| {
                PyTypeError::new_err(format!("a header must be a (name, value) tuple, not {item}"))
            })?;
        let name = latin1_bytes(&pair.get_item(0)?, "header name")?;
        let value = latin1_bytes(&pair.get_item(1)?, "header value")?;
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Err(PyValueError::new_err(format!(
                "header name {:?} is not a valid token",
                String::from_utf8_lossy(&name)
            )));
        }
        if !is_field_text(&value) {
            return Err(PyValueError::new_err(format!(
                "header {:?} has a control character (CR, LF, NUL, ...) in its value",
                String::from_utf8_lossy(&name)
            )));
        }
        let lower = name.to_ascii_lowercase();
        if HOP_BY_HOP.iter().any(|h| h.as_bytes() == lower.as_slice()) {
            return Err(PyValueError::new_err(format!(
                "hop-by-hop header {:?} is not allowed from a WSGI app",
                String::from_utf8_lossy(&name)
            )));
        }
        if lower == b"status" {
            return Err(PyValueError::new_err(
                "a 'Status' header is not allowed; pass the status to start_response()",
            ));
        }
        if lower == b"content-length" {
            let text = std::str::from_utf8(&value).unwrap_or("").trim();
            let parsed = text
                .parse::<u64>()
                .ok()
                .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| PyValueError::new_err(format!("Content-Length {text:?} is not a number")))?;
            match content_length {
                // The same value twice is sent once; two values leave the length unknowable.
                Some(earlier) if earlier == parsed => continue,
                Some(earlier) => {
                    return Err(PyValueError::new_err(format!(
                        "conflicting Content-Length headers ({earlier} and {parsed})"
                    )))
                }
                None => content_length = Some(parsed),
            }
        }
        bytes.extend_from_slice(&name);
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(&value);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"\r\n");
    Ok(Head {
        bytes,
        content_length,
    })
}

/// A response iterator handed to rplex's response thread, with what finishing it needs.
pub struct PlexJob {
    result: Py<PyAny>,
    /// The response's iterator (set when the job is handed over).
    iter: Option<Py<PyIterator>>,
    responder: Py<StartResponse>,
    environ: Py<PyDict>,
    outbox: Arc<Outbox>,
    /// The access log's entry, written when the response is done.
    access: Option<access::Entry>,
}

/// Where [`PlexJob::advance`] left a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// It ended (completely, by error, or because the client left); the iterable is closed.
    Done,
    /// The budget ran out; more may come at once.
    Again,
    /// The client is behind: the outbox is over its high-water mark.
    Full,
}

impl PlexJob {
    /// The response's outbox.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Takes up to `budget` chunks from the iterator and queues them, never waiting.
    pub fn advance(&mut self, py: Python<'_>, budget: usize) -> Step {
        let responder = self.responder.bind(py);
        let environ = self.environ.bind(py);
        let Some(iter) = self.iter.as_ref().map(|iter| iter.bind(py)) else {
            return Step::Done;
        };
        let mut outcome = Ok(false);
        for _ in 0..budget {
            if self.outbox.client_gone() {
                debug!("wsgi", "client went away during {}", request_line(environ));
                self.outbox.finish(End::Abort);
                outcome = Ok(true);
                break;
            }
            outcome = match iter.clone().next() {
                None => responder.borrow_mut().state.finish(py).map(|_| true),
                Some(Err(err)) => Err(err),
                Some(Ok(item)) => send_chunk(py, &item, responder).map(|_| false),
            };
            if !matches!(outcome, Ok(false)) || self.outbox.is_full() {
                break;
            }
        }
        match outcome {
            Ok(false) if self.outbox.is_full() => return Step::Full,
            Ok(false) => return Step::Again,
            Ok(true) => close_iterable(py, self.result.bind(py), environ),
            Err(err) => {
                fail(py, environ, responder, &err);
                close_iterable(py, self.result.bind(py), environ);
            }
        }
        record_access(&mut self.access, &responder.borrow().state);
        Step::Done
    }
}

/// What the access log records for a response: the status and body bytes sent, or the 500
/// page when the app failed before its response began. A request answered 504 for running
/// too long has its line from the watch that answered it.
fn record_access(entry: &mut Option<access::Entry>, state: &ResponseState) {
    let Some(mut entry) = entry.take() else { return };
    if state.outbox.timed_out() {
        entry.discard();
    } else if state.head_sent {
        entry.set_result(state.status, state.body_sent);
    } else {
        entry.set_result(INTERNAL_ERROR.code(), INTERNAL_ERROR.body_len());
    }
}

/// Calls the iterable's `close()` when it has one (PEP 3333: however the response ended).
fn close_iterable(py: Python<'_>, result: &Bound<'_, PyAny>, environ: &Bound<'_, PyDict>) {
    // A plain list or tuple has no close(); asking would build and discard an AttributeError.
    if result.is_exact_instance_of::<PyList>() || result.is_exact_instance_of::<PyTuple>() {
        return;
    }
    match result.getattr_opt(intern!(py, "close")) {
        Ok(Some(close)) => {
            if let Err(err) = close.call0() {
                log_app_error(py, environ, "the response's close() raised", &err);
            }
        }
        Ok(None) => {}
        Err(err) => log_app_error(py, environ, "looking up the response's close() failed", &err),
    }
}

/// Runs the app for one request and sends its response. With `handoff` (rplex), a response
/// that is more than one ready chunk is handed over for another thread to iterate.
pub fn serve(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    consts: &EnvironConsts,
    request: Request,
    handoff: Option<&dyn Fn(PlexJob)>,
) {
    let Request {
        buf,
        payload,
        body,
        outbox,
        accepted,
        head_at,
    } = request;
    // Logged when dropped: on every way out of this function.
    let mut access = access::begin(&buf[payload.clone()], accepted, head_at);
    let environ = match environ::build(py, &buf[payload], consts) {
        Ok(environ) => environ,
        Err(err) => {
            error!("wsgi", "cannot build the environ: {}", traceback_text(py, &err));
            let _ = outbox.send(INTERNAL_ERROR.response(), Some(End::Complete));
            if let Some(entry) = access.as_mut() {
                entry.set_result(INTERNAL_ERROR.code(), INTERNAL_ERROR.body_len());
            }
            return;
        }
    };
    let responder = match prepare(py, &environ, buf, body, &outbox, handoff.is_some()) {
        Ok(responder) => responder,
        Err(err) => {
            error!("wsgi", "cannot prepare the request: {}", traceback_text(py, &err));
            let _ = outbox.send(INTERNAL_ERROR.response(), Some(End::Complete));
            return;
        }
    };
    let result = match app.call1((&environ, &responder)) {
        Ok(result) => result,
        Err(err) => {
            fail(py, &environ, &responder, &err);
            record_access(&mut access, &responder.borrow().state);
            return;
        }
    };
    if let Some(handoff) = handoff {
        let job = PlexJob {
            result: result.unbind(),
            iter: None,
            responder: responder.unbind(),
            environ: environ.unbind(),
            outbox,
            access,
        };
        return hand_off(py, job, handoff);
    }
    if let Err(err) = iterate(py, &result, &responder) {
        fail(py, &environ, &responder, &err);
    }
    // PEP 3333: close() whenever the iterable has one, however the response ended.
    close_iterable(py, &result, &environ);
    record_access(&mut access, &responder.borrow().state);
}

/// Completes the environ (`wsgi.input`, `wsgi.file_wrapper`) and makes the response's
/// `start_response` (`multiplexed`: rplex's response thread will iterate it).
fn prepare<'py>(
    py: Python<'py>,
    environ: &Bound<'py, PyDict>,
    buf: Vec<u8>,
    body: Body,
    outbox: &Arc<Outbox>,
    multiplexed: bool,
) -> PyResult<Bound<'py, StartResponse>> {
    // The environ holds the first REQUEST_METHOD already: one lookup instead of a second header scan.
    let is_head_request = environ
        .get_item(intern!(py, "REQUEST_METHOD"))
        .ok()
        .flatten()
        .is_some_and(|method| method.cast::<PyString>().is_ok_and(|m| *m == "HEAD"));
    let responder = StartResponse {
        state: ResponseState {
            outbox: Arc::clone(outbox),
            pending: None,
            head_sent: false,
            content_length: None,
            body_sent: 0,
            overflow_logged: false,
            is_head_request,
            multiplexed,
            status: 0,
        },
    };
    let input = Bound::new(py, InputStream::new(buf, body))?;
    environ.set_item(intern!(py, "wsgi.input"), input)?;
    environ.set_item(intern!(py, "wsgi.file_wrapper"), py.get_type::<FileWrapper>())?;
    Bound::new(py, responder)
}

/// rplex: hands a response that is more than one ready chunk to the response thread; sends
/// the others (a file for the loop to `sendfile`, a list or tuple of at most one item) here.
fn hand_off(py: Python<'_>, mut job: PlexJob, handoff: &dyn Fn(PlexJob)) {
    let result = job.result.bind(py).clone();
    let responder = job.responder.bind(py).clone();
    let environ = job.environ.bind(py).clone();
    // A file the event loop can sendfile() needs no iterating: send it from here.
    if let Some(source) = result
        .cast::<FileWrapper>()
        .ok()
        .and_then(|wrapper| wrapper.borrow().file_source(py))
    {
        let sent = responder.borrow_mut().state.send_file(py, source);
        if let Err(err) = sent {
            fail(py, &environ, &responder, &err);
        }
        record_access(&mut job.access, &responder.borrow().state);
        return close_iterable(py, &result, &environ);
    }
    let ready = [
        result.cast::<PyList>().map(|l| l.len()).ok(),
        result.cast::<PyTuple>().map(|t| t.len()).ok(),
    ];
    if ready.iter().any(|n| n.is_some_and(|n| n <= 1)) {
        if let Err(err) = iterate(py, &result, &responder) {
            fail(py, &environ, &responder, &err);
        }
        close_iterable(py, &result, &environ);
        return record_access(&mut job.access, &responder.borrow().state);
    }
    match result.try_iter() {
        Ok(iter) => {
            job.iter = Some(iter.unbind());
            handoff(job)
        }
        Err(err) => {
            fail(py, &environ, &responder, &err);
            close_iterable(py, &result, &environ);
        }
    }
}

/// Whether a Content-Length may be added to `head`: not to 1xx, 204 and 304 responses,
/// which have no body (RFC 9110).
fn may_add_length(head: &Head) -> bool {
    let code = status_code(&head.bytes);
    !(100..200).contains(&code) && code != 204 && code != 304
}

/// The code of a serialised head (`Status: 200 OK...`), checked by [`build_head`].
fn status_code(head: &[u8]) -> u16 {
    head.get(8..11)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// Sends every chunk of the response iterable; list and tuple responses end with their last chunk.
fn iterate(py: Python<'_>, result: &Bound<'_, PyAny>, responder: &Bound<'_, StartResponse>) -> PyResult<()> {
    if let Ok(wrapper) = result.cast::<FileWrapper>() {
        if let Some(source) = wrapper.borrow().file_source(py) {
            return responder.borrow_mut().state.send_file(py, source);
        }
    }
    let sequence = result
        .cast::<PyList>()
        .ok()
        .map(|l| l.to_tuple())
        .or_else(|| result.cast::<PyTuple>().ok().cloned());
    if let Some(items) = sequence {
        let count = items.len();
        if count == 1 {
            return send_only_chunk(py, &items.get_item(0)?, responder);
        }
        for item in items.iter() {
            send_chunk(py, &item, responder)?;
        }
    } else {
        for item in result.try_iter()? {
            send_chunk(py, &item?, responder)?;
        }
    }
    responder.borrow_mut().state.finish(py)
}

fn chunk_bytes<'a, 'py>(item: &'a Bound<'py, PyAny>) -> PyResult<&'a Bound<'py, PyBytes>> {
    item.cast::<PyBytes>().map_err(|_| {
        PyTypeError::new_err(format!(
            "the response iterable yielded {}, not bytes",
            type_name(item)
        ))
    })
}

fn send_chunk(py: Python<'_>, item: &Bound<'_, PyAny>, responder: &Bound<'_, StartResponse>) -> PyResult<()> {
    let bytes = chunk_bytes(item)?.as_bytes();
    if bytes.is_empty() {
        return Ok(());
    }
    responder.borrow_mut().state.send(py, bytes, None)
}

/// A one-chunk response: head, body and end go to the loop in one hand-off, and the head
/// gets a Content-Length when the app gave none.
fn send_only_chunk(
    py: Python<'_>,
    item: &Bound<'_, PyAny>,
    responder: &Bound<'_, StartResponse>,
) -> PyResult<()> {
    let bytes = chunk_bytes(item)?.as_bytes();
    let mut this = responder.borrow_mut();
    let state = &mut this.state;
    if let Some(head) = state
        .pending
        .as_mut()
        .filter(|h| h.content_length.is_none() && may_add_length(h))
    {
        head.bytes.truncate(head.bytes.len() - 2);
        head.bytes
            .extend_from_slice(format!("Content-Length: {}\r\n\r\n", bytes.len()).as_bytes());
        head.content_length = Some(bytes.len() as u64);
        state.content_length = head.content_length;
    }
    if state.head_sent || bytes.is_empty() || state.pending.is_none() {
        drop(this);
        send_chunk(py, item, responder)?;
        return responder.borrow_mut().state.finish(py);
    }
    let short = state.content_length.is_some_and(|cl| (bytes.len() as u64) < cl) && !state.is_head_request;
    if short {
        state.send(py, bytes, None)?;
        return state.finish(py);
    }
    state.send(py, bytes, Some(End::Complete))
}

fn request_line(environ: &Bound<'_, PyDict>) -> String {
    let get = |key: &str| {
        environ
            .get_item(key)
            .ok()
            .flatten()
            .and_then(|v| v.extract::<String>().ok())
            .unwrap_or_default()
    };
    let uri = match get("REQUEST_URI") {
        uri if !uri.is_empty() => uri,
        _ => format!("{}{}", get("SCRIPT_NAME"), get("PATH_INFO")),
    };
    let method = get("REQUEST_METHOD");
    format!("{} {}", log::printable(&method, &[]), log::printable(&uri, &[]))
}

fn log_app_error(py: Python<'_>, environ: &Bound<'_, PyDict>, what: &str, err: &PyErr) {
    error!(
        "wsgi",
        "{what} for {}:\n{}",
        request_line(environ),
        traceback_text(py, err).trim_end()
    );
}

/// Handles an exception from the app: a 500 when nothing was sent yet, otherwise a cut connection.
fn fail(py: Python<'_>, environ: &Bound<'_, PyDict>, responder: &Bound<'_, StartResponse>, err: &PyErr) {
    let this = responder.borrow();
    let outbox = &this.state.outbox;
    if outbox.client_gone() {
        debug!("wsgi", "client went away during {}", request_line(environ));
        outbox.finish(End::Abort);
        return;
    }
    metrics::app_error();
    if this.state.head_sent {
        log_app_error(
            py,
            environ,
            "the app failed after the response began; connection cut",
            err,
        );
        outbox.finish(End::Abort);
    } else {
        log_app_error(py, environ, "the app failed; answering 500", err);
        let _ = outbox.send(INTERNAL_ERROR.response(), Some(End::Complete));
    }
}
