//! Sessions: metadata only (never prompts or outputs), one namespace per API key, created
//! by the first admitted task, TTL refreshed on use, a cap on turns and on live sessions.
//! They live in the state store, so every daemon sharing it sees the same sessions and a
//! restart keeps them.

use std::sync::Arc;
use std::time::Duration;

use crate::store::{SessionLimits, Store, StoreError, Turn, now_ms};

#[derive(Debug, Clone, Copy)]
pub struct SessionView {
    pub ttl_remaining: Duration,
    pub turns: u32,
}

pub struct Sessions {
    limits: SessionLimits,
    store: Arc<dyn Store>,
}

/// Why a turn was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum TurnRefused {
    /// The session has used its turns.
    CapReached(u32),
    /// A new session would pass `sessions.max_sessions`.
    TableFull(usize),
    /// The state store could not be reached.
    StoreDown(String),
}

impl Sessions {
    pub fn new(ttl: Duration, max_turns: u32, max_sessions: usize, store: Arc<dyn Store>) -> Self {
        Self {
            limits: SessionLimits {
                ttl_ms: ttl.as_millis() as u64,
                max_turns,
                max_sessions: max_sessions.max(1) as u64,
            },
            store,
        }
    }

    /// A session's key in the store, and its budget account: scoped by owner.
    pub fn account(owner: &str, id: &str) -> String {
        format!("{owner}/{id}")
    }

    fn blocking<T>(&self, f: impl FnOnce(&dyn Store) -> T) -> T {
        crate::budget::blocking(|| f(&*self.store))
    }

    /// Counts one more turn, creating the session if needed (or if it expired). Call it
    /// only with a validated id: whatever is passed here is stored.
    /// The store answers from its own thread where it has one: no worker waits.
    pub async fn turn(&self, owner: &str, id: &str) -> Result<u32, TurnRefused> {
        let key = Self::account(owner, id);
        let pending = crate::store::Pending::begin(|then| {
            self.store
                .session_turn_then(key, self.limits, now_ms(), then)
        });
        match pending.wait().await {
            Ok(Turn::Counted(n)) => Ok(n),
            Ok(Turn::CapReached(n)) => Err(TurnRefused::CapReached(n)),
            Ok(Turn::TableFull(n)) => Err(TurnRefused::TableFull(n as usize)),
            Err(e) => Err(TurnRefused::StoreDown(e.to_string())),
        }
    }

    /// Gives back a turn counted for a request that was then refused; a session that has
    /// no turn left to its name is forgotten (a refused request creates no session).
    pub fn untake(&self, owner: &str, id: &str) {
        let key = Self::account(owner, id);
        if let Err(e) = self.blocking(|s| s.session_untake(&key)) {
            tracing::warn!(error = %e, "a refused request's turn was not given back");
        }
    }

    /// The session, if it exists and has not expired; refreshes its TTL (a use).
    pub fn touch(&self, owner: &str, id: &str) -> Result<Option<SessionView>, StoreError> {
        let key = Self::account(owner, id);
        Ok(self
            .blocking(|s| s.session_get(&key, self.limits.ttl_ms, true, now_ms()))?
            .map(|(turns, left)| SessionView {
                ttl_remaining: Duration::from_millis(left),
                turns,
            }))
    }

    /// Forgets a session; `false` if there was none.
    pub fn remove(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        let key = Self::account(owner, id);
        self.blocking(|s| s.session_remove(&key))
    }

    /// Forgets expired sessions (the sweeper's tick).
    pub fn sweep(&self) -> usize {
        let before = now_ms().saturating_sub(self.limits.ttl_ms);
        self.store.session_sweep(before).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn sessions(ttl_ms: u64, max_turns: u32, max: usize) -> (tempfile::TempDir, Sessions) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("s.sqlite")).unwrap());
        (
            dir,
            Sessions::new(Duration::from_millis(ttl_ms), max_turns, max, store),
        )
    }

    #[tokio::test]
    async fn turns_are_capped_scoped_by_owner_and_expire() {
        let (_dir, s) = sessions(80, 2, 100);
        assert_eq!(s.turn("a", "s").await, Ok(1));
        assert_eq!(s.turn("a", "s").await, Ok(2));
        assert_eq!(s.turn("a", "s").await, Err(TurnRefused::CapReached(2)));
        assert_eq!(
            s.turn("b", "s").await,
            Ok(1),
            "another key's session of the same id"
        );
        s.untake("a", "s");
        assert_eq!(s.touch("a", "s").unwrap().unwrap().turns, 1);
        assert!(s.remove("a", "s").unwrap());
        assert!(s.touch("a", "s").unwrap().is_none());
        std::thread::sleep(Duration::from_millis(100));
        assert!(s.touch("b", "s").unwrap().is_none(), "expired");
        assert_eq!(s.sweep(), 1);
    }

    #[tokio::test]
    async fn a_refused_first_turn_leaves_no_session_and_the_table_is_bounded() {
        let (_dir, s) = sessions(80, 5, 2);
        assert_eq!(s.turn("a", "x").await, Ok(1));
        s.untake("a", "x");
        assert!(
            s.touch("a", "x").unwrap().is_none(),
            "the refused request's session is gone"
        );
        assert_eq!(s.turn("a", "1").await, Ok(1));
        assert_eq!(s.turn("a", "2").await, Ok(1));
        assert_eq!(s.turn("a", "3").await, Err(TurnRefused::TableFull(2)));
        assert_eq!(
            s.turn("a", "1").await,
            Ok(2),
            "an existing session still counts turns"
        );
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(s.turn("a", "3").await, Ok(1), "expired sessions make room");
    }
}
