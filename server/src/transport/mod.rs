//! Transports: each turns one [`Session`](crate::session::Session) into frames on one kind of wire,
//! and nothing more. Admission (rate limit, token, user, broker) is the same for all of them.

pub mod sse;
pub mod ws;

use crate::AppState;
use crate::auth::Claims;
use crate::broker::BrokerHealth;
use crate::connection_caps::ConnectionPermit;
use crate::error::ApiError;
use crate::http::authenticate;
use crate::metrics::Metrics;
use axum::http::HeaderMap;
use std::net::IpAddr;
use wardline_protocol::ErrorCode;

/// Checks a new connection: not shutting down, within its client address's rate, a valid token whose
/// subject is the user in the path (the HealthHub notification effect's handler never checked this), a slot under the
/// connection caps (held by the permit for the connection's life), and a reachable broker.
pub async fn admit(
    state: &AppState,
    client: IpAddr,
    path_user: &str,
    query_token: Option<&str>,
    headers: &HeaderMap,
) -> Result<(Claims, ConnectionPermit), ApiError> {
    if *state.shutdown.borrow() {
        return Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "the relay is shutting down; connect again",
        ));
    }
    if !state.connection_limiter.allow(client) {
        Metrics::inc(&state.metrics().rate_limited_total);
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many new connections from this address; retry later",
        ));
    }
    let claims = authenticate(state, query_token, headers).await?;
    if claims.sub != path_user {
        Metrics::inc(&state.metrics().auth_failures_total);
        return Err(ApiError::new(
            ErrorCode::WrongUser,
            format!("the token is for user {}, not {path_user}", claims.sub),
        ));
    }
    let permit = state.caps.admit(client, &claims.sub).inspect_err(|_| {
        Metrics::inc(&state.metrics().connections_capped_total);
    })?;
    if let BrokerHealth::Down(reason) = &*state.hub.broker().health().borrow() {
        return Err(ApiError::new(
            ErrorCode::BrokerUnavailable,
            format!("broker unavailable: {reason}"),
        ));
    }
    Ok((claims, permit))
}
