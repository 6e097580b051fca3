//! Kept-alive HTTP/1.1 connections to one endpoint.
//!
//! A request takes an idle connection from a lock-free queue and drives its
//! exchange itself (`super::exchange`); the response body puts the
//! connection back when it has been read to the end. Nothing is spawned and
//! nothing is locked per request, and no other task is woken: hyper-util's
//! pooled client spawned a wait-for-idle task and took a mutex for every
//! forwarded request, and hyper's connection task cost a channel hop each way.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use http::Response;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tower_service::Service;

use super::exchange::{exchange, Conn, ExchangeError, Failure, Outgoing, ResponseBody};

/// Idle connections kept per endpoint; one more is closed when it goes idle.
const MAX_IDLE: usize = 1024;
/// The reaper looks this many times per `idle_timeout`: a connection is
/// closed after between 2/3 and all of it unused.
const REAP_TICKS: u32 = 3;

struct Idle {
    conn: Box<Conn>,
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
    /// The exchange failed once the request was on its way.
    Request(ExchangeError),
}

pub type PooledBody = ResponseBody;

impl Pool {
    pub fn new(idle_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            idle: ArrayQueue::new(MAX_IDLE),
            tick: AtomicU64::new(0),
            reaper_started: AtomicBool::new(false),
            idle_timeout,
        })
    }

    /// An idle connection the upstream has not closed, if there is one.
    fn checkout(&self) -> Option<Box<Conn>> {
        while let Some(mut c) = self.idle.pop() {
            if c.conn.reusable() {
                return Some(c.conn);
            }
        }
        None
    }

    pub(super) fn checkin(&self, conn: Box<Conn>) {
        let tick = self.tick.load(Ordering::Relaxed);
        // A full queue drops the connection, which closes it.
        let _ = self.idle.push(Idle { conn, tick });
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
                    let Some(mut c) = pool.idle.pop() else { break };
                    if now - c.tick < u64::from(REAP_TICKS) && c.conn.reusable() {
                        let _ = pool.idle.push(c);
                    }
                }
            }
        });
    }

    /// Sends `out` over an idle connection, or a new one. A request that an
    /// idle connection closed before any of it was written goes out on the
    /// next idle connection, or a new one; anything already written is never
    /// sent twice.
    pub async fn send(
        self: &Arc<Self>,
        connector: &HttpsConnector<HttpConnector>,
        endpoint: &http::Uri,
        mut out: Outgoing,
    ) -> Result<Response<PooledBody>, SendError> {
        while let Some(conn) = self.checkout() {
            match exchange(conn, out, self.clone()).await {
                Ok(resp) => return Ok(resp),
                Err(Failure::Unsent(back)) => out = back,
                Err(Failure::Failed(e)) => return Err(SendError::Request(e)),
            }
        }
        // Boxed: the connect path is rare, and inline it would make every
        // in-flight request's future larger.
        let conn = Box::pin(self.connect(connector, endpoint)).await?;
        match exchange(conn, out, self.clone()).await {
            Ok(resp) => Ok(resp),
            Err(Failure::Unsent(_)) => Err(SendError::Request(ExchangeError::Closed)),
            Err(Failure::Failed(e)) => Err(SendError::Request(e)),
        }
    }

    async fn connect(
        self: &Arc<Self>,
        connector: &HttpsConnector<HttpConnector>,
        endpoint: &http::Uri,
    ) -> Result<Box<Conn>, SendError> {
        let io = connector
            .clone()
            .call(endpoint.clone())
            .await
            .map_err(SendError::Connect)?;
        self.start_reaper();
        Ok(Conn::new(TokioIo::new(io)))
    }
}
