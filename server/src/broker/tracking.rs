//! What the broker keeps of a notification beside its history, for the acknowledge-or-escalate loop:
//! its escalation chain (a policy, a state, the steps still due) and its trail (every event, with
//! who, which device and when). Both live next to the notification and are pruned with it.
//!
//! A chain's steps wait in one schedule shared by every relay node. A node *claims* due steps: the
//! broker moves each one a lease into the future in the same atomic operation, so no other node
//! sees it due; the node runs it and *finishes* it (the trail event, the next step). A node killed
//! between claim and finish leaves the step to come due again when the lease runs out, and the
//! next claimer runs it: every step's effect is made idempotent by its name (an escalation is
//! published with an idempotency key, a reminder carries its number), so it happens once.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use wardline_protocol::{Channel, ChannelKind, Cursor, Priority, ReceiptKind};

/// How long a claimed step stays hidden from other nodes unless renewed: short enough that a step
/// whose node died runs a few seconds late, not minutes. The node running a step renews its claim
/// every [`STEP_RENEWAL`] while it runs, so a step slower than the lease (an SMTP server taking
/// its time, Redis stalling) is still not taken by another.
pub const STEP_LEASE: Duration = Duration::from_secs(15);

/// How often a running step's claim is renewed: a third of the lease, so two renewals may fail
/// (Redis briefly away) before another node can claim the step.
pub const STEP_RENEWAL: Duration = Duration::from_secs(5);

/// Devices of one user a notification's trail names: a person's phone, desktop, tablet and a few
/// more. Receipts from further device ids (made up, say, to fill the trail) are recorded as the
/// user's without a device, once per kind.
pub const MAX_TRAIL_DEVICES_PER_USER: usize = 8;

/// When a notification nobody acknowledged is sent again, escalated and emailed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Send it again to the recipient's devices every this many seconds until acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_every_s: Option<u64>,
    /// Publish it to each `escalate_to` channel this many seconds after publishing (half of it
    /// when no device of the recipient was online).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_after_s: Option<u64>,
    /// The channels it escalates to (a backup's `doctor:{id}:notifications`, a team's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalate_to: Vec<String>,
    /// Email `email_to` this many seconds after publishing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_after_s: Option<u64>,
    /// Who is emailed (addresses; the email holds no patient detail).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email_to: Vec<String>,
}

impl Policy {
    /// The chain's first steps, each with its delay after publishing.
    pub fn first_steps(&self) -> Vec<(Step, Duration)> {
        let mut steps = Vec::new();
        if let Some(every) = self.repeat_every_s {
            steps.push((Step::Repeat(1), Duration::from_secs(every)));
        }
        if let Some(after) = self.escalate_after_s
            && !self.escalate_to.is_empty()
        {
            steps.push((Step::Escalate, Duration::from_secs(after)));
        }
        if let Some(after) = self.email_after_s
            && !self.email_to.is_empty()
        {
            steps.push((Step::Email(1), Duration::from_secs(after)));
        }
        steps
    }

    /// Whether it has any step at all.
    pub fn is_empty(&self) -> bool {
        self.first_steps().is_empty()
    }
}

/// Why escalations of `source`'s notifications may not go to `target`, when they may not. An
/// escalation carries the notification whole, patient details included, so it goes only to a
/// clinician's own channel (`doctor:{id}:notifications`): never to `system:alerts` (every patient
/// reads it), a patient's or an appointment's channel, nor back to the channel it came from.
pub fn refused_escalation_target(source: Option<&Channel>, target: &Channel) -> Option<String> {
    if source == Some(target) {
        return Some(format!(
            "{target} is the notification's own channel: escalate to a backup's"
        ));
    }
    match target.kind() {
        ChannelKind::Doctor(_) => None,
        ChannelKind::Patient(_) | ChannelKind::Appointment(_) | ChannelKind::SystemAlerts => {
            Some(format!(
                "escalations go only to clinicians' own channels (doctor:{{id}}:notifications), \
                 not {target}: an escalation carries the notification whole"
            ))
        }
    }
}

/// One step of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// The `n`th reminder to the recipient's devices.
    Repeat(u32),
    /// Publishing to the escalation channels.
    Escalate,
    /// The `n`th attempt at the email.
    Email(u32),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Repeat(n) => write!(f, "repeat:{n}"),
            Step::Escalate => f.write_str("escalate"),
            Step::Email(n) => write!(f, "email:{n}"),
        }
    }
}

impl FromStr for Step {
    type Err = String;

    fn from_str(text: &str) -> Result<Step, String> {
        let number = |n: &str| n.parse::<u32>().map_err(|e| format!("step {text}: {e}"));
        match text.split_once(':') {
            Some(("repeat", n)) => Ok(Step::Repeat(number(n)?)),
            Some(("email", n)) => Ok(Step::Email(number(n)?)),
            None if text == "escalate" => Ok(Step::Escalate),
            _ => Err(format!("not a step: {text}")),
        }
    }
}

/// Where a chain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChainState {
    /// Nobody has acknowledged it yet.
    Open,
    /// A person acknowledged it (or an escalation of it).
    Acknowledged,
    /// It expired (its `ttl_s`) before anyone acknowledged it.
    Expired,
}

impl ChainState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChainState::Open => "open",
            ChainState::Acknowledged => "acknowledged",
            ChainState::Expired => "expired",
        }
    }

    /// Parses a state's name.
    pub fn parse(name: &str) -> Option<ChainState> {
        [
            ChainState::Open,
            ChainState::Acknowledged,
            ChainState::Expired,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// A notification's escalation chain as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The policy it follows.
    pub policy: Policy,
    /// The notification's priority.
    pub priority: Priority,
    /// Where it stands.
    pub state: ChainState,
    /// Who acknowledged it, once someone did.
    pub acknowledged_by: Option<String>,
    /// When it stops, if the notification expires (Unix ms).
    pub expires_ms: Option<u64>,
}

/// A due step a node claimed and now runs.
#[derive(Debug, Clone)]
pub struct ClaimedStep {
    /// The notification's channel.
    pub channel: Channel,
    /// The notification's id.
    pub id: Cursor,
    /// The step.
    pub step: Step,
    /// The chain's policy.
    pub policy: Policy,
    /// When the claim runs out (Unix ms): the step's due time the claim set. It is also the claim's
    /// fence: a renewal that finds another time there knows another node claimed the step since.
    pub lease_until_ms: u64,
}

/// What happened to a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrailKind {
    /// Stored and fanned out.
    Published,
    /// Stored on a device (a `received` receipt).
    Delivered,
    /// A device showed an alert for it.
    Displayed,
    /// A person opened it.
    Read,
    /// A person acknowledged it.
    Acknowledged,
    /// A person declined it: it escalates at once.
    Declined,
    /// Sent again to the recipient's devices.
    Repeated,
    /// Published to an escalation channel.
    Escalated,
    /// The email went out.
    EmailSent,
    /// The email could not be sent (retried up to 3 times).
    EmailFailed,
    /// No device of the recipient was connected when it was published.
    NoDeviceOnline,
}

impl From<ReceiptKind> for TrailKind {
    fn from(kind: ReceiptKind) -> TrailKind {
        match kind {
            ReceiptKind::Received => TrailKind::Delivered,
            ReceiptKind::Displayed => TrailKind::Displayed,
            ReceiptKind::Read => TrailKind::Read,
            ReceiptKind::Acknowledged => TrailKind::Acknowledged,
            ReceiptKind::Declined => TrailKind::Declined,
        }
    }
}

/// One event of a trail, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrailEvent {
    /// When, Unix ms.
    pub at_ms: u64,
    /// What.
    pub event: TrailKind,
    /// Who, for a person's or a device's event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Which device, when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// More: the channel escalated to, the email's recipients or error, the reminder's number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl TrailEvent {
    /// An event of the relay's own (no user, no device).
    pub fn relay(at_ms: u64, event: TrailKind, detail: impl Into<String>) -> TrailEvent {
        TrailEvent {
            at_ms,
            event,
            user: None,
            device: None,
            detail: Some(detail.into()).filter(|d: &String| !d.is_empty()),
        }
    }

    /// The event as stored (JSON).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("trail events serialize")
    }
}

/// Receipts a person made on one device, for the user's other devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptSync {
    /// The channel.
    pub channel: Channel,
    /// The notifications.
    pub ids: Vec<Cursor>,
    /// What the person did.
    pub kind: ReceiptKind,
    /// The user.
    pub user: String,
    /// The device, when it said.
    pub device: Option<String>,
    /// For every connection on the channel, not only the user's: the notification's chain closed
    /// (a backup acknowledged its escalation), so it is handled for all its recipients.
    #[serde(default)]
    pub everyone: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_read_back_from_their_names() {
        for step in [
            Step::Repeat(1),
            Step::Repeat(12),
            Step::Escalate,
            Step::Email(3),
        ] {
            assert_eq!(step.to_string().parse::<Step>(), Ok(step));
        }
        assert!("repeat:x".parse::<Step>().is_err());
        assert!("dance".parse::<Step>().is_err());
    }

    #[test]
    fn escalations_reach_only_other_clinicians_own_channels() {
        let channel = |name: &str| Channel::parse(name).unwrap();
        let source = channel("doctor:dr-smith:notifications");
        assert_eq!(
            refused_escalation_target(Some(&source), &channel("doctor:dr-jones:notifications")),
            None
        );
        for target in [
            "system:alerts",
            "patient:p1:notifications",
            "appointment:a1:updates",
            "doctor:dr-smith:notifications",
        ] {
            assert!(
                refused_escalation_target(Some(&source), &channel(target)).is_some(),
                "{target} was allowed"
            );
        }
    }

    #[test]
    fn a_policy_schedules_only_steps_it_can_take() {
        let policy = Policy {
            repeat_every_s: Some(120),
            escalate_after_s: Some(300),
            escalate_to: Vec::new(),
            email_after_s: Some(600),
            email_to: vec!["oncall@example.org".into()],
        };
        assert_eq!(
            policy.first_steps(),
            vec![
                (Step::Repeat(1), Duration::from_secs(120)),
                (Step::Email(1), Duration::from_secs(600))
            ],
            "no escalation without a channel to escalate to"
        );
    }
}
