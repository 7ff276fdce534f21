//! `wardline-relay backup FILE`: a copy of the embedded broker's history taken while the relay runs,
//! private to its owner, and a relay started on the copy (the restore) replaying what was published.

use std::os::unix::fs::PermissionsExt;
use wardline_tests::client::V1Client;
use wardline_tests::{Relay, binary, numbered, token};

const DOCTOR_CHANNEL: &str = "doctor:d1:notifications";

#[tokio::test]
async fn a_backup_taken_while_the_relay_runs_restores_its_history() {
    let relay = Relay::embedded(&[]).await.unwrap();
    for n in 0..3 {
        assert_eq!(relay.publish(DOCTOR_CHANNEL, &numbered(n)).await.0, 200);
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("wardline-history.sqlite3");
    let backup = || {
        std::process::Command::new(binary("wardline-relay"))
            .arg("backup")
            .arg(&copy)
            .arg("--data-dir")
            .arg(&relay.data_dir)
            .output()
            .unwrap()
    };
    let output = backup();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the copy holds patient details");
    // A second backup does not overwrite the first.
    let again = backup();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("creating"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // Restore: a new data dir holding the copy as its history.
    let restored_dir = tempfile::tempdir().unwrap();
    std::fs::copy(&copy, restored_dir.path().join("history.sqlite3")).unwrap();
    let restored = Relay::start_in(restored_dir.path(), None, &[], None)
        .await
        .unwrap();
    let doctor = token("d1", "doctor", &[], 600);
    let mut client = V1Client::connect(&restored.ws_url(""), "d1", &doctor)
        .await
        .unwrap();
    let (replayed, _) = client
        .subscribe(&[(DOCTOR_CHANNEL, Some("0-0"))])
        .await
        .unwrap();
    let numbers: Vec<u64> = replayed
        .iter()
        .map(|n| n.message["n"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [0, 1, 2]);
}
