//! `GET /v1/openapi.json`: the relay's HTTP API described by OpenAPI 3.1, generated from the
//! handlers' own annotations and the types they read and answer with (utoipa), so the
//! description cannot say what the code does not do.

use axum::http::header;
use axum::response::IntoResponse;
use std::sync::LazyLock;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The description, gathered from every route of [`crate::app`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Wardline relay",
        description = "Clinical notifications from the hospital's backends to people's devices. \
            Every error answer is `{code, message}`; tokens are JWTs sent as `Authorization: Bearer`.",
    ),
    paths(
        crate::http::publish::publish,
        crate::http::receipts::receipts,
        crate::http::receipts::record_receipts,
        crate::http::messages::message,
        crate::http::messages::open_messages,
        crate::http::me::me,
        crate::http::stats::stats,
        crate::http::stats::test_notification,
        crate::http::health::healthz,
        crate::http::health::readyz,
        crate::transport::ws::user_socket,
        crate::transport::ws::diagnoxix_socket,
        crate::transport::sse::user_events,
        openapi,
    ),
    modifiers(&BearerTokens),
)]
pub struct ApiDoc;

struct BearerTokens;

impl utoipa::Modify for BearerTokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Serialized once: it never changes while the relay runs.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let mut document = ApiDoc::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    document.to_json().expect("the API description serializes")
});

/// This description.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "The relay's HTTP API, OpenAPI 3.1", content_type = "application/json", body = Object)))]
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}
