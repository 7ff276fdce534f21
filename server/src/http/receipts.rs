//! Receipts: a recipient's device says it stored notifications (`received`) or alerted for them
//! (`displayed`), a person says they opened (`read`), acknowledged (`acknowledged`) or declined
//! (`declined`) them; publishers (service) and administrators read them back.

use crate::AppState;
use crate::broker::Receipt;
use crate::error::ApiError;
use crate::http::{authenticate, json_body, require_stats_reader};
use crate::metrics::Metrics;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wardline_protocol::limits::MAX_RECEIPT_IDS;
use wardline_protocol::{Channel, Cursor, CursorError, ErrorCode, ReceiptKind};

/// Query of `GET /v1/receipts`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ReceiptsQuery {
    /// The notification's channel.
    channel: String,
    /// The notification's id (`message_id` of its publish).
    id: String,
}

/// The receipts of one notification.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Receipts {
    /// The channel.
    #[schema(value_type = String)]
    pub channel: Channel,
    /// The notification's id.
    #[schema(value_type = String)]
    pub id: Cursor,
    /// Who received or acknowledged it, and when.
    pub receipts: Vec<Receipt>,
}

/// Receipts recorded.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Recorded {
    /// Always `recorded`.
    #[schema(example = "recorded")]
    pub status: &'static str,
    /// What they say.
    pub kind: ReceiptKind,
    /// The channel.
    #[schema(value_type = String)]
    pub channel: Channel,
    /// The ids recorded.
    #[schema(value_type = Vec<String>)]
    pub ids: Vec<Cursor>,
    /// Ids of no notification the channel holds (never published, or trimmed away): not recorded.
    #[schema(value_type = Vec<String>)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<Cursor>,
}

/// A device id as a client names its installation: up to 64 letters, digits, `-`, `_` or `.`.
pub fn checked_device(device: &str) -> Result<&str, ApiError> {
    let valid = !device.is_empty()
        && device.len() <= 64
        && device
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(device)
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "`device` must be 1 to 64 letters, digits, '-', '_' or '.'",
        ))
    }
}

fn parse_channel(name: &str) -> Result<Channel, ApiError> {
    Channel::parse(name).map_err(|e| ApiError::new(ErrorCode::UnknownChannel, e.to_string()))
}

fn parse_id(id: &str) -> Result<Cursor, ApiError> {
    id.parse()
        .map_err(|e: CursorError| ApiError::new(ErrorCode::BadCursor, e.to_string()))
}

/// `GET /v1/receipts?channel=…&id=…` (admin, service): who received and acknowledged a
/// notification, and when.
#[utoipa::path(get, path = "/v1/receipts", tag = "receipts",
    security(("bearer" = [])),
    params(ReceiptsQuery),
    responses(
        (status = 200, description = "The notification's receipts", body = Receipts),
        (status = "4XX", description = "Refused: the token, the role, the channel or the id", body = crate::error::ErrorBody),
    ))]
pub async fn receipts(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ReceiptsQuery>,
) -> Result<Json<Receipts>, ApiError> {
    require_stats_reader(&authenticate(&state, None, &headers).await?)?;
    let channel = parse_channel(&query.channel)?;
    let id = parse_id(&query.id)?;
    let receipts = state.hub.broker().receipts(&channel, id).await?;
    Ok(Json(Receipts {
        channel,
        id,
        receipts,
    }))
}

/// Body of `POST /v1/receipts`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordReceipts {
    /// The channel the notifications are on (one the token reads).
    channel: String,
    /// Their ids.
    ids: Vec<String>,
    /// What happened to them.
    kind: ReceiptKind,
    /// The installation it happened on (the id the app sends as `?device=` when it connects).
    #[serde(default)]
    device: Option<String>,
}

/// `POST /v1/receipts` `{channel, ids, kind}` with the recipient's own token: the same as the
/// `received` and `ack` ops of `wardline.v1`, for a client that is not connected (the CLI's
/// `wardline ack`, an app acknowledging from a notification).
#[utoipa::path(post, path = "/v1/receipts", tag = "receipts",
    security(("bearer" = [])),
    request_body = RecordReceipts,
    responses(
        (status = 200, description = "Recorded", body = Recorded),
        (status = "4XX", description = "Refused: the token, the channel or an id", body = crate::error::ErrorBody),
    ))]
pub async fn record_receipts(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Recorded>, ApiError> {
    let claims = authenticate(&state, None, &headers).await?;
    let request: RecordReceipts = json_body(&body)?;
    if request.ids.len() > MAX_RECEIPT_IDS {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("at most {MAX_RECEIPT_IDS} ids per request"),
        ));
    }
    // The user's receipts over HTTP and every connection draw on one limit, a token per write.
    let cost = crate::escalation::receipt_cost(request.ids.len());
    if !state.receipt_limiter.allow_n(claims.sub.clone(), cost) {
        Metrics::inc(&state.metrics().rate_limited_total);
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many receipt requests for this user; retry in a second",
        ));
    }
    let channel = parse_channel(&request.channel)?;
    if !claims.can_record_receipts(&channel) {
        return Err(ApiError::new(
            ErrorCode::ChannelForbidden,
            format!("the token does not grant channel {channel}"),
        ));
    }
    let ids = request
        .ids
        .iter()
        .map(|id| parse_id(id))
        .collect::<Result<Vec<_>, _>>()?;
    let device = request.device.as_deref().map(checked_device).transpose()?;
    let recorded = crate::escalation::record_receipts(
        state.hub.broker().as_ref(),
        &channel,
        &ids,
        &claims.sub,
        claims.can_settle(&channel),
        device,
        request.kind,
    )
    .await?;
    let unknown = ids
        .into_iter()
        .filter(|id| !recorded.contains(id))
        .collect();
    Ok(Json(Recorded {
        status: "recorded",
        kind: request.kind,
        channel,
        ids: recorded,
        unknown,
    }))
}
