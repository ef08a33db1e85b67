//! Fuzzes the SCGI head parser: any bytes, any limit. It must never panic, and what it
//! returns must be consistent: a complete head lies inside the buffer and ends with `,`, its
//! headers iterate to the same CONTENT_LENGTH, every shorter prefix is only "need more bytes",
//! and bytes appended after a decision never change it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scgi_wsgi::scgi::{self, parse_head, Status};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, buf)) = data.split_first() else {
        return;
    };
    // The first byte picks the limit: tiny limits reach TooLarge, usize::MAX reaches the
    // overflow guards, 64 KiB is the server's default.
    let limit = match selector {
        0..=63 => usize::from(selector),
        64..=127 => 65536,
        128..=191 => usize::MAX,
        _ => usize::from(selector) * 97,
    };
    let result = parse_head(buf, limit);
    if let Err(e) = &result {
        // Every error must make a log line without panicking.
        let _ = e.to_string();
    }
    match &result {
        Ok(Status::Complete(info)) => {
            assert!(info.head_len <= buf.len());
            assert_eq!(buf[info.head_len - 1], b',');
            assert!(info.payload.end < info.head_len);
            assert!(info.payload.len() <= limit);
            let mut content_lengths = 0;
            for (name, value) in info.headers(buf) {
                assert!(!name.is_empty());
                assert!(!name.contains(&0) && !value.contains(&0));
                if name == b"CONTENT_LENGTH" {
                    content_lengths += 1;
                    let text = std::str::from_utf8(value).expect("CONTENT_LENGTH is ASCII digits");
                    assert_eq!(text.parse::<u64>().ok(), Some(info.content_length));
                }
            }
            assert_eq!(content_lengths, 1);
            // The iterator over the raw block agrees with the method.
            let pairs = scgi::headers(&buf[info.payload.clone()]).count();
            assert_eq!(pairs, info.headers(buf).count());
            // Exactly the head is enough; one byte less is not.
            assert_eq!(parse_head(&buf[..info.head_len], limit), result);
            assert_eq!(parse_head(&buf[..info.head_len - 1], limit), Ok(Status::Partial));
            // Every prefix of a short head (all of them would be quadratic on long inputs).
            if info.head_len <= 256 {
                for k in 0..info.head_len {
                    assert_eq!(parse_head(&buf[..k], limit), Ok(Status::Partial), "prefix {k}");
                }
            }
        }
        Ok(Status::Partial) => {}
        Err(_) => {
            // A decision never changes with more input.
            let mut longer = buf.to_vec();
            longer.extend_from_slice(b"0:,\0");
            assert_eq!(parse_head(&longer, limit), result);
        }
    }
});
