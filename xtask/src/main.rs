//! `cargo xtask <task>`: the project's two commands and its benchmarks.
//!
//! - `demo`: the relay on its embedded broker, a demo publisher and a terminal view of what a
//!   subscriber receives;
//! - `test`: installs what the tests need, then formatting, lints and every test;
//! - `bench relay`: the relay's memory, broadcast and throughput benchmark, into `bench/results/relay.md`.

mod bench;
mod demo;
mod deps;
mod test;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::run(&args[1..]),
        Some("test") => test::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask demo [--smoke] | cargo xtask test | cargo xtask bench relay"
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
