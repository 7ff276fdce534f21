//! What the command line says when something is wrong: what happened and what to do next, and the
//! same exit code for the same cause in every command (as `--help` lists them). The real `wardline`
//! binary, a real relay where one is needed.

use wardline_tests::receiver::{Listener, inbox_path, run};
use wardline_tests::{Relay, forged_token, free_port, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_address_without_a_scheme_or_a_websocket_one_says_what_to_give() {
    let dir = tempfile::tempdir().unwrap();
    let db = inbox_path(&dir);
    let login = ["login", "--user", "d1", "--token", "t"];
    let (code, _, said) = run("127.0.0.1:18851", "d1", "", &db, &login).await.unwrap();
    assert_eq!(code, 2, "{said}");
    assert!(
        said.contains("no scheme")
            && said.contains("use http://HOST:PORT (e.g. http://127.0.0.1:18851)"),
        "{said}"
    );
    let (code, _, said) = run("ws://127.0.0.1:18851/ws/d1", "d1", "", &db, &login)
        .await
        .unwrap();
    assert_eq!(code, 2, "{said}");
    assert!(
        said.contains("is a WebSocket address")
            && said.contains("give the relay's base URL instead, http://127.0.0.1:18851"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_is_not_running_is_named_with_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let (code, _, said) = run(
        &server,
        "d1",
        "",
        &inbox_path(&dir),
        &["login", "--user", "d1", "--token", "t"],
    )
    .await
    .unwrap();
    assert_eq!(code, 2, "{said}");
    assert!(
        said.contains(&format!("connection refused by 127.0.0.1:{port}"))
            && said.contains("is the relay running there"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_inbox_needs_one_and_real_ids() {
    let dir = tempfile::tempdir().unwrap();
    let db = inbox_path(&dir);
    for command in [&["list"][..], &["status"], &["ack", "1-0"]] {
        let (code, out, said) = run("http://127.0.0.1:9", "d1", "", &db, command)
            .await
            .unwrap();
        assert_eq!(code, 2, "{command:?}: {out}{said}");
        assert!(
            said.contains("no inbox yet") && said.contains("run `wardline listen` first"),
            "{command:?}: {said}"
        );
    }
    assert!(!db.exists(), "no empty inbox made by reading one");

    let relay = Relay::embedded(&[]).await.unwrap();
    let doctor = token("d1", "doctor", &[], 3600);
    let listener = Listener::start(&relay.base, "d1", &doctor, &db)
        .await
        .unwrap();
    listener.stop().await.unwrap();
    let (code, _, said) = run(&relay.base, "d1", &doctor, &db, &["ack", "nonexistent-id"])
        .await
        .unwrap();
    assert_eq!(code, 2, "{said}");
    assert!(
        said.contains("nonexistent-id is not a notification id")
            && said.contains("see `wardline list`"),
        "{said}"
    );
    let (code, _, said) = run(&relay.base, "d1", &doctor, &db, &["ack", "1-0"])
        .await
        .unwrap();
    assert_eq!(code, 2, "{said}");
    assert!(
        said.contains("no notification 1-0 in the inbox: see `wardline list`"),
        "{said}"
    );
}

/// On a machine with no keychain (a server, a container), `login` says to use WARDLINE_TOKEN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_keychain_login_says_to_set_wardline_token() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let doctor = token("d1", "doctor", &[], 3600);
    let (code, _, said) = run(
        &relay.base,
        "d1",
        "",
        &inbox_path(&dir),
        &["login", "--user", "d1", "--token", &doctor],
    )
    .await
    .unwrap();
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("set WARDLINE_TOKEN instead"), "{said}");
}

/// A refused token is exit code 3 from `login` as from `listen`; `--help` lists the codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_exit_code_3_in_every_command() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let forged = forged_token("d1", "doctor");
    let (code, _, said) = run(
        &relay.base,
        "d1",
        "",
        &inbox_path(&dir),
        &["login", "--user", "d1", "--token", &forged],
    )
    .await
    .unwrap();
    assert_eq!(code, 3, "{said}");
    assert!(said.contains("refused the token"), "{said}");
    let listener = Listener::spawn(&relay.base, "d1", &forged, &inbox_path(&dir)).unwrap();
    let (code, said) = listener.exit().await.unwrap();
    assert_eq!(code, 3, "{said}");
    let (code, help, _) = run(&relay.base, "d1", "", &inbox_path(&dir), &["--help"])
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(
        help.contains("Exit codes: 0 done; 2 an error")
            && help.contains("3 the relay refused the token")
            && help.contains("4 the relay's certificate cannot be trusted"),
        "{help}"
    );
}

/// On a terminal (a real pseudo-terminal, through util-linux's `script`), `login` asks for the token
/// and does not show it as it is typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_on_a_terminal_asks_for_the_token_and_does_not_show_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = Relay::embedded(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let doctor = token("d1", "doctor", &[], 3600);
    let wardline = wardline_tests::binary("wardline");
    let mut terminal = tokio::process::Command::new("script")
        .args(["--quiet", "--return", "--command"])
        .arg(format!("{} login --user d1", wardline.display()))
        .arg("/dev/null")
        .env("WARDLINE_SERVER", &relay.base)
        .env("WARDLINE_DB", inbox_path(&dir))
        .env_remove("WARDLINE_TOKEN")
        .env(
            "DBUS_SESSION_BUS_ADDRESS",
            "unix:path=/nonexistent/wardline-test-bus",
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("script(1) from util-linux");
    let mut screen = terminal.stdout.take().unwrap();
    let mut shown = String::new();
    let mut chunk = [0u8; 4096];
    while !shown.contains("(not shown): ") {
        let n = tokio::time::timeout(wardline_tests::WAIT, screen.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no prompt; the terminal showed {shown:?}"))
            .unwrap();
        assert!(n > 0, "ended before asking; the terminal showed {shown:?}");
        shown.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    assert!(
        shown.contains(&format!("Token for d1 at {}", relay.base)),
        "{shown:?}"
    );
    let mut keyboard = terminal.stdin.take().unwrap();
    keyboard
        .write_all(format!("{doctor}\r").as_bytes())
        .await
        .unwrap();
    tokio::time::timeout(wardline_tests::WAIT, screen.read_to_string(&mut shown))
        .await
        .unwrap()
        .unwrap();
    let status = terminal.wait().await.unwrap();
    // No keychain here: the token was read, checked and then had nowhere to be kept.
    assert!(shown.contains("set WARDLINE_TOKEN instead"), "{shown:?}");
    assert_eq!(status.code(), Some(2), "{shown:?}");
    assert!(!shown.contains(&doctor), "the token was shown: {shown:?}");
    drop(keyboard);
}
