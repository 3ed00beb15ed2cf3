//! The HTTP server: hyper-util's auto builder (HTTP/1.1 and h2c), with a first-byte and a
//! header-read timeout against silent and slow connections, a first-request deadline and
//! an idle timeout that also hold for h2c (whose preface is a byte, and whose requests
//! hyper's header timeout does not cover), a bound on the request head (431 past it), a cap
//! on open connections (503 past it) and on HTTP/2 streams, `TCP_NODELAY` on every
//! accepted socket, and graceful shutdown.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// How long connections get to finish after the shutdown future resolves.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

pub struct Limits {
    /// Also the first-byte timeout, and the time a connection (HTTP/1.1 or h2c) gets to
    /// send its first complete request head: one that sends none is closed after it.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub max_h2_streams: u32,
}

/// What a connection past the cap is told before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 95\r\n\r\n{\"code\":\"POOL_UNAVAILABLE\",\"message\":\"too many open connections; retry later\",\"retriable\":true}";

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and lets open
/// connections finish (bounded).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The router answers heads over the limit with an envelope; hyper's buffer is the
        // hard stop beyond that.
        .max_buf_size(limits.max_header_bytes.saturating_mul(2).max(16 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_h2_streams)
        // A peer that stopped answering (not one that is merely quiet) is found by PING.
        .keep_alive_interval(Some(limits.idle_timeout.min(Duration::from_secs(30))))
        .keep_alive_timeout(Duration::from_secs(20));
    let graceful = GracefulShutdown::new();
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let first_byte = limits.header_read_timeout;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Ok(permit) = std::sync::Arc::clone(&open).try_acquire_owned() else {
                    tracing::warn!(%peer, max = limits.max_connections, "connection refused: limits.max_connections reached");
                    tokio::spawn(async move {
                        use tokio::io::AsyncWriteExt;
                        let mut stream = stream;
                        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(OVER_CAPACITY)).await;
                    });
                    continue;
                };
                let activity = Activity::new();
                let service = Tracked {
                    inner: TowerToHyperService::new(app.clone()),
                    activity: std::sync::Arc::clone(&activity),
                };
                let stream = FirstByte::new(stream, first_byte);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let conn = graceful.watch(conn.into_owned());
                let (first_request, idle) = (limits.header_read_timeout, limits.idle_timeout);
                tokio::spawn(async move {
                    let _permit = permit;
                    tokio::select! {
                        ended = conn => if let Err(e) = ended {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        },
                        why = activity.idle(first_request, idle) => {
                            // No request is in progress: dropping the connection loses nothing.
                            tracing::debug!(%peer, why, "connection closed");
                        }
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(CLOSE_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the close grace period; stopping anyway");
    }
}

/// A connection's requests in progress and when it last had one, for its deadlines.
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Whether any request head arrived yet.
    served: std::sync::atomic::AtomicBool,
    last: std::sync::Mutex<tokio::time::Instant>,
    changed: tokio::sync::Notify,
}

impl Activity {
    fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            served: std::sync::atomic::AtomicBool::new(false),
            last: std::sync::Mutex::new(tokio::time::Instant::now()),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn begin(self: &std::sync::Arc<Self>) -> InFlight {
        use std::sync::atomic::Ordering;
        self.served.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        InFlight(std::sync::Arc::clone(self))
    }

    /// Resolves when the connection should be closed: no request head within
    /// `first_request` of accepting it, or no request in progress for `idle`.
    async fn idle(&self, first_request: Duration, idle: Duration) -> &'static str {
        use std::sync::atomic::Ordering;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) > 0 {
                notified.await;
                continue;
            }
            let served = self.served.load(Ordering::Acquire);
            let since = *self.last.lock().unwrap_or_else(|p| p.into_inner());
            let limit = if served { idle } else { first_request };
            tokio::select! {
                () = tokio::time::sleep_until(since + limit) => {
                    if self.in_flight.load(Ordering::Acquire) == 0
                        && *self.last.lock().unwrap_or_else(|p| p.into_inner()) == since
                        && self.served.load(Ordering::Acquire) == served
                    {
                        return if served {
                            "idle: no request within limits.idle_timeout_ms"
                        } else {
                            "no request head within limits.header_read_timeout_ms"
                        };
                    }
                }
                () = &mut notified => {}
            }
        }
    }
}

/// One request in progress, until its response body has been sent or dropped.
struct InFlight(std::sync::Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

/// The router as a hyper service that counts a request in progress from its head to the
/// end of its response body.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: std::sync::Arc<Activity>,
}

impl<S, B> hyper::service::Service<hyper::Request<B>> for Tracked<S>
where
    S: hyper::service::Service<hyper::Request<B>, Response = axum::response::Response>,
    S::Future: Send + 'static,
{
    type Response = axum::response::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<axum::response::Response, S::Error>> + Send>>;

    fn call(&self, req: hyper::Request<B>) -> Self::Future {
        let guard = self.activity.begin();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| {
                axum::body::Body::new(GuardedBody {
                    body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// A response body that holds its request's [`InFlight`] until it is done or dropped.
struct GuardedBody {
    body: axum::body::Body,
    _guard: InFlight,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A socket that fails its read with `TimedOut` when no byte arrived within the first-byte
/// timeout: a connection that never sends anything is closed (hyper's own header timeout
/// starts only once it reads a request, and protocol detection reads without one).
struct FirstByte<S> {
    inner: S,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FirstByte<S> {
    fn new(inner: S, within: Duration) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstByte<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.deadline = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the connection sent nothing within the first-byte timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstByte<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_over_capacity_answer_is_a_whole_http_response() {
        let text = std::str::from_utf8(super::OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["retriable"], true);
    }
}
