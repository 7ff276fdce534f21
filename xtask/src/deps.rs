//! Installs what the tests and the demo need on Debian: as root through apt, otherwise it prints
//! the exact command and stops.

use std::process::Command;

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_owned()
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

/// Installs Debian packages providing `programs` that are missing.
pub fn ensure_apt(packages: &[(&str, &str)]) -> Result<(), String> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(program, _)| !have(program))
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

/// Makes sure `python3` can import `websockets` (seed 001's Python client), installing it with pip.
pub fn ensure_python_websockets() -> Result<(), String> {
    let import = || {
        Command::new("python3")
            .args(["-c", "import websockets"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !have("python3") {
        ensure_apt(&[("python3", "python3")])?;
    }
    if import() {
        return Ok(());
    }
    eprintln!("xtask: installing the Python websockets package (seed 001's client)");
    let pip = run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "websockets"]));
    if pip.is_err() && is_root() {
        ensure_apt(&[("false", "python3-websockets")])?;
    }
    if import() {
        Ok(())
    } else {
        Err("python3 cannot import websockets: run `python3 -m pip install websockets`".into())
    }
}
