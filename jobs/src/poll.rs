//! How an idle worker knows when to look for work again.
//!
//! apalis-core 1.0.0's `IntervalStrategy` replaces its fired timer without polling the new one, so
//! no waker is registered for the next tick; a worker whose fetch came back empty then sleeps until
//! its heartbeat (30 s). Under load this stalled queues in our tests. This strategy drains every
//! tick that is due and always leaves the waker registered for the next one.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use apalis_core::backend::ext::poll_strategy::{PollSnapshot, PollStrategy};
use tokio::time::{Interval, MissedTickBehavior};

/// Wakes the worker every `period`. Must be created inside a Tokio runtime.
#[derive(Debug)]
pub struct Every {
    interval: Interval,
}

impl Every {
    /// A strategy ticking every `period` (at least 1 ms).
    pub fn new(period: Duration) -> Self {
        let mut interval = tokio::time::interval(period.max(Duration::from_millis(1)));
        // After a busy stretch, one prompt tick is enough: no burst of catch-up polls.
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { interval }
    }
}

impl PollStrategy for Every {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let mut ticked = false;
        while self.interval.poll_tick(cx).is_ready() {
            ticked = true;
        }
        if ticked {
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
        let mut strategy = Every::new(Duration::from_millis(10));
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
}
