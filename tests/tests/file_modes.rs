//! The receiver's files hold patient details and who the person is: on a shared clinical
//! workstation they are the user's alone (directories 0700, files 0600), also when they already
//! exist with wider modes. The real `wardline` binary and the app's receiver, real SQLite files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use wardline_client::AlertSettings;
use wardline_client::Trust;
use wardline_client::{Place, Wardline};
use wardline_tests::{Relay, WAIT, binary, critical_lab_result, token};

/// The receiver's own directories: where it keeps the inbox and the settings (their parents,
/// `$XDG_DATA_HOME` and `$XDG_CONFIG_HOME`, are the person's).
fn own_dirs(home: &Path) -> [PathBuf; 2] {
    [home.join("data/wardline"), home.join("config/wardline")]
}

/// The receiver's directories and every directory and file in them, with their modes.
fn modes(home: &Path) -> Vec<(PathBuf, bool, u32)> {
    let mut found = Vec::new();
    let mut pending = Vec::new();
    for dir in own_dirs(home) {
        let Ok(metadata) = std::fs::metadata(&dir) else {
            continue;
        };
        let mode = metadata.permissions().mode() & 0o777;
        found.push((dir.clone(), true, mode));
        pending.push(dir);
    }
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let metadata = entry.metadata().unwrap();
            let mode = metadata.permissions().mode() & 0o777;
            found.push((entry.path(), metadata.is_dir(), mode));
            if metadata.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    found
}

/// Checks that `expected` files exist and that nothing of the receiver's is readable by others.
fn assert_private(root: &Path, when: &str, expected: &[&str]) {
    let found = modes(root);
    for name in expected {
        assert!(
            found.iter().any(|(p, _, _)| p.ends_with(name)),
            "{when}: no {name} in {found:?}"
        );
    }
    let wide: Vec<String> = found
        .iter()
        .filter(|(_, is_dir, mode)| *mode != if *is_dir { 0o700 } else { 0o600 })
        .map(|(path, _, mode)| format!("{} {mode:o}", path.display()))
        .collect();
    assert!(wide.is_empty(), "{when}: readable by others: {wide:?}");
}

fn loosen(root: &Path) {
    for (path, is_dir, _) in modes(root) {
        let mode = if is_dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Runs `wardline listen` with its default places under `home` until it stored one notification,
/// checks the modes while it runs (the WAL files exist then), and stops it.
async fn listen_once(relay: &Relay, home: &Path, n: usize) {
    let doctor = token("d1", "doctor", &[], 3600);
    let mut child = tokio::process::Command::new(binary("wardline"))
        .args(["listen", "--json", "--no-alerts"])
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("WARDLINE_SERVER", &relay.base)
        .env("WARDLINE_USER", "d1")
        .env("WARDLINE_TOKEN", &doctor)
        .env_remove("WARDLINE_DB")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let published = relay
        .publish("doctor:d1:notifications", &critical_lab_result(n))
        .await;
    assert_eq!(published.0, 200);
    loop {
        let line = tokio::time::timeout(WAIT, stdout.next_line())
            .await
            .expect("a notification")
            .unwrap()
            .expect("listening");
        if line.contains(&format!("\"r{n}\"")) {
            break;
        }
    }
    // The WAL files exist while the inbox is open.
    assert_private(
        home,
        "while listening",
        &["inbox.sqlite3", "inbox.sqlite3-wal"],
    );
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_the_receiver_creates_is_the_users_alone_even_after_wider_modes() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config/wardline/config.toml");
    // The settings file, written as the app's settings screen does.
    let settings = |db: PathBuf| {
        let config = config.clone();
        async move {
            let receiver = Wardline::new(Place::at(db, config), Trust::new(None).unwrap())
                .open()
                .await
                .unwrap();
            receiver
                .set_alert_settings(AlertSettings {
                    sound: false,
                    ..AlertSettings::default()
                })
                .await
                .unwrap();
        }
    };
    let db = home.path().join("data/wardline/inbox.sqlite3");
    listen_once(&relay, home.path(), 1).await;
    settings(db.clone()).await;
    assert_private(home.path(), "created", &["inbox.sqlite3", "config.toml"]);

    loosen(home.path());
    listen_once(&relay, home.path(), 2).await;
    settings(db).await;
    assert_private(
        home.path(),
        "after wider modes",
        &["inbox.sqlite3", "config.toml"],
    );
}
