//! Each connection's bounded queue of notifications, filled by the hub and drained by the session.
//!
//! Not a tokio `mpsc`: that channel allocates a 32-slot block and cache-padded state up front, about
//! 0.7 KiB per connection whether anything is queued or not, and a separate `Notify` would be needed
//! to say "lagging" to a session blocked on a write. This queue is a `VecDeque` (no allocation until
//! something is queued) behind a mutex the hub and the session hold only to push or pop, plus one
//! waker: the consumer registers before it looks, the producer wakes after it pushes, so no wake-up
//! is lost. A full queue turns into "lagging" for good: the hub offers nothing more, the session
//! closes the connection (4008) and the client resumes from its cursor.

use crate::delivery::Outbound;
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Mutex;
use std::task::Poll;

/// What the consumer gets next.
#[derive(Debug)]
pub enum Next {
    /// A notification, or receipts for the user's devices.
    Delivery(Outbound),
    /// The queue overflowed; nothing more will come.
    Lagging,
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Outbound>,
    lagging: bool,
}

/// A bounded queue with one consumer.
#[derive(Debug)]
pub struct DeliveryQueue {
    inner: Mutex<Inner>,
    waker: AtomicWaker,
    capacity: usize,
}

impl DeliveryQueue {
    /// A queue holding at most `capacity` notifications.
    pub fn new(capacity: usize) -> DeliveryQueue {
        DeliveryQueue {
            inner: Mutex::new(Inner::default()),
            waker: AtomicWaker::new(),
            capacity,
        }
    }

    /// Queues a notification; returns false if it was not queued because the queue is (or just
    /// became) lagging.
    pub fn offer(&self, delivery: Outbound) -> bool {
        let accepted = {
            let mut inner = self.inner.lock().expect("queue lock");
            if inner.lagging {
                return false;
            }
            if inner.items.len() >= self.capacity {
                inner.lagging = true;
                false
            } else {
                inner.items.push_back(delivery);
                true
            }
        };
        self.waker.wake();
        accepted
    }

    /// Whether the queue overflowed.
    pub fn is_lagging(&self) -> bool {
        self.inner.lock().expect("queue lock").lagging
    }

    /// The next notification, in order; `Lagging` once the queue overflowed and is drained.
    pub async fn next(&self) -> Next {
        poll_fn(|cx| {
            self.waker.register(cx.waker());
            let mut inner = self.inner.lock().expect("queue lock");
            match inner.items.pop_front() {
                Some(delivery) => Poll::Ready(Next::Delivery(delivery)),
                None if inner.lagging => Poll::Ready(Next::Lagging),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Completes when the queue overflows (to interrupt a write to a peer that stopped reading).
    pub async fn lagging(&self) {
        poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.is_lagging() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::StoredMessage;
    use crate::delivery::Delivery;
    use bytes::Bytes;
    use std::sync::Arc;
    use wardline_protocol::{Channel, Cursor, Priority};

    fn delivery(n: u64) -> Outbound {
        Outbound::Notification(Arc::new(Delivery::new(StoredMessage {
            id: Cursor::new(n, 0),
            channel: Channel::system_alerts(),
            priority: Priority::Normal,
            ttl: None,
            payload: Bytes::from_static(b"{}"),
        })))
    }

    fn id(next: Next) -> u64 {
        match next {
            Next::Delivery(Outbound::Notification(d)) => d.message.id.ms,
            Next::Delivery(Outbound::Receipts(_)) => panic!("receipts"),
            Next::Lagging => panic!("lagging"),
        }
    }

    #[tokio::test]
    async fn delivers_in_order_then_reports_the_overflow_after_draining() {
        let queue = DeliveryQueue::new(2);
        assert!(queue.offer(delivery(1)) && queue.offer(delivery(2)));
        assert!(!queue.offer(delivery(3)), "full: the third is refused");
        assert!(!queue.offer(delivery(4)), "lagging for good");
        assert!(queue.is_lagging());
        assert_eq!(id(queue.next().await), 1);
        assert_eq!(id(queue.next().await), 2);
        assert!(matches!(queue.next().await, Next::Lagging));
        queue.lagging().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_consumer_is_woken_by_another_thread() {
        let queue = Arc::new(DeliveryQueue::new(1000));
        let consumer = {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while seen.len() < 500 {
                    seen.push(id(queue.next().await));
                }
                seen
            })
        };
        for n in 0..500 {
            assert!(queue.offer(delivery(n)));
            if n % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(consumer.await.unwrap(), (0..500).collect::<Vec<_>>());
    }
}
