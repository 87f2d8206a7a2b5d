//! Picks the next token from a row of logits: greedy at temperature 0,
//! otherwise temperature, top-k and top-p (nucleus) sampling from a seeded
//! ChaCha stream, so the same seed and prompt give the same output.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 1.0 keeps the whole distribution.
    pub top_p: f32,
    /// 0 keeps every token.
    pub top_k: usize,
}

impl Default for SamplingParams {
    /// OpenAI's defaults: temperature 1, no truncation.
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            candidates: Vec::new(),
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.params.temperature <= f32::EPSILON || self.params.top_k == 1
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.params.temperature;
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        if self.candidates.is_empty() {
            return argmax(logits);
        }
        let by_logit_desc =
            |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = self.params.top_k;
        if k > 0 && k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            self.candidates.truncate(k);
        }
        let truncate_p = self.params.top_p < 1.0;
        if truncate_p {
            self.candidates.sort_unstable_by(by_logit_desc);
        }
        let max = self
            .candidates
            .iter()
            .map(|c| c.1)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0f64;
        for c in &mut self.candidates {
            c.1 = (c.1 - max).exp();
            total += c.1 as f64;
        }
        if truncate_p {
            let cut = self.params.top_p as f64 * total;
            let mut cumulative = 0.0f64;
            let mut keep = self.candidates.len();
            for (i, c) in self.candidates.iter().enumerate() {
                cumulative += c.1 as f64;
                if cumulative >= cut {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep);
            total = cumulative.min(total);
        }
        let mut target = self.rng.random::<f64>() * total;
        for c in &self.candidates {
            target -= c.1 as f64;
            if target <= 0.0 {
                return c.0;
            }
        }
        self.candidates.last().map_or(0, |c| c.0)
    }
}

/// The highest logit; the lowest id wins ties, so greedy is deterministic.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, l) in logits.iter().enumerate() {
        if *l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: usize) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(params(0.0, 1.0, 0), 1);
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn same_seed_same_sequence_different_seed_differs() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams::default(), seed);
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn top_k_one_is_greedy_and_top_k_limits_choices() {
        let logits = [1.0, 5.0, 4.0, 3.0];
        let mut s = Sampler::new(params(1.0, 1.0, 1), 7);
        assert!((0..20).all(|_| s.sample(&logits) == 1));
        let mut s = Sampler::new(params(5.0, 1.0, 2), 7);
        assert!((0..200).all(|_| matches!(s.sample(&logits), 1 | 2)));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Token 0 holds ~88% of the mass: top_p 0.5 must always pick it.
        let logits = [4.0, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(params(1.0, 0.5, 0), 3);
        assert!((0..200).all(|_| s.sample(&logits) == 0));
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let logits = [0.0, (3.0f32).ln()]; // p = 0.25, 0.75
        let mut s = Sampler::new(params(1.0, 1.0, 0), 11);
        let ones = (0..4000).filter(|_| s.sample(&logits) == 1).count();
        assert!((2800..3200).contains(&ones), "{ones}");
    }

    #[test]
    fn non_finite_logits_are_never_sampled() {
        let logits = [f32::NEG_INFINITY, 0.0, f32::NAN];
        let mut s = Sampler::new(params(1.0, 0.9, 0), 5);
        assert!((0..50).all(|_| s.sample(&logits) == 1));
    }
}
