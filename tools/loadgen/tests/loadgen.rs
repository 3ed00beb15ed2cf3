//! The load generator against the engine simulator directly, against the real daemon (with
//! cancels, disconnects and reconnects), and against servers that break the stream rules,
//! which its checks must catch.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use orchd_engine_sim::SimConfig;
use orchd_loadgen::load::{self, Mix, Progress, Schedule, Spec};
use orchd_loadgen::stream::{Shape, Target};
use orchd_testkit::{DaemonBuilder, config, default_admission};

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn sim(inter_token_ms: u64) -> Router {
    orchd_engine_sim::app(SimConfig {
        first_token: Duration::from_millis(2),
        inter_token: Duration::from_millis(inter_token_ms),
        slots: 64,
        ..SimConfig::default()
    })
}

fn spec(target: Target, tokens: u32, total: u64, mix: Mix) -> Spec {
    Spec {
        label: "test".into(),
        target,
        shape: Shape {
            prompt: "a prompt".into(),
            max_tokens: tokens,
            check_text: true,
        },
        schedule: Schedule::Closed {
            concurrency: 8,
            total: Some(total),
            duration: None,
            ramp: Duration::ZERO,
        },
        mix,
        h2_connections: None,
    }
}

#[tokio::test]
async fn direct_streams_against_the_simulator_pass_every_check() {
    let base = serve(sim(1)).await;
    let r = load::run(
        spec(Target::Llama { base }, 6, 40, Mix::default()),
        Progress::new(),
    )
    .await
    .unwrap()
    .summary();
    assert_eq!((r.started, r.ended, r.failed), (40, 40, 0), "{r:?}");
    assert_eq!((r.violations, r.lost_frames), (0, 0), "{r:?}");
    assert_eq!(r.tokens, 240);
    assert_eq!(r.first_token.count, 40);
    assert_eq!(r.inter_token.count, 40 * 5);
}

/// Runs 60 streams of 10 tokens through a daemon whose pool is the simulator.
async fn through_daemon(cancel_on_disconnect: bool, mix: Mix) -> load::Summary {
    let base = serve(sim(10)).await;
    let pool = format!(
        "\n[[pools]]\nid = \"sim\"\nadapter = \"llamacpp\"\nmodel_ref = \"sim\"\n\n[[pools.replicas]]\nid = \"sim-0\"\nconfig = {{ url = \"{base}\" }}\n"
    );
    let d = DaemonBuilder::new(format!(
        "[sessions]\nmax_turns = 1000\n\n[stream]\ncancel_on_disconnect = {cancel_on_disconnect}\n\n{}",
        config(&default_admission("reject"), 256, &[pool])
    ))
    .start();
    for _ in 0..100 {
        if d.get_json("/v1/pools/sim/health").await.1["ready"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let target = Target::Daemon {
        base: d.url(""),
        api_key: None,
        model_ref: "sim".into(),
        engine: "llamacpp".into(),
    };
    let r = load::run(spec(target, 10, 60, mix), Progress::new())
        .await
        .unwrap()
        .summary();
    assert_eq!((r.started, r.admitted, r.failed), (60, 60, 0), "{r:?}");
    assert_eq!(r.violations, 0, "{:?}", r.violation_samples);
    assert_eq!(r.lost_frames, 0, "{r:?}");
    assert_eq!(r.first_token.count, 60);
    r
}

#[tokio::test]
async fn cancels_disconnects_and_reconnects_through_the_daemon_keep_every_stream_whole() {
    let r = through_daemon(
        true,
        Mix {
            cancel: 0.2,
            disconnect: 0.2,
            reconnect: 0.2,
            after_tokens: 3,
            submit_only: false,
        },
    )
    .await;
    for action in ["cancel", "disconnect", "reconnect"] {
        assert!(r.actions.get(action).copied().unwrap_or(0) >= 8, "{r:?}");
    }
    // With cancel_on_disconnect (the default) a dropped stream cancels its task only when
    // no reader comes back within the reconnect grace: a reconnecting reader resumes and
    // reads its task to a normal end; only explicit cancels end canceled.
    assert_eq!(r.canceled, r.actions["cancel"], "{r:?}");
    assert_eq!(r.ended, 60 - r.actions["disconnect"], "{r:?}");
}

#[tokio::test]
async fn a_reconnecting_reader_gets_every_frame_once_when_disconnects_do_not_cancel() {
    let r = through_daemon(
        false,
        Mix {
            reconnect: 0.5,
            after_tokens: 4,
            ..Mix::default()
        },
    )
    .await;
    assert!(r.actions["reconnect"] >= 25, "{r:?}");
    assert_eq!((r.ended, r.canceled, r.tokens), (60, 0, 600), "{r:?}");
}

/// A llama.cpp-shaped server whose tokens skip one: the text check must catch it.
#[tokio::test]
async fn a_gap_in_an_engine_stream_is_a_violation() {
    let app = Router::new().route(
        "/completion",
        post(|| async {
            let body = "data: {\"content\":\"t0 \",\"stop\":false}\n\n\
                        data: {\"content\":\"t2 \",\"stop\":false}\n\n\
                        data: {\"content\":\"\",\"stop\":true,\"tokens_predicted\":2}\n\n";
            ([("content-type", "text/event-stream")], body)
        }),
    );
    let base = serve(app).await;
    let mut s = spec(Target::Llama { base }, 2, 1, Mix::default());
    s.schedule = Schedule::Closed {
        concurrency: 1,
        total: Some(1),
        duration: None,
        ramp: Duration::ZERO,
    };
    let r = load::run(s, Progress::new()).await.unwrap().summary();
    assert_eq!(r.violations, 1, "{r:?}");
    assert!(r.violation_samples[0].contains("token 1"), "{r:?}");
}

/// A daemon-shaped server whose stream skips a frame id, repeats a token index and closes
/// without a terminal frame: three violations.
#[tokio::test]
async fn broken_daemon_streams_are_violations() {
    let app = Router::new()
        .route(
            "/v1/tasks",
            post(|| async {
                (
                    axum::http::StatusCode::ACCEPTED,
                    axum::Json(serde_json::json!({"task_id": "t1", "streams": {"sse": "/v1/tasks/t1/stream"}})),
                )
            }),
        )
        .route(
            "/v1/tasks/t1/stream",
            get(|| async {
                let body = "id: 0\nevent: started\ndata: {}\n\n\
                            id: 1\nevent: token\ndata: {\"t\":\"t0 \",\"i\":0}\n\n\
                            id: 3\nevent: token\ndata: {\"t\":\"t1 \",\"i\":1}\n\n\
                            id: 4\nevent: token\ndata: {\"t\":\"t1 \",\"i\":1}\n\n";
                ([("content-type", "text/event-stream")], Body::from(body)).into_response()
            }),
        );
    let base = serve(app).await;
    let target = Target::Daemon {
        base,
        api_key: None,
        model_ref: "m".into(),
        engine: "e".into(),
    };
    let mut s = spec(target, 3, 1, Mix::default());
    s.shape.check_text = false;
    let r = load::run(s, Progress::new()).await.unwrap().summary();
    let v = r.violation_samples.join(" | ");
    assert_eq!(r.violations, 3, "{v}");
    assert!(v.contains("frame id 3 where 2 was due"), "{v}");
    assert!(v.contains("token index 1 where 2 was due"), "{v}");
    assert!(v.contains("without a terminal frame"), "{v}");
}
