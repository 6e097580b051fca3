//! Request-smuggling guard for HTTP/1.
//!
//! hyper resolves a request that carries both `Content-Length` and
//! `Transfer-Encoding` by dropping the length and reading chunked (RFC 9112
//! §6.1), and it folds identical duplicate `Content-Length` lines into one.
//! Neither leaves a trace the handler can see, yet both are the raw material
//! of smuggling through a chain of proxies, and the contract is to refuse them.
//! So the raw bytes are watched on their way to hyper: this follows HTTP/1
//! message framing (heads, fixed-length and chunked bodies) just far enough to
//! find each request head, and marks the connection from the first ambiguous
//! head on. The handler refuses every request from that ordinal.
//!
//! Anything this parser does not understand (HTTP/2's preface, an upgrade, a
//! head hyper will reject anyway) ends the watch for that connection: hyper
//! either refuses the bytes itself or they are no longer HTTP/1 messages.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::body::{Body, BoxError};
use crate::clock;

/// What the watcher tells the handler, shared per connection.
#[derive(Debug)]
pub struct FramingVerdict {
    /// Ordinal (0-based) of the first ambiguous request, or `u64::MAX`.
    ambiguous_from: AtomicU64,
    /// Requests the handler has taken from this connection so far.
    taken: AtomicU64,
    /// Responses hyper has finished with (their bodies dropped).
    answered: AtomicU64,
}

impl Default for FramingVerdict {
    fn default() -> Self {
        FramingVerdict {
            ambiguous_from: AtomicU64::new(u64::MAX),
            taken: AtomicU64::new(0),
            answered: AtomicU64::new(0),
        }
    }
}

impl FramingVerdict {
    /// Called once per HTTP/1 request, in order: true when this request or
    /// one before it on the connection had ambiguous framing.
    pub fn next_request_is_ambiguous(&self) -> bool {
        let n = self.taken.fetch_add(1, Ordering::Relaxed);
        n >= self.ambiguous_from.load(Ordering::Relaxed)
    }

    /// Counts one HTTP/1 response as finished (written whole without hyper).
    pub fn answered_one(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// The ordinal of the first ambiguous request seen, if any.
    pub fn first_ambiguous(&self) -> Option<u64> {
        let n = self.ambiguous_from.load(Ordering::Relaxed);
        (n != u64::MAX).then_some(n)
    }

    /// Counts one HTTP/1 response as finished once hyper drops its body.
    pub fn count_answer(self: &Arc<Self>, body: Body) -> Body {
        Answer {
            inner: body,
            verdict: self.clone(),
        }
        .boxed()
    }

    fn mark(&self, ordinal: u64) {
        self.ambiguous_from.fetch_min(ordinal, Ordering::Relaxed);
    }
}

/// hyper's default limit on header lines; a head with more is refused by it.
const MAX_HEADERS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    SizeLws,
    Extension,
    SizeLf { last: bool },
    Data(u64),
    DataCr,
    DataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    Chunked(Chunk, u64),
    /// Not (or no longer) HTTP/1 framing this parser follows.
    Off,
}

/// The framing follower, independent of any IO so it can be fed arbitrary splits.
#[derive(Debug)]
pub struct FramingWatch {
    state: State,
    /// A head that arrived in pieces.
    partial: Vec<u8>,
    max_head: usize,
    heads: u64,
    verdict: Arc<FramingVerdict>,
}

impl FramingWatch {
    pub fn new(max_head: usize, verdict: Arc<FramingVerdict>) -> Self {
        FramingWatch {
            state: State::Head,
            partial: Vec::new(),
            max_head,
            heads: 0,
            verdict,
        }
    }

    /// Feeds bytes exactly as hyper will read them.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let used = match self.state {
                State::Off => return,
                State::Head => self.head(data),
                State::Fixed(left) => {
                    let n = left.min(data.len() as u64);
                    self.state = if n == left {
                        State::Head
                    } else {
                        State::Fixed(left - n)
                    };
                    n as usize
                }
                State::Chunked(c, size) => self.chunked(c, size, data),
            };
            data = &data[used..];
        }
    }

    /// Consumes head bytes; returns how many of `data` were used.
    fn head(&mut self, data: &[u8]) -> usize {
        if self.partial.is_empty() {
            match self.parse_head(data) {
                Some(n) => n,
                None => {
                    if self.state == State::Head {
                        self.stash(data);
                    }
                    data.len()
                }
            }
        } else {
            // Only head bytes count against the limit: what follows the head
            // in this read is body or the next request.
            let before = self.partial.len();
            let take = data.len().min((self.max_head + 4).saturating_sub(before));
            self.partial.extend_from_slice(&data[..take]);
            let partial = std::mem::take(&mut self.partial);
            match self.parse_head(&partial) {
                Some(n) => n.saturating_sub(before).min(data.len()),
                None => {
                    if self.state == State::Head {
                        if take < data.len() {
                            self.off();
                        } else {
                            self.partial = partial;
                        }
                    }
                    data.len()
                }
            }
        }
    }

    fn stash(&mut self, data: &[u8]) {
        if self.partial.len() + data.len() > self.max_head + 4 {
            // hyper answers 431 for this head and closes; nothing more to follow.
            self.off();
        } else {
            self.partial.extend_from_slice(data);
        }
    }

    fn off(&mut self) {
        self.state = State::Off;
        self.partial = Vec::new();
    }

    /// Parses a head at the start of `buf`: `Some(len)` when complete (the
    /// state then says how its body is framed), `None` when more is needed or
    /// the watch ended.
    fn parse_head(&mut self, buf: &[u8]) -> Option<usize> {
        let (len, head) = match scan_head(buf) {
            Scan::Complete(n, head) => (n, head),
            Scan::Partial => return None,
            Scan::NotHttp1 => {
                self.off();
                return None;
            }
        };
        let ordinal = self.heads;
        self.heads += 1;
        if (head.transfer_encoding && head.lengths > 0) || head.lengths > 1 {
            self.verdict.mark(ordinal);
            self.off();
            return None;
        }
        self.state = if head.upgrade {
            State::Off
        } else if head.transfer_encoding {
            if head.chunked {
                State::Chunked(Chunk::Size, 0)
            } else {
                State::Off
            }
        } else if head.lengths == 1 {
            match head.length {
                Some(0) => State::Head,
                Some(n) => State::Fixed(n),
                None => State::Off,
            }
        } else {
            State::Head
        };
        if self.state == State::Off {
            self.partial = Vec::new();
            return None;
        }
        Some(len)
    }

    /// Follows a chunked body the way hyper's decoder reads it.
    fn chunked(&mut self, mut c: Chunk, mut size: u64, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            if let Chunk::Data(left) = c {
                let n = left.min((data.len() - i) as u64);
                i += n as usize;
                c = if n == left {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left - n)
                };
                continue;
            }
            let b = data[i];
            i += 1;
            let next = match (c, b) {
                (Chunk::Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    match size.checked_mul(16).and_then(|s| s.checked_add(d)) {
                        Some(s) => {
                            size = s;
                            Some(Chunk::Size)
                        }
                        None => None,
                    }
                }
                (Chunk::Size | Chunk::SizeLws, b'\t' | b' ') => Some(Chunk::SizeLws),
                (Chunk::Size | Chunk::SizeLws, b';') => Some(Chunk::Extension),
                (Chunk::Size | Chunk::SizeLws | Chunk::Extension, b'\r') => {
                    Some(Chunk::SizeLf { last: size == 0 })
                }
                (Chunk::Extension, b'\n') => None,
                (Chunk::Extension, _) => Some(Chunk::Extension),
                (Chunk::SizeLf { last: true }, b'\n') => Some(Chunk::EndCr),
                (Chunk::SizeLf { last: false }, b'\n') => {
                    let s = size;
                    size = 0;
                    Some(Chunk::Data(s))
                }
                (Chunk::DataCr, b'\r') => Some(Chunk::DataLf),
                (Chunk::DataLf, b'\n') => Some(Chunk::Size),
                (Chunk::EndCr, b'\r') => Some(Chunk::EndLf),
                (Chunk::Trailer, b'\r') => Some(Chunk::TrailerLf),
                (Chunk::EndCr | Chunk::Trailer, _) => Some(Chunk::Trailer),
                (Chunk::TrailerLf, b'\n') => Some(Chunk::EndCr),
                (Chunk::EndLf, b'\n') => {
                    self.state = State::Head;
                    return i;
                }
                _ => None,
            };
            match next {
                Some(n) => c = n,
                None => {
                    // hyper refuses this body and closes the connection.
                    self.off();
                    return data.len();
                }
            }
        }
        self.state = State::Chunked(c, size);
        i
    }
}

/// What a request head says about its body.
#[derive(Debug, Default)]
struct HeadFraming {
    lengths: usize,
    length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
    upgrade: bool,
}

enum Scan {
    Complete(usize, HeadFraming),
    Partial,
    /// Not an HTTP/1.x request head hyper would take (an HTTP/2 preface, a
    /// head of more than hyper's header limit).
    NotHttp1,
}

/// Finds the end of a request head and its framing headers.
///
/// hyper parses the head fully, and refuses (closing the connection) any head
/// that is not valid; so only valid heads matter here, and for those lines end
/// in LF or CRLF, the head ends at the first empty line, and a header line is
/// `name: value`. A line is looked at only when its first letter can start
/// `Content-Length`, `Transfer-Encoding` or `Upgrade`: the rest, a token
/// header of hundreds of bytes among them, is skipped by a vector search for
/// its end. (Running httparse over every head here was about 4 % of the CPU of
/// a proxied request, on top of hyper's own parse.)
fn scan_head(buf: &[u8]) -> Scan {
    // Like httparse, empty lines before the request line are skipped.
    let mut pos = buf
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(buf.len());
    let Some(end) = memchr::memchr(b'\n', &buf[pos..]) else {
        return Scan::Partial;
    };
    let line = trim_cr(&buf[pos..pos + end]);
    if !(line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0")) {
        return Scan::NotHttp1;
    }
    let mut head = HeadFraming {
        upgrade: line.starts_with(b"CONNECT "),
        ..HeadFraming::default()
    };
    pos += end + 1;
    let mut fields = 0;
    loop {
        let Some(end) = memchr::memchr(b'\n', &buf[pos..]) else {
            return Scan::Partial;
        };
        let line = trim_cr(&buf[pos..pos + end]);
        pos += end + 1;
        if line.is_empty() {
            return Scan::Complete(pos, head);
        }
        fields += 1;
        if fields > MAX_HEADERS {
            return Scan::NotHttp1;
        }
        if !matches!(line[0] | 0x20, b'c' | b't' | b'u') {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            head.lengths += 1;
            head.length = parse_length(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            head.transfer_encoding = true;
            head.chunked = last_coding_is_chunked(value);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            head.upgrade = true;
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// hyper's reading of a single `Content-Length` value: ASCII digits only.
/// The upstream exchange reads its replies' lengths the same way.
pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn last_coding_is_chunked(v: &[u8]) -> bool {
    let last = v.rsplit(|&b| b == b',').next().unwrap_or(v);
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

impl FramingWatch {
    /// True between requests: every byte hyper has been given belongs to a
    /// complete message.
    fn at_boundary(&self) -> bool {
        self.state == State::Head
            && self.partial.is_empty()
            && self.verdict.answered.load(Ordering::Relaxed) >= self.heads
    }
}

pin_project! {
    /// A response body that counts itself answered when dropped: until every
    /// request read has its answer written, the connection is not idle (hyper
    /// reads meanwhile only to notice a client hanging up).
    struct Answer {
        #[pin]
        inner: Body,
        verdict: Arc<FramingVerdict>,
    }

    impl PinnedDrop for Answer {
        fn drop(this: Pin<&mut Self>) {
            this.verdict.answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A connection's IO, with its incoming bytes shown to a [`FramingWatch`].
    ///
    /// With parking on, it also ends a hyper HTTP/1 session as soon as the
    /// connection falls idle between requests: a read that would block at a
    /// message boundary, with nothing left to flush, reads as end of stream,
    /// and the shutdown hyper then asks for is skipped. hyper hands the IO
    /// back and frees its buffers; the listener waits for the next bytes
    /// with no HTTP state at all (see `listener::serve_http1`).
    pub struct Watched<T> {
        #[pin]
        inner: T,
        watch: FramingWatch,
        park_when_idle: bool,
        parked: bool,
        write_pending: bool,
        // Coarse milliseconds (`clock::coarse_millis`), read once per read.
        last_read: u64,
        park_timer: Option<Pin<Box<Sleep>>>,
    }
}

/// How long a connection must sit idle between requests before its session
/// ends. Busy keep-alive connections (a client sending its next request
/// right after the last answer) stay in one session, so the cost of parking
/// and resuming is paid only by connections that are really idle.
pub const PARK_AFTER: Duration = Duration::from_millis(50);

/// How much longer a connection last read from at `last_read` must stay quiet to park.
fn park_left(last_read: u64) -> Duration {
    let quiet = Duration::from_millis(clock::coarse_millis().saturating_sub(last_read));
    PARK_AFTER.saturating_sub(quiet)
}

impl<T> Watched<T> {
    pub fn new(inner: T, watch: FramingWatch) -> Self {
        Watched {
            inner,
            watch,
            park_when_idle: false,
            parked: false,
            write_pending: false,
            last_read: clock::coarse_millis(),
            park_timer: None,
        }
    }

    pub fn parking(mut self) -> Self {
        self.park_when_idle = true;
        self
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// True when the last session ended because the connection fell idle.
    pub fn is_parked(&self) -> bool {
        self.parked
    }

    /// Starts a new session on this IO.
    pub fn unpark(&mut self) {
        self.parked = false;
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if *this.parked {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match this.inner.poll_read(cx, buf) {
            Poll::Pending
                if *this.park_when_idle && !*this.write_pending && this.watch.at_boundary() =>
            {
                let last_read = *this.last_read;
                let timer = this
                    .park_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(park_left(last_read))));
                // Re-armed only when it fires early, so a busy connection
                // touches the timer wheel about once per PARK_AFTER.
                loop {
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let left = park_left(*this.last_read);
                    if left.is_zero() {
                        *this.parked = true;
                        *this.park_timer = None;
                        return Poll::Ready(Ok(()));
                    }
                    timer.as_mut().reset(Instant::now() + left);
                }
            }
            r => {
                if buf.filled().len() > before {
                    *this.last_read = clock::coarse_millis();
                    if this.watch.state != State::Off {
                        this.watch.feed(&buf.filled()[before..]);
                    }
                }
                r
            }
        }
    }
}

/// Remembers whether the last write or flush would have blocked: hyper still
/// holds bytes then, and the session must not end.
fn track<T>(pending: &mut bool, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
    *pending = r.is_pending();
    r
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        track(this.write_pending, this.inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        track(this.write_pending, this.inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        track(this.write_pending, this.inner.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if *this.parked {
            // The session ended because the connection is idle, not closing.
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` split at every pair of cut points and returns the
    /// ambiguous ordinal each split produced (they must all agree).
    fn verdicts(bytes: &[u8]) -> Vec<u64> {
        let mut out = Vec::new();
        let cuts: Vec<usize> = (0..=bytes.len()).step_by(7).collect();
        for &a in &cuts {
            for &b in cuts.iter().filter(|&&b| b >= a) {
                let v = Arc::new(FramingVerdict::default());
                let mut w = FramingWatch::new(8192, v.clone());
                w.feed(&bytes[..a]);
                w.feed(&bytes[a..b]);
                w.feed(&bytes[b..]);
                out.push(v.ambiguous_from.load(Ordering::Relaxed));
            }
        }
        out
    }

    fn first_ambiguous(bytes: &[u8]) -> Option<u64> {
        let all = verdicts(bytes);
        assert!(
            all.iter().all(|v| *v == all[0]),
            "verdict depends on how the bytes were split: {all:?}"
        );
        (all[0] != u64::MAX).then_some(all[0])
    }

    #[test]
    fn clean_pipelines_are_never_marked_however_they_are_split() {
        // Bodies that look like ambiguous heads: only framing tells them apart.
        let bait = "POST /s HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let bytes = format!(
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n\
POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{bait}\
POST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
{:x};ext=1\r\n{bait}\r\n0\r\nTrailer: t\r\n\r\n\
GET /z HTTP/1.1\r\nHost: a\r\n\r\n",
            bait.len(),
            bait.len()
        );
        assert_eq!(first_ambiguous(bytes.as_bytes()), None);
        // The control: the same bait as a head is found.
        let bytes = format!("GET / HTTP/1.1\r\nHost: a\r\n\r\n{bait}");
        assert_eq!(first_ambiguous(bytes.as_bytes()), Some(1));
    }

    #[test]
    fn each_ambiguous_head_is_found_at_its_ordinal() {
        let ok = "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
GET /b HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Lengths: 9\r\nTransfer-Encodings: x\r\n\r\nabcd\
\r\nGET /e HTTP/1.1\nHost: a\nContent-Length: 2\n\nab";
        for bad in [
            "POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST /c HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n",
            "POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
            "POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: identity\r\n\r\nabcd",
            // Bare LF line ends, as httparse reads them, and any case.
            "POST /c HTTP/1.1\nHost: a\nCONTENT-LENGTH:4\ntransfer-encoding: \t chunked \n\n0\r\n\r\n",
        ] {
            let bytes = format!("{ok}{bad}GET /d HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(first_ambiguous(bytes.as_bytes()), Some(3), "{bad}");
        }
    }

    #[test]
    fn http2_and_upgrades_end_the_watch() {
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(first_ambiguous(h2), None);
        let ws =
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\
POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(first_ambiguous(ws), None);
    }

    #[test]
    fn an_oversized_head_ends_the_watch_without_growing_without_bound() {
        let v = Arc::new(FramingVerdict::default());
        let mut w = FramingWatch::new(64, v);
        w.feed(b"GET / HTTP/1.1\r\n");
        for _ in 0..100 {
            w.feed(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(w.state, State::Off);
        assert!(w.partial.capacity() == 0);
    }

    #[test]
    fn the_handler_side_refuses_from_the_marked_ordinal_on() {
        let v = FramingVerdict::default();
        v.mark(1);
        assert!(!v.next_request_is_ambiguous());
        assert!(v.next_request_is_ambiguous());
        assert!(v.next_request_is_ambiguous());
    }

    /// Reads once from `io`: `Some(n)` bytes (0 = end of stream) or `None` if it would block.
    async fn try_read<T: AsyncRead + Unpin>(io: &mut T) -> Option<usize> {
        let mut buf = [0u8; 64];
        std::future::poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                Poll::Ready(r) => Poll::Ready(Some(r.map(|_| rb.filled().len()).unwrap_or(0))),
                Poll::Pending => Poll::Ready(None),
            }
        })
        .await
    }

    #[tokio::test]
    async fn an_idle_session_ends_only_at_a_boundary_with_nothing_left_to_flush() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(256);
        let verdict = Arc::new(FramingVerdict::default());
        let watch = FramingWatch::new(8192, verdict.clone());
        let mut io = Watched::new(near, watch).parking();

        // Mid-head: never parks, however long it waits.
        far.write_all(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n")
            .await
            .unwrap();
        assert!(try_read(&mut io).await.unwrap() > 0);
        tokio::time::sleep(PARK_AFTER * 3).await;
        assert_eq!(try_read(&mut io).await, None);
        // Mid-body: likewise.
        far.write_all(b"\r\nab").await.unwrap();
        assert!(try_read(&mut io).await.unwrap() > 0);
        tokio::time::sleep(PARK_AFTER * 3).await;
        assert_eq!(try_read(&mut io).await, None);
        far.write_all(b"c").await.unwrap();
        assert_eq!(try_read(&mut io).await, Some(1));

        // Read whole, but not answered yet: hyper reads meanwhile only to
        // notice a hang-up, and the session must go on.
        tokio::time::sleep(PARK_AFTER * 3).await;
        assert_eq!(try_read(&mut io).await, None, "parked before answering");
        drop(verdict.count_answer(crate::body::empty()));

        // At the boundary, with an answer the peer has not taken yet.
        let answer = vec![b'x'; 1024];
        let written = std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut io).poll_write(cx, &answer) {
                Poll::Ready(r) => r.unwrap(),
                Poll::Pending => 0,
            })
        })
        .await;
        assert!(written < answer.len());
        let blocked = std::future::poll_fn(|cx| {
            Poll::Ready(
                Pin::new(&mut io)
                    .poll_write(cx, &answer[written..])
                    .is_pending(),
            )
        })
        .await;
        assert!(blocked, "the duplex should be full");
        tokio::time::sleep(PARK_AFTER * 3).await;
        assert_eq!(try_read(&mut io).await, None, "parked with bytes unflushed");
        assert!(!io.is_parked());

        // The peer drains; the rest is written and flushed; now it parks.
        let mut sink = vec![0u8; answer.len()];
        let (w, r) = tokio::join!(
            async {
                io.write_all(&answer[written..]).await?;
                io.flush().await
            },
            far.read_exact(&mut sink)
        );
        w.unwrap();
        r.unwrap();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                if try_read(&mut io).await == Some(0) {
                    return;
                }
                tokio::time::sleep(PARK_AFTER / 2).await;
            }
        })
        .await;
        assert!(
            ended.is_ok() && io.is_parked(),
            "an idle session did not end"
        );
        // Its shutdown is skipped: the peer sees no end of stream.
        io.shutdown().await.unwrap();
        assert!(
            tokio::time::timeout(PARK_AFTER * 2, far.read(&mut sink))
                .await
                .is_err(),
            "the parked connection was shut down"
        );
    }
}
