//! The daemon's HTTP API as orchctl uses it: JSON in and out, errors as the daemon's
//! envelope (`code`, `message`), and an SSE reader for task streams.

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::Value;

/// Where the daemon is and how to authenticate.
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

/// A failed call: what the daemon said, or why it could not be asked.
#[derive(Debug)]
pub struct CallError(pub String);

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Result<T> = std::result::Result<T, CallError>;

/// One server-sent event.
pub struct Event {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

impl Client {
    pub fn new(base: &str, key: Option<String>) -> Self {
        Self {
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(5))
                .build()
                .expect("an HTTP client"),
            base: base.trim_end_matches('/').to_owned(),
            key,
        }
    }

    /// The daemon's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => req.bearer_auth(key),
            None => req,
        }
    }

    /// Sends a JSON call; a non-2xx answer is an error carrying the daemon's message.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut req = self.request(method.clone(), path);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| CallError(format!("cannot reach {}: {e}", self.base)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| CallError(format!("{method} {path}: reading the answer: {e}")))?;
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(value);
        }
        let why = match (&value["code"], &value["message"]) {
            (Value::String(code), Value::String(message)) => format!("{code}: {message}"),
            _ => value.to_string(),
        };
        Err(CallError(format!(
            "{method} {path}: {} {why}",
            status.as_u16()
        )))
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.call(Method::DELETE, path, None).await
    }

    /// The Prometheus exposition (`GET /metrics`).
    pub async fn metrics(&self) -> Result<String> {
        self.request(Method::GET, "/metrics")
            .send()
            .await
            .map_err(|e| CallError(format!("cannot reach {}: {e}", self.base)))?
            .text()
            .await
            .map_err(|e| CallError(format!("GET /metrics: {e}")))
    }

    /// Reads a task's stream to its end, handing each event to `each`; `after` resumes
    /// after that event id (`Last-Event-ID`).
    pub async fn stream(
        &self,
        task_id: &str,
        after: Option<u64>,
        mut each: impl FnMut(&Event),
    ) -> Result<()> {
        let path = format!("/v1/tasks/{task_id}/stream");
        let mut req = self
            .request(Method::GET, &path)
            .header("accept", "text/event-stream");
        if let Some(id) = after {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| CallError(format!("cannot reach {}: {e}", self.base)))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            return Err(CallError(format!(
                "GET {path}: {status} {}: {}",
                body["code"].as_str().unwrap_or(""),
                body["message"].as_str().unwrap_or("")
            )));
        }
        let mut bytes = resp.bytes_stream();
        let mut buf = String::new();
        let mut pending = (None::<String>, String::new(), String::new());
        while let Some(chunk) = bytes.next().await {
            let chunk = chunk.map_err(|e| CallError(format!("the stream broke: {e}")))?;
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find('\n') {
                let line: String = buf.drain(..=end).collect();
                let line = line.trim_end_matches(['\r', '\n']);
                if line.is_empty() {
                    let (id, event, data) = std::mem::take(&mut pending);
                    if !data.is_empty() {
                        let event = Event {
                            id,
                            event: if event.is_empty() {
                                "message".into()
                            } else {
                                event
                            },
                            data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
                        };
                        let terminal = matches!(event.event.as_str(), "end" | "error");
                        each(&event);
                        if terminal {
                            return Ok(());
                        }
                    }
                } else if let Some(v) = line.strip_prefix("id:") {
                    pending.0 = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("event:") {
                    pending.1 = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !pending.2.is_empty() {
                        pending.2.push('\n');
                    }
                    pending.2.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
        }
        Ok(())
    }
}
