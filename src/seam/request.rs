//! A complete request, as the event loop hands it to whatever runs the app.

use std::fs::File;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use super::outbox::Outbox;

/// The request body, complete.
#[derive(Debug)]
pub enum Body {
    /// The body bytes lie in [`Request::buf`] at this range.
    InBuffer(Range<usize>),
    /// The body was large and lies in an unlinked temporary file of this length.
    File(File, u64),
}

/// A request whose head and body have fully arrived.
#[derive(Debug)]
pub struct Request {
    /// The bytes read from the client: the netstring head, then (for [`Body::InBuffer`]) the body.
    pub buf: Vec<u8>,
    /// The header block (NAME NUL VALUE NUL ...) inside `buf`.
    pub payload: Range<usize>,
    /// Where the body is.
    pub body: Body,
    /// Where the response goes.
    pub outbox: Arc<Outbox>,
    /// When the connection was accepted.
    pub accepted: Instant,
    /// When the head was in (the request's duration counts from here).
    pub head_at: Instant,
}

impl Request {
    /// The raw header block.
    pub fn header_block(&self) -> &[u8] {
        &self.buf[self.payload.clone()]
    }

    /// The first value of a header, by exact name.
    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        crate::proto::scgi::headers(self.header_block()).find_map(|(n, v)| (n == name).then_some(v))
    }
}
