//! The HTTP edge: slowloris connections are closed by the header-read timeout while normal
//! requests keep being served; an oversized request head gets 431; h2c works.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use orchd_testkit::{DaemonBuilder, config, default_admission, expect_error, mock_pool};

fn cfg() -> String {
    format!(
        "[limits]\nheader_read_timeout_ms = 500\nmax_header_bytes = 16384\n\n{}",
        config(&default_admission("reject"), 8, &[mock_pool("p", "")])
    )
}

fn addr(d: &orchd_testkit::Daemon) -> String {
    d.url("").trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn trickling_clients_are_cut_off_and_others_are_served() {
    let d = DaemonBuilder::new(cfg()).start();
    let target = addr(&d);
    let trickle = tokio::task::spawn_blocking(move || {
        let mut socks: Vec<TcpStream> = (0..200)
            .map(|_| {
                let mut s = TcpStream::connect(&target).unwrap();
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s
            })
            .collect();
        // Keep trickling one header byte at a time; the head never completes.
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1200) {
            for s in &mut socks {
                let _ = s.write_all(b"X");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Every connection was closed by the server (EOF or reset), none answered 200.
        let mut closed = 0;
        for s in &mut socks {
            let mut buf = [0u8; 64];
            closed += match s.read(&mut buf) {
                Ok(0) | Err(_) => 1,
                Ok(n) => usize::from(!String::from_utf8_lossy(&buf[..n]).contains(" 200 ")),
            };
        }
        closed
    });
    // Meanwhile, normal requests are served.
    for _ in 0..20 {
        let (status, _) = d.get_json("/readyz").await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(
        trickle.await.unwrap(),
        200,
        "every slowloris connection was closed"
    );
    assert_eq!(d.get_json("/healthz").await.0, 200);
}

#[tokio::test]
async fn an_oversized_head_gets_431_and_h2c_is_served() {
    let d = DaemonBuilder::new(cfg()).start();
    // Over the limit: 431 with an envelope and the correlation id.
    let big = "y".repeat(20 * 1024);
    let resp = d
        .http
        .get(d.url("/healthz"))
        .header("x-big", big)
        .send()
        .await
        .unwrap();
    let body = expect_error(resp, 431, "PAYLOAD_TOO_LARGE", "request head").await;
    assert!(
        body["message"].as_str().unwrap().contains("16384"),
        "{body}"
    );
    // Far over it, hyper's buffer bound answers first (bare 431) and the connection closes.
    let huge = "y".repeat(64 * 1024);
    let resp = d
        .http
        .get(d.url("/healthz"))
        .header("x-big", huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 431);
    // Still serving.
    let resp = d.http.get(d.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(d.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
}

/// Connections that never send a byte: closed by the first-byte timeout (the header-read
/// timeout), 2 000 of them, while normal requests keep being served.
#[tokio::test]
async fn silent_connections_are_closed_and_others_are_served() {
    let d = DaemonBuilder::new(cfg()).start();
    let target = addr(&d);
    let silent = tokio::task::spawn_blocking(move || {
        let mut socks: Vec<TcpStream> = (0..2000)
            .map(|_| {
                let s = TcpStream::connect(&target).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s
            })
            .collect();
        let started = Instant::now();
        let mut closed = 0;
        for s in &mut socks {
            let mut buf = [0u8; 16];
            closed += usize::from(matches!(s.read(&mut buf), Ok(0) | Err(_)));
        }
        (closed, started.elapsed())
    });
    for _ in 0..20 {
        assert_eq!(d.get_json("/readyz").await.0, 200);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let (closed, took) = silent.await.unwrap();
    assert_eq!(closed, 2000, "every silent connection was closed");
    assert!(
        took < Duration::from_secs(10),
        "closed by the daemon, not the client's timeout"
    );
    assert_eq!(d.get_json("/healthz").await.0, 200);
}

/// A body trickled after complete headers is answered 408 by the body-read timeout.
#[tokio::test]
async fn a_trickled_body_times_out() {
    let d = DaemonBuilder::new(format!(
        "[limits]\nbody_read_timeout_ms = 500\n\n{}",
        config(&default_admission("reject"), 8, &[mock_pool("p", "")])
    ))
    .start();
    let target = addr(&d);
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&target).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            b"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{",
        )
        .unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1500) {
            if s.write_all(b" ").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_read_timeout_ms"), "{answer}");
}

/// One connection over `limits.max_connections` is told 503 and closed; the others work.
#[tokio::test]
async fn connections_past_the_cap_get_503() {
    let d = DaemonBuilder::new(format!(
        "[limits]\nmax_connections = 8\nheader_read_timeout_ms = 5000\n\n{}",
        config(&default_admission("reject"), 8, &[mock_pool("p", "")])
    ))
    .start();
    let target = addr(&d);
    let answer = tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..8)
            .map(|_| TcpStream::connect(&target).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut extra = TcpStream::connect(&target).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = extra.read(&mut buf).unwrap_or(0);
        drop(held);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    // The held connections are gone: new ones are served again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(d.get_json("/healthz").await.0, 200);
}

/// Reads until the daemon closes the connection; `Err` if it is still open after `within`.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> Result<Vec<u8>, String> {
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(got),
            Err(e) => return Err(format!("still open after {within:?}: {e}")),
        }
    }
}

/// h2c: a client that sends the connection preface (so the first-byte timeout is past) and
/// then no request is closed after the header-read timeout; a keep-alive HTTP/1.1
/// connection with no request in progress is closed after the idle timeout; a stream that
/// outlasts the idle timeout is not.
#[tokio::test]
async fn h2c_without_a_request_and_idle_connections_are_closed_streams_are_not() {
    let d = DaemonBuilder::new(format!(
        "[limits]\nheader_read_timeout_ms = 500\nidle_timeout_ms = 700\n\n{}",
        config(
            &default_admission("reject"),
            8,
            &[mock_pool("p", "tokens_per_s = 10.0")]
        )
    ))
    .start();
    let target = addr(&d);
    let (h2, h1) = tokio::task::spawn_blocking(move || {
        let mut h2 = TcpStream::connect(&target).unwrap();
        h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
        h2.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
        let h2 = read_until_closed(&mut h2, Duration::from_secs(8));

        let mut h1 = TcpStream::connect(&target).unwrap();
        h1.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let h1 = read_until_closed(&mut h1, Duration::from_secs(8));
        (h2, h1)
    })
    .await
    .unwrap();
    let h2 = h2.expect("the h2c connection without a request was closed");
    assert!(
        h2.len() >= 9 && h2[3] == 4,
        "the daemon spoke h2 (its SETTINGS came first): {h2:?}"
    );
    let h1 = String::from_utf8(h1.expect("the idle keep-alive connection was closed")).unwrap();
    assert!(h1.starts_with("HTTP/1.1 200"), "served first: {h1}");

    // 12 tokens at 10/s: the stream outlasts the idle timeout and is served whole.
    let id = d
        .submit_ok(&orchd_testkit::task(
            "p",
            serde_json::json!({"max_tokens": 12}),
        ))
        .await;
    let frames = d.stream(&id).await;
    assert_eq!(
        frames.iter().filter(|f| f.event == "token").count(),
        12,
        "{frames:?}"
    );
    assert_eq!(frames.last().unwrap().event, "end");
}
