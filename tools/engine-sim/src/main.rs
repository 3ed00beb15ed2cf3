//! `engine-sim --addr 127.0.0.1:8090 --first-token-ms 20 --inter-token-ms 5 --slots 64`

use std::time::Duration;

use clap::Parser;
use orchd_engine_sim::{SimConfig, app};

#[derive(Parser)]
#[command(name = "engine-sim", version, about)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8090")]
    addr: std::net::SocketAddr,
    #[arg(long, default_value_t = 20)]
    first_token_ms: u64,
    #[arg(long, default_value_t = 5)]
    inter_token_ms: u64,
    /// Tokens per request when the request names none.
    #[arg(long, default_value_t = 16)]
    tokens: u32,
    #[arg(long, default_value_t = 64)]
    slots: u32,
    #[arg(long, default_value_t = 4096)]
    ctx: u32,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let a = Args::parse();
    let config = SimConfig {
        first_token: Duration::from_millis(a.first_token_ms),
        inter_token: Duration::from_millis(a.inter_token_ms),
        default_tokens: a.tokens,
        slots: a.slots.max(1),
        ctx: a.ctx,
    };
    let listener = tokio::net::TcpListener::bind(a.addr).await?;
    eprintln!("engine-sim listening on {}", listener.local_addr()?);
    axum::serve(listener, app(config)).await
}
