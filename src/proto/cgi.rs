//! CGI on both sides of the app: the rules that turn an SCGI header block into the CGI
//! variables of a WSGI environ, and the plain-text answers the server makes itself (400, 408,
//! 413, 500, 502, 503, 504).
//!
//! The environ rules are written once, in [`fill_environ`], over a [`EnvironSink`]: the
//! embedded interpreter's sink is a Python dict, the external worker's a list of byte pairs
//! ([`cgi_pairs`]).

use std::borrow::Cow;
use std::collections::HashMap;

use super::pathinfo::{self, Mount, SentPaths};
use super::scgi;

/// An answer the server makes itself: a status line and, in the body, the cause.
///
/// Its body is `STATUS: CAUSE` (or the status alone) and a newline, as plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status line text, e.g. `400 Bad Request`.
    pub status: &'static str,
    /// The cause, for the log line and the response body (may be empty).
    pub cause: String,
}

/// The answer when the app fails before its response began.
pub const INTERNAL_ERROR: Answer = Answer::fixed("500 Internal Server Error");
/// The answer when the app takes longer than `--request-timeout` and sent nothing yet.
pub const GATEWAY_TIMEOUT: Answer = Answer::fixed("504 Gateway Timeout");

impl Answer {
    /// An answer with this status and cause.
    pub fn new(status: &'static str, cause: impl Into<String>) -> Answer {
        Answer {
            status,
            cause: cause.into(),
        }
    }

    /// An answer whose body is its status line alone.
    pub const fn fixed(status: &'static str) -> Answer {
        Answer {
            status,
            cause: String::new(),
        }
    }

    /// The status code, for the access log.
    pub fn code(&self) -> u16 {
        self.status.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0)
    }

    /// The response body.
    fn body(&self) -> String {
        if self.cause.is_empty() {
            format!("{}\n", self.status)
        } else {
            format!("{}: {}\n", self.status, self.cause)
        }
    }

    /// The length of [`Answer::response`]'s body, for the access log.
    pub fn body_len(&self) -> u64 {
        let cause = if self.cause.is_empty() {
            0
        } else {
            2 + self.cause.len()
        };
        (self.status.len() + cause + 1) as u64
    }

    /// The CGI-style response that carries this answer.
    pub fn response(&self) -> Vec<u8> {
        let body = self.body();
        format!(
            "Status: {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{}",
            self.status,
            body.len(),
            body
        )
        .into_bytes()
    }
}

/// A variable the rules below set or look at by name (a sink may map each to a value it
/// made once, such as an interned Python string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// `CONTENT_TYPE`.
    ContentType,
    /// `SCRIPT_NAME`.
    ScriptName,
    /// `PATH_INFO`.
    PathInfo,
    /// `QUERY_STRING`.
    QueryString,
    /// `REQUEST_METHOD`.
    RequestMethod,
    /// `SERVER_PROTOCOL`.
    ServerProtocol,
    /// `SERVER_NAME`.
    ServerName,
    /// `SERVER_PORT`.
    ServerPort,
    /// `HTTP_HOST`.
    HttpHost,
}

impl Var {
    /// The variable's name.
    pub fn name(self) -> &'static [u8] {
        match self {
            Var::ContentType => b"CONTENT_TYPE",
            Var::ScriptName => b"SCRIPT_NAME",
            Var::PathInfo => b"PATH_INFO",
            Var::QueryString => b"QUERY_STRING",
            Var::RequestMethod => b"REQUEST_METHOD",
            Var::ServerProtocol => b"SERVER_PROTOCOL",
            Var::ServerName => b"SERVER_NAME",
            Var::ServerPort => b"SERVER_PORT",
            Var::HttpHost => b"HTTP_HOST",
        }
    }
}

/// The name of a variable: one the rules know ([`Var`]), or a header's as it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name<'a> {
    /// A variable the rules name.
    Var(Var),
    /// A header's name.
    Header(&'a [u8]),
}

impl<'a> Name<'a> {
    /// The name's bytes.
    pub fn as_bytes(self) -> &'a [u8] {
        match self {
            Name::Var(var) => var.name(),
            Name::Header(name) => name,
        }
    }
}

/// Where [`fill_environ`] puts the CGI variables of a request: a Python dict, or byte pairs.
///
/// Names and values are raw bytes (a Python sink decodes them as Latin-1).
pub trait EnvironSink<'a> {
    /// What a sink may fail with (a Python exception; nothing for byte pairs).
    type Error;
    /// Adds header `name` = `value` unless `name` is there already; returns whether it was
    /// added.
    fn add_new(&mut self, name: &'a [u8], value: &'a [u8]) -> Result<bool, Self::Error>;
    /// Sets `name` to `value`, replacing what was there (in its place) or adding it.
    fn set(&mut self, name: Name<'a>, value: &[u8]) -> Result<(), Self::Error>;
    /// Whether `name` is there.
    fn has(&self, name: Name<'a>) -> Result<bool, Self::Error>;
    /// The value of `name`, as bytes, when it is there.
    fn value_of(&self, name: Name<'a>) -> Result<Option<Vec<u8>>, Self::Error>;
}

/// `wsgi.url_scheme` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// The scheme's name.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Scheme::Http => b"http",
            Scheme::Https => b"https",
        }
    }
}

/// Puts the CGI variables of the request with this header block into `sink`, and returns its
/// `wsgi.url_scheme` (which the caller adds, with the other `wsgi.*` keys). The rules:
///
/// - every header is a variable, its value the raw bytes; the first of a repeated name wins,
///   except that a repeated `HTTP_` header is joined as a proxy would (`, `; cookies `; `),
///   `HTTP_HOST` excepted (a Host header cannot repeat: a second value comes from the
///   frontend's configuration, as when nginx is given two `scgi_param HTTP_HOST`);
/// - `HTTP_CONTENT_TYPE` and `HTTP_CONTENT_LENGTH` (nginx repeats them beside the CGI
///   variables) are left out; the first becomes `CONTENT_TYPE` when that was not sent;
/// - `SCRIPT_NAME` and `PATH_INFO` follow [`pathinfo::split`] (with `mount`, `--script-name`);
/// - `QUERY_STRING`, `REQUEST_METHOD`, `SERVER_PROTOCOL`, `SERVER_NAME` and `SERVER_PORT` get
///   a value when missing, the last two from the Host header (ashd sends neither without it);
/// - the scheme is `X-Ash-Protocol` when it says http or https, then `HTTPS` on/1, else http.
pub fn fill_environ<'a, S: EnvironSink<'a>>(
    header_block: &'a [u8],
    mount: Option<&Mount>,
    sink: &mut S,
) -> Result<Scheme, S::Error> {
    let mut facts = HeadFacts::default();
    // Repeated HTTP_ headers, joined as raw bytes and stored once at the end (linear in the
    // head: a hostile head may repeat one header thousands of times).
    let mut repeated: HashMap<&'a [u8], Vec<u8>> = HashMap::new();
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
        if !sink.add_new(name, value)? && joins_repeats(name) {
            let mut joined = sink.value_of(Name::Header(name))?.unwrap_or_default();
            joined.extend_from_slice(join_separator(name));
            joined.extend_from_slice(value);
            repeated.insert(name, joined);
        }
    }
    for (name, joined) in &repeated {
        sink.set(Name::Header(name), joined)?;
    }
    if let Some(content_type) = facts.http_content_type.filter(|_| !facts.content_type) {
        sink.set(Name::Var(Var::ContentType), content_type)?;
    }
    let paths = &facts.paths;
    let (script_name, path_info) = pathinfo::split(paths, mount);
    if paths.script_name != Some(&*script_name) {
        sink.set(Name::Var(Var::ScriptName), &script_name)?;
    }
    if paths.path_info != Some(&*path_info) {
        sink.set(Name::Var(Var::PathInfo), &path_info)?;
    }
    for (var, default) in DEFAULTS {
        if !sink.has(Name::Var(var))? {
            sink.set(Name::Var(var), default)?;
        }
    }
    let scheme = facts.scheme();
    let has_name = sink.has(Name::Var(Var::ServerName))?;
    let has_port = sink.has(Name::Var(Var::ServerPort))?;
    if !(has_name && has_port) {
        let host = sink.value_of(Name::Var(Var::HttpHost))?;
        let (host_name, host_port) = host.as_deref().map_or((None, None), |h| {
            let (name, port) = split_host(h);
            (Some(name), port)
        });
        if !has_name {
            sink.set(Name::Var(Var::ServerName), host_name.unwrap_or(b"localhost"))?;
        }
        if !has_port {
            let default_port: &[u8] = match scheme {
                Scheme::Https => b"443",
                Scheme::Http => b"80",
            };
            sink.set(Name::Var(Var::ServerPort), host_port.unwrap_or(default_port))?;
        }
    }
    Ok(scheme)
}

/// CGI variables PEP 3333 requires, and their values when the frontend left them out.
const DEFAULTS: [(Var, &[u8]); 3] = [
    (Var::QueryString, b""),
    (Var::RequestMethod, b"GET"),
    (Var::ServerProtocol, b"HTTP/1.0"),
];

/// Whether a repeated header's values are joined (see [`fill_environ`]); otherwise the first
/// stands. A joined Host (`a, a:8080`) would be no host at all.
fn joins_repeats(name: &[u8]) -> bool {
    name.starts_with(b"HTTP_") && name != b"HTTP_HOST"
}

/// What goes between the values of a repeated HTTP header: cookies use `; ` (RFC 6265).
fn join_separator(name: &[u8]) -> &'static [u8] {
    if name == b"HTTP_COOKIE" {
        b"; "
    } else {
        b", "
    }
}

/// A Host header's name and port: `example.org:8080` gives both, `[::1]:80` keeps the brackets
/// on the name, and a value with no numeric port after its last colon is all name.
pub fn split_host(host: &[u8]) -> (&[u8], Option<&[u8]>) {
    match host.iter().rposition(|b| *b == b':') {
        Some(i) if host[i + 1..].iter().all(u8::is_ascii_digit) && !host[..i].ends_with(b":") => {
            (&host[..i], (i + 1 < host.len()).then(|| &host[i + 1..]))
        }
        _ => (host, None),
    }
}

/// Headers nginx (among others) passes twice, as `HTTP_CONTENT_TYPE` and `HTTP_CONTENT_LENGTH`
/// beside the CGI variables: RFC 3875 lets a server leave them out, and PEP 3333's validator
/// rejects an environ that has them, so they are not passed on.
fn is_content_duplicate(name: &[u8]) -> bool {
    name == b"HTTP_CONTENT_TYPE" || name == b"HTTP_CONTENT_LENGTH"
}

/// What the rules need from a head besides the variables themselves.
#[derive(Default)]
struct HeadFacts<'a> {
    ash_protocol: Option<&'a [u8]>,
    https: bool,
    paths: SentPaths<'a>,
    content_type: bool,
    http_content_type: Option<&'a [u8]>,
}

impl<'a> HeadFacts<'a> {
    /// Takes note of one header (the first of a repeated path header wins, as in the environ).
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

    /// `wsgi.url_scheme`: X-Ash-Protocol when it says http or https, then HTTPS=on/1, else http.
    fn scheme(&self) -> Scheme {
        match self.ash_protocol {
            Some(b"https") => Scheme::Https,
            Some(b"http") => Scheme::Http,
            _ if self.https => Scheme::Https,
            _ => Scheme::Http,
        }
    }
}

/// The byte-pair sink: variables in the order they first came, each name once.
#[derive(Default)]
struct Pairs<'a> {
    pairs: Vec<(&'a [u8], Cow<'a, [u8]>)>,
    /// Where each name stands in `pairs`.
    index: HashMap<&'a [u8], usize>,
}

impl<'a> EnvironSink<'a> for Pairs<'a> {
    type Error = std::convert::Infallible;

    fn add_new(&mut self, name: &'a [u8], value: &'a [u8]) -> Result<bool, Self::Error> {
        if self.index.contains_key(name) {
            return Ok(false);
        }
        self.index.insert(name, self.pairs.len());
        self.pairs.push((name, Cow::Borrowed(value)));
        Ok(true)
    }

    fn set(&mut self, name: Name<'a>, value: &[u8]) -> Result<(), Self::Error> {
        let name = name.as_bytes();
        match self.index.get(name) {
            Some(&at) => self.pairs[at].1 = Cow::Owned(value.to_vec()),
            None => {
                self.index.insert(name, self.pairs.len());
                self.pairs.push((name, Cow::Owned(value.to_vec())));
            }
        }
        Ok(())
    }

    fn has(&self, name: Name<'a>) -> Result<bool, Self::Error> {
        Ok(self.index.contains_key(name.as_bytes()))
    }

    fn value_of(&self, name: Name<'a>) -> Result<Option<Vec<u8>>, Self::Error> {
        Ok(self
            .index
            .get(name.as_bytes())
            .map(|&at| self.pairs[at].1.to_vec()))
    }
}

/// The CGI variables for a request as `NAME NUL VALUE NUL ...` bytes, by [`fill_environ`]'s
/// rules, plus `wsgi.url_scheme`: what the external-interpreter worker turns into its environ.
pub fn cgi_pairs(header_block: &[u8], mount: Option<&Mount>) -> Vec<u8> {
    let mut sink = Pairs::default();
    let scheme = match fill_environ(header_block, mount, &mut sink) {
        Ok(scheme) => scheme,
        Err(never) => match never {},
    };
    let mut out = Vec::with_capacity(header_block.len() + 128);
    let scheme_pair = (&b"wsgi.url_scheme"[..], Cow::Borrowed(scheme.as_bytes()));
    for (name, value) in sink.pairs.iter().chain(std::iter::once(&scheme_pair)) {
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
    fn a_repeated_host_is_not_joined_the_first_stands() {
        // nginx with Debian's scgi_params and a second HTTP_HOST param sends both.
        let head = block(&[
            ("CONTENT_LENGTH", "0"),
            ("HTTP_HOST", "example.org"),
            ("HTTP_HOST", "example.org:8080"),
            ("HTTP_HOST", "other"),
        ]);
        let got = pairs(&cgi_pairs(&head, None));
        assert_eq!(get(&got, "HTTP_HOST"), Some("example.org"));
        assert_eq!(got.iter().filter(|(k, _)| k == "HTTP_HOST").count(), 1);
        assert_eq!(get(&got, "SERVER_NAME"), Some("example.org"));
        assert_eq!(get(&got, "SERVER_PORT"), Some("80"));
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
        assert_eq!(split_host("h\u{e9}te:81".as_bytes()).1, Some(&b"81"[..]));
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

    #[test]
    fn made_up_answers_carry_their_status_and_cause() {
        let refusal = Answer::new("413 Content Too Large", "too big (--max-body)");
        let response = refusal.response();
        let text = String::from_utf8(response).unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(body, "413 Content Too Large: too big (--max-body)\n");
        assert_eq!(refusal.body_len(), body.len() as u64);
        assert_eq!(refusal.code(), 413);
        assert!(text.starts_with("Status: 413 Content Too Large\r\n"));
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        for fixed in [INTERNAL_ERROR, GATEWAY_TIMEOUT] {
            let text = String::from_utf8(fixed.response()).unwrap();
            let body = text.split("\r\n\r\n").nth(1).unwrap();
            assert_eq!(body, format!("{}\n", fixed.status));
            assert_eq!(fixed.body_len(), body.len() as u64);
        }
        assert_eq!(INTERNAL_ERROR.body_len(), 26);
    }
}
