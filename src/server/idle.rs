//! `idle_timeout`: a connection on which no byte moves, in either direction,
//! for that long is closed. The timer is checked whenever the connection waits
//! to read or write, which is exactly when it is idle. Activity only stamps a
//! time, on the coarse clock; the timer is re-armed when it fires early, so
//! busy connections do not touch the timer wheel on every read and write.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::clock;

pin_project! {
    pub struct IdleIo<T> {
        #[pin]
        inner: T,
        timer: Pin<Box<Sleep>>,
        // The waker the timer holds, while it has not fired.
        armed: Option<Waker>,
        timeout: Duration,
        // Coarse milliseconds (`clock::coarse_millis`): a precise reading on
        // every read and write cost two clock reads per request.
        last_activity: u64,
    }
}

impl<T> IdleIo<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        IdleIo {
            inner,
            timer: Box::pin(tokio::time::sleep(timeout)),
            armed: None,
            timeout,
            last_activity: clock::coarse_millis(),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

/// True when the connection has been idle for `timeout`; re-arms the timer
/// (registering the waker) otherwise. A connection waits to read or write
/// several times per request; while the timer holds this task's waker and has
/// not fired there is nothing to do, where polling it again cost about 120
/// instructions each time.
fn idle_for_too_long(
    timer: &mut Pin<Box<Sleep>>,
    armed: &mut Option<Waker>,
    last: u64,
    timeout: Duration,
    cx: &mut Context<'_>,
) -> bool {
    if armed.as_ref().is_some_and(|w| w.will_wake(cx.waker())) && !timer.is_elapsed() {
        return false;
    }
    loop {
        if timer.as_mut().poll(cx).is_pending() {
            match armed {
                Some(w) => w.clone_from(cx.waker()),
                None => *armed = Some(cx.waker().clone()),
            }
            return false;
        }
        let idle = Duration::from_millis(clock::coarse_millis().saturating_sub(last));
        let Some(left) = timeout.checked_sub(idle).filter(|d| !d.is_zero()) else {
            *armed = None;
            return true;
        };
        timer.as_mut().reset(Instant::now() + left);
    }
}

fn timed_out<T>() -> Poll<io::Result<T>> {
    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle_timeout")))
}

impl<T: AsyncRead> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    *this.last_activity = clock::coarse_millis();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending
                if idle_for_too_long(
                    this.timer,
                    this.armed,
                    *this.last_activity,
                    *this.timeout,
                    cx,
                ) =>
            {
                timed_out()
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.inner.poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    *this.last_activity = clock::coarse_millis();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending
                if idle_for_too_long(
                    this.timer,
                    this.armed,
                    *this.last_activity,
                    *this.timeout,
                    cx,
                ) =>
            {
                timed_out()
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.inner.poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    *this.last_activity = clock::coarse_millis();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending
                if idle_for_too_long(
                    this.timer,
                    this.armed,
                    *this.last_activity,
                    *this.timeout,
                    cx,
                ) =>
            {
                timed_out()
            }
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
