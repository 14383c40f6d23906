//! Deadlines for gRPC streams: their write deadlines and their tokens'
//! expiry. grpcio has no timer a task can await, so one thread,
//! `grpc-deadlines`, looks at every armed deadline a few times per timeout
//! and wakes the tasks whose time is up. A stream arms its write deadline
//! while C-core holds a write of its that has not gone out (the sink is not
//! ready) and disarms it when the write completes: the deadline fires when
//! a member has accepted nothing for the whole timeout. A token's expiry is
//! a deadline set once, when the member joins.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::Sink;

use crate::lock;

/// How often, per timeout, the thread looks: a deadline fires at most a
/// quarter of the timeout late.
const CHECKS_PER_TIMEOUT: u32 = 4;

/// One stream's deadline.
pub struct Deadline {
    /// When it fires, in milliseconds since the clock's start; 0: unarmed.
    at_ms: AtomicU64,
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
    clock: Instant,
}

impl Deadline {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at_after(&self, after: Duration) -> u64 {
        let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.now_ms().saturating_add(after).max(1)
    }

    /// Arms the deadline `after` from now, unless it is armed already.
    fn arm_unless_armed(&self, after: Duration) {
        let at = self.at_after(after);
        let _ = self
            .at_ms
            .compare_exchange(0, at, Ordering::AcqRel, Ordering::Relaxed);
    }

    fn disarm(&self) {
        self.at_ms.store(0, Ordering::Release);
    }

    /// Sets the deadline to fire `after` from now, whether it was unarmed,
    /// armed or fired.
    pub fn fire_after(&self, after: Duration) {
        self.fired.store(false, Ordering::Release);
        self.at_ms.store(self.at_after(after), Ordering::Release);
    }

    pub fn has_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Fires the deadline if its time has come.
    fn check(&self, now_ms: u64) {
        let at = self.at_ms.load(Ordering::Acquire);
        if at != 0 && now_ms >= at && !self.fired.swap(true, Ordering::AcqRel) {
            if let Some(waker) = lock(&self.waker).take() {
                waker.wake();
            }
        }
    }

    /// Completes once the deadline has fired.
    pub fn fired(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.fired.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            *lock(&self.waker) = Some(cx.waker().clone());
            // Fired between the check and the waker's registration?
            if self.fired.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// Every live stream's deadline, and the thread that fires them.
pub struct Deadlines {
    live: Arc<Mutex<Vec<Weak<Deadline>>>>,
    clock: Instant,
    /// Dropped with the server: the thread then ends.
    _stop: mpsc::Sender<()>,
}

impl Deadlines {
    /// Starts the `grpc-deadlines` thread, checking for `timeout`s.
    pub fn start(timeout: Duration) -> std::io::Result<Deadlines> {
        let live: Arc<Mutex<Vec<Weak<Deadline>>>> = Arc::default();
        let clock = Instant::now();
        let (stop, stopped) = mpsc::channel::<()>();
        let tick = (timeout / CHECKS_PER_TIMEOUT).max(Duration::from_millis(10));
        let checked = Arc::clone(&live);
        crate::threads::spawn_helper("grpc-deadlines", move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                let now_ms = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
                lock(&checked).retain(|weak| match weak.upgrade() {
                    Some(deadline) => {
                        deadline.check(now_ms);
                        true
                    }
                    None => false,
                });
            }
        })?;
        Ok(Deadlines {
            live,
            clock,
            _stop: stop,
        })
    }

    /// A new, unarmed deadline, watched until it is dropped.
    pub fn new_deadline(&self) -> Arc<Deadline> {
        let deadline = Arc::new(Deadline {
            at_ms: AtomicU64::new(0),
            fired: AtomicBool::new(false),
            waker: Mutex::new(None),
            clock: self.clock,
        });
        lock(&self.live).push(Arc::downgrade(&deadline));
        deadline
    }
}

/// A sink whose deadline is armed while it cannot take more (a write is
/// still with C-core) and disarmed when it can.
pub struct Timed<'a, S> {
    pub sink: &'a mut S,
    pub deadline: &'a Deadline,
    pub timeout: Duration,
}

impl<S> Timed<'_, S> {
    fn watch<T>(&self, poll: Poll<T>) -> Poll<T> {
        match poll {
            Poll::Pending => self.deadline.arm_unless_armed(self.timeout),
            Poll::Ready(_) => self.deadline.disarm(),
        }
        poll
    }
}

impl<S: Sink<T> + Unpin, T> Sink<T> for Timed<'_, S> {
    type Error = S::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        let poll = Pin::new(&mut *self.sink).poll_ready(cx);
        self.watch(poll)
    }

    fn start_send(mut self: Pin<&mut Self>, item: T) -> Result<(), S::Error> {
        Pin::new(&mut *self.sink).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        let poll = Pin::new(&mut *self.sink).poll_flush(cx);
        self.watch(poll)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Pin::new(&mut *self.sink).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::block_on_until;

    #[test]
    fn an_armed_deadline_fires_and_wakes_its_task_an_unarmed_one_never() {
        let deadlines = Deadlines::start(Duration::from_millis(40)).unwrap();
        let armed = deadlines.new_deadline();
        let idle = deadlines.new_deadline();
        armed.arm_unless_armed(Duration::from_millis(40));
        let soon = Instant::now() + Duration::from_secs(5);
        assert!(block_on_until(std::pin::pin!(armed.fired()), Some(soon)).is_some());
        let shortly = Instant::now() + Duration::from_millis(200);
        assert!(block_on_until(std::pin::pin!(idle.fired()), Some(shortly)).is_none());
        // Disarmed in time, it does not fire.
        let disarmed = deadlines.new_deadline();
        disarmed.arm_unless_armed(Duration::from_millis(100));
        disarmed.disarm();
        assert!(block_on_until(std::pin::pin!(disarmed.fired()), Some(shortly)).is_none());
    }
}
