//! The Debian packages `cargo xtask package` builds (the test command packages the debug binaries
//! before running the tests): what each holds, and the relay's systemd unit passing
//! `systemd-analyze verify`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `<target dir>/dist/`, next to the binaries the tests run.
fn dist() -> PathBuf {
    let relay = wardline_tests::binary("wardline-relay");
    relay
        .parent()
        .and_then(Path::parent)
        .expect("the target dir")
        .join("dist")
}

fn package(prefix: &str) -> PathBuf {
    let found = std::fs::read_dir(dist())
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(prefix) && name.ends_with(".deb")
        });
    found.unwrap_or_else(|| {
        panic!(
            "no {prefix}*.deb in {}: run `cargo xtask package` (cargo xtask test does)",
            dist().display()
        )
    })
}

/// `dpkg-deb -c`: the paths a package installs.
fn contents(deb: &Path) -> Vec<String> {
    let output = Command::new("dpkg-deb")
        .arg("-c")
        .arg(deb)
        .output()
        .unwrap();
    assert!(output.status.success(), "dpkg-deb -c {}", deb.display());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(|path| path.trim_start_matches('.').to_owned())
        .collect()
}

#[test]
fn the_relay_package_holds_binary_unit_and_config_and_the_unit_verifies() {
    let deb = package("wardline-relay_");
    let files = contents(&deb);
    for expected in [
        "/usr/bin/wardline-relay",
        "/lib/systemd/system/wardline-relay.service",
        "/etc/wardline/relay.toml",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "{expected} not in {files:?}"
        );
    }
    let control = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .output()
        .unwrap();
    let control = String::from_utf8_lossy(&control.stdout);
    assert!(control.contains("Package: wardline-relay"), "{control}");

    // The unit as packaged, verified with its ExecStart pointing at the packaged binary.
    let root = tempfile::tempdir().unwrap();
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(root.path())
        .status()
        .unwrap();
    assert!(status.success());
    let unit = std::fs::read_to_string(
        root.path()
            .join("lib/systemd/system/wardline-relay.service"),
    )
    .unwrap();
    let binary = root.path().join("usr/bin/wardline-relay");
    let unit = unit.replace("/usr/bin/wardline-relay", binary.to_str().unwrap());
    let unit_path = root.path().join("wardline-relay.service");
    std::fs::write(&unit_path, unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit_path)
        .output()
        .expect("systemd-analyze");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // The packaged configuration is one the relay accepts.
    let config = root.path().join("etc/wardline/relay.toml");
    let output = Command::new(&binary)
        .args([
            "token",
            "--sub",
            "probe",
            "--role",
            "service",
            "--jwt-secret",
            "package-test-secret-0123",
        ])
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_cli_package_holds_the_wardline_command() {
    let files = contents(&package("wardline_"));
    assert!(files.iter().any(|f| f == "/usr/bin/wardline"), "{files:?}");
}
