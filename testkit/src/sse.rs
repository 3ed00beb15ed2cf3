//! A minimal SSE reader for tests: frames with `id`, `event` and `data`; comments counted.

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct SseFrame {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

pub struct SseReader {
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
    /// Comment lines seen (e.g. `: keep-alive`).
    pub comments: usize,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> Self {
        Self {
            body: resp.bytes_stream().boxed(),
            buf: String::new(),
            comments: 0,
        }
    }

    /// The next frame, or `None` when the server closed the stream.
    pub async fn next_frame(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut id = None;
                let mut event = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if data.is_empty() && id.is_none() {
                    continue; // a comment-only block
                }
                let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(SseFrame { id, event, data });
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                Some(Err(_)) | None => return None,
            }
        }
    }
}
