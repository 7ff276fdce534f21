//! `cargo xtask <task>`: the project's two commands and its benchmarks.
//!
//! - `demo [--keep-data]`: the relay on its embedded broker, a demo publisher, the receivers' view
//!   in the terminal and, with a display, the app;
//! - `test`: installs what the tests need, then formatting, lints and every test;
//! - `bench relay`: the relay's memory, broadcast and throughput benchmark, into `bench/results/relay.md`;
//!   `bench receipts`: publishing under a flood of receipt frames, into `bench/results/receipts.md`;
//! - `chaos [--rounds N]`: relays and Redis broken while notifications flow, into `bench/results/chaos.md`;
//! - `soak [--minutes N]`: a relay under steady load for a long time, into `bench/results/soak.md`;
//! - `package [--debug]`: Debian packages of the relay and the CLI, into `<target dir>/dist/`.

mod bench;
mod chaos;
mod demo;
mod demo_check;
mod deps;
mod package;
mod soak;
mod test;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::run(&args[1..]),
        Some("test") => test::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("chaos") => chaos::run_chaos(&args[1..]),
        Some("soak") => soak::run_soak(&args[1..]),
        Some("package") => package::run_package(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask demo [--keep-data] [--smoke] | test | bench relay|client|app|receipts | chaos [--rounds N] | soak [--minutes N] | package [--debug]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}
