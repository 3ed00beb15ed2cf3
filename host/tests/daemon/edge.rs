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
