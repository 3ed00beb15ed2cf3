//! The model catalog in SQLite (rusqlite): durable across restarts and `kill -9` (WAL,
//! `synchronous = FULL`: a `201` is sent only after the row is committed). Model states
//! are also held in memory, so admission checks them without touching the database.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use orchd_contracts::catalog::{CatalogModel, CatalogModelRequest, ModelState, Verification};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("model {0:?} is already in the catalog")]
    Exists(String),
    #[error("catalog: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("catalog: {0}")]
    Json(#[from] serde_json::Error),
}

pub struct Catalog {
    conn: Mutex<Connection>,
    /// State and whether the entry is signed, per model id.
    index: RwLock<HashMap<String, (ModelState, bool)>>,
    path: PathBuf,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn state_of(text: &str) -> ModelState {
    if text == "Retired" {
        ModelState::Retired
    } else {
        ModelState::Active
    }
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS models (
                id TEXT PRIMARY KEY,
                body TEXT NOT NULL,
                state TEXT NOT NULL,
                signed INTEGER NOT NULL,
                created_ms INTEGER NOT NULL,
                verification TEXT
            );",
        )?;
        let mut index = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT id, state, signed FROM models")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (id, state, signed) = row?;
                index.insert(id, (state_of(&state), signed != 0));
            }
        }
        Ok(Self {
            conn: Mutex::new(conn),
            index: RwLock::new(index),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state of a model the catalog knows, and whether it is signed.
    pub fn lookup(&self, id: &str) -> Option<(ModelState, bool)> {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
    }

    /// Every model and its state (for the `model_state` gauge).
    pub fn states(&self) -> Vec<(String, ModelState)> {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, (s, _))| (id.clone(), *s))
            .collect()
    }

    pub fn create(&self, model: &CatalogModelRequest) -> Result<CatalogModel, CatalogError> {
        let body = serde_json::to_string(model)?;
        let signed = !model.signatures.is_empty();
        let created_ms = now_ms();
        let inserted = self.conn().execute(
            "INSERT OR IGNORE INTO models (id, body, state, signed, created_ms) VALUES (?1, ?2, 'Active', ?3, ?4)",
            params![model.id, body, signed as i64, created_ms as i64],
        )?;
        if inserted == 0 {
            return Err(CatalogError::Exists(model.id.clone()));
        }
        self.index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model.id.clone(), (ModelState::Active, signed));
        Ok(CatalogModel {
            model: model.clone(),
            state: ModelState::Active,
            created_ms,
            verification: None,
        })
    }

    pub fn get(&self, id: &str) -> Result<Option<CatalogModel>, CatalogError> {
        let row = self
            .conn()
            .query_row(
                "SELECT body, state, created_ms, verification FROM models WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((body, state, created_ms, verification)) = row else {
            return Ok(None);
        };
        Ok(Some(CatalogModel {
            model: serde_json::from_str(&body)?,
            state: state_of(&state),
            created_ms: created_ms as u64,
            verification: verification.map(|v| serde_json::from_str(&v)).transpose()?,
        }))
    }

    /// `true` if it existed.
    pub fn delete(&self, id: &str) -> Result<bool, CatalogError> {
        let n = self
            .conn()
            .execute("DELETE FROM models WHERE id = ?1", params![id])?;
        self.index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(n > 0)
    }

    /// `false` if the model is unknown.
    pub fn set_state(&self, id: &str, state: ModelState) -> Result<bool, CatalogError> {
        let n = self.conn().execute(
            "UPDATE models SET state = ?2 WHERE id = ?1",
            params![id, state.as_str()],
        )?;
        if n > 0
            && let Some(entry) = self
                .index
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(id)
        {
            entry.0 = state;
        }
        Ok(n > 0)
    }

    pub fn record_verification(&self, id: &str, v: &Verification) -> Result<(), CatalogError> {
        self.conn().execute(
            "UPDATE models SET verification = ?2 WHERE id = ?1",
            params![id, serde_json::to_string(v)?],
        )?;
        Ok(())
    }
}

/// The local file a `source_url` names, if it names one (`file:/abs`, or an absolute path).
pub fn local_file(source_url: Option<&str>) -> Option<PathBuf> {
    let url = source_url?;
    let path = url
        .strip_prefix("file://")
        .or_else(|| url.strip_prefix("file:"))
        .unwrap_or(url);
    Path::new(path).is_absolute().then(|| PathBuf::from(path))
}

/// Checks the model's local file against its digest (blocking: reads the whole file).
pub fn verify(model: &CatalogModelRequest) -> Verification {
    let checked_ms = now_ms();
    let Some(path) = local_file(model.source_url.as_deref()) else {
        return Verification {
            result: "warn".into(),
            digest: None,
            reason: "no_local_file".into(),
            checked_ms,
        };
    };
    let digest = (|| -> std::io::Result<String> {
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
    })();
    match digest {
        Ok(d) if d.eq_ignore_ascii_case(&model.digest) => Verification {
            result: "pass".into(),
            digest: Some(d),
            reason: "digest_match".into(),
            checked_ms,
        },
        Ok(d) => Verification {
            result: "fail".into(),
            digest: Some(d),
            reason: "digest_mismatch".into(),
            checked_ms,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Verification {
            result: "fail".into(),
            digest: None,
            reason: "file_missing".into(),
            checked_ms,
        },
        Err(_) => Verification {
            result: "fail".into(),
            digest: None,
            reason: "file_unreadable".into(),
            checked_ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: &str) -> CatalogModelRequest {
        CatalogModelRequest {
            id: id.into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            source_url: None,
            tags: vec![],
            manifests: vec![],
            signatures: vec![],
            sbom: None,
            trust_policy: None,
        }
    }

    #[test]
    fn entries_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.sqlite");
        let c = Catalog::open(&path).unwrap();
        c.create(&model("m1")).unwrap();
        assert!(matches!(
            c.create(&model("m1")),
            Err(CatalogError::Exists(_))
        ));
        assert!(c.set_state("m1", ModelState::Retired).unwrap());
        drop(c);
        let c = Catalog::open(&path).unwrap();
        assert_eq!(c.lookup("m1"), Some((ModelState::Retired, false)));
        assert_eq!(c.get("m1").unwrap().unwrap().state, ModelState::Retired);
        assert!(c.delete("m1").unwrap());
        assert!(!c.delete("m1").unwrap());
        assert!(c.get("m1").unwrap().is_none());
    }

    #[test]
    fn verification_compares_the_local_files_digest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.gguf");
        std::fs::write(&file, b"weights").unwrap();
        let good = format!("sha256:{}", hex::encode(Sha256::digest(b"weights")));
        let mut m = model("m");
        m.source_url = Some(format!("file:{}", file.display()));
        m.digest = good.clone();
        assert_eq!(verify(&m).result, "pass");
        m.digest = format!("sha256:{}", "1".repeat(64));
        let v = verify(&m);
        assert_eq!(
            (v.result.as_str(), v.digest.as_deref()),
            ("fail", Some(good.as_str()))
        );
        m.source_url = Some(dir.path().join("gone").display().to_string());
        assert_eq!(verify(&m).reason, "file_missing");
        m.source_url = Some("hf:org/repo/file.gguf".into());
        assert_eq!(verify(&m).result, "warn");
    }
}
