//! The Redis broker: several relay nodes on one Redis.
//!
//! - History: one stream per channel, `wardline:{<channel>}:stream`, trimmed by length and age;
//!   stream ids are the cursors.
//! - Publishing: one Lua script stores (`XADD`) and then `PUBLISH`es `<id>\n<priority>\n<ttl>\n<payload>`
//!   on `wardline:live:<channel>`, atomically, so live order is id order.
//! - Fan-out: each node holds one pub/sub connection and subscribes to the live channels its clients
//!   need (the hub counts the references).
//! - Plain `PUBLISH <channel> <json>` from existing backends: the node holding the recorder lease
//!   (`wardline:recorder`, renewed every second, expiring after 5 s) pattern-subscribes to the HealthHub
//!   channels and runs the same script, fenced on the lease, so each message is stored once. The
//!   other recorder-enabled nodes see the same messages and keep the last ten seconds of them; the
//!   node that takes the lease over (≤ 6 s after a holder died without releasing it) first records
//!   those the old holder had not, in order, so the failover window loses nothing as long as one
//!   node stays up. A node that shuts down releases the lease at once.
//! - Redis Sentinel (`redis+sentinel://…`, see [`target`]): the node asks the
//!   sentinels where the master is every second; when it moved, the command connection is replaced
//!   and the pub/sub connection reconnects, which ends the sessions with "Redis unavailable" (1013)
//!   so that devices resume from their cursors on the new master. What the old master had not yet
//!   replicated when it failed is lost (Redis replication is asynchronous).

mod recorder;
pub mod target;

use super::tracking::{
    Chain, ChainState, ClaimedStep, MAX_TRAIL_DEVICES_PER_USER, Policy, Step, TrailEvent,
};
use super::{
    Broker, BrokerError, BrokerHealth, ChannelEnd, HistoryPage, Live, LiveSender, Publish,
    Published, Receipt, Retention, StoredMessage,
};
use crate::metrics::{Histogram, Metrics, Seconds};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::{AsyncCommands, Script};
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use target::{RedisTarget, address};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout};
use wardline_protocol::{Channel, Cursor, Priority, ReceiptKind};

const LIVE_PREFIX: &str = "wardline:live:";
const LEASE_KEY: &str = "wardline:recorder";
const LEASE_TTL: Duration = Duration::from_secs(5);
const LEASE_RENEW: Duration = Duration::from_secs(1);
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Subscriptions waiting for the pub/sub connection go to Redis as one SUBSCRIBE of up to this many
/// channels: a reconnect stampede of 10,000 devices costs a few round trips, not 10,000.
const SUBSCRIBE_BATCH: usize = 1024;

/// Stores, trims, then fans out. KEYS: stream, idempotency key (or the stream again), lease (or the
/// stream again), trimmed-through key. ARGV: payload, priority, ttl ms ('' for none), max len, max age
/// ms, live channel, idempotency ttl s, fencing node ('' for none), '1' when an idempotency key is given.
/// An idempotency key holds `<id> <sha1 of priority, ttl and payload>`: the same key with another
/// notification answers -3 (a key holding an id alone, from an older relay, counts as the same).
///
/// Trimming is exact and remembers the newest id it removed (Redis 7.0's `max-deleted-entry-id` does
/// not count trims), so a cursor before it is a gap and one at it is not. By length it runs once the
/// stream is 10 % over, so its cost is spread over many publishes. By age it reads the expired
/// entries forward from the oldest (at most 1,000 per publish; the rest go with the next ones):
/// each entry is read once in its life. (`XREVRANGE` from the age limit down, the obvious query,
/// walks the stream's newer entries first: measured with `redis-benchmark`, it made this script
/// 8 times slower than the rest of it with 1,000 entries kept.)
const PUBLISH_SCRIPT: &str = include_str!("publish.lua");

/// Records receipts for the notifications the stream holds. KEYS: stream, then each id's receipts
/// hash. ARGV: field (`<kind>:<user>`), time ms, hash ttl s, the device's field
/// (`device:<kind>:<device>:<user>`), the trail event (JSON), the trail key's prefix, the field
/// marking the device as named (`named:<device>:<user>`, '' without a device), the field counting
/// the user's devices named (`devices:<user>`), the most a user may name
/// ([`MAX_TRAIL_DEVICES_PER_USER`]), the device-less field and trail event used past it, then the
/// ids. The first receipt of a kind per user is what `GET /v1/receipts` shows; the first per
/// device goes into the trail. Returns the ids recorded.
const RECEIPTS_SCRIPT: &str = include_str!("receipts.lua");

/// Escalation chains (see [`super::tracking`]): a chain is the hash `wardline:{<channel>}:chain:<id>`
/// (policy, priority, state, acknowledged_by, expires), its due steps are members
/// `<step>\n<channel>\n<id>` of the sorted set [`STEPS_KEY`] scored by due time, open chains are
/// members `<channel>\n<id>` of [`OPEN_KEY`], and a trail is the list
/// `wardline:{<channel>}:trail:<id>` of JSON events. All expire with the history.
const STEPS_KEY: &str = "wardline:steps";
const OPEN_KEY: &str = "wardline:open";
const CHAIN_KEY_HEAD: &str = "wardline:{";
const CHAIN_KEY_TAIL: &str = "}:chain:";

/// Claims due steps. KEYS: steps, open. ARGV: now ms, lease ms, limit, chain key head and tail.
/// Returns `[step, channel, id, policy]` per step claimed.
const CLAIM_SCRIPT: &str = include_str!("claim.lua");

/// Renews a claim still held. KEYS: steps. ARGV: the step's member, the claim's lease (its score
/// when claimed), the new lease. Returns 1 when renewed, 0 when another node claimed it since.
const RENEW_STEP_SCRIPT: &str = include_str!("renew_step.lua");

/// Finishes a step. KEYS: steps, chain, trail. ARGV: the step's member, the trail event ('' for
/// none), the next step's member ('' for none), its due time ms, the trail's ttl s.
const FINISH_SCRIPT: &str = include_str!("finish.lua");

/// Acknowledges a chain and the one it escalated. KEYS: open, chain, origin key. ARGV: the
/// chain's member in open, the user, the chain key head and tail (for the origin's chain). Returns
/// the members of the chains closed.
const ACKNOWLEDGE_SCRIPT: &str = include_str!("acknowledge.lua");

/// Lists open chains, oldest first, and forgets those no longer open (acknowledged, expired, or
/// pruned with the history). KEYS: open. ARGV: limit, chain key head and tail.
const OPEN_SCRIPT: &str = include_str!("open.lua");

/// Renews the recorder lease while this node holds it.
const RENEW_SCRIPT: &str = include_str!("renew.lua");

/// Releases the recorder lease if this node holds it.
const RELEASE_SCRIPT: &str = include_str!("release.lua");

/// Reads the history's epoch, naming one first if Redis holds none (a fresh Redis, or one that
/// lost its data set): devices resuming with another epoch are told their gap may hold losses.
const EPOCH_SCRIPT: &str = include_str!("epoch.lua");
const EPOCH_KEY: &str = "wardline:epoch";

/// The history's epoch, as a command to pipeline after a channel's reads.
fn epoch_command() -> redis::Cmd {
    let mut command = redis::cmd("EVAL");
    command.arg(EPOCH_SCRIPT).arg(1).arg(EPOCH_KEY);
    command
}

fn stream_key(channel: &Channel) -> String {
    format!("wardline:{{{channel}}}:stream")
}

fn idempotency_key(channel: &Channel, key: &str) -> String {
    format!("wardline:{{{channel}}}:idem:{key}")
}

fn trimmed_key(channel: &Channel) -> String {
    format!("wardline:{{{channel}}}:trimmed")
}

fn receipts_key(channel: &Channel, id: Cursor) -> String {
    format!("wardline:{{{channel}}}:acks:{id}")
}

fn chain_key(channel: &Channel, id: Cursor) -> String {
    format!("{CHAIN_KEY_HEAD}{channel}{CHAIN_KEY_TAIL}{id}")
}

fn trail_key(channel: &Channel, id: Cursor) -> String {
    format!("wardline:{{{channel}}}:trail:{id}")
}

fn origin_key(channel: &Channel, id: Cursor) -> String {
    format!("wardline:{{{channel}}}:origin:{id}")
}

fn step_member(step: Step, channel: &Channel, id: Cursor) -> String {
    format!("{step}\n{channel}\n{id}")
}

fn message_member(channel: &Channel, id: Cursor) -> String {
    format!("{channel}\n{id}")
}

fn parse_message_member(member: &str) -> Option<(Channel, Cursor)> {
    let (channel, id) = member.rsplit_once('\n')?;
    Some((Channel::parse(channel).ok()?, id.parse().ok()?))
}

fn storage(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Storage(format!("Redis: {e}"))
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("Redis: {e}"))
}

/// A publish that failed after it may have reached Redis (no answer in time, or the connection
/// reset or closed while waiting) may have been stored: the publisher is told so, not
/// "unavailable". One that could not be sent (refused, a broken pipe) was not.
fn publish_failed(e: redis::RedisError) -> BrokerError {
    let dropped_waiting = std::error::Error::source(&e)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            )
        });
    if e.is_timeout() || dropped_waiting {
        BrokerError::OutcomeUnknown(format!("Redis: {e}"))
    } else {
        unavailable(e)
    }
}

enum PubSubCommand {
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String),
    Record(bool),
    /// The master moved: connect again (to the new one).
    Reconnect,
}

/// The node's command connection (it reconnects by itself), replaced when the master moves.
#[derive(Clone)]
struct Commands {
    manager: Arc<RwLock<ConnectionManager>>,
    round_trip: Arc<Histogram<Seconds>>,
}

impl Commands {
    fn get(&self) -> TimedConnection {
        TimedConnection {
            inner: self.manager.read().expect("commands lock").clone(),
            round_trip: self.round_trip.clone(),
        }
    }

    fn replace(&self, manager: ConnectionManager) {
        *self.manager.write().expect("commands lock") = manager;
    }
}

/// The command connection, each request's round trip recorded.
struct TimedConnection {
    inner: ConnectionManager,
    round_trip: Arc<Histogram<Seconds>>,
}

impl redis::aio::ConnectionLike for TimedConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let started = Instant::now();
            let answer = self.inner.req_packed_command(cmd).await;
            self.round_trip.observe(started.elapsed().as_secs_f64());
            answer
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let started = Instant::now();
            let answer = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.round_trip.observe(started.elapsed().as_secs_f64());
            answer
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

async fn connection_manager(client: &redis::Client) -> Result<ConnectionManager, BrokerError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    timeout(
        REDIS_TIMEOUT * 2,
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| unavailable("timed out connecting"))?
    .map_err(unavailable)
}

/// A plain `PUBLISH` seen on a HealthHub channel, waiting to be recorded.
struct LegacyMessage {
    channel: String,
    payload: Bytes,
}

/// A broker on Redis shared by several relay nodes.
pub struct RedisBroker {
    shared: Shared,
    pubsub: mpsc::Sender<PubSubCommand>,
    health: watch::Receiver<BrokerHealth>,
}

/// What the node's tasks share.
#[derive(Clone)]
struct Shared {
    commands: Commands,
    node_id: String,
    retention: Retention,
    metrics: Arc<Metrics>,
    /// The escalation policy of critical notifications recorded from plain PUBLISHes.
    critical_escalation: Option<Policy>,
}

impl RedisBroker {
    /// Connects to Redis and starts this node's pub/sub connection and, if `recorder`, its bid for
    /// the recorder lease; `ca` (PEM) is the authority a `rediss://` server is checked with;
    /// command round trips and refused plain PUBLISHes are counted in `metrics`; critical
    /// notifications recorded from plain PUBLISHes follow `critical_escalation`. Fails if Redis
    /// cannot be reached now.
    pub async fn connect(
        url: &str,
        ca: Option<&[u8]>,
        retention: Retention,
        recorder: bool,
        live: LiveSender,
        metrics: Arc<Metrics>,
        critical_escalation: Option<Policy>,
    ) -> Result<RedisBroker, BrokerError> {
        let target = Arc::new(RedisTarget::parse(url, ca).map_err(BrokerError::Unavailable)?);
        let client = timeout(REDIS_TIMEOUT * 2, target.client())
            .await
            .map_err(|_| unavailable("timed out finding the Redis master"))?
            .map_err(unavailable)?;
        let commands = Commands {
            manager: Arc::new(RwLock::new(connection_manager(&client).await?)),
            round_trip: metrics.redis_round_trip.clone(),
        };
        let node_id = format!("{:016x}", rand::random::<u64>());
        let shared = Shared {
            commands: commands.clone(),
            node_id: node_id.clone(),
            retention,
            metrics,
            critical_escalation,
        };
        let (health_tx, health) = watch::channel(BrokerHealth::Down("connecting to Redis".into()));
        let (pubsub_tx, pubsub_rx) = mpsc::channel(1024);
        let (legacy_tx, legacy_rx) = mpsc::channel(10_000);
        if target.follows_failover() {
            tokio::spawn(follow_master(
                target.clone(),
                address(&client).clone(),
                commands.clone(),
                pubsub_tx.clone(),
            ));
        }
        tokio::spawn(run_pubsub(target, pubsub_rx, live, legacy_tx, health_tx));
        if recorder {
            // Every recorder-enabled node sees the plain PUBLISHes: the holder records them, the
            // others keep the recent ones for a takeover.
            let _ = pubsub_tx.send(PubSubCommand::Record(true)).await;
            let (holding_tx, holding_rx) = watch::channel(false);
            tokio::spawn(recorder::run(shared.clone(), legacy_rx, holding_rx));
            tokio::spawn(recorder::hold_lease(shared.clone(), holding_tx));
        }
        warn_of_lossy_settings(&commands).await;
        let mut ready = health.clone();
        let _ = timeout(
            REDIS_TIMEOUT * 2,
            ready.wait_for(|h| *h == BrokerHealth::Up),
        )
        .await;
        tracing::info!(node = %node_id, recorder, "connected to Redis");
        Ok(RedisBroker {
            shared,
            pubsub: pubsub_tx,
            health,
        })
    }
}

/// Warns when Redis may lose what the relay stores: no persistence (history and idempotency keys
/// gone with a Redis restart) or an eviction policy (history, receipts or idempotency keys dropped
/// under memory pressure). A Redis that refuses CONFIG (some managed ones) is not judged.
async fn warn_of_lossy_settings(commands: &Commands) {
    let mut conn = commands.get();
    let settings: redis::RedisResult<(Vec<String>, Vec<String>, Vec<String>)> = redis::pipe()
        .cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(&mut conn)
        .await;
    let Ok((appendonly, save, policy)) = settings else {
        return;
    };
    let value = |pair: &[String]| pair.get(1).map(|v| v.trim().to_owned()).unwrap_or_default();
    if value(&appendonly) == "no" && value(&save).is_empty() {
        tracing::warn!(
            "Redis keeps nothing across its own restart (appendonly no, no save points): history would be lost with it; set appendonly yes (README: Redis settings)"
        );
    }
    let policy = value(&policy);
    if !policy.is_empty() && policy != "noeviction" {
        tracing::warn!(
            policy,
            "Redis may evict keys under memory pressure: history, receipts or idempotency keys could vanish; set maxmemory-policy noeviction (README: Redis settings)"
        );
    }
}

/// The publish script as one command; `fence` makes it store only while this node holds the lease.
// EVAL, not EVALSHA: recorder batches are pipelined, and a Redis restart empties the script cache,
// which would fail every EVALSHA of a pipeline at once. Redis caches the compiled script by hash.
fn publish_command(shared: &Shared, publish: &Publish, fence: bool) -> redis::Cmd {
    let stream = stream_key(&publish.channel);
    let idem = publish
        .idempotency_key
        .as_deref()
        .map(|k| idempotency_key(&publish.channel, k));
    let mut command = redis::cmd("EVAL");
    command
        .arg(PUBLISH_SCRIPT)
        .arg(6)
        .arg(&stream)
        .arg(idem.as_deref().unwrap_or(&stream))
        .arg(if fence { LEASE_KEY } else { &stream })
        .arg(trimmed_key(&publish.channel))
        .arg(STEPS_KEY)
        .arg(OPEN_KEY)
        .arg(publish.payload.as_ref())
        .arg(publish.priority.as_str())
        .arg(
            publish
                .ttl
                .map(|t| t.as_millis().to_string())
                .unwrap_or_default(),
        )
        .arg(shared.retention.max_len)
        .arg(shared.retention.max_age.as_millis() as u64)
        .arg(format!("{LIVE_PREFIX}{}", publish.channel))
        .arg(shared.retention.max_age.as_secs().max(1))
        .arg(if fence { shared.node_id.as_str() } else { "" })
        .arg(if idem.is_some() { "1" } else { "0" });
    match publish.escalation.as_ref().filter(|p| !p.is_empty()) {
        Some(policy) => {
            command
                .arg(serde_json::to_string(policy).expect("policies serialize"))
                .arg(format!(
                    "{CHAIN_KEY_HEAD}{}{CHAIN_KEY_TAIL}",
                    publish.channel
                ))
                .arg(publish.channel.as_str());
            for (step, after) in policy.first_steps() {
                command.arg(step.to_string()).arg(after.as_millis() as u64);
            }
        }
        None => {
            command.arg("").arg("").arg("");
        }
    }
    command
}

/// Reads the script's answer: `None` when the fence refused.
fn published(id: String, live: i64) -> Result<Option<Published>, BrokerError> {
    if live == -1 {
        return Ok(None);
    }
    let id: Cursor = id
        .parse()
        .map_err(|e| BrokerError::Storage(format!("Redis returned {e}")))?;
    if live == -3 {
        return Err(BrokerError::IdempotencyConflict(id));
    }
    Ok(Some(Published {
        id,
        live_relays: live.max(0) as u64,
        duplicate: live == -2,
    }))
}

/// A reminder or a receipt sync as published on a live channel: `R<n>\n` before a notification's
/// usual form, or `S\n<json>`.
fn encode_live(live: &Live) -> (String, Vec<u8>) {
    match live {
        Live::Message(message) => (
            format!("{LIVE_PREFIX}{}", message.channel),
            live_form(message),
        ),
        Live::Repeat(message, n) => {
            let mut data = format!("R{n}\n").into_bytes();
            data.extend(live_form(message));
            (format!("{LIVE_PREFIX}{}", message.channel), data)
        }
        Live::Receipts(sync) => {
            let mut data = b"S\n".to_vec();
            data.extend(serde_json::to_vec(sync).expect("receipt syncs serialize"));
            (format!("{LIVE_PREFIX}{}", sync.channel), data)
        }
    }
}

/// `<id>\n<priority>\n<ttl>\n<payload>`, as the publish script sends it.
fn live_form(message: &StoredMessage) -> Vec<u8> {
    let ttl = message
        .ttl
        .map(|t| t.as_millis().to_string())
        .unwrap_or_default();
    let mut data = format!("{}\n{}\n{ttl}\n", message.id, message.priority.as_str()).into_bytes();
    data.extend_from_slice(&message.payload);
    data
}

/// Parses what a live channel carries: a notification (`<id>\n<priority>\n<ttl>\n<payload>`), a
/// reminder of one, or a receipt sync (see [`encode_live`]).
fn parse_live(channel: &str, data: &[u8]) -> Option<Live> {
    if let Some(json) = data.strip_prefix(b"S\n") {
        return serde_json::from_slice(json).ok().map(Live::Receipts);
    }
    if let Some(rest) = data.strip_prefix(b"R") {
        let newline = rest.iter().position(|b| *b == b'\n')?;
        let n = std::str::from_utf8(&rest[..newline]).ok()?.parse().ok()?;
        return parse_message(channel, &rest[newline + 1..]).map(|m| Live::Repeat(m, n));
    }
    parse_message(channel, data).map(Live::Message)
}

fn parse_message(channel: &str, data: &[u8]) -> Option<StoredMessage> {
    let channel = Channel::parse(channel.strip_prefix(LIVE_PREFIX)?).ok()?;
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let id: Cursor = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let priority = Priority::parse(std::str::from_utf8(parts.next()?).ok()?)?;
    let ttl = std::str::from_utf8(parts.next()?).ok()?;
    let ttl = if ttl.is_empty() {
        None
    } else {
        Some(Duration::from_millis(ttl.parse().ok()?))
    };
    let payload = Bytes::copy_from_slice(parts.next()?);
    Some(StoredMessage {
        id,
        channel,
        priority,
        ttl,
        payload,
    })
}

/// The node's one pub/sub connection: (re)connects, keeps the subscriptions the hub asked for, and
/// hands live messages to the hub and plain PUBLISHes to the recorder.
async fn run_pubsub(
    target: Arc<RedisTarget>,
    mut commands: mpsc::Receiver<PubSubCommand>,
    live: LiveSender,
    legacy: mpsc::Sender<LegacyMessage>,
    health: watch::Sender<BrokerHealth>,
) {
    let mut channels: HashSet<String> = HashSet::new();
    let mut recording = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = async {
            let client = timeout(REDIS_TIMEOUT, target.client())
                .await
                .map_err(|_| unavailable("timed out finding the Redis master"))?
                .map_err(unavailable)?;
            let (mut sink, stream) = timeout(REDIS_TIMEOUT, client.get_async_pubsub())
                .await
                .map_err(|_| unavailable("timed out connecting"))?
                .map_err(unavailable)?
                .split();
            if !channels.is_empty() {
                sink.subscribe(channels.iter().collect::<Vec<_>>())
                    .await
                    .map_err(unavailable)?;
            }
            if recording {
                sink.psubscribe(&Channel::legacy_patterns()[..])
                    .await
                    .map_err(unavailable)?;
            }
            Ok::<_, BrokerError>((sink, stream))
        }
        .await;
        let (mut sink, mut stream) = match connected {
            Ok(pair) => pair,
            Err(e) => {
                health.send_replace(BrokerHealth::Down(e.to_string()));
                // Keep answering the hub while Redis is away: subscriptions fail fast.
                let deadline = Instant::now() + backoff;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => break,
                        command = commands.recv() => match command {
                            None => return,
                            Some(PubSubCommand::Subscribe(_, reply)) => {
                                let _ = reply.send(Err(e.clone()));
                            }
                            Some(PubSubCommand::Unsubscribe(channel)) => { channels.remove(&channel); }
                            Some(PubSubCommand::Record(on)) => recording = on,
                            Some(PubSubCommand::Reconnect) => {}
                        },
                    }
                }
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        health.send_replace(BrokerHealth::Up);
        tracing::info!(
            channels = channels.len(),
            recording,
            "Redis pub/sub connected"
        );
        let mut ping = tokio::time::interval(REDIS_TIMEOUT);
        let reason = loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { break "connection to Redis lost".to_owned() };
                    let name = message.get_channel_name().to_owned();
                    if message.from_pattern() {
                        let payload = Bytes::copy_from_slice(message.get_payload_bytes());
                        if legacy.send(LegacyMessage { channel: name, payload }).await.is_err() {
                            tracing::warn!("recorder stopped; a plain PUBLISH was not recorded");
                        }
                    } else if let Some(stored) = parse_live(&name, message.get_payload_bytes()) {
                        if live.send(stored).await.is_err() {
                            return;
                        }
                    } else {
                        tracing::warn!(channel = ?name, "unreadable message on a live channel");
                    }
                }
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    // Subscriptions already waiting behind this one go to Redis in one SUBSCRIBE.
                    let mut subscribing = Vec::new();
                    let mut other = None;
                    let mut next = Some(command);
                    while let Some(command) = next.take() {
                        match command {
                            PubSubCommand::Subscribe(channel, reply) => {
                                subscribing.push((channel, reply));
                                if subscribing.len() < SUBSCRIBE_BATCH {
                                    next = commands.try_recv().ok();
                                }
                            }
                            command => other = Some(command),
                        }
                    }
                    if let Err(e) = subscribe(&mut sink, subscribing, &mut channels).await {
                        break e;
                    }
                    if let Some(command) = other
                        && let Err(e) = apply(&mut sink, command, &mut channels, &mut recording).await
                    {
                        break e;
                    }
                }
                _ = ping.tick() => {
                    match timeout(REDIS_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break format!("Redis ping failed: {e}"),
                        Err(_) => break "Redis did not answer a ping in time".to_owned(),
                    }
                }
            }
        };
        tracing::error!(reason = %reason, "Redis pub/sub down; reconnecting");
        health.send_replace(BrokerHealth::Down(reason));
    }
}

/// Subscribes to every waiting channel with one SUBSCRIBE and answers each waiter; an error (the
/// connection is then replaced) fails them all.
async fn subscribe(
    sink: &mut PubSubSink,
    waiting: Vec<(String, oneshot::Sender<Result<(), BrokerError>>)>,
    channels: &mut HashSet<String>,
) -> Result<(), String> {
    if waiting.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = waiting.iter().map(|(name, _)| name.as_str()).collect();
    let result = match timeout(REDIS_TIMEOUT, sink.subscribe(names)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("Redis did not confirm a subscription in time".to_owned()),
    };
    for (channel, reply) in waiting {
        let answer = match &result {
            Ok(()) => {
                channels.insert(channel);
                Ok(())
            }
            Err(e) => Err(unavailable(e)),
        };
        let _ = reply.send(answer);
    }
    result
}

async fn apply(
    sink: &mut PubSubSink,
    command: PubSubCommand,
    channels: &mut HashSet<String>,
    recording: &mut bool,
) -> Result<(), String> {
    match command {
        PubSubCommand::Subscribe(channel, reply) => {
            subscribe(sink, vec![(channel, reply)], channels).await
        }
        PubSubCommand::Unsubscribe(channel) => {
            channels.remove(&channel);
            sink.unsubscribe(&channel).await.map_err(|e| e.to_string())
        }
        PubSubCommand::Record(on) if on != *recording => {
            *recording = on;
            let patterns = &Channel::legacy_patterns()[..];
            let result = if on {
                sink.psubscribe(patterns).await
            } else {
                sink.punsubscribe(patterns).await
            };
            result.map_err(|e| e.to_string())
        }
        PubSubCommand::Record(_) => Ok(()),
        PubSubCommand::Reconnect => Err("the Redis master moved".into()),
    }
}

/// With Sentinel: asks every second where the master is and, when it moved, replaces the command
/// connection and has the pub/sub connection reconnect.
async fn follow_master(
    target: Arc<RedisTarget>,
    mut current: redis::ConnectionAddr,
    commands: Commands,
    pubsub: mpsc::Sender<PubSubCommand>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if pubsub.is_closed() {
            return;
        }
        let client = match timeout(REDIS_TIMEOUT, target.client()).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not ask the sentinels where the Redis master is");
                continue;
            }
            Err(_) => {
                tracing::warn!("the sentinels did not say in time where the Redis master is");
                continue;
            }
        };
        if *address(&client) == current {
            continue;
        }
        match connection_manager(&client).await {
            Ok(manager) => {
                tracing::warn!(from = %current, to = %address(&client), "the Redis master moved; following it");
                commands.replace(manager);
                current = address(&client).clone();
                if pubsub.send(PubSubCommand::Reconnect).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(to = %address(&client), error = %e, "could not connect to the new Redis master")
            }
        }
    }
}

fn field<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

/// A stream entry as a stored notification.
fn entry_message(
    channel: &Channel,
    id: &str,
    fields: &[(String, Vec<u8>)],
) -> Result<StoredMessage, BrokerError> {
    let id: Cursor = id
        .parse()
        .map_err(|e| BrokerError::Storage(format!("{}: {e}", stream_key(channel))))?;
    let priority = field(fields, "p")
        .and_then(|p| std::str::from_utf8(p).ok())
        .and_then(Priority::parse)
        .unwrap_or(Priority::Normal);
    let ttl = field(fields, "x")
        .and_then(|x| std::str::from_utf8(x).ok())
        .and_then(|x| x.parse().ok())
        .map(Duration::from_millis);
    let payload = Bytes::copy_from_slice(field(fields, "m").unwrap_or_default());
    Ok(StoredMessage {
        id,
        channel: channel.clone(),
        priority,
        ttl,
        payload,
    })
}

#[async_trait]
impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, publish: Publish) -> Result<Published, BrokerError> {
        let mut conn = self.shared.commands.get();
        let (id, live): (String, i64) = publish_command(&self.shared, &publish, false)
            .query_async(&mut conn)
            .await
            .map_err(publish_failed)?;
        published(id, live)?
            .ok_or_else(|| BrokerError::Storage("unfenced publish reported a fence".into()))
    }

    async fn history(
        &self,
        channel: &Channel,
        after: Cursor,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let mut conn = self.shared.commands.get();
        let key = stream_key(channel);
        // One round trip, the stream read first: a trim between the reads can only make the page
        // report a gap it does not have, never hide one.
        type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;
        let (entries, trimmed, newest, epoch): (Entries, Option<String>, Entries, String) =
            redis::pipe()
                .cmd("XRANGE")
                .arg(&key)
                .arg(format!("({after}"))
                .arg("+")
                .arg("COUNT")
                .arg(limit + 1)
                .cmd("GET")
                .arg(trimmed_key(channel))
                .cmd("XREVRANGE")
                .arg(&key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .add_command(epoch_command())
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
        let more = entries.len() > limit;
        let now = super::now_ms();
        let mut messages = Vec::with_capacity(entries.len().min(limit));
        let mut through = None;
        for (id, fields) in entries.into_iter().take(limit) {
            let message = entry_message(channel, &id, &fields)?;
            through = Some(message.id);
            if !message.expired_at(now) {
                messages.push(message);
            }
        }
        let trimmed = parse_cursor(trimmed.as_deref())?;
        let newest = parse_cursor(newest.first().map(|(id, _)| id.as_str()))?;
        Ok(HistoryPage {
            messages,
            gap: trimmed.is_some_and(|t| after < t),
            more,
            through,
            end: newest.max(trimmed),
            epoch,
        })
    }

    async fn channel_end(&self, channel: &Channel) -> Result<ChannelEnd, BrokerError> {
        let mut conn = self.shared.commands.get();
        // One round trip: the newest entry still in the stream, the newest one trimmed away, and
        // the epoch.
        type Newest = Vec<(String, Vec<(String, Vec<u8>)>)>;
        let (newest, trimmed, epoch): (Newest, Option<String>, String) = redis::pipe()
            .cmd("XREVRANGE")
            .arg(stream_key(channel))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .cmd("GET")
            .arg(trimmed_key(channel))
            .add_command(epoch_command())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let newest = parse_cursor(newest.first().map(|(id, _)| id.as_str()))?;
        Ok(ChannelEnd {
            last: newest.max(parse_cursor(trimmed.as_deref())?),
            epoch,
        })
    }

    async fn subscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        let (reply, answer) = oneshot::channel();
        self.pubsub
            .send(PubSubCommand::Subscribe(
                format!("{LIVE_PREFIX}{channel}"),
                reply,
            ))
            .await
            .map_err(|_| unavailable("pub/sub task stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("pub/sub connection lost"))?
    }

    async fn unsubscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        self.pubsub
            .send(PubSubCommand::Unsubscribe(format!(
                "{LIVE_PREFIX}{channel}"
            )))
            .await
            .map_err(|_| unavailable("pub/sub task stopped"))
    }

    async fn record_receipts(
        &self,
        channel: &Channel,
        ids: &[Cursor],
        user: &str,
        device: Option<&str>,
        kind: ReceiptKind,
    ) -> Result<Vec<Cursor>, BrokerError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = super::now_ms();
        let event = TrailEvent {
            at_ms: now,
            event: kind.into(),
            user: Some(user.to_owned()),
            device: device.map(str::to_owned),
            detail: None,
        };
        let without_device = TrailEvent {
            device: None,
            ..event.clone()
        };
        // One hash per notification: field `<kind>:<user>`, value the time, first write wins.
        let mut command = redis::cmd("EVAL");
        command
            .arg(RECEIPTS_SCRIPT)
            .arg(ids.len() + 1)
            .arg(stream_key(channel));
        for id in ids {
            command.arg(receipts_key(channel, *id));
        }
        command
            .arg(format!("{}:{user}", kind.as_str()))
            .arg(now)
            .arg(self.shared.retention.max_age.as_secs().max(1))
            .arg(format!(
                "device:{}:{}:{user}",
                kind.as_str(),
                device.unwrap_or_default()
            ))
            .arg(event.to_json())
            .arg(format!("wardline:{{{channel}}}:trail:"))
            .arg(
                device
                    .map(|d| format!("named:{d}:{user}"))
                    .unwrap_or_default(),
            )
            .arg(format!("devices:{user}"))
            .arg(MAX_TRAIL_DEVICES_PER_USER)
            .arg(format!("device:{}::{user}", kind.as_str()))
            .arg(without_device.to_json());
        for id in ids {
            command.arg(id.to_string());
        }
        let mut conn = self.shared.commands.get();
        let recorded: Vec<String> = command.query_async(&mut conn).await.map_err(unavailable)?;
        recorded
            .iter()
            .map(|id| parse_cursor(Some(id)).map(|id| id.expect("an id")))
            .collect()
    }

    async fn receipts(&self, channel: &Channel, id: Cursor) -> Result<Vec<Receipt>, BrokerError> {
        let mut conn = self.shared.commands.get();
        let entries: Vec<(String, u64)> = conn
            .hgetall(receipts_key(channel, id))
            .await
            .map_err(unavailable)?;
        let mut receipts: Vec<Receipt> = entries
            .into_iter()
            .filter_map(|(field, at_ms)| {
                let (kind, user) = field.split_once(':')?;
                let kind = ReceiptKind::parse(kind)?;
                Some(Receipt {
                    user: user.to_owned(),
                    kind,
                    at_ms,
                })
            })
            .collect();
        receipts.sort_by_key(|r| r.at_ms);
        Ok(receipts)
    }

    async fn message(
        &self,
        channel: &Channel,
        id: Cursor,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        let mut conn = self.shared.commands.get();
        let entries: Vec<(String, Vec<(String, Vec<u8>)>)> = redis::cmd("XRANGE")
            .arg(stream_key(channel))
            .arg(id.to_string())
            .arg(id.to_string())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        entries
            .first()
            .map(|(id, fields)| entry_message(channel, id, fields))
            .transpose()
    }

    async fn broadcast(&self, live: Live) -> Result<(), BrokerError> {
        let (channel, data) = encode_live(&live);
        let mut conn = self.shared.commands.get();
        conn.publish::<_, _, i64>(channel, data)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn chain(&self, channel: &Channel, id: Cursor) -> Result<Option<Chain>, BrokerError> {
        let mut conn = self.shared.commands.get();
        let fields: std::collections::HashMap<String, String> = conn
            .hgetall(chain_key(channel, id))
            .await
            .map_err(unavailable)?;
        if fields.is_empty() {
            return Ok(None);
        }
        let policy = fields
            .get("policy")
            .and_then(|p| serde_json::from_str(p).ok())
            .ok_or_else(|| storage(format!("{}: no policy", chain_key(channel, id))))?;
        Ok(Some(Chain {
            policy,
            priority: fields
                .get("priority")
                .and_then(|p| Priority::parse(p))
                .unwrap_or(Priority::Critical),
            state: fields
                .get("state")
                .and_then(|s| ChainState::parse(s))
                .unwrap_or(ChainState::Open),
            acknowledged_by: fields.get("acknowledged_by").cloned(),
            expires_ms: fields.get("expires").and_then(|e| e.parse().ok()),
        }))
    }

    async fn trail(&self, channel: &Channel, id: Cursor) -> Result<Vec<TrailEvent>, BrokerError> {
        let mut conn = self.shared.commands.get();
        let events: Vec<String> = conn
            .lrange(trail_key(channel, id), 0, -1)
            .await
            .map_err(unavailable)?;
        Ok(events
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect())
    }

    async fn append_trail(
        &self,
        channel: &Channel,
        id: Cursor,
        event: TrailEvent,
    ) -> Result<(), BrokerError> {
        let key = trail_key(channel, id);
        let mut conn = self.shared.commands.get();
        redis::pipe()
            .rpush(&key, event.to_json())
            .ignore()
            .expire(&key, self.shared.retention.max_age.as_secs().max(1) as i64)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn claim_steps(
        &self,
        now_ms: u64,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedStep>, BrokerError> {
        let mut conn = self.shared.commands.get();
        let claimed: Vec<(String, String, String, String)> = redis::cmd("EVAL")
            .arg(CLAIM_SCRIPT)
            .arg(2)
            .arg(STEPS_KEY)
            .arg(OPEN_KEY)
            .arg(now_ms)
            .arg(lease.as_millis() as u64)
            .arg(limit)
            .arg(CHAIN_KEY_HEAD)
            .arg(CHAIN_KEY_TAIL)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut steps = Vec::with_capacity(claimed.len());
        let lease_until_ms = now_ms + lease.as_millis() as u64;
        for (step, channel, id, policy) in claimed {
            let parsed = (|| {
                Some(ClaimedStep {
                    step: step.parse().ok()?,
                    channel: Channel::parse(&channel).ok()?,
                    id: id.parse().ok()?,
                    policy: serde_json::from_str::<Policy>(&policy).ok()?,
                    lease_until_ms,
                })
            })();
            match parsed {
                Some(claimed) => steps.push(claimed),
                None => {
                    tracing::warn!(%step, %channel, %id, "unreadable escalation step left to expire")
                }
            }
        }
        Ok(steps)
    }

    async fn renew_step(
        &self,
        step: &mut ClaimedStep,
        lease_until_ms: u64,
    ) -> Result<bool, BrokerError> {
        let mut conn = self.shared.commands.get();
        let renewed: i64 = redis::cmd("EVAL")
            .arg(RENEW_STEP_SCRIPT)
            .arg(1)
            .arg(STEPS_KEY)
            .arg(step_member(step.step, &step.channel, step.id))
            .arg(step.lease_until_ms)
            .arg(lease_until_ms)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if renewed == 1 {
            step.lease_until_ms = lease_until_ms;
        }
        Ok(renewed == 1)
    }

    async fn finish_step(
        &self,
        step: &ClaimedStep,
        event: Option<TrailEvent>,
        next: Option<(Step, u64)>,
    ) -> Result<(), BrokerError> {
        let mut conn = self.shared.commands.get();
        redis::cmd("EVAL")
            .arg(FINISH_SCRIPT)
            .arg(3)
            .arg(STEPS_KEY)
            .arg(chain_key(&step.channel, step.id))
            .arg(trail_key(&step.channel, step.id))
            .arg(step_member(step.step, &step.channel, step.id))
            .arg(event.map(|e| e.to_json()).unwrap_or_default())
            .arg(
                next.map(|(next, _)| step_member(next, &step.channel, step.id))
                    .unwrap_or_default(),
            )
            .arg(next.map(|(_, due)| due).unwrap_or_default())
            .arg(self.shared.retention.max_age.as_secs().max(1))
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn advance_step(
        &self,
        channel: &Channel,
        id: Cursor,
        step: Step,
        due_ms: u64,
    ) -> Result<(), BrokerError> {
        let mut conn = self.shared.commands.get();
        redis::cmd("ZADD")
            .arg(STEPS_KEY)
            .arg("XX")
            .arg("LT")
            .arg(due_ms)
            .arg(step_member(step, channel, id))
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn acknowledge(
        &self,
        channel: &Channel,
        id: Cursor,
        user: &str,
    ) -> Result<Vec<(Channel, Cursor)>, BrokerError> {
        let mut conn = self.shared.commands.get();
        let closed: Vec<String> = redis::cmd("EVAL")
            .arg(ACKNOWLEDGE_SCRIPT)
            .arg(3)
            .arg(OPEN_KEY)
            .arg(chain_key(channel, id))
            .arg(origin_key(channel, id))
            .arg(message_member(channel, id))
            .arg(user)
            .arg(CHAIN_KEY_HEAD)
            .arg(CHAIN_KEY_TAIL)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(closed
            .iter()
            .filter_map(|m| parse_message_member(m))
            .collect())
    }

    async fn link_escalation(
        &self,
        channel: &Channel,
        id: Cursor,
        origin: &(Channel, Cursor),
    ) -> Result<(), BrokerError> {
        let mut conn = self.shared.commands.get();
        conn.set_ex::<_, _, ()>(
            origin_key(channel, id),
            message_member(&origin.0, origin.1),
            self.shared.retention.max_age.as_secs().max(1),
        )
        .await
        .map_err(unavailable)
    }

    async fn escalation_origin(
        &self,
        channel: &Channel,
        id: Cursor,
    ) -> Result<Option<(Channel, Cursor)>, BrokerError> {
        let mut conn = self.shared.commands.get();
        let origin: Option<String> = conn
            .get(origin_key(channel, id))
            .await
            .map_err(unavailable)?;
        Ok(origin.as_deref().and_then(parse_message_member))
    }

    async fn open_chains(&self, limit: usize) -> Result<Vec<(Channel, Cursor)>, BrokerError> {
        let mut conn = self.shared.commands.get();
        let members: Vec<String> = redis::cmd("EVAL")
            .arg(OPEN_SCRIPT)
            .arg(1)
            .arg(OPEN_KEY)
            .arg(limit.max(1))
            .arg(CHAIN_KEY_HEAD)
            .arg(CHAIN_KEY_TAIL)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(members
            .iter()
            .filter_map(|m| parse_message_member(m))
            .collect())
    }

    fn health(&self) -> watch::Receiver<BrokerHealth> {
        self.health.clone()
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        let mut conn = self.shared.commands.get();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn shutdown(&self) {
        let mut conn = self.shared.commands.get();
        let released: redis::RedisResult<i64> = Script::new(RELEASE_SCRIPT)
            .key(LEASE_KEY)
            .arg(&self.shared.node_id)
            .invoke_async(&mut conn)
            .await;
        if let Ok(1) = released {
            tracing::info!("released the recorder lease");
        }
    }
}

/// The newest id trimmed from a channel's stream, if any was.
/// A stream id Redis gave back, if any.
fn parse_cursor(id: Option<&str>) -> Result<Option<Cursor>, BrokerError> {
    id.map(|id| {
        id.parse()
            .map_err(|e| BrokerError::Storage(format!("{id}: {e}")))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::super::tracking::ReceiptSync;
    use super::*;

    #[test]
    fn live_frames_parse_with_newlines_in_the_payload() {
        let Some(Live::Message(stored)) = parse_live(
            "wardline:live:system:alerts",
            b"5-1\ncritical\n\n{\"a\":\n1}",
        ) else {
            panic!("not a notification")
        };
        assert_eq!(stored.id, Cursor::new(5, 1));
        assert_eq!(stored.priority, Priority::Critical);
        assert_eq!(stored.ttl, None);
        assert_eq!(&stored.payload[..], b"{\"a\":\n1}");
        let Some(Live::Message(with_ttl)) =
            parse_live("wardline:live:system:alerts", b"5-1\nlow\n1000\n{}")
        else {
            panic!("not a notification")
        };
        assert_eq!(with_ttl.ttl, Some(Duration::from_secs(1)));
        assert!(parse_live("system:alerts", b"5-1\nlow\n\n{}").is_none());
        assert!(parse_live("wardline:live:system:alerts", b"garbage").is_none());
    }

    #[test]
    fn reminders_and_receipt_syncs_read_back_as_encoded() {
        let channel = Channel::parse("doctor:d1:notifications").unwrap();
        let message = StoredMessage {
            id: Cursor::new(7, 0),
            channel: channel.clone(),
            priority: Priority::Critical,
            ttl: Some(Duration::from_secs(60)),
            payload: Bytes::from_static(b"{\"type\":\"critical_lab_result\"}"),
        };
        let (name, data) = encode_live(&Live::Repeat(message.clone(), 3));
        let Some(Live::Repeat(read, 3)) = parse_live(&name, &data) else {
            panic!("not the third reminder")
        };
        assert_eq!(read, message);
        let sync = ReceiptSync {
            channel,
            ids: vec![Cursor::new(7, 0)],
            kind: ReceiptKind::Acknowledged,
            user: "d1".into(),
            device: Some("phone".into()),
            everyone: false,
        };
        let (name, data) = encode_live(&Live::Receipts(sync.clone()));
        let Some(Live::Receipts(read)) = parse_live(&name, &data) else {
            panic!("not a receipt sync")
        };
        assert_eq!(read, sync);
    }

    #[test]
    fn keys_share_a_cluster_slot_per_channel() {
        let channel = Channel::parse("doctor:d1:notifications").unwrap();
        assert_eq!(
            stream_key(&channel),
            "wardline:{doctor:d1:notifications}:stream"
        );
        assert_eq!(
            idempotency_key(&channel, "k"),
            "wardline:{doctor:d1:notifications}:idem:k"
        );
    }
}
