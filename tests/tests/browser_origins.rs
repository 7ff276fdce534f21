//! A web page on another origin, in real headless Chromium, using the relay: `fetch` to the API (a
//! preflighted request: it carries `Authorization`), the browser's own `EventSource`, and a
//! WebSocket. With the default every origin may; with `--allowed-origins` naming only another
//! origin, all three fail in the browser; naming the page's origin, all three work.

use serde_json::{Value, json};
use wardline_tests::static_server::StaticServer;
use wardline_tests::{Relay, token};

/// The page: reads the relay and token from its query, tries the three, reports each.
const PAGE: &str = r#"<!doctype html><meta charset="utf-8"><title>Ward portal</title><script>
const params = new URLSearchParams(location.search);
const relay = params.get("relay"), token = params.get("token");
const results = {};
const settle = (name, value) => {
  if (name in results) return;
  results[name] = value;
  if (Object.keys(results).length === 3) window.results = results;
};
fetch(relay + "/v1/me", { headers: { Authorization: "Bearer " + token } })
  .then((r) => r.json().then((body) => settle("fetch", { ok: r.ok, user: body.user ?? null })))
  .catch((e) => settle("fetch", { ok: false, error: String(e) }));
const events = new EventSource(relay + "/sse/d1?token=" + token);
events.addEventListener("resumed", (e) => { settle("eventsource", { ok: true, channel: JSON.parse(e.data).channel }); events.close(); });
events.onerror = () => { settle("eventsource", { ok: false }); events.close(); };
const socket = new WebSocket(relay.replace(/^http/, "ws") + "/ws/d1", ["wardline.v1", "bearer." + token]);
socket.onmessage = (e) => { settle("websocket", { ok: true, op: JSON.parse(e.data).op }); socket.close(); };
socket.onerror = () => settle("websocket", { ok: false });
socket.onclose = () => settle("websocket", { ok: false });
</script>"#;

/// What the page on `origin` reported about `relay`.
async fn from_the_page(origin: &str, relay: &Relay) -> Value {
    let page = format!(
        "{origin}/portal?relay={}&token={}",
        relay.base,
        token("d1", "doctor", &[], 600)
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/cross_origin.mjs");
    let output = tokio::process::Command::new("node")
        .args([script, &page])
        .kill_on_drop(true)
        .output()
        .await
        .expect("node (cargo xtask test installs it)");
    assert!(
        output.status.success(),
        "the browser run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the page's results as JSON")
}

#[tokio::test]
async fn pages_on_other_origins_use_the_relay_unless_the_origin_is_not_allowed() {
    // The page, served on an origin of its own.
    let page = StaticServer::start("text/html; charset=utf-8", PAGE.to_owned())
        .await
        .unwrap();
    let origin = page.origin.as_str();

    let open = Relay::embedded(&[]).await.unwrap();
    let results = from_the_page(origin, &open).await;
    assert_eq!(
        results,
        json!({
            "fetch": {"ok": true, "user": "d1"},
            "eventsource": {"ok": true, "channel": "doctor:d1:notifications"},
            "websocket": {"ok": true, "op": "welcome"},
        }),
        "by default any origin may"
    );

    let elsewhere = Relay::embedded(&["--allowed-origins", "https://portal.hospital.example"])
        .await
        .unwrap();
    let results = from_the_page(origin, &elsewhere).await;
    for name in ["fetch", "eventsource", "websocket"] {
        assert_eq!(
            results[name]["ok"],
            json!(false),
            "{name} from an origin not allowed: {results}"
        );
    }
    // Not a browser (no Origin): still served.
    let (status, body) = elsewhere
        .get("/v1/me", Some(&token("d1", "doctor", &[], 600)))
        .await;
    assert_eq!((status, &body["user"]), (200, &json!("d1")));

    let listed = Relay::embedded(&[
        "--allowed-origins",
        &format!("https://portal.hospital.example,{origin}"),
    ])
    .await
    .unwrap();
    let results = from_the_page(origin, &listed).await;
    for name in ["fetch", "eventsource", "websocket"] {
        assert_eq!(
            results[name]["ok"],
            json!(true),
            "{name} from a listed origin: {results}"
        );
    }
}
