//! Prefix-aware placement's memory: a prompt as chained block hashes, and per replica the
//! blocks it served recently (bounded, least recently used out first).
//!
//! Engines keep the KV cache of prompts they evaluated (llama.cpp per slot, vLLM and SGLang
//! per block) and skip evaluating a prefix they still hold. The host cannot see those caches,
//! so it remembers what it sent where. A prompt is cut into [`BLOCK_BYTES`]-byte blocks,
//! each hashed with the hash of the block before it, so block `k` matching means the whole
//! prefix up to `k` matches. A chat task is hashed as its message list in order (tools
//! first, as chat templates render them into the system turn), role and content.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use orchd_contracts::chat::{ChatMessage, Content, Tool};

/// Bytes of prompt text per block (about 64 tokens of English text).
pub const BLOCK_BYTES: usize = 256;
/// Blocks hashed at most per prompt (the first 128 KiB); longer prompts match on these.
pub const MAX_BLOCKS: usize = 512;
/// Blocks remembered per replica at most, whatever its engine caches: 65 536 blocks,
/// 16 MiB of prompt text, about 4 million tokens of KV cache (a few MiB of memory).
pub const MAX_CACHE_BLOCKS: usize = 65_536;

/// A prompt's chained block hashes, from its start; a last partial block is not counted
/// (an engine caches whole blocks, and a prompt ending mid-block still matches up to it).
#[derive(Debug, Clone, Default)]
pub struct Blocks(Arc<[u64]>);

impl Blocks {
    pub fn len(&self) -> u32 {
        self.0.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn hashes(&self) -> &[u64] {
        &self.0
    }

    /// The blocks of a completion prompt.
    pub fn of_text(prompt: &str) -> Self {
        let mut c = Chainer::default();
        c.push(prompt.as_bytes());
        c.finish()
    }

    /// The blocks of a conversation: tools, then each message's role, content and tool
    /// calls, with separators so that moving text between fields changes the hash.
    pub fn of_chat(messages: &[ChatMessage], tools: &[Tool]) -> Self {
        let mut c = Chainer::default();
        for t in tools {
            c.push(b"\x1etool\x1f");
            c.push(
                serde_json::to_string(&t.function)
                    .unwrap_or_default()
                    .as_bytes(),
            );
        }
        for m in messages {
            if c.full() {
                break;
            }
            c.push(b"\x1e");
            c.push(format!("{:?}", m.role).as_bytes());
            c.push(b"\x1f");
            match &m.content {
                Some(Content::Text(t)) => c.push(t.as_bytes()),
                Some(Content::Parts(parts)) => {
                    for p in parts {
                        c.push(p.text.as_deref().unwrap_or("").as_bytes());
                    }
                }
                None => {}
            }
            for call in m.tool_calls.iter().flatten() {
                c.push(b"\x1f");
                c.push(call.function.name.as_bytes());
                c.push(call.function.arguments.as_bytes());
            }
        }
        c.finish()
    }
}

/// Cuts a byte stream into blocks and chains their hashes.
#[derive(Default)]
struct Chainer {
    block: Vec<u8>,
    previous: u64,
    out: Vec<u64>,
}

impl Chainer {
    fn full(&self) -> bool {
        self.out.len() >= MAX_BLOCKS
    }

    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.full() {
            let take = (BLOCK_BYTES - self.block.len()).min(bytes.len());
            self.block.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.block.len() == BLOCK_BYTES {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                self.previous.hash(&mut h);
                self.block.hash(&mut h);
                self.previous = h.finish();
                self.out.push(self.previous);
                self.block.clear();
            }
        }
    }

    fn finish(self) -> Blocks {
        Blocks(self.out.into())
    }
}

/// The blocks one replica served recently, least recently used out first, as many as its
/// engine caches. Owned by its replica, behind the replica's own lock; it holds no other
/// lock and makes no call.
#[derive(Debug, Default)]
pub struct PrefixCache {
    /// Block hash → the stamp it was last used at.
    used: HashMap<u64, u64>,
    /// (hash, stamp) in use order; an entry whose stamp is not the map's is stale.
    order: VecDeque<(u64, u64)>,
    clock: u64,
}

impl PrefixCache {
    /// How many leading blocks of `blocks` this replica served recently.
    pub fn matched(&self, blocks: &Blocks) -> u32 {
        blocks
            .hashes()
            .iter()
            .take_while(|h| self.used.contains_key(h))
            .count() as u32
    }

    /// Remembers that the replica was sent `blocks`, keeping at most `capacity` blocks
    /// (what its engine caches). The first block gets the newest stamp: a prefix's tail is
    /// forgotten before its head, as engines evict.
    pub fn remember(&mut self, blocks: &Blocks, capacity: usize) {
        if capacity == 0 {
            return;
        }
        for &h in blocks.hashes().iter().rev() {
            self.clock += 1;
            self.used.insert(h, self.clock);
            self.order.push_back((h, self.clock));
        }
        while self.used.len() > capacity || self.order.len() > capacity.saturating_mul(2) {
            let Some((h, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.used.get(&h) == Some(&stamp) {
                self.used.remove(&h);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: usize = 100;

    fn text(system: &str, question: &str) -> String {
        format!("{}{question}", system.repeat(8))
    }

    #[test]
    fn a_shared_prefix_matches_up_to_where_the_prompts_differ() {
        let system = "You are a careful assistant. Answer briefly and cite sources. ";
        let a = Blocks::of_text(&text(system, "What is the capital of France?"));
        let b = Blocks::of_text(&text(system, "How tall is Mont Blanc?"));
        assert!(a.len() >= 2, "{}", a.len());
        let mut cache = PrefixCache::default();
        assert_eq!(cache.matched(&b), 0);
        cache.remember(&a, CAP);
        // Both prompts share 8 × 63 = 504 bytes: the first block matches, the second
        // (bytes 256..512) holds the start of the question, which differs.
        assert_eq!(cache.matched(&b), 1);
        assert_eq!(cache.matched(&a), a.len());
    }

    #[test]
    fn a_block_matches_only_after_the_same_prefix() {
        // The same 256 bytes as a second block, after a different first block.
        let x = "x".repeat(BLOCK_BYTES);
        let y = "y".repeat(BLOCK_BYTES);
        let z = "z".repeat(BLOCK_BYTES);
        let mut cache = PrefixCache::default();
        cache.remember(&Blocks::of_text(&format!("{x}{z}")), CAP);
        assert_eq!(cache.matched(&Blocks::of_text(&format!("{y}{z}"))), 0);
        assert_eq!(cache.matched(&Blocks::of_text(&format!("{x}{y}"))), 1);
    }

    #[test]
    fn short_prompts_have_no_blocks_and_long_ones_are_bounded() {
        assert!(Blocks::of_text("hello").is_empty());
        let long = "a".repeat(BLOCK_BYTES * (MAX_BLOCKS + 10));
        assert_eq!(Blocks::of_text(&long).len() as usize, MAX_BLOCKS);
    }

    #[test]
    fn the_cache_is_bounded_and_forgets_the_least_recently_used_tail_first() {
        let prompt = |c: char| Blocks::of_text(&c.to_string().repeat(BLOCK_BYTES * 4));
        let mut cache = PrefixCache::default();
        const CAP: usize = 6;
        cache.remember(&prompt('a'), CAP);
        cache.remember(&prompt('b'), CAP);
        assert_eq!(cache.len(), 6);
        // 'a' lost its two tail blocks, its head stays.
        assert_eq!(cache.matched(&prompt('a')), 2);
        assert_eq!(cache.matched(&prompt('b')), 4);
        // Used again, 'a' is the newest.
        cache.remember(&prompt('a'), CAP);
        assert_eq!(cache.matched(&prompt('a')), 4);
        assert_eq!(cache.matched(&prompt('b')), 2);
        for _ in 0..1000 {
            cache.remember(&prompt('a'), CAP);
        }
        assert!(cache.order.len() <= 12, "{}", cache.order.len());
    }

    #[test]
    fn chat_hashes_roles_and_content_in_order() {
        let msg = |role: &str, content: &str| -> ChatMessage {
            serde_json::from_value(serde_json::json!({"role": role, "content": content})).unwrap()
        };
        let system = "Rules of the house. ".repeat(40);
        let a = Blocks::of_chat(&[msg("system", &system), msg("user", "hi")], &[]);
        let b = Blocks::of_chat(&[msg("system", &system), msg("user", "bye")], &[]);
        let c = Blocks::of_chat(&[msg("user", &system), msg("user", "hi")], &[]);
        let mut cache = PrefixCache::default();
        cache.remember(&a, CAP);
        assert!(cache.matched(&b) >= 2, "{}", cache.matched(&b));
        assert_eq!(cache.matched(&c), 0, "another role is another prompt");
    }
}
