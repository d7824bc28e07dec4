//! How an idle worker knows when to look for work again: at once when this process submitted a
//! task to its queue, otherwise on a periodic tick (tasks submitted by other processes, retries).
//!
//! apalis-core 1.0.0's `IntervalStrategy` replaces its fired timer without polling the new one, so
//! no waker is registered for the next tick; a worker whose fetch came back empty then sleeps until
//! its heartbeat (30 s). Under load this stalled queues in our tests. This strategy drains every
//! tick that is due and always leaves the waker registered for the next one.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, LazyLock, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use apalis_core::backend::ext::poll_strategy::{PollSnapshot, PollStrategy};
use tokio::{
    sync::{Notify, futures::OwnedNotified},
    time::{Interval, MissedTickBehavior},
};

/// One wake-up signal per queue of this process, keyed by storage location and queue.
static WAKERS: LazyLock<Mutex<HashMap<String, Arc<Notify>>>> = LazyLock::new(Default::default);

fn waker(key: &str) -> Arc<Notify> {
    let mut wakers = WAKERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    wakers.entry(key.to_owned()).or_default().clone()
}

/// Tells this process's worker of the queue `key` that a task is waiting.
pub fn wake(key: &str) {
    let wakers = WAKERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(notify) = wakers.get(key) {
        // Stores a permit when the worker is busy, so the signal is never lost.
        notify.notify_one();
    }
}

/// Wakes the worker when this process submits to its queue, and every `period` otherwise.
/// Must be created inside a Tokio runtime.
pub struct Every {
    interval: Interval,
    notify: Arc<Notify>,
    notified: Pin<Box<OwnedNotified>>,
}

impl std::fmt::Debug for Every {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Every")
            .field("period", &self.interval.period())
            .finish_non_exhaustive()
    }
}

impl Every {
    /// A strategy for the queue `key`, ticking every `period` (at least 1 ms).
    pub fn new(key: &str, period: Duration) -> Self {
        let mut interval = tokio::time::interval(period.max(Duration::from_millis(1)));
        // After a busy stretch, one prompt tick is enough: no burst of catch-up polls.
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let notify = waker(key);
        let notified = Box::pin(notify.clone().notified_owned());
        Self {
            interval,
            notify,
            notified,
        }
    }
}

impl PollStrategy for Every {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let mut woken = false;
        while self.interval.poll_tick(cx).is_ready() {
            woken = true;
        }
        while self.notified.as_mut().poll(cx).is_ready() {
            woken = true;
            self.notified = Box::pin(self.notify.clone().notified_owned());
        }
        if woken {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    use std::task::{Wake, Waker};

    use super::*;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn every_tick_wakes_the_worker_again() {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut strategy = Every::new("test:every-tick", Duration::from_millis(10));
        let snapshot = PollSnapshot::default();
        let _ = strategy.poll_drive(&mut cx, &snapshot);
        for round in 1..=3 {
            // Nobody polls the strategy meanwhile: only its registered waker can report the tick.
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert!(
                counter.0.load(Ordering::SeqCst) >= round,
                "tick {round} woke the worker"
            );
            assert!(strategy.poll_drive(&mut cx, &snapshot).is_ready());
        }
    }

    #[tokio::test]
    async fn a_local_submission_wakes_the_worker_before_its_tick() {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut strategy = Every::new("test:local-wake", Duration::from_secs(3600));
        let snapshot = PollSnapshot::default();
        let _ = strategy.poll_drive(&mut cx, &snapshot);
        let _ = strategy.poll_drive(&mut cx, &snapshot);
        let before = counter.0.load(Ordering::SeqCst);
        wake("test:local-wake");
        assert!(
            counter.0.load(Ordering::SeqCst) > before,
            "the waiting worker was woken"
        );
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_ready());
        // A signal sent while the worker is busy is kept for its next look.
        wake("test:local-wake");
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_ready());
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_pending());
    }
}
