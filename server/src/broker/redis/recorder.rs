//! The recorder of plain `PUBLISH`es from existing backends (see the broker's layout doc): the lease
//! that makes one node record them, fenced, and the standby that lets the next holder record what a
//! dead one had not.

use super::{
    Channel, LEASE_KEY, LEASE_RENEW, LEASE_TTL, LegacyMessage, Priority, Publish, RENEW_SCRIPT,
    Shared, publish_command, stream_key,
};
use bytes::Bytes;
use redis::{AsyncCommands, Script};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use wardline_protocol::limits::{MAX_JSON_DEPTH, MAX_PAYLOAD_BYTES, json_depth};

/// Bids for the recorder lease every second and tells the recorder whether this node holds it.
pub(super) async fn hold_lease(shared: Shared, holding_tx: watch::Sender<bool>) {
    let renew = Script::new(RENEW_SCRIPT);
    let mut holding = false;
    let mut last_renewed = Instant::now();
    let mut tick = tokio::time::interval(LEASE_RENEW);
    loop {
        tick.tick().await;
        let mut conn = shared.commands.get();
        let result: redis::RedisResult<bool> = if holding {
            renew
                .key(LEASE_KEY)
                .arg(&shared.node_id)
                .arg(LEASE_TTL.as_millis() as u64)
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|renewed| renewed == 1)
        } else {
            redis::cmd("SET")
                .arg(LEASE_KEY)
                .arg(&shared.node_id)
                .arg("NX")
                .arg("PX")
                .arg(LEASE_TTL.as_millis() as u64)
                .query_async::<Option<String>>(&mut conn)
                .await
                .map(|ok| ok.is_some())
        };
        let now_holding = match result {
            Ok(held) => {
                if held {
                    last_renewed = Instant::now();
                }
                held
            }
            // Unsure whether the lease is still ours: keep recording until it must have expired.
            Err(_) => holding && last_renewed.elapsed() < LEASE_TTL,
        };
        if now_holding != holding {
            holding = now_holding;
            if holding {
                tracing::info!(node = %shared.node_id, "holding the recorder lease: recording plain PUBLISHes");
            } else {
                tracing::warn!(node = %shared.node_id, "lost the recorder lease");
            }
            if holding_tx.send(holding).is_err() {
                return;
            }
        }
    }
}

/// Most plain PUBLISHes recorded in one pipeline.
const RECORD_BATCH: usize = 256;

/// How long a node that does not hold the lease keeps the plain PUBLISHes it saw: longer than a
/// dead holder's lease can outlive it plus the time to take it over.
const STANDBY_WINDOW: Duration = Duration::from_secs(10);
/// Most plain PUBLISHes kept meanwhile (a flood is not kept whole: the oldest go first).
const STANDBY_MAX: usize = 100_000;

/// Records plain PUBLISHes in arrival order while this node holds the lease (fenced on it); otherwise
/// keeps the last [`STANDBY_WINDOW`] of them and, on taking the lease over, first records those the
/// old holder had not.
pub(super) async fn run(
    shared: Shared,
    mut legacy: mpsc::Receiver<LegacyMessage>,
    mut holding: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    let mut standby: std::collections::VecDeque<(Instant, LegacyMessage)> =
        std::collections::VecDeque::new();
    loop {
        tokio::select! {
            // A change of lease first: what arrives after it is recorded after the takeover.
            biased;
            changed = holding.changed() => {
                if changed.is_err() {
                    return;
                }
                if *holding.borrow_and_update() {
                    // Only the window: older ones were the old holder's to record long ago.
                    let now = Instant::now();
                    let kept: Vec<LegacyMessage> = standby
                        .drain(..)
                        .filter(|(at, _)| now - *at <= STANDBY_WINDOW)
                        .map(|(_, m)| m)
                        .collect();
                    take_over(&shared, kept).await;
                } else {
                    standby.clear();
                }
            }
            received = legacy.recv_many(&mut batch, RECORD_BATCH) => {
                if received == 0 {
                    return;
                }
                let recording = *holding.borrow();
                batch.retain(|message| storable(message, &shared, recording));
                if recording {
                    record(&shared, batch.drain(..)).await;
                } else {
                    let now = Instant::now();
                    standby.extend(batch.drain(..).map(|m| (now, m)));
                    while standby.len() > STANDBY_MAX
                        || standby.front().is_some_and(|(at, _)| now - *at > STANDBY_WINDOW)
                    {
                        standby.pop_front();
                    }
                }
            }
        }
    }
}

/// Records, as the new holder, the kept plain PUBLISHes the old holder had not recorded. The old
/// holder recorded in the order Redis delivered them, the same order as here, so per channel what
/// it recorded of them is a prefix of what was kept: the longest prefix found at the end of the
/// channel's history (among entries with the same payloads) is skipped, the rest recorded.
async fn take_over(shared: &Shared, kept: Vec<LegacyMessage>) {
    let mut by_channel: Vec<(String, Vec<LegacyMessage>)> = Vec::new();
    for message in kept {
        match by_channel.iter_mut().find(|(c, _)| *c == message.channel) {
            Some((_, messages)) => messages.push(message),
            None => by_channel.push((message.channel.clone(), vec![message])),
        }
    }
    let (mut recorded, mut skipped) = (0, 0);
    let mut missing = Vec::new();
    for (name, messages) in by_channel {
        let Ok(channel) = Channel::parse(&name) else {
            continue;
        };
        let mut conn = shared.commands.get();
        let tail: redis::RedisResult<redis::streams::StreamRangeReply> = conn
            .xrevrange_count(stream_key(&channel), "+", "-", messages.len() + 100)
            .await;
        let history: Vec<Bytes> = match tail {
            Ok(reply) => reply
                .ids
                .iter()
                .rev()
                .filter_map(|entry| match entry.map.get("m") {
                    Some(redis::Value::BulkString(bytes)) => Some(Bytes::copy_from_slice(bytes)),
                    _ => None,
                })
                .filter(|payload| messages.iter().any(|m| m.payload == *payload))
                .collect(),
            Err(e) => {
                tracing::error!(%channel, error = %e, "could not read history to take the recorder over; recording what was kept");
                Vec::new()
            }
        };
        let done = already_recorded(&messages, &history);
        skipped += done;
        recorded += messages.len() - done;
        missing.extend(messages.into_iter().skip(done));
    }
    if recorded + skipped > 0 {
        tracing::warn!(
            recorded,
            already_recorded = skipped,
            "took the recorder lease over: recorded the plain PUBLISHes the old holder had not"
        );
    }
    // Back in arrival order across channels.
    record(shared, missing.into_iter()).await;
}

/// How many of `kept` (in order) are the last entries of `history`.
fn already_recorded(kept: &[LegacyMessage], history: &[Bytes]) -> usize {
    (0..=kept.len().min(history.len()))
        .rev()
        .find(|&k| {
            kept[..k]
                .iter()
                .map(|m| &m.payload)
                .eq(history[history.len() - k..].iter())
        })
        .unwrap_or(0)
}

/// Whether a plain PUBLISH is held to what `POST /v1/publish` accepts: a payload of at most
/// [`MAX_PAYLOAD_BYTES`], nested at most [`MAX_JSON_DEPTH`] deep. One that is not is never stored
/// (not even in part): the recording node counts it and logs its channel and size, never its
/// content.
fn storable(message: &LegacyMessage, shared: &Shared, recording: bool) -> bool {
    let size = message.payload.len();
    let refusal = if size > MAX_PAYLOAD_BYTES {
        format!("larger than {MAX_PAYLOAD_BYTES} bytes")
    } else if json_depth(&message.payload) > MAX_JSON_DEPTH {
        format!("nested deeper than {MAX_JSON_DEPTH}")
    } else {
        return true;
    };
    if recording {
        shared
            .metrics
            .plain_publishes_refused_total
            .fetch_add(1, Relaxed);
        tracing::warn!(channel = ?message.channel, size, "plain PUBLISH not recorded: {refusal}");
    }
    false
}

/// Stores plain PUBLISHes in arrival order, fenced on the lease, in one pipeline (order is kept:
/// Redis runs a pipeline's scripts one after another).
async fn record(shared: &Shared, messages: impl Iterator<Item = LegacyMessage>) {
    let mut pipe = redis::pipe();
    let mut channels = Vec::new();
    for message in messages {
        let channel = match Channel::parse(&message.channel) {
            Ok(channel) => channel,
            Err(e) => {
                tracing::warn!(error = %e, "plain PUBLISH to an invalid channel name was not recorded");
                continue;
            }
        };
        let priority = match serde_json::from_slice::<serde_json::Value>(&message.payload) {
            Ok(value) => Priority::default_for(&value),
            Err(_) => {
                tracing::warn!(%channel, "plain PUBLISH is not JSON; recorded as text");
                Priority::Normal
            }
        };
        let publish = Publish {
            channel,
            payload: message.payload,
            priority,
            ttl: None,
            idempotency_key: None,
            escalation: (priority == Priority::Critical)
                .then(|| shared.critical_escalation.clone())
                .flatten(),
        };
        pipe.add_command(publish_command(shared, &publish, true));
        channels.push(publish.channel);
    }
    if channels.is_empty() {
        return;
    }
    let mut conn = shared.commands.get();
    match pipe.query_async::<Vec<(String, i64)>>(&mut conn).await {
        Ok(results) => {
            let refused = results.iter().filter(|(_, live)| *live == -1).count();
            if refused > 0 {
                tracing::warn!(
                    refused,
                    "not the recorder any more; plain PUBLISHes left to the new holder"
                );
            }
        }
        Err(e) => {
            tracing::error!(count = channels.len(), first = %channels[0], error = %e, "plain PUBLISHes could not be recorded")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_takeover_skips_what_the_old_holder_recorded_and_only_that() {
        let kept = |payloads: &[&str]| -> Vec<LegacyMessage> {
            payloads
                .iter()
                .map(|p| LegacyMessage {
                    channel: "doctor:d1:notifications".into(),
                    payload: Bytes::copy_from_slice(p.as_bytes()),
                })
                .collect()
        };
        let history = |payloads: &[&str]| -> Vec<Bytes> {
            payloads
                .iter()
                .map(|p| Bytes::copy_from_slice(p.as_bytes()))
                .collect()
        };
        let messages = kept(&["a", "b", "c", "d"]);
        assert_eq!(already_recorded(&messages, &history(&["x", "a", "b"])), 2);
        assert_eq!(already_recorded(&messages, &history(&[])), 0);
        assert_eq!(
            already_recorded(&messages, &history(&["a", "b", "c", "d"])),
            4
        );
        assert_eq!(
            already_recorded(&messages, &history(&["c", "d"])),
            0,
            "c and d at the end without a and b before them are other messages"
        );
        // Repeated payloads: the longest match wins (nothing recorded twice).
        let repeated = kept(&["a", "a", "a"]);
        assert_eq!(already_recorded(&repeated, &history(&["a", "a"])), 2);
    }
}
