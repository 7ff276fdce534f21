//! The router in-process (`tower::ServiceExt::oneshot`, the peer given by `MockConnectInfo`): every
//! rejection, axum's own included, answers `{code, message}`, is counted by code in `/metrics`,
//! and a refused-for-rate answer says when to retry.

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tower::ServiceExt;
use wardline_protocol::{ErrorCode, Role};
use wardline_relay::config::Config;
use wardline_relay::{Relay, app, metrics_app};

struct Harness {
    router: Router,
    metrics: Router,
    service_token: String,
    _dir: tempfile::TempDir,
}

async fn harness(tune: impl FnOnce(&mut Config)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path(), "router-test-secret-0123456789");
    tune(&mut config);
    let relay = Relay::build(config).await.unwrap();
    let state = relay.state().clone();
    let service_token = state
        .auth
        .mint("backend", Role::Service, &[], Duration::from_secs(600));
    let peer: SocketAddr = "192.0.2.10:40000".parse().unwrap();
    Harness {
        metrics: metrics_app(state.clone()),
        router: app(state).layer(MockConnectInfo(peer)),
        service_token,
        _dir: dir,
    }
}

async fn send(
    router: &Router,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// The `{code, message}` of an error answer (fails the test on anything else).
fn error_of(body: &str) -> (u32, String) {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    let code = value["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("no code: {body}")) as u32;
    let message = value["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {body}"));
    (code, message.to_owned())
}

#[tokio::test]
async fn every_rejection_is_code_and_message_and_counted() {
    let h = harness(|_| {}).await;
    let bearer = format!("Bearer {}", h.service_token);

    // A query without a required field (axum's rejection before).
    let (status, _, body) = send(
        &h.router,
        Request::get("/v1/receipts")
            .header(header::AUTHORIZATION, &bearer)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (code, message) = error_of(&body);
    assert_eq!(code, ErrorCode::InvalidRequest.code());
    assert!(message.contains("missing field"), "{message}");

    // A WebSocket path opened as plain GET.
    let (status, _, body) = send(
        &h.router,
        Request::get("/ws/d1").body(Body::empty()).unwrap(),
    )
    .await;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(error_of(&body).0, ErrorCode::InvalidRequest.code());

    // A body over the limit.
    let huge = vec![b'x'; 3 * 1024 * 1024];
    let (status, _, body) = send(
        &h.router,
        Request::post("/v1/publish")
            .header(header::AUTHORIZATION, &bearer)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(huge))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(&body).0, ErrorCode::TooLarge.code());

    // A method the path does not take keeps its status.
    let (status, _, body) = send(
        &h.router,
        Request::builder()
            .method(Method::DELETE)
            .uri("/v1/publish")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_of(&body).0, ErrorCode::InvalidRequest.code());

    // A failed publish: the HealthHub effect's failed result, with code and message beside it.
    let (status, _, body) = send(
        &h.router,
        Request::post("/v1/publish")
            .header(header::AUTHORIZATION, &bearer)
            .body(Body::from(
                r#"{"channel":"nurse:x:notifications","message":{"type":"x"}}"#,
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let value: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(value["status"], "failed");
    assert_eq!(error_of(&body).0, ErrorCode::UnknownChannel.code());

    // Counted by code.
    let (status, _, _) = send(
        &h.router,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "metrics are not on the public port"
    );
    let (_, _, metrics) = send(
        &h.metrics,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    for (code, at_least) in [(40005, 3), (41301, 1), (40003, 1)] {
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("wardline_errors_total{{code=\"{code}\"}} ")))
            .unwrap_or_else(|| panic!("no count for {code}: {metrics}"))
            .parse()
            .unwrap();
        assert!(count >= at_least, "{code}: {count}");
    }
}

#[tokio::test]
async fn too_many_connections_answer_429_with_retry_after() {
    let h = harness(|config| {
        config.connections_per_ip_burst = 1;
        config.connections_per_ip_per_s = 1;
    })
    .await;
    let url = format!("/sse/backend?token={}", h.service_token);
    let first = h
        .router
        .clone()
        .oneshot(Request::get(&url).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let (status, headers, body) =
        send(&h.router, Request::get(&url).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers.get(header::RETRY_AFTER).unwrap(), "1");
    assert_eq!(error_of(&body).0, ErrorCode::RateLimited.code());
}

/// The property names of a schema in the description.
fn schema_properties(document: &Value, name: &str) -> Vec<String> {
    let mut names: Vec<String> = document["components"]["schemas"][name]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no schema {name}"))
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

fn keys_of(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn the_api_description_covers_every_route_and_says_what_the_handlers_answer() {
    let h = harness(|_| {}).await;
    let (status, headers, body) = send(
        &h.router,
        Request::get("/v1/openapi.json")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let document: Value = serde_json::from_str(&body).unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut paths: Vec<&String> = document["paths"].as_object().unwrap().keys().collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/healthz",
            "/readyz",
            "/sse/{user_id}",
            "/v1/me",
            "/v1/messages",
            "/v1/messages/{channel}/{id}",
            "/v1/openapi.json",
            "/v1/publish",
            "/v1/receipts",
            "/v1/stats",
            "/v1/ws/notifications",
            "/v1/ws/test-notification",
            "/ws/{user_id}",
        ]
    );
    let publish = &document["paths"]["/v1/publish"]["post"];
    assert_eq!(
        publish["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/PublishRequest"
    );
    let mut required: Vec<&str> = document["components"]["schemas"]["PublishRequest"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["channel", "message"]);
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());

    // What the handlers answer has the described fields, no more and no fewer.
    let bearer = format!("Bearer {}", h.service_token);
    let (status, _, body) = send(
        &h.router,
        Request::post("/v1/publish")
            .header(header::AUTHORIZATION, &bearer)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                r#"{"channel":"system:alerts","message":{"type":"system_notification"}}"#,
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let published: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        keys_of(&published),
        schema_properties(&document, "Published")
    );
    let (status, _, body) = send(
        &h.router,
        Request::post("/v1/publish")
            .header(header::AUTHORIZATION, &bearer)
            .body(Body::from(r#"{"channel":"nowhere","message":{}}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let failed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        keys_of(&failed),
        schema_properties(&document, "PublishFailed")
    );
    let (_, _, body) = send(
        &h.router,
        Request::get("/v1/me").body(Body::empty()).unwrap(),
    )
    .await;
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(keys_of(&error), schema_properties(&document, "ErrorBody"));
    let (_, _, body) = send(
        &h.router,
        Request::get("/v1/stats")
            .header(header::AUTHORIZATION, &bearer)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(keys_of(&stats), schema_properties(&document, "Stats"));
}
