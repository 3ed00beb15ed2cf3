//! The artifact store (API.md §3): content-addressed JSON documents on the filesystem.
//!
//! Layout under the store's directory:
//! - `objects/<hex>.json` — the document; `<hex>` is the SHA-256 of its canonical form
//!   (kind, content, tags, parent, metadata), so equal content has one id.
//! - `owners/<hex>/<owner-tag>` — an empty file per key that created it: a key sees only
//!   what it created (admins see everything), and another key's id is a plain 404.
//! - `tmp/` — where every file is written before it is renamed into place.
//! - `transcripts.sqlite` — task transcripts (SQLite, WAL, `synchronous=FULL`), one row per
//!   transcript with its owner tag.
//!
//! A client's artifact is written temp → fsync → rename → fsync of the directory, so it is
//! either absent or whole, and once a `201` is sent it survives a crash. Transcripts are
//! recorded from inside a task's terminal transition, which must not block: they go to a
//! writer thread that stores whatever has queued in one transaction (one WAL commit per
//! batch, instead of three inodes and five fsyncs per transcript as files), and reads are
//! served from memory until the row is committed.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use orchd_contracts::{ArtifactCreated, ArtifactKind, ArtifactRequest};
use rusqlite::{Connection, params};
use serde_json::Value;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("artifact is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("artifact store: {0}")]
    Io(#[from] io::Error),
}

/// A document waiting for the writer thread.
struct Job {
    hex: String,
    doc: Arc<Vec<u8>>,
    owner: String,
}

pub struct ArtifactStore {
    dir: PathBuf,
    max_bytes: usize,
    /// Recorded but not yet on disk, by hex digest.
    pending: Mutex<HashMap<String, PendingDoc>>,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    tmp_counter: AtomicU64,
    /// Reads of stored transcripts (the writer thread has its own connection).
    transcripts: Mutex<Connection>,
}

/// A recorded document the writer thread has not written yet.
struct PendingDoc {
    doc: Arc<Vec<u8>>,
    owner_tag: String,
}

/// What an artifact is created from.
pub struct NewArtifact<'a> {
    pub kind: ArtifactKind,
    /// The content as compact JSON text.
    pub content_json: &'a str,
    pub tags: &'a [String],
    pub parent: Option<&'a str>,
    pub metadata: Option<&'a Value>,
}

/// A document and its id, ready to store.
struct Built {
    hex: String,
    created: ArtifactCreated,
    doc: Vec<u8>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The directory tag of a key name: no key name ever becomes a path component.
fn owner_tag(owner: &str) -> String {
    hex::encode(&Sha256::digest(owner.as_bytes())[..8])
}

/// `sha256:<64 hex>` → the hex part; anything else is no id at all.
pub fn parse_id(id: &str) -> Option<&str> {
    let hex = id.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

fn build(new: &NewArtifact<'_>, created_ms: u64) -> Built {
    let kind = serde_json::to_string(&new.kind).expect("kind serializes");
    let tags = serde_json::to_string(new.tags).expect("tags serialize");
    let parent = serde_json::to_string(&new.parent).expect("parent serializes");
    let metadata = serde_json::to_string(&new.metadata).expect("metadata serializes");
    let canonical = format!(
        r#"{{"kind":{kind},"content":{},"tags":{tags},"parent":{parent},"metadata":{metadata}}}"#,
        new.content_json
    );
    let hex = hex::encode(Sha256::digest(canonical.as_bytes()));
    let id = format!("sha256:{hex}");
    let doc = format!(
        r#"{{"id":"{id}","digest":"{id}","created_ms":{created_ms},"kind":{kind},"tags":{tags},"parent":{parent},"metadata":{metadata},"content":{}}}"#,
        new.content_json
    );
    Built {
        created: ArtifactCreated {
            id: id.clone(),
            kind: new.kind,
            digest: id,
            created_ms,
            tags: new.tags.to_vec(),
        },
        hex,
        doc: doc.into_bytes(),
    }
}

/// Writes `bytes` to `path` atomically and durably (temp in `tmp_dir`, fsync, rename,
/// fsync of the target directory).
fn write_atomic(tmp_dir: &Path, tmp_name: &str, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_dir.join(tmp_name);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Transcripts one transaction stores at most.
const MAX_BATCH: usize = 512;
/// How long the writer waits for more transcripts after the first of a batch: at most
/// ~500 commits (fsyncs) a second whatever the task rate, and a transcript is durable within
/// a few milliseconds of its task's end (it is readable from memory meanwhile).
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// Opens the transcript database, creating its table.
fn open_transcripts(path: &Path) -> io::Result<Connection> {
    let conn = Connection::open(path).map_err(io::Error::other)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .and_then(|()| conn.pragma_update(None, "synchronous", "FULL"))
        .and_then(|()| conn.busy_timeout(std::time::Duration::from_secs(5)))
        .and_then(|()| {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS transcripts (
                     hex TEXT NOT NULL, owner TEXT NOT NULL, doc BLOB NOT NULL,
                     PRIMARY KEY (hex, owner)) WITHOUT ROWID;",
            )
        })
        .map_err(io::Error::other)?;
    Ok(conn)
}

/// Stores a batch of transcripts in one transaction: one WAL commit for all of them.
fn store_transcripts(conn: &mut Connection, jobs: &[Job]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO transcripts (hex, owner, doc) VALUES (?1, ?2, ?3)",
        )?;
        for job in jobs {
            insert.execute(params![job.hex, job.owner, job.doc.as_slice()])?;
        }
    }
    tx.commit()
}

impl ArtifactStore {
    /// Opens (creating) the store under `dir`; leftovers of interrupted writes are removed.
    pub fn open(dir: &Path, max_bytes: usize) -> io::Result<Arc<Self>> {
        for sub in ["objects", "owners", "tmp"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        for entry in fs::read_dir(dir.join("tmp"))? {
            let _ = fs::remove_file(entry?.path());
        }
        let db = dir.join("transcripts.sqlite");
        let mut writer_conn = open_transcripts(&db)?;
        let reader_conn = open_transcripts(&db)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let store = Arc::new(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            pending: Mutex::new(HashMap::new()),
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(None),
            tmp_counter: AtomicU64::new(0),
            transcripts: Mutex::new(reader_conn),
        });
        let weak = Arc::downgrade(&store);
        let thread = std::thread::Builder::new()
            .name("orchd-artifacts".into())
            .spawn(move || {
                // Group commit: whatever queued while the last batch was being committed
                // goes out together.
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    let linger = std::time::Instant::now() + LINGER;
                    while batch.len() < MAX_BATCH {
                        let wait = linger.saturating_duration_since(std::time::Instant::now());
                        match rx.recv_timeout(wait) {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = store_transcripts(&mut writer_conn, &batch) {
                        tracing::error!(error = %e, count = batch.len(), "transcripts not stored");
                    }
                    let Some(store) = weak.upgrade() else { return };
                    let mut pending = store.lock_pending();
                    for job in &batch {
                        pending.remove(&job.hex);
                    }
                }
            })?;
        *store.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        Ok(store)
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, PendingDoc>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn object_path(&self, hex: &str) -> PathBuf {
        self.dir.join("objects").join(format!("{hex}.json"))
    }

    fn owner_path(&self, hex: &str, tag: &str) -> PathBuf {
        self.dir.join("owners").join(hex).join(tag)
    }

    fn tmp_name(&self, hex: &str) -> String {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        format!("{hex}.{}.{n}", std::process::id())
    }

    /// Puts the document in place (unless it already is) and records the owner.
    fn persist(&self, hex: &str, doc: &[u8], owner_tag: &str) -> io::Result<()> {
        let tmp_dir = self.dir.join("tmp");
        let object = self.object_path(hex);
        if !object.exists() {
            write_atomic(&tmp_dir, &self.tmp_name(hex), &object, doc)?;
        }
        let owner = self.owner_path(hex, owner_tag);
        if !owner.exists() {
            let dir = owner.parent().expect("owner path has a parent");
            fs::create_dir_all(dir)?;
            write_atomic(&tmp_dir, &self.tmp_name(hex), &owner, b"")?;
            File::open(self.dir.join("owners"))?.sync_all()?;
        }
        Ok(())
    }

    /// Stores a client's artifact durably (blocking: call off the async workers). Equal
    /// content gets the same id and keeps its first `created_ms`.
    pub fn put(&self, owner: &str, req: &ArtifactRequest) -> Result<ArtifactCreated, PutError> {
        let content = serde_json::to_string(&req.content).expect("JSON value serializes");
        let new = NewArtifact {
            kind: req.kind,
            content_json: &content,
            tags: &req.tags,
            parent: req.parent.as_deref(),
            metadata: req.metadata.as_ref(),
        };
        let mut built = build(&new, now_ms());
        if built.doc.len() > self.max_bytes {
            return Err(PutError::TooLarge {
                size: built.doc.len(),
                limit: self.max_bytes,
            });
        }
        if let Some(existing) = self.read_object(&built.hex)?
            && let Some(ms) = created_ms(&existing)
        {
            built = build(&new, ms);
        }
        self.persist(&built.hex, &built.doc, &owner_tag(owner))?;
        Ok(built.created)
    }

    /// Records a document without blocking (a task's transcript): readable at once,
    /// durable as soon as the writer thread has written it. Returns its id.
    pub fn record(&self, owner: &str, new: &NewArtifact<'_>) -> String {
        let built = build(new, now_ms());
        let doc = Arc::new(built.doc);
        let tag = owner_tag(owner);
        self.lock_pending().insert(
            built.hex.clone(),
            PendingDoc {
                doc: Arc::clone(&doc),
                owner_tag: tag.clone(),
            },
        );
        let sent = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|tx| {
                tx.send(Job {
                    hex: built.hex.clone(),
                    doc: Arc::clone(&doc),
                    owner: tag.clone(),
                })
                .is_ok()
            })
            .unwrap_or(false);
        if !sent {
            // Closed (shutting down): write it here rather than lose it.
            let job = Job {
                hex: built.hex.clone(),
                doc,
                owner: tag,
            };
            if let Err(e) = store_transcripts(&mut self.lock_transcripts(), &[job]) {
                tracing::error!(artifact = %built.hex, error = %e, "transcript not stored");
            }
            self.lock_pending().remove(&built.hex);
        }
        built.created.id
    }

    fn lock_transcripts(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.transcripts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stored transcript, if `tag` owns it (or `admin`).
    fn transcript(&self, hex: &str, tag: &str, admin: bool) -> io::Result<Option<Vec<u8>>> {
        let conn = self.lock_transcripts();
        let mut q = conn
            .prepare_cached(
                "SELECT doc FROM transcripts WHERE hex = ?1 AND (owner = ?2 OR ?3) LIMIT 1",
            )
            .map_err(io::Error::other)?;
        let mut rows = q
            .query(params![hex, tag, admin])
            .map_err(io::Error::other)?;
        match rows.next().map_err(io::Error::other)? {
            Some(row) => Ok(Some(row.get(0).map_err(io::Error::other)?)),
            None => Ok(None),
        }
    }

    fn read_object(&self, hex: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.object_path(hex)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The document with this id if `owner` may see it (`admin` sees everything); the same
    /// `None` for unknown and foreign ids.
    pub fn get(&self, owner: &str, admin: bool, id: &str) -> io::Result<Option<Arc<Vec<u8>>>> {
        let Some(hex) = parse_id(id) else {
            return Ok(None);
        };
        let tag = owner_tag(owner);
        if let Some(pending) = self.lock_pending().get(hex) {
            return Ok((admin || pending.owner_tag == tag).then(|| Arc::clone(&pending.doc)));
        }
        if let Some(doc) = self.transcript(hex, &tag, admin)? {
            return Ok(Some(Arc::new(doc)));
        }
        if !admin && !self.owner_path(hex, &tag).exists() {
            return Ok(None);
        }
        Ok(self.read_object(hex)?.map(Arc::new))
    }

    /// Stops the writer after it has written everything recorded so far (shutdown).
    pub fn close(&self) {
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

fn created_ms(doc: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Head {
        created_ms: u64,
    }
    serde_json::from_slice::<Head>(doc)
        .ok()
        .map(|h| h.created_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(content: Value) -> ArtifactRequest {
        ArtifactRequest {
            kind: ArtifactKind::Plan,
            content,
            tags: vec!["t".into()],
            parent: None,
            metadata: None,
        }
    }

    #[test]
    fn equal_content_has_one_id_and_keeps_its_first_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), 1 << 20).unwrap();
        let a = store
            .put("alice", &req(serde_json::json!({"x": 1})))
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = store
            .put("alice", &req(serde_json::json!({"x": 1})))
            .unwrap();
        assert_eq!(a, b);
        let c = store
            .put("alice", &req(serde_json::json!({"x": 2})))
            .unwrap();
        assert_ne!(a.id, c.id);
        let hex = parse_id(&a.id).unwrap();
        let on_disk = fs::read(dir.path().join("objects").join(format!("{hex}.json"))).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&on_disk)).len(), 64);
        let doc: Value = serde_json::from_slice(&on_disk).unwrap();
        assert_eq!(doc["content"], serde_json::json!({"x": 1}));
        assert_eq!(doc["id"], a.id);
        assert!(
            fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
    }

    #[test]
    fn only_the_owner_or_an_admin_sees_an_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), 1 << 20).unwrap();
        let a = store.put("alice", &req(serde_json::json!("note"))).unwrap();
        assert!(store.get("alice", false, &a.id).unwrap().is_some());
        assert!(store.get("bob", false, &a.id).unwrap().is_none());
        assert!(store.get("bob", true, &a.id).unwrap().is_some());
        assert!(store.get("alice", false, "sha256:zz").unwrap().is_none());
        assert!(
            store
                .get("alice", false, "../../etc/passwd")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn oversized_documents_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), 256).unwrap();
        let err = store
            .put("alice", &req(Value::String("x".repeat(300))))
            .unwrap_err();
        assert!(matches!(err, PutError::TooLarge { limit: 256, .. }));
    }

    #[test]
    fn recorded_documents_are_readable_at_once_and_stored_after_close() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), 1 << 20).unwrap();
        let id = store.record(
            "alice",
            &NewArtifact {
                kind: ArtifactKind::Transcript,
                content_json: r#"{"events":[]}"#,
                tags: &[],
                parent: None,
                metadata: None,
            },
        );
        assert!(store.get("alice", false, &id).unwrap().is_some());
        store.close();
        assert!(
            store.lock_pending().is_empty(),
            "written by the writer thread"
        );
        let hex = parse_id(&id).unwrap();
        let stored: u32 = store
            .lock_transcripts()
            .query_row(
                "SELECT count(*) FROM transcripts WHERE hex = ?1 AND owner = ?2",
                params![hex, owner_tag("alice")],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, 1);
        drop(store);
        let reopened = ArtifactStore::open(dir.path(), 1 << 20).unwrap();
        assert!(reopened.get("alice", false, &id).unwrap().is_some());
        assert!(reopened.get("bob", false, &id).unwrap().is_none());
        assert!(
            reopened.get("bob", true, &id).unwrap().is_some(),
            "admins see all"
        );
    }

    #[test]
    fn a_burst_of_transcripts_is_stored_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), 1 << 20).unwrap();
        let ids: Vec<String> = (0..2000)
            .map(|i| {
                let content = format!(r#"{{"events":[{i}]}}"#);
                store.record(
                    "alice",
                    &NewArtifact {
                        kind: ArtifactKind::Transcript,
                        content_json: &content,
                        tags: &[],
                        parent: None,
                        metadata: None,
                    },
                )
            })
            .collect();
        store.close();
        drop(store);
        let reopened = ArtifactStore::open(dir.path(), 1 << 20).unwrap();
        for (i, id) in ids.iter().enumerate() {
            let doc = reopened.get("alice", false, id).unwrap().expect("stored");
            let v: Value = serde_json::from_slice(&doc).unwrap();
            assert_eq!(v["content"]["events"][0], i);
        }
    }
}
