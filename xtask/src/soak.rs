//! `cargo xtask soak [--minutes N]`: one relay under steady load for N minutes (30 by default): its
//! memory slope and file descriptors (how: `bench/src/soak.rs`). Release builds; the table goes to
//! `bench/results/soak.md`, and the task fails if either grew.

use crate::deps::{ensure_apt, run, workspace_root};
use std::process::Command;

/// Entry point.
pub fn run_soak(args: &[String]) -> Result<(), String> {
    let minutes = match args {
        [] => "30".to_owned(),
        [flag, n] if flag == "--minutes" && n.parse::<f64>().is_ok_and(|m| m > 0.0) => n.clone(),
        _ => return Err("usage: cargo xtask soak [--minutes N]".into()),
    };
    ensure_apt(&[("redis-server", "redis-server")])?;
    let release = crate::bench::build_release()?;
    let out = workspace_root().join("bench/results/soak.md");
    run(Command::new(release.join("wardline-soak"))
        .args(["--minutes", &minutes, "--out"])
        .arg(&out))
}
