//! `wardline login` keeps the token in the real OS keychain (gnome-keyring's Secret Service on a
//! private D-Bus bus), never in the config file or the inbox; a fresh `wardline listen` reads it
//! back; `wardline logout` removes it.

use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use wardline_tests::desktop::{Keyring, SessionBus};
use wardline_tests::{Relay, WAIT, binary, forged_token, token};

struct Env {
    bus: String,
    config: tempfile::TempDir,
    data: tempfile::TempDir,
}

impl Env {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(binary("wardline"));
        command
            .args(args)
            .env_remove("WARDLINE_TOKEN")
            .env_remove("WARDLINE_SERVER")
            .env_remove("WARDLINE_USER")
            .env_remove("WARDLINE_DB")
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
            .env("XDG_CONFIG_HOME", self.config.path())
            .env("XDG_DATA_HOME", self.data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    async fn login(&self, server: &str, user: &str, token: &str) -> (i32, String) {
        let mut child = self
            .command(&["login", "--server", server, "--user", user])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{token}\n").as_bytes())
            .await
            .unwrap();
        let output = tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.code().unwrap_or(-1), said)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_lives_in_the_keychain_from_login_to_logout() {
    let bus = SessionBus::start().await.unwrap();
    let _keyring = Keyring::start(&bus.address).await.unwrap();
    let relay = Relay::embedded(&[]).await.unwrap();
    let env = Env {
        bus: bus.address.clone(),
        config: tempfile::tempdir().unwrap(),
        data: tempfile::tempdir().unwrap(),
    };

    let (code, said) = env
        .login(&relay.base, "d1", &forged_token("d1", "doctor"))
        .await;
    assert_eq!(
        code, 3,
        "a refused token: sign in again, as from listen: {said}"
    );
    assert!(said.contains("refused the token"), "{said}");
    let (code, said) = env
        .login(&relay.base, "d2", &token("d1", "doctor", &[], 3600))
        .await;
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("not d2"), "{said}");

    let doctor = token("d1", "doctor", &[], 3600);
    let (code, said) = env.login(&relay.base, "d1", &doctor).await;
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("signed in as d1 (doctor)"), "{said}");
    let config = std::fs::read_to_string(env.config.path().join("wardline/config.toml")).unwrap();
    assert!(
        config.contains(&relay.base) && !config.contains(&doctor),
        "server and user only: {config}"
    );

    // A new process, no token in the environment: it comes from the keychain.
    let mut listener = env
        .command(&["listen", "--json", "--no-alerts"])
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        listener.stderr.take().unwrap(),
    ));
    loop {
        let line = tokio::time::timeout(WAIT, stderr.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("listener exited");
        if line.contains("connected (websocket)") {
            break;
        }
    }
    listener.kill().await.unwrap();
    let inbox = std::fs::read(env.data.path().join("wardline/inbox.sqlite3")).unwrap();
    assert!(
        !String::from_utf8_lossy(&inbox).contains(&doctor),
        "the token is not in the inbox"
    );

    let output = env.command(&["logout"]).output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = env
        .command(&["listen", "--no-alerts"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("not signed in as d1"), "{said}");
}

/// Done when 4 (the inbox): the inbox is encrypted at rest with a key kept in the OS keychain. Plain
/// SQLite (Debian's `sqlite3`) cannot read it, nor can `wardline` on a machine whose keychain lacks
/// the entry; with the entry everything reads as before. No patient detail is in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_is_unreadable_without_its_keychain_entry() {
    let bus = SessionBus::start().await.unwrap();
    let _keyring = Keyring::start(&bus.address).await.unwrap();
    let relay = Relay::embedded(&[]).await.unwrap();
    let env = Env {
        bus: bus.address.clone(),
        config: tempfile::tempdir().unwrap(),
        data: tempfile::tempdir().unwrap(),
    };
    let doctor = token("d1", "doctor", &[], 3600);
    let inbox = env.data.path().join("wardline/inbox.sqlite3");
    let mut listener = env
        .command(&["listen", "--json", "--no-alerts"])
        .env("WARDLINE_SERVER", &relay.base)
        .env("WARDLINE_USER", "d1")
        .env("WARDLINE_TOKEN", &doctor)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        listener.stdout.take().unwrap(),
    ));
    // Published until one is printed (the listener may still be subscribing).
    let printed = tokio::time::timeout(WAIT, async {
        loop {
            relay
                .publish(
                    "doctor:d1:notifications",
                    &wardline_tests::critical_lab_result(1),
                )
                .await;
            let line =
                tokio::time::timeout(std::time::Duration::from_millis(500), stdout.next_line())
                    .await;
            if let Ok(Ok(Some(line))) = line {
                return line;
            }
        }
    })
    .await
    .unwrap();
    assert!(printed.contains("Bob Wilson"), "{printed}");
    listener.kill().await.unwrap();
    let _ = listener.wait().await;

    let bytes = std::fs::read(&inbox).unwrap();
    assert!(
        !bytes.windows(6).any(|w| w == b"Wilson") && !bytes.starts_with(b"SQLite format 3"),
        "the file holds no patient detail and is no plain SQLite database"
    );
    assert!(
        !env.data.path().join("wardline/inbox.sqlite3.key").exists(),
        "the key is in the keychain, not beside the inbox"
    );
    let plain = tokio::process::Command::new("sqlite3")
        .arg(&inbox)
        .arg("SELECT title FROM notifications;")
        .output()
        .await
        .expect("sqlite3 is installed (cargo xtask test installs it)");
    let said = String::from_utf8_lossy(&plain.stdout).into_owned()
        + &String::from_utf8_lossy(&plain.stderr);
    assert!(
        !plain.status.success() && said.contains("not a database"),
        "plain SQLite reads it: {said}"
    );

    // With the keychain entry: as before.
    let listed = env.command(&["list", "--json"]).output().await.unwrap();
    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && out.contains("Bob Wilson"),
        "{out}"
    );
    // On a machine without it (another bus, an empty keychain): refused, saying why.
    let elsewhere = SessionBus::start().await.unwrap();
    let _empty = Keyring::start(&elsewhere.address).await.unwrap();
    let listed = env
        .command(&["list", "--json"])
        .env("DBUS_SESSION_BUS_ADDRESS", &elsewhere.address)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&listed.stderr);
    assert!(!listed.status.success(), "read without its key");
    assert!(
        said.contains("is encrypted and its key is neither in this OS keychain"),
        "{said}"
    );
    assert!(String::from_utf8_lossy(&listed.stdout).is_empty());
}
