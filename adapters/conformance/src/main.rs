//! `orchd-adapter-conformance LIB.so --config JSON`: checks an adapter library the way the
//! daemon will use it. Exit 0 when every check passes (skipped ones do not fail), 1 else.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use orchd_adapter_conformance::{Plan, run};

#[derive(Parser)]
#[command(name = "orchd-adapter-conformance", version, about)]
struct Args {
    /// The adapter library (`.so`).
    lib: PathBuf,
    /// A replica config (JSON) under which the engine serves.
    #[arg(long)]
    config: String,
    /// A config that makes `submit` panic inside the adapter (checks containment).
    #[arg(long)]
    panic_config: Option<String>,
    /// A config pointing at an engine that is not there (checks classified failures).
    #[arg(long)]
    unreachable_config: Option<String>,
    /// A config under which the adapter panics mid-stream in its own thread.
    #[arg(long)]
    panic_mid_stream_config: Option<String>,
    #[arg(long, default_value = "The quick brown fox")]
    prompt: String,
    #[arg(long, default_value_t = 8)]
    max_tokens: u32,
    /// Seconds a stream may take.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let plan = Plan {
        config: args.config,
        prompt: args.prompt,
        max_tokens: args.max_tokens,
        panic_config: args.panic_config,
        unreachable_config: args.unreachable_config,
        panic_mid_stream_config: args.panic_mid_stream_config,
        timeout: Duration::from_secs(args.timeout_s),
    };
    let report = run(&args.lib, &plan).await;
    print!("{}", report.render());
    if report.passed() {
        println!("conformant: {}", args.lib.display());
        ExitCode::SUCCESS
    } else {
        println!("NOT conformant: {}", args.lib.display());
        ExitCode::FAILURE
    }
}
