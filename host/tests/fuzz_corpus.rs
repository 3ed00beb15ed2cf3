//! Every seed (and every saved finding) of the host's fuzz targets, replayed as an ordinary
//! test: what once broke a parser stays fixed. The fuzzers themselves run from
//! `cargo xtask fuzz TARGET` (cargo-fuzz), not here.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn replay(target: &str, run: fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| run(&bytes));
        assert!(outcome.is_ok(), "{target}: {} panicked", path.display());
    }
}

#[test]
fn task_request_corpus() {
    replay("task_request", orchd_host::fuzzing::task_request);
}

#[test]
fn openai_request_corpus() {
    replay("openai_request", orchd_host::fuzzing::openai_request);
}

#[test]
fn last_event_id_corpus() {
    replay("last_event_id", orchd_host::fuzzing::last_event_id);
}

#[test]
fn config_file_corpus() {
    replay("config_file", orchd_host::fuzzing::config_file);
}

/// The seeds say something: the valid ones are accepted, so a fuzzer starting from them
/// explores past the parser's first refusal.
#[test]
fn the_valid_seeds_are_valid() {
    use orchd_contracts::TaskRequest;
    for name in [
        "completion.json",
        "chat-tools.json",
        "embedding.json",
        "placement.json",
    ] {
        let (_, bytes) = corpus("task_request")
            .into_iter()
            .find(|(p, _)| p.ends_with(name))
            .unwrap();
        let req: TaskRequest = serde_json::from_slice(&bytes).unwrap();
        orchd_host::admit::validate_request(&req)
            .unwrap_or_else(|e| panic!("{name}: {:?}", e.envelope));
    }
    let (_, bytes) = corpus("last_event_id")
        .into_iter()
        .find(|(p, _)| p.ends_with("seed-03"))
        .unwrap();
    assert_eq!(
        orchd_host::api::fuzzing::last_event_id(&bytes).unwrap(),
        u64::MAX
    );
    let (_, max) = corpus("last_event_id")
        .into_iter()
        .find(|(p, _)| p.ends_with("seed-04"))
        .unwrap();
    assert!(
        orchd_host::api::fuzzing::last_event_id(&max).is_err(),
        "u64::MAX has no next frame: refused, never wrapped to 0"
    );
}
