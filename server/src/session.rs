//! One connection's domain session, shared by every transport: who is connected, which channels,
//! where each channel stands, and the seam between replay and live delivery.
//!
//! Subscribing joins the hub first and reads history second, so nothing published in between is
//! missed; live messages at or before the last id sent on a channel are then skipped, so nothing is
//! sent twice. A replay is read a page at a time as the transport sends it ([`Session::next_page`]),
//! so a resume over a long history holds one page, not the history. Transports only encode what
//! `next_event` returns.

use crate::auth::Claims;
use crate::broker::tracking::ReceiptSync;
use crate::broker::{BrokerError, BrokerHealth, now_ms};
use crate::delivery::{Delivery, Outbound};
use crate::hub::{Hub, Subscriber};
use crate::queue::Next;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::watch;
use wardline_protocol::limits::MAX_RECEIPT_IDS;
use wardline_protocol::{Channel, ChannelError, Cursor, CursorError, ErrorCode, ReceiptKind};

/// History is read in pages of this many notifications: at most 6.4 MB of 64 KiB notifications held
/// per resuming connection.
const REPLAY_PAGE: usize = 100;

/// What a transport must do next.
#[derive(Debug)]
pub enum SessionEvent {
    /// Send this notification (or reminder of one).
    Notification(Arc<Delivery>),
    /// Tell the client what its user did on a device (`wardline.v1` and SSE; other wires skip it).
    Receipts(Arc<ReceiptSync>),
    /// The queue overflowed: close with 4008; the client resumes from its cursor.
    SlowConsumer,
    /// The broker went away: close with 1013; the client resumes later.
    BrokerDown(String),
}

/// One channel subscribed, and its replay: stored notifications after the cursor, oldest first, to
/// send before anything live, a page at a time.
#[derive(Debug)]
pub struct Resumed {
    /// The channel.
    pub channel: Channel,
    /// The cursor the replay started after (the channel's end when the client gave none).
    pub start: Option<Cursor>,
    /// The replay's page to send now; [`Session::next_page`] reads the next one.
    pub page: Vec<Arc<Delivery>>,
    /// Notifications of the replay read so far.
    pub replayed: u64,
    /// True when notifications after the cursor may be lost: trimmed away, or the cursor is from
    /// another epoch of the history.
    pub gap: bool,
    /// The history's epoch (see [`ChannelEnd::epoch`](crate::broker::ChannelEnd::epoch)).
    pub epoch: String,
    /// Where the next page starts, when there is one.
    next: Option<Cursor>,
}

/// Why a session request failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Not a known channel name.
    #[error(transparent)]
    UnknownChannel(#[from] ChannelError),
    /// The token does not grant the channel.
    #[error("the token does not grant channel {0}")]
    Forbidden(Channel),
    /// Not a cursor.
    #[error(transparent)]
    BadCursor(#[from] CursorError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A token of another user (or role) presented for this connection.
    #[error("the new token is for {0}, not for this connection's user and role")]
    OtherUser(String),
    /// A receipt with more ids than one may carry.
    #[error("at most {MAX_RECEIPT_IDS} ids per receipt")]
    TooManyIds,
}

impl SessionError {
    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            SessionError::UnknownChannel(_) => ErrorCode::UnknownChannel,
            SessionError::Forbidden(_) => ErrorCode::ChannelForbidden,
            SessionError::BadCursor(_) => ErrorCode::BadCursor,
            SessionError::Broker(e) => e.code(),
            SessionError::OtherUser(_) => ErrorCode::WrongUser,
            SessionError::TooManyIds => ErrorCode::InvalidRequest,
        }
    }
}

/// One connected client.
pub struct Session {
    hub: Arc<Hub>,
    claims: Claims,
    /// The installation the client said it is (`?device=`), for receipts and their trail.
    device: Option<String>,
    subscriber: Arc<Subscriber>,
    // The channels joined, each with the last id sent (zero until one is): a few per session, and a
    // vector costs far less than a map's nodes.
    positions: Vec<(Channel, Cursor)>,
    health: watch::Receiver<BrokerHealth>,
}

impl Session {
    /// Opens a session for a verified token, with a queue of `capacity` notifications.
    pub fn open(hub: &Arc<Hub>, claims: Claims, capacity: usize) -> Session {
        Session::open_device(hub, claims, None, capacity)
    }

    /// Opens a session for a verified token from the installation `device`.
    pub fn open_device(
        hub: &Arc<Hub>,
        claims: Claims,
        device: Option<String>,
        capacity: usize,
    ) -> Session {
        let subscriber = hub.subscriber(capacity);
        let mut health = hub.broker().health();
        health.borrow_and_update();
        Session {
            hub: hub.clone(),
            claims,
            device,
            subscriber,
            positions: Vec::new(),
            health,
        }
    }

    /// The token's claims.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// Takes a new token's claims for this connection: the same user and role, able to read every
    /// channel the connection has joined.
    pub fn refresh(&mut self, claims: Claims) -> Result<(), SessionError> {
        if claims.sub != self.claims.sub || claims.role != self.claims.role {
            return Err(SessionError::OtherUser(claims.sub));
        }
        if let Some((channel, _)) = self.positions.iter().find(|(c, _)| !claims.can_read(c)) {
            return Err(SessionError::Forbidden(channel.clone()));
        }
        self.claims = claims;
        Ok(())
    }

    /// The last id sent on a channel (or the cursor the client resumed from).
    pub fn position(&self, channel: &Channel) -> Option<Cursor> {
        self.positions
            .iter()
            .find(|(c, _)| c == channel)
            .map(|(_, p)| *p)
    }

    /// The last id sent on each channel, in subscription order.
    pub fn positions(&self) -> &[(Channel, Cursor)] {
        &self.positions
    }

    fn position_mut(&mut self, channel: &Channel) -> &mut Cursor {
        let index = match self.positions.iter().position(|(c, _)| c == channel) {
            Some(index) => index,
            None => {
                self.positions.push((channel.clone(), Cursor::ZERO));
                self.positions.len() - 1
            }
        };
        &mut self.positions[index].1
    }

    /// Subscribes to a channel and replays what follows `since`; without `since`, from the channel's
    /// current end, so the position is known (and resumable) even before anything arrives. `epoch`
    /// is the history's epoch `since` came from, when the client knows it: another than the
    /// history's now is a gap (the history that held what the client missed is gone).
    pub async fn subscribe(
        &mut self,
        name: &str,
        since: Option<&str>,
        epoch: Option<&str>,
    ) -> Result<Resumed, SessionError> {
        let channel = Channel::parse(name)?;
        if !self.claims.can_read(&channel) {
            return Err(SessionError::Forbidden(channel));
        }
        let Some(since) = since else {
            return self.subscribe_from_end(channel).await;
        };
        let mut start: Cursor = since.parse()?;
        let earlier = self.position(&channel);
        self.join(&channel).await?;
        let position = self.position_mut(&channel);
        *position = (*position).max(start);
        let mut resumed = Resumed {
            channel,
            start: Some(start),
            page: Vec::new(),
            replayed: 0,
            gap: false,
            epoch: String::new(),
            next: Some(start),
        };
        let end = self.read_page(&mut resumed).await?;
        if epoch.is_some_and(|epoch| epoch != resumed.epoch) {
            resumed.gap = true;
        }
        // A cursor past the channel's end is fine while it is not in the future: ids are times, so
        // "from a week ago" on a quiet channel misses nothing. One from the future (a client made
        // it up, or a store's clock went back) would have every live message up to it skipped
        // silently; it starts from the channel's end instead, and the client is told that it may
        // have missed something.
        if start > end && start.ms > now_ms() {
            self.hub
                .metrics()
                .future_cursors_total
                .fetch_add(1, Relaxed);
            *self.position_mut(&resumed.channel) = earlier.unwrap_or_default().max(end);
            start = end;
            resumed.start = Some(start);
            resumed.gap = true;
        }
        if resumed.next.is_none() {
            self.replay_done(&resumed);
        }
        Ok(resumed)
    }

    /// Reads the next page of `resumed`'s replay into its `page`, once the last one is sent; answers
    /// false, with nothing read, when the replay is complete.
    pub async fn next_page(&mut self, resumed: &mut Resumed) -> Result<bool, SessionError> {
        if resumed.next.is_none() {
            return Ok(false);
        }
        self.read_page(resumed).await?;
        if resumed.next.is_none() {
            self.replay_done(resumed);
        }
        Ok(true)
    }

    /// Reads one page after `resumed.next` and moves the channel's position past it (live
    /// notifications up to there are sent by the replay); answers the channel's end.
    async fn read_page(&mut self, resumed: &mut Resumed) -> Result<Cursor, SessionError> {
        let after = resumed.next.unwrap_or_default();
        let page = self
            .hub
            .broker()
            .history(&resumed.channel, after, REPLAY_PAGE)
            .await?;
        resumed.gap |= page.gap;
        resumed.epoch = page.epoch;
        resumed.page = page
            .messages
            .into_iter()
            .map(|m| Arc::new(Delivery::new(m)))
            .collect();
        resumed.replayed += resumed.page.len() as u64;
        self.hub
            .metrics()
            .replayed_total
            .fetch_add(resumed.page.len() as u64, Relaxed);
        // Expired notifications are left out of a page but still move it on.
        let through = page.through.unwrap_or(after);
        resumed.next = page.more.then_some(through);
        let position = self.position_mut(&resumed.channel);
        *position = (*position).max(through);
        Ok(page.end.unwrap_or_default())
    }

    fn replay_done(&self, resumed: &Resumed) {
        let metrics = self.hub.metrics();
        metrics.replay_size.observe(resumed.replayed as f64);
        if resumed.gap {
            metrics.gaps_total.fetch_add(1, Relaxed);
        }
    }

    /// Joins first, then reads the channel's newest id: whatever is published after the join
    /// arrives live, and whatever is at or before that id was published before the subscription took
    /// effect. One broker read, no replay (a reconnect stampede of fresh subscribers costs Redis one
    /// round trip each).
    async fn subscribe_from_end(&mut self, channel: Channel) -> Result<Resumed, SessionError> {
        self.join(&channel).await?;
        let end = self.hub.broker().channel_end(&channel).await?;
        let start = end.last.unwrap_or_default();
        let position = self.position_mut(&channel);
        *position = (*position).max(start);
        self.hub.metrics().replay_size.observe(0.0);
        Ok(Resumed {
            channel,
            start: Some(start),
            page: Vec::new(),
            replayed: 0,
            gap: false,
            epoch: end.epoch,
            next: None,
        })
    }

    /// Subscribes to every channel the token grants, live only, for clients that never resume.
    pub async fn subscribe_all_live(&mut self) -> Result<(), SessionError> {
        for channel in self.claims.readable_channels() {
            self.join(&channel).await?;
        }
        Ok(())
    }

    async fn join(&mut self, channel: &Channel) -> Result<(), SessionError> {
        if self.position(channel).is_none() {
            self.hub.join(channel, &self.subscriber).await?;
            self.positions.push((channel.clone(), Cursor::ZERO));
        }
        Ok(())
    }

    /// Waits for the next notification to send, or for a reason to close.
    pub async fn next_event(&mut self) -> SessionEvent {
        loop {
            // The queue comes first: when a notification is waiting the health branch is never
            // polled, so a broadcast to 10,000 sessions registers no extra waiters.
            tokio::select! {
                biased;
                next = self.subscriber.queue.next() => {
                    let delivery = match next {
                        Next::Delivery(Outbound::Notification(delivery)) => delivery,
                        Next::Delivery(Outbound::Receipts(sync)) => {
                            if sync.everyone || sync.user == self.claims.sub {
                                return SessionEvent::Receipts(sync);
                            }
                            continue;
                        }
                        Next::Lagging => return SessionEvent::SlowConsumer,
                    };
                    let message = &delivery.message;
                    // A reminder is the notification again, whatever the position: the device may
                    // hold it already, and alerts again.
                    if delivery.repeat.is_some() {
                        if message.expired_at(now_ms()) {
                            continue;
                        }
                        return SessionEvent::Notification(delivery);
                    }
                    let position = self.position_mut(&message.channel);
                    if message.id <= *position || (message.ttl.is_some() && message.expired_at(now_ms())) {
                        continue;
                    }
                    *position = message.id;
                    return SessionEvent::Notification(delivery);
                }
                changed = self.health.changed() => {
                    if changed.is_err() {
                        return SessionEvent::BrokerDown("the broker stopped".into());
                    }
                    if let BrokerHealth::Down(reason) = &*self.health.borrow_and_update() {
                        return SessionEvent::BrokerDown(reason.clone());
                    }
                }
            }
        }
    }

    /// Waits until this session's queue has overflowed.
    pub async fn lagging(&self) {
        self.subscriber.queue.lagging().await
    }

    /// Records the user's receipts for notifications on a channel they read: (the channel, the ids
    /// recorded, the ids of no notification the channel holds).
    pub async fn record_receipts(
        &self,
        name: &str,
        ids: &[String],
        kind: ReceiptKind,
    ) -> Result<(Channel, Vec<Cursor>, Vec<Cursor>), SessionError> {
        let channel = Channel::parse(name)?;
        if !self.claims.can_record_receipts(&channel) {
            return Err(SessionError::Forbidden(channel));
        }
        if ids.len() > MAX_RECEIPT_IDS {
            return Err(SessionError::TooManyIds);
        }
        let ids = ids
            .iter()
            .map(|id| id.parse())
            .collect::<Result<Vec<Cursor>, _>>()?;
        let recorded = crate::escalation::record_receipts(
            self.hub.broker().as_ref(),
            &channel,
            &ids,
            &self.claims.sub,
            self.claims.can_settle(&channel),
            self.device.as_deref(),
            kind,
        )
        .await?;
        let unknown = ids
            .into_iter()
            .filter(|id| !recorded.contains(id))
            .collect();
        Ok((channel, recorded, unknown))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let channels: Vec<Channel> = self.positions.iter().map(|(c, _)| c.clone()).collect();
        self.hub.leave(&channels, &self.subscriber);
    }
}

/// Refusals reach clients as the relay's errors (see [`crate::error`]).
impl From<SessionError> for crate::error::ApiError {
    fn from(e: SessionError) -> crate::error::ApiError {
        crate::error::ApiError::new(e.code(), e.to_string())
    }
}
