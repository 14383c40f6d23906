//! A bounded queue from producers that never block or await to one
//! consumer: a grpcio streaming sink polls it as a `Stream`, a plain thread
//! (the Redis writer) takes from it with `try_recv`.
//!
//! A full queue is an answer, not a wait: the producer learns the consumer is
//! too slow and can drop it, so one stuck subscriber never stalls the others.
//! It is bounded in items and in bytes, so what one stuck consumer holds
//! does not grow with the size of the messages.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures_util::Stream;

/// Why an item was not queued: for a chat member, a message; for a peer, a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The queue is at its bound: the receiver is too slow.
    Full,
    /// The receiver is gone, or its connection is closing.
    Closed,
}

struct State<T> {
    items: VecDeque<T>,
    /// The items' weight in bytes, summed.
    bytes: usize,
    /// The sender closed the queue: the consumer ends after the last item.
    closed: bool,
    /// The receiver is gone: sending is pointless.
    abandoned: bool,
    waker: Option<Waker>,
}

struct Channel<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Bytes queued at most (one item larger than this still fits alone).
    max_bytes: usize,
    weight: fn(&T) -> usize,
}

impl<T> Channel<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        crate::lock(&self.state)
    }
}

/// The producing half. Cheap to clone; every clone feeds the same queue.
pub struct Sender<T>(Arc<Channel<T>>);

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender(Arc::clone(&self.0))
    }
}

/// The consuming half: a `Stream` that ends once the queue is closed and empty.
pub struct Receiver<T>(Arc<Channel<T>>);

/// A queue holding at most `capacity` items.
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    bounded_in_bytes(capacity, usize::MAX, |_| 0)
}

/// A queue holding at most `capacity` items and, but for a single item,
/// `max_bytes` of them as `weight` counts.
pub fn bounded_in_bytes<T>(
    capacity: usize,
    max_bytes: usize,
    weight: fn(&T) -> usize,
) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Channel {
        state: Mutex::new(State {
            items: VecDeque::new(),
            bytes: 0,
            closed: false,
            abandoned: false,
            waker: None,
        }),
        capacity: capacity.max(1),
        max_bytes,
        weight,
    });
    (Sender(Arc::clone(&shared)), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queues `item` without waiting: `Full` when the consumer is too far
    /// behind, `Closed` when it is gone or the queue closed.
    pub fn try_send(&self, item: T) -> Result<(), SendError> {
        self.send_bounded(item, true)
    }

    /// [`Sender::try_send`] for an item of a replay, bounded by bytes only:
    /// a resuming member is owed the whole of what it missed at once.
    pub fn try_send_replayed(&self, item: T) -> Result<(), SendError> {
        self.send_bounded(item, false)
    }

    fn send_bounded(&self, item: T, count_bound: bool) -> Result<(), SendError> {
        let weight = (self.0.weight)(&item);
        let waker = {
            let mut state = self.0.lock();
            if state.abandoned || state.closed {
                return Err(SendError::Closed);
            }
            let over_bytes =
                !state.items.is_empty() && state.bytes.saturating_add(weight) > self.0.max_bytes;
            if (count_bound && state.items.len() >= self.0.capacity) || over_bytes {
                return Err(SendError::Full);
            }
            state.bytes += weight;
            state.items.push_back(item);
            state.waker.take()
        };
        // Woken outside the lock: the consumer may run at once on another thread.
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Bytes that may still be queued before the byte bound refuses more.
    pub fn room_in_bytes(&self) -> usize {
        self.0.max_bytes.saturating_sub(self.0.lock().bytes)
    }

    /// Ends the stream once the items already queued are consumed.
    pub fn close(&self) {
        let waker = {
            let mut state = self.0.lock();
            state.closed = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Ends the stream now, dropping what is queued: for a consumer cut off
    /// for being too slow, whose backlog nobody will read.
    pub fn close_now(&self) {
        let waker = {
            let mut state = self.0.lock();
            state.closed = true;
            state.items.clear();
            state.bytes = 0;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The consumer has gone away.
    pub fn is_gone(&self) -> bool {
        self.0.lock().abandoned
    }
}

impl<T> Receiver<T> {
    /// The next item if one is queued, without waiting.
    pub fn try_recv(&self) -> Option<T> {
        let mut state = self.0.lock();
        let item = state.items.pop_front()?;
        state.bytes -= (self.0.weight)(&item);
        Some(item)
    }
}

impl<T> Stream for Receiver<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.0.lock();
        if let Some(item) = state.items.pop_front() {
            state.bytes -= (self.0.weight)(&item);
            return Poll::Ready(Some(item));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.abandoned = true;
        state.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    use crate::executor::block_on;

    #[test]
    fn delivers_in_order_and_refuses_past_capacity() {
        let (tx, mut rx) = bounded(2);
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Err(SendError::Full));
        assert_eq!(block_on(rx.next()), Some(1));
        assert_eq!(tx.try_send(4), Ok(()));
        tx.close();
        assert_eq!(tx.try_send(5), Err(SendError::Closed));
        assert_eq!(block_on(rx.by_ref().collect::<Vec<_>>()), vec![2, 4]);
    }

    #[test]
    fn a_waiting_consumer_is_woken_from_another_thread() {
        let (tx, rx) = bounded(4);
        let producer = std::thread::spawn(move || {
            for i in 0..100 {
                while tx.try_send(i) == Err(SendError::Full) {
                    std::thread::yield_now();
                }
            }
            tx.close();
        });
        assert_eq!(
            block_on(rx.collect::<Vec<_>>()),
            (0..100).collect::<Vec<_>>()
        );
        producer.join().unwrap();
    }

    #[test]
    fn bytes_are_bounded_too_but_one_large_item_fits_alone() {
        let (tx, mut rx) = bounded_in_bytes::<Vec<u8>>(100, 10, Vec::len);
        assert_eq!(tx.try_send(vec![0; 25]), Ok(()), "alone, however large");
        assert_eq!(tx.try_send(vec![0; 1]), Err(SendError::Full));
        assert_eq!(block_on(rx.next()).map(|v| v.len()), Some(25));
        assert_eq!(tx.try_send(vec![0; 6]), Ok(()));
        assert_eq!(tx.try_send(vec![0; 4]), Ok(()));
        assert_eq!(tx.try_send(vec![0; 1]), Err(SendError::Full));
        tx.close_now();
        assert_eq!(block_on(rx.next()), None, "the backlog is dropped");
    }

    #[test]
    fn dropping_the_consumer_tells_the_producer() {
        let (tx, rx) = bounded::<u8>(4);
        drop(rx);
        assert!(tx.is_gone());
        assert_eq!(tx.try_send(1), Err(SendError::Closed));
    }
}
