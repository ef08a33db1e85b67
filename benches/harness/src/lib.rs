//! Pieces shared by the benchmark tools: SCGI request building and parsing, response-head
//! parsing, and a tiny flag parser (the tools take a handful of `--name value` flags).

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

/// The routes the benchmark app, the ceiling server and the load generator agree on.
pub mod routes {
    /// A 14-byte "Hello, world!" response.
    pub const HELLO: &str = "/hello";
    /// A 100 KiB response.
    pub const BIG: &str = "/big";
    /// The request body sent back.
    pub const ECHO: &str = "/echo";
    /// "Hello, world!" after a 10 ms sleep.
    pub const SLEEP: &str = "/sleep";
    /// Body of [`HELLO`] and [`SLEEP`].
    pub const HELLO_BODY: &[u8] = b"Hello, world!\n";
    /// Length of the [`BIG`] body.
    pub const BIG_LEN: usize = 100 * 1024;
}

/// Builds an SCGI request with the headers nginx's `scgi_params` sends, and `body_len` body bytes.
pub fn scgi_request(method: &str, path: &str, host: &str, port: u16, body_len: usize) -> Vec<u8> {
    let port = port.to_string();
    let length = body_len.to_string();
    let headers: [(&str, &str); 14] = [
        ("CONTENT_LENGTH", &length),
        ("SCGI", "1"),
        ("REQUEST_METHOD", method),
        ("REQUEST_URI", path),
        ("QUERY_STRING", ""),
        (
            "CONTENT_TYPE",
            if body_len > 0 {
                "application/octet-stream"
            } else {
                ""
            },
        ),
        ("DOCUMENT_URI", path),
        ("PATH_INFO", path),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "40000"),
        ("SERVER_NAME", host),
        ("SERVER_PORT", &port),
        ("HTTP_HOST", host),
    ];
    let mut payload = Vec::with_capacity(512);
    for (name, value) in headers {
        payload.extend_from_slice(name.as_bytes());
        payload.push(0);
        payload.extend_from_slice(value.as_bytes());
        payload.push(0);
    }
    let mut request = format!("{}:", payload.len()).into_bytes();
    request.extend_from_slice(&payload);
    request.push(b',');
    // A recognisable pattern, so a mangled echo would show in a hex dump.
    request.extend((0..body_len).map(|i| b'a' + (i % 26) as u8));
    request
}

/// A complete SCGI head: where the header block lies and where the body starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScgiHead {
    /// The header block (NAME NUL VALUE NUL ...) inside the buffer.
    pub payload: std::ops::Range<usize>,
    /// Bytes up to and including the closing comma.
    pub head_len: usize,
    /// The CONTENT_LENGTH header's value.
    pub content_length: usize,
}

/// Parses an SCGI netstring head: `Ok(None)` while more bytes are needed.
pub fn parse_scgi_head(buf: &[u8]) -> Result<Option<ScgiHead>, String> {
    let Some(colon) = buf.iter().take(8).position(|&b| b == b':') else {
        return if buf.len() >= 8 || buf.iter().any(|b| !b.is_ascii_digit()) {
            Err("the netstring length is not a number followed by ':'".into())
        } else {
            Ok(None)
        };
    };
    let len: usize = std::str::from_utf8(&buf[..colon])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("the netstring length is not a number")?;
    let head_len = colon + 1 + len + 1;
    if buf.len() < head_len {
        return Ok(None);
    }
    if buf[head_len - 1] != b',' {
        return Err("the netstring does not end with ','".into());
    }
    let payload = colon + 1..colon + 1 + len;
    let content_length = header(&buf[payload.clone()], b"CONTENT_LENGTH")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .ok_or("CONTENT_LENGTH is missing or not a number")?;
    Ok(Some(ScgiHead {
        payload,
        head_len,
        content_length,
    }))
}

/// The value of a header in an SCGI header block.
pub fn header<'a>(block: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut fields = block.split(|&b| b == 0);
    while let (Some(n), Some(v)) = (fields.next(), fields.next()) {
        if n == name {
            return Some(v);
        }
    }
    None
}

/// Parses the start of a response: its status code and head length, once the blank line is in.
/// Accepts both a CGI `Status:` head (or none: 200) and an HTTP status line, as servers differ.
pub fn parse_response_head(buf: &[u8]) -> Option<Result<(u16, usize), String>> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2))?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.lines();
    let first = lines.next().unwrap_or("");
    let code = if first.starts_with("HTTP/") {
        first.split_whitespace().nth(1)
    } else {
        std::iter::once(first)
            .chain(lines)
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("status").then(|| value.trim())
            })
            .map(|v| v.split_whitespace().next().unwrap_or(""))
            .or(Some("200"))
    };
    Some(
        code.and_then(|c| c.parse::<u16>().ok())
            .map(|c| (c, end))
            .ok_or_else(|| format!("no status in the response head {first:?}")),
    )
}

/// `--name value` flags, parsed once; each getter names the flag in its error.
pub struct Flags {
    values: HashMap<String, String>,
    switches: Vec<String>,
}

impl Flags {
    /// Reads `args`; names in `switches` take no value.
    pub fn parse(args: impl Iterator<Item = String>, switches: &[&str]) -> Result<Flags, String> {
        let mut values = HashMap::new();
        let mut seen = Vec::new();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?} (flags are --name value)"));
            };
            if switches.contains(&name) {
                seen.push(name.to_string());
                continue;
            }
            let value = args.next().ok_or_else(|| format!("--{name} needs a value"))?;
            values.insert(name.to_string(), value);
        }
        Ok(Flags {
            values,
            switches: seen,
        })
    }

    /// A flag's value, or `default` when absent.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> Result<T, String>
    where
        T::Err: Display,
    {
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| format!("--{name} {v:?}: {e}")),
        }
    }

    /// A flag's value, if given.
    pub fn opt<T: FromStr>(&self, name: &str) -> Result<Option<T>, String>
    where
        T::Err: Display,
    {
        self.values
            .get(name)
            .map(|v| v.parse().map_err(|e| format!("--{name} {v:?}: {e}")))
            .transpose()
    }

    /// Whether a switch was given.
    pub fn has(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }

    /// Names of flags given that `known` does not list (so a typo is not silently ignored).
    pub fn unknown(&self, known: &[&str]) -> Vec<String> {
        self.values
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .cloned()
            .collect()
    }
}

/// Raises the soft open-file limit to the hard one: a run may hold over a thousand sockets.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_through_the_head_parser() {
        let request = scgi_request("POST", "/echo", "localhost", 80, 5);
        let head = parse_scgi_head(&request).unwrap().unwrap();
        assert_eq!(head.content_length, 5);
        assert_eq!(&request[head.head_len..], b"abcde");
        let block = &request[head.payload];
        assert_eq!(header(block, b"PATH_INFO"), Some(&b"/echo"[..]));
        assert_eq!(header(block, b"SCGI"), Some(&b"1"[..]));
        assert_eq!(parse_scgi_head(&request[..10]), Ok(None));
        assert!(parse_scgi_head(b"x:").is_err());
    }

    #[test]
    fn response_heads_in_both_styles() {
        assert_eq!(
            parse_response_head(b"Status: 404 Not Found\r\nA: b\r\n\r\nx"),
            Some(Ok((404, 31)))
        );
        assert_eq!(
            parse_response_head(b"HTTP/1.1 200 OK\r\n\r\n"),
            Some(Ok((200, 19)))
        );
        assert_eq!(
            parse_response_head(b"Content-Type: a\r\n\r\n"),
            Some(Ok((200, 19)))
        );
        assert_eq!(parse_response_head(b"Status: 200 OK\r\n"), None);
        assert!(matches!(parse_response_head(b"HTTP/1.1 x\r\n\r\n"), Some(Err(_))));
    }
}
