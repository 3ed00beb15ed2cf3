//! `cargo xtask <command>`: the project's build, run and test entry points.
//!
//! - `dist`  builds everything into `target/dist/` (`bin/`, `adapters/`, `policies/`, `etc/`)
//! - `run`   = dist, then starts the daemon on its embedded default (extra args are passed on)
//! - `test`  = dist and test fixtures, then every test (unit, integration, BDD, policies)
//! - `fixtures` builds the test fixtures into `target/fixtures/`
//! - `lint`  clippy, warnings denied, on the workspace and the policy components
//! - `new-policy NAME [--out DIR]` creates a policy crate from `plugins/template`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

const WASM_TARGET: &str = "wasm32-wasip2";
/// Policy components shipped in dist (crate name → file name).
const POLICIES: &[(&str, &str)] = &[
    ("admission_default", "admission-default.wasm"),
    ("budget_default", "budget-default.wasm"),
    ("placement_default", "placement-default.wasm"),
    ("error_mapping_default", "error-mapping-default.wasm"),
];
/// Adapter libraries shipped in dist (crate lib name → file name).
const ADAPTERS: &[(&str, &str)] = &[
    ("orchd_adapter_mock", "mock.so"),
    ("orchd_adapter_llamacpp", "llamacpp.so"),
    ("orchd_adapter_openai", "openai.so"),
];

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

/// What `dist` compiles besides the shipped artifacts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The daemon and adapters only (`run`).
    Product,
    /// Every workspace target, tests included, in one invocation, so features resolve
    /// once and `cargo test` afterwards reuses every artifact instead of rebuilding.
    Everything,
}

fn dist(scope: Scope) -> Result<PathBuf> {
    let root = root();
    match scope {
        Scope::Product => run(
            "build daemon and adapters (release)",
            cargo().args([
                "build",
                "--release",
                "-p",
                "orchd-host",
                "-p",
                "orchd-adapter-mock",
                "-p",
                "orchd-adapter-llamacpp",
                "-p",
                "orchd-adapter-openai",
            ]),
        )?,
        Scope::Everything => run(
            "build the workspace and its tests (release)",
            cargo().args([
                "build",
                "--release",
                "--workspace",
                "--exclude",
                "xtask",
                "--all-targets",
            ]),
        )?,
    }
    build_wasm(
        &POLICIES
            .iter()
            .map(|(_, file)| file.trim_end_matches(".wasm"))
            .collect::<Vec<_>>(),
    )?;
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
    build_wasm(&[
        "placement-fastest",
        "admission-faulty",
        "admission-accept-all",
        "placement-faulty",
        "error-mapping-faulty",
    ])?;
    let out = target().join("fixtures");
    install(
        &target().join("release/liborchd_fixture_abi_mismatch.so"),
        &out.join("adapters/abi-mismatch.so"),
    )?;
    // A policy in a second language, built from source (componentize-py from PyPI).
    run(
        "build the Python example policy",
        Command::new("bash")
            .arg(root().join("plugins/examples/python-admission/build.sh"))
            .arg(out.join("policies/python-admission.wasm")),
    )?;
    for lib in [
        "placement_fastest",
        "admission_faulty",
        "admission_accept_all",
        "placement_faulty",
        "error_mapping_faulty",
    ] {
        install(
            &wasm_out(lib),
            &out.join("policies")
                .join(format!("{}.wasm", lib.replace('_', "-"))),
        )?;
    }
    Ok(())
}

fn test() -> Result<()> {
    let started = Instant::now();
    let dist = dist(Scope::Everything)?;
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
            .args([
                "-p",
                "admission-default",
                "-p",
                "budget-default",
                "-p",
                "placement-default",
                "-p",
                "error-mapping-default",
                "-p",
                "placement-fastest",
                "--lib",
            ]),
    )?;
    check_template()?;
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

/// Creates a standalone admission-policy crate from `plugins/template` at `out`.
fn new_policy(name: &str, out: &Path) -> Result<()> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0].is_ascii_lowercase();
    if !valid {
        bail!(
            "policy name {name:?}: use lowercase letters, digits and '-', starting with a letter"
        );
    }
    if out.exists() {
        bail!("{} already exists", out.display());
    }
    let template = root().join("plugins/template");
    let wit = root().join("wit");
    let fill = |text: String| {
        text.replace("{{name}}", name)
            .replace("{{lib}}", &name.replace('-', "_"))
            .replace("{{wit}}", &wit.display().to_string())
    };
    std::fs::create_dir_all(out.join("src"))?;
    for (from, to) in [
        ("Cargo.toml.tmpl", "Cargo.toml"),
        ("src/lib.rs.tmpl", "src/lib.rs"),
    ] {
        let text = std::fs::read_to_string(template.join(from))?;
        std::fs::write(out.join(to), fill(text))?;
    }
    eprintln!(
        "created {}\nbuild it:  cargo build --release --target {WASM_TARGET} --manifest-path {}/Cargo.toml\nthen copy target/{WASM_TARGET}/release/{}.wasm into the policy directory",
        out.display(),
        out.display(),
        name.replace('-', "_")
    );
    Ok(())
}

/// Proves the template produces a building policy: generate one and build it.
fn check_template() -> Result<()> {
    let out = target().join("new-policy-check");
    let _ = std::fs::remove_dir_all(&out);
    new_policy("template-check", &out)?;
    run(
        "build a policy generated by new-policy",
        cargo()
            .args([
                "build",
                "--release",
                "--target",
                WASM_TARGET,
                "--manifest-path",
            ])
            .arg(out.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target().join("wasm")),
    )
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("dist") => dist(Scope::Product).map(|_| ()),
        Some("fixtures") => fixtures(),
        Some("run") => {
            let dist = dist(Scope::Product)?;
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
        Some("new-policy") => {
            let name = args
                .next()
                .context("usage: cargo xtask new-policy <name> [--out DIR]")?;
            let out = match (args.next().as_deref(), args.next()) {
                (Some("--out"), Some(dir)) => PathBuf::from(dir),
                (None, _) => root().join("plugins").join(&name),
                _ => bail!("usage: cargo xtask new-policy <name> [--out DIR]"),
            };
            new_policy(&name, &out)
        }
        _ => {
            eprintln!("usage: cargo xtask <dist|run|test|fixtures|lint|new-policy> [args]");
            std::process::exit(2);
        }
    }
}
