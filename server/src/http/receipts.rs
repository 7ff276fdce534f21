//! Receipts: a recipient's device says it stored notifications (`received`), a person says they
//! acknowledged them (`acknowledged`); publishers (service) and administrators read them back.

use crate::AppState;
use crate::error::ApiError;
use crate::http::{authenticate, json_body, require_stats_reader};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use wardline_protocol::{Channel, Cursor, CursorError, ErrorCode, ReceiptKind};

/// Query of `GET /v1/receipts`.
#[derive(Debug, Deserialize)]
pub struct ReceiptsQuery {
    channel: String,
    id: String,
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
pub async fn receipts(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ReceiptsQuery>,
) -> Result<Json<Value>, ApiError> {
    require_stats_reader(&authenticate(&state, None, &headers).await?)?;
    let channel = parse_channel(&query.channel)?;
    let id = parse_id(&query.id)?;
    let receipts = state.hub.broker().receipts(&channel, id).await?;
    Ok(Json(
        json!({"channel": channel, "id": id, "receipts": receipts}),
    ))
}

/// Body of `POST /v1/receipts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordReceipts {
    channel: String,
    ids: Vec<String>,
    kind: ReceiptKind,
}

/// `POST /v1/receipts` `{channel, ids, kind}` with the recipient's own token: the same as the
/// `received` and `ack` ops of `wardline.v1`, for a client that is not connected (the CLI's
/// `wardline ack`, an app acknowledging from a notification).
pub async fn record_receipts(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let claims = authenticate(&state, None, &headers).await?;
    let request: RecordReceipts = json_body(&body)?;
    let channel = parse_channel(&request.channel)?;
    if !claims.can_read(&channel) {
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
    state
        .hub
        .broker()
        .record_receipts(&channel, &ids, &claims.sub, request.kind)
        .await?;
    Ok(Json(
        json!({"status": "recorded", "kind": request.kind, "channel": channel, "ids": ids}),
    ))
}
