//! Installs what the tests and the demo need on Debian: as root through apt, otherwise it prints
//! the exact command and stops.

use std::io::IsTerminal;
use std::process::Command;

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_owned()
}

/// Builds the relay and the receiver's CLI (release or debug); returns the directory they are in,
/// next to xtask's own binary (`<target dir>/debug`) or beside it (`<target dir>/release`).
pub fn build_relay_and_cli(release: bool) -> Result<std::path::PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // cargo's progress shows: on a cold build directory this takes minutes.
    build.current_dir(workspace_root()).args([
        "build",
        "-p",
        "wardline-relay",
        "-p",
        "wardline-client",
    ]);
    if release {
        build.arg("--release");
    }
    run(&mut build)?;
    let profile = if release { "release" } else { "debug" };
    Ok(target_dir()?.join(profile))
}

/// The cargo target directory: xtask runs from `<target dir>/debug/xtask`.
pub fn target_dir() -> Result<std::path::PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    exe.parent()
        .and_then(std::path::Path::parent)
        .map(std::path::Path::to_owned)
        .ok_or_else(|| format!("{} has no target dir", exe.display()))
}

/// Whether a program is on the PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program} >/dev/null 2>&1"))
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a command, failing with its description if it fails.
pub fn run(command: &mut Command) -> Result<(), String> {
    let description = format!("{command:?}");
    let status = command
        .status()
        .map_err(|e| format!("{description}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{description} failed with {status}"))
    }
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs the Debian packages that are missing (a program found on the PATH counts as installed).
pub fn ensure_apt(packages: &[(&str, &str)]) -> Result<(), String> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(program, package)| !installed(package) && (program.is_empty() || !have(program)))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if !is_root() {
        return Err(format!(
            "missing {}: run as root:\n  sudo sh -c '{command}'",
            missing.join(", ")
        ));
    }
    eprintln!("xtask: installing {}", missing.join(", "));
    run(Command::new("sh").arg("-c").arg(format!(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 {}",
        missing.join(" ")
    )))
}

/// The Debian packages the Tauri app builds with (WebKitGTK 4.1, libsoup 3, AppIndicator, rsvg, xdo)
/// and its tests run with (Xvfb, WebKitWebDriver, dbus-x11).
pub const TAURI_PACKAGES: &[(&str, &str)] = &[
    ("", "libwebkit2gtk-4.1-dev"),
    ("", "libjavascriptcoregtk-4.1-dev"),
    ("", "libsoup-3.0-dev"),
    ("", "libayatana-appindicator3-dev"),
    ("", "librsvg2-dev"),
    ("", "libxdo-dev"),
    ("", "libssl-dev"),
    ("pkg-config", "pkg-config"),
    ("", "build-essential"),
    ("file", "file"),
    ("xvfb-run", "xvfb"),
    ("WebKitWebDriver", "webkit2gtk-driver"),
    ("", "dbus-x11"),
];

/// Installs the UI's npm packages exactly as the lock file pins them (`npm ci`: the lock file holds
/// every platform's optional packages, so it works anywhere and is never rewritten) and builds
/// `ui/dist`, which the app embeds.
pub fn build_ui() -> Result<(), String> {
    let ui = workspace_root().join("ui");
    if !have("npm") {
        ensure_apt(&[("npm", "npm")])?;
    }
    let to_terminal = std::io::stdout().is_terminal();
    let npm = |args: &[&str]| {
        let mut npm = Command::new("npm");
        npm.current_dir(&ui).args(args);
        if !to_terminal {
            without_colour(&mut npm);
        }
        npm
    };
    run(&mut npm(&[
        "ci",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
    ]))?;
    run(&mut npm(&["run", "--silent", "build"]))
}

/// Asks a command not to colour its output. Vite, Vitest and other Node tools colour whenever `CI`
/// or `FORCE_COLOR` is set, even into a pipe or a file; they all honour `NO_COLOR`.
pub fn without_colour(command: &mut Command) -> &mut Command {
    command.env("NO_COLOR", "1").env_remove("FORCE_COLOR")
}

/// Makes sure `python3` can import `websockets` (the HealthHub client tutorial's Python client),
/// installing it with pip.
pub fn ensure_python_websockets() -> Result<(), String> {
    // Asked quietly: a missing module is an answer here, not a traceback for the person to read.
    let import = || {
        Command::new("python3")
            .args(["-c", "import websockets"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !have("python3") {
        ensure_apt(&[("python3", "python3")])?;
    }
    if import() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing the Python websockets package (the HealthHub client tutorial's Python client)"
    );
    let pip = run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--root-user-action=ignore",
        "websockets",
    ]));
    if pip.is_err() && is_root() {
        ensure_apt(&[("", "python3-websockets")])?;
    }
    if import() {
        Ok(())
    } else {
        Err("python3 cannot import websockets: run `python3 -m pip install websockets`".into())
    }
}
