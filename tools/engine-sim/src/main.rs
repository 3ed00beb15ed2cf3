//! `engine-sim --addr 127.0.0.1:8090 --first-token-ms 20 --inter-token-ms 5 --slots 64 --threads 1`

use std::time::Duration;

use axum::serve::ListenerExt;
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
    /// Runtime threads: 1 serves everything on one core; 0 uses one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> std::io::Result<()> {
    let a = Args::parse();
    let runtime = match a.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    runtime.block_on(serve(a))
}

async fn serve(a: Args) -> std::io::Result<()> {
    let config = SimConfig {
        first_token: Duration::from_millis(a.first_token_ms),
        inter_token: Duration::from_millis(a.inter_token_ms),
        default_tokens: a.tokens,
        slots: a.slots.max(1),
        ctx: a.ctx,
    };
    let listener = tokio::net::TcpListener::bind(a.addr).await?;
    eprintln!("engine-sim listening on {}", listener.local_addr()?);
    // Without TCP_NODELAY a small token frame waits for the ACK of the previous write
    // (Nagle + delayed ACK: 40 ms on Linux), which would swamp every measurement.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app(config)).await
}
