//! `loadgen run …`: one load against orchestratord or an engine's `/completion`, printing the
//! report as JSON (exit 1 when a stream broke its frame checks or lost frames).
//! `loadgen bench …`: the benchmark suite (`cargo xtask bench` runs it).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use orchd_loadgen::load::{self, Mix, Progress, Schedule, Spec};
use orchd_loadgen::stream::{Shape, Target};
use orchd_loadgen::suite::{self, Options, Paths};

#[derive(Parser)]
#[command(name = "loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    /// orchestratord's `/v1/tasks` and SSE stream.
    Daemon,
    /// An engine's llama.cpp `/completion` (the direct baseline).
    Llama,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one load and print its report.
    Run {
        #[arg(long, value_enum, default_value = "daemon")]
        target: Kind,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "ORCHD_API_KEY")]
        api_key: Option<String>,
        #[arg(long, default_value = "mock")]
        model_ref: String,
        #[arg(long, default_value = "mock")]
        engine: String,
        /// Streams in flight (closed loop); ignored with --rate.
        #[arg(long, default_value_t = 10)]
        concurrency: usize,
        /// Streams started per second (open loop).
        #[arg(long)]
        rate: Option<f64>,
        /// Open loop: the most streams in flight; further starts are skipped and counted.
        #[arg(long, default_value_t = 10_000)]
        max_in_flight: usize,
        /// Stop after this many streams (closed loop).
        #[arg(long)]
        streams: Option<u64>,
        /// Closed loop: spread the workers' starts over this long (about one stream's
        /// length), so equal streams do not run in lockstep waves.
        #[arg(long, default_value_t = 0)]
        ramp_ms: u64,
        #[arg(long, default_value_t = 10.0)]
        duration_s: f64,
        #[arg(long, default_value_t = 16)]
        tokens: u32,
        #[arg(long, default_value = "tell me about queues")]
        prompt: String,
        /// Check token text is engine-sim's `t{i} `.
        #[arg(long)]
        check_text: bool,
        /// Share of streams that cancel after --after-tokens tokens.
        #[arg(long, default_value_t = 0.0)]
        cancel: f64,
        /// Share of streams that drop their connection after --after-tokens tokens.
        #[arg(long, default_value_t = 0.0)]
        disconnect: f64,
        /// Share of streams that reconnect with Last-Event-ID after --after-tokens tokens.
        #[arg(long, default_value_t = 0.0)]
        reconnect: f64,
        #[arg(long, default_value_t = 2)]
        after_tokens: u32,
        /// Admit only, never attach (admission throughput).
        #[arg(long)]
        submit_only: bool,
        /// Use HTTP/2 without TLS over this many connections.
        #[arg(long)]
        h2: Option<usize>,
    },
    /// Run the benchmark suite.
    Bench {
        /// The dist tree (`cargo xtask dist`).
        #[arg(long, default_value = "target/dist")]
        dist: PathBuf,
        /// The engine-sim binary.
        #[arg(long, default_value = "target/release/engine-sim")]
        sim: PathBuf,
        /// A second placement component to swap with the default.
        #[arg(long)]
        swap_policy: PathBuf,
        /// The policy benchmark's JSON output, to include in the tables.
        #[arg(long)]
        policy_costs: Option<PathBuf>,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Every scenario, scaled down: a smoke run.
        #[arg(long)]
        quick: bool,
        /// Only this scenario.
        #[arg(long, value_parser = ["idle", "floor", "overhead", "admission", "streams", "state", "hot-swap"])]
        only: Option<String>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Run {
            target,
            url,
            api_key,
            model_ref,
            engine,
            concurrency,
            rate,
            max_in_flight,
            streams,
            ramp_ms,
            duration_s,
            tokens,
            prompt,
            check_text,
            cancel,
            disconnect,
            reconnect,
            after_tokens,
            submit_only,
            h2,
        } => {
            let url = url.trim_end_matches('/').to_owned();
            let duration = Duration::from_secs_f64(duration_s);
            let spec = Spec {
                label: "run".into(),
                target: match target {
                    Kind::Daemon => Target::Daemon {
                        base: url,
                        api_key,
                        model_ref,
                        engine,
                    },
                    Kind::Llama => Target::Llama { base: url },
                },
                shape: Shape {
                    prompt,
                    max_tokens: tokens,
                    check_text,
                },
                schedule: match rate {
                    Some(rate) => Schedule::Open {
                        rate,
                        duration,
                        max_in_flight,
                    },
                    None => Schedule::Closed {
                        concurrency,
                        total: streams,
                        duration: streams.is_none().then_some(duration),
                        ramp: Duration::from_millis(ramp_ms),
                    },
                },
                mix: Mix {
                    cancel,
                    disconnect,
                    reconnect,
                    after_tokens,
                    submit_only,
                },
                h2_connections: h2,
            };
            let summary = load::run(spec, Progress::new()).await?.summary();
            println!("{}", serde_json::to_string_pretty(&summary)?);
            if summary.violations > 0 || summary.lost_frames > 0 {
                bail!(
                    "{} frame-check violations, {} lost frames",
                    summary.violations,
                    summary.lost_frames
                );
            }
        }
        Cmd::Bench {
            dist,
            sim,
            swap_policy,
            policy_costs,
            out,
            quick,
            only,
        } => {
            let mut opts = if quick {
                Options::quick()
            } else {
                Options::default()
            };
            opts.only = only;
            let results = suite::run(
                Paths {
                    dist,
                    sim,
                    swap_policy,
                    policy_costs,
                    out: out.clone(),
                },
                opts,
            )
            .await?;
            println!("{}", suite::markdown(&results));
            eprintln!(
                "results: {0}/results.json, {0}/results.md, {0}/overhead.svg",
                out.display()
            );
        }
    }
    Ok(())
}
