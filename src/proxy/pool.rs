//! Kept-alive HTTP/1.1 connections to one endpoint.
//!
//! Each connection is driven by one task for its whole life; a request takes
//! an idle connection's sender from a lock-free queue, and the response body
//! puts it back when it has been read to the end. Nothing is spawned and
//! nothing is locked per request (hyper-util's pooled client spawned a
//! wait-for-idle task and took a mutex for every forwarded request).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use super::upstream::UpstreamBody;

/// Idle connections kept per endpoint; one more is closed when it goes idle.
const MAX_IDLE: usize = 1024;
/// The reaper looks this many times per `idle_timeout`: a connection is
/// closed after between 2/3 and all of it unused.
const REAP_TICKS: u32 = 3;

struct Idle {
    sender: SendRequest<UpstreamBody>,
    /// The reaper's tick when the connection went idle: no clock read per request.
    tick: u64,
}

pub struct Pool {
    idle: ArrayQueue<Idle>,
    tick: AtomicU64,
    reaper_started: AtomicBool,
    idle_timeout: Duration,
}

/// Why a request could not be sent.
pub enum SendError {
    /// No connection could be made (refused, unreachable, TLS failed).
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed once the request was on its way.
    Request(hyper::Error),
}

impl Pool {
    pub fn new(idle_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            idle: ArrayQueue::new(MAX_IDLE),
            tick: AtomicU64::new(0),
            reaper_started: AtomicBool::new(false),
            idle_timeout,
        })
    }

    /// An idle connection ready for a request, if there is one. A connection
    /// whose response has ended but whose request body is still on its way
    /// (an upstream that answered early, a client sending slowly) is not
    /// ready: it goes back to the queue rather than make this request wait
    /// on another client's body.
    async fn checkout(&self) -> Option<SendRequest<UpstreamBody>> {
        for _ in 0..self.idle.len() {
            let mut c = self.idle.pop()?;
            if c.sender.is_closed() {
                continue;
            }
            // One poll, never a wait; the waker it leaves costs at most a spurious wake-up.
            let ready = std::future::poll_fn(|cx| Poll::Ready(c.sender.poll_ready(cx))).await;
            match ready {
                Poll::Ready(Ok(())) => return Some(c.sender),
                Poll::Ready(Err(_)) => continue,
                Poll::Pending => {
                    // A full queue drops it, which closes the connection once its exchange ends.
                    let _ = self.idle.push(c);
                }
            }
        }
        None
    }

    fn checkin(&self, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let tick = self.tick.load(Ordering::Relaxed);
        // A full queue drops the sender, which closes that connection.
        let _ = self.idle.push(Idle { sender, tick });
    }

    /// Closes connections idle for `REAP_TICKS` reaper ticks. One task per pool,
    /// started with the first connection, gone when the pool is dropped.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak: Weak<Pool> = Arc::downgrade(self);
        tokio::spawn(async move {
            let period = weak.upgrade().map(|p| p.idle_timeout / REAP_TICKS);
            let Some(period) = period else { return };
            let mut every = tokio::time::interval(period);
            every.tick().await;
            loop {
                every.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                let now = pool.tick.fetch_add(1, Ordering::Relaxed) + 1;
                for _ in 0..pool.idle.len() {
                    let Some(c) = pool.idle.pop() else { break };
                    if now - c.tick < u64::from(REAP_TICKS) && !c.sender.is_closed() {
                        let _ = pool.idle.push(c);
                    }
                }
            }
        });
    }

    /// Sends `req` over an idle connection, or a new one. A request that an
    /// idle connection closed before it was written goes out on the next
    /// idle connection, or a new one; anything already written is never
    /// sent twice.
    pub async fn send(
        self: &Arc<Self>,
        connector: &HttpsConnector<HttpConnector>,
        builder: &http1::Builder,
        endpoint: &http::Uri,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        while let Some(mut sender) = self.checkout().await {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, sender)),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(SendError::Request(e.into_error())),
                },
            }
        }
        // Boxed: the connect path is rare, and inline it would make every
        // in-flight request's future a kilobyte larger.
        let mut sender = Box::pin(self.connect(connector, builder, endpoint)).await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok(self.wrap(resp, sender)),
            Err(e) => Err(SendError::Request(e)),
        }
    }

    async fn connect(
        self: &Arc<Self>,
        connector: &HttpsConnector<HttpConnector>,
        builder: &http1::Builder,
        endpoint: &http::Uri,
    ) -> Result<SendRequest<UpstreamBody>, SendError> {
        let io = connector
            .clone()
            .call(endpoint.clone())
            .await
            .map_err(SendError::Connect)?;
        let (sender, conn) = builder
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        self.start_reaper();
        Ok(sender)
    }

    fn wrap(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        sender: SendRequest<UpstreamBody>,
    ) -> Response<PooledBody> {
        // An upgraded connection belongs to the upgrade from now on.
        let back = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS)
            .then(|| (sender, self.clone()));
        resp.map(|inner| PooledBody {
            inner,
            back,
            ended: false,
        })
    }
}

/// The upstream's response body. Once read to its end, its connection goes
/// back to the pool; dropped before that, the connection is closed.
pub struct PooledBody {
    inner: Incoming,
    back: Option<(SendRequest<UpstreamBody>, Arc<Pool>)>,
    ended: bool,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((sender, pool)) = self.back.take() {
            pool.checkin(sender);
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.ended || self.inner.is_end_stream() {
            self.give_back();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                this.ended = true;
                this.give_back();
            }
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => {
                this.ended = true;
                this.give_back();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
