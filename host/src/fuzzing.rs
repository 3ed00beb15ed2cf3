//! Fuzzing entry points: what the `fuzz/` targets drive, and what `cargo xtask test`
//! replays every seed corpus through (`host/tests/fuzz_corpus.rs`). Each takes arbitrary
//! bytes and must neither panic nor hang; errors are the expected outcome for most input.

use std::path::Path;

use clap::Parser;

use crate::config::{Cli, Settings};

/// A `POST /v1/tasks` body: parsed, then validated (chat included).
pub fn task_request(data: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<orchd_contracts::TaskRequest>(data) {
        let _ = crate::admit::validate_request(&req);
    }
}

/// An OpenAI door body. The first byte picks the endpoint (chat, completions,
/// embeddings); the rest is the body.
pub fn openai_request(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let path = ["chat", "completions", "embeddings"][usize::from(which % 3)];
    crate::api::fuzzing::openai_request(path, body);
}

/// A `Last-Event-ID` header value.
pub fn last_event_id(data: &[u8]) {
    if let Ok(next) = crate::api::fuzzing::last_event_id(data) {
        assert!(next >= 1, "the frame after a seen one");
    }
}

/// A config file's text, through everything `--config` does but reading the file.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cli = Cli::try_parse_from(["orchestratord"]).expect("no arguments parse");
    let _ = Settings::from_text(text, &cli, Path::new("/opt/orchd"), "fuzz".into());
}
