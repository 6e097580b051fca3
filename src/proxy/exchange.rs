//! One HTTP/1.1 request and its response over an upstream connection, driven
//! inside the request's own task.
//!
//! hyper's client drives each connection from a task of its own and hands
//! every request to it through a channel, and every response back through a
//! oneshot and a body channel: about 11,000 instructions per forwarded
//! request went to that machinery and its task switches. Here the request's
//! task writes the head, streams the body, and reads the reply itself. The
//! reply is parsed by `httparse` (hyper's own parser) and framed strictly by
//! RFC 9112 §6.3: anything ambiguous is an error or a connection that is not
//! reused, never a guess.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::upstream::UpstreamBody;
use crate::server::framing::parse_length;

/// What the connector hands back: plain TCP or TLS, as tokio I/O.
pub type Io = TokioIo<hyper_rustls::MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>>;

/// Response heads larger than this are refused (hyper's client allowed ~400 KB
/// of buffer; 64 KB of head is far past any sane upstream).
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// A chunk-size line (with extensions) or a trailer section longer than this is refused.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// An upstream connection between exchanges.
pub struct Conn {
    io: Io,
    rbuf: BytesMut,
}

impl Conn {
    /// Boxed: a connection moves from the pool to the request and back on
    /// every exchange, and its TLS variant makes it over a kilobyte.
    pub fn new(io: Io) -> Box<Conn> {
        Box::new(Conn {
            io,
            rbuf: BytesMut::new(),
        })
    }

    /// Whether an idle connection can carry another request: the upstream has
    /// neither closed it nor sent anything unasked. A plain connection asks
    /// the reactor's readiness (no system call while nothing arrived).
    pub fn reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let hyper_rustls::MaybeHttpsStream::Http(tcp) = self.io.inner() {
            if tcp.inner().poll_read_ready(&mut cx).is_pending() {
                return true;
            }
        }
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// The client's body passed the route's `max_body_bytes`.
    BodyTooLarge,
    /// The client's body failed (the client went away).
    ClientBody(crate::body::BoxError),
    Io(io::Error),
    /// The upstream closed the connection before a complete response head.
    Closed,
    /// The upstream's reply broke HTTP/1.1.
    Protocol(&'static str),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::BodyTooLarge => f.write_str("request body over max_body_bytes"),
            ExchangeError::ClientBody(e) => write!(f, "client body: {e}"),
            ExchangeError::Io(e) => write!(f, "upstream i/o: {e}"),
            ExchangeError::Closed => f.write_str("upstream closed the connection before answering"),
            ExchangeError::Protocol(why) => write!(f, "upstream protocol error: {why}"),
        }
    }
}

impl std::error::Error for ExchangeError {}

impl From<io::Error> for ExchangeError {
    fn from(e: io::Error) -> Self {
        ExchangeError::Io(e)
    }
}

/// The request still to be written: the head, then the body.
pub struct Outgoing {
    pending: VecDeque<Bytes>,
    body: Option<UpstreamBody>,
    chunked: bool,
    flush: bool,
    /// Whether any byte reached the connection (a request never written may be retried).
    wrote: bool,
    head_request: bool,
}

impl Outgoing {
    /// Encodes the head of `req` (origin-form URI, HTTP/1.1). The body is
    /// sent with its `Content-Length` when the client gave one, otherwise
    /// chunked; a body already at its end is not sent at all.
    pub fn new(req: Request<UpstreamBody>) -> Outgoing {
        let (parts, body) = req.into_parts();
        let has_body = !body.is_end_stream();
        let chunked = has_body && !parts.headers.contains_key(header::CONTENT_LENGTH);
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let size = parts.method.as_str().len()
            + path.len()
            + parts
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 4)
                .sum::<usize>()
            + 64;
        let mut head = Vec::with_capacity(size);
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(path.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        write_fields(&mut head, &parts.headers);
        if chunked {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let mut pending = VecDeque::with_capacity(4);
        pending.push_back(Bytes::from(head));
        Outgoing {
            pending,
            body: has_body.then_some(body),
            chunked,
            flush: true,
            wrote: false,
            head_request: parts.method == Method::HEAD,
        }
    }

    /// A request without a body whose head is already written out
    /// (origin-form, HTTP/1.1, ending in the blank line): see `server::fast`.
    pub fn head_only(head: Vec<u8>, head_request: bool) -> Outgoing {
        let mut pending = VecDeque::with_capacity(1);
        pending.push_back(Bytes::from(head));
        Outgoing {
            pending,
            body: None,
            chunked: false,
            flush: true,
            wrote: false,
            head_request,
        }
    }

    fn done(&self) -> bool {
        self.pending.is_empty() && self.body.is_none() && !self.flush
    }

    /// Writes what is pending and feeds the body; ready once all is written.
    fn poll_send(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        loop {
            while let Some(front) = self.pending.front_mut() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, front))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                self.wrote = true;
                front.advance(n);
                if front.is_empty() {
                    self.pending.pop_front();
                }
            }
            if self.flush {
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                self.flush = false;
            }
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(body).poll_frame(cx)) {
                None => {
                    self.body = None;
                    if self.chunked {
                        self.pending.push_back(Bytes::from_static(b"0\r\n\r\n"));
                        self.flush = true;
                    }
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        if self.chunked {
                            self.pending
                                .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                            self.pending.push_back(data);
                            self.pending.push_back(Bytes::from_static(b"\r\n"));
                        } else {
                            self.pending.push_back(data);
                        }
                        self.flush = true;
                    }
                    Err(frame) => {
                        // Trailers end a chunked body; a sized body has nowhere to put them.
                        if let (true, Ok(trailers)) = (self.chunked, frame.into_trailers()) {
                            let mut last = b"0\r\n".to_vec();
                            write_fields(&mut last, &trailers);
                            last.extend_from_slice(b"\r\n");
                            self.pending.push_back(Bytes::from(last));
                            self.body = None;
                            self.flush = true;
                        }
                    }
                },
                Some(Err(e)) => {
                    return Poll::Ready(Err(if super::forward::body_limit_hit(&*e) {
                        ExchangeError::BodyTooLarge
                    } else {
                        ExchangeError::ClientBody(e)
                    }));
                }
            }
        }
    }
}

/// A failed exchange, with the request back when not one byte of it was written.
pub enum Failure {
    Unsent(Outgoing),
    Failed(ExchangeError),
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// Sends `out` on `conn` and reads the final response head. The body streams
/// from the returned response; `give_back` receives the connection once the
/// exchange has ended cleanly.
pub async fn exchange(
    mut conn: Box<Conn>,
    mut out: Outgoing,
    give_back: GiveBack,
) -> Result<Response<ResponseBody>, Failure> {
    // Written at the end of the scheduler's turn, after the other requests
    // that are ready: writes to the upstream then come in bursts, and a burst
    // wakes the upstream once, where writes spaced by each request's own work
    // (a signature check, say) woke it, at a cross-CPU interrupt, every time.
    tokio::task::yield_now().await;
    // An upstream may answer (a 413, say) and close before taking the whole
    // request: a failed write stops the sending, and the reply is still read.
    let mut write_failed: Option<ExchangeError> = None;
    let head = std::future::poll_fn(|cx| {
        if write_failed.is_none() && !out.done() {
            match out.poll_send(&mut conn.io, cx) {
                Poll::Ready(Err(e @ ExchangeError::Io(_))) => write_failed = Some(e),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                _ => {}
            }
        }
        poll_head(&mut conn, cx)
    })
    .await;
    let stopped = write_failed.is_some();
    let head = match (head, write_failed) {
        (Ok(head), None) => head,
        (Ok((parts, _)), Some(_)) => (parts, false),
        (Err(_), Some(e)) | (Err(e), None) if !out.wrote && retryable(&e) => {
            return Err(Failure::Unsent(out))
        }
        (Err(_), Some(e)) | (Err(e), None) => return Err(Failure::Failed(e)),
    };
    let (mut parts, mut keep_alive) = head;
    let framing =
        framing(&mut parts, out.head_request, &mut keep_alive).map_err(Failure::Failed)?;
    let body = ResponseBody {
        conn: Some(conn),
        out: (!stopped && !out.done()).then_some(out),
        framing,
        keep_alive,
        give_back: Some(give_back),
    };
    Ok(Response::from_parts(parts, body))
}

/// A request that met a dead kept-alive connection before any byte of it
/// was written goes out again on another connection.
fn retryable(e: &ExchangeError) -> bool {
    match e {
        ExchangeError::Io(e) => matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::WriteZero
        ),
        ExchangeError::Closed => true,
        _ => false,
    }
}

type Head = (http::response::Parts, bool);

/// Reads until a final (non-1xx, or 101) response head is parsed.
fn poll_head(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<Head, ExchangeError>> {
    loop {
        if !conn.rbuf.is_empty() {
            if let Some((head, len)) = parse_head(&conn.rbuf)? {
                conn.rbuf.advance(len);
                let status = head.0.status;
                if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                    continue;
                }
                return Poll::Ready(Ok(head));
            }
            if conn.rbuf.len() > MAX_HEAD {
                return Poll::Ready(Err(ExchangeError::Protocol("response head too large")));
            }
        }
        let had = conn.rbuf.len();
        if ready!(conn.poll_fill(cx))? == 0 {
            return Poll::Ready(Err(if had == 0 {
                ExchangeError::Closed
            } else {
                ExchangeError::Protocol("connection closed inside the response head")
            }));
        }
    }
}

fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, ExchangeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ExchangeError::Protocol("too many response headers"))
        }
        Err(_) => return Err(ExchangeError::Protocol("malformed response head")),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(ExchangeError::Protocol("invalid status code"))?;
    let version = match resp.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Room for the headers the gateway adds to the response (x-request-id, CORS).
    let mut map = HeaderMap::with_capacity(resp.headers.len() + 8);
    let mut close = version == Version::HTTP_10;
    // The values share one copy of the head: one allocation per response,
    // where a copy per value cost one per header.
    let shared = Bytes::copy_from_slice(&buf[..len]);
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| ExchangeError::Protocol("invalid response header name"))?;
        let value = HeaderValue::from_maybe_shared(within(&shared, buf, h.value))
            .map_err(|_| ExchangeError::Protocol("invalid response header value"))?;
        if name == header::CONNECTION {
            for token in value.to_str().unwrap_or("").split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && version == Version::HTTP_10 {
                    close = false;
                }
            }
        }
        map.append(name, value);
    }
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = map;
    Ok(Some(((parts, !close), len)))
}

/// `part` (a slice of `buf`) as a slice of `shared`, a copy of `buf`'s front.
fn within(shared: &Bytes, buf: &[u8], part: &[u8]) -> Bytes {
    let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if end <= shared.len() && !part.is_empty() => shared.slice(start..end),
        // Empty, or (never, from httparse) outside the head: a copy of its own.
        _ => Bytes::copy_from_slice(part),
    }
}

/// The body's delimitation, from the status, the request method and the headers.
fn framing(
    parts: &mut http::response::Parts,
    head_request: bool,
    keep_alive: &mut bool,
) -> Result<Framing, ExchangeError> {
    let status = parts.status;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        *keep_alive = false;
        return Ok(Framing::Empty);
    }
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        let chunked = parts
            .headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        // A length beside a transfer coding is ignored, and the connection
        // is not trusted with another message (RFC 9112 §6.3 item 3).
        if parts.headers.remove(header::CONTENT_LENGTH).is_some() {
            *keep_alive = false;
        }
        if !chunked {
            *keep_alive = false;
            return Ok(Framing::UntilClose);
        }
        return Ok(Framing::Chunked(Chunk::Size));
    }
    let mut length: Option<u64> = None;
    for v in parts.headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let n = parse_length(part.trim_ascii())
                .ok_or(ExchangeError::Protocol("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(ExchangeError::Protocol("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => {
            *keep_alive = false;
            Framing::UntilClose
        }
    })
}

/// The pool a clean connection goes back to.
pub type GiveBack = std::sync::Arc<super::pool::Pool>;

/// The upstream's response body, read from the connection as the client
/// reads it. Once it has ended cleanly (and the request was written whole)
/// the connection goes back to the pool; dropped earlier, it is closed.
pub struct ResponseBody {
    conn: Option<Box<Conn>>,
    /// The rest of the request, when the reply came before it was written.
    out: Option<Outgoing>,
    framing: Framing,
    keep_alive: bool,
    give_back: Option<GiveBack>,
}

impl ResponseBody {
    /// The connection of a 101 reply, with any bytes already read past the
    /// head, for the upgrade to take over.
    pub fn take_upgraded(&mut self) -> Option<(Io, Bytes)> {
        self.give_back = None;
        self.conn.take().map(|c| {
            let Conn { io, rbuf } = *c;
            (io, rbuf.freeze())
        })
    }

    fn finish(&mut self) {
        self.framing = Framing::Done;
        let clean = self.keep_alive && self.out.is_none();
        if let (true, Some(conn), Some(pool)) = (clean, self.conn.take(), self.give_back.take()) {
            if conn.rbuf.is_empty() {
                pool.checkin(conn);
            }
        }
    }

    /// Decodes what is buffered; `None` when more bytes are needed.
    fn decode(&mut self) -> Result<Option<Frame<Bytes>>, ExchangeError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let buf = &mut conn.rbuf;
        loop {
            match self.framing {
                Framing::Empty | Framing::Done => return Ok(None),
                Framing::UntilClose => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = buf.len();
                    return Ok(Some(Frame::data(buf.split_to(n).freeze())));
                }
                Framing::Length(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let (data, rest) = take_upto(buf, left);
                    self.framing = if rest == 0 {
                        Framing::Done
                    } else {
                        Framing::Length(rest)
                    };
                    return Ok(Some(Frame::data(data)));
                }
                Framing::Chunked(Chunk::Size) => {
                    let Some(eol) = find_crlf(buf, MAX_LINE)? else {
                        return Ok(None);
                    };
                    let line = &buf[..eol];
                    let digits = line
                        .iter()
                        .position(|b| *b == b';' || *b == b' ' || *b == b'\t')
                        .map_or(line, |p| &line[..p]);
                    let size =
                        parse_hex(digits).ok_or(ExchangeError::Protocol("invalid chunk size"))?;
                    buf.advance(eol + 2);
                    self.framing = Framing::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Framing::Chunked(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let (data, rest) = take_upto(buf, left);
                    self.framing = Framing::Chunked(if rest == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(rest)
                    });
                    return Ok(Some(Frame::data(data)));
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ExchangeError::Protocol("chunk not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    // Trailer fields end at an empty line; they are read and dropped.
                    let Some(end) = find_trailers_end(buf)? else {
                        return Ok(None);
                    };
                    buf.advance(end);
                    self.framing = Framing::Done;
                    return Ok(None);
                }
            }
        }
    }
}

/// Up to `left` buffered body bytes, and how many remain after them.
fn take_upto(buf: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let n = (buf.len() as u64).min(left) as usize;
    (buf.split_to(n).freeze(), left - n as u64)
}

/// Header fields as `name: value` lines, for a head or a trailer section.
pub(crate) fn write_fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

/// One `name: value` line.
pub(crate) fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, ExchangeError> {
    match buf.windows(2).take(limit).position(|w| w == b"\r\n") {
        Some(p) => Ok(Some(p)),
        None if buf.len() > limit => Err(ExchangeError::Protocol("chunk line too long")),
        None => Ok(None),
    }
}

/// Where the trailer section (after the last chunk's size line) ends.
fn find_trailers_end(buf: &[u8]) -> Result<Option<usize>, ExchangeError> {
    if buf.starts_with(b"\r\n") {
        return Ok(Some(2));
    }
    match buf
        .windows(4)
        .take(MAX_TRAILERS)
        .position(|w| w == b"\r\n\r\n")
    {
        Some(p) => Ok(Some(p + 4)),
        None if buf.len() > MAX_TRAILERS => Err(ExchangeError::Protocol("trailers too large")),
        None => Ok(None),
    }
}

fn parse_hex(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 15 {
        return None;
    }
    b.iter().try_fold(0u64, |n, c| {
        let d = (*c as char).to_digit(16)?;
        Some(n * 16 + u64::from(d))
    })
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let this = &mut *self;
        loop {
            // The rest of the request keeps going out while the reply streams.
            if let (Some(out), Some(conn)) = (this.out.as_mut(), this.conn.as_mut()) {
                match out.poll_send(&mut conn.io, cx) {
                    Poll::Ready(Ok(())) => this.out = None,
                    // The upstream stopped taking the request (or the client
                    // stopped sending it): the reply still counts, the
                    // connection does not go back.
                    Poll::Ready(Err(_)) => {
                        this.out = None;
                        this.keep_alive = false;
                    }
                    Poll::Pending => {}
                }
            }
            match this.decode() {
                Ok(Some(frame)) => {
                    if this.framing == Framing::Done {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if matches!(this.framing, Framing::Empty | Framing::Done) {
                this.finish();
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => {
                    if this.framing == Framing::UntilClose {
                        this.conn = None;
                        this.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    this.conn = None;
                    return Poll::Ready(Some(Err(ExchangeError::Protocol(
                        "connection closed inside the response body",
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Empty | Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty | Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body with nothing left to read (an empty one never polled) still
        // returns its connection.
        if matches!(self.framing, Framing::Empty | Framing::Done) && self.give_back.is_some() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(head: &str) -> (http::response::Parts, bool) {
        parse_head(head.as_bytes())
            .expect("parses")
            .expect("complete")
            .0
    }

    fn framing_of(head: &str, head_request: bool) -> Result<(Framing, bool), ExchangeError> {
        let (mut p, mut keep) = parts(head);
        framing(&mut p, head_request, &mut keep).map(|f| (f, keep))
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        use Framing::*;
        let chunked = Chunked(Chunk::Size);
        // (reply head, HEAD request, framing and reuse; None for an error)
        type Case = (&'static str, bool, Option<(Framing, bool)>);
        let cases: &[Case] = &[
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                Some((Length(5), true)),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                false,
                Some((Length(5), true)),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                false,
                None,
            ),
            ("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false, None),
            ("HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n", false, None),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false,
                Some((chunked, true)),
            ),
            // A length beside a coding: chunked wins, the connection is not reused.
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Some((chunked, false)),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                false,
                Some((UntilClose, false)),
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, Some((UntilClose, false))),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                false,
                Some((Empty, true)),
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false,
                Some((Empty, true)),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
                true,
                Some((Empty, true)),
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false,
                Some((Length(1), false)),
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                false,
                Some((Length(1), false)),
            ),
            (
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                false,
                Some((Length(1), true)),
            ),
        ];
        for (head, head_request, want) in cases {
            let got = framing_of(head, *head_request).ok();
            assert_eq!(got, *want, "{head:?}");
        }
    }

    #[test]
    fn header_values_are_read_from_one_copy_of_the_head() {
        let head = b"HTTP/1.1 200 OK\r\nServer: up\r\nX-Empty:\r\nX-Spaced:  a b \r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nbody";
        let ((p, keep), len) = parse_head(head).unwrap().expect("complete");
        assert_eq!(len, head.len() - 4);
        assert!(keep);
        let h = &p.headers;
        assert_eq!(h["server"], "up");
        assert_eq!(h["x-empty"], "");
        assert_eq!(h["x-spaced"], "a b");
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        // A value that is not in the head is copied, never sliced out of place.
        let shared = Bytes::from_static(b"abc");
        assert_eq!(within(&shared, b"xyz", b"zz"), "zz");
        assert_eq!(within(&shared, b"abc", &b"abc"[1..]), "bc");
    }

    #[test]
    fn chunk_sizes_are_strict_hex() {
        assert_eq!(parse_hex(b"1f"), Some(31));
        assert_eq!(parse_hex(b"0"), Some(0));
        assert_eq!(parse_hex(b""), None);
        assert_eq!(parse_hex(b"-1"), None);
        assert_eq!(parse_hex(b"+1"), None);
        assert_eq!(parse_hex(b"ffffffffffffffff"), None);
        assert_eq!(parse_length(b"18446744073709551616"), None);
        assert_eq!(parse_length(b"12"), Some(12));
    }
}
