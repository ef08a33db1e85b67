//! Response splitting: whatever an app puts in its status or headers (CR, LF, NUL and other
//! control bytes, characters beyond Latin-1, str subclasses, bytes), no extra header line and
//! no extra body can appear on the wire. Each case is checked on the raw bytes.

mod common;

use common::*;

/// What the server must do with a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Refuse the head: the client gets a 500 and nothing of the app's head.
    Refused,
    /// Send the head with the text as these bytes (the text as Latin-1).
    Sent(&'static [u8]),
}

use Expect::{Refused, Sent};

/// (case name, field the app puts the text in, the text as UTF-8 with surrogates allowed, expectation)
type Case = (&'static str, &'static str, &'static [u8], Expect);

#[rustfmt::skip]
const CASES: &[Case] = &[
    // Header values.
    ("value_crlf_header", "value", b"a\r\nInjected: yes", Refused),
    ("value_lf_header", "value", b"a\nInjected: yes", Refused),
    ("value_cr_header", "value", b"a\rInjected: yes", Refused),
    ("value_crlf_crlf_body", "value", b"a\r\n\r\n<html>Injected</html>", Refused),
    ("value_trailing_crlf", "value", b"a\r\n", Refused),
    ("value_nul", "value", b"a\x00Injected: yes", Refused),
    ("value_vertical_tab", "value", b"a\x0bInjected", Refused),
    ("value_form_feed", "value", b"a\x0cInjected", Refused),
    ("value_escape", "value", b"a\x1b[31mInjected", Refused),
    ("value_del", "value", b"a\x7fInjected", Refused),
    ("value_unit_separator", "value", b"a\x1fInjected", Refused),
    ("value_non_latin1", "value", "caf\u{20ac}".as_bytes(), Refused),
    ("value_line_separator", "value", "a\u{2028}Injected: yes".as_bytes(), Refused),
    ("value_paragraph_separator", "value", "a\u{2029}Injected: yes".as_bytes(), Refused),
    // U+010A encodes as 0x0A in some careless conversions (truncating to a byte).
    ("value_u010a_truncates_to_lf", "value", "a\u{010a}Injected: yes".as_bytes(), Refused),
    ("value_u010d_truncates_to_cr", "value", "a\u{010d}\u{010a}Injected: yes".as_bytes(), Refused),
    ("value_lone_surrogate", "value", b"a\xed\xa0\x80", Refused),
    ("value_bytes_not_str", "value-bytes", b"a", Refused),
    ("value_subclass_with_crlf", "value-subclass", b"a\r\nInjected: yes", Refused),
    ("value_exc_info_head_with_crlf", "value-exc-info", b"a\r\nInjected: yes", Refused),
    ("value_tab_is_fine", "value", b"a\tb", Sent(b"a\tb")),
    ("value_latin1_is_one_byte", "value", "caf\u{e9}".as_bytes(), Sent(b"caf\xe9")),
    ("value_nel_is_latin1_text", "value", "a\u{85}b".as_bytes(), Sent(b"a\x85b")),
    ("value_subclass_is_its_text", "value-subclass", b"real", Sent(b"real")),
    // Header names.
    ("name_crlf_header", "name", b"X-Test\r\nInjected", Refused),
    ("name_lf_header", "name", b"X-Test\nInjected", Refused),
    ("name_with_colon", "name", b"Injected: yes\r\nX-Test", Refused),
    ("name_colon_only", "name", b"X-Test:", Refused),
    ("name_space", "name", b"X Test", Refused),
    ("name_nul", "name", b"X-Test\x00", Refused),
    ("name_empty", "name", b"", Refused),
    ("name_tab", "name", b"X-Test\t", Refused),
    ("name_latin1_letter", "name", "X-caf\u{e9}".as_bytes(), Refused),
    ("name_non_latin1", "name", "X-\u{20ac}".as_bytes(), Refused),
    ("name_u010a", "name", "X\u{010a}Injected".as_bytes(), Refused),
    ("name_status_header", "name", b"Status", Refused),
    ("name_subclass_with_crlf", "name-subclass", b"X\r\nInjected", Refused),
    ("name_token_chars_are_fine", "name", b"X-a.b_c~d!#$%&'*+^`|", Sent(b"X-a.b_c~d!#$%&'*+^`|")),
    // Status lines.
    ("status_crlf_header", "status", b"200 OK\r\nInjected: yes", Refused),
    ("status_lf_header", "status", b"200 OK\nInjected: yes", Refused),
    ("status_cr", "status", b"200 OK\rInjected: yes", Refused),
    ("status_crlf_crlf_body", "status", b"200 OK\r\n\r\n<html>Injected</html>", Refused),
    ("status_code_then_crlf", "status", b"200\r\nInjected: yes", Refused),
    ("status_nul", "status", b"200 OK\x00Injected", Refused),
    ("status_escape", "status", b"200 OK\x1bInjected", Refused),
    ("status_leading_crlf", "status", b"\r\n200 OK", Refused),
    ("status_non_latin1", "status", "200 O\u{20ac}K".as_bytes(), Refused),
    ("status_u010a", "status", "200 OK\u{010a}Injected: yes".as_bytes(), Refused),
    ("status_lone_surrogate", "status", b"200 \xed\xa0\x80", Refused),
    ("status_not_digits", "status", b"2x0 OK", Refused),
    ("status_latin1_reason", "status", "200 caf\u{e9}".as_bytes(), Sent(b"200 caf\xe9")),
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The head's lines (split on LF, so a bare LF counts as a line end too) and the body.
fn split_wire(raw: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {}", show_bytes(raw)));
    let lines = raw[..end].split(|&b| b == b'\n').collect();
    (lines, &raw[end + 4..])
}

#[test]
fn nothing_an_app_puts_in_its_head_splits_the_response() {
    let server = Server::start(&["-p", &apps_dir_str(), "-A", "splitapp"]);
    let mut failures = Vec::new();
    for &(name, field, text, expect) in CASES {
        let path = format!("/?field={field}&text={}", hex(text));
        let raw = server.request_raw(&ScgiRequest::get(&path));
        let (lines, body) = split_wire(&raw);
        let shown = show_bytes(&raw);
        let mut check = |ok: bool, what: &str| {
            if !ok {
                failures.push(format!("{name}: {what}; wire: {shown}"));
            }
        };
        // Whatever happened: every head line ends in CRLF, holds no other control byte
        // than tab, and nothing injected is anywhere.
        for line in &lines {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            check(
                line.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)),
                "a head line with a control byte",
            );
        }
        check(
            !raw.windows(8).any(|w| w == b"Injected"),
            "injected text reached the wire",
        );
        let names: Vec<&[u8]> = lines
            .iter()
            .map(|l| l.split(|&b| b == b':').next().unwrap_or_default())
            .collect();
        check(
            names.iter().filter(|n| n.eq_ignore_ascii_case(b"status")).count() == 1,
            "exactly one Status line",
        );
        match expect {
            Refused => {
                check(lines[0] == b"Status: 500 Internal Server Error\r", "a 500");
                check(!names.contains(&&b"X-Test"[..]), "none of the app's head");
                check(body != b"body", "none of the app's body");
            }
            Sent(bytes) => {
                let expected_line = match field {
                    "status" => [b"Status: ", bytes, b"\r"].concat(),
                    "name" | "name-subclass" => [bytes, b": plain\r"].concat(),
                    _ => [b"X-Test: ", bytes, b"\r"].concat(),
                };
                check(lines.contains(&&expected_line[..]), "the text on its own line");
                let others: Vec<&&[u8]> = lines
                    .iter()
                    .filter(|l| !l.starts_with(b"Content-Length: "))
                    .collect();
                check(others.len() == 3, "Status, Content-Type and the header only");
                check(body == b"body", "the app's body");
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}\nserver stderr:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n"),
        server.stderr_text()
    );
    // The server is still well.
    let response = server.request(&ScgiRequest::get(&format!("/?field=value&text={}", hex(b"ok"))));
    assert_eq!(response.header("X-Test"), Some("ok"));
}
