//! Content hashes of plugin files, recomputed only when a file's stat changed.
//!
//! A rescan of the adapter or policy directory must not read every library: a `.so` is
//! tens of megabytes. A file whose device, inode, size, mtime and ctime are what they were
//! when it was last hashed is taken as unchanged. A write changes mtime and ctime; a
//! rename-over changes the inode; `touch` changes mtime (and is re-hashed, harmlessly).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// What `stat` says of a file, enough to tell that it has not changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    pub fn of(path: &Path) -> io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The SHA-256 (hex) of a whole file, read in one go.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    Ok(hex::encode(Sha256::digest(std::fs::read(path)?)))
}

/// Remembers each path's last stamp and hash. One per watched directory; `directory`
/// labels the `plugin_files_hashed_total` metric.
pub struct HashCache {
    directory: &'static str,
    entries: Mutex<HashMap<PathBuf, (Stamp, String)>>,
}

impl HashCache {
    pub fn new(directory: &'static str) -> Self {
        Self {
            directory,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The content hash of `path`: the remembered one while the file's stamp is unchanged,
    /// otherwise read and hashed now. The stamp is taken before the read, so a file that
    /// changes while it is read gets a newer stamp and is hashed again next time.
    pub fn sha256(&self, path: &Path) -> io::Result<String> {
        let stamp = Stamp::of(path)?;
        if let Some((seen, sha)) = self.lock().get(path)
            && *seen == stamp
        {
            return Ok(sha.clone());
        }
        let sha = sha256_file(path)?;
        crate::metrics::plugin_file_hashed(self.directory);
        self.lock().insert(path.to_path_buf(), (stamp, sha.clone()));
        Ok(sha)
    }

    /// Records a hash computed elsewhere from a read that began after `stamp` was taken.
    pub fn remember(&self, path: &Path, stamp: Stamp, sha256: String) {
        self.lock().insert(path.to_path_buf(), (stamp, sha256));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (Stamp, String)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn hashed(directory: &'static str) -> u64 {
        crate::metrics::plugin_files_hashed(directory)
    }

    #[test]
    fn an_unchanged_file_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.so");
        std::fs::write(&path, b"one").unwrap();
        let cache = HashCache::new("test-unchanged");
        let first = cache.sha256(&path).unwrap();
        // Reading the file from outside changes nothing the cache looks at.
        let _ = std::fs::read(&path).unwrap();
        assert_eq!(cache.sha256(&path).unwrap(), first);
        assert_eq!(cache.sha256(&path).unwrap(), first);
        assert_eq!(hashed("test-unchanged"), 1);
    }

    #[test]
    fn a_write_or_a_rename_over_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.wasm");
        std::fs::write(&path, b"one").unwrap();
        let cache = HashCache::new("test-changed");
        let first = cache.sha256(&path).unwrap();
        // Same size, new content, written in place.
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(b"two").unwrap();
        drop(f);
        let second = cache.sha256(&path).unwrap();
        assert_ne!(first, second);
        assert_eq!(second, sha256_file(&path).unwrap());
        // Copy then rename: a new inode.
        let tmp = dir.path().join(".p.wasm.tmp");
        std::fs::write(&tmp, b"three").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let third = cache.sha256(&path).unwrap();
        assert_eq!(third, sha256_file(&path).unwrap());
        assert_eq!(hashed("test-changed"), 3);
    }

    #[test]
    fn a_vanished_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HashCache::new("test-vanished");
        assert!(cache.sha256(&dir.path().join("gone.so")).is_err());
    }
}
