//! The precompiled-policy cache, sealed: loading precompiled code skips wasmtime's
//! validation, so a file there is native code run inside the daemon. The daemon loads only
//! files it wrote itself: each file ends with an HMAC-SHA256 of its contents under a
//! per-install key, and the key lives outside the cache directory (`<cache dir>.key`,
//! mode 0600). The directory is created (or tightened to) 0700. A file without a valid
//! seal is ignored with a warning and the component is compiled again.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

const KEY_LEN: usize = 32;
const SEAL_LEN: usize = 32;

/// A cache directory and the key that seals its files.
pub struct SealedCache {
    dir: PathBuf,
    key: [u8; KEY_LEN],
}

/// Why a cached file was not used.
#[derive(Debug, PartialEq, Eq)]
pub enum Unsealed {
    /// No such file (the usual miss).
    Missing,
    /// The file's seal does not match: not written by this install, or changed since.
    BadSeal,
}

impl SealedCache {
    /// Opens (creating) the cache directory with mode 0700 and the key beside it; `Err`
    /// says why the cache cannot be used (the daemon then compiles without one).
    pub fn open(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot make {} private (0700): {e}", dir.display()))?;
        let key = load_or_create_key(&key_path(dir))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn seal(&self, bytes: &[u8]) -> [u8; SEAL_LEN] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(bytes);
        mac.finalize().into_bytes().into()
    }

    /// The contents of `name`, if its seal is valid.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, Unsealed> {
        let mut bytes = std::fs::read(self.path(name)).map_err(|_| Unsealed::Missing)?;
        if bytes.len() < SEAL_LEN {
            return Err(Unsealed::BadSeal);
        }
        let body_len = bytes.len() - SEAL_LEN;
        let expected = self.seal(&bytes[..body_len]);
        if !bool::from(expected.ct_eq(&bytes[body_len..])) {
            return Err(Unsealed::BadSeal);
        }
        bytes.truncate(body_len);
        Ok(bytes)
    }

    /// Writes `name` atomically (never torn), sealed.
    pub fn write(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.path(name);
        let tmp = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.write_all(&self.seal(bytes))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

impl SealedCache {
    /// Marks `name` as just used (its mtime), so collection keeps what is used.
    pub fn touch(&self, name: &str) {
        if let Ok(f) = std::fs::File::options().write(true).open(self.path(name)) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// Garbage-collects the precompiled files (`*.cwasm`; nothing else in the directory is
    /// touched): a file not in `keep` goes once unused for `max_age`, and while the files
    /// take more than `max_bytes`, the least recently used of those not in `keep` go.
    /// Leftover temporary files of an interrupted write go after an hour. Returns the
    /// files removed and their bytes.
    pub fn collect(
        &self,
        keep: &std::collections::HashSet<String>,
        max_bytes: u64,
        max_age: std::time::Duration,
    ) -> (usize, u64) {
        let now = std::time::SystemTime::now();
        let age = |m: &std::fs::Metadata| {
            m.modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default()
        };
        let mut files: Vec<(String, u64, std::time::Duration)> = Vec::new();
        let mut removed = (0, 0);
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let stale_tmp = name.starts_with('.')
                && name.ends_with(".tmp")
                && age(&meta) > std::time::Duration::from_secs(3600);
            if stale_tmp && std::fs::remove_file(entry.path()).is_ok() {
                removed = (removed.0 + 1, removed.1 + meta.len());
                continue;
            }
            if name.ends_with(".cwasm") {
                files.push((name, meta.len(), age(&meta)));
            }
        }
        // Oldest use first.
        files.sort_by_key(|f| std::cmp::Reverse(f.2));
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        for (name, len, unused_for) in files {
            if keep.contains(&name) || (unused_for <= max_age && total <= max_bytes) {
                continue;
            }
            if std::fs::remove_file(self.path(&name)).is_ok() {
                total -= len;
                removed = (removed.0 + 1, removed.1 + len);
            }
        }
        removed
    }
}

/// `<dir>.key`: beside the cache directory, never inside it.
pub fn key_path(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map_or_else(|| "cache".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!("{name}.key"))
}

fn load_or_create_key(path: &Path) -> Result<[u8; KEY_LEN], String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(format!(
                    "{} is readable or writable by others (mode {:o}); make it 0600",
                    path.display(),
                    meta.permissions().mode() & 0o777
                ));
            }
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| format!("{} is not a {KEY_LEN}-byte key", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; KEY_LEN];
            key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            // create_new: of two daemons starting together, one writes the key and the
            // other reads it.
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(mut f) => {
                    f.write_all(&key)
                        .and_then(|()| f.sync_all())
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                    Ok(key)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    load_or_create_key(path)
                }
                Err(e) => Err(format!("cannot create {}: {e}", path.display())),
            }
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("orchd-sealed-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn collection_keeps_what_is_in_use_and_drops_the_old_and_the_least_recently_used() {
        let root = scratch();
        let dir = root.join("cache");
        let c = SealedCache::open(&dir).unwrap();
        let day = std::time::Duration::from_secs(86_400);
        let aged = |name: &str, days: u64| {
            c.write(name, &[0u8; 1000]).unwrap();
            let f = std::fs::File::options()
                .write(true)
                .open(c.path(name))
                .unwrap();
            f.set_modified(std::time::SystemTime::now() - day * days as u32)
                .unwrap();
        };
        aged("in-use.cwasm", 90);
        aged("ancient.cwasm", 90);
        aged("older.cwasm", 3);
        aged("newer.cwasm", 1);
        std::fs::create_dir_all(dir.join("adapters")).unwrap();
        std::fs::write(dir.join("notes.txt"), b"not ours").unwrap();
        let keep = std::collections::HashSet::from(["in-use.cwasm".to_owned()]);
        // Past the age, unless in use.
        assert_eq!(c.collect(&keep, u64::MAX, day * 30).0, 1);
        assert!(!c.path("ancient.cwasm").exists());
        assert!(c.path("in-use.cwasm").exists());
        // Over the size: the least recently used goes first, until it fits.
        let removed = c.collect(&keep, 2 * 1032 + 100, day * 30);
        assert_eq!(removed.0, 1);
        assert!(!c.path("older.cwasm").exists());
        assert!(c.path("newer.cwasm").exists() && c.path("in-use.cwasm").exists());
        // Using a file makes it recent.
        c.touch("in-use.cwasm");
        assert!(dir.join("notes.txt").exists() && dir.join("adapters").exists());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_written_file_reads_back_and_a_changed_one_does_not() {
        let root = scratch();
        let dir = root.join("cache");
        let cache = SealedCache::open(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let key = key_path(&dir);
        assert_eq!(key, root.join("cache.key"));
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(cache.read("a"), Err(Unsealed::Missing));
        cache.write("a", b"compiled code").unwrap();
        assert_eq!(cache.read("a").unwrap(), b"compiled code");

        // One flipped byte, a file someone else wrote, a truncated one: all refused.
        let mut bytes = std::fs::read(cache.path("a")).unwrap();
        bytes[0] ^= 1;
        std::fs::write(cache.path("a"), &bytes).unwrap();
        assert_eq!(cache.read("a"), Err(Unsealed::BadSeal));
        std::fs::write(cache.path("b"), [0u8; 100]).unwrap();
        assert_eq!(cache.read("b"), Err(Unsealed::BadSeal));
        std::fs::write(cache.path("c"), b"short").unwrap();
        assert_eq!(cache.read("c"), Err(Unsealed::BadSeal));

        // Reopened, the same key: what it wrote still reads.
        cache.write("a", b"again").unwrap();
        let reopened = SealedCache::open(&dir).unwrap();
        assert_eq!(reopened.read("a").unwrap(), b"again");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn another_install_key_does_not_open_the_files() {
        let root = scratch();
        let dir = root.join("cache");
        SealedCache::open(&dir).unwrap().write("a", b"x").unwrap();
        std::fs::remove_file(key_path(&dir)).unwrap();
        assert_eq!(
            SealedCache::open(&dir).unwrap().read("a"),
            Err(Unsealed::BadSeal)
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let root = scratch();
        let dir = root.join("cache");
        SealedCache::open(&dir).unwrap();
        std::fs::set_permissions(key_path(&dir), std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SealedCache::open(&dir).err().unwrap();
        assert!(err.contains("0600"), "{err}");
        std::fs::remove_dir_all(root).unwrap();
    }
}
