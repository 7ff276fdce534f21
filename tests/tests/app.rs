//! The real app, end to end: Xvfb, a private D-Bus bus with a recording notification server, a real
//! Redis and relays, the app driven over WebDriver (tauri-driver + WebKitWebDriver). Screenshots go
//! to `<target>/test-output/app/`. One app at a time: two of them at once would starve each other
//! on a small machine.

use std::path::PathBuf;
use std::time::Duration;
use wardline_tests::desktop::{HangingKeychain, NotificationServer, SessionBus};
use wardline_tests::small_disk::SmallDisk;
use wardline_tests::tray::TrayHost;
use wardline_tests::webdriver::{Display, Driver, Session};
use wardline_tests::{RedisServer, Relay, WAIT, critical_lab_result, free_port, token};

const DOCTOR_CHANNEL: &str = "doctor:d1:notifications";

/// WebKitWebDriver's screenshots hang when WebKit composites in software, which the app turns off
/// where there is no GPU (as here): the tests that take screenshots keep it on. The test of the
/// notification plugin path runs the app as it starts without a GPU.
const COMPOSITING_FOR_SCREENSHOTS: (&str, &str) = ("WEBKIT_DISABLE_COMPOSITING_MODE", "0");

static ONE_APP_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The app signed in as d1 at `server`, on its own display and D-Bus bus (with a notification
/// server recording what it is asked to show and a tray host), its inbox and settings under
/// `home`; connected.
struct SignedInApp {
    app: Session,
    notifications: NotificationServer,
    tray: TrayHost,
    home: tempfile::TempDir,
    _driver: Driver,
    _bus: SessionBus,
    _display: Display,
}

impl SignedInApp {
    async fn start(server: &str, extra_env: &[(&str, &str)]) -> SignedInApp {
        let display = Display::start().await.unwrap();
        let bus = SessionBus::start().await.unwrap();
        let notifications = NotificationServer::start(&bus.address).await.unwrap();
        let tray = TrayHost::start(&bus.address).await.unwrap();
        let home = tempfile::tempdir().unwrap();
        let doctor = token("d1", "doctor", &[], 3600);
        let db = home.path().join("inbox.sqlite3");
        let config = home.path().join("config");
        let mut env = vec![
            ("DISPLAY", display.name.as_str()),
            ("DBUS_SESSION_BUS_ADDRESS", bus.address.as_str()),
            ("WARDLINE_SERVER", server),
            ("WARDLINE_USER", "d1"),
            ("WARDLINE_TOKEN", doctor.as_str()),
            ("WARDLINE_DB", db.to_str().unwrap()),
            ("XDG_CONFIG_HOME", config.to_str().unwrap()),
            ("HOME", home.path().to_str().unwrap()),
        ];
        env.extend_from_slice(extra_env);
        let driver = Driver::start(&env).await.unwrap();
        let app = driver.session().await.unwrap();
        app.wait_for_text("#banner", "Connected", WAIT)
            .await
            .unwrap();
        SignedInApp {
            app,
            notifications,
            tray,
            home,
            _driver: driver,
            _bus: bus,
            _display: display,
        }
    }
}

fn shots() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("test-output/app")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_alerts_pins_acknowledges_reports_offline_and_catches_up() {
    let _one = ONE_APP_AT_A_TIME.lock().await;
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
    let desktop =
        SignedInApp::start(&format!("http://{address}"), &[COMPOSITING_FOR_SCREENSHOTS]).await;
    let (app, notifications) = (&desktop.app, &desktop.notifications);

    // A critical result: a critical OS notification, and pinned on top of the inbox.
    relay.publish(DOCTOR_CHANNEL, &json_note()).await;
    let (_, reply) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    let id = reply["message_id"].as_str().unwrap().to_owned();
    let call = notifications
        .wait_for_call("Critical lab result")
        .await
        .unwrap();
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
    app.click_on("#list li.critical").await.unwrap();
    app.click_on("#detail button.primary").await.unwrap();
    relay
        .wait_for_receipt(DOCTOR_CHANNEL, &id, ("acknowledged", "d1"), || async {})
        .await
        .unwrap();
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
    desktop
        .tray
        .wait_for_entry("Reconnecting — ")
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
    desktop.app.close().await.unwrap();
}

/// The inbox on a small disk that fills up while notifications arrive (issue 22): the window and
/// the tray say "Not receiving" with the reason within 5 s, and one critical alert says Wardline
/// stopped receiving; nothing says "Connected" while it cannot store. Freed, it is connected again
/// and has what was published meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_never_shown_as_connected_and_what_came_meanwhile_arrives_once_freed() {
    let _one = ONE_APP_AT_A_TIME.lock().await;
    let relay = Relay::embedded(&[]).await.unwrap();
    let disk = SmallDisk::mount("8m").unwrap();
    let db = disk.path().join("inbox.sqlite3");
    let desktop = SignedInApp::start(&relay.base, &[("WARDLINE_DB", db.to_str().unwrap())]).await;
    let (app, notifications, tray) = (&desktop.app, &desktop.notifications, &desktop.tray);
    relay.publish(DOCTOR_CHANNEL, &padded_note(0)).await;
    app.wait_for_text("#list", "Patient-00", WAIT)
        .await
        .unwrap();

    let filler = disk.fill().unwrap();
    let full_since = std::time::Instant::now();
    // Notifications keep coming, each larger than what the inbox's files have room for.
    let publishing = async {
        for n in 1..=10 {
            relay.publish(DOCTOR_CHANNEL, &padded_note(n)).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let watching = async {
        let banner = app
            .wait_for_text("#banner", "Not receiving", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(banner.contains("full"), "the banner says why: {banner}");
        let entry = tray.wait_for_entry("Not receiving: ").await.unwrap();
        let within = full_since.elapsed();
        assert!(
            within < Duration::from_secs(5),
            "the tray said {:?} only after {within:?}",
            entry.label
        );
        let alarm = notifications
            .wait_for_call("Wardline stopped receiving")
            .await
            .unwrap();
        assert_eq!(alarm.urgency, Some(2), "{alarm:?}");
        app.screenshot(&shots().join("5-disk-full.png"))
            .await
            .unwrap();
    };
    tokio::join!(publishing, watching);
    // Retrying meanwhile, it still cannot store: never "Connected".
    app.wait_until_text(
        "#banner",
        |text| text.contains("Connected"),
        Duration::from_secs(3),
    )
    .await
    .expect_err("the banner said Connected while nothing could be stored");

    std::fs::remove_file(filler).unwrap();
    app.wait_for_text("#list", "Patient-10", Duration::from_secs(60))
        .await
        .unwrap();
    app.wait_for_text("#banner", "Connected", WAIT)
        .await
        .unwrap();
    tray.wait_for_entry("Connected").await.unwrap();
    let list = app
        .wait_for_text("#list", "Patient-01", WAIT)
        .await
        .unwrap();
    for n in 1..=10 {
        let name = format!("Patient-{n:02}");
        assert!(list.contains(&name), "{name} is missing: {list}");
    }
    let critical: Vec<_> = notifications
        .calls()
        .into_iter()
        .filter(|call| call.urgency == Some(2))
        .collect();
    assert_eq!(
        critical.len(),
        1,
        "one critical alert, the failure's: {critical:?}"
    );
    desktop.app.close().await.unwrap();
}

/// A note for `Patient-{n:02}` with 16 KB of text.
fn padded_note(n: usize) -> serde_json::Value {
    serde_json::json!({"type": "appointment_requested", "patient_name": format!("Patient-{n:02}"),
                       "reason": "x".repeat(16_000)})
}

fn json_note() -> serde_json::Value {
    serde_json::json!({"type": "appointment_requested", "patient_name": "Alice Johnson", "reason": "Annual checkup"})
}

/// Clicking an OS alert opens the window on its notification; the settings screen's pause holds back
/// non-critical alerts (not critical ones) and is kept in the settings file; start at login writes
/// the desktop's autostart entry, which starts the app hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicked_alerts_open_their_notification_and_settings_take_effect() {
    let _one = ONE_APP_AT_A_TIME.lock().await;
    let relay = Relay::embedded(&[]).await.unwrap();
    let desktop = SignedInApp::start(&relay.base, &[COMPOSITING_FOR_SCREENSHOTS]).await;
    let (app, notifications, home) = (&desktop.app, &desktop.notifications, &desktop.home);
    let config = home.path().join("config");

    // Two notifications; the person clicks the OS alert of the older one.
    relay.publish(DOCTOR_CHANNEL, &json_note()).await;
    let call = notifications.wait_for_calls(1).await.unwrap().remove(0);
    assert_eq!(call.actions, ["default", "Open"]);
    relay
        .publish(
            DOCTOR_CHANNEL,
            &serde_json::json!({"type": "lab_result_available", "test_type": "CBC", "reviewed": true}),
        )
        .await;
    app.wait_for_text("#list li", "Lab result available", WAIT)
        .await
        .unwrap();
    // The app follows the action once `Notify` has returned: click until it is heard.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        notifications
            .invoke_action(call.id, "default")
            .await
            .unwrap();
        let selected = app
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 done(document.querySelector('#list li[aria-selected=true]')?.textContent ?? null);",
            )
            .await
            .unwrap();
        if selected
            .as_str()
            .is_some_and(|t| t.contains("Alice Johnson"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the clicked alert never opened its notification ({selected})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.wait_for_text("#detail", "Annual checkup", WAIT)
        .await
        .unwrap();
    app.screenshot(&shots().join("5-alert-opened.png"))
        .await
        .unwrap();

    // Settings: pause non-critical alerts for an hour, start at login.
    app.click_on("#open-settings").await.unwrap();
    app.click_on("#s-pause-hour").await.unwrap();
    app.wait_for_text("#s-pause-state", "paused until", WAIT)
        .await
        .unwrap();
    app.wait_for_text("#banner", "non-critical alerts paused until", WAIT)
        .await
        .unwrap();
    app.click_on("#s-autostart").await.unwrap();
    // The autostart plugin writes to $HOME/.config/autostart (whatever XDG_CONFIG_HOME says).
    let entry = home.path().join(".config/autostart/Wardline.desktop");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !entry.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no autostart entry at {}",
            entry.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let desktop_entry = std::fs::read_to_string(&entry).unwrap();
    assert!(desktop_entry.contains("--hidden"), "{desktop_entry}");
    app.screenshot(&shots().join("6-settings.png"))
        .await
        .unwrap();
    let settings = std::fs::read_to_string(config.join("wardline/config.toml")).unwrap();
    assert!(settings.contains("paused_until"), "{settings}");

    // Paused: a new appointment request is stored and listed without an OS alert; a critical
    // result still alerts. (Alerts are raised before the window hears of what was stored.)
    app.click_on("#close-settings").await.unwrap();
    let before = notifications.calls().len();
    relay
        .publish(
            DOCTOR_CHANNEL,
            &serde_json::json!({"type": "appointment_requested", "patient_name": "Carol Diaz", "reason": "Follow-up"}),
        )
        .await;
    app.wait_for_text("#list", "Carol Diaz", WAIT)
        .await
        .unwrap();
    assert_eq!(notifications.calls().len(), before, "paused: no alert");
    relay.publish(DOCTOR_CHANNEL, &critical_lab_result(3)).await;
    let calls = notifications.wait_for_calls(before + 1).await.unwrap();
    assert_eq!(
        calls[before].urgency,
        Some(2),
        "critical results still alert"
    );

    // The tray says the same and offers Resume while paused; resuming and pausing from it work.
    let tray = &desktop.tray;
    let status = tray.menu().await.unwrap().remove(0);
    assert!(
        status.label.starts_with("Connected — ") && !status.enabled,
        "{status:?}"
    );
    let hour = tray
        .wait_for_entry("Pause non-critical alerts for 1 hour")
        .await
        .unwrap();
    assert!(!hour.enabled, "already paused");
    let resume = tray
        .wait_for_entry("Resume non-critical alerts (paused until")
        .await
        .unwrap();
    assert!(resume.enabled);
    tray.click(&resume).await.unwrap();
    app.wait_until_text("#banner", |text| !text.contains("paused"), WAIT)
        .await
        .unwrap();
    let hour = tray
        .wait_for_entry("Pause non-critical alerts for 1 hour")
        .await
        .unwrap();
    assert!(hour.enabled, "resumed");
    tray.click(&hour).await.unwrap();
    app.wait_for_text("#banner", "non-critical alerts paused until", WAIT)
        .await
        .unwrap();
    desktop.app.close().await.unwrap();
}

/// The mobile alert path (the notification plugin), run on desktop with `WARDLINE_ALERTS=plugin`:
/// a critical result is raised with "Acknowledge", and choosing it acknowledges at the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notification_plugin_path_alerts_and_acknowledges() {
    let _one = ONE_APP_AT_A_TIME.lock().await;
    let relay = Relay::embedded(&[]).await.unwrap();
    // As the app starts without a GPU (no compositing variable), the path this test also covers.
    let desktop = SignedInApp::start(&relay.base, &[("WARDLINE_ALERTS", "plugin")]).await;
    let (app, notifications) = (&desktop.app, &desktop.notifications);

    let (_, reply) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    let id = reply["message_id"].as_str().unwrap().to_owned();
    let call = notifications.wait_for_calls(1).await.unwrap().remove(0);
    assert_eq!(call.summary, "Critical lab result — open Wardline");
    assert!(
        call.actions.iter().any(|a| a == "acknowledge"),
        "{:?}",
        call.actions
    );
    relay
        .wait_for_receipt(DOCTOR_CHANNEL, &id, ("acknowledged", "d1"), || async {
            notifications
                .invoke_action(call.id, "acknowledge")
                .await
                .unwrap();
        })
        .await
        .unwrap();
    app.wait_for_text("#banner", "Connected", WAIT)
        .await
        .unwrap();
    desktop.app.close().await.unwrap();
}

/// Opening the inbox asks the OS keychain for its key, and a keychain may take its time (one
/// waiting to be unlocked never answers until someone does): the window opens and answers
/// meanwhile, because the app opens its inbox off the main thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_answers_while_the_keychain_does_not() {
    let _one = ONE_APP_AT_A_TIME.lock().await;
    let display = Display::start().await.unwrap();
    let bus = SessionBus::start().await.unwrap();
    let keychain = HangingKeychain::start(&bus.address).await.unwrap();
    let home = tempfile::tempdir().unwrap();
    let db = home.path().join("inbox.sqlite3");
    let config = home.path().join("config");
    let env = [
        ("DISPLAY", display.name.as_str()),
        ("DBUS_SESSION_BUS_ADDRESS", bus.address.as_str()),
        ("WARDLINE_DB", db.to_str().unwrap()),
        ("XDG_CONFIG_HOME", config.to_str().unwrap()),
        ("HOME", home.path().to_str().unwrap()),
    ];
    let driver = Driver::start(&env).await.unwrap();
    let app = tokio::time::timeout(Duration::from_secs(30), driver.session())
        .await
        .expect("the window did not open while the keychain was not answering")
        .unwrap();
    let title = tokio::time::timeout(
        Duration::from_secs(10),
        app.execute_async("arguments[arguments.length - 1](document.title);"),
    )
    .await
    .expect("the window did not answer while the keychain was not answering")
    .unwrap();
    assert_eq!(title, "Wardline");
    assert!(
        keychain.asked() >= 1,
        "the app never asked the keychain, so this proved nothing"
    );
    app.close().await.unwrap();
}
