//! The simulator speaks both protocols as the adapters expect them.

use orchd_engine_sim::{SimConfig, app};
use serde_json::{Value, json};

async fn serve() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = SimConfig {
        first_token: std::time::Duration::from_millis(2),
        inter_token: std::time::Duration::from_millis(1),
        ..SimConfig::default()
    };
    tokio::spawn(async move { axum::serve(listener, app(config)).await });
    format!("http://{addr}")
}

fn data_lines(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect()
}

#[tokio::test]
async fn llama_completion_streams_n_tokens_then_stop() {
    let url = serve().await;
    let http = reqwest::Client::new();
    let body = http
        .post(format!("{url}/completion"))
        .json(&json!({"prompt": "hello", "n_predict": 5, "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let frames: Vec<Value> = data_lines(&body)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len(), 6);
    assert!(
        frames[..5]
            .iter()
            .all(|f| f["stop"] == false && f["content"].is_string())
    );
    assert_eq!(frames[5]["stop"], true);
    assert_eq!(frames[5]["tokens_predicted"], 5);
    let props: Value = http
        .get(format!("{url}/props"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(props["total_slots"], 64);
}

#[tokio::test]
async fn openai_chat_streams_chunks_and_done() {
    let url = serve().await;
    let body = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"model": "sim", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines = data_lines(&body);
    assert_eq!(lines.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = lines[..lines.len() - 1]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        chunks
            .iter()
            .filter(|c| c["choices"][0]["delta"]["content"].is_string())
            .count(),
        3
    );
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[3]["usage"]["completion_tokens"], 3);
}
