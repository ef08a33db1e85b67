//! Property tests of the connection state machine (`Conn::on_readable` and what it does with
//! the bytes): any byte string, cut into reads at any points, must end in the same outcome as
//! when it arrives in one piece (the same request, the same refusal, the same partial state),
//! and nothing may panic. The bytes travel over a real socket pair, one write per piece.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use scgi_wsgi::{Answer, Body, Conn, Limits, Phase, ReadOutcome, Stream};

/// What a connection made of its input, in a comparable form.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The request was complete: its header block and its body, as bytes.
    Complete {
        headers: Vec<u8>,
        body: Vec<u8>,
        spilled: bool,
    },
    /// Refused with this status and cause.
    Refused(Answer),
    /// Still reading when the client ended its side, in this phase, with this many bytes in.
    ClosedWhile(Phase, usize),
}

fn limits(max_head: usize, max_body: u64, body_buffer: u64) -> Limits {
    Limits {
        max_head,
        max_body,
        body_buffer,
        head_timeout: Duration::from_secs(30),
        body_timeout: Duration::from_secs(30),
        write_timeout: Duration::from_secs(30),
        max_connections: 16,
        write_buffer: 64 * 1024,
        max_queue: 16,
        allow_from: None,
    }
}

/// One readiness event. With `defer` set, the first request to read a body is declined (as the
/// loop does while requests wait for workers); the body must then be paused, and reading it
/// after [`Conn::resume`] must give what reading it at once would have.
fn read(conn: &mut Conn, scratch: &mut [u8], limits: &Limits, defer: &mut bool) -> ReadOutcome {
    loop {
        let mut may_read_body = || !std::mem::take(defer);
        match conn.on_readable(scratch, limits, &mut may_read_body) {
            ReadOutcome::Deferred => {
                assert!(conn.is_paused(), "deferred but not paused");
                assert_eq!(conn.phase, Phase::Body, "deferred outside the body");
                assert!(conn.deadline(limits).is_none(), "a paused body can stall");
                conn.resume();
            }
            // Its turn's budget is spent; the loop gives it another in its next round.
            ReadOutcome::Again => {}
            other => return other,
        }
    }
}

/// Feeds `input` to a fresh connection as the pieces cut at `cuts` (sorted offsets), reading
/// through a scratch buffer of `scratch_len` bytes, then ends the client's side.
fn feed(input: &[u8], cuts: &[usize], scratch_len: usize, limits: &Limits) -> Outcome {
    feed_deferring(input, cuts, scratch_len, limits, false)
}

fn feed_deferring(
    input: &[u8],
    cuts: &[usize],
    scratch_len: usize,
    limits: &Limits,
    mut defer: bool,
) -> Outcome {
    let (mut client, server) = StdUnixStream::pair().expect("socketpair");
    server.set_nonblocking(true).expect("non-blocking");
    let stream = Stream::Unix(mio::net::UnixStream::from_std(server));
    let mut conn = Conn::new(stream, 0, Instant::now());
    let mut scratch = vec![0u8; scratch_len];
    let mut start = 0;
    let ends = cuts.iter().copied().chain([input.len()]);
    for end in ends {
        let piece = &input[start..end.max(start)];
        start = end.max(start);
        if piece.is_empty() {
            continue;
        }
        client.write_all(piece).expect("write a piece");
        match read(&mut conn, &mut scratch, limits, &mut defer) {
            ReadOutcome::Pending => {}
            ReadOutcome::Complete => return complete(&mut conn),
            ReadOutcome::Refuse(refusal) => return Outcome::Refused(refusal),
            ReadOutcome::Closed => panic!("closed while the client was still connected"),
            ReadOutcome::Deferred | ReadOutcome::Again => unreachable!("read() goes on after these"),
        }
    }
    client.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let phase = conn.phase;
    let received = conn.bytes_received();
    match read(&mut conn, &mut scratch, limits, &mut defer) {
        ReadOutcome::Closed => Outcome::ClosedWhile(phase, received),
        other => panic!("end of stream gave {other:?}"),
    }
}

fn complete(conn: &mut Conn) -> Outcome {
    let (buf, payload, body) = conn.take_request();
    assert_eq!(conn.phase, Phase::Running);
    let headers = buf[payload].to_vec();
    let (body, spilled) = match body {
        Body::InBuffer(range) => (buf[range].to_vec(), false),
        Body::File(mut file, len) => {
            let mut data = Vec::new();
            file.seek(SeekFrom::Start(0)).expect("seek the spilled body");
            file.read_to_end(&mut data).expect("read the spilled body");
            assert_eq!(data.len() as u64, len, "spilled length");
            (data, true)
        }
    };
    Outcome::Complete {
        headers,
        body,
        spilled,
    }
}

fn netstring(payload: &[u8]) -> Vec<u8> {
    [format!("{}:", payload.len()).as_bytes(), payload, b","].concat()
}

/// Requests that are valid, or nearly: a head with CONTENT_LENGTH and other headers, a body
/// of some length (not always the declared one), sometimes bytes after it, sometimes one byte
/// flipped somewhere.
fn near_valid() -> impl Strategy<Value = Vec<u8>> {
    let name = prop::sample::select(vec![
        b"SCGI".to_vec(),
        b"REQUEST_METHOD".to_vec(),
        b"HTTP_X".to_vec(),
        b"CONTENT_LENGTH".to_vec(),
        b"".to_vec(),
    ]);
    let value = prop::collection::vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 0..6);
    (
        prop::collection::vec((name, value), 0..4),
        0u64..40,
        prop::collection::vec(any::<u8>(), 0..48),
        any::<bool>(),
        any::<prop::sample::Index>(),
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(|(others, content_length, body, keep_cl, at, byte, flip)| {
            let mut payload = Vec::new();
            if keep_cl {
                payload.extend_from_slice(format!("CONTENT_LENGTH\0{content_length}\0").as_bytes());
            }
            for (n, v) in others {
                payload.extend_from_slice(&n);
                payload.push(0);
                payload.extend_from_slice(&v);
                payload.push(0);
            }
            let mut out = netstring(&payload);
            out.extend_from_slice(&body);
            if flip && !out.is_empty() {
                let i = at.index(out.len());
                out[i] = byte;
            }
            out
        })
}

fn inputs() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => near_valid(),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// Cut points: sorted offsets into an input of up to `len` bytes (duplicates make empty pieces).
fn cuts() -> impl Strategy<Value = Vec<prop::sample::Index>> {
    prop::collection::vec(any::<prop::sample::Index>(), 0..12)
}

fn cut_offsets(indexes: &[prop::sample::Index], len: usize) -> Vec<usize> {
    let mut offsets: Vec<usize> = indexes.iter().map(|i| i.index(len + 1)).collect();
    offsets.sort_unstable();
    offsets
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn split_reads_give_the_same_outcome_as_one_read(
        input in inputs(),
        cut_at in cuts(),
        scratch_len in 1usize..40,
        max_head in prop::sample::select(vec![8usize, 40, 65536]),
        max_body in prop::sample::select(vec![0u64, 20, 1 << 30]),
        body_buffer in prop::sample::select(vec![0u64, 10, 1 << 20]),
        defer in any::<bool>(),
    ) {
        let limits = limits(max_head, max_body, body_buffer);
        let whole = feed(&input, &[], 64 * 1024, &limits);
        let split = feed_deferring(&input, &cut_offsets(&cut_at, input.len()), scratch_len, &limits, defer);
        prop_assert_eq!(&split, &whole, "input {}", input.escape_ascii());
        // The outcome also agrees with the parser on its own.
        if let Outcome::Complete { headers, body, spilled } = &whole {
            let declared = scgi_wsgi::scgi::headers(headers)
                .find(|(n, _)| *n == b"CONTENT_LENGTH")
                .map(|(_, v)| std::str::from_utf8(v).unwrap().parse::<u64>().unwrap());
            prop_assert_eq!(declared, Some(body.len() as u64));
            prop_assert_eq!(*spilled, body.len() as u64 > body_buffer);
        }
    }

    /// One byte per read is the most extreme split; it must agree too.
    #[test]
    fn byte_at_a_time_gives_the_same_outcome(input in near_valid()) {
        let limits = limits(65536, 1 << 30, 10);
        let whole = feed(&input, &[], 64 * 1024, &limits);
        let every: Vec<usize> = (1..input.len()).collect();
        let split = feed(&input, &every, 1, &limits);
        prop_assert_eq!(&split, &whole, "input {}", input.escape_ascii());
    }
}

/// A valid request split everywhere completes with its own head and body (not just "the same
/// as in one piece": both could be wrong the same way).
#[test]
fn valid_request_completes_whatever_the_split() {
    let payload = b"CONTENT_LENGTH\x005\x00SCGI\x001\x00REQUEST_METHOD\x00POST\x00";
    let input = [netstring(payload), b"hello".to_vec()].concat();
    let limits = limits(65536, 1 << 30, 1 << 20);
    for cut in 0..=input.len() {
        let got = feed(&input, &[cut], 3, &limits);
        assert_eq!(
            got,
            Outcome::Complete {
                headers: payload.to_vec(),
                body: b"hello".to_vec(),
                spilled: false
            },
            "cut at {cut}"
        );
    }
}
