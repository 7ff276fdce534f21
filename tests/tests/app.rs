//! The real app, end to end: Xvfb, a private D-Bus bus with a recording notification server, a real
//! Redis and relays, the app driven over WebDriver (tauri-driver + WebKitWebDriver). Screenshots go
//! to `<target>/test-output/app/`.

use std::path::PathBuf;
use std::time::Duration;
use wardline_tests::desktop::{NotificationServer, SessionBus};
use wardline_tests::webdriver::{Display, Driver};
use wardline_tests::{RedisServer, Relay, WAIT, critical_lab_result, free_port, token};

const DOCTOR_CHANNEL: &str = "doctor:d1:notifications";

fn shots() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("test-output/app")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_alerts_pins_acknowledges_reports_offline_and_catches_up() {
    let display = Display::start().await.unwrap();
    let bus = SessionBus::start().await.unwrap();
    let notifications = NotificationServer::start(&bus.address).await.unwrap();
    let redis = RedisServer::start().await.unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_in(
        relay_dir.path(),
        Some(&redis.url()),
        &["--listen", &address],
        None,
    )
    .await
    .unwrap();
    let other = Relay::on_redis(&redis, &[]).await.unwrap();
    let home = tempfile::tempdir().unwrap();
    let doctor = token("d1", "doctor", &[], 3600);
    let server = format!("http://{address}");
    let db = home.path().join("inbox.sqlite3");
    let config = home.path().join("config");
    let driver = Driver::start(&[
        ("DISPLAY", display.name.as_str()),
        ("DBUS_SESSION_BUS_ADDRESS", bus.address.as_str()),
        ("WARDLINE_SERVER", server.as_str()),
        ("WARDLINE_USER", "d1"),
        ("WARDLINE_TOKEN", doctor.as_str()),
        ("WARDLINE_DB", db.to_str().unwrap()),
        ("XDG_CONFIG_HOME", config.to_str().unwrap()),
    ])
    .await
    .unwrap();
    let app = driver.session().await.unwrap();
    app.wait_for_text("#banner", "Connected", WAIT)
        .await
        .unwrap();

    // A critical result: a critical OS notification, and pinned on top of the inbox.
    relay.publish(DOCTOR_CHANNEL, &json_note()).await;
    let (_, reply) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    let id = reply["message_id"].as_str().unwrap().to_owned();
    let call = loop {
        let calls = notifications.wait_for_calls(1).await.unwrap();
        if let Some(call) = calls
            .into_iter()
            .find(|c| c.summary.starts_with("Critical lab result"))
        {
            break call;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((call.urgency, call.expire_timeout), (Some(2), 0));
    let first = app
        .wait_for_text("#list li", "Critical lab result — BMP for Bob Wilson", WAIT)
        .await
        .unwrap();
    assert!(first.contains("CRITICAL"), "{first}");
    app.wait_for_text("#banner", "1 critical result waiting", WAIT)
        .await
        .unwrap();
    app.screenshot(&shots().join("1-critical-pinned.png"))
        .await
        .unwrap();

    // Acknowledge in the window: the relay records it.
    let item = app.find("#list li.critical").await.unwrap();
    app.click(&item).await.unwrap();
    let button = app.find("#detail button.primary").await.unwrap();
    app.click(&button).await.unwrap();
    let service = token("backend", "service", &[], 3600);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, receipts) = relay
            .get(
                &format!("/v1/receipts?channel={DOCTOR_CHANNEL}&id={id}"),
                Some(&service),
            )
            .await;
        if receipts["receipts"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["kind"] == "acknowledged"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never recorded the acknowledgement: {receipts}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.screenshot(&shots().join("2-acknowledged.png"))
        .await
        .unwrap();

    // The relay dies: the banner says offline within 40 s. Meanwhile a result arrives elsewhere.
    drop(relay);
    app.wait_for_text("#banner", "Offline since", Duration::from_secs(40))
        .await
        .unwrap();
    app.screenshot(&shots().join("3-offline.png"))
        .await
        .unwrap();
    other.publish(DOCTOR_CHANNEL, &critical_lab_result(2)).await;

    // Back: it catches up.
    let _relay = Relay::start_in(
        relay_dir.path(),
        Some(&redis.url()),
        &["--listen", &address],
        None,
    )
    .await
    .unwrap();
    app.wait_for_text(
        "#banner",
        "1 critical result waiting",
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    app.screenshot(&shots().join("4-caught-up.png"))
        .await
        .unwrap();
    app.close().await.unwrap();
}

fn json_note() -> serde_json::Value {
    serde_json::json!({"type": "appointment_requested", "patient_name": "Alice Johnson", "reason": "Annual checkup"})
}
