//! Loads adapter libraries through the stable ABI and wraps them in the host's traits.
//!
//! The only module that sees `abi_stable` types. Libraries are loaded from private copies
//! named by content hash (so a new build is a new path, and dlopen never returns the old
//! code for it) and never unloaded (abi_stable leaks them on purpose).

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::filestamp::{HashCache, sha256_file};
use abi_stable::library::{LibraryError, lib_header_from_path};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RNone, ROption, RResult, RSome, RStr, RString, RVec};
use orchd_adapter_abi::ffi::{FfiEventSink, FfiEventSink_TO};
use orchd_adapter_abi::legacy::{v0_1_2, v0_1_3};
use orchd_adapter_abi::{
    self as abi, AdapterModRef, ChatEvent, Event, FfiClientBox, FfiJobBox, SinkStatus,
    SubmitRequest,
};
use orchd_contracts::chat::{TokenLogprob, ToolCallFrame, TopLogprob};
use tokio::sync::mpsc;

use super::{
    Adapter, AdapterInfo, ChatDelta, ChatJob, EngineClient, EngineEnd, EngineEvent, EngineFailure,
    EngineHealth, EngineJob, EngineProps, FailureKind, FailurePhase, JobSpec,
};

/// What happened to one file of the adapter directory.
#[derive(Debug)]
pub enum LoadOutcome {
    /// Loaded and serving its name; `replaced` is the version that served before, if any
    /// (pools on that adapter switch their new work to this one).
    Loaded {
        info: AdapterInfo,
        replaced: Option<String>,
    },
    Refused {
        path: PathBuf,
        reason: String,
    },
}

/// Every adapter library loaded from the adapter directory, by name, every version of it.
///
/// The daemon never maps a file someone else may overwrite: each library is copied into a
/// private directory (0700), named by its content hash, and loaded from there, so a `cp`
/// over the original cannot touch the code that runs. A new build of an adapter already
/// loaded (same name, any file name) is loaded beside the old one and serves new work;
/// work already started finishes on the old one. Libraries are never unloaded: unloading
/// code that may still run is unsafe (abi_stable leaks them on purpose), so an old version
/// stays mapped, idle, until the daemon restarts.
pub struct AdapterRegistry {
    adapters: RwLock<BTreeMap<String, Versions>>,
    /// The content hash each file had when last looked at (loaded or refused).
    seen: Mutex<HashMap<PathBuf, String>>,
    /// Stamps and hashes: a rescan reads only the files whose stat changed.
    hashes: HashCache,
    /// Where the private copies live (`None`: load in place, for tools).
    private: Option<PathBuf>,
}

/// The versions of one adapter, in load order; the last one serves.
#[derive(Default)]
struct Versions(Vec<Arc<dyn Adapter>>);

impl Versions {
    fn serving(&self) -> Option<&Arc<dyn Adapter>> {
        self.0.last()
    }
}

impl AdapterRegistry {
    fn new(private: Option<PathBuf>) -> Self {
        Self {
            adapters: RwLock::default(),
            seen: Mutex::default(),
            hashes: HashCache::new("adapter"),
            private,
        }
    }

    /// Loads every `*.so` in `dir` (sorted by name) from private copies in a directory of
    /// this process under `private_root` (`<root>/<pid>`, 0700; the directories of daemons
    /// no longer running are removed). A library that cannot be loaded is refused and
    /// reported; it never stops the others.
    pub fn load_dir(dir: &Path, private_root: &Path) -> std::io::Result<(Self, Vec<LoadOutcome>)> {
        std::fs::create_dir_all(private_root)?;
        restrict(private_root, 0o700)?;
        for entry in std::fs::read_dir(private_root)?.flatten() {
            let name = entry.file_name();
            let gone = name
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
            if gone {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let private = private_root.join(std::process::id().to_string());
        if private.exists() {
            std::fs::remove_dir_all(&private)?;
        }
        std::fs::create_dir_all(&private)?;
        restrict(&private, 0o700)?;
        let registry = Self::new(Some(private));
        let outcomes = registry.rescan(dir)?;
        Ok((registry, outcomes))
    }

    /// Loads what is new in `dir`: files not seen before or whose content changed. A new
    /// version of an adapter already loaded serves new work from now on.
    pub fn rescan(&self, dir: &Path) -> std::io::Result<Vec<LoadOutcome>> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "so"))
            .collect();
        paths.sort();
        let mut outcomes = Vec::new();
        for path in paths {
            let Ok(sha) = self.hashes.sha256(&path) else {
                continue; // vanished or unreadable mid-copy; the next event retries
            };
            {
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                if seen.get(&path) == Some(&sha) {
                    continue;
                }
                seen.insert(path.clone(), sha.clone());
            }
            if self.holds(&sha) {
                // The same bytes under another name (or again): already loaded.
                continue;
            }
            let mapped = match self.private_copy(&path, &sha) {
                Ok(Some(mapped)) => mapped,
                Ok(None) => {
                    // Changed while being copied: the write's own event brings it back.
                    self.seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&path);
                    continue;
                }
                Err(e) => {
                    outcomes.push(LoadOutcome::Refused {
                        path,
                        reason: format!("cannot copy it into the daemon's private directory: {e}"),
                    });
                    continue;
                }
            };
            let outcome = match load_library(&mapped, sha) {
                Ok(mut adapter) => {
                    adapter.info.path = path;
                    adapter.info.mapped = Some(mapped);
                    let info = adapter.info().clone();
                    let mut adapters = self.adapters.write().unwrap_or_else(|p| p.into_inner());
                    let versions = adapters.entry(info.name.clone()).or_default();
                    let replaced = versions.serving().map(|a| a.info().version.clone());
                    versions.0.push(Arc::new(adapter));
                    LoadOutcome::Loaded { info, replaced }
                }
                Err(reason) => LoadOutcome::Refused {
                    reason: format!("{reason} ({})", path.display()),
                    path,
                },
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Whether a library with this content is loaded.
    fn holds(&self, sha: &str) -> bool {
        self.read()
            .values()
            .flat_map(|v| &v.0)
            .any(|a| a.info().sha256 == sha)
    }

    /// Copies `path` to `<private>/<sha>.so` (read-only, owner only) and checks the copy
    /// has that hash: `None` if the file changed meanwhile. Without a private directory
    /// the library is loaded where it is.
    fn private_copy(&self, path: &Path, sha: &str) -> std::io::Result<Option<PathBuf>> {
        let Some(dir) = &self.private else {
            return Ok(Some(path.to_path_buf()));
        };
        let target = dir.join(format!("{sha}.so"));
        if target.exists() {
            return Ok(Some(target));
        }
        let partial = dir.join(format!("{sha}.partial"));
        std::fs::copy(path, &partial)?;
        if sha256_file(&partial)? != sha {
            std::fs::remove_file(&partial)?;
            return Ok(None);
        }
        restrict(&partial, 0o500)?;
        std::fs::rename(&partial, &target)?;
        Ok(Some(target))
    }

    /// Loads one library (the conformance kit and tools); the same checks as `load_dir`.
    pub fn load_file(path: &Path) -> Result<Arc<dyn Adapter>, String> {
        let sha256 = sha256_file(path).map_err(|e| format!("cannot read: {e}"))?;
        load_library(path, sha256).map(|a| Arc::new(a) as Arc<dyn Adapter>)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Versions>> {
        self.adapters.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The version of `name` that serves new work.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Adapter>> {
        self.read().get(name).and_then(Versions::serving).cloned()
    }

    /// The serving version of every adapter, by name.
    pub fn all(&self) -> Vec<Arc<dyn Adapter>> {
        self.read()
            .values()
            .filter_map(Versions::serving)
            .cloned()
            .collect()
    }

    /// Every loaded version of every adapter, by name then load order, and whether it
    /// serves.
    pub fn every_version(&self) -> Vec<(Arc<dyn Adapter>, bool)> {
        self.read()
            .values()
            .flat_map(|v| {
                let last = v.0.len() - 1;
                v.0.iter()
                    .enumerate()
                    .map(move |(i, a)| (Arc::clone(a), i == last))
            })
            .collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Every engine some loaded adapter declares.
    pub fn serves_engine(&self, engine: &str) -> bool {
        self.read()
            .values()
            .filter_map(Versions::serving)
            .any(|a| a.info().engines.iter().any(|e| e == engine))
    }
}

fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// The first line of an abi_stable error (some span hundreds of lines).
fn summarize(err: &LibraryError) -> String {
    match err {
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => format!(
            "ABI version mismatch: expected {expected_version} (compatible), found {actual_version}"
        ),
        LibraryError::AbiInstability(e) => match layout_difference(&e.to_string()) {
            Some((what, expected, found)) if what == "incompatible package versions" => format!(
                "ABI layout mismatch: expected ABI {expected} (this host's layout), found {found}"
            ),
            Some((what, expected, found)) => format!(
                "ABI layout mismatch: {what}: expected {expected}, found {found} (the library's types differ from this host's, ABI {})",
                abi::ABI_VERSION
            ),
            None => format!(
                "ABI layout mismatch: the library's types differ from this host's (ABI {})",
                abi::ABI_VERSION
            ),
        },
        other => other
            .to_string()
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("unknown library error")
            .trim()
            .to_owned(),
    }
}

/// The most telling difference abi_stable's layout report names (`Error:` what, then
/// `Expected:` and `Found:` blocks): a package version difference if there is one, else
/// the first.
fn layout_difference(report: &str) -> Option<(String, String, String)> {
    let lines: Vec<&str> = report.lines().map(str::trim).collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(what) = line.strip_prefix("Error:") else {
            continue;
        };
        let after = |label: &str| {
            lines[i..]
                .iter()
                .position(|l| *l == label)
                .and_then(|at| lines[i + at + 1..].iter().find(|l| !l.is_empty()))
                .map(|l| l.to_string())
        };
        if let (Some(expected), Some(got)) = (after("Expected:"), after("Found:")) {
            found.push((what.trim().to_owned(), expected, got));
        }
    }
    let pick = found
        .iter()
        .position(|(what, _, _)| what.contains("package version"))
        .unwrap_or(0);
    (!found.is_empty()).then(|| found.swap_remove(pick))
}

/// Refuses a file that is not a whole 64-bit little-endian ELF shared object: every
/// segment the loader maps and the section table must lie inside the file. A library cut
/// short (an interrupted copy) would otherwise load, and crash the daemon (SIGBUS) the
/// first time code past the cut runs.
fn check_elf(bytes: &[u8]) -> Result<(), String> {
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err("not a 64-bit little-endian ELF library".to_owned());
    }
    let cut = || {
        format!(
            "the file is cut short ({} bytes): an interrupted copy?",
            bytes.len()
        )
    };
    let size = bytes.len() as u64;
    let (ph_off, ph_size, ph_num) = (
        u64_at(0x20).ok_or_else(cut)?,
        u64::from(u16_at(0x36).ok_or_else(cut)?),
        u64::from(u16_at(0x38).ok_or_else(cut)?),
    );
    let (sh_off, sh_size, sh_num) = (
        u64_at(0x28).ok_or_else(cut)?,
        u64::from(u16_at(0x3a).ok_or_else(cut)?),
        u64::from(u16_at(0x3c).ok_or_else(cut)?),
    );
    if ph_off.saturating_add(ph_size.saturating_mul(ph_num)) > size
        || sh_off.saturating_add(sh_size.saturating_mul(sh_num)) > size
    {
        return Err(cut());
    }
    for i in 0..ph_num {
        let at = (ph_off + i * ph_size) as usize;
        let p_type = bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
        let offset = u64_at(at + 8).ok_or_else(cut)?;
        let file_size = u64_at(at + 32).ok_or_else(cut)?;
        // PT_LOAD: the loader maps it from the file.
        if p_type == Some(1) && offset.saturating_add(file_size) > size {
            return Err(cut());
        }
    }
    Ok(())
}

fn load_library(path: &Path, sha256: String) -> Result<LoadedAdapter, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    check_elf(&bytes)?;
    drop(bytes);
    let header = lib_header_from_path(path).map_err(|e| summarize(&e))?;
    // What the library says it was built against, for a layout mismatch's message.
    let declared = header.version_strings().version;
    // A library built against this ABI, or against 0.1.3 or 0.1.2 (each checked against
    // its own frozen layout: abi_stable refuses a library with fewer prefix fields than
    // the loader's).
    let module = match header.init_root_module::<AdapterModRef>() {
        Ok(m) => Module::Current(m),
        Err(current @ LibraryError::AbiInstability(_)) => {
            if let Ok(m) = header.init_root_module::<v0_1_3::AdapterModRef>() {
                Module::V013(m)
            } else if let Ok(m) = header.init_root_module::<v0_1_2::AdapterModRef>() {
                Module::V012(m)
            } else {
                return Err(format!(
                    "{} (the library declares ABI {declared})",
                    summarize(&current)
                ));
            }
        }
        Err(e) => return Err(summarize(&e)),
    };
    let info = match module.info() {
        RResult::ROk(info) => info,
        RResult::RErr(e) => return Err(format!("info() failed: {e}")),
    };
    // abi_stable checked semver compatibility; the library also names the exact ABI it
    // was built with, which we report.
    let f = info.features;
    let features = [
        ("streaming", f.streaming),
        ("cancel", f.cancel),
        ("embeddings", f.embeddings),
        ("rerank", f.rerank),
        ("tokenize", f.tokenize),
        ("metrics", f.metrics),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(name, _)| name.to_owned())
    // Named features appended in ABI 0.1.3; a library built before has none.
    .chain(module.more_features())
    .collect();
    let info = AdapterInfo {
        name: info.name.into(),
        version: info.version.into(),
        abi_version: info.abi_version.into(),
        engines: info.engines.into_iter().map(Into::into).collect(),
        features,
        path: path.to_path_buf(),
        mapped: None,
        sha256,
    };
    Ok(LoadedAdapter { info, module })
}

/// The ABI version this host expects, for log lines.
pub fn expected_abi_version() -> &'static str {
    abi::ABI_VERSION
}

/// A library's root module: this ABI's, or a frozen earlier one's.
#[derive(Clone, Copy)]
enum Module {
    Current(AdapterModRef),
    V013(v0_1_3::AdapterModRef),
    V012(v0_1_2::AdapterModRef),
}

impl Module {
    fn info(&self) -> RResult<abi::AdapterInfo, abi::AdapterError> {
        match self {
            Self::Current(m) => (m.info())(),
            Self::V013(m) => (m.info())(),
            Self::V012(m) => (m.info())(),
        }
    }

    /// Features named after 0.1.2's flags (none in a 0.1.2 library).
    fn more_features(&self) -> Vec<String> {
        match self {
            Self::Current(m) => m
                .more_features()
                .map(|more| more().into_iter().map(String::from).collect())
                .unwrap_or_default(),
            Self::V013(m) => m
                .more_features()
                .map(|more| more().into_iter().map(String::from).collect())
                .unwrap_or_default(),
            Self::V012(_) => Vec::new(),
        }
    }
}

struct LoadedAdapter {
    info: AdapterInfo,
    module: Module,
}

impl Adapter for LoadedAdapter {
    fn info(&self) -> &AdapterInfo {
        &self.info
    }

    fn new_client(&self, config_json: &str) -> Result<Arc<dyn EngineClient>, EngineFailure> {
        let config = RStr::from_str(config_json);
        let client = match self.module {
            Module::Current(m) => (m.new_client())(config).map(ClientBox::Current),
            Module::V013(m) => (m.new_client())(config).map(ClientBox::V013),
            Module::V012(m) => (m.new_client())(config).map(ClientBox::V012),
        };
        match client {
            RResult::ROk(client) => Ok(Arc::new(FfiClient(client))),
            RResult::RErr(e) => Err(failure(e)),
        }
    }
}

fn failure(e: abi::AdapterError) -> EngineFailure {
    EngineFailure {
        kind: match e.kind {
            abi::ErrorKind::Config => FailureKind::Config,
            abi::ErrorKind::InvalidRequest => FailureKind::InvalidRequest,
            abi::ErrorKind::Transport => FailureKind::Transport,
            abi::ErrorKind::Timeout => FailureKind::Timeout,
            abi::ErrorKind::Upstream => FailureKind::Upstream,
            abi::ErrorKind::Protocol => FailureKind::Protocol,
            abi::ErrorKind::Panic => FailureKind::Panic,
            abi::ErrorKind::Internal => FailureKind::Internal,
        },
        phase: match e.phase {
            abi::Phase::Control => FailurePhase::Control,
            abi::Phase::BeforeFirstToken => FailurePhase::BeforeFirstToken,
            abi::Phase::MidStream => FailurePhase::MidStream,
        },
        upstream_status: (e.upstream_status != 0).then_some(e.upstream_status),
        message: e.message.into(),
    }
}

fn result<T, U>(
    r: RResult<T, abi::AdapterError>,
    f: impl FnOnce(T) -> U,
) -> Result<U, EngineFailure> {
    match r {
        RResult::ROk(v) => Ok(f(v)),
        RResult::RErr(e) => Err(failure(e)),
    }
}

/// A client from a library of this ABI, of 0.1.3 or of 0.1.2.
enum ClientBox {
    Current(FfiClientBox),
    V013(v0_1_3::FfiClientBox),
    V012(v0_1_2::FfiClientBox),
}

struct FfiClient(ClientBox);

/// Calls the same method on either kind of client.
macro_rules! on_client {
    ($client:expr, $c:ident => $call:expr) => {
        match &$client {
            ClientBox::Current($c) => $call,
            ClientBox::V013($c) => $call,
            ClientBox::V012($c) => $call,
        }
    };
}

impl EngineClient for FfiClient {
    fn health(&self) -> Result<EngineHealth, EngineFailure> {
        result(on_client!(self.0, c => c.health()), |h| EngineHealth {
            live: h.live,
            ready: h.ready,
            message: h.message.into(),
        })
    }

    fn props(&self) -> Result<EngineProps, EngineFailure> {
        result(on_client!(self.0, c => c.props()), |p| EngineProps {
            slots_total: p.slots_total,
            slots_free: p.slots_free,
            ctx_max: p.ctx_max,
            engine_version: p.engine_version.into(),
            model: p.model.into(),
        })
    }

    fn submit(
        &self,
        job: JobSpec,
        events: mpsc::Sender<EngineEvent>,
    ) -> Result<Box<dyn EngineJob>, EngineFailure> {
        let sink = HostSink::new(events, &job);
        let req = SubmitRequest {
            task_id: job.task_id.into(),
            model: job.model.into(),
            prompt: job.prompt.into(),
            max_tokens: job.max_tokens,
            seed: job.seed,
            params_json: job.params_json.into(),
        };
        let submitted = match &self.0 {
            ClientBox::Current(c) => c.submit(req, FfiEventSink_TO::from_value(sink, TD_Opaque)),
            ClientBox::V013(c) => {
                c.submit(req, v0_1_3::FfiEventSink_TO::from_value(sink, TD_Opaque))
            }
            ClientBox::V012(c) => {
                c.submit(req, v0_1_2::FfiEventSink_TO::from_value(sink, TD_Opaque))
            }
        };
        result(submitted, |job| Box::new(FfiJob(job)) as Box<dyn EngineJob>)
    }

    fn submit_chat(
        &self,
        job: JobSpec,
        events: mpsc::Sender<EngineEvent>,
    ) -> Result<Box<dyn EngineJob>, EngineFailure> {
        let Some(chat) = job.chat.as_deref() else {
            return Err(EngineFailure::new(
                FailureKind::Internal,
                FailurePhase::BeforeFirstToken,
                "a chat submission without a conversation",
            ));
        };
        let req = chat_request(&job, chat);
        let sink = HostSink::new(events, &job);
        let submitted = match &self.0 {
            ClientBox::Current(c) => {
                c.submit_chat(req, FfiEventSink_TO::from_value(sink, TD_Opaque))
            }
            ClientBox::V013(c) => {
                c.submit_chat(req, v0_1_3::FfiEventSink_TO::from_value(sink, TD_Opaque))
            }
            ClientBox::V012(_) => {
                return Err(EngineFailure::new(
                    FailureKind::InvalidRequest,
                    FailurePhase::BeforeFirstToken,
                    "this adapter was built against ABI 0.1.2, before chat",
                ));
            }
        };
        result(submitted, |job| Box::new(FfiJob(job)) as Box<dyn EngineJob>)
    }

    fn embed(&self, inputs: Vec<String>) -> Result<Vec<Vec<f32>>, EngineFailure> {
        let inputs = inputs.into_iter().map(RString::from).collect();
        result(on_client!(self.0, c => c.embed(inputs)), |vectors| {
            vectors.into_iter().map(|v| v.into_vec()).collect()
        })
    }

    fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineFailure> {
        result(
            on_client!(self.0, c => c.tokenize(RString::from(text))),
            |ids| ids.into_vec(),
        )
    }
}

struct FfiJob(FfiJobBox);

impl EngineJob for FfiJob {
    fn cancel(&self) -> Result<(), EngineFailure> {
        result(self.0.cancel(), |()| ())
    }
}

fn ropt(s: &Option<String>) -> ROption<RString> {
    s.as_deref().map(RString::from).into()
}

/// A validated chat job in the ABI's terms.
fn chat_request(job: &JobSpec, chat: &ChatJob) -> abi::ChatRequest {
    use orchd_contracts::chat::{Content, ResponseFormat, Role, ToolChoice};
    let messages = chat
        .messages
        .iter()
        .map(|m| {
            let (content, parts) = match &m.content {
                None => (RNone, RVec::new()),
                Some(Content::Text(t)) => (RSome(RString::from(t.as_str())), RVec::new()),
                Some(Content::Parts(parts)) => (
                    RNone,
                    parts
                        .iter()
                        .map(|p| RString::from(p.text.as_deref().unwrap_or("")))
                        .collect(),
                ),
            };
            abi::ChatMessage {
                role: match m.role {
                    Role::System => abi::ChatRole::System,
                    Role::Developer => abi::ChatRole::Developer,
                    Role::User => abi::ChatRole::User,
                    Role::Assistant => abi::ChatRole::Assistant,
                    Role::Tool => abi::ChatRole::Tool,
                },
                content,
                parts,
                name: ropt(&m.name),
                tool_calls: m
                    .tool_calls
                    .iter()
                    .flatten()
                    .map(|c| abi::ChatToolCall {
                        id: c.id.as_str().into(),
                        name: c.function.name.as_str().into(),
                        arguments: c.function.arguments.as_str().into(),
                    })
                    .collect(),
                tool_call_id: ropt(&m.tool_call_id),
            }
        })
        .collect();
    let tools = chat
        .tools
        .iter()
        .map(|t| abi::ChatTool {
            name: t.function.name.as_str().into(),
            description: ropt(&t.function.description),
            parameters_json: t
                .function
                .parameters
                .as_ref()
                .map(|p| RString::from(p.to_string()))
                .into(),
            strict: t.function.strict.into(),
        })
        .collect();
    let tool_choice = match &chat.tool_choice {
        None => abi::ToolChoice {
            mode: abi::ToolChoiceMode::Unset,
            function: RString::new(),
        },
        Some(ToolChoice::Mode(mode)) => abi::ToolChoice {
            mode: match mode.as_str() {
                "none" => abi::ToolChoiceMode::None,
                "required" => abi::ToolChoiceMode::Required,
                _ => abi::ToolChoiceMode::Auto,
            },
            function: RString::new(),
        },
        Some(ToolChoice::Named(named)) => abi::ToolChoice {
            mode: abi::ToolChoiceMode::Function,
            function: named.function.name.as_str().into(),
        },
    };
    let response_format = match &chat.response_format {
        None | Some(ResponseFormat::Text) => abi::ResponseFormat {
            kind: abi::ResponseFormatKind::Text,
            name: RString::new(),
            description: RNone,
            schema_json: RNone,
            strict: RNone,
        },
        Some(ResponseFormat::JsonObject) => abi::ResponseFormat {
            kind: abi::ResponseFormatKind::JsonObject,
            name: RString::new(),
            description: RNone,
            schema_json: RNone,
            strict: RNone,
        },
        Some(ResponseFormat::JsonSchema { json_schema }) => abi::ResponseFormat {
            kind: abi::ResponseFormatKind::JsonSchema,
            name: json_schema.name.as_str().into(),
            description: ropt(&json_schema.description),
            schema_json: json_schema
                .schema
                .as_ref()
                .map(|s| RString::from(s.to_string()))
                .into(),
            strict: json_schema.strict.into(),
        },
    };
    abi::ChatRequest {
        task_id: job.task_id.as_str().into(),
        model: job.model.as_str().into(),
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: chat.parallel_tool_calls.into(),
        response_format,
        logprobs: chat.logprobs,
        top_logprobs: chat.top_logprobs,
        frequency_penalty: chat.frequency_penalty.into(),
        presence_penalty: chat.presence_penalty.into(),
        logit_bias: chat
            .logit_bias
            .iter()
            .map(|&(token, bias)| abi::LogitBias { token, bias })
            .collect(),
        stop: chat
            .stop
            .iter()
            .map(|s| RString::from(s.as_str()))
            .collect(),
        seed: RSome(job.seed),
        max_tokens: job.max_tokens,
        params_json: job.params_json.as_str().into(),
    }
}

fn token_logprob(t: abi::TokenLogprob) -> TokenLogprob {
    TokenLogprob {
        token: t.token.into(),
        logprob: f64::from(t.logprob),
        bytes: Some(t.bytes.into_vec()),
        top_logprobs: t
            .top
            .into_iter()
            .map(|a| TopLogprob {
                token: a.token.into(),
                logprob: f64::from(a.logprob),
                bytes: Some(a.bytes.into_vec()),
            })
            .collect(),
    }
}

/// The host's end of a task's event stream, called from adapter-owned threads.
struct HostSink {
    events: mpsc::Sender<EngineEvent>,
    /// The task's trace context, for the engine request.
    trace: abi::TraceContext,
}

impl HostSink {
    fn new(events: mpsc::Sender<EngineEvent>, job: &JobSpec) -> Self {
        Self {
            events,
            trace: abi::TraceContext {
                traceparent: job.trace.traceparent.as_str().into(),
                tracestate: job.trace.tracestate.as_str().into(),
            },
        }
    }
}

impl FfiEventSink for HostSink {
    fn emit(&self, event: Event) -> SinkStatus {
        let event = match event {
            Event::Started { engine_version } => EngineEvent::Started {
                engine_version: engine_version.into(),
            },
            Event::Token { text } => EngineEvent::Token(text.into()),
            Event::End {
                tokens_in,
                tokens_out,
            } => EngineEvent::End(EngineEnd {
                // 0 is what adapters built before 0.1.3 say when the engine said nothing.
                tokens_in: (tokens_in > 0).then_some(tokens_in),
                tokens_out: (tokens_out > 0).then_some(tokens_out),
                ..EngineEnd::default()
            }),
            Event::Error(e) => EngineEvent::Error(failure(e)),
        };
        self.send(event)
    }

    fn emit_chat(&self, event: ChatEvent) -> SinkStatus {
        let event = match event {
            ChatEvent::Started { engine_version } => EngineEvent::Started {
                engine_version: engine_version.into(),
            },
            ChatEvent::Delta(d) => EngineEvent::Delta(ChatDelta {
                content: d.content.into(),
                tool_calls: d
                    .tool_calls
                    .into_iter()
                    .map(|t| ToolCallFrame {
                        index: t.index,
                        id: t.id.into_option().map(String::from),
                        name: t.name.into_option().map(String::from),
                        arguments: t.arguments.into(),
                    })
                    .collect(),
                logprobs: d.logprobs.into_iter().map(token_logprob).collect(),
            }),
            ChatEvent::End(end) => {
                let usage = end.usage.into_option();
                EngineEvent::End(EngineEnd {
                    tokens_in: usage.map(|u| u.prompt_tokens),
                    tokens_out: usage.map(|u| u.completion_tokens),
                    cached_tokens: usage.and_then(|u| u.cached_tokens.into_option()),
                    finish_reason: (!end.finish_reason.is_empty())
                        .then(|| end.finish_reason.into()),
                })
            }
            ChatEvent::Error(e) => EngineEvent::Error(failure(e)),
        };
        self.send(event)
    }

    fn trace_context(&self) -> abi::TraceContext {
        self.trace.clone()
    }
}

impl v0_1_3::FfiEventSink for HostSink {
    fn emit(&self, event: Event) -> SinkStatus {
        abi::ffi::FfiEventSink::emit(self, event)
    }

    fn emit_chat(&self, event: ChatEvent) -> SinkStatus {
        abi::ffi::FfiEventSink::emit_chat(self, event)
    }
}

impl v0_1_2::FfiEventSink for HostSink {
    fn emit(&self, event: Event) -> SinkStatus {
        abi::ffi::FfiEventSink::emit(self, event)
    }
}

impl HostSink {
    fn send(&self, event: EngineEvent) -> SinkStatus {
        // Adapter threads are never tokio workers, so blocking here is the backpressure
        // the ABI promises. A panic must not cross back into the adapter.
        match catch_unwind(AssertUnwindSafe(|| self.events.blocking_send(event))) {
            Ok(Ok(())) => SinkStatus::Continue,
            Ok(Err(_)) | Err(_) => SinkStatus::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_library_cut_short_is_refused_before_it_is_mapped() {
        let whole = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(super::check_elf(&whole), Ok(()));
        let cut = super::check_elf(&whole[..whole.len() / 3]).unwrap_err();
        assert!(cut.contains("cut short"), "{cut}");
        assert!(super::check_elf(b"\x7fELF").is_err());
        assert!(super::check_elf(b"these are not machine instructions").is_err());
    }

    #[test]
    fn a_layout_report_names_the_versions() {
        let report = "Error:incompatible type size\nExpected:\n    8\nFound:\n    16\n\nError:incompatible package versions\nExpected:\n    0.1.3\nFound:\n    0.2.0\n";
        assert_eq!(
            super::layout_difference(report),
            Some((
                "incompatible package versions".into(),
                "0.1.3".into(),
                "0.2.0".into()
            ))
        );
        assert_eq!(super::layout_difference("nothing useful"), None);
    }
}
