//! The artifact store (API.md §3): content-addressed JSON documents on the filesystem.
//!
//! Layout under the store's directory:
//! - `objects/<hex>.json` — the document; `<hex>` is the SHA-256 of its canonical form
//!   (kind, content, tags, parent, metadata), so equal content has one id.
//! - `owners/<hex>/<owner-tag>` — a file per key that created it, holding that key's own
//!   `created_ms`: a key sees only what it created (admins see everything), another key's
//!   id is a plain 404, and equal content stored by two keys reveals nothing across them
//!   (each sees its own `created_ms`; the object's is the first key's, shown to admins).
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
    created_ms: u64,
}

/// How long and how much of transcripts the store keeps.
#[derive(Debug, Clone, Copy)]
pub struct TranscriptRetention {
    /// Transcripts older than this are deleted.
    pub max_age: std::time::Duration,
    /// Past this many bytes of transcripts, the oldest are deleted.
    pub max_bytes: u64,
    /// Transcripts waiting for the writer thread at most; past it one is dropped (counted
    /// in `bounded_evictions_total{what="transcripts"}`): a terminal transition never waits.
    pub queue: usize,
}

impl Default for TranscriptRetention {
    fn default() -> Self {
        Self {
            max_age: std::time::Duration::from_secs(30 * 86_400),
            max_bytes: 1 << 30,
            queue: 4096,
        }
    }
}

pub struct ArtifactStore {
    dir: PathBuf,
    max_bytes: usize,
    /// Recorded but not yet on disk, by hex digest.
    pending: Mutex<HashMap<String, PendingDoc>>,
    writer: Mutex<Option<mpsc::SyncSender<Job>>>,
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
/// How often the writer thread prunes transcripts (when it has work).
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
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
    // Stores from before retention have no creation time: their rows count as created
    // when first opened by this version.
    let has_created: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('transcripts') WHERE name = 'created_ms'")
        .and_then(|mut q| q.exists([]))
        .map_err(io::Error::other)?;
    if !has_created {
        conn.execute_batch(&format!(
            "ALTER TABLE transcripts ADD COLUMN created_ms INTEGER NOT NULL DEFAULT 0;
             UPDATE transcripts SET created_ms = {};",
            now_ms()
        ))
        .map_err(io::Error::other)?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS transcripts_by_age ON transcripts (created_ms);",
    )
    .map_err(io::Error::other)?;
    Ok(conn)
}

/// Deletes transcripts past their age, then the oldest until the rest fit `max_bytes`.
/// Returns how many rows went.
fn prune_transcripts(conn: &Connection, keep: &TranscriptRetention) -> rusqlite::Result<usize> {
    let cutoff = now_ms().saturating_sub(keep.max_age.as_millis() as u64);
    let mut gone = conn.execute(
        "DELETE FROM transcripts WHERE created_ms < ?1",
        params![cutoff as i64],
    )?;
    let total: i64 = conn.query_row(
        "SELECT COALESCE(SUM(length(doc)), 0) FROM transcripts",
        [],
        |r| r.get(0),
    )?;
    let mut excess = total - keep.max_bytes.min(i64::MAX as u64) as i64;
    if excess > 0 {
        let mut oldest = conn
            .prepare("SELECT hex, owner, length(doc) FROM transcripts ORDER BY created_ms, hex")?;
        let mut doomed = Vec::new();
        let mut rows = oldest.query([])?;
        while excess > 0
            && let Some(row) = rows.next()?
        {
            let (hex, owner, len): (String, String, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
            excess -= len;
            doomed.push((hex, owner));
        }
        drop(rows);
        let mut delete = conn.prepare("DELETE FROM transcripts WHERE hex = ?1 AND owner = ?2")?;
        for (hex, owner) in &doomed {
            gone += delete.execute(params![hex, owner])?;
        }
    }
    Ok(gone)
}

/// Stores a batch of transcripts in one transaction: one WAL commit for all of them.
fn store_transcripts(conn: &mut Connection, jobs: &[Job]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO transcripts (hex, owner, doc, created_ms) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for job in jobs {
            insert.execute(params![
                job.hex,
                job.owner,
                job.doc.as_slice(),
                job.created_ms as i64
            ])?;
        }
    }
    tx.commit()
}

impl ArtifactStore {
    /// Opens (creating) the store under `dir`; leftovers of interrupted writes are removed.
    pub fn open(dir: &Path, max_bytes: usize) -> io::Result<Arc<Self>> {
        Self::open_with(dir, max_bytes, TranscriptRetention::default())
    }

    /// [`Self::open`] with the transcripts' retention: pruned at open and then about once
    /// a minute by the writer thread.
    pub fn open_with(
        dir: &Path,
        max_bytes: usize,
        keep: TranscriptRetention,
    ) -> io::Result<Arc<Self>> {
        for sub in ["objects", "owners", "tmp"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        for entry in fs::read_dir(dir.join("tmp"))? {
            let _ = fs::remove_file(entry?.path());
        }
        let db = dir.join("transcripts.sqlite");
        let mut writer_conn = open_transcripts(&db)?;
        let reader_conn = open_transcripts(&db)?;
        match prune_transcripts(&writer_conn, &keep) {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "transcripts past their retention deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot prune transcripts"),
        }
        let (tx, rx) = mpsc::sync_channel::<Job>(keep.queue.max(1));
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
                let mut pruned_at = std::time::Instant::now();
                while let Ok(first) = rx.recv() {
                    if pruned_at.elapsed() >= PRUNE_EVERY {
                        pruned_at = std::time::Instant::now();
                        match prune_transcripts(&writer_conn, &keep) {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(
                                deleted = n,
                                "transcripts past their retention deleted"
                            ),
                            Err(e) => tracing::warn!(error = %e, "cannot prune transcripts"),
                        }
                    }
                    // Gather for LINGER by sleeping, not by waiting on the channel: a
                    // wait would wake this thread (and cost a context switch) per job.
                    let mut batch = vec![first];
                    std::thread::sleep(LINGER);
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
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

    /// Puts the document in place (unless it already is) and records the owner with its
    /// own creation time.
    fn persist(&self, hex: &str, doc: &[u8], owner_tag: &str, created_ms: u64) -> io::Result<()> {
        let tmp_dir = self.dir.join("tmp");
        let object = self.object_path(hex);
        if !object.exists() {
            write_atomic(&tmp_dir, &self.tmp_name(hex), &object, doc)?;
        }
        let owner = self.owner_path(hex, owner_tag);
        if !owner.exists() {
            let dir = owner.parent().expect("owner path has a parent");
            fs::create_dir_all(dir)?;
            write_atomic(
                &tmp_dir,
                &self.tmp_name(hex),
                &owner,
                created_ms.to_string().as_bytes(),
            )?;
            File::open(self.dir.join("owners"))?.sync_all()?;
        }
        Ok(())
    }

    /// When `owner_tag` first stored `hex`: `Ok(None)` if it never did; `Some(None)` for
    /// an owner file from before owners recorded their time.
    fn owner_created_ms(&self, hex: &str, owner_tag: &str) -> io::Result<Option<Option<u64>>> {
        match fs::read(self.owner_path(hex, owner_tag)) {
            Ok(bytes) => Ok(Some(
                std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|s| s.trim().parse().ok()),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores a client's artifact durably (blocking: call off the async workers). Equal
    /// content gets the same id; each key keeps its own first `created_ms`, so storing
    /// content another key stored tells nothing about that key.
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
        let tag = owner_tag(owner);
        match self.owner_created_ms(&built.hex, &tag)? {
            Some(Some(ms)) => built = build(&new, ms),
            Some(None) => {
                if let Some(ms) = self
                    .read_object(&built.hex)?
                    .as_deref()
                    .and_then(created_ms)
                {
                    built = build(&new, ms);
                }
            }
            None => {}
        }
        self.persist(&built.hex, &built.doc, &tag, built.created.created_ms)?;
        Ok(built.created)
    }

    /// Records a document without blocking (a task's transcript): readable at once,
    /// durable as soon as the writer thread has written it. Returns its id, or `None`
    /// when the writer's queue is full and the document was dropped.
    pub fn record(&self, owner: &str, new: &NewArtifact<'_>) -> Option<String> {
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
        let job = Job {
            hex: built.hex.clone(),
            doc,
            owner: tag,
            created_ms: now_ms(),
        };
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let unsent = match writer.as_ref() {
            Some(tx) => match tx.try_send(job) {
                Ok(()) => None,
                Err(mpsc::TrySendError::Full(_)) => {
                    drop(writer);
                    self.lock_pending().remove(&built.hex);
                    crate::metrics::bounded_eviction("transcripts", 1);
                    tracing::warn!(artifact = %built.hex, "transcript dropped: the writer is behind (its queue is full)");
                    return None;
                }
                Err(mpsc::TrySendError::Disconnected(job)) => Some(job),
            },
            None => Some(job),
        };
        if let Some(job) = unsent {
            // Closed (shutting down): write it here rather than lose it.
            if let Err(e) = store_transcripts(&mut self.lock_transcripts(), &[job]) {
                tracing::error!(artifact = %built.hex, error = %e, "transcript not stored");
            }
            self.lock_pending().remove(&built.hex);
        }
        Some(built.created.id)
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
        if admin {
            return Ok(self.read_object(hex)?.map(Arc::new));
        }
        let Some(own_ms) = self.owner_created_ms(hex, &tag)? else {
            return Ok(None);
        };
        let Some(doc) = self.read_object(hex)? else {
            return Ok(None);
        };
        Ok(Some(Arc::new(match own_ms {
            Some(ms) => with_created_ms(doc, ms),
            None => doc,
        })))
    }

    /// Stops the writer after it has written everything recorded so far (shutdown).
    pub fn close(&self) {
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// The document with its `created_ms` replaced: [`build`] writes it as the third member,
/// after two fixed-length ids, so it is found by position, never by searching content.
fn with_created_ms(doc: Vec<u8>, ms: u64) -> Vec<u8> {
    const PREFIX: &str = r#"{"id":"sha256:"#;
    // {"id":"sha256:<64>","digest":"sha256:<64>","created_ms":
    let at = PREFIX.len() + 64 + r#"","digest":"sha256:"#.len() + 64 + r#"","created_ms":"#.len();
    let Some(rest) = doc.get(at..) else {
        return doc;
    };
    if !doc[..at].ends_with(br#""created_ms":"#) {
        return doc;
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut out = Vec::with_capacity(doc.len() + 8);
    out.extend_from_slice(&doc[..at]);
    out.extend_from_slice(ms.to_string().as_bytes());
    out.extend_from_slice(&rest[digits..]);
    out
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
    fn equal_content_from_two_keys_reveals_nothing_across_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), 1 << 20).unwrap();
        let content = serde_json::json!({"secret": "plan"});
        let alice = store.put("alice", &req(content.clone())).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let bob = store.put("bob", &req(content.clone())).unwrap();
        assert_eq!(alice.id, bob.id, "one id for equal content");
        assert!(
            bob.created_ms > alice.created_ms,
            "bob is told his own time, not alice's: {bob:?} vs {alice:?}"
        );
        let read = |owner: &str| -> Value {
            serde_json::from_slice(&store.get(owner, false, &alice.id).unwrap().unwrap()).unwrap()
        };
        assert_eq!(read("alice")["created_ms"], alice.created_ms);
        assert_eq!(read("bob")["created_ms"], bob.created_ms);
        assert_eq!(read("bob")["content"], content);
        // Bob storing it again keeps bob's time.
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(store.put("bob", &req(content)).unwrap(), bob);
    }

    #[test]
    fn created_ms_is_replaced_in_place() {
        let doc = build(
            &NewArtifact {
                kind: ArtifactKind::Plan,
                content_json: r#"{"created_ms":5}"#,
                tags: &[],
                parent: None,
                metadata: None,
            },
            12,
        )
        .doc;
        let out: Value = serde_json::from_slice(&with_created_ms(doc, 123_456)).unwrap();
        assert_eq!(out["created_ms"], 123_456);
        assert_eq!(out["content"]["created_ms"], 5, "content is untouched");
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
        let id = store
            .record(
                "alice",
                &NewArtifact {
                    kind: ArtifactKind::Transcript,
                    content_json: r#"{"events":[]}"#,
                    tags: &[],
                    parent: None,
                    metadata: None,
                },
            )
            .unwrap();
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
                store
                    .record(
                        "alice",
                        &NewArtifact {
                            kind: ArtifactKind::Transcript,
                            content_json: &content,
                            tags: &[],
                            parent: None,
                            metadata: None,
                        },
                    )
                    .unwrap()
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

    fn transcript(store: &ArtifactStore, i: usize, pad: usize) -> Option<String> {
        let content = format!(r#"{{"events":[{i}],"pad":"{}"}}"#, "x".repeat(pad));
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
    }

    #[test]
    fn transcripts_are_pruned_by_age_and_by_size_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        // Ten transcripts of about 1.2 kB each, written one at a time (distinct times).
        let store = ArtifactStore::open(dir.path(), 1 << 20).unwrap();
        let mut ids = Vec::new();
        for i in 0..10 {
            ids.push(transcript(&store, i, 1000).unwrap());
            std::thread::sleep(std::time::Duration::from_millis(3));
        }
        store.close();
        drop(store);
        let keep = TranscriptRetention {
            max_bytes: 5_000,
            ..TranscriptRetention::default()
        };
        let store = ArtifactStore::open_with(dir.path(), 1 << 20, keep).unwrap();
        let kept: Vec<bool> = ids
            .iter()
            .map(|id| store.get("alice", false, id).unwrap().is_some())
            .collect();
        let n = kept.iter().filter(|k| **k).count();
        assert!((3..=4).contains(&n), "about 5 kB kept: {kept:?}");
        assert!(
            kept[9] && !kept[0],
            "the newest stay, the oldest go: {kept:?}"
        );
        store.close();
        drop(store);
        let keep = TranscriptRetention {
            max_age: std::time::Duration::ZERO,
            ..TranscriptRetention::default()
        };
        std::thread::sleep(std::time::Duration::from_millis(2));
        let store = ArtifactStore::open_with(dir.path(), 1 << 20, keep).unwrap();
        assert!(
            ids.iter()
                .all(|id| store.get("alice", false, id).unwrap().is_none())
        );
    }

    #[test]
    fn a_full_transcript_queue_drops_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let keep = TranscriptRetention {
            queue: 2,
            ..TranscriptRetention::default()
        };
        let store = ArtifactStore::open_with(dir.path(), 1 << 20, keep).unwrap();
        // Another connection holds the write lock: the writer blocks on its first batch.
        let blocker = Connection::open(dir.path().join("transcripts.sqlite")).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let first = transcript(&store, 0, 10).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let queued = [transcript(&store, 1, 10), transcript(&store, 2, 10)];
        assert!(queued.iter().all(Option::is_some), "{queued:?}");
        // Were this to wait for room, it would wait forever: the lock is released below.
        assert_eq!(transcript(&store, 3, 10), None, "dropped, not queued");
        blocker.execute_batch("COMMIT").unwrap();
        store.close();
        for id in std::iter::once(first).chain(queued.into_iter().flatten()) {
            assert!(store.get("alice", false, &id).unwrap().is_some(), "{id}");
        }
    }
}
