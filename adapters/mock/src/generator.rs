//! Deterministic text: the same seed and prompt always give the same tokens.

const VOCAB: &[&str] = &[
    "the",
    "model",
    "queue",
    "token",
    "stream",
    "engine",
    "policy",
    "slot",
    "replica",
    "pool",
    "budget",
    "deadline",
    "session",
    "cancel",
    "adapter",
    "component",
    "latency",
    "batch",
    "interactive",
    "placement",
    "admission",
    "context",
    "prompt",
    "cache",
    "decode",
    "prefill",
    "sample",
    "seed",
    "fair",
    "fast",
    "honest",
    "bounded",
    "order",
    "shard",
    "lease",
    "drain",
];

/// splitmix64: tiny, well-distributed, and stable across platforms.
pub struct Generator(u64);

impl Generator {
    pub fn new(seed: u64, prompt: &str) -> Self {
        // FNV-1a over the prompt, mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in prompt.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Self(seed ^ h)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn next_token(&mut self) -> String {
        let word = VOCAB[(self.next_u64() % VOCAB.len() as u64) as usize];
        format!(" {word}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(seed: u64, prompt: &str, n: usize) -> Vec<String> {
        let mut g = Generator::new(seed, prompt);
        (0..n).map(|_| g.next_token()).collect()
    }

    #[test]
    fn same_seed_same_tokens_different_seed_different_tokens() {
        assert_eq!(take(7, "hi", 16), take(7, "hi", 16));
        assert_ne!(take(7, "hi", 16), take(8, "hi", 16));
        assert_ne!(take(7, "hi", 16), take(7, "ho", 16));
    }
}
