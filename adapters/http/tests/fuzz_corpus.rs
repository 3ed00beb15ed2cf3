//! The `sse_stream` fuzz target's seeds (and saved findings), replayed as an ordinary test.
//! The fuzzer runs from `cargo xtask fuzz sse_stream`.

#[test]
fn sse_stream_corpus() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/sse_stream");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| orchd_adapter_http::fuzzing::sse_stream(&bytes));
        assert!(outcome.is_ok(), "{} panicked", path.display());
        n += 1;
    }
    assert!(n > 0, "{} has no seeds", dir.display());
}
