//! `cargo xtask <command>`: the project's build, run and test entry points.
//!
//! - `dist`  builds everything into `target/dist/` (`bin/`, `adapters/`, `policies/`, `etc/`)
//! - `run`   = dist, then starts the daemon on its embedded default (extra args are passed on)
//! - `test`  = dist and test fixtures, then every test (unit, integration, BDD, policies),
//!   then the real-engine tier (`e2e`)
//! - `e2e`   the real-engine tier: installs llama-server (cached under `~/.cache/orchd`),
//!   generates two tiny GGUF models, and runs `orchd-e2e` against them
//! - `fixtures` builds the test fixtures into `target/fixtures/`
//! - `bench [--quick] [--only SCENARIO]` the performance harness: policy call costs, then the load scenarios
//!   (nginx, installed by `tools/nginx/setup.sh`, is the floor they are measured against)
//!   of `tools/loadgen` against `tools/engine-sim`; results in `target/bench/`
//!   (`--quick`: every scenario scaled down, a smoke run)
//! - `bench-prefix [--quick]` prefix-aware placement against least-loaded on two real
//!   llama-server replicas; results in `target/bench/prefix.{json,md}`
//! - `lint`  clippy, warnings denied, on the workspace and the policy components
//! - `fuzz TARGET [SECONDS]` runs one cargo-fuzz target of `fuzz/` (not in CI; the seed
//!   corpora are replayed by `test`)
//! - `new-adapter NAME [--dir PARENT]` creates an engine adapter crate (its own workspace) from
//!   `adapters/template`
//! - `new-policy NAME [--js] [--out DIR]` creates a policy crate from `plugins/template`, or
//!   with `--js` a JavaScript policy from `plugins/template-js`

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
    ("orchd_adapter_ollama", "ollama.so"),
    ("orchd_adapter_tgi", "tgi.so"),
    ("orchd_adapter_triton", "triton.so"),
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
                "-p",
                "orchd-adapter-tgi",
                "-p",
                "orchd-adapter-triton",
                "-p",
                "orchd-adapter-ollama",
                "-p",
                "orchd-adapter-conformance",
                "-p",
                "orchctl",
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
    // The command line for users and operators.
    install(&release.join("orchctl"), &dist.join("bin/orchctl"))?;
    // The adapter conformance kit ships beside the daemon: vendors check a .so with it.
    install(
        &release.join("orchd-adapter-conformance"),
        &dist.join("bin/orchd-adapter-conformance"),
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
        cargo().args([
            "build",
            "--release",
            "-p",
            "orchd-fixture-abi-mismatch",
            "-p",
            "orchd-fixture-abi-layout",
        ]),
    )?;
    build_wasm(&[
        "placement-fastest",
        "admission-faulty",
        "admission-accept-all",
        "placement-faulty",
        "placement-v010",
        "error-mapping-faulty",
    ])?;
    // An adapter built against the released ABI 0.1.2, in its own workspace (it carries
    // that version of the interface crate, which shares this workspace's package name).
    let legacy_target = target().join("fixture-abi-0.1.2");
    run(
        "build the ABI 0.1.2 fixture adapter",
        cargo()
            .args(["build", "--release", "--manifest-path"])
            .arg(root().join("adapters/fixtures/abi-0.1.2/Cargo.toml"))
            .arg("--target-dir")
            .arg(&legacy_target),
    )?;
    let out = target().join("fixtures");
    install(
        &legacy_target.join("release/liborchd_fixture_abi_0_1_2.so"),
        &out.join("adapters/legacy-0.1.2.so"),
    )?;
    // And one built against the released ABI 0.1.3 (chat, before the trace context).
    let older_target = target().join("fixture-abi-0.1.3");
    run(
        "build the ABI 0.1.3 fixture adapter",
        cargo()
            .args(["build", "--release", "--manifest-path"])
            .arg(root().join("adapters/fixtures/abi-0.1.3/Cargo.toml"))
            .arg("--target-dir")
            .arg(&older_target),
    )?;
    install(
        &older_target.join("release/liborchd_fixture_abi_0_1_3.so"),
        &out.join("adapters/legacy-0.1.3.so"),
    )?;
    // A newer build of the mock adapter (version 0.1.1), to upgrade to without a restart.
    let next_target = target().join("fixture-mock-next");
    run(
        "build the mock adapter as version 0.1.1",
        cargo()
            .args([
                "build",
                "--release",
                "-p",
                "orchd-adapter-mock",
                "--target-dir",
            ])
            .arg(&next_target)
            .env("ORCHD_MOCK_VERSION", "0.1.1"),
    )?;
    install(
        &next_target.join("release/liborchd_adapter_mock.so"),
        &out.join("adapters/mock-0.1.1.so"),
    )?;
    install(
        &target().join("release/liborchd_fixture_abi_mismatch.so"),
        &out.join("adapters/abi-mismatch.so"),
    )?;
    install(
        &target().join("release/liborchd_fixture_abi_layout.so"),
        &out.join("adapters/abi-layout.so"),
    )?;
    // A policy in a second language, built from source (componentize-py from PyPI).
    run(
        "build the Python example policy",
        Command::new("bash")
            .arg(root().join("plugins/examples/python-admission/build.sh"))
            .arg(out.join("policies/python-admission.wasm")),
    )?;
    // And in JavaScript (componentize-qjs from npm).
    run(
        "build the JavaScript example policy",
        Command::new("bash")
            .arg(root().join("plugins/examples/js-admission/build.sh"))
            .arg(out.join("policies/js-admission.wasm")),
    )?;
    for lib in [
        "placement_fastest",
        "admission_faulty",
        "admission_accept_all",
        "placement_faulty",
        "placement_v010",
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

/// The performance harness (docs/BENCHMARKS.md): builds the release daemon, the engine
/// simulator and the load generator, measures policy call costs, then runs the load
/// scenarios. Results: `target/bench/results.{json,md}` and `target/bench/overhead.svg`.
fn bench(extra: &[String]) -> Result<()> {
    let started = Instant::now();
    let dist = dist(Scope::Product)?;
    build_wasm(&["placement-fastest"])?;
    let out = target().join("bench");
    let swap = out.join("placement-fastest.wasm");
    install(&wasm_out("placement_fastest"), &swap)?;
    run(
        "build the load generator and the engine simulator (release)",
        cargo().args([
            "build",
            "--release",
            "-p",
            "orchd-loadgen",
            "-p",
            "orchd-engine-sim",
        ]),
    )?;
    // The floor scenario's reverse proxy and the state scenario's store.
    setup("tools/nginx/setup.sh", "nginx")?;
    setup("tools/redis/setup.sh", "redis-server")?;
    let costs = out.join("policy-costs.json");
    run(
        "policy call costs",
        cargo()
            .args(["bench", "-p", "orchd-host", "--bench", "policies"])
            .env("ORCHD_DIST", &dist)
            .env("ORCHD_BENCH_JSON", &costs),
    )?;
    let mut load = Command::new(target().join("release/loadgen"));
    load.current_dir(root())
        .arg("bench")
        .arg("--dist")
        .arg(&dist)
        .arg("--sim")
        .arg(target().join("release/engine-sim"))
        .arg("--swap-policy")
        .arg(&swap)
        .arg("--policy-costs")
        .arg(&costs)
        .arg("--out")
        .arg(&out);
    load.args(extra);
    run("load scenarios", &mut load)?;
    eprintln!(
        "bench done in {:.1}s; results in {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// Prefix-aware placement against least-loaded on two real llama-server replicas
/// (`e2e/src/bin/prefix-bench.rs`); results in `target/bench/prefix.{json,md}`.
fn bench_prefix(extra: &[String]) -> Result<()> {
    let started = Instant::now();
    let dist = dist(Scope::Product)?;
    let env = e2e_environment_with(true)?;
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "orchd-e2e",
        "--bin",
        "prefix-bench",
        "--",
    ])
    .args(extra)
    .env("ORCHD_DIST", &dist)
    .env("ORCHD_BENCH_OUT", target().join("bench"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(
        "prefix-aware placement against least-loaded (llama-server)",
        &mut cmd,
    )?;
    eprintln!(
        "bench-prefix done in {:.1}s; results in {}",
        started.elapsed().as_secs_f64(),
        target().join("bench/prefix.md").display()
    );
    Ok(())
}

fn test() -> Result<()> {
    let started = Instant::now();
    let dist = dist(Scope::Everything)?;
    fixtures()?;
    let root = root();
    // Installed here so the install is timed on its own (the contract test runs
    // tools/schemathesis/run.sh, which finds it cached).
    setup("tools/schemathesis/setup.sh", "schemathesis")?;
    // The state-store tests start their own redis-server instances.
    setup("tools/redis/setup.sh", "redis-server")?;
    // An outsider's adapter: generated outside the repository, tested and built there; the
    // workspace tests check it with the kit and serve a task with it.
    let outsider = check_adapter_template()?;
    run(
        "workspace tests (unit, integration, BDD)",
        cargo()
            .args([
                "test",
                "--release",
                "--workspace",
                "--exclude",
                "xtask",
                "--exclude",
                "orchd-e2e",
            ])
            .env("ORCHD_DIST", &dist)
            .env("ORCHD_FIXTURES", target().join("fixtures"))
            .env("ORCHD_OUTSIDER_ADAPTER", &outsider)
            .env("ORCHD_OPENAI_PYTHON", openai_python()?)
            .env(
                "ORCHD_BROWSER",
                setup("tools/browser/setup.sh", "chromium and playwright-core")?,
            ),
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
    e2e_tests(&dist)?;
    eprintln!(
        "all tests passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Where slow-to-build tools and generated models are cached.
fn cache_dir() -> PathBuf {
    std::env::var_os("ORCHD_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/orchd")))
        .unwrap_or_else(|| target().join("cache"))
}

/// Installs llama-server (cached) and generates the models; returns the environment the
/// real-engine tests need.
fn e2e_environment() -> Result<Vec<(String, String)>> {
    e2e_environment_with(false)
}

/// The real-engine environment; with `bench`, also `ORCHD_BENCH_MODEL`: a larger model
/// (33 M parameters, 8 192 context) whose prompt evaluation takes measurable time.
fn e2e_environment_with(bench: bool) -> Result<Vec<(String, String)>> {
    let started = Instant::now();
    eprintln!(
        "==> install llama-server (cached under {})",
        cache_dir().display()
    );
    // The script prints its answer on the last line of stdout (progress goes to stderr).
    let ask = |arg: Option<&str>| -> Result<String> {
        let mut cmd = Command::new("bash");
        cmd.arg(root().join("tools/e2e/llama-server.sh"));
        cmd.args(arg);
        let out = cmd
            .env("ORCHD_CACHE", cache_dir())
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("run tools/e2e/llama-server.sh")?;
        if !out.status.success() {
            bail!("tools/e2e/llama-server.sh failed ({})", out.status);
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .context("tools/e2e/llama-server.sh printed nothing")
    };
    let server = ask(None)?;
    let python = ask(Some("--python"))?;
    eprintln!(
        "<== install llama-server: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let script = root().join("tools/e2e/make_model.py");
    let template = root().join("tools/e2e/tool-template.jinja");
    // Models are keyed by the generator's and the template's content: a change to either
    // makes new ones.
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::fs::read(&script)?.hash(&mut h);
        std::fs::read(&template)?.hash(&mut h);
        format!("{:016x}", h.finish())
    };
    let models = cache_dir().join("models");
    std::fs::create_dir_all(&models)?;
    let mut env = vec![("ORCHD_LLAMA_SERVER".to_owned(), server)];
    let tool_args = [
        "--ctx".to_owned(),
        "4096".to_owned(),
        "--no-space-prefix".to_owned(),
        "--template".to_owned(),
        template.display().to_string(),
    ];
    let bench_args = [
        "--dim", "384", "--layers", "6", "--heads", "6", "--ctx", "8192",
    ]
    .map(str::to_owned);
    let mut wanted = vec![
        ("ORCHD_E2E_MODEL", "a", "1", &[][..]),
        ("ORCHD_E2E_MODEL_B", "b", "2", &[][..]),
        // Tool calls and structured output (tools/e2e/tool-template.jinja).
        ("ORCHD_E2E_TOOL_MODEL", "tools", "3", &tool_args[..]),
    ];
    if bench {
        wanted.push(("ORCHD_BENCH_MODEL", "bench", "4", &bench_args[..]));
    }
    for (var, name, seed, extra) in wanted {
        let path = models.join(format!("tiny-{name}-{digest}.gguf"));
        if !path.exists() {
            run(
                &format!("generate model {name}"),
                Command::new(&python)
                    .arg(&script)
                    .arg("--out")
                    .arg(&path)
                    .args(["--seed", seed])
                    .args(extra),
            )?;
        }
        env.push((var.to_owned(), path.display().to_string()));
    }
    Ok(env)
}

/// A python with the official `openai` package (cached venv), for the front-door tests.
fn openai_python() -> Result<String> {
    client_setup("setup.sh", "python openai client")
}

/// Runs `tools/openai-client/<script>` (an install, cached under the cache dir) and returns
/// the last line it printed (the interpreter or directory to use).
fn client_setup(script: &str, what: &str) -> Result<String> {
    setup(&format!("tools/openai-client/{script}"), what)
}

/// Runs an install script (cached under the cache dir) and returns the last line it
/// printed (the interpreter or directory to use).
fn setup(script: &str, what: &str) -> Result<String> {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(root().join(script))
        .env("ORCHD_CACHE", cache_dir())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("run {script}"))?;
    if !out.status.success() {
        bail!("{script} failed ({})", out.status);
    }
    eprintln!("<== {what} ready: {:.1}s", started.elapsed().as_secs_f64());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .with_context(|| format!("{script} printed nothing"))
}

/// The real-engine tier against `dist`.
fn e2e_tests(dist: &Path) -> Result<()> {
    let env = e2e_environment()?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "-p",
        "orchd-e2e",
        "--",
        "--test-threads",
        "1",
    ])
    .env("ORCHD_DIST", dist)
    .env("ORCHD_OPENAI_PYTHON", openai_python()?)
    .env(
        "ORCHD_OPENAI_NODE",
        client_setup("setup-node.sh", "node openai client")?,
    )
    .env(
        "ORCHD_AGENTS_PYTHON",
        client_setup("setup-agents.sh", "openai-agents")?,
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    run("real-engine tier (llama-server)", &mut cmd)?;
    let mut bdd = cargo();
    bdd.args(["test", "--release", "-p", "orchd-bdd", "--test", "bdd"])
        .env("ORCHD_DIST", dist)
        .env("ORCHD_BDD_REAL_ENGINE", "1");
    for (k, v) in e2e_environment()? {
        bdd.env(k, v);
    }
    run("real-engine BDD features (llama-server)", &mut bdd)
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

/// Fills the crate template in `template` (its `*.tmpl` files, `{{name}}` and the other
/// `vars` replaced) into a new crate at `out`; `what` names the kind of crate in errors.
fn new_crate(
    what: &str,
    name: &str,
    template: &Path,
    out: &Path,
    files: &[(&str, &str)],
    vars: &[(&str, String)],
) -> Result<()> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0].is_ascii_lowercase();
    if !valid {
        bail!(
            "{what} name {name:?}: use lowercase letters, digits and '-', starting with a letter"
        );
    }
    if out.exists() {
        bail!("{} already exists", out.display());
    }
    for (from, to) in files {
        if let Some(dir) = out.join(to).parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut text = std::fs::read_to_string(template.join(from))?.replace("{{name}}", name);
        for (var, value) in vars {
            text = text.replace(&format!("{{{{{var}}}}}"), value);
        }
        std::fs::write(out.join(to), text)?;
    }
    Ok(())
}

/// `cargo xtask new-adapter NAME`: an adapter crate (its own workspace) that builds
/// against `adapters/abi`, passes the conformance kit and serves a stand-in engine until its
/// author replaces it. Returns the library file its release build makes.
fn new_adapter(name: &str, out: &Path) -> Result<PathBuf> {
    let lib = name.replace('-', "_");
    new_crate(
        "adapter",
        name,
        &root().join("adapters/template"),
        out,
        &[
            ("Cargo.toml.tmpl", "Cargo.toml"),
            ("README.md.tmpl", "README.md"),
            ("src/lib.rs.tmpl", "src/lib.rs"),
        ],
        &[
            ("lib", lib.clone()),
            ("abi", root().join("adapters/abi").display().to_string()),
        ],
    )?;
    eprintln!(
        "created {}\nbuild it:  cargo build --release --manifest-path {}/Cargo.toml\ncheck it:  target/dist/bin/orchd-adapter-conformance <its target>/release/liborchd_adapter_{lib}.so --config '{{}}'\nthen copy the .so into the adapter directory and name it in a pool (adapter = \"{name}\")",
        out.display(),
        out.display()
    );
    Ok(PathBuf::from(format!("release/liborchd_adapter_{lib}.so")))
}

/// Generates an adapter with `new-adapter` in a directory outside the repository, runs its
/// unit tests and builds it; returns the library (the workspace tests run the kit on it
/// and serve a task with it).
fn check_adapter_template() -> Result<PathBuf> {
    // The ABI crate stands alone: packaged as it would be published, and built from the
    // package (nothing inherited from this workspace).
    run(
        "package the ABI crate and build it from the package",
        cargo().args(["package", "-p", "orchd-adapter-abi", "--allow-dirty"]),
    )?;
    let out = std::env::temp_dir().join(format!("orchd-new-adapter-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let crate_dir = out.join("outsider");
    let lib = new_adapter("outsider", &crate_dir)?;
    // Built outside the repository; its target directory is cached under ours.
    let target_dir = target().join("new-adapter-check");
    for (what, args) in [
        (
            "unit tests of an adapter generated by new-adapter",
            &["test", "--release"][..],
        ),
        (
            "build an adapter generated by new-adapter",
            &["build", "--release"][..],
        ),
    ] {
        run(
            what,
            cargo()
                .args(args)
                .arg("--manifest-path")
                .arg(crate_dir.join("Cargo.toml"))
                .arg("--target-dir")
                .arg(&target_dir),
        )?;
    }
    let built = target_dir.join(lib);
    let kept = target().join("fixtures/outsider/outsider.so");
    install(&built, &kept)?;
    let _ = std::fs::remove_dir_all(&out);
    Ok(kept)
}

/// Creates a standalone admission-policy crate from `plugins/template` at `out`.
fn new_policy(name: &str, out: &Path) -> Result<()> {
    new_crate(
        "policy",
        name,
        &root().join("plugins/template"),
        out,
        &[
            ("Cargo.toml.tmpl", "Cargo.toml"),
            ("src/lib.rs.tmpl", "src/lib.rs"),
        ],
        &[
            ("lib", name.replace('-', "_")),
            ("wit", root().join("wit/0.2.0").display().to_string()),
        ],
    )?;
    eprintln!(
        "created {}\nbuild it:  cargo build --release --target {WASM_TARGET} --manifest-path {}/Cargo.toml\nthen copy target/{WASM_TARGET}/release/{}.wasm into the policy directory",
        out.display(),
        out.display(),
        name.replace('-', "_")
    );
    Ok(())
}

/// `cargo xtask new-policy NAME --js`: a JavaScript admission policy (`app.js` and its
/// `build.sh`, which runs componentize-qjs through `tools/componentize-js/build.sh`).
fn new_policy_js(name: &str, out: &Path) -> Result<()> {
    new_crate(
        "policy",
        name,
        &root().join("plugins/template-js"),
        out,
        &[("app.js.tmpl", "app.js"), ("build.sh.tmpl", "build.sh")],
        &[
            ("repo", root().display().to_string()),
            ("wit", root().join("wit/0.2.0").display().to_string()),
        ],
    )?;
    eprintln!(
        "created {}\nbuild it:  bash {}/build.sh {name}.wasm\nthen copy {name}.wasm into the policy directory",
        out.display(),
        out.display(),
    );
    Ok(())
}

/// Proves the templates produce building policies: generate one of each and build it.
fn check_template() -> Result<()> {
    let js = target().join("new-policy-js-check");
    let _ = std::fs::remove_dir_all(&js);
    new_policy_js("template-js-check", &js)?;
    run(
        "build a JavaScript policy generated by new-policy --js",
        Command::new("bash")
            .arg(js.join("build.sh"))
            .arg(js.join("template-js-check.wasm")),
    )?;
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

/// The cargo-fuzz targets in `fuzz/`.
const FUZZ_TARGETS: &[&str] = &[
    "task_request",
    "openai_request",
    "sse_stream",
    "last_event_id",
    "config_file",
];

/// `cargo xtask fuzz TARGET [SECONDS]`: runs one libFuzzer target (default 60 s) on its
/// corpus, installing cargo-fuzz first if needed. New inputs that raise coverage are added
/// to `fuzz/corpus/TARGET/` (commit the useful ones: the corpus replay tests run them);
/// a crash is saved under `fuzz/artifacts/TARGET/`. libFuzzer needs the sanitizer flags of
/// a nightly compiler; on the pinned stable one `RUSTC_BOOTSTRAP=1` enables them.
fn fuzz(args: &[String]) -> Result<()> {
    let usage = || {
        format!(
            "usage: cargo xtask fuzz <{}> [SECONDS]",
            FUZZ_TARGETS.join("|")
        )
    };
    let target = args.first().with_context(usage)?;
    if !FUZZ_TARGETS.contains(&target.as_str()) {
        bail!("{}", usage());
    }
    let seconds: u64 = match args.get(1) {
        Some(s) => s.parse().with_context(usage)?,
        None => 60,
    };
    let has_fuzz = cargo()
        .args(["fuzz", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_fuzz {
        run(
            "install cargo-fuzz",
            cargo().args(["install", "cargo-fuzz", "--locked"]),
        )?;
    }
    let corpus = root().join("fuzz/corpus").join(target);
    run(
        &format!("fuzz {target} for {seconds}s"),
        cargo()
            .current_dir(root().join("fuzz"))
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "--fuzz-dir", "."])
            .arg(target)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-max_len=65536"),
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
        Some("e2e") => {
            let dist = dist(Scope::Product)?;
            run(
                "build the real-engine tier",
                cargo().args(["build", "--release", "-p", "orchd-e2e", "--tests"]),
            )?;
            e2e_tests(&dist)
        }
        Some("lint") => lint(),
        Some("fuzz") => fuzz(&args.collect::<Vec<_>>()),
        Some("bench") => bench(&args.collect::<Vec<_>>()),
        Some("bench-prefix") => bench_prefix(&args.collect::<Vec<_>>()),
        Some("new-adapter") => {
            let usage = "usage: cargo xtask new-adapter <name> [--dir PARENT]";
            let name = args.next().context(usage)?;
            let parent = match (args.next().as_deref(), args.next()) {
                (Some("--dir"), Some(dir)) => PathBuf::from(dir),
                (None, _) => root().join("adapters"),
                _ => bail!("{usage}"),
            };
            new_adapter(&name, &parent.join(&name)).map(|_| ())
        }
        Some("new-policy") => {
            let usage = "usage: cargo xtask new-policy <name> [--js] [--out DIR]";
            let name = args.next().context(usage)?;
            let rest: Vec<String> = args.collect();
            let js = rest.iter().any(|a| a == "--js");
            let rest: Vec<&str> = rest
                .iter()
                .map(String::as_str)
                .filter(|a| *a != "--js")
                .collect();
            let out = match rest.as_slice() {
                ["--out", dir] => PathBuf::from(dir),
                [] => root().join("plugins").join(&name),
                _ => bail!("{usage}"),
            };
            if js {
                new_policy_js(&name, &out)
            } else {
                new_policy(&name, &out)
            }
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <dist|run|test|e2e|fixtures|bench|bench-prefix|lint|fuzz|new-policy|new-adapter> [args]"
            );
            std::process::exit(2);
        }
    }
}
