//! Incremental, zero-copy parser for the head of an SCGI request (the netstring of headers).
//!
//! An SCGI request is `LENGTH ":" HEADERS ","` followed by exactly `CONTENT_LENGTH` body bytes,
//! where `HEADERS` is a sequence of `NAME NUL VALUE NUL`. [`parse_head`] works on whatever part
//! of the request has arrived so far and tells "need more bytes" ([`Status::Partial`]) apart
//! from "this can never become a valid request" ([`HeadError`]).

use std::fmt;
use std::iter::FusedIterator;
use std::ops::Range;

use memchr::memchr;

/// Outcome of parsing a buffer that may hold only the start of a request.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Status<T> {
    /// The buffer holds the whole item.
    Complete(T),
    /// The buffer is a valid prefix; read more bytes and parse again.
    Partial,
}

/// Where the parts of a complete head are in the buffer it was parsed from.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct HeadInfo {
    /// Bytes of the whole netstring including `LENGTH`, `:` and `,`; the body starts here.
    pub head_len: usize,
    /// The header block (`NAME NUL VALUE NUL ...`) inside the buffer.
    pub payload: Range<usize>,
    /// The value of the `CONTENT_LENGTH` header: how many body bytes follow the head.
    pub content_length: u64,
    /// `HTTP_TRANSFER_ENCODING` names `chunked`: the client sent its body chunked. Frontends
    /// that de-chunk it send its real length; ashd sends `CONTENT_LENGTH` 0 and the bytes
    /// after the head, which this lets the server notice.
    pub chunked: bool,
}

impl HeadInfo {
    /// Iterates the headers of this head, given the buffer it was parsed from.
    pub fn headers<'a>(&self, buf: &'a [u8]) -> Headers<'a> {
        // A buffer other than the parsed one may be shorter; yield nothing rather than panic.
        headers(buf.get(self.payload.clone()).unwrap_or_default())
    }
}

/// Why a request head can never be valid, whatever bytes follow.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum HeadError {
    /// The request starts with `:`.
    #[error("netstring length is empty")]
    EmptyLength,
    /// A byte other than a digit or the closing `:` in the length (e.g. `G` of `GET /`).
    #[error("netstring length contains non-digit byte {}", Byte(*.0))]
    NonDigitInLength(u8),
    /// The length has a superfluous leading zero, as in `07:`.
    #[error("netstring length has a leading zero")]
    LeadingZero,
    /// The declared header block is larger than the caller's limit.
    #[error("header block of at least {declared} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// The length as read when it passed the limit; more digits may follow, so it is a
        /// lower bound (saturated at `usize::MAX`).
        declared: usize,
        /// The `max_payload` the caller passed.
        limit: usize,
    },
    /// The byte after the header block is not `,`.
    #[error("missing ',' after the header block (found {})", Byte(*.0))]
    MissingComma(u8),
    /// A non-empty header block whose last byte is not NUL.
    #[error("header block does not end with a NUL byte")]
    UnterminatedField,
    /// The header block ends after a name, with no value for it.
    #[error("header block ends inside a header (odd number of fields)")]
    HeaderWithoutValue,
    /// A header whose name is the empty string.
    #[error("empty header name")]
    EmptyName,
    /// No `CONTENT_LENGTH` header, which SCGI requires.
    #[error("CONTENT_LENGTH header missing")]
    MissingContentLength,
    /// `CONTENT_LENGTH` is empty, has a non-digit byte or does not fit in a `u64`.
    #[error("CONTENT_LENGTH is not a decimal number")]
    BadContentLength,
    /// More than one `CONTENT_LENGTH` header; rejected because front ends could disagree on
    /// which one frames the body (request smuggling).
    #[error("CONTENT_LENGTH given twice")]
    DuplicateContentLength,
}

/// Shows a byte as hex, plus the character when it is printable ASCII.
struct Byte(u8);

impl fmt::Display for Byte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b == b' ' || b.is_ascii_graphic() {
            write!(f, "0x{b:02x} ('{}')", char::from(b))
        } else {
            write!(f, "0x{b:02x}")
        }
    }
}

/// Most digits a length can have before it must exceed any `usize` limit. Together with
/// saturating arithmetic this bounds the work and rules out overflow.
const MAX_LEN_DIGITS: usize = usize::MAX.ilog10() as usize + 1;

/// Parses the head of an SCGI request from the start of `buf`.
///
/// `max_payload` limits the header block (the netstring's payload); a longer declared length
/// fails as soon as its digits exceed it. Bytes after the head (the body) are ignored.
/// Once the length prefix is in, a call on an incomplete head costs O(1): the header block is
/// only scanned when it and its `,` have fully arrived.
pub fn parse_head(buf: &[u8], max_payload: usize) -> Result<Status<HeadInfo>, HeadError> {
    let Some((len, colon)) = parse_length(buf, max_payload)? else {
        return Ok(Status::Partial);
    };
    let start = colon + 1;
    let rest = buf.get(start..).unwrap_or_default();
    // Indexing relative to `rest` avoids computing `start + len`, which could overflow for
    // a huge limit and a length that can never arrive anyway.
    let (Some(payload), Some(&after)) = (rest.get(..len), rest.get(len)) else {
        return Ok(Status::Partial);
    };
    if after != b',' {
        return Err(HeadError::MissingComma(after));
    }
    let (content_length, chunked) = check_headers(payload)?;
    Ok(Status::Complete(HeadInfo {
        head_len: start + len + 1,
        payload: start..start + len,
        content_length,
        chunked,
    }))
}

/// Reads `LENGTH ":"`, returning the length and the index of the colon, or `None` if the
/// buffer ends first.
fn parse_length(buf: &[u8], max_payload: usize) -> Result<Option<(usize, usize)>, HeadError> {
    let mut len: usize = 0;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b':' if i == 0 => return Err(HeadError::EmptyLength),
            b':' => return Ok(Some((len, i))),
            b'0'..=b'9' if i == 1 && buf.first() == Some(&b'0') => return Err(HeadError::LeadingZero),
            b'0'..=b'9' => {
                len = len.saturating_mul(10).saturating_add(usize::from(b - b'0'));
                // Fail now rather than wait for ':' so a client cannot keep us reading digits.
                if len > max_payload || i >= MAX_LEN_DIGITS {
                    return Err(HeadError::TooLarge {
                        declared: len,
                        limit: max_payload,
                    });
                }
            }
            _ => return Err(HeadError::NonDigitInLength(b)),
        }
    }
    Ok(None)
}

/// Validates a complete header block and returns its `CONTENT_LENGTH`, and whether
/// `HTTP_TRANSFER_ENCODING` names `chunked` (see [`HeadInfo::chunked`]).
fn check_headers(payload: &[u8]) -> Result<(u64, bool), HeadError> {
    // Checking the last byte first means every field found below is NUL-terminated.
    if payload.last().is_some_and(|&b| b != 0) {
        return Err(HeadError::UnterminatedField);
    }
    let mut rest = payload;
    let mut content_length = None;
    let mut chunked = false;
    while let Some(name) = next_field(&mut rest) {
        if name.is_empty() {
            return Err(HeadError::EmptyName);
        }
        let value = next_field(&mut rest).ok_or(HeadError::HeaderWithoutValue)?;
        // Other names may repeat (nginx sends duplicates); only the body framing must be unique.
        if name == b"CONTENT_LENGTH" {
            if content_length.is_some() {
                return Err(HeadError::DuplicateContentLength);
            }
            content_length = Some(parse_decimal(value).ok_or(HeadError::BadContentLength)?);
        } else if name == b"HTTP_TRANSFER_ENCODING" {
            chunked |= names_chunked(value);
        }
    }
    Ok((content_length.ok_or(HeadError::MissingContentLength)?, chunked))
}

/// Whether a Transfer-Encoding value lists `chunked` (any case, among others).
fn names_chunked(value: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Plain ASCII decimal: no sign, no spaces, not empty; leading zeros are fine.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Splits off the next NUL-terminated field, or returns `None` if no NUL is left.
fn next_field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let nul = memchr(0, rest)?;
    let field = rest.get(..nul)?;
    *rest = rest.get(nul + 1..)?;
    Some(field)
}

/// Iterates `(name, value)` pairs over a header block that [`parse_head`] accepted.
///
/// On any other input it stops at the first incomplete pair instead of failing.
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let name = next_field(&mut self.rest)?;
        let value = next_field(&mut self.rest)?;
        Some((name, value))
    }
}

// Once a field lacks its NUL, no NUL is left, so every later call returns `None` too.
impl FusedIterator for Headers<'_> {}

/// Iterates the `(name, value)` pairs of a header block, such as `&buf[info.payload.clone()]`.
pub fn headers(payload: &[u8]) -> Headers<'_> {
    Headers { rest: payload }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use HeadError::*;

    const MAX: usize = 65536;

    fn done(head_len: usize, payload: Range<usize>, content_length: u64) -> Status<HeadInfo> {
        Status::Complete(HeadInfo {
            head_len,
            payload,
            content_length,
            chunked: false,
        })
    }

    type Row = (
        &'static str,
        &'static [u8],
        usize,
        Result<Status<HeadInfo>, HeadError>,
    );

    #[rustfmt::skip]
    fn table() -> Vec<Row> {
        let partial = Ok(Status::Partial);
        vec![
            // Success shapes.
            ("only_content_length", b"17:CONTENT_LENGTH\x000\x00,", MAX, Ok(done(21, 3..20, 0))),
            ("content_length_first", b"25:CONTENT_LENGTH\x0027\x00SCGI\x001\x00,", MAX, Ok(done(29, 3..28, 27))),
            ("content_length_last", b"25:SCGI\x001\x00CONTENT_LENGTH\x0027\x00,", MAX, Ok(done(29, 3..28, 27))),
            ("content_length_middle", b"44:SCGI\x001\x00CONTENT_LENGTH\x0027\x00REQUEST_METHOD\x00GET\x00,", MAX, Ok(done(48, 3..47, 27))),
            ("empty_values", b"39:QUERY_STRING\x00\x00CONTENT_LENGTH\x005\x00HTTP_X\x00\x00,", MAX, Ok(done(43, 3..42, 5))),
            ("duplicate_other_names", b"45:HTTP_COOKIE\x00a\x00HTTP_COOKIE\x00b\x00CONTENT_LENGTH\x000\x00,", MAX, Ok(done(49, 3..48, 0))),
            ("body_after_head_ignored", b"17:CONTENT_LENGTH\x005\x00,hello", MAX, Ok(done(21, 3..20, 5))),
            ("content_length_leading_zeros", b"19:CONTENT_LENGTH\x00007\x00,", MAX, Ok(done(23, 3..22, 7))),
            ("content_length_u64_max", b"36:CONTENT_LENGTH\x0018446744073709551615\x00,", MAX, Ok(done(40, 3..39, u64::MAX))),
            ("payload_exactly_at_limit", b"17:CONTENT_LENGTH\x000\x00,", 17, Ok(done(21, 3..20, 0))),
            // Valid prefixes.
            ("empty_buffer", b"", MAX, partial.clone()),
            ("length_digits_only", b"17", MAX, partial.clone()),
            ("zero_alone", b"0", MAX, partial.clone()),
            ("payload_incomplete", b"17:CONTENT_", MAX, partial.clone()),
            ("comma_not_yet_arrived", b"17:CONTENT_LENGTH\x000\x00", MAX, partial.clone()),
            ("bad_payload_not_scanned_before_comma", b"5:\x00\x00\x00\x00\x00", MAX, partial),
            // Length prefix errors.
            ("http_request", b"GET / HTTP/1.1\r\n", MAX, Err(NonDigitInLength(b'G'))),
            ("http_first_byte_alone", b"G", MAX, Err(NonDigitInLength(b'G'))),
            ("colon_first", b":", MAX, Err(EmptyLength)),
            ("non_digit_in_length", b"1x:", MAX, Err(NonDigitInLength(b'x'))),
            ("space_in_length", b"17 :", MAX, Err(NonDigitInLength(b' '))),
            ("leading_zero", b"07:", MAX, Err(LeadingZero)),
            ("double_zero", b"00", MAX, Err(LeadingZero)),
            ("zero_then_non_digit", b"0x", MAX, Err(NonDigitInLength(b'x'))),
            ("too_large_before_colon", b"70000", MAX, Err(TooLarge { declared: 70000, limit: MAX })),
            ("too_large_stops_at_first_excess", b"700000:", MAX, Err(TooLarge { declared: 70000, limit: MAX })),
            ("one_over_limit", b"17:CONTENT_LENGTH\x000\x00,", 16, Err(TooLarge { declared: 17, limit: 16 })),
            ("zero_limit", b"1", 0, Err(TooLarge { declared: 1, limit: 0 })),
            // Netstring framing errors.
            ("missing_comma", b"17:CONTENT_LENGTH\x000\x00A", MAX, Err(MissingComma(b'A'))),
            ("nul_instead_of_comma", b"17:CONTENT_LENGTH\x000\x00\x00", MAX, Err(MissingComma(0))),
            // Header block errors.
            ("empty_netstring", b"0:,", MAX, Err(MissingContentLength)),
            ("no_final_nul", b"16:CONTENT_LENGTH\x000,", MAX, Err(UnterminatedField)),
            ("header_without_value", b"22:CONTENT_LENGTH\x000\x00SCGI\x00,", MAX, Err(HeaderWithoutValue)),
            ("lone_nul", b"1:\x00,", MAX, Err(EmptyName)),
            ("empty_name", b"19:CONTENT_LENGTH\x000\x00\x00\x00,", MAX, Err(EmptyName)),
            ("content_length_missing", b"7:SCGI\x001\x00,", MAX, Err(MissingContentLength)),
            ("content_length_empty", b"16:CONTENT_LENGTH\x00\x00,", MAX, Err(BadContentLength)),
            ("content_length_negative", b"18:CONTENT_LENGTH\x00-1\x00,", MAX, Err(BadContentLength)),
            ("content_length_plus_sign", b"18:CONTENT_LENGTH\x00+1\x00,", MAX, Err(BadContentLength)),
            ("content_length_leading_space", b"18:CONTENT_LENGTH\x00 1\x00,", MAX, Err(BadContentLength)),
            ("content_length_trailing_space", b"18:CONTENT_LENGTH\x001 \x00,", MAX, Err(BadContentLength)),
            ("content_length_hex", b"20:CONTENT_LENGTH\x000x10\x00,", MAX, Err(BadContentLength)),
            ("content_length_overflows_u64", b"36:CONTENT_LENGTH\x0018446744073709551616\x00,", MAX, Err(BadContentLength)),
            ("content_length_twice_same_value", b"34:CONTENT_LENGTH\x000\x00CONTENT_LENGTH\x000\x00,", MAX, Err(DuplicateContentLength)),
        ]
    }

    #[test]
    fn table_results() {
        for (name, input, max, expected) in table() {
            assert_eq!(parse_head(input, max), expected, "row {name}");
        }
    }

    #[test]
    fn every_prefix_of_a_complete_row_is_partial() {
        for (name, input, max, expected) in table() {
            if let Ok(Status::Complete(info)) = expected {
                for k in 0..info.head_len {
                    let got = parse_head(&input[..k], max);
                    assert_eq!(got, Ok(Status::Partial), "row {name}, prefix {k}");
                }
            }
        }
    }

    #[test]
    fn a_transfer_encoding_naming_chunked_is_noted() {
        let head = |te: &str| {
            let block = format!("CONTENT_LENGTH\x000\x00HTTP_TRANSFER_ENCODING\x00{te}\x00");
            format!("{}:{block},", block.len()).into_bytes()
        };
        let chunked = |te: &str| match parse_head(&head(te), MAX) {
            Ok(Status::Complete(info)) => info.chunked,
            other => panic!("{te:?}: {other:?}"),
        };
        assert!(chunked("chunked"));
        assert!(chunked("gzip, Chunked"));
        assert!(!chunked("gzip"));
        assert!(!chunked("chunkedx"));
        let plain = b"17:CONTENT_LENGTH\x000\x00,";
        assert!(matches!(
            parse_head(plain, MAX),
            Ok(Status::Complete(HeadInfo { chunked: false, .. }))
        ));
    }

    #[test]
    fn headers_yields_pairs_in_order() {
        let buf = b"45:HTTP_COOKIE\x00a\x00HTTP_COOKIE\x00b\x00CONTENT_LENGTH\x000\x00,body";
        let Ok(Status::Complete(info)) = parse_head(buf, MAX) else {
            panic!("head should parse");
        };
        let pairs: Vec<_> = info.headers(buf).collect();
        let expected: [(&[u8], &[u8]); 3] = [
            (b"HTTP_COOKIE", b"a"),
            (b"HTTP_COOKIE", b"b"),
            (b"CONTENT_LENGTH", b"0"),
        ];
        assert_eq!(pairs, expected);
        assert_eq!(headers(b"").count(), 0);
        assert_eq!(headers(b"A\x00\x00").collect::<Vec<_>>(), [(&b"A"[..], &b""[..])]);
    }

    #[test]
    fn headers_stops_quietly_on_malformed_payload() {
        let mut it = headers(b"A\x001\x00B\x00");
        assert_eq!(it.next(), Some((&b"A"[..], &b"1"[..])));
        assert_eq!(it.next(), None);
        assert_eq!(it.next(), None);
    }

    #[test]
    fn content_length_late_as_callscgi_sends_it() {
        let mut payload = Vec::new();
        for i in 0..14 {
            payload.extend_from_slice(format!("HTTP_X_{i}\x00v\x00").as_bytes());
        }
        payload.extend_from_slice(b"CONTENT_LENGTH\x0042\x00SCGI\x001\x00");
        let buf = netstring(&payload);
        let Ok(Status::Complete(info)) = parse_head(&buf, MAX) else {
            panic!("late CONTENT_LENGTH must be found");
        };
        assert_eq!(info.content_length, 42);
        assert_eq!(info.head_len, buf.len());
    }

    #[test]
    fn http_client_rejected_without_waiting_for_more_bytes() {
        assert_eq!(parse_head(b"G", MAX), Err(NonDigitInLength(b'G')));
        assert_eq!(parse_head(b"P", MAX), Err(NonDigitInLength(b'P')));
    }

    #[test]
    fn second_content_length_rejected_against_smuggling() {
        let buf = netstring(b"CONTENT_LENGTH\x005\x00SCGI\x001\x00CONTENT_LENGTH\x000\x00");
        assert_eq!(parse_head(&buf, MAX), Err(DuplicateContentLength));
    }

    #[test]
    fn endless_length_digits_rejected_without_overflow() {
        let digits = [b'1'; 64];
        for max in [0, 9, MAX, usize::MAX / 2, usize::MAX] {
            let got = parse_head(&digits, max);
            assert!(
                matches!(got, Err(TooLarge { limit, .. }) if limit == max),
                "{got:?}"
            );
        }
    }

    #[test]
    fn error_messages_name_the_cause() {
        let cases = [
            (
                NonDigitInLength(b'G'),
                "netstring length contains non-digit byte 0x47 ('G')",
            ),
            (
                NonDigitInLength(0x01),
                "netstring length contains non-digit byte 0x01",
            ),
            (
                MissingComma(b'A'),
                "missing ',' after the header block (found 0x41 ('A'))",
            ),
            (
                TooLarge {
                    declared: 70000,
                    limit: 65536,
                },
                "header block of at least 70000 bytes exceeds the 65536-byte limit",
            ),
            (DuplicateContentLength, "CONTENT_LENGTH given twice"),
        ];
        for (err, msg) in cases {
            assert_eq!(err.to_string(), msg);
        }
    }

    fn netstring(payload: &[u8]) -> Vec<u8> {
        let mut buf = format!("{}:", payload.len()).into_bytes();
        buf.extend_from_slice(payload);
        buf.push(b',');
        buf
    }

    /// Header names other than CONTENT_LENGTH, with values that hold no NUL.
    fn other_headers() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
        let name = "[A-Z_]{1,12}".prop_filter("not CONTENT_LENGTH", |n| n != "CONTENT_LENGTH");
        let value = proptest::collection::vec(1u8..=255, 0..20);
        proptest::collection::vec((name.prop_map(String::into_bytes), value), 0..12)
    }

    /// Mostly well-framed heads with sometimes-broken pieces, so every check gets reached.
    fn near_valid() -> impl Strategy<Value = Vec<u8>> {
        let field = prop_oneof![
            4 => Just(&b"CONTENT_LENGTH\x0012\x00"[..]),
            4 => Just(&b"SCGI\x001\x00"[..]),
            1 => Just(&b"CONTENT_LENGTH\x00"[..]),
            1 => Just(&b"\x00"[..]),
            1 => Just(&b"x"[..]),
        ];
        let payload = proptest::collection::vec(field, 0..5).prop_map(|f| f.concat());
        let zero = prop_oneof![4 => Just(&b""[..]), 1 => Just(&b"0"[..])];
        let comma = prop_oneof![4 => Just(b','), 1 => any::<u8>()];
        let tail = proptest::collection::vec(any::<u8>(), 0..4);
        let framed = (zero, payload, comma, tail)
            .prop_map(|(z, p, c, t)| [z, format!("{}:", p.len()).as_bytes(), &p, &[c], &t].concat());
        prop_oneof![proptest::collection::vec(any::<u8>(), 0..64), framed]
    }

    proptest! {
        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..256), max in 0usize..300) {
            if let Ok(Status::Complete(info)) = parse_head(&buf, max) {
                prop_assert!(info.head_len <= buf.len());
                prop_assert!(info.payload.end < info.head_len);
                let _ = info.headers(&buf).count();
            }
        }

        #[test]
        fn valid_head_partial_then_complete(
            others in other_headers(),
            cl_at in any::<prop::sample::Index>(),
            content_length in any::<u64>(),
            zeros in 0usize..3,
            body in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let cl_value = format!("{}{content_length}", "0".repeat(zeros)).into_bytes();
            let mut pairs = others;
            pairs.insert(cl_at.index(pairs.len() + 1), (b"CONTENT_LENGTH".to_vec(), cl_value));
            let payload: Vec<u8> = pairs.iter().flat_map(|(n, v)| [&n[..], b"\0", v, b"\0"].concat()).collect();
            let head = netstring(&payload);
            let buf = [&head[..], &body].concat();
            for k in 0..head.len() {
                prop_assert_eq!(parse_head(&buf[..k], MAX), Ok(Status::Partial));
            }
            let Ok(Status::Complete(info)) = parse_head(&buf, MAX) else {
                return Err(TestCaseError::fail("full head did not parse"));
            };
            prop_assert_eq!(info.head_len, head.len());
            prop_assert_eq!(info.content_length, content_length);
            let got: Vec<_> = info.headers(&buf).map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
            prop_assert_eq!(got, pairs);
        }

        /// Parsing is monotonic: prefixes are Partial until a first decisive prefix, and every
        /// longer prefix gives exactly the same result (a head is complete exactly at head_len).
        #[test]
        fn prefixes_are_partial_then_one_fixed_result(buf in near_valid(), max in 0usize..120) {
            let results: Vec<_> = (0..=buf.len()).map(|k| parse_head(&buf[..k], max)).collect();
            if let Some(first) = results.iter().position(|r| *r != Ok(Status::Partial)) {
                for r in &results[first..] {
                    prop_assert_eq!(r, &results[first]);
                }
                if let Ok(Status::Complete(info)) = &results[first] {
                    prop_assert_eq!(info.head_len, first);
                }
            }
        }
    }
}
