//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use crate::deps::{ensure_apt, ensure_python_websockets, run as run_command, workspace_root};
use std::process::Command;

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

/// Installs the test dependencies, then runs fmt, clippy, the demo smoke run and every test.
pub fn run_all() -> Result<(), String> {
    ensure_apt(&[
        ("redis-server", "redis-server"),
        ("redis-cli", "redis-tools"),
    ])?;
    ensure_python_websockets()?;
    run_command(cargo().args(["fmt", "--all", "--check"]))?;
    run_command(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The end-to-end tests start the real binaries: build them first.
    run_command(cargo().args(["build", "--workspace", "--bins"]))?;
    crate::demo::run(&["--smoke".to_owned()])?;
    run_command(cargo().args(["test", "--workspace"]))
}

/// Entry point of `cargo xtask test`.
pub fn run(args: &[String]) -> Result<(), String> {
    if let Some(extra) = args.first() {
        return Err(format!(
            "unexpected argument {extra:?}: `cargo xtask test` takes none"
        ));
    }
    run_all()
}
