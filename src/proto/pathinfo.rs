//! SCRIPT_NAME and PATH_INFO from whatever the frontend sent: one rule for nginx, Apache,
//! lighttpd and ashd (pure byte logic, no Python).
//!
//! The rule (the manual page states it too):
//! 1. The request's decoded path is `SCRIPT_NAME + PATH_INFO` as sent when that is non-empty
//!    (CGI: no PATH_INFO means SCRIPT_NAME is the whole path, as Apache sends it); else
//!    `DOCUMENT_URI` (nginx's stock `scgi_params`); else the path of `REQUEST_URI`,
//!    percent-decoded.
//! 2. With `--script-name MOUNT`, SCRIPT_NAME is MOUNT and PATH_INFO the decoded path with
//!    MOUNT taken off its front (the whole path when it does not start with MOUNT: the
//!    frontend already took it off).
//! 3. Without it, a split the frontend made (PATH_INFO sent) is kept, with a slash moved
//!    from the end of SCRIPT_NAME to the front of PATH_INFO (ashd's patplex sends `/app/` +
//!    `x`); when the frontend sent no PATH_INFO, SCRIPT_NAME is empty and PATH_INFO is the
//!    whole decoded path.

use std::borrow::Cow;

/// The path-related headers of one request, as sent (raw bytes).
#[derive(Debug, Default, Clone, Copy)]
pub struct SentPaths<'a> {
    /// `SCRIPT_NAME`, when sent.
    pub script_name: Option<&'a [u8]>,
    /// `PATH_INFO`, when sent.
    pub path_info: Option<&'a [u8]>,
    /// `DOCUMENT_URI` (nginx: the decoded, normalised path), when sent.
    pub document_uri: Option<&'a [u8]>,
    /// `REQUEST_URI` (the raw request target), when sent.
    pub request_uri: Option<&'a [u8]>,
}

/// The mount point named with `--script-name`, checked and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount(Vec<u8>);

impl Mount {
    /// Checks a `--script-name` value: empty or `/` means the root; otherwise it must start
    /// with `/`; trailing slashes are dropped (`/app/` is `/app`).
    pub fn parse(text: &str) -> Result<Mount, &'static str> {
        if !text.is_empty() && !text.starts_with('/') {
            return Err("a mount point starts with '/', as in /app");
        }
        if text.contains(['?', '#']) || text.chars().any(char::is_control) {
            return Err("a mount point is a path: no '?', '#' or control characters");
        }
        Ok(Mount(text.trim_end_matches('/').as_bytes().to_vec()))
    }

    /// The SCRIPT_NAME this mount gives (empty for the root).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Computes (SCRIPT_NAME, PATH_INFO) for a request; see the module documentation.
pub fn split<'a>(sent: &SentPaths<'a>, mount: Option<&Mount>) -> (Cow<'a, [u8]>, Cow<'a, [u8]>) {
    if mount.is_none() {
        if let Some(path_info) = sent.path_info {
            let script_name = sent.script_name.unwrap_or_default();
            return match (script_name.strip_suffix(b"/"), path_info.first()) {
                // An empty PATH_INFO lacks the slash too: patplex sends `/app2/` and `` for
                // the mount's own page, which is `/app2` and `/`.
                (Some(shorter), first) if first != Some(&b'/') => {
                    let mut moved = Vec::with_capacity(path_info.len() + 1);
                    moved.push(b'/');
                    moved.extend_from_slice(path_info);
                    (Cow::Borrowed(shorter), Cow::Owned(moved))
                }
                _ => (Cow::Borrowed(script_name), Cow::Borrowed(path_info)),
            };
        }
    }
    let full = full_path(sent);
    match mount {
        None => (Cow::Borrowed(&b""[..]), full),
        Some(mount) => {
            let prefix = mount.as_bytes();
            let rest = match full.strip_prefix(prefix) {
                Some(rest) if rest.is_empty() || rest[0] == b'/' => Some(rest.len()),
                _ => None,
            };
            let path_info = match (rest, full) {
                (Some(len), Cow::Borrowed(b)) => Cow::Borrowed(&b[b.len() - len..]),
                (Some(len), Cow::Owned(mut v)) => {
                    v.drain(..v.len() - len);
                    Cow::Owned(v)
                }
                (None, full) => full,
            };
            (Cow::Owned(prefix.to_vec()), path_info)
        }
    }
}

/// The whole decoded path of the request (step 1 of the rule).
fn full_path<'a>(sent: &SentPaths<'a>) -> Cow<'a, [u8]> {
    let script_name = sent.script_name.unwrap_or_default();
    let path_info = sent.path_info.unwrap_or_default();
    match (script_name.is_empty(), path_info.is_empty()) {
        (false, true) => return Cow::Borrowed(script_name),
        (true, false) => return Cow::Borrowed(path_info),
        (false, false) => return Cow::Owned([script_name, path_info].concat()),
        (true, true) => {}
    }
    if let Some(document_uri) = sent.document_uri.filter(|d| !d.is_empty()) {
        return Cow::Borrowed(document_uri);
    }
    match sent.request_uri {
        Some(uri) => {
            let end = memchr::memchr2(b'?', b'#', uri).unwrap_or(uri.len());
            percent_decode(&uri[..end])
        }
        None => Cow::Borrowed(&b""[..]),
    }
}

/// Decodes `%XX` escapes to the bytes they stand for (`%2F` too, as every frontend does);
/// a `%` not followed by two hex digits stays as it is.
pub fn percent_decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.contains(&b'%') {
        return Cow::Borrowed(raw);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(hi), Some(lo)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent<'a>(
        script_name: Option<&'a str>,
        path_info: Option<&'a str>,
        document_uri: Option<&'a str>,
        request_uri: Option<&'a str>,
    ) -> SentPaths<'a> {
        SentPaths {
            script_name: script_name.map(str::as_bytes),
            path_info: path_info.map(str::as_bytes),
            document_uri: document_uri.map(str::as_bytes),
            request_uri: request_uri.map(str::as_bytes),
        }
    }

    fn run(sent: SentPaths<'_>, mount: Option<&str>) -> (String, String) {
        let mount = mount.map(|m| Mount::parse(m).unwrap());
        let (s, p) = split(&sent, mount.as_ref());
        (
            String::from_utf8(s.into_owned()).unwrap(),
            String::from_utf8(p.into_owned()).unwrap(),
        )
    }

    /// What each frontend sends (see the frontends reference) and what the app must see.
    #[rustfmt::skip]
    #[test]
    fn every_frontend_gets_mount_and_rest() {
        let rows: &[(&str, SentPaths, Option<&str>, &str, &str)] = &[
            ("nginx /a/b", sent(None, None, Some("/a/b"), Some("/a/b?q")), None, "", "/a/b"),
            ("nginx mount", sent(None, None, Some("/app2/x/y"), Some("/app2/x/y")), Some("/app2"), "/app2", "/x/y"),
            ("nginx mount itself", sent(None, None, Some("/app2"), Some("/app2")), Some("/app2"), "/app2", ""),
            ("nginx mount prefix only", sent(None, None, Some("/app2x"), None), Some("/app2"), "/app2", "/app2x"),
            ("nginx raw uri only", sent(None, None, None, Some("/caf%C3%A9/%2F?x=%41")), None, "", "/caf\u{e9}//"),
            ("apache /a/b", sent(Some("/a/b"), None, None, Some("/a/b")), None, "", "/a/b"),
            ("apache /", sent(Some("/"), None, None, Some("/")), None, "", "/"),
            ("apache mount", sent(Some("/app2/x/y"), None, None, None), Some("/app2/"), "/app2", "/x/y"),
            ("apache pathinfo", sent(Some("/pi"), Some("/x/y"), None, None), None, "/pi", "/x/y"),
            ("lighttpd fix-root", sent(Some(""), Some("/a/b"), None, None), None, "", "/a/b"),
            ("lighttpd root unfixed, mount named", sent(Some("/a"), Some("/b"), None, None), Some("/"), "", "/a/b"),
            ("lighttpd /app2/ + mount", sent(Some("/app2/x"), Some("/y"), None, None), Some("/app2"), "/app2", "/x/y"),
            ("lighttpd /app3", sent(Some("/app3"), Some("/x/y"), None, None), None, "/app3", "/x/y"),
            ("ashd htparser", sent(Some(""), Some("/app2/x/y"), None, Some("/app2/x/y")), None, "", "/app2/x/y"),
            ("ashd patplex", sent(Some("/app2/"), Some("x/y"), None, None), None, "/app2", "/x/y"),
            ("ashd patplex, the mount itself", sent(Some("/app2/"), Some(""), None, None), None, "/app2", "/"),
            ("root with an empty PATH_INFO", sent(Some("/"), Some(""), None, None), None, "", "/"),
            ("ashd patplex + mount", sent(Some("/app2/"), Some("x/y"), None, None), Some("/app2"), "/app2", "/x/y"),
            ("ashd prefix stripped", sent(Some(""), Some("/x"), None, None), Some("/app2"), "/app2", "/x"),
            ("nothing at all", sent(None, None, None, None), None, "", ""),
        ];
        for (name, sent, mount, script_name, path_info) in rows {
            assert_eq!(run(*sent, *mount), (script_name.to_string(), path_info.to_string()), "{name}");
        }
    }

    #[test]
    fn percent_decoding_keeps_raw_bytes_and_bad_escapes() {
        assert_eq!(&*percent_decode(b"/a%20b%ff"), b"/a b\xff");
        assert_eq!(&*percent_decode(b"/100%"), b"/100%");
        assert_eq!(&*percent_decode(b"/%4"), b"/%4");
        assert_eq!(&*percent_decode(b"/%zz%41"), b"/%zzA");
        assert!(matches!(percent_decode(b"/plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn mount_points_are_checked() {
        assert_eq!(Mount::parse("/").unwrap().as_bytes(), b"");
        assert_eq!(Mount::parse("").unwrap().as_bytes(), b"");
        assert_eq!(Mount::parse("/app/").unwrap().as_bytes(), b"/app");
        assert!(Mount::parse("app").is_err());
        assert!(Mount::parse("/a?b").is_err());
    }
}
