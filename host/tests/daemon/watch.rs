//! The plugin watchers rest unless a plugin file changes: reading the files from outside
//! (a backup, a checksum, another daemon loading the same directory) sets off no rescan and
//! no hashing; a real change rescans and hashes only the file that changed.

use std::path::Path;
use std::time::{Duration, Instant};

use orchd_testkit::{
    Daemon, DaemonBuilder, config, default_admission, dist_dir, mock_pool, swap_file,
};

/// Longer than both watchers' debounce (adapters 300 ms, policies 50 ms) on a loaded machine.
const QUIET: Duration = Duration::from_millis(1500);

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

fn read_every_file(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.is_empty());
    }
}

async fn counters(d: &Daemon, directory: &str) -> (f64, f64) {
    (
        d.metric_sum("plugin_rescans_total", &[("directory", directory)])
            .await,
        d.metric_sum("plugin_files_hashed_total", &[("directory", directory)])
            .await,
    )
}

/// Waits until the daemon has rescanned `directory` more than `before` times.
async fn wait_rescan(d: &Daemon, directory: &str, before: f64) -> (f64, f64) {
    let started = Instant::now();
    loop {
        let now = counters(d, directory).await;
        if now.0 > before {
            return now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no {directory} rescan after a change; log:\n{}",
            d.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reading_plugin_files_sets_off_nothing_and_a_change_rehashes_one_file() {
    let shared = tempfile::tempdir().unwrap();
    let adapters = shared.path().join("adapters");
    let policies = shared.path().join("policies");
    copy_dir(&dist_dir().join("adapters"), &adapters);
    copy_dir(&dist_dir().join("policies"), &policies);
    let start = || {
        DaemonBuilder::new(config(
            &default_admission("reject"),
            8,
            &[mock_pool("p", "slots = 1")],
        ))
        .adapters_dir(&adapters)
        .policies_dir(&policies)
        .start()
    };
    // Two daemons on one host sharing their plugin directories: the second one's start
    // reads every library and component the first one watches.
    let first = start();
    let second = start();
    read_every_file(&adapters);
    read_every_file(&policies);
    let _ = std::process::Command::new("sha256sum")
        .args(
            std::fs::read_dir(&adapters)
                .unwrap()
                .map(|e| e.unwrap().path()),
        )
        .output();
    tokio::time::sleep(QUIET).await;
    for d in [&first, &second] {
        for directory in ["adapter", "policy"] {
            assert_eq!(
                counters(d, directory).await.0,
                0.0,
                "a read of the {directory} files set off a rescan"
            );
        }
    }

    // A new library: one rescan, and only the new file is read.
    let (_, adapter_hashed) = counters(&first, "adapter").await;
    swap_file(
        &dist_dir().join("adapters/mock.so"),
        &adapters.join("mock-copy.so"),
    );
    let (_, hashed) = wait_rescan(&first, "adapter", 0.0).await;
    assert_eq!(
        hashed - adapter_hashed,
        1.0,
        "only the new library is hashed"
    );

    // A policy replaced by the same content (copy then rename, a new inode): one rescan,
    // one file hashed, nothing reloaded.
    let reloads = first.metric_sum("policy_reloads_total", &[]).await;
    let (_, policy_hashed) = counters(&first, "policy").await;
    let placement = policies.join("placement-default.wasm");
    let copy = shared.path().join("placement-copy.wasm");
    std::fs::copy(&placement, &copy).unwrap();
    swap_file(&copy, &placement);
    let (_, hashed) = wait_rescan(&first, "policy", 0.0).await;
    assert_eq!(
        hashed - policy_hashed,
        1.0,
        "only the replaced file is hashed"
    );
    assert_eq!(
        first.metric_sum("policy_reloads_total", &[]).await,
        reloads,
        "the same content is not reloaded"
    );
}
