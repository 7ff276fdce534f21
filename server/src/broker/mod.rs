//! The broker: where notifications are stored and how they reach every relay node.
//!
//! Two implementations behind one trait: [`embedded::EmbeddedBroker`] (one node, history in SQLite)
//! and [`redis::RedisBroker`] (many nodes on one Redis: history in streams, fan-out over pub/sub,
//! plain `PUBLISH`es from existing backends recorded by the node holding a lease). A broker hands
//! live messages of the channels it was asked to subscribe to into one `mpsc` that the hub reads.

pub mod embedded;
pub mod redis;
pub mod tracking;

use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracking::{Chain, ClaimedStep, Policy, ReceiptSync, Step, TrailEvent};
use wardline_protocol::{Channel, Cursor, ErrorCode, Priority, ReceiptKind};

/// A notification as stored: the publisher's payload, untouched, and what the relay knows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its id and cursor in its channel.
    pub id: Cursor,
    /// Its channel.
    pub channel: Channel,
    /// Its priority.
    pub priority: Priority,
    /// How long after `id.ms` it stops being delivered, if it expires.
    pub ttl: Option<Duration>,
    /// The published bytes.
    pub payload: Bytes,
}

impl StoredMessage {
    /// Whether it has expired at `now_ms`.
    pub fn expired_at(&self, now_ms: u64) -> bool {
        self.ttl
            .is_some_and(|ttl| self.id.ms.saturating_add(ttl.as_millis() as u64) <= now_ms)
    }
}

/// A notification to store and fan out.
#[derive(Debug, Clone)]
pub struct Publish {
    /// The channel.
    pub channel: Channel,
    /// The payload (JSON text for `POST /v1/publish`).
    pub payload: Bytes,
    /// Its priority.
    pub priority: Priority,
    /// Expiry after storage, if any.
    pub ttl: Option<Duration>,
    /// A key that makes retries of the same publish store it once.
    pub idempotency_key: Option<String>,
    /// Its escalation chain, started with it (nothing when a retry finds it stored).
    pub escalation: Option<Policy>,
}

/// The outcome of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The stored notification's id.
    pub id: Cursor,
    /// How many relay nodes had a live subscriber for the channel.
    pub live_relays: u64,
    /// True when the idempotency key was seen before: nothing new was stored.
    pub duplicate: bool,
}

/// A page of history.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// Notifications after the cursor, oldest first, expired ones left out.
    pub messages: Vec<StoredMessage>,
    /// True when notifications after the cursor were already trimmed away.
    pub gap: bool,
    /// True when the page was cut at the limit and more follow.
    pub more: bool,
    /// The last id the page covered, expired notifications included: where the next page starts.
    pub through: Option<Cursor>,
    /// The newest id the channel ever held (stored or trimmed since) when the page was read: a
    /// cursor beyond it is not one this channel gave out.
    pub end: Option<Cursor>,
    /// The history's epoch: it changes when the store lost what it held (see [`ChannelEnd::epoch`]).
    pub epoch: String,
}

/// Where a channel stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelEnd {
    /// The newest id the channel ever held (stored or trimmed since), if any.
    pub last: Option<Cursor>,
    /// The history's epoch: named when the store first held data, and new when it lost it (a Redis
    /// restarted without persistence, an embedded history file replaced). A cursor from another
    /// epoch may have missed notifications that are gone.
    pub epoch: String,
}

/// One recipient's receipt for a notification.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Receipt {
    /// The recipient.
    pub user: String,
    /// Stored on the device, or acknowledged by the person.
    pub kind: ReceiptKind,
    /// When, Unix milliseconds (the first time, if recorded more than once).
    pub at_ms: u64,
}

/// Whether the broker can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerHealth {
    /// Reachable, subscriptions in place.
    Up,
    /// Unreachable, with the reason.
    Down(String),
}

/// How long and how much history is kept per channel.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Oldest age kept.
    pub max_age: Duration,
    /// Most notifications kept per channel.
    pub max_len: u64,
}

/// A broker failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached now; retry later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The store refused or failed the operation.
    #[error("storage error: {0}")]
    Storage(String),
    /// The idempotency key was already used for another notification (stored as this id).
    #[error(
        "idempotency_key already used for a different notification ({0}); use a new key for a new notification"
    )]
    IdempotencyConflict(Cursor),
    /// The broker was asked to store a publish and did not answer in time: it may have stored it.
    #[error(
        "the broker did not answer in time ({0}): the notification may or may not be stored; retry with the same idempotency_key (without one, a retry may store it twice)"
    )]
    OutcomeUnknown(String),
}

impl BrokerError {
    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::Unavailable(_) => ErrorCode::BrokerUnavailable,
            BrokerError::Storage(_) => ErrorCode::Internal,
            BrokerError::IdempotencyConflict(_) => ErrorCode::IdempotencyConflict,
            BrokerError::OutcomeUnknown(_) => ErrorCode::PublishOutcomeUnknown,
        }
    }
}

/// What the broker hands the hub live.
#[derive(Debug, Clone)]
pub enum Live {
    /// A notification just stored.
    Message(StoredMessage),
    /// A reminder of a stored notification still waiting for acknowledgement: its number.
    Repeat(StoredMessage, u32),
    /// A person's receipts on one device, for the user's other devices.
    Receipts(ReceiptSync),
}

/// Where live messages go: the hub's inbox.
pub type LiveSender = mpsc::Sender<Live>;

/// Stores notifications, replays them, and fans them out to the relay nodes that subscribed.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// `"embedded"` or `"redis"`.
    fn kind(&self) -> &'static str;

    /// Stores a notification, then fans it out live.
    async fn publish(&self, publish: Publish) -> Result<Published, BrokerError>;

    /// Up to `limit` stored notifications of `channel` after `after`.
    async fn history(
        &self,
        channel: &Channel,
        after: Cursor,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError>;

    /// The newest id ever stored in `channel`, if any is still known, and the history's epoch.
    async fn channel_end(&self, channel: &Channel) -> Result<ChannelEnd, BrokerError>;

    /// Starts live delivery of `channel` to this node; returns once delivery is in place.
    async fn subscribe(&self, channel: &Channel) -> Result<(), BrokerError>;

    /// Stops live delivery of `channel` to this node.
    async fn unsubscribe(&self, channel: &Channel) -> Result<(), BrokerError>;

    /// Records receipts of `user` for these notifications (the first of each kind counts), for those
    /// the channel holds, and the first of each kind per device in their trails; returns the ids
    /// recorded (the others are no notification of the channel).
    async fn record_receipts(
        &self,
        channel: &Channel,
        ids: &[Cursor],
        user: &str,
        device: Option<&str>,
        kind: ReceiptKind,
    ) -> Result<Vec<Cursor>, BrokerError>;

    /// The receipts of one notification, oldest first.
    async fn receipts(&self, channel: &Channel, id: Cursor) -> Result<Vec<Receipt>, BrokerError>;

    /// One stored notification, if the channel still holds it.
    async fn message(
        &self,
        channel: &Channel,
        id: Cursor,
    ) -> Result<Option<StoredMessage>, BrokerError>;

    /// Hands a reminder or a receipt sync to every node's hub (nothing is stored).
    async fn broadcast(&self, live: Live) -> Result<(), BrokerError>;

    /// A notification's escalation chain, if it has one.
    async fn chain(&self, channel: &Channel, id: Cursor) -> Result<Option<Chain>, BrokerError>;

    /// A notification's trail, oldest first.
    async fn trail(&self, channel: &Channel, id: Cursor) -> Result<Vec<TrailEvent>, BrokerError>;

    /// Adds an event to a notification's trail.
    async fn append_trail(
        &self,
        channel: &Channel,
        id: Cursor,
        event: TrailEvent,
    ) -> Result<(), BrokerError>;

    /// Claims up to `limit` steps due at `now_ms` of open chains, hiding each from other claimers
    /// for `lease` (see [`tracking`]); steps of chains no longer open are dropped, and open chains
    /// past their expiry become expired.
    async fn claim_steps(
        &self,
        now_ms: u64,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedStep>, BrokerError>;

    /// Extends a claim this node still holds to `lease_until_ms`; false when the claim ran out and
    /// another node claimed the step since (or it was finished). On true, `step.lease_until_ms` is
    /// the new time.
    async fn renew_step(
        &self,
        step: &mut ClaimedStep,
        lease_until_ms: u64,
    ) -> Result<bool, BrokerError>;

    /// Finishes a claimed step: records its event and, while the chain is open, schedules `next`.
    async fn finish_step(
        &self,
        step: &ClaimedStep,
        event: Option<TrailEvent>,
        next: Option<(Step, u64)>,
    ) -> Result<(), BrokerError>;

    /// Brings a step still to come of an open chain forward to `due_ms` (never later).
    async fn advance_step(
        &self,
        channel: &Channel,
        id: Cursor,
        step: Step,
        due_ms: u64,
    ) -> Result<(), BrokerError>;

    /// Closes an open chain as acknowledged by `user`, and the chain of the notification this one
    /// escalated, if any; answers the chains closed, the origin's included.
    async fn acknowledge(
        &self,
        channel: &Channel,
        id: Cursor,
        user: &str,
    ) -> Result<Vec<(Channel, Cursor)>, BrokerError>;

    /// Notes that `(channel, id)` is an escalation of `origin`: acknowledging it acknowledges that.
    async fn link_escalation(
        &self,
        channel: &Channel,
        id: Cursor,
        origin: &(Channel, Cursor),
    ) -> Result<(), BrokerError>;

    /// The notification `(channel, id)` escalated, if it is an escalation.
    async fn escalation_origin(
        &self,
        channel: &Channel,
        id: Cursor,
    ) -> Result<Option<(Channel, Cursor)>, BrokerError>;

    /// Up to `limit` open chains, oldest first.
    async fn open_chains(&self, limit: usize) -> Result<Vec<(Channel, Cursor)>, BrokerError>;

    /// Follows the broker's health.
    fn health(&self) -> watch::Receiver<BrokerHealth>;

    /// Checks the broker answers now (the embedded one: that it can store a publish).
    async fn ping(&self) -> Result<(), BrokerError>;

    /// Releases what this node holds (the recorder lease) before the process exits.
    async fn shutdown(&self);
}

pub use wardline_protocol::now_ms;

/// Refusals reach clients as the relay's errors (see [`crate::error`]).
impl From<BrokerError> for crate::error::ApiError {
    fn from(e: BrokerError) -> crate::error::ApiError {
        crate::error::ApiError::new(e.code(), e.to_string())
    }
}
