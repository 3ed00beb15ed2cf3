//! Sessions: metadata only (never prompts or outputs), one namespace per API key, created
//! lazily by the first task, TTL refreshed on use, a cap on turns.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A session is identified by its owner (API key name) and its id: two keys never share one.
type SessionKey = (String, String);

#[derive(Debug, Clone, Copy)]
pub struct SessionView {
    pub ttl_remaining: Duration,
    pub turns: u32,
}

struct Session {
    last_used: Instant,
    turns: u32,
}

pub struct Sessions {
    ttl: Duration,
    max_turns: u32,
    /// Live sessions at most; a new one past it is refused (after forgetting expired ones).
    max_sessions: usize,
    map: Mutex<HashMap<SessionKey, Session>>,
}

/// Why a turn was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum TurnRefused {
    /// The session has used its turns.
    CapReached(u32),
    /// A new session would pass `sessions.max_sessions`.
    TableFull(usize),
}

impl Sessions {
    pub fn new(ttl: Duration, max_turns: u32, max_sessions: usize) -> Self {
        Self {
            ttl,
            max_turns,
            max_sessions: max_sessions.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    fn key(owner: &str, id: &str) -> SessionKey {
        (owner.to_owned(), id.to_owned())
    }

    /// The budget account of a session (scoped by owner).
    pub fn account(owner: &str, id: &str) -> String {
        format!("{owner}/{id}")
    }

    /// Counts one more turn, creating the session if needed (or if it expired). Call it
    /// only with a validated id: whatever is passed here is stored.
    pub fn turn(&self, owner: &str, id: &str) -> Result<u32, TurnRefused> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let key = Self::key(owner, id);
        if !map.contains_key(&key) && map.len() >= self.max_sessions {
            let before = map.len();
            map.retain(|_, s| now.duration_since(s.last_used) <= self.ttl);
            if map.len() >= self.max_sessions {
                return Err(TurnRefused::TableFull(self.max_sessions));
            }
            crate::metrics::bounded_eviction("sessions", before - map.len());
        }
        let s = map.entry(key).or_insert(Session {
            last_used: now,
            turns: 0,
        });
        if now.duration_since(s.last_used) > self.ttl {
            s.turns = 0;
        }
        if s.turns >= self.max_turns {
            return Err(TurnRefused::CapReached(self.max_turns));
        }
        s.turns += 1;
        s.last_used = now;
        Ok(s.turns)
    }

    /// Gives back a turn counted for a request that was then refused; a session that has
    /// no turn left to its name is forgotten (a refused request creates no session).
    pub fn untake(&self, owner: &str, id: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let key = Self::key(owner, id);
        if let Some(s) = map.get_mut(&key) {
            s.turns = s.turns.saturating_sub(1);
            if s.turns == 0 {
                map.remove(&key);
            }
        }
    }

    /// Turns so far (0 for a new session), without touching it.
    pub fn turns(&self, owner: &str, id: &str) -> u32 {
        self.get(owner, id).map_or(0, |v| v.turns)
    }

    /// The session, if it exists and has not expired; refreshes its TTL (a use).
    pub fn touch(&self, owner: &str, id: &str) -> Option<SessionView> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.get_mut(&Self::key(owner, id))?;
        if s.last_used.elapsed() > self.ttl {
            return None;
        }
        s.last_used = Instant::now();
        Some(SessionView {
            ttl_remaining: self.ttl,
            turns: s.turns,
        })
    }

    fn get(&self, owner: &str, id: &str) -> Option<SessionView> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.get(&Self::key(owner, id))?;
        let age = s.last_used.elapsed();
        (age <= self.ttl).then(|| SessionView {
            ttl_remaining: self.ttl - age,
            turns: s.turns,
        })
    }

    /// Forgets a session; `false` if there was none.
    pub fn remove(&self, owner: &str, id: &str) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&Self::key(owner, id))
            .is_some()
    }

    /// Forgets expired sessions; returns their budget accounts ([`Self::account`]).
    pub fn sweep(&self) -> Vec<String> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut gone = Vec::new();
        map.retain(|(owner, id), s| {
            let keep = s.last_used.elapsed() <= self.ttl;
            if !keep {
                gone.push(Self::account(owner, id));
            }
            keep
        });
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_are_capped_scoped_by_owner_and_expire() {
        let s = Sessions::new(Duration::from_millis(50), 2, 100);
        assert_eq!(s.turn("a", "s"), Ok(1));
        assert_eq!(s.turn("a", "s"), Ok(2));
        assert_eq!(s.turn("a", "s"), Err(TurnRefused::CapReached(2)));
        assert_eq!(
            s.turn("b", "s"),
            Ok(1),
            "another key's session of the same id"
        );
        s.untake("a", "s");
        assert_eq!(s.turns("a", "s"), 1);
        assert!(s.touch("a", "s").is_some());
        assert!(s.remove("a", "s"));
        assert!(s.touch("a", "s").is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.touch("b", "s").is_none(), "expired");
        assert_eq!(s.sweep(), ["b/s"]);
    }

    #[test]
    fn a_refused_first_turn_leaves_no_session_and_the_table_is_bounded() {
        let s = Sessions::new(Duration::from_millis(50), 5, 2);
        assert_eq!(s.turn("a", "x"), Ok(1));
        s.untake("a", "x");
        assert!(
            s.touch("a", "x").is_none(),
            "the refused request's session is gone"
        );
        assert_eq!(s.turn("a", "1"), Ok(1));
        assert_eq!(s.turn("a", "2"), Ok(1));
        assert_eq!(s.turn("a", "3"), Err(TurnRefused::TableFull(2)));
        assert_eq!(
            s.turn("a", "1"),
            Ok(2),
            "an existing session still counts turns"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.turn("a", "3"), Ok(1), "expired sessions make room");
    }
}
