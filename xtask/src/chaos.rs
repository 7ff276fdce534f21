//! `cargo xtask chaos [--rounds N]`: relays killed, Redis killed, stalled and cut off, one relay's
//! clock stepped, while notifications flow (what each round does: `bench/src/chaos.rs`). Release
//! builds; needs root for its network namespace; the table goes to `bench/results/chaos.md`, and
//! the task fails if any notification was lost or doubled.

use crate::deps::{ensure_apt, run, workspace_root};
use std::process::Command;

/// Entry point.
pub fn run_chaos(args: &[String]) -> Result<(), String> {
    let rounds = match args {
        [] => "10".to_owned(),
        [flag, n] if flag == "--rounds" && n.parse::<u32>().is_ok() => n.clone(),
        _ => return Err("usage: cargo xtask chaos [--rounds N]".into()),
    };
    ensure_apt(&[
        ("redis-server", "redis-server"),
        ("faketime", "faketime"),
        ("ip", "iproute2"),
    ])?;
    let release = crate::bench::build_release()?;
    let out = workspace_root().join("bench/results/chaos.md");
    run(Command::new(release.join("wardline-chaos"))
        .args(["--rounds", &rounds, "--out"])
        .arg(&out))
}
