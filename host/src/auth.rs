//! API keys: who is calling, with which role. Keys are stored as SHA-256 digests, compared
//! in constant time, and only ever logged as fingerprints (first 6 hex of the digest).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ApiKeySettings, BudgetLimits, Role};

/// The caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The key's configured name (the budget account and the owner of tasks); `open` in
    /// open mode.
    pub name: String,
    pub role: Role,
    /// First 6 hex of the key's SHA-256: safe to log.
    pub fingerprint: String,
}

impl Principal {
    /// The caller in open mode (no keys): a data key, unless the daemon was started with
    /// `--insecure-open-admin`.
    pub fn open(admin: bool) -> Self {
        Self {
            name: "open".into(),
            role: if admin { Role::Admin } else { Role::Data },
            fingerprint: "open".into(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether this caller may see something owned by `owner`.
    pub fn may_see(&self, owner: &str) -> bool {
        self.is_admin() || self.name == owner
    }
}

struct Entry {
    name: String,
    role: Role,
    digest: [u8; 32],
    budget: Option<BudgetLimits>,
}

/// The configured keys. Empty = open mode.
pub struct Keys {
    entries: Vec<Entry>,
}

/// The fingerprint of a digest (what logs may show).
pub fn fingerprint(digest: &[u8; 32]) -> String {
    hex::encode(&digest[..3])
}

impl Keys {
    pub fn new(keys: &[ApiKeySettings]) -> Self {
        Self {
            entries: keys
                .iter()
                .map(|k| Entry {
                    name: k.name.clone(),
                    role: k.role,
                    digest: k.sha256,
                    budget: k.budget,
                })
                .collect(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.entries.is_empty()
    }

    /// The key's principal, if the presented key is configured. Every entry is compared
    /// (no early exit), each comparison in constant time.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found: Option<&Entry> = None;
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(entry);
            }
        }
        found.map(|e| Principal {
            name: e.name.clone(),
            role: e.role,
            fingerprint: fingerprint(&e.digest),
        })
    }

    /// Budget limits configured on the key `name`, if any.
    pub fn budget_of(&self, name: &str) -> Option<BudgetLimits> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, role: Role, secret: &str) -> ApiKeySettings {
        ApiKeySettings {
            name: name.into(),
            role,
            sha256: Sha256::digest(secret.as_bytes()).into(),
            budget: None,
            rate: None,
            group: None,
        }
    }

    #[test]
    fn keys_authenticate_by_digest_and_roles_apply() {
        let keys = Keys::new(&[
            key("alice", Role::Data, "a-secret"),
            key("root", Role::Admin, "r-secret"),
        ]);
        let alice = keys.authenticate("a-secret").unwrap();
        assert_eq!(alice.name, "alice");
        assert!(!alice.is_admin());
        assert!(alice.may_see("alice") && !alice.may_see("bob"));
        assert_eq!(alice.fingerprint.len(), 6);
        assert!(!alice.fingerprint.contains("secret"));
        assert!(keys.authenticate("r-secret").unwrap().may_see("bob"));
        assert!(keys.authenticate("a-secre").is_none());
        assert!(keys.authenticate("").is_none());
        assert!(!keys.is_open());
        assert!(Keys::new(&[]).is_open());
    }
}
