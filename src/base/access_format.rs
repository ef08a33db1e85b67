//! The access log's line formats (`--access-log-format`): `combined` (the default), `json`
//! (one object per line), or a template of named fields such as
//! `{remote} {method} {path} {status} {duration_us}`.
//!
//! Values come from clients: every format escapes them so that a client cannot forge
//! fields or lines.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one line says of one request.
#[derive(Debug, Clone)]
pub struct Record {
    /// `REMOTE_ADDR`, raw.
    pub remote: Vec<u8>,
    /// `REQUEST_METHOD`, raw.
    pub method: Vec<u8>,
    /// `REQUEST_URI` (or SCRIPT_NAME + PATH_INFO + `?` + QUERY_STRING), raw.
    pub uri: Vec<u8>,
    /// The path part of the URI, raw.
    pub path: Vec<u8>,
    /// `QUERY_STRING`, raw.
    pub query: Vec<u8>,
    /// `SERVER_PROTOCOL`, raw.
    pub protocol: Vec<u8>,
    /// The Referer header, raw.
    pub referer: Vec<u8>,
    /// The User-Agent header, raw.
    pub user_agent: Vec<u8>,
    /// The status sent.
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    /// From accept to the end of the response.
    pub duration: Duration,
    /// When the response ended.
    pub time: SystemTime,
    /// The process that served it.
    pub pid: u32,
}

impl Default for Record {
    fn default() -> Record {
        Record {
            remote: Vec::new(),
            method: Vec::new(),
            uri: Vec::new(),
            path: Vec::new(),
            query: Vec::new(),
            protocol: Vec::new(),
            referer: Vec::new(),
            user_agent: Vec::new(),
            status: 0,
            bytes: 0,
            duration: Duration::ZERO,
            time: UNIX_EPOCH,
            pid: 0,
        }
    }
}

/// A field a template can name (see `FIELDS` for their names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Remote,
    Time,
    IsoTime,
    Method,
    Uri,
    Path,
    Query,
    Protocol,
    Status,
    Bytes,
    Referer,
    UserAgent,
    DurationUs,
    Seconds,
    Pid,
}

/// The fields by name, for templates (and their error message).
const FIELDS: [(&str, Field); 15] = [
    ("remote", Field::Remote),
    ("time", Field::Time),
    ("iso_time", Field::IsoTime),
    ("method", Field::Method),
    ("uri", Field::Uri),
    ("path", Field::Path),
    ("query", Field::Query),
    ("protocol", Field::Protocol),
    ("status", Field::Status),
    ("bytes", Field::Bytes),
    ("referer", Field::Referer),
    ("user_agent", Field::UserAgent),
    ("duration_us", Field::DurationUs),
    ("seconds", Field::Seconds),
    ("pid", Field::Pid),
];

/// A part of a template: text as it is, or a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text written as it is.
    Text(String),
    /// A field's value.
    Field(Field),
}

/// How each access log line is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LineFormat {
    /// `remote - - [time] "METHOD URI PROTOCOL" status bytes "referer" "user-agent" seconds`.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
    /// A template of text and `{field}`s (`{{` and `}}` for braces).
    Template(Vec<Piece>),
}

impl LineFormat {
    /// Parses `combined`, `json`, or a template.
    pub fn parse(text: &str) -> Result<LineFormat, String> {
        match text {
            "combined" => return Ok(LineFormat::Combined),
            "json" => return Ok(LineFormat::Json),
            _ => {}
        }
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                    let field = FIELDS
                        .iter()
                        .find(|(known, _)| *known == name)
                        .map(|(_, field)| *field)
                        .ok_or_else(|| {
                            let known: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
                            format!(
                                "unknown field {{{name}}} (known: {}; or the formats combined, json)",
                                known.join(", ")
                            )
                        })?;
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Field(field));
                }
                '}' => return Err("a lone '}' (write '}}' for a brace)".into()),
                c => literal.push(c),
            }
        }
        if !pieces.iter().any(|p| matches!(p, Piece::Field(_))) {
            return Err(format!(
                "{text:?} names no field: use combined, json, or a template such as \"{{remote}} {{status}}\""
            ));
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(LineFormat::Template(pieces))
    }

    /// The line for `record`, with its newline.
    pub fn line(&self, record: &Record) -> String {
        let mut out = String::with_capacity(256);
        match self {
            LineFormat::Combined => combined(&mut out, record),
            LineFormat::Json => json(&mut out, record),
            LineFormat::Template(pieces) => {
                for piece in pieces {
                    match piece {
                        Piece::Text(text) => out.push_str(text),
                        Piece::Field(field) => field_text(&mut out, *field, record),
                    }
                }
            }
        }
        out.push('\n');
        out
    }
}

fn combined(out: &mut String, r: &Record) {
    let dash = |out: &mut String, value: &[u8]| {
        if value.is_empty() {
            out.push('-');
        } else {
            escape_into(out, value);
        }
    };
    dash(out, &r.remote);
    let _ = write!(out, " - - [{}] \"", clf_time(r.time));
    dash(out, &r.method);
    out.push(' ');
    dash(out, &r.uri);
    out.push(' ');
    dash(out, &r.protocol);
    let _ = write!(out, "\" {} {} \"", r.status, r.bytes);
    dash(out, &r.referer);
    out.push_str("\" \"");
    dash(out, &r.user_agent);
    let _ = write!(out, "\" {:.6}", r.duration.as_secs_f64());
}

fn json(out: &mut String, r: &Record) {
    out.push('{');
    let text = |out: &mut String, name: &str, value: &[u8], first: bool| {
        if !first {
            out.push(',');
        }
        let _ = write!(out, "\"{name}\":\"");
        json_escape_into(out, value);
        out.push('"');
    };
    text(out, "time", iso_time(r.time).as_bytes(), true);
    text(out, "remote", &r.remote, false);
    text(out, "method", &r.method, false);
    text(out, "path", &r.path, false);
    text(out, "query", &r.query, false);
    text(out, "uri", &r.uri, false);
    text(out, "protocol", &r.protocol, false);
    let _ = write!(
        out,
        ",\"status\":{},\"bytes\":{},\"duration_us\":{},\"pid\":{}",
        r.status,
        r.bytes,
        r.duration.as_micros(),
        r.pid
    );
    text(out, "referer", &r.referer, false);
    text(out, "user_agent", &r.user_agent, false);
    out.push('}');
}

fn field_text(out: &mut String, field: Field, r: &Record) {
    let escaped = |out: &mut String, value: &[u8]| {
        if value.is_empty() {
            out.push('-');
        } else {
            escape_into(out, value);
        }
    };
    match field {
        Field::Remote => escaped(out, &r.remote),
        Field::Time => out.push_str(&clf_time(r.time)),
        Field::IsoTime => out.push_str(&iso_time(r.time)),
        Field::Method => escaped(out, &r.method),
        Field::Uri => escaped(out, &r.uri),
        Field::Path => escaped(out, &r.path),
        Field::Query => escaped(out, &r.query),
        Field::Protocol => escaped(out, &r.protocol),
        Field::Status => _ = write!(out, "{}", r.status),
        Field::Bytes => _ = write!(out, "{}", r.bytes),
        Field::Referer => escaped(out, &r.referer),
        Field::UserAgent => escaped(out, &r.user_agent),
        Field::DurationUs => _ = write!(out, "{}", r.duration.as_micros()),
        Field::Seconds => _ = write!(out, "{:.6}", r.duration.as_secs_f64()),
        Field::Pid => _ = write!(out, "{}", r.pid),
    }
}

/// Appends `value` with `"`, `\` and bytes outside printable ASCII as `\xHH`, as nginx does.
fn escape_into(out: &mut String, value: &[u8]) {
    for &b in value {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b as char);
        }
    }
}

/// Appends `value` as the inside of a JSON string: valid UTF-8 as it is (control characters,
/// `"` and `\` escaped); a byte that is not part of valid UTF-8 as `\u00HH`.
fn json_escape_into(out: &mut String, value: &[u8]) {
    for chunk in value.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                // Line and paragraph separators end lines in some readers.
                '\u{2028}' | '\u{2029}' => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        for &b in chunk.invalid() {
            let _ = write!(out, "\\u{b:04x}");
        }
    }
}

/// `23/Nov/2026:18:25:01 +0000` (always UTC).
fn clf_time(now: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day, secs) = civil(now);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `2026-11-23T18:25:01.123456Z` (UTC, microseconds).
fn iso_time(now: SystemTime) -> String {
    let (year, month, day, secs) = civil(now);
    let micros = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_micros())
        .unwrap_or(0);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// (year, month, day, seconds into the day) of a time, in UTC.
fn civil(now: SystemTime) -> (i64, i64, i64, i64) {
    let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    (year, month, day, rest)
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            remote: b"192.0.2.1".to_vec(),
            method: b"GET".to_vec(),
            uri: b"/caf\xc3\xa9?q=\"1\"".to_vec(),
            path: b"/caf\xc3\xa9".to_vec(),
            query: b"q=\"1\"".to_vec(),
            protocol: b"HTTP/1.1".to_vec(),
            referer: Vec::new(),
            user_agent: b"agent\n\xff".to_vec(),
            status: 200,
            bytes: 12,
            duration: Duration::from_micros(1500),
            time: UNIX_EPOCH + Duration::from_secs(1_795_449_145),
            pid: 42,
        }
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_780), (2026, 11, 23));
        let t = UNIX_EPOCH + Duration::from_secs(1_795_449_145);
        assert_eq!(clf_time(t), "23/Nov/2026:15:52:25 +0000");
        assert_eq!(iso_time(t), "2026-11-23T15:52:25.000000Z");
    }

    #[test]
    fn escaping() {
        let mut out = String::new();
        escape_into(&mut out, b"a\"b\\c\nd\xe9");
        assert_eq!(out, "a\\x22b\\x5Cc\\x0Ad\\xE9");
        let mut out = String::new();
        json_escape_into(&mut out, b"a\"b\\c\nd\xe9 caf\xc3\xa9");
        assert_eq!(out, "a\\\"b\\\\c\\u000ad\\u00e9 café");
    }

    #[test]
    fn the_three_formats() {
        let r = record();
        assert_eq!(
            LineFormat::Combined.line(&r),
            "192.0.2.1 - - [23/Nov/2026:15:52:25 +0000] \"GET /caf\\xC3\\xA9?q=\\x221\\x22 HTTP/1.1\" 200 12 \"-\" \"agent\\x0A\\xFF\" 0.001500\n"
        );
        let json = LineFormat::Json.line(&r);
        let parsed: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(parsed["path"], "/café");
        assert_eq!(parsed["query"], "q=\"1\"");
        assert_eq!(parsed["status"], 200);
        assert_eq!(parsed["duration_us"], 1500);
        assert_eq!(parsed["pid"], 42);
        assert_eq!(parsed["user_agent"], "agent\n\u{ff}");
        let template = LineFormat::parse("{remote} {{{method}}} {status} {duration_us}us {pid}").unwrap();
        assert_eq!(template.line(&r), "192.0.2.1 {GET} 200 1500us 42\n");
    }

    #[test]
    fn bad_templates_name_the_problem() {
        assert!(LineFormat::parse("{nope}")
            .unwrap_err()
            .contains("unknown field {nope}"));
        assert!(LineFormat::parse("plain text")
            .unwrap_err()
            .contains("names no field"));
        assert!(LineFormat::parse("{status} }").unwrap_err().contains("'}'"));
        assert_eq!(LineFormat::parse("combined").unwrap(), LineFormat::Combined);
        assert_eq!(LineFormat::parse("json").unwrap(), LineFormat::Json);
    }
}
