//! `POST /v1/publish`: store first, then fan out; answers in the HealthHub notification effect's result shapes:
//! `{"status":"published","channel","message_id","recipients_count"}` or
//! `{"status":"failed","channel","reason"}` (plus a stable `code`).

use crate::AppState;
use crate::broker::Publish;
use crate::broker::tracking::{Policy, refused_escalation_target};
use crate::config::EscalationConfig;
use crate::error::ApiError;
use crate::escalation::email;
use crate::http::{authenticate, json_body};
use crate::metrics::Metrics;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use std::time::Duration;
use wardline_protocol::limits::{MAX_JSON_DEPTH, json_depth};
use wardline_protocol::{
    Channel, ChannelKind, Cursor, ErrorCode, MAX_INBOUND_FRAME_BYTES, Priority,
};

/// The request body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The channel.
    #[schema(example = "doctor:dr-smith:notifications")]
    pub channel: String,
    /// The payload: a JSON object, stored and delivered byte for byte as sent.
    #[schema(value_type = Object, example = json!({"type": "critical_lab_result", "result_id": "lab-1", "test_type": "BMP"}))]
    pub message: Box<RawValue>,
    /// The recipient (must match a `doctor:`/`patient:` channel's id).
    #[serde(default)]
    pub recipient_id: Option<String>,
    /// Overrides the priority derived from the message type.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Stop delivering after this many seconds (1 to 31,622,400: 366 days).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31_622_400)]
    pub ttl_s: Option<u64>,
    /// Retries with the same key store the notification once.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Until a person acknowledges it: send it again, escalate it, email about it. Absent: the
    /// relay's defaults for a critical notification, nothing for others; `null`: nothing; an
    /// object: these settings, the relay's defaults for those it leaves out.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Policy>)]
    pub escalation: Option<Option<Policy>>,
}

/// Tells `"escalation": null` (`Some(None)`) apart from no `escalation` at all (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Policy>>, D::Error> {
    Option::<Policy>::deserialize(d).map(Some)
}

/// Most escalation channels or email addresses one publish may name.
const MAX_ESCALATION_TARGETS: usize = 10;

/// The longest `ttl_s` a publish may ask for: 366 days. A notification that must outlive that is
/// not one to expire; longer values would overflow the brokers' millisecond times.
pub const MAX_TTL_S: u64 = 366 * 24 * 3600;

/// Publishes naming their own `email_to` one publisher may make a minute (and at once): an
/// administrator's token must not turn the relay into a mass mailer, even within the hospital.
pub const EMAIL_PUBLISHES_PER_MINUTE: u32 = 20;

/// The policy a publish to `source` asks for, on top of the relay's defaults; checked. A refusal
/// says why, with its code.
fn escalation_policy(
    config: &EscalationConfig,
    source: &Channel,
    priority: Priority,
    requested: Option<Option<Policy>>,
) -> Result<Option<Policy>, (ErrorCode, String)> {
    let invalid = |reason: String| (ErrorCode::InvalidRequest, reason);
    // The defaults were checked at start; an escalation to the notification's own channel is
    // dropped from them rather than refusing the notification.
    let default_targets = || {
        let defaults = config.defaults.escalate_to.iter();
        defaults
            .filter(|c| *c != source.as_str())
            .cloned()
            .collect()
    };
    let policy = match requested {
        None => {
            return Ok(config.default_for(priority).map(|mut policy| {
                policy.escalate_to = default_targets();
                policy
            }));
        }
        Some(None) => return Ok(None),
        Some(Some(requested)) => {
            let defaults = &config.defaults;
            for target in &requested.escalate_to {
                let channel = Channel::parse(target)
                    .map_err(|e| invalid(format!("`escalation.escalate_to`: {e}")))?;
                if let Some(reason) = refused_escalation_target(Some(source), &channel) {
                    return Err((
                        ErrorCode::EscalationTargetRefused,
                        format!("`escalation.escalate_to`: {reason}"),
                    ));
                }
            }
            if let Some(bad) = requested.email_to.iter().find(|a| !email::valid_address(a)) {
                return Err(invalid(email::refusal(bad, &config.email_allowed_domains)));
            }
            if let Some(refused) = requested
                .email_to
                .iter()
                .find(|a| !email::allowed_address(a, &config.email_allowed_domains))
            {
                return Err((
                    ErrorCode::EmailNotAllowed,
                    email::refusal(refused, &config.email_allowed_domains),
                ));
            }
            Policy {
                repeat_every_s: requested.repeat_every_s.or(defaults.repeat_every_s),
                escalate_after_s: requested.escalate_after_s.or(defaults.escalate_after_s),
                escalate_to: if requested.escalate_to.is_empty() {
                    default_targets()
                } else {
                    requested.escalate_to
                },
                email_after_s: requested.email_after_s.or(defaults.email_after_s),
                email_to: if requested.email_to.is_empty() {
                    defaults.email_to.clone()
                } else {
                    requested.email_to
                },
            }
        }
    };
    for (name, seconds) in [
        ("repeat_every_s", policy.repeat_every_s),
        ("escalate_after_s", policy.escalate_after_s),
        ("email_after_s", policy.email_after_s),
    ] {
        if let Some(seconds) = seconds
            && !(1..=MAX_TTL_S).contains(&seconds)
        {
            return Err(invalid(format!(
                "`escalation.{name}` must be from 1 to {MAX_TTL_S} seconds, not {seconds}"
            )));
        }
    }
    if policy.escalate_to.len() > MAX_ESCALATION_TARGETS
        || policy.email_to.len() > MAX_ESCALATION_TARGETS
    {
        return Err(invalid(format!(
            "`escalation` may name at most {MAX_ESCALATION_TARGETS} channels and {MAX_ESCALATION_TARGETS} addresses"
        )));
    }
    Ok(Some(policy).filter(|p| !p.is_empty()))
}

/// A stored notification: the HealthHub notification effect's published result.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Published {
    /// Always `published`.
    #[schema(example = "published")]
    pub status: &'static str,
    /// The channel, as named in the request.
    pub channel: String,
    /// The notification's id: its position in the channel's history.
    #[schema(value_type = String, example = "1764500000000-0")]
    pub message_id: Cursor,
    /// How many relay nodes had a device of the channel connected.
    pub recipients_count: u64,
    /// The idempotency key was seen before: nothing new was stored.
    pub duplicate: bool,
}

/// A publish that failed: the effect's failed result, with the relay's `{code, message}` beside it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublishFailed {
    /// Always `failed`.
    #[schema(example = "failed")]
    pub status: &'static str,
    /// The channel, as named in the request (empty when the request could not be read).
    pub channel: String,
    /// Why.
    pub reason: String,
    /// The stable error code.
    #[schema(example = 40301)]
    pub code: u32,
    /// Why, as in every error answer.
    pub message: String,
}

struct Failed {
    channel: String,
    code: ErrorCode,
    reason: String,
}

impl IntoResponse for Failed {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // The HealthHub notification effect's failed result (status, channel, reason), with the
        // relay's `{code, message}` beside it.
        let body = PublishFailed {
            status: "failed",
            channel: self.channel,
            reason: self.reason.clone(),
            code: self.code.code(),
            message: self.reason.clone(),
        };
        let mut response = (status, Json(body)).into_response();
        // The error funnel counts and logs it.
        response
            .extensions_mut()
            .insert(ApiError::new(self.code, self.reason));
        response
    }
}

/// Stores and fans out one notification.
#[utoipa::path(post, path = "/v1/publish", tag = "publishing",
    security(("bearer" = [])),
    request_body = PublishRequest,
    responses(
        (status = 200, description = "Stored, and delivered to the devices connected now", body = Published),
        (status = "4XX", description = "Refused: the token, the role, the channel or the body", body = PublishFailed),
        (status = 503, description = "The broker is unavailable: nothing was stored", body = PublishFailed),
        (status = 504, description = "The broker did not answer in time: the notification may be stored; retry with the same `idempotency_key`", body = PublishFailed),
    ))]
pub async fn publish(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match try_publish(&state, &headers, &body).await {
        Ok(response) => response,
        Err(failed) => {
            Metrics::inc(&state.metrics().publish_failures_total);
            failed.into_response()
        }
    }
}

async fn try_publish(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Failed> {
    let fail = |channel: &str, code: ErrorCode, reason: String| Failed {
        channel: channel.to_owned(),
        code,
        reason,
    };
    let claims = authenticate(state, None, headers)
        .await
        .map_err(|e| fail("", e.code, e.message))?;
    let request: PublishRequest = json_body(body).map_err(|e| fail("", e.code, e.message))?;
    let name = request.channel.as_str();
    let channel =
        Channel::parse(name).map_err(|e| fail(name, ErrorCode::UnknownChannel, e.to_string()))?;
    if !claims.can_publish(&channel) {
        return Err(fail(
            name,
            ErrorCode::RoleForbidden,
            format!("role {} may not publish to {channel}", claims.role),
        ));
    }
    if json_depth(request.message.get().as_bytes()) > MAX_JSON_DEPTH {
        return Err(fail(
            name,
            ErrorCode::InvalidRequest,
            format!("`message` is nested deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    let message: Value = serde_json::from_str(request.message.get()).map_err(|e| {
        fail(
            name,
            ErrorCode::MalformedJson,
            format!("invalid `message`: {e}"),
        )
    })?;
    if !message.is_object() {
        return Err(fail(
            name,
            ErrorCode::InvalidRequest,
            "`message` must be a JSON object".into(),
        ));
    }
    if let (Some(recipient), ChannelKind::Doctor(id) | ChannelKind::Patient(id)) =
        (&request.recipient_id, channel.kind())
        && recipient != id
    {
        return Err(fail(
            name,
            ErrorCode::InvalidRequest,
            format!("recipient_id {recipient} does not own {channel}"),
        ));
    }
    if let Some(ttl_s) = request.ttl_s
        && !(1..=MAX_TTL_S).contains(&ttl_s)
    {
        return Err(fail(
            name,
            ErrorCode::InvalidRequest,
            format!("`ttl_s` must be from 1 to {MAX_TTL_S} seconds (366 days), not {ttl_s}"),
        ));
    }
    let payload = request.message.get().to_owned();
    if payload.len() > MAX_INBOUND_FRAME_BYTES {
        return Err(fail(
            name,
            ErrorCode::TooLarge,
            format!("`message` is larger than {MAX_INBOUND_FRAME_BYTES} bytes"),
        ));
    }
    let priority = request
        .priority
        .unwrap_or_else(|| Priority::default_for(&message));
    let names_email = matches!(&request.escalation, Some(Some(p)) if !p.email_to.is_empty());
    let escalation = escalation_policy(
        &state.config.escalation,
        &channel,
        priority,
        request.escalation,
    )
    .map_err(|(code, reason)| fail(name, code, reason))?;
    if names_email && !state.email_limiter.allow(claims.sub.clone()) {
        Metrics::inc(&state.metrics().rate_limited_total);
        return Err(fail(
            name,
            ErrorCode::RateLimited,
            format!(
                "at most {EMAIL_PUBLISHES_PER_MINUTE} publishes a minute may name `escalation.email_to`; \
                 retry later, or leave it out for the relay's default addresses"
            ),
        ));
    }
    if let Some(policy) = &escalation
        && let Some(target) = policy
            .escalate_to
            .iter()
            .filter_map(|c| Channel::parse(c).ok())
            .find(|c| !claims.can_publish(c))
    {
        return Err(fail(
            name,
            ErrorCode::RoleForbidden,
            format!("role {} may not escalate to {target}", claims.role),
        ));
    }
    let publish = Publish {
        priority,
        channel,
        payload: Bytes::from(payload),
        ttl: request.ttl_s.map(Duration::from_secs),
        idempotency_key: request.idempotency_key,
        escalation: escalation.clone(),
    };
    let channel = publish.channel.clone();
    let broker = state.hub.broker();
    let published = broker
        .publish(publish)
        .await
        .map_err(|e| fail(name, e.code(), e.to_string()))?;
    Metrics::inc(&state.metrics().published_total);
    if published.live_relays == 0
        && !published.duplicate
        && matches!(
            channel.kind(),
            ChannelKind::Doctor(_) | ChannelKind::Patient(_)
        )
        && let Err(e) = crate::escalation::no_device_online(
            broker.as_ref(),
            &channel,
            published.id,
            escalation.as_ref(),
        )
        .await
    {
        // Stored and escalating on its usual schedule: the publish stands.
        tracing::warn!(%channel, id = %published.id, error = %e, "could not record that no device was online");
    }
    let body = Published {
        status: "published",
        channel: name.to_owned(),
        message_id: published.id,
        recipients_count: published.live_relays,
        duplicate: published.duplicate,
    };
    Ok((StatusCode::OK, Json(body)).into_response())
}
