//! The acknowledge-or-escalate loop: a notification published with an escalation policy (critical
//! ones by default) is sent again to the recipient's devices until a person acknowledges it,
//! published to backup channels after a while, then emailed.
//!
//! Every relay node runs [`run`]: once a second it claims the steps that are due from the broker
//! (each step is claimed by one node; see [`crate::broker::tracking`]), runs them and records them
//! in the notification's trail. Receipts come in through [`record_receipts`]: an acknowledgement
//! closes the chain (and the one an escalation came from), a decline brings the escalation forward
//! to now, and what a person did on one device is told to the user's other devices.

pub mod email;

use crate::broker::tracking::{
    ClaimedStep, Policy, ReceiptSync, STEP_LEASE, STEP_RENEWAL, Step, TrailEvent, TrailKind,
};
use crate::broker::{Broker, BrokerError, Live, Publish, StoredMessage, now_ms};
use crate::metrics::Metrics;
use bytes::Bytes;
use email::{Email, Mailer};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use wardline_protocol::frame::rfc3339_millis;
use wardline_protocol::{Channel, ChannelKind, Cursor, Priority, ReceiptKind};

/// Attempts at an email: the first and 3 retries.
pub const EMAIL_ATTEMPTS: u32 = 4;

/// Reminders sent at most (an hour of them at the default 2 minutes): by then the notification was
/// escalated and emailed, and a device that rings all night for one result is a device people mute.
pub const MAX_REMINDERS: u32 = 30;

/// Most ids one write of receipts records (a receipt may carry 1,000): a publish waiting for the
/// store waits for one such write at most.
const RECEIPT_WRITE_PART: usize = 25;

/// Ids a token of the user's receipt limit pays for.
const RECEIPT_IDS_PER_TOKEN: usize = 100;

/// What a receipt of `ids` ids costs from its user's receipt limit: a token per hundred ids (four
/// writes), so that a user's receipts cost the store the same whether they come a few ids at a
/// time or a thousand. Counted as sent, repeats too: the cost is known before the ids are read,
/// and a receipt refused for it costs the relay a scan of its text, not a parse.
pub fn receipt_cost(ids: usize) -> u32 {
    ids.div_ceil(RECEIPT_IDS_PER_TOKEN).max(1) as u32
}

/// Steps claimed per round at most.
const CLAIM_BATCH: usize = 64;

/// Steps one node runs at once: enough that reminders and emails to a slow SMTP server leave
/// room for the next escalation, few enough that a backlog after an outage does not open
/// hundreds of SMTP connections.
pub const MAX_RUNNING_STEPS: usize = 32;

/// How long steps under way may take to finish once the relay shuts down: an SMTP exchange's
/// deadline and a little more.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(email::SMTP_TIMEOUT.as_secs() + 2);

/// What the loop needs besides the broker.
#[derive(Debug, Clone)]
pub struct Escalation {
    /// The SMTP server emails go through; without one, an email step fails into the trail.
    pub mailer: Option<Mailer>,
    /// How long after a failed email the next attempt is made.
    pub email_retry: Duration,
    /// The domains emails may go to: checked again when sending, so a chain stored before the
    /// administrator narrowed them emails nobody outside.
    pub email_allowed_domains: Vec<String>,
}

/// Records `user`'s receipts and acts on them: what a person did is sent to the user's other
/// devices, and where the user `settles` the channel's chains (`Claims::can_settle`: the
/// recipient of a personal channel, its publishers) an acknowledgement closes the notification's
/// chain (and the chain of the notification it escalated) and a decline escalates at once. A
/// reader of a shared channel (`system:alerts`) records receipts of their own that act for nobody
/// else. Answers the ids recorded.
pub async fn record_receipts(
    broker: &dyn Broker,
    channel: &Channel,
    ids: &[Cursor],
    user: &str,
    settles: bool,
    device: Option<&str>,
    kind: ReceiptKind,
) -> Result<Vec<Cursor>, BrokerError> {
    // An id repeated in one receipt is recorded once; long receipts are written a part at a time,
    // so a publish waiting for the store waits for one part, not for a thousand ids.
    let mut seen = HashSet::with_capacity(ids.len());
    let ids: Vec<Cursor> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
    let mut recorded = Vec::with_capacity(ids.len());
    for part in ids.chunks(RECEIPT_WRITE_PART) {
        recorded.extend(
            broker
                .record_receipts(channel, part, user, device, kind)
                .await?,
        );
    }
    if recorded.is_empty() {
        return Ok(recorded);
    }
    let mut closed = Vec::new();
    match kind {
        ReceiptKind::Acknowledged if settles => {
            for id in &recorded {
                for (closed_channel, closed_id) in broker.acknowledge(channel, *id, user).await? {
                    if (&closed_channel, closed_id) != (channel, *id) {
                        // The original notification, acknowledged through its escalation.
                        let event = TrailEvent {
                            at_ms: now_ms(),
                            event: TrailKind::Acknowledged,
                            user: Some(user.to_owned()),
                            device: device.map(str::to_owned),
                            detail: Some(format!("through its escalation on {channel} ({id})")),
                        };
                        broker
                            .append_trail(&closed_channel, closed_id, event)
                            .await?;
                    }
                    closed.push((closed_channel, closed_id));
                }
            }
        }
        ReceiptKind::Declined if settles => {
            for id in &recorded {
                broker
                    .advance_step(channel, *id, Step::Escalate, now_ms())
                    .await?;
            }
        }
        _ => {}
    }
    if kind.synced_to_devices() {
        broker
            .broadcast(Live::Receipts(ReceiptSync {
                channel: channel.clone(),
                ids: recorded.clone(),
                kind,
                user: user.to_owned(),
                device: device.map(str::to_owned),
                everyone: false,
            }))
            .await?;
    }
    // A chain closed is handled for everyone on its channel: the original recipient's devices
    // stop alerting when a backup acknowledged the escalation.
    for (closed_channel, closed_id) in closed {
        broker
            .broadcast(Live::Receipts(ReceiptSync {
                channel: closed_channel,
                ids: vec![closed_id],
                kind: ReceiptKind::Acknowledged,
                user: user.to_owned(),
                device: device.map(str::to_owned),
                everyone: true,
            }))
            .await?;
    }
    Ok(recorded)
}

/// After a publish no device of the recipient heard (no node had the channel): the trail says so,
/// and the escalation comes at half its delay.
pub async fn no_device_online(
    broker: &dyn Broker,
    channel: &Channel,
    id: Cursor,
    policy: Option<&Policy>,
) -> Result<(), BrokerError> {
    let mut detail = String::from("no device of the recipient was connected");
    if let Some(after) = policy
        .filter(|p| !p.escalate_to.is_empty())
        .and_then(|p| p.escalate_after_s)
    {
        let half = after * 1000 / 2;
        broker
            .advance_step(channel, id, Step::Escalate, id.ms + half)
            .await?;
        detail.push_str(&format!(
            "; escalating after {} s instead of {after} s",
            half / 1000
        ));
    }
    broker
        .append_trail(
            channel,
            id,
            TrailEvent::relay(now_ms(), TrailKind::NoDeviceOnline, detail),
        )
        .await
}

/// Runs this node's share of the escalation steps until `shutdown` turns true.
///
/// Steps run side by side, at most [`MAX_RUNNING_STEPS`] at once, each in its own task: a slow
/// SMTP server or a burst of reminders cannot hold up an unrelated escalation. The loop claims
/// only as many steps as it can start at once (a claimed step waiting its turn here would let its
/// lease run out and another node run it too), and each running step renews its claim every
/// [`STEP_RENEWAL`] while it runs. On shutdown, steps under way get [`SHUTDOWN_GRACE`] to finish
/// (an email half sent is better finished than sent again by another node).
pub async fn run(
    broker: Arc<dyn Broker>,
    escalation: Escalation,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_RUNNING_STEPS));
    let mut running = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // After a full batch more steps are probably due: claim again as soon as a slot is free.
    let mut backlog = false;
    loop {
        tokio::select! {
            _ = tick.tick(), if !backlog => {}
            Ok(_) = slots.clone().acquire_owned(), if backlog => {}
            Some(_) = running.join_next() => continue,
            _ = shutdown.wait_for(|stopping| *stopping) => break,
        }
        let free = slots.available_permits().min(CLAIM_BATCH);
        backlog = false;
        if free == 0 {
            backlog = true;
            continue;
        }
        let claimed = match broker.claim_steps(now_ms(), STEP_LEASE, free).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "could not claim escalation steps; retrying in a second");
                continue;
            }
        };
        backlog = claimed.len() == free;
        for step in claimed {
            let slot = slots
                .clone()
                .try_acquire_owned()
                .expect("no more steps are claimed than slots are free");
            let (broker, escalation, metrics) =
                (broker.clone(), escalation.clone(), metrics.clone());
            running.spawn(async move {
                run_claimed(broker.as_ref(), &escalation, &metrics, step).await;
                drop(slot);
            });
        }
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, async {
        while running.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            steps = running.len(),
            "escalation steps still running at shutdown; they run again on another node when their claims run out"
        );
    }
}

/// Runs one claimed step while renewing its claim, and counts the outcome.
async fn run_claimed(
    broker: &dyn Broker,
    escalation: &Escalation,
    metrics: &Metrics,
    claimed: ClaimedStep,
) {
    let mut lease = claimed.clone();
    let step = run_step(broker, escalation, &claimed);
    tokio::pin!(step);
    let mut renewal = tokio::time::interval_at(Instant::now() + STEP_RENEWAL, STEP_RENEWAL);
    let outcome = loop {
        tokio::select! {
            biased;
            outcome = &mut step => break outcome,
            _ = renewal.tick() => {
                let until = now_ms() + STEP_LEASE.as_millis() as u64;
                match broker.renew_step(&mut lease, until).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(
                        channel = %claimed.channel, id = %claimed.id, step = %claimed.step,
                        "an escalation step's claim ran out while it ran: another node may run it too"
                    ),
                    Err(e) => tracing::warn!(
                        channel = %claimed.channel, id = %claimed.id, step = %claimed.step, error = %e,
                        "could not renew an escalation step's claim; retrying"
                    ),
                }
            }
        }
    };
    match outcome {
        Ok(()) => Metrics::inc(&metrics.escalation_steps_total),
        Err(e) => {
            Metrics::inc(&metrics.escalation_failures_total);
            tracing::warn!(
                channel = %claimed.channel, id = %claimed.id, step = %claimed.step, error = %e,
                "escalation step failed; it runs again when its claim runs out"
            );
        }
    }
}

/// Runs one claimed step and finishes it. An error leaves it claimed: it runs again (on any node)
/// when the claim runs out, and its effect is idempotent.
async fn run_step(
    broker: &dyn Broker,
    escalation: &Escalation,
    claimed: &ClaimedStep,
) -> Result<(), BrokerError> {
    let now = now_ms();
    let Some(message) = broker.message(&claimed.channel, claimed.id).await? else {
        // Trimmed from history: nothing left to send.
        return broker.finish_step(claimed, None, None).await;
    };
    match claimed.step {
        Step::Repeat(n) => {
            broker.broadcast(Live::Repeat(message, n)).await?;
            let every = claimed.policy.repeat_every_s.unwrap_or(60).max(1) * 1000;
            let scheduled = claimed.id.ms + (u64::from(n) + 1) * every;
            // A node that was down for a while sends one reminder, not every one it missed.
            let next = if scheduled > now {
                scheduled
            } else {
                now + every
            };
            let (detail, next) = if n >= MAX_REMINDERS {
                (format!("reminder {n}, the last"), None)
            } else {
                (format!("reminder {n}"), Some((Step::Repeat(n + 1), next)))
            };
            let event = TrailEvent::relay(now, TrailKind::Repeated, detail);
            broker.finish_step(claimed, Some(event), next).await
        }
        Step::Escalate => {
            let mut sent = Vec::new();
            for target in &claimed.policy.escalate_to {
                let Ok(channel) = Channel::parse(target) else {
                    continue;
                };
                let published = broker
                    .publish(escalation_publish(&message, channel.clone()))
                    .await?;
                broker
                    .link_escalation(
                        &channel,
                        published.id,
                        &(claimed.channel.clone(), claimed.id),
                    )
                    .await?;
                sent.push(format!("{channel} ({})", published.id));
            }
            let event =
                TrailEvent::relay(now, TrailKind::Escalated, format!("to {}", sent.join(", ")));
            broker.finish_step(claimed, Some(event), None).await
        }
        Step::Email(attempt) => {
            let allowed = &escalation.email_allowed_domains;
            let (to, refused): (Vec<String>, Vec<String>) = claimed
                .policy
                .email_to
                .iter()
                .cloned()
                .partition(|address| email::allowed_address(address, allowed));
            let result = match &escalation.mailer {
                _ if to.is_empty() => Err(email::refusal(&refused.join(", "), allowed)),
                Some(mailer) => mailer.send(&to, &escalation_email(&message, now)).await,
                None => Err("no SMTP server is configured (--smtp-url)".to_owned()),
            };
            let (event, next) = match result {
                Ok(()) => (
                    TrailEvent::relay(now, TrailKind::EmailSent, format!("to {}", to.join(", "))),
                    None,
                ),
                Err(e)
                    if attempt < EMAIL_ATTEMPTS
                        && escalation.mailer.is_some()
                        && !to.is_empty() =>
                {
                    let retry = escalation.email_retry;
                    (
                        TrailEvent::relay(
                            now,
                            TrailKind::EmailFailed,
                            format!(
                                "attempt {attempt} of {EMAIL_ATTEMPTS}: {e}; retrying in {} s",
                                retry.as_secs()
                            ),
                        ),
                        Some((Step::Email(attempt + 1), now + retry.as_millis() as u64)),
                    )
                }
                Err(e) => (
                    TrailEvent::relay(
                        now,
                        TrailKind::EmailFailed,
                        format!("attempt {attempt} of {EMAIL_ATTEMPTS}: {e}; giving up"),
                    ),
                    None,
                ),
            };
            if event.event == TrailKind::EmailFailed {
                tracing::warn!(channel = %claimed.channel, id = %claimed.id, detail = ?event.detail, "escalation email failed");
            }
            broker.finish_step(claimed, Some(event), next).await
        }
    }
}

/// Who a channel's notifications are for, as an email may name them: the doctor's or patient's id,
/// or the channel.
fn recipient(channel: &Channel) -> String {
    match channel.kind() {
        ChannelKind::Doctor(id) | ChannelKind::Patient(id) => id.to_owned(),
        _ => channel.to_string(),
    }
}

/// The escalation of `message` to `target`: a new notification of type `escalation` carrying the
/// original's channel, id and payload, published once however often the step runs.
fn escalation_publish(message: &StoredMessage, target: Channel) -> Publish {
    let original: serde_json::Value =
        serde_json::from_slice(&message.payload).unwrap_or_else(|_| {
            String::from_utf8_lossy(&message.payload)
                .into_owned()
                .into()
        });
    let payload = serde_json::json!({
        "type": "escalation",
        "title": "Critical result not acknowledged",
        "message": format!(
            "A critical notification for {} has not been acknowledged. You are the backup: please review it.",
            recipient(&message.channel)
        ),
        "original": {
            "channel": message.channel.as_str(),
            "id": message.id.to_string(),
            "message": original,
        },
    });
    Publish {
        channel: target,
        payload: Bytes::from(payload.to_string()),
        priority: Priority::Critical,
        ttl: None,
        idempotency_key: Some(format!("escalation:{}:{}", message.channel, message.id)),
        escalation: None,
    }
}

/// The email about `message`: who has a critical result waiting and since when, nothing of what
/// it says.
fn escalation_email(message: &StoredMessage, now: u64) -> Email {
    let who = recipient(&message.channel);
    let minutes = now.saturating_sub(message.id.ms) / 60_000;
    Email {
        subject: format!("Wardline: a critical result for {who} is waiting for acknowledgement"),
        body: format!(
            "A critical notification for {who} was published at {} and has not been acknowledged \
             after {minutes} min.\n\nOpen Wardline to review and acknowledge it.\n\n\
             Reference: {} {}\n",
            rfc3339_millis(message.id.ms),
            message.channel,
            message.id,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn critical() -> StoredMessage {
        StoredMessage {
            id: Cursor::new(1_764_500_000_000, 0),
            channel: Channel::parse("doctor:dr-smith:notifications").unwrap(),
            priority: Priority::Critical,
            ttl: None,
            payload: Bytes::from_static(
                br#"{"type":"critical_lab_result","patient_name":"Bob Wilson","test_type":"BMP","value":"K 6.9"}"#,
            ),
        }
    }

    #[test]
    fn the_email_names_who_is_waiting_and_nothing_of_the_result() {
        let email = escalation_email(&critical(), 1_764_500_000_000 + 600_000);
        let text = format!("{}\n{}", email.subject, email.body);
        assert!(text.contains("dr-smith"), "{text}");
        assert!(text.contains("10 min"), "{text}");
        for secret in ["Bob", "Wilson", "BMP", "6.9", "critical_lab_result"] {
            assert!(!text.contains(secret), "the email leaks {secret}: {text}");
        }
    }

    #[test]
    fn an_escalation_carries_the_original_and_is_published_once() {
        let publish = escalation_publish(
            &critical(),
            Channel::parse("doctor:dr-backup:notifications").unwrap(),
        );
        let payload: serde_json::Value = serde_json::from_slice(&publish.payload).unwrap();
        assert_eq!(payload["type"], "escalation");
        assert_eq!(
            payload["original"]["channel"],
            "doctor:dr-smith:notifications"
        );
        assert_eq!(payload["original"]["id"], "1764500000000-0");
        assert_eq!(payload["original"]["message"]["test_type"], "BMP");
        assert_eq!(publish.priority, Priority::Critical);
        assert!(
            publish.escalation.is_none(),
            "an escalation does not escalate itself"
        );
        assert_eq!(
            publish.idempotency_key.as_deref(),
            Some("escalation:doctor:dr-smith:notifications:1764500000000-0")
        );
    }
}
