//! The inference server benchmark's typed half: per-request timings as a
//! streaming client sees them, and the report (medians, percentiles, the
//! batching ratio) that `make bench` prints and BENCHMARKS.md records.
//! [`client`] and [`llama_server`] are what the benches drive the servers
//! with; [`prefix_cache`] is issue 18's shared-system-prompt workload.

pub mod client;
pub mod llama_server;
pub mod prefix_cache;

use std::fmt::Write;
use std::time::{Duration, Instant};

/// One streamed completion as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    pub sent: Instant,
    /// First event carrying text.
    pub first_token: Instant,
    pub done: Instant,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// `usage.prompt_tokens_details.cached_tokens` (0 where absent).
    pub cached_tokens: usize,
    /// Arrival of every event that carried text (one per token, except
    /// where UTF-8 reassembly merges two).
    pub token_times: Vec<Instant>,
}

impl Timing {
    pub fn ttft(&self) -> Duration {
        self.first_token - self.sent
    }

    /// Tokens per second after the first one arrived: the decode rate.
    pub fn decode_rate(&self) -> f64 {
        let secs = (self.done - self.first_token).as_secs_f64();
        if secs <= 0.0 || self.completion_tokens < 2 {
            return 0.0;
        }
        (self.completion_tokens - 1) as f64 / secs
    }
}

/// A round of `streams` concurrent requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub streams: usize,
    pub timings: Vec<Timing>,
}

impl Round {
    /// Generated tokens over the round's wall time (first request sent to
    /// last response done): what the server delivers in total, prefill
    /// included, measured the same way at every concurrency.
    pub fn aggregate_rate(&self) -> f64 {
        let (Some(start), Some(end)) = (
            self.timings.iter().map(|t| t.sent).min(),
            self.timings.iter().map(|t| t.done).max(),
        ) else {
            return 0.0;
        };
        let tokens: usize = self.timings.iter().map(|t| t.completion_tokens).sum();
        tokens as f64 / (end - start).as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Steady-state decode throughput: tokens arriving while every stream
    /// of the round is decoding (after the last first token, before the
    /// first stream ends), per second. Prompt processing is outside the
    /// window, so this is the decode rate batching is meant to multiply.
    pub fn decode_rate(&self) -> f64 {
        let (Some(from), Some(to)) = (
            self.timings.iter().map(|t| t.first_token).max(),
            self.timings.iter().map(|t| t.done).min(),
        ) else {
            return 0.0;
        };
        if to <= from {
            return 0.0;
        }
        let tokens = self
            .timings
            .iter()
            .flat_map(|t| &t.token_times)
            .filter(|at| **at > from && **at <= to)
            .count();
        tokens as f64 / (to - from).as_secs_f64()
    }

    pub fn ttfts(&self) -> Vec<f64> {
        self.timings
            .iter()
            .map(|t| t.ttft().as_secs_f64())
            .collect()
    }
}

/// The `p`-th percentile (0–100) by nearest rank; 0 for no samples.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Prompt tokens per second of lone requests with a ~200-token prompt.
    pub prefill_rates: Vec<f64>,
    pub prompt_tokens: usize,
    /// Decode tokens per second of lone streams.
    pub single_decode_rates: Vec<f64>,
    pub rounds: Vec<Round>,
}

impl Report {
    pub fn round(&self, streams: usize) -> Option<&Round> {
        self.rounds.iter().find(|r| r.streams == streams)
    }

    /// Aggregate decode rate at 8 streams over the single stream's, both by
    /// [`Round::decode_rate`] in the same run. The target: at least 2.
    pub fn batching_gain(&self) -> Option<f64> {
        Some(self.round(8)?.decode_rate() / self.round(1)?.decode_rate())
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| measure | value |\n|---|---|");
        let _ = writeln!(
            out,
            "| prefill, {}-token prompt (median of {}) | {:.0} tokens/s |",
            self.prompt_tokens,
            self.prefill_rates.len(),
            median(&self.prefill_rates)
        );
        let _ = writeln!(
            out,
            "| decode, 1 stream (median of {}) | {:.1} tokens/s |",
            self.single_decode_rates.len(),
            median(&self.single_decode_rates)
        );
        let _ = writeln!(
            out,
            "\n| streams | aggregate decode tokens/s (all streams decoding) | aggregate tokens/s (wall, prefill included) | per-stream decode tokens/s (median) | TTFT p50 | TTFT p99 |\n|---:|---:|---:|---:|---:|---:|"
        );
        for r in &self.rounds {
            let ttft = r.ttfts();
            let decode: Vec<f64> = r.timings.iter().map(Timing::decode_rate).collect();
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.1} | {:.1} | {:.0} ms | {:.0} ms |",
                r.streams,
                r.decode_rate(),
                r.aggregate_rate(),
                median(&decode),
                percentile(&ttft, 50.0) * 1e3,
                percentile(&ttft, 99.0) * 1e3
            );
        }
        if let Some(gain) = self.batching_gain() {
            let verdict = if gain >= 2.0 { "meets" } else { "misses" };
            let _ = writeln!(
                out,
                "\nBatching gain: aggregate decode at 8 streams / 1 stream = **{gain:.2}×** ({verdict} the 2× target)"
            );
        }
        out
    }
}

/// Our server against a peer (llama.cpp's `llama-server`), measured by the
/// same client with the same prompts in one run, and the targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub ours: Report,
    pub peer: Report,
    pub peer_name: String,
    /// Weight bytes a decode step reads (the model file, near enough).
    pub bytes_per_step: u64,
    /// Memory read bandwidth measured on this machine, bytes per second.
    pub read_bandwidth: f64,
}

/// One line of the comparison: a measure, both values, their ratio, and the
/// target the ratio must reach (if any).
struct Line {
    measure: String,
    ours: f64,
    peer: f64,
    unit: &'static str,
    target: Option<f64>,
    /// For latencies lower is better: the ratio is peer / ours.
    lower_is_better: bool,
}

impl Line {
    fn ratio(&self) -> f64 {
        let (num, den) = if self.lower_is_better {
            (self.peer, self.ours)
        } else {
            (self.ours, self.peer)
        };
        if den > 0.0 {
            num / den
        } else {
            0.0
        }
    }
}

impl Comparison {
    fn lines(&self) -> Vec<Line> {
        let rate = |measure: String, ours: f64, peer: f64, target| Line {
            measure,
            ours,
            peer,
            unit: "tokens/s",
            target,
            lower_is_better: false,
        };
        let mut lines = vec![
            rate(
                format!("prefill, {}-token prompt", self.ours.prompt_tokens),
                median(&self.ours.prefill_rates),
                median(&self.peer.prefill_rates),
                Some(1.0),
            ),
            rate(
                "decode, 1 stream".into(),
                median(&self.ours.single_decode_rates),
                median(&self.peer.single_decode_rates),
                Some(1.5),
            ),
        ];
        for ours in &self.ours.rounds {
            let Some(peer) = self.peer.round(ours.streams) else {
                continue;
            };
            if ours.streams > 1 {
                lines.push(rate(
                    format!("aggregate decode, {} streams", ours.streams),
                    ours.decode_rate(),
                    peer.decode_rate(),
                    (ours.streams == 8).then_some(2.0),
                ));
            }
            for p in [50.0, 99.0] {
                lines.push(Line {
                    measure: format!("TTFT p{p:.0}, {} streams", ours.streams),
                    ours: percentile(&ours.ttfts(), p) * 1e3,
                    peer: percentile(&peer.ttfts(), p) * 1e3,
                    unit: "ms",
                    target: None,
                    lower_is_better: true,
                });
            }
        }
        lines
    }

    /// Decode steps per second the memory allows at one stream.
    pub fn memory_bound(&self) -> f64 {
        self.read_bandwidth / self.bytes_per_step.max(1) as f64
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| measure | ours | {} | ours vs {} | target |\n|---|---:|---:|---:|---|",
            self.peer_name, self.peer_name
        );
        for l in self.lines() {
            let verdict = match l.target {
                Some(t) if l.ratio() >= t => format!("≥ {t}× (met)"),
                Some(t) => format!("≥ {t}× (**missed**)"),
                None => String::new(),
            };
            let ratio = if l.lower_is_better {
                format!("{:.2}× faster", l.ratio())
            } else {
                format!("{:.2}×", l.ratio())
            };
            let _ = writeln!(
                out,
                "| {} | {:.1} {} | {:.1} {} | {ratio} | {verdict} |",
                l.measure, l.ours, l.unit, l.peer, l.unit
            );
        }
        let bound = self.memory_bound();
        let single = median(&self.ours.single_decode_rates);
        let _ = writeln!(
            out,
            "\nMemory bound at one stream: {:.1} MB of weights per step at {:.1} GB/s measured read bandwidth = {bound:.0} steps/s; ours decodes {single:.1} tokens/s, **{:.0} % of the bound**.",
            self.bytes_per_step as f64 / 1e6,
            self.read_bandwidth / 1e9,
            100.0 * single / bound.max(f64::MIN_POSITIVE)
        );
        out
    }
}

/// One row per model file (format), each a [`Comparison`] from the same
/// run: the per-format table of `make bench`, with the targets on every row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FormatTable {
    /// The file's name and its comparison.
    pub rows: Vec<(String, Comparison)>,
}

impl FormatTable {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| file | MB | decode, 1 stream: ours / llama.cpp | ratio (≥ 1.5×) | aggregate, 8 streams: ours / llama.cpp | ratio (≥ 2×) | aggregate, 16 streams: ratio | prefill: ratio | TTFT p50, 1 stream: ours / llama.cpp |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let verdict = |ratio: f64, target: f64| {
            if ratio >= target {
                format!("{ratio:.2}×")
            } else {
                format!("**{ratio:.2}×** (missed)")
            }
        };
        for (name, c) in &self.rows {
            let single = (
                median(&c.ours.single_decode_rates),
                median(&c.peer.single_decode_rates),
            );
            let aggregate = |streams| {
                let rate = |r: &Report| r.round(streams).map_or(0.0, Round::decode_rate);
                (rate(&c.ours), rate(&c.peer))
            };
            let ratio = |(ours, peer): (f64, f64)| if peer > 0.0 { ours / peer } else { 0.0 };
            let (eight, sixteen) = (aggregate(8), aggregate(16));
            let prefill = (median(&c.ours.prefill_rates), median(&c.peer.prefill_rates));
            let ttft = |r: &Report| {
                r.round(1)
                    .map_or(0.0, |r| percentile(&r.ttfts(), 50.0) * 1e3)
            };
            let _ = writeln!(
                out,
                "| {name} | {:.0} | {:.1} / {:.1} | {} | {:.1} / {:.1} | {} | {:.2}× | {:.2}× | {:.0} / {:.0} ms |",
                c.bytes_per_step as f64 / 1e6,
                single.0,
                single.1,
                verdict(ratio(single), 1.5),
                eight.0,
                eight.1,
                verdict(ratio(eight), 2.0),
                ratio(sixteen),
                ratio(prefill),
                ttft(&c.ours),
                ttft(&c.peer),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tokens` evenly spaced from the first token to done.
    fn timing(start: Instant, first_ms: u64, done_ms: u64, tokens: usize) -> Timing {
        let at = |ms: f64| start + Duration::from_secs_f64(ms / 1e3);
        let step = (done_ms - first_ms) as f64 / (tokens.max(2) - 1) as f64;
        Timing {
            sent: start,
            first_token: at(first_ms as f64),
            done: at(done_ms as f64),
            prompt_tokens: 10,
            completion_tokens: tokens,
            cached_tokens: 0,
            token_times: (0..tokens)
                .map(|i| at(first_ms as f64 + i as f64 * step))
                .collect(),
        }
    }

    #[test]
    fn rates_and_percentiles() {
        let t0 = Instant::now();
        let t = timing(t0, 100, 1100, 11);
        assert!((t.decode_rate() - 10.0).abs() < 1e-6);
        let round = Round {
            streams: 2,
            timings: vec![t, timing(t0, 200, 2000, 29)],
        };
        assert!((round.aggregate_rate() - 20.0).abs() < 1e-9);
        // Window 200..1100 ms: 9 of the first stream's tokens, 900/1800·28
        // of the second's (spaced 1800/28 ms apart).
        let in_window = 9 + 14;
        assert!(
            (round.decode_rate() - in_window as f64 / 0.9).abs() < 1.5,
            "{}",
            round.decode_rate()
        );
        assert_eq!(percentile(&[3.0, 1.0, 2.0, 4.0], 50.0), 2.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0, 4.0], 99.0), 4.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn the_report_states_the_batching_gain_against_the_target() {
        let t0 = Instant::now();
        let round = |streams, tokens| Round {
            streams,
            timings: vec![timing(t0, 10, 1000, tokens)],
        };
        let report = Report {
            prefill_rates: vec![1000.0],
            prompt_tokens: 200,
            single_decode_rates: vec![50.0],
            rounds: vec![round(1, 50), round(8, 150)],
        };
        // One stream per round, so the decode window is that stream's own.
        let gain = report.batching_gain().unwrap();
        assert!((gain - 3.04).abs() < 0.01, "{gain}");
        let md = report.markdown();
        assert!(md.contains("**3.04×** (meets the 2× target)"), "{md}");
        assert!(md.contains("| 8 | 150.5 | 150.0 |"), "{md}");
    }

    /// A run with the given prefill and single-stream rates, one lone
    /// stream and a round of 8 that decoded `tokens8` tokens.
    fn report(t0: Instant, prefill: f64, single: f64, tokens8: usize) -> Report {
        Report {
            prefill_rates: vec![prefill],
            prompt_tokens: 200,
            single_decode_rates: vec![single],
            rounds: vec![
                Round {
                    streams: 1,
                    timings: vec![timing(t0, 10, 1000, 50)],
                },
                Round {
                    streams: 8,
                    timings: vec![timing(t0, 20, 1000, tokens8)],
                },
            ],
        }
    }

    #[test]
    fn the_comparison_states_ratios_against_the_targets() {
        let t0 = Instant::now();
        let report = |prefill, single, tokens8| report(t0, prefill, single, tokens8);
        let c = Comparison {
            ours: report(600.0, 160.0, 300),
            peer: report(500.0, 100.0, 100),
            peer_name: "llama.cpp".into(),
            bytes_per_step: 100_000_000,
            read_bandwidth: 20e9,
        };
        let md = c.markdown();
        assert!(md.contains("| prefill, 200-token prompt | 600.0 tokens/s | 500.0 tokens/s | 1.20× | ≥ 1× (met) |"), "{md}");
        assert!(
            md.contains(
                "| decode, 1 stream | 160.0 tokens/s | 100.0 tokens/s | 1.60× | ≥ 1.5× (met) |"
            ),
            "{md}"
        );
        assert!(md.contains("aggregate decode, 8 streams"), "{md}");
        assert!(md.contains("≥ 2× (met)"), "{md}");
        assert!(md.contains("= 200 steps/s"), "{md}");
        assert!(md.contains("**80 % of the bound**"), "{md}");
        let slower = Comparison {
            peer: report(900.0, 100.0, 100),
            ..c
        };
        assert!(slower.markdown().contains("≥ 1× (**missed**)"));
    }

    #[test]
    fn the_format_table_has_a_row_per_file_with_its_targets() {
        let t0 = Instant::now();
        let report = |single, tokens8| report(t0, 500.0, single, tokens8);
        let comparison = |ours: Report, peer: Report| Comparison {
            ours,
            peer,
            peer_name: "llama.cpp".into(),
            bytes_per_step: 98_000_000,
            read_bandwidth: 20e9,
        };
        let table = FormatTable {
            rows: vec![
                (
                    "SmolLM2.Q4_1".into(),
                    comparison(report(160.0, 300), report(100.0, 100)),
                ),
                (
                    "SmolLM2.Q6_K".into(),
                    comparison(report(100.0, 100), report(100.0, 100)),
                ),
            ],
        };
        let md = table.markdown();
        let rows: Vec<&str> = md.lines().skip(2).collect();
        assert_eq!(rows.len(), 2, "{md}");
        assert!(
            rows[0].starts_with("| SmolLM2.Q4_1 | 98 | 160.0 / 100.0 | 1.60× |"),
            "{md}"
        );
        assert!(!rows[0].contains("missed"), "{md}");
        assert!(
            rows[1].starts_with("| SmolLM2.Q6_K | 98 | 100.0 / 100.0 | **1.00×** (missed) |"),
            "{md}"
        );
        assert!(
            rows[1].contains("| **1.00×** (missed) | 0.00× | 1.00× |"),
            "{md}"
        );
    }
}
