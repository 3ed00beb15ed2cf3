//! `orchctl`: one command line for orchestratord's users and operators.
//!
//! The daemon's URL and key come from `--url`/`--key`, else `ORCHD_URL`/`ORCHD_KEY`, else
//! the config file (`--config`, `ORCHCTL_CONFIG`, or `~/.config/orchctl/config.toml`, with
//! `url = "…"` and `key = "…"`), else `http://127.0.0.1:8080` and no key. Output is a human
//! table, or the daemon's JSON with `--json`. Commands that hand the daemon a policy file
//! (`policies swap`, `replay`, `dry-run`, `shadow start`) copy it into the daemon's policy
//! directory, so they run on the daemon's host (or one sharing that directory).

mod client;
mod table;
mod top;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use client::{CallError, Client, Result};
use table::cell;

#[derive(Parser)]
#[command(
    name = "orchctl",
    version,
    about = "Steer and watch an orchestratord daemon"
)]
struct Cli {
    /// The daemon's base URL [env: ORCHD_URL; config file `url`; default http://127.0.0.1:8080]
    #[arg(long, global = true)]
    url: Option<String>,
    /// An API key (sent as a bearer token) [env: ORCHD_KEY; config file `key`]
    #[arg(long, global = true)]
    key: Option<String>,
    /// The config file [env: ORCHCTL_CONFIG; default ~/.config/orchctl/config.toml]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print the daemon's JSON instead of a table
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Submit, stream, inspect and cancel tasks
    #[command(subcommand)]
    Tasks(Tasks),
    /// Inspect and end sessions
    #[command(subcommand)]
    Sessions(Sessions),
    /// Pools: list, health, drain, undrain, reload
    #[command(subcommand)]
    Pools(Pools),
    /// Policies: list, config, swap, dry-run, replay, shadow
    #[command(subcommand)]
    Policies(Policies),
    /// Loaded adapter libraries
    #[command(subcommand)]
    Adapters(Adapters),
    /// The model catalog
    #[command(subcommand)]
    Catalog(Catalog),
    /// Artifacts (transcripts and uploads)
    #[command(subcommand)]
    Artifacts(Artifacts),
    /// A live view of pools, queues, running work, rates and policies (q quits)
    Top {
        /// Refresh period
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Print one frame as text and exit (no terminal needed)
        #[arg(long)]
        once: bool,
    },
}

#[derive(Subcommand)]
enum Tasks {
    /// Submit a completion task, then stream its tokens (unless --no-stream)
    Submit {
        /// The model (a pool's model_ref)
        #[arg(long)]
        model: String,
        /// The prompt (else read from stdin)
        #[arg(long)]
        prompt: Option<String>,
        /// The engine (default: the engine of a pool serving the model)
        #[arg(long)]
        engine: Option<String>,
        #[arg(long, default_value_t = 256)]
        max_tokens: u32,
        #[arg(long)]
        session: Option<String>,
        #[arg(long, default_value = "interactive")]
        priority: String,
        #[arg(long, default_value_t = 600_000)]
        deadline_ms: u64,
        /// Print the task id and return
        #[arg(long)]
        no_stream: bool,
    },
    /// A task's status
    Get { id: String },
    /// Stream a task's events (tokens to stdout; with --json, one event per line)
    Stream {
        id: String,
        /// Resume after this event id
        #[arg(long)]
        after: Option<u64>,
    },
    /// Cancel a task
    Cancel { id: String },
}

#[derive(Subcommand)]
enum Sessions {
    Get { id: String },
    Delete { id: String },
}

#[derive(Subcommand)]
enum Pools {
    List,
    Health {
        id: String,
    },
    /// Stop admitting to a pool; queued and running work has until the deadline
    Drain {
        id: String,
        #[arg(long, default_value_t = 60_000)]
        deadline_ms: u64,
    },
    Undrain {
        id: String,
    },
    /// Restart a pool's launched replicas on another model file
    Reload {
        id: String,
        #[arg(long)]
        model_ref: String,
    },
}

#[derive(Subcommand)]
enum Policies {
    List,
    /// Set a policy's config (a JSON object) without a restart
    Config {
        kind: String,
        json: String,
    },
    /// Swap a component file in atomically (copy beside the live one, rename over it) and
    /// wait until the daemon loads or refuses it
    Swap {
        kind: String,
        file: PathBuf,
    },
    /// Load a candidate and run it over the recorded live decisions (nothing is applied)
    DryRun {
        kind: String,
        file: PathBuf,
        #[arg(long)]
        config: Option<String>,
    },
    /// The same as dry-run: run a candidate over recorded live decisions, report where it
    /// would have decided differently
    Replay {
        kind: String,
        file: PathBuf,
        #[arg(long)]
        config: Option<String>,
    },
    /// Run a candidate beside the live policy on live traffic, unapplied
    #[command(subcommand)]
    Shadow(Shadow),
}

#[derive(Subcommand)]
enum Shadow {
    Start {
        kind: String,
        file: PathBuf,
        #[arg(long)]
        config: Option<String>,
    },
    Status {
        kind: String,
    },
    Stop {
        kind: String,
    },
}

#[derive(Subcommand)]
enum Adapters {
    List,
}

#[derive(Subcommand)]
enum Catalog {
    /// Models the daemon serves (GET /v1/models)
    Models,
    Get {
        id: String,
    },
    /// Register a model (its id and sha256 digest)
    Add {
        id: String,
        #[arg(long)]
        digest: String,
        #[arg(long)]
        source_url: Option<String>,
    },
    Verify {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
enum Artifacts {
    /// Print an artifact's JSON
    Get { id: String },
    /// Store a JSON document as an artifact
    Put { file: PathBuf },
}

/// URL and key from flags, the environment, the config file, then defaults.
fn resolve(cli: &Cli) -> std::result::Result<(String, Option<String>), String> {
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct File {
        url: Option<String>,
        key: Option<String>,
    }
    let explicit = cli
        .config
        .clone()
        .or_else(|| std::env::var_os("ORCHCTL_CONFIG").map(PathBuf::from));
    let path = explicit.clone().or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/orchctl/config.toml"))
    });
    let file: File = match path {
        Some(p) if p.exists() => {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        Some(p) if explicit.is_some() => return Err(format!("no config file at {}", p.display())),
        _ => File::default(),
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let url = cli
        .url
        .clone()
        .or_else(|| env("ORCHD_URL"))
        .or(file.url)
        .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
    let key = cli.key.clone().or_else(|| env("ORCHD_KEY")).or(file.key);
    Ok((url, key))
}

fn show(json: bool, value: &Value, table: impl FnOnce(&Value)) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        table(value);
    }
}

/// A one-object value as a two-column table.
fn fields(value: &Value) {
    let rows: Vec<Vec<String>> = value
        .as_object()
        .map(|o| o.iter().map(|(k, v)| vec![k.clone(), cell(v)]).collect())
        .unwrap_or_default();
    table::print(&["field", "value"], &rows);
}

fn pools_table(v: &Value) {
    let rows: Vec<Vec<String>> = v["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let m = &p["metrics"];
            let replicas = m["replicas"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let ready = replicas.iter().filter(|r| r["ready"] == true).count();
            let ejected = replicas.iter().filter(|r| r["ejected"] == true).count();
            vec![
                cell(&p["pool_id"]),
                cell(&p["engine"]),
                cell(&p["model_ref"]),
                cell(&p["ready"]),
                cell(&p["draining"]),
                cell(&m["queue_depth"]),
                format!("{}/{}", cell(&m["active_leases"]), cell(&m["slots_total"])),
                format!("{ready}/{} ready, {ejected} ejected", replicas.len()),
            ]
        })
        .collect();
    table::print(
        &[
            "pool", "engine", "model", "ready", "draining", "queued", "busy", "replicas",
        ],
        &rows,
    );
}

fn policies_table(v: &Value) {
    let rows: Vec<Vec<String>> = v["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                cell(&p["kind"]),
                cell(&p["name"]),
                cell(&p["version"]),
                cell(&p["wit_version"]),
                p["sha256"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(12)
                    .collect(),
                cell(&p["calls"]),
                cell(&p["errors"]),
                if p["loading"].is_object() {
                    "compiling".to_owned()
                } else if p["refused"].is_object() {
                    format!("refused: {}", cell(&p["refused"]["reason"]))
                } else {
                    cell(&p["last_error"])
                },
            ]
        })
        .collect();
    table::print(
        &[
            "kind", "name", "version", "wit", "sha256", "calls", "errors", "state",
        ],
        &rows,
    );
}

fn report_table(r: &Value) {
    println!(
        "{} of {} with {} {} ({}): {} decisions, {} agreed, {} disagreed, {} candidate errors{}",
        cell(&r["mode"]),
        cell(&r["kind"]),
        cell(&r["candidate"]["name"]),
        cell(&r["candidate"]["version"]),
        cell(&r["candidate"]["wit_version"]),
        cell(&r["decisions"]),
        cell(&r["agreed"]),
        cell(&r["disagreed"]),
        cell(&r["candidate_errors"]),
        match r["dropped"].as_u64() {
            Some(n) => format!(", {n} dropped"),
            None => String::new(),
        }
    );
    let rows: Vec<Vec<String>> = r["disagreements"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| vec![cell(&d["at"]), cell(&d["live"]), cell(&d["candidate"])])
        .collect();
    if !rows.is_empty() {
        table::print(&["at (unix ms)", "live", "candidate"], &rows);
    }
}

/// The policy directory: where the live component of `kind` lives.
async fn policy_dir(c: &Client, kind: &str) -> Result<(PathBuf, PathBuf)> {
    let list = c.get("/v1/policies").await?;
    let live = list["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["kind"] == kind)
        .ok_or_else(|| {
            CallError(format!(
                "no policy kind {kind:?} (admission, budget, placement, error_mapping)"
            ))
        })?;
    let path = PathBuf::from(live["path"].as_str().unwrap_or_default());
    let dir = path
        .parent()
        .ok_or_else(|| CallError(format!("the daemon reports no directory for {kind}")))?
        .to_path_buf();
    Ok((dir, path))
}

/// Copies `from` to `to` through a temporary file in `to`'s directory, then renames: the
/// daemon's watcher never sees half a file.
fn install(from: &Path, to: &Path) -> Result<()> {
    let dir = to.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".orchctl-{}.tmp", std::process::id()));
    std::fs::copy(from, &tmp).map_err(|e| {
        CallError(format!(
            "cannot copy {} into {} (orchctl runs on the daemon's host for this): {e}",
            from.display(),
            dir.display()
        ))
    })?;
    std::fs::rename(&tmp, to).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CallError(format!("cannot rename into {}: {e}", to.display()))
    })
}

fn sha256_of(path: &Path) -> Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path)
        .map_err(|e| CallError(format!("cannot read {}: {e}", path.display())))?;
    Ok(hex::encode(sha2::Sha256::digest(bytes)))
}

/// Puts a candidate file into the policy directory under a name of its own; returns
/// that name.
async fn stage_candidate(c: &Client, kind: &str, file: &Path) -> Result<String> {
    let (dir, _) = policy_dir(c, kind).await?;
    let sha = sha256_of(file)?;
    let name = format!("candidate-{kind}-{}.wasm", &sha[..12]);
    install(file, &dir.join(&name))?;
    Ok(name)
}

fn candidate_body(name: String, config: &Option<String>) -> Result<Value> {
    let mut body = json!({ "component": name });
    if let Some(text) = config {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| CallError(format!("--config is not JSON: {e}")))?;
        body["config"] = v;
    }
    Ok(body)
}

async fn run(cli: Cli) -> Result<()> {
    let (url, key) = resolve(&cli).map_err(CallError)?;
    let c = Client::new(&url, key);
    let json = cli.json;
    match cli.command {
        Command::Tasks(t) => tasks(&c, json, t).await,
        Command::Sessions(Sessions::Get { id }) => {
            let v = c.get(&format!("/v1/sessions/{id}")).await?;
            show(json, &v, fields);
            Ok(())
        }
        Command::Sessions(Sessions::Delete { id }) => {
            let v = c.delete(&format!("/v1/sessions/{id}")).await?;
            show(json, &v, |_| println!("session {id} ended"));
            Ok(())
        }
        Command::Pools(p) => pools(&c, json, p).await,
        Command::Policies(p) => policies(&c, json, p).await,
        Command::Adapters(Adapters::List) => {
            let v = c.get("/v1/adapters").await?;
            show(json, &v, |v| {
                let rows: Vec<Vec<String>> = v["adapters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        vec![
                            cell(&a["name"]),
                            cell(&a["version"]),
                            cell(&a["abi_version"]),
                            a["engines"]
                                .as_array()
                                .map(|e| e.iter().map(cell).collect::<Vec<_>>().join(","))
                                .unwrap_or_default(),
                            cell(&a["serving"]),
                            cell(&a["path"]),
                        ]
                    })
                    .collect();
                table::print(
                    &["name", "version", "abi", "engines", "serving", "path"],
                    &rows,
                );
            });
            Ok(())
        }
        Command::Catalog(cat) => catalog(&c, json, cat).await,
        Command::Artifacts(Artifacts::Get { id }) => {
            let v = c.get(&format!("/v1/artifacts/{id}")).await?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            Ok(())
        }
        Command::Artifacts(Artifacts::Put { file }) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CallError(format!("cannot read {}: {e}", file.display())))?;
            let doc: Value = serde_json::from_str(&text)
                .map_err(|e| CallError(format!("{} is not JSON: {e}", file.display())))?;
            let v = c.post("/v1/artifacts", &doc).await?;
            show(json, &v, fields);
            Ok(())
        }
        Command::Top { interval_ms, once } => top::run(&c, interval_ms, once).await,
    }
}

async fn tasks(c: &Client, json: bool, t: Tasks) -> Result<()> {
    match t {
        Tasks::Submit {
            model,
            prompt,
            engine,
            max_tokens,
            session,
            priority,
            deadline_ms,
            no_stream,
        } => {
            let prompt = match prompt {
                Some(p) => p,
                None => std::io::read_to_string(std::io::stdin())
                    .map_err(|e| CallError(format!("reading the prompt from stdin: {e}")))?,
            };
            let engine = match engine {
                Some(e) => e,
                None => {
                    let pools = c.get("/v1/pools").await?;
                    pools["pools"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|p| p["model_ref"] == model.as_str())
                        .and_then(|p| p["engine"].as_str())
                        .map(str::to_owned)
                        .ok_or_else(|| {
                            CallError(format!(
                                "no pool serves model {model:?}; see orchctl pools list"
                            ))
                        })?
                }
            };
            let body = json!({
                "workload": "completion",
                "engine": engine,
                "model_ref": model,
                "ctx": 4096,
                "priority": priority,
                "prompt": prompt,
                "max_tokens": max_tokens,
                "deadline_ms": deadline_ms,
                "session_id": session.unwrap_or_else(|| format!("orchctl-{}", std::process::id())),
            });
            let accepted = c.post("/v1/tasks", &body).await?;
            let id = accepted["task_id"].as_str().unwrap_or_default().to_owned();
            if no_stream {
                show(json, &accepted, |_| println!("{id}"));
                return Ok(());
            }
            eprintln!("task {id}");
            stream(c, json, &id, None).await
        }
        Tasks::Get { id } => {
            let v = c.get(&format!("/v1/tasks/{id}")).await?;
            show(json, &v, fields);
            Ok(())
        }
        Tasks::Stream { id, after } => stream(c, json, &id, after).await,
        Tasks::Cancel { id } => {
            let v = c
                .post(&format!("/v1/tasks/{id}/cancel"), &json!({}))
                .await?;
            show(json, &v, |_| println!("task {id} canceled"));
            Ok(())
        }
    }
}

/// Tokens to stdout as they come (or every event as a JSON line); the end or the error on
/// stderr. A task that ends in error is a failure of the command.
async fn stream(c: &Client, json: bool, id: &str, after: Option<u64>) -> Result<()> {
    use std::io::Write;
    let mut failed = None;
    c.stream(id, after, |e| {
        if json {
            println!("{}", json!({"id": e.id, "event": e.event, "data": e.data}));
            return;
        }
        match e.event.as_str() {
            "token" => {
                print!("{}", e.data["t"].as_str().unwrap_or(""));
                let _ = std::io::stdout().flush();
            }
            "end" => {
                println!();
                eprintln!(
                    "end: {} tokens out, {} in",
                    cell(&e.data["tokens_out"]),
                    cell(&e.data["tokens_in"])
                );
            }
            "error" => {
                println!();
                failed = Some(format!(
                    "{}: {}",
                    cell(&e.data["code"]),
                    cell(&e.data["message"])
                ));
            }
            _ => {}
        }
    })
    .await?;
    match failed {
        Some(why) => Err(CallError(format!("task {id} failed: {why}"))),
        None => Ok(()),
    }
}

async fn pools(c: &Client, json: bool, p: Pools) -> Result<()> {
    let v = match p {
        Pools::List => {
            let v = c.get("/v1/pools").await?;
            show(json, &v, pools_table);
            return Ok(());
        }
        Pools::Health { id } => c.get(&format!("/v1/pools/{id}/health")).await?,
        Pools::Drain { id, deadline_ms } => {
            c.post(
                &format!("/v1/pools/{id}/drain"),
                &json!({ "deadline_ms": deadline_ms }),
            )
            .await?
        }
        Pools::Undrain { id } => {
            c.post(&format!("/v1/pools/{id}/undrain"), &json!({}))
                .await?
        }
        Pools::Reload { id, model_ref } => {
            c.post(
                &format!("/v1/pools/{id}/reload"),
                &json!({ "new_model_ref": model_ref }),
            )
            .await?
        }
    };
    show(json, &v, fields);
    Ok(())
}

async fn policies(c: &Client, json: bool, p: Policies) -> Result<()> {
    match p {
        Policies::List => {
            let v = c.get("/v1/policies").await?;
            show(json, &v, policies_table);
        }
        Policies::Config { kind, json: text } => {
            let config: Value = serde_json::from_str(&text)
                .map_err(|e| CallError(format!("the config is not JSON: {e}")))?;
            let v = c
                .post(&format!("/v1/policies/{kind}/config"), &config)
                .await?;
            show(json, &v, policies_table);
        }
        Policies::Swap { kind, file } => {
            let (_, live) = policy_dir(c, &kind).await?;
            let sha = sha256_of(&file)?;
            install(&file, &live)?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            loop {
                let list = c.get("/v1/policies").await?;
                let now = list["policies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["kind"] == kind.as_str())
                    .cloned()
                    .unwrap_or(Value::Null);
                if now["sha256"] == sha.as_str() {
                    show(json, &now, |p| {
                        println!(
                            "{kind}: {} {} is in force ({})",
                            cell(&p["name"]),
                            cell(&p["version"]),
                            &sha[..12]
                        )
                    });
                    return Ok(());
                }
                if now["refused"]["sha256"] == sha.as_str() {
                    return Err(CallError(format!(
                        "{kind}: the daemon refused {}: {}; {} {} keeps serving",
                        file.display(),
                        cell(&now["refused"]["reason"]),
                        cell(&now["name"]),
                        cell(&now["version"])
                    )));
                }
                if std::time::Instant::now() > deadline {
                    return Err(CallError(format!(
                        "{kind}: the daemon has not loaded {} after 120 s",
                        file.display()
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        Policies::DryRun { kind, file, config } | Policies::Replay { kind, file, config } => {
            let name = stage_candidate(c, &kind, &file).await?;
            let v = c
                .post(
                    &format!("/v1/policies/{kind}/replay"),
                    &candidate_body(name, &config)?,
                )
                .await?;
            show(json, &v, report_table);
        }
        Policies::Shadow(Shadow::Start { kind, file, config }) => {
            let name = stage_candidate(c, &kind, &file).await?;
            let v = c
                .post(
                    &format!("/v1/policies/{kind}/shadow"),
                    &candidate_body(name, &config)?,
                )
                .await?;
            show(json, &v, report_table);
        }
        Policies::Shadow(Shadow::Status { kind }) => {
            let v = c.get(&format!("/v1/policies/{kind}/shadow")).await?;
            show(json, &v, report_table);
        }
        Policies::Shadow(Shadow::Stop { kind }) => {
            let v = c.delete(&format!("/v1/policies/{kind}/shadow")).await?;
            show(json, &v, report_table);
        }
    }
    Ok(())
}

async fn catalog(c: &Client, json: bool, cat: Catalog) -> Result<()> {
    let v = match cat {
        Catalog::Models => {
            let v = c.get("/v1/models").await?;
            show(json, &v, |v| {
                let rows: Vec<Vec<String>> = v["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| vec![cell(&m["id"]), cell(&m["owned_by"])])
                    .collect();
                table::print(&["model", "owned by"], &rows);
            });
            return Ok(());
        }
        Catalog::Get { id } => c.get(&format!("/v1/catalog/models/{id}")).await?,
        Catalog::Add {
            id,
            digest,
            source_url,
        } => {
            let mut body = json!({ "id": id, "digest": digest });
            if let Some(u) = source_url {
                body["source_url"] = json!(u);
            }
            c.post("/v1/catalog/models", &body).await?
        }
        Catalog::Verify { id } => {
            c.post(&format!("/v1/catalog/models/{id}/verify"), &json!({}))
                .await?
        }
        Catalog::Delete { id } => c.delete(&format!("/v1/catalog/models/{id}")).await?,
    };
    show(json, &v, fields);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orchctl: {e}");
            ExitCode::FAILURE
        }
    }
}
