//! `cargo xtask <command>`: the project's build, run and test entry points.
//!
//! - `dist`  builds everything into `target/dist/` (`bin/`, `adapters/`, `policies/`, `etc/`)
//! - `run`   = dist, then starts the daemon on its embedded default (extra args are passed on)
//! - `test`  = dist and test fixtures, then every test (unit, integration, BDD, policies)
//! - `fixtures` builds the test fixtures into `target/fixtures/`
//! - `lint`  clippy, warnings denied, on the workspace and the policy components

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

const WASM_TARGET: &str = "wasm32-wasip2";
/// Policy components shipped in dist (crate name → file name).
const POLICIES: &[(&str, &str)] = &[("admission_default", "admission-default.wasm")];
/// Adapter libraries shipped in dist (crate lib name → file name).
const ADAPTERS: &[(&str, &str)] = &[("orchd_adapter_mock", "mock.so")];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR`).
fn target() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn run(what: &str, cmd: &mut Command) -> Result<()> {
    let started = Instant::now();
    eprintln!("==> {what}");
    let status = cmd.status().with_context(|| format!("cannot run {what}"))?;
    eprintln!("<== {what}: {:.1}s", started.elapsed().as_secs_f64());
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Copies by writing a temporary file and renaming it over the target, so a running
/// daemon that has the old file mapped keeps working.
fn install(from: &Path, to: &Path) -> Result<()> {
    let dir = to.parent().expect("target has a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        to.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    std::fs::copy(from, &tmp).with_context(|| format!("copy {}", from.display()))?;
    std::fs::rename(&tmp, to)?;
    Ok(())
}

fn build_wasm(packages: &[&str]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "--target",
        WASM_TARGET,
        "--manifest-path",
    ])
    .arg(root().join("plugins/Cargo.toml"))
    .arg("--target-dir")
    .arg(target().join("wasm"));
    for p in packages {
        cmd.args(["-p", p]);
    }
    run(&format!("build policy components {packages:?}"), &mut cmd)
}

fn wasm_out(lib: &str) -> PathBuf {
    target()
        .join("wasm")
        .join(WASM_TARGET)
        .join("release")
        .join(format!("{lib}.wasm"))
}

fn dist() -> Result<PathBuf> {
    let root = root();
    run(
        "build daemon and adapters (release)",
        cargo().args([
            "build",
            "--release",
            "-p",
            "orchd-host",
            "-p",
            "orchd-adapter-mock",
        ]),
    )?;
    build_wasm(&["admission-default"])?;
    let dist = target().join("dist");
    let release = target().join("release");
    install(
        &release.join("orchestratord"),
        &dist.join("bin/orchestratord"),
    )?;
    for (lib, file) in ADAPTERS {
        install(
            &release.join(format!("lib{lib}.so")),
            &dist.join("adapters").join(file),
        )?;
    }
    for (lib, file) in POLICIES {
        install(&wasm_out(lib), &dist.join("policies").join(file))?;
    }
    let config = std::fs::read_to_string(root.join("host/src/config/default.toml"))?;
    std::fs::create_dir_all(dist.join("etc"))?;
    std::fs::write(dist.join("etc/orchd.toml"), config)?;
    eprintln!("dist ready: {}", dist.display());
    Ok(dist)
}

fn fixtures() -> Result<()> {
    run(
        "build fixture adapters",
        cargo().args(["build", "--release", "-p", "orchd-fixture-abi-mismatch"]),
    )?;
    build_wasm(&["admission-faulty"])?;
    let out = target().join("fixtures");
    install(
        &target().join("release/liborchd_fixture_abi_mismatch.so"),
        &out.join("adapters/abi-mismatch.so"),
    )?;
    install(
        &wasm_out("admission_faulty"),
        &out.join("policies/admission-faulty.wasm"),
    )?;
    Ok(())
}

fn test() -> Result<()> {
    let started = Instant::now();
    let dist = dist()?;
    fixtures()?;
    let root = root();
    run(
        "workspace tests (unit, integration, BDD)",
        cargo()
            .args(["test", "--release", "--workspace", "--exclude", "xtask"])
            .env("ORCHD_DIST", &dist)
            .env("ORCHD_FIXTURES", target().join("fixtures")),
    )?;
    run(
        "policy component unit tests (native)",
        cargo()
            .args(["test", "--release", "--manifest-path"])
            .arg(root.join("plugins/Cargo.toml"))
            .arg("--target-dir")
            .arg(target().join("plugins-native"))
            .args(["-p", "admission-default", "--lib"]),
    )?;
    eprintln!(
        "all tests passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Clippy with warnings denied, on the workspace and on the policy components.
fn lint() -> Result<()> {
    let root = root();
    run(
        "clippy (workspace)",
        cargo().args([
            "clippy",
            "--release",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "clippy (policy components)",
        cargo()
            .args([
                "clippy",
                "--release",
                "--target",
                WASM_TARGET,
                "--manifest-path",
            ])
            .arg(root.join("plugins/Cargo.toml"))
            .arg("--target-dir")
            .arg(target().join("wasm"))
            .args(["--", "-D", "warnings"]),
    )
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("dist") => dist().map(|_| ()),
        Some("fixtures") => fixtures(),
        Some("run") => {
            let dist = dist()?;
            let mut cmd = Command::new(dist.join("bin/orchestratord"));
            cmd.args(args);
            eprintln!("==> starting {}", dist.join("bin/orchestratord").display());
            let status = cmd.status()?;
            if !status.success() {
                bail!("orchestratord exited with {status}");
            }
            Ok(())
        }
        Some("test") => test(),
        Some("lint") => lint(),
        _ => {
            eprintln!("usage: cargo xtask <dist|run|test|fixtures|lint> [args]");
            std::process::exit(2);
        }
    }
}
