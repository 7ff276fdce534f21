//! The hub: this node's fan-out from channels to connections.
//!
//! It keeps, per channel, the subscribers on this node and holds one broker subscription per channel
//! while at least one is there (reference counting by the subscriber list itself). A live message is
//! wrapped once into an `Arc<Delivery>` and offered to each subscriber's bounded queue: a full
//! queue marks that subscriber as lagging and never slows the others.

use crate::broker::{Broker, BrokerError, Live};
use crate::delivery::{Delivery, Outbound};
use crate::metrics::Metrics;
use crate::queue::DeliveryQueue;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;
use wardline_protocol::Channel;

/// Locks ordering channels' broker subscriptions; channels share one when their hashes meet.
const MEMBERSHIP_STRIPES: usize = 256;

/// One connection's place in the hub: its queue.
#[derive(Debug)]
pub struct Subscriber {
    id: u64,
    /// Notifications waiting to be sent.
    pub queue: DeliveryQueue,
}

/// Channel → subscribers on this node.
pub struct Hub {
    broker: Arc<dyn Broker>,
    channels: RwLock<HashMap<Channel, Vec<Arc<Subscriber>>>>,
    // Serializes a channel's broker (un)subscriptions so that its last leave and next join cannot
    // interleave into "unsubscribed while someone listens". Striped by channel: joins of different
    // channels wait for Redis side by side (a reconnect stampede's subscriptions are then batched by
    // the broker), not one round trip after another.
    membership: Box<[tokio::sync::Mutex<()>]>,
    metrics: Arc<Metrics>,
    next_id: AtomicU64,
}

impl Hub {
    /// A hub over `broker`, reading the broker's live messages from `live`.
    pub fn start(
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        mut live: mpsc::Receiver<Live>,
    ) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            broker,
            channels: RwLock::new(HashMap::new()),
            membership: (0..MEMBERSHIP_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            metrics,
            next_id: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            while let Some(live) = live.recv().await {
                let Some(hub) = weak.upgrade() else { return };
                let (channel, outbound) = match live {
                    Live::Message(message) => (
                        message.channel.clone(),
                        Outbound::Notification(Arc::new(Delivery::new(message))),
                    ),
                    Live::Repeat(message, n) => (
                        message.channel.clone(),
                        Outbound::Notification(Arc::new(Delivery::repeat(message, n))),
                    ),
                    Live::Receipts(sync) => {
                        (sync.channel.clone(), Outbound::Receipts(Arc::new(sync)))
                    }
                };
                hub.dispatch(&channel, outbound);
            }
        });
        hub
    }

    /// The broker behind the hub.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// The relay's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Channels with at least one subscriber on this node.
    pub fn channel_count(&self) -> usize {
        self.channels.read().expect("hub lock").len()
    }

    /// A new subscriber with a queue of `capacity` notifications.
    pub fn subscriber(&self, capacity: usize) -> Arc<Subscriber> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Arc::new(Subscriber {
            id,
            queue: DeliveryQueue::new(capacity),
        })
    }

    /// Adds the subscriber to a channel; the broker subscription is in place when this returns.
    pub async fn join(
        &self,
        channel: &Channel,
        subscriber: &Arc<Subscriber>,
    ) -> Result<(), BrokerError> {
        let _membership = self.membership(channel).lock().await;
        let known = self
            .channels
            .read()
            .expect("hub lock")
            .contains_key(channel);
        if !known {
            self.broker.subscribe(channel).await?;
        }
        self.channels
            .write()
            .expect("hub lock")
            .entry(channel.clone())
            .or_default()
            .push(subscriber.clone());
        Ok(())
    }

    /// Removes the subscriber from channels; channels left empty are unsubscribed in the background.
    pub fn leave(self: &Arc<Self>, channels: &[Channel], subscriber: &Subscriber) {
        let mut emptied = Vec::new();
        {
            let mut map = self.channels.write().expect("hub lock");
            for channel in channels {
                if let Some(list) = map.get_mut(channel) {
                    list.retain(|s| s.id != subscriber.id);
                    if list.is_empty() {
                        map.remove(channel);
                        emptied.push(channel.clone());
                    }
                }
            }
        }
        if emptied.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let hub = self.clone();
        runtime.spawn(async move {
            for channel in emptied {
                let _membership = hub.membership(&channel).lock().await;
                let still_empty = !hub
                    .channels
                    .read()
                    .expect("hub lock")
                    .contains_key(&channel);
                if still_empty && let Err(e) = hub.broker.unsubscribe(&channel).await {
                    tracing::warn!(%channel, error = %e, "unsubscribing failed");
                }
            }
        });
    }

    /// The lock that orders `channel`'s broker subscriptions.
    fn membership(&self, channel: &Channel) -> &tokio::sync::Mutex<()> {
        let mut hasher = DefaultHasher::new();
        channel.as_str().hash(&mut hasher);
        &self.membership[hasher.finish() as usize % self.membership.len()]
    }

    fn dispatch(&self, channel: &Channel, delivery: Outbound) {
        let map = self.channels.read().expect("hub lock");
        let Some(subscribers) = map.get(channel) else {
            return;
        };
        let mut delivered = 0;
        for subscriber in subscribers {
            if subscriber.queue.offer(delivery.clone()) {
                delivered += 1;
            }
        }
        self.metrics
            .deliveries_total
            .fetch_add(delivered, Ordering::Relaxed);
    }
}
