//! Stream tokens: EventSource cannot send headers, so a browser page cannot present an API
//! key on `GET /v1/tasks/{id}/stream`. The 202 (and the task's status) carries a short-lived
//! token bound to that one task, read-only: `?token=` on that task's stream URL, and
//! nowhere else, stands in for the key. A token is `<expiry ms>.<HMAC-SHA256(secret,
//! task id, expiry)>`. The secret is shared through the state store by every daemon using
//! it (so a token works on whichever daemon a load balancer picks, which relays the stream
//! to the one running the task), and drawn at start when the store cannot be reached.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Issues and checks stream tokens.
pub struct StreamTokens {
    secret: [u8; 32],
    ttl: Duration,
}

/// 32 random bytes, hex.
pub fn fresh_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl StreamTokens {
    /// A fresh random secret; tokens live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self::with_secret(&fresh_secret(), ttl)
    }

    /// The secret (hex) shared by the daemons of one state store.
    pub fn with_secret(secret_hex: &str, ttl: Duration) -> Self {
        let digest: [u8; 32] = {
            use sha2::Digest;
            Sha256::digest(secret_hex.as_bytes()).into()
        };
        Self {
            secret: digest,
            ttl,
        }
    }

    fn mac(&self, task_id: &str, expires_ms: u64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(task_id.as_bytes());
        mac.update(b"\n");
        mac.update(expires_ms.to_string().as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..20])
    }

    /// A token for reading `task_id`'s stream, and when it expires (Unix ms).
    pub fn issue(&self, task_id: &str) -> (String, u64) {
        let expires_ms = now_ms() + self.ttl.as_millis() as u64;
        (
            format!("{expires_ms}.{}", self.mac(task_id, expires_ms)),
            expires_ms,
        )
    }

    /// Whether `token` is a live token for `task_id`.
    pub fn verify(&self, task_id: &str, token: &str) -> bool {
        let Some((expires, mac)) = token.split_once('.') else {
            return false;
        };
        let Ok(expires_ms) = expires.parse::<u64>() else {
            return false;
        };
        if expires_ms < now_ms() {
            return false;
        }
        let want = self.mac(task_id, expires_ms);
        want.as_bytes().ct_eq(mac.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_one_task_until_it_expires() {
        let tokens = StreamTokens::new(Duration::from_secs(60));
        let (token, expires) = tokens.issue("t1");
        assert!(expires > now_ms());
        assert!(tokens.verify("t1", &token));
        assert!(!tokens.verify("t2", &token), "bound to its task");
        let (exp, mac) = token.split_once('.').unwrap();
        let later = format!("{}.{mac}", exp.parse::<u64>().unwrap() + 1);
        assert!(!tokens.verify("t1", &later), "the expiry is signed");
        assert!(!tokens.verify("t1", "garbage"));
        let other = StreamTokens::new(Duration::from_secs(60));
        assert!(!other.verify("t1", &token), "another secret (a restart)");
        let expired = StreamTokens::new(Duration::ZERO);
        let (old, _) = expired.issue("t1");
        std::thread::sleep(Duration::from_millis(5));
        assert!(!expired.verify("t1", &old));
    }
}
