//! `idle_timeout`: a connection on which no byte moves, in either direction,
//! for that long is closed. The timer is checked whenever the connection waits
//! to read or write, which is exactly when it is idle.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pin_project! {
    pub struct IdleIo<T> {
        #[pin]
        inner: T,
        timer: Pin<Box<Sleep>>,
        timeout: Duration,
    }
}

impl<T> IdleIo<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        IdleIo {
            inner,
            timer: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

fn expired(timer: &mut Pin<Box<Sleep>>, cx: &mut Context<'_>) -> bool {
    timer.as_mut().poll(cx).is_ready()
}

use std::future::Future;

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
                    let deadline = Instant::now() + *this.timeout;
                    this.timer.as_mut().reset(deadline);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if expired(this.timer, cx) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle_timeout")))
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
                    let deadline = Instant::now() + *this.timeout;
                    this.timer.as_mut().reset(deadline);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if expired(this.timer, cx) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle_timeout")))
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
                    let deadline = Instant::now() + *this.timeout;
                    this.timer.as_mut().reset(deadline);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if expired(this.timer, cx) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle_timeout")))
            }
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
