//! A fault-injecting HTTP proxy between an adapter and its engine. The kit points the
//! adapter's `url` at it: requests other than `POST` (health, props, version) pass through;
//! a `POST` (a task's streaming request) gets the fault under test:
//!
//! - `Status500`: the engine answers 500 before anything streams;
//! - `Malformed`, `Oversized`: after the engine's first two chunks, a line that is not
//!   JSON (an SSE `data:` line for an event stream), or a line of 4 MiB, then the end;
//! - `EngineError`: after the first two chunks, an error frame as most engines write one
//!   (`{"error": …}`), then the end;
//! - `Reset`: after the first two chunks, the connection is cut;
//! - `Stall`: after the first two chunks, nothing more, the connection held open.
//!
//! Generic over engines: it needs only that the adapter reaches its engine over HTTP at the
//! config's `url` and streams the answer to a `POST`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Status500,
    Malformed,
    Oversized,
    EngineError,
    Reset,
    Stall,
}

struct Ctx {
    upstream: String,
    fault: Fault,
    http: reqwest::Client,
    /// The `traceparent` (and `tracestate`) of each streaming request, in order.
    seen: Seen,
}

/// The trace headers the proxy saw on streaming requests.
pub type Seen = Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// Starts the proxy in front of `upstream` (`http://host:port`); its base URL.
pub async fn start(upstream: &str, fault: Fault) -> Result<String, String> {
    Ok(start_seeing(upstream, fault).await?.0)
}

/// [`start`], and what the proxy sees of trace headers.
pub async fn start_seeing(upstream: &str, fault: Fault) -> Result<(String, Seen), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("fault proxy: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("fault proxy: {e}"))?;
    let seen = Seen::default();
    let ctx = Arc::new(Ctx {
        upstream: upstream.trim_end_matches('/').to_owned(),
        fault,
        http: reqwest::Client::new(),
        seen: Arc::clone(&seen),
    });
    let app = axum::Router::new().fallback(handle).with_state(ctx);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}"), seen))
}

fn bad_gateway(e: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_GATEWAY, format!("fault proxy: {e}")).into_response()
}

async fn handle(State(ctx): State<Arc<Ctx>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let streaming = parts.method == axum::http::Method::POST;
    if streaming {
        let header = |n: &str| {
            parts
                .headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        ctx.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((header("traceparent"), header("tracestate")));
    }
    if streaming && ctx.fault == Fault::Status500 {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "application/json")],
            r#"{"error": "injected by the conformance kit: internal server error"}"#,
        )
            .into_response();
    }
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
        return bad_gateway("request body too large");
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let mut upstream = ctx.http.request(method, format!("{}{path}", ctx.upstream));
    for name in ["content-type", "accept", "authorization"] {
        if let Some(v) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
            upstream = upstream.header(name, v);
        }
    }
    let resp = match upstream.body(body).send().await {
        Ok(r) => r,
        Err(e) => return bad_gateway(e),
    };
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    if !streaming || !status.is_success() {
        return match resp.bytes().await {
            Ok(b) => (status, [("content-type", content_type)], b).into_response(),
            Err(e) => bad_gateway(e),
        };
    }
    let sse = content_type.contains("event-stream");
    let fault = ctx.fault;
    let passed = resp
        .bytes_stream()
        .take(2)
        .map(|c| c.map_err(std::io::Error::other));
    let injected: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>> =
        match fault {
            Fault::Malformed => {
                futures_util::stream::iter([Ok(bytes::Bytes::from_static(if sse {
                    b"data: {\"injected by the conformance kit\": {broken\n\n"
                } else {
                    b"{\"injected by the conformance kit\": {broken\n"
                }))])
                .boxed()
            }
            Fault::EngineError => {
                futures_util::stream::iter([Ok(bytes::Bytes::from_static(if sse {
                    b"data: {\"error\": \"injected by the conformance kit: out of memory\"}\n\n"
                } else {
                    b"{\"error\": \"injected by the conformance kit: out of memory\"}\n"
                }))])
                .boxed()
            }
            Fault::Oversized => futures_util::stream::iter([Ok(bytes::Bytes::from(format!(
                "{}{}\n\n",
                if sse { "data: " } else { "" },
                "x".repeat(4 << 20)
            )))])
            .boxed(),
            Fault::Reset => futures_util::stream::iter([Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "cut by the conformance kit",
            ))])
            .boxed(),
            Fault::Stall => futures_util::stream::pending().boxed(),
            Fault::Status500 => futures_util::stream::empty().boxed(),
        };
    (
        status,
        [("content-type", content_type)],
        Body::from_stream(passed.chain(injected)),
    )
        .into_response()
}
