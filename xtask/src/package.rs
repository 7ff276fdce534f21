//! `cargo xtask package [--debug]`: Debian packages of the relay and of the CLI, into
//! `<target dir>/dist/`, built with `dpkg-deb` from the release binaries (`--debug`: the debug ones,
//! which the test command packages to check the layout without a release build).
//!
//! - `wardline-relay_<version>_<arch>.deb`: `/usr/bin/wardline-relay`, the systemd unit
//!   (`deploy/wardline-relay.service`), `/etc/wardline/relay.toml` (a conffile: an upgrade keeps the
//!   administrator's edits), and maintainer scripts that create the `wardline` system user and
//!   enable the service (the data dir, `/var/lib/wardline-relay`, is systemd's `StateDirectory`);
//! - `wardline_<version>_<arch>.deb`: `/usr/bin/wardline`, the receiver's CLI.

use crate::deps::{run, workspace_root};
use std::path::{Path, PathBuf};
use std::process::Command;

const RELAY_POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd wardline >/dev/null; then
        adduser --system --group --no-create-home --home /var/lib/wardline-relay wardline
    fi
    chown root:wardline /etc/wardline/relay.toml
    chmod 0640 /etc/wardline/relay.toml
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable wardline-relay.service >/dev/null
        systemctl restart wardline-relay.service || true
    fi
fi
"#;

const RELAY_PRERM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl disable --now wardline-relay.service >/dev/null || true
fi
"#;

/// Entry point of `cargo xtask package`.
pub fn run_package(args: &[String]) -> Result<(), String> {
    let debug = match args {
        [] => false,
        [flag] if flag == "--debug" => true,
        _ => return Err("usage: cargo xtask package [--debug]".into()),
    };
    let binaries = crate::deps::build_relay_and_cli(!debug)?;
    let target = crate::deps::target_dir()?;
    let dist = target.join("dist");
    std::fs::create_dir_all(&dist).map_err(|e| e.to_string())?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = architecture()?;
    let deploy = workspace_root().join("deploy");

    let relay = Staging::new(&dist, "wardline-relay")?;
    relay.copy(
        &binaries.join("wardline-relay"),
        "usr/bin/wardline-relay",
        0o755,
    )?;
    relay.copy(
        &deploy.join("wardline-relay.service"),
        "lib/systemd/system/wardline-relay.service",
        0o644,
    )?;
    relay.copy(&deploy.join("relay.toml"), "etc/wardline/relay.toml", 0o640)?;
    relay.write("DEBIAN/conffiles", "/etc/wardline/relay.toml\n", 0o644)?;
    relay.write("DEBIAN/postinst", RELAY_POSTINST, 0o755)?;
    relay.write("DEBIAN/prerm", RELAY_PRERM, 0o755)?;
    relay.control(
        version,
        &arch,
        "adduser, systemd",
        "Wardline relay: clinical notifications from Redis to devices\n \
         Carries notifications hospital backends publish (the HealthHub notification effect,\n \
         plain Redis PUBLISH) to clinicians' and patients' devices over WebSocket and\n \
         Server-Sent Events, with token auth, durable history and gap-free resume.",
    )?;
    let relay_deb = relay.build(&dist.join(format!("wardline-relay_{version}_{arch}.deb")))?;

    let cli = Staging::new(&dist, "wardline")?;
    cli.copy(&binaries.join("wardline"), "usr/bin/wardline", 0o755)?;
    cli.control(
        version,
        &arch,
        "libdbus-1-3",
        "Wardline receiver: clinical notifications on this device\n \
         Subscribes to a Wardline relay, keeps an inbox and raises OS alerts (critical results\n \
         loud and persistent); `wardline listen`, `list`, `ack`.",
    )?;
    let cli_deb = cli.build(&dist.join(format!("wardline_{version}_{arch}.deb")))?;
    println!("{}\n{}", relay_deb.display(), cli_deb.display());
    Ok(())
}

fn architecture() -> Result<String, String> {
    let output = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .map_err(|e| format!("dpkg --print-architecture: {e}"))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A package's file tree before `dpkg-deb --build`.
struct Staging {
    root: PathBuf,
    name: &'static str,
}

impl Staging {
    fn new(dist: &Path, name: &'static str) -> Result<Staging, String> {
        let root = dist.join(format!("{name}.staging"));
        if root.exists() {
            std::fs::remove_dir_all(&root).map_err(|e| e.to_string())?;
        }
        std::fs::create_dir_all(root.join("DEBIAN")).map_err(|e| e.to_string())?;
        Ok(Staging { root, name })
    }

    fn place(&self, to: &str) -> Result<PathBuf, String> {
        let path = self.root.join(to);
        std::fs::create_dir_all(path.parent().expect("a parent")).map_err(|e| e.to_string())?;
        Ok(path)
    }

    fn copy(&self, from: &Path, to: &str, mode: u32) -> Result<(), String> {
        let path = self.place(to)?;
        std::fs::copy(from, &path).map_err(|e| format!("{}: {e}", from.display()))?;
        set_mode(&path, mode)
    }

    fn write(&self, to: &str, text: &str, mode: u32) -> Result<(), String> {
        let path = self.place(to)?;
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        set_mode(&path, mode)
    }

    fn control(
        &self,
        version: &str,
        arch: &str,
        depends: &str,
        description: &str,
    ) -> Result<(), String> {
        let text = format!(
            "Package: {}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: Wardline <wardline@localhost>\n\
             Section: net\nPriority: optional\nDepends: {depends}\nDescription: {description}\n",
            self.name
        );
        self.write("DEBIAN/control", &text, 0o644)
    }

    fn build(&self, deb: &Path) -> Result<PathBuf, String> {
        run(Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group", "-Zxz"])
            .arg(&self.root)
            .arg(deb))?;
        std::fs::remove_dir_all(&self.root).map_err(|e| e.to_string())?;
        Ok(deb.to_owned())
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
}
