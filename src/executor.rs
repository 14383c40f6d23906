//! Enough of an executor for the few futures papo waits on outside grpcio's
//! threads: a client's stream, a server's shutdown. The calling thread parks
//! until the future's waker unparks it; nothing polls.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Instant;

/// Wakes a thread parked in [`block_on_until`].
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` on this thread until it completes, or until `deadline`
/// (then `None`).
pub fn block_on_until<F: Future>(
    mut future: Pin<&mut F>,
    deadline: Option<Instant>,
) -> Option<F::Output> {
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Some(output);
        }
        match deadline {
            None => thread::park(),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                thread::park_timeout(left);
            }
        }
    }
}

/// Runs `future` on this thread to completion.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    loop {
        if let Some(output) = block_on_until(future.as_mut(), None) {
            return output;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_pending_future_gives_up_at_its_deadline() {
        let mut never = pin!(std::future::pending::<()>());
        let deadline = Instant::now() + Duration::from_millis(20);
        assert_eq!(block_on_until(never.as_mut(), Some(deadline)), None);
        assert!(Instant::now() >= deadline);
        assert_eq!(block_on(async { 7 }), 7);
    }
}
