//! Per-request timeouts without a timer registration per request.
//!
//! `tokio::time::timeout` enters a fresh timer in the runtime's wheel on its
//! first poll and takes it out when dropped, and hyper does the same for the
//! `header_read_timeout` of every request head: together a few per cent of
//! the CPU of a proxied request on a keep-alive connection. A connection's
//! waits (the next head, the upstream's answer) instead borrow one timer in
//! turn. Its deadline is only ever moved earlier when a request
//! needs that; a timer due before a request's own deadline fires early, finds
//! the deadline not yet reached, and is re-armed once. With steady traffic
//! the timer is re-entered about once per timeout period, not per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The spare timer of one client connection.
#[derive(Debug, Default)]
pub struct TimerSlot(Mutex<Option<Pin<Box<Sleep>>>>);

impl TimerSlot {
    /// `fut`'s output, or `None` once `deadline` passed first.
    pub async fn within<F: Future>(
        self: &Arc<Self>,
        deadline: Instant,
        fut: F,
    ) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        let mut due = LazySleep::new(self.clone(), deadline);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            Pin::new(&mut due).poll(cx).map(|()| None)
        })
        .await
    }

    /// The spare timer, due no later than `deadline`, or a new one.
    fn take(&self, deadline: Instant) -> Pin<Box<Sleep>> {
        let spare = self.0.lock().ok().and_then(|mut s| s.take());
        match spare {
            Some(mut t) => {
                if t.deadline() > deadline {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }
}

/// A sleep until `deadline` on the slot's timer, taken on the first poll
/// and put back when dropped, however the wait ends.
pub struct LazySleep {
    slot: Arc<TimerSlot>,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl LazySleep {
    pub fn new(slot: Arc<TimerSlot>, deadline: Instant) -> Self {
        LazySleep {
            slot,
            deadline,
            timer: None,
        }
    }
}

impl Future for LazySleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let deadline = this.deadline;
        let timer = match &mut this.timer {
            Some(t) => t,
            None => this.timer.insert(this.slot.take(deadline)),
        };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            timer.as_mut().reset(deadline);
        }
    }
}

impl Drop for LazySleep {
    fn drop(&mut self) {
        if let (Some(t), Ok(mut spare)) = (self.timer.take(), self.slot.0.lock()) {
            *spare = Some(t);
        }
    }
}

/// hyper's HTTP/1 timer for one connection (its `header_read_timeout`, armed
/// for every request head): sleeps on the connection's shared timer.
#[derive(Clone)]
pub struct ConnTimer(pub Arc<TimerSlot>);

impl hyper::rt::Sleep for LazySleep {}

impl hyper::rt::Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LazySleep::new(self.0.clone(), Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LazySleep::new(self.0.clone(), Instant::from_std(deadline)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits on `slot`'s timer with a deadline `limit` seconds out, for work
    /// of `work` seconds (`None`: never done): whether it finished, and when.
    async fn wait(slot: &Arc<TimerSlot>, limit: u64, work: Option<u64>) -> (bool, u64) {
        let at = Instant::now();
        let work = async {
            match work {
                Some(w) => tokio::time::sleep(Duration::from_secs(w)).await,
                None => std::future::pending().await,
            }
        };
        let done = slot
            .within(at + Duration::from_secs(limit), work)
            .await
            .is_some();
        (done, (Instant::now() - at).as_secs())
    }

    #[tokio::test(start_paused = true)]
    async fn each_wait_gets_its_own_deadline_from_a_shared_timer() {
        let slot = Arc::new(TimerSlot::default());
        // The timer is made here, due 10 s out, and put back.
        assert_eq!(wait(&slot, 10, Some(1)).await, (true, 1));
        // Due in 9 s, it fires first and must not end this wait before its
        // own 14 s.
        assert_eq!(wait(&slot, 14, Some(12)).await, (true, 12));
        // Past its deadline, a wait ends at that deadline.
        assert_eq!(wait(&slot, 5, None).await, (false, 5));
        // The timer, left due 100 s out, is moved earlier for a shorter wait.
        assert_eq!(wait(&slot, 100, Some(1)).await, (true, 1));
        assert_eq!(wait(&slot, 2, None).await, (false, 2));
    }
}
