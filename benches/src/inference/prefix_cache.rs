//! Issue 18's "shared system prompt" workload, the typed half of
//! `benches/prefix-cache.sh`: the prompts (one long common prefix, a short
//! distinct question per request), the request body, and the report: time
//! to first token with our prefix cache, without it, and on llama.cpp's
//! `llama-server` with its prompt cache, with the ratios against the target.
//! The `prefix-cache-bench` example drives the servers.

use std::fmt::Write;

use serde_json::{json, Value};

use super::{percentile, Timing};

/// Concurrent clients, each sending one request per round.
pub const CLIENTS: usize = 8;
/// Measured rounds, after the warm-up.
pub const ROUNDS: usize = 3;
/// Generated tokens per request (every request generates all of them).
pub const MAX_TOKENS: usize = 16;
/// The target: TTFT p50 without the prefix cache over with it.
pub const CACHE_SPEEDUP_TARGET: f64 = 5.0;

/// Which server a run measured, and how it was set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Ours with its defaults: prefix caching on.
    Cached,
    /// Ours with `--no-prefix-caching`.
    Uncached,
    /// llama.cpp's `llama-server` with its prompt cache.
    LlamaServer,
}

impl Setup {
    pub const ALL: [Setup; 3] = [Setup::Cached, Setup::Uncached, Setup::LlamaServer];

    /// Its name in `MAAS_PREFIX_BENCH_ONLY`.
    pub fn key(self) -> &'static str {
        match self {
            Setup::Cached => "cache",
            Setup::Uncached => "no-cache",
            Setup::LlamaServer => "llama",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Setup::Cached => "ours, prefix caching",
            Setup::Uncached => "ours, no prefix caching",
            Setup::LlamaServer => "llama-server, prompt cache",
        }
    }

    /// Our server's flags beyond the model and the address (none for
    /// llama-server, whose flags its launcher knows).
    pub fn our_flags(self) -> &'static [&'static str] {
        match self {
            Setup::Uncached => &["--no-prefix-caching"],
            Setup::Cached | Setup::LlamaServer => &[],
        }
    }

    /// The setups a comma-separated list of keys names (`cache`,
    /// `no-cache`, `llama`), in their report order.
    pub fn parse_list(list: &str) -> Result<Vec<Setup>, String> {
        let keys: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect();
        if let Some(unknown) = keys
            .iter()
            .find(|k| !Setup::ALL.iter().any(|s| s.key() == **k))
        {
            return Err(format!(
                "unknown setup {unknown:?}; the setups: cache, no-cache, llama"
            ));
        }
        Ok(Setup::ALL
            .into_iter()
            .filter(|s| keys.contains(&s.key()))
            .collect())
    }
}

const ITEMS: [&str; 18] = [
    "Ridgeline two-person tent",
    "Alder down sleeping bag",
    "Summit 45-litre backpack",
    "Trailhead hiking boots",
    "Cascade rain jacket",
    "Ember camping stove",
    "Drift touring kayak",
    "Polaris headlamp",
    "Granite trekking poles",
    "Meadow picnic blanket",
    "Harbor dry bag",
    "Tundra insulated bottle",
    "Canyon water filter",
    "Birch folding chair",
    "Coastline wetsuit",
    "Aurora lantern",
    "Juniper hammock",
    "Glacier crampons",
];

const CARE: [&str; 4] = [
    "rinse it in cold water and let it dry in the shade before storing it",
    "wipe it with a damp cloth and never put it in a washing machine",
    "store it loosely in a dry cupboard, away from direct sunlight",
    "check the seams and buckles before every trip and report any damage",
];

/// The common prefix of every prompt: the system prompt of a shop's support
/// assistant, with a catalogue. Deterministic, about 1,500 tokens of a
/// SmolLM2-sized vocabulary (the bench prints the count the server gives).
/// It ends with a full stop, so its tokens are the same alone and with a
/// question after it.
pub fn system_prefix() -> String {
    let mut text = String::from(
        "You are the customer support assistant of Northwind Outfitters, a shop that \
         sells outdoor equipment online and in twelve stores. Answer politely, briefly and \
         only from the catalogue and the policies below. If the answer is not there, say \
         that you do not know and offer to pass the question to a colleague. Never invent \
         prices, dates or stock levels. Orders ship within two working days; delivery is \
         free above fifty euros. Unused items can be returned within the period stated for \
         each item, with the receipt. Repairs under warranty are free; repairs after it are \
         quoted first. The catalogue follows.",
    );
    for (i, item) in ITEMS.iter().enumerate() {
        let _ = write!(
            text,
            " Item {}: the {item}. It weighs {} grams, costs {} euros and carries a {}-year \
             warranty; unused, it can be returned within {} days. To care for it, {}. Stores \
             keep spare parts for it for {} years.",
            i + 1,
            350 + 45 * i,
            40 + 15 * (i % 9),
            1 + i % 5,
            14 + 7 * (i % 3),
            CARE[i % CARE.len()],
            3 + i % 4,
        );
    }
    text.push_str(" End of the catalogue.");
    text
}

const QUESTIONS: [&str; 3] = [
    "How long is the warranty on the {}?",
    "Can I return the {} after three weeks?",
    "How should I clean the {} after a trip?",
];

/// Client `client`'s question in `round`: a different one for every
/// request of a run, about 15 tokens.
pub fn question(round: usize, client: usize) -> String {
    let n = round * CLIENTS + client;
    let item = ITEMS[(n * 5 + round) % ITEMS.len()];
    let question = QUESTIONS[n % QUESTIONS.len()].replace("{}", item);
    format!("\n\nQuestion {}: {question}\nAnswer:", n + 1)
}

/// A streamed raw-text completion (`/v1/completions`: both servers
/// tokenize the same text, no chat template), greedy, exactly
/// [`MAX_TOKENS`] tokens. `cache_prompt` asks llama-server to keep and
/// reuse the prompt in its slot (its default, said explicitly); ours
/// ignores the field.
pub fn request(model: &str, prompt: &str) -> Value {
    json!({
        "model": model,
        "prompt": prompt,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
        "cache_prompt": true,
    })
}

/// One setup's measurements.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub setup: Setup,
    /// Its flags as the report shows them.
    pub flags: String,
    /// The warm-up: the prefix alone, the first request the fresh server
    /// saw (cold).
    pub warmup: Timing,
    /// Each measured round's requests, in order; fewer than planned if the
    /// deadline cut the run short.
    pub rounds: Vec<Vec<Timing>>,
}

impl Run {
    pub fn measured(&self) -> impl Iterator<Item = &Timing> {
        self.rounds.iter().flatten()
    }

    /// TTFT of every measured request, seconds.
    pub fn ttfts(&self) -> Vec<f64> {
        self.measured().map(|t| t.ttft().as_secs_f64()).collect()
    }

    pub fn ttft_p50(&self) -> f64 {
        percentile(&self.ttfts(), 50.0)
    }

    /// TTFT p50 of the rounds after the first, seconds: once every one
    /// of llama-server's slots has served the prefix (its cache is per
    /// slot, so its first round is mostly cold); 0 with one round.
    pub fn later_ttft_p50(&self) -> f64 {
        let ttfts: Vec<f64> = self
            .rounds
            .iter()
            .skip(1)
            .flatten()
            .map(|t| t.ttft().as_secs_f64())
            .collect();
        percentile(&ttfts, 50.0)
    }

    pub fn ttft_p99(&self) -> f64 {
        percentile(&self.ttfts(), 99.0)
    }

    /// Mean of the measured requests' `cached_tokens` (0 where absent).
    pub fn mean_cached(&self) -> f64 {
        self.mean(|t| t.cached_tokens)
    }

    pub fn mean_prompt(&self) -> f64 {
        self.mean(|t| t.prompt_tokens)
    }

    fn mean(&self, of: impl Fn(&Timing) -> usize) -> f64 {
        let (sum, n) = self
            .measured()
            .fold((0, 0), |(sum, n), t| (sum + of(t), n + 1));
        if n == 0 {
            0.0
        } else {
            sum as f64 / n as f64
        }
    }

    /// The smallest and largest measured prompt.
    pub fn prompt_range(&self) -> (usize, usize) {
        let tokens: Vec<usize> = self.measured().map(|t| t.prompt_tokens).collect();
        (
            tokens.iter().copied().min().unwrap_or(0),
            tokens.iter().copied().max().unwrap_or(0),
        )
    }
}

/// Every setup's run on one model, and the ratios.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixCacheReport {
    /// The model file's name.
    pub model: String,
    /// Rounds planned per run.
    pub rounds: usize,
    pub runs: Vec<Run>,
}

impl PrefixCacheReport {
    pub fn run(&self, setup: Setup) -> Option<&Run> {
        self.runs.iter().find(|r| r.setup == setup)
    }

    /// `slower`'s TTFT p50 over `faster`'s by `p50`, where both ran.
    fn ratio(&self, slower: Setup, faster: Setup, p50: fn(&Run) -> f64) -> Option<f64> {
        let (slower, faster) = (self.run(slower)?, self.run(faster)?);
        let (num, den) = (p50(slower), p50(faster));
        (num > 0.0 && den > 0.0).then(|| num / den)
    }

    /// TTFT p50 without our prefix cache over with it; the target:
    /// at least [`CACHE_SPEEDUP_TARGET`].
    pub fn cache_speedup(&self) -> Option<f64> {
        self.ratio(Setup::Uncached, Setup::Cached, Run::ttft_p50)
    }

    /// llama-server's TTFT p50 over ours with the prefix cache.
    pub fn versus_llama_server(&self) -> Option<f64> {
        self.ratio(Setup::LlamaServer, Setup::Cached, Run::ttft_p50)
    }

    /// The same over the rounds after the first ([`Run::later_ttft_p50`]).
    pub fn versus_llama_server_later(&self) -> Option<f64> {
        self.ratio(Setup::LlamaServer, Setup::Cached, Run::later_ttft_p50)
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let prefix = self.runs.first().map_or(0, |r| r.warmup.prompt_tokens);
        let (low, high) = self
            .runs
            .iter()
            .map(Run::prompt_range)
            .fold((usize::MAX, 0), |(low, high), (l, h)| {
                (low.min(l), high.max(h))
            });
        let _ = writeln!(
            out,
            "### Shared system prompt: {}\n\n{CLIENTS} concurrent clients × {} rounds after a \
             warm-up. Every prompt is the same {prefix}-token prefix (the warm-up's prompt, \
             the prefix alone, the first request to a fresh server, so cold) and a distinct \
             question ({} tokens in all); {MAX_TOKENS} tokens generated, temperature 0, \
             streamed raw-text `/v1/completions` (no chat template). TTFT and cached tokens \
             are over every measured request.\n",
            self.model,
            self.rounds,
            match (low, high) {
                (usize::MAX, _) => "no".into(),
                (low, high) if low == high => low.to_string(),
                (low, high) => format!("{low}–{high}"),
            },
        );
        let _ = writeln!(
            out,
            "| server | flags | warm-up TTFT (cold) | TTFT p50 | TTFT p99 | TTFT p50 by round | mean cached_tokens | requests |\n|---|---|---:|---:|---:|---:|---:|---:|"
        );
        let ms = |s: f64| format!("{:.0} ms", s * 1e3);
        for run in &self.runs {
            let by_round: Vec<String> = run
                .rounds
                .iter()
                .map(|round| {
                    let ttfts: Vec<f64> = round.iter().map(|t| t.ttft().as_secs_f64()).collect();
                    format!("{:.0}", percentile(&ttfts, 50.0) * 1e3)
                })
                .collect();
            let short = if run.rounds.len() < self.rounds {
                format!(
                    " (deadline: {} of {} rounds)",
                    run.rounds.len(),
                    self.rounds
                )
            } else {
                String::new()
            };
            let mean_prompt = run.mean_prompt();
            let cached = run.mean_cached();
            let _ = writeln!(
                out,
                "| {}{short} | {} | {} ({} tokens) | {} | {} | {} ms | {cached:.0} of {mean_prompt:.0} ({:.0} %) | {} |",
                run.setup.label(),
                if run.flags.is_empty() { "(defaults)" } else { &run.flags },
                ms(run.warmup.ttft().as_secs_f64()),
                run.warmup.prompt_tokens,
                ms(run.ttft_p50()),
                ms(run.ttft_p99()),
                by_round.join(" / "),
                100.0 * cached / mean_prompt.max(1.0),
                run.measured().count(),
            );
        }
        let ratio = |r: Option<f64>| r.map_or("n/a (not run)".into(), |r| format!("{r:.2}×"));
        let speedup = self.cache_speedup();
        let verdict = match speedup {
            Some(r) if r >= CACHE_SPEEDUP_TARGET => format!("≥ {CACHE_SPEEDUP_TARGET}× (met)"),
            Some(_) => format!("≥ {CACHE_SPEEDUP_TARGET}× (**missed**)"),
            None => format!("≥ {CACHE_SPEEDUP_TARGET}×"),
        };
        let _ = writeln!(
            out,
            "\n| ratio | value | target |\n|---|---:|---|\n\
             | TTFT p50, ours: no prefix cache / prefix cache | **{}** | {verdict} |\n\
             | TTFT p50, llama-server / ours with the prefix cache | {} | (none) |",
            ratio(speedup),
            ratio(self.versus_llama_server()),
        );
        if self.rounds > 1 {
            let _ = writeln!(
                out,
                "| the same from round 2 on (each llama-server slot keeps its own cache, \
                 so its first round is mostly cold) | {} | (none) |",
                ratio(self.versus_llama_server_later()),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn timing(ttft_ms: u64, prompt_tokens: usize, cached_tokens: usize) -> Timing {
        let sent = Instant::now();
        let first_token = sent + Duration::from_millis(ttft_ms);
        Timing {
            sent,
            first_token,
            done: first_token + Duration::from_millis(100),
            prompt_tokens,
            completion_tokens: MAX_TOKENS,
            cached_tokens,
            token_times: vec![first_token],
        }
    }

    /// A run whose rounds have the given TTFTs, each request 1,520 prompt
    /// tokens with `cached` of them cached.
    fn run(setup: Setup, flags: &str, rounds: &[&[u64]], cached: usize) -> Run {
        Run {
            setup,
            flags: flags.into(),
            warmup: timing(900, 1500, 0),
            rounds: rounds
                .iter()
                .map(|r| r.iter().map(|ms| timing(*ms, 1520, cached)).collect())
                .collect(),
        }
    }

    #[test]
    fn questions_differ_for_every_request_and_the_prompts_share_the_prefix() {
        let mut seen = std::collections::HashSet::new();
        for round in 0..ROUNDS {
            for client in 0..CLIENTS {
                let q = question(round, client);
                assert!(q.starts_with("\n\nQuestion "), "{q:?}");
                assert!(q.len() < 120, "a short question: {q:?}");
                assert!(seen.insert(q), "repeated: round {round}, client {client}");
            }
        }
        let prefix = system_prefix();
        assert_eq!(prefix, system_prefix(), "deterministic");
        assert!(prefix.ends_with('.'));
        // About 1,500 tokens at ~4.5 characters a token.
        assert!((5_500..8_500).contains(&prefix.len()), "{}", prefix.len());
    }

    #[test]
    fn the_request_streams_with_usage_and_asks_for_the_prompt_cache() {
        let body = request("m", "text");
        assert_eq!(body["prompt"], "text");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["cache_prompt"], true);
        assert_eq!(body["max_tokens"], MAX_TOKENS);
        assert!(body.get("messages").is_none());
    }

    #[test]
    fn setups_are_chosen_by_key_in_report_order() {
        assert_eq!(
            Setup::parse_list("llama, cache").unwrap(),
            vec![Setup::Cached, Setup::LlamaServer]
        );
        assert_eq!(
            Setup::parse_list("no-cache").unwrap(),
            vec![Setup::Uncached]
        );
        assert!(Setup::parse_list("cache,vllm")
            .unwrap_err()
            .contains("vllm"));
        assert_eq!(Setup::Uncached.our_flags(), ["--no-prefix-caching"]);
    }

    #[test]
    fn statistics_over_the_measured_requests() {
        let r = run(
            Setup::Cached,
            "",
            &[&[10, 20, 30, 40], &[50, 60, 70, 1000]],
            1504,
        );
        assert!((r.ttft_p50() - 0.040).abs() < 1e-9);
        assert!((r.ttft_p99() - 1.0).abs() < 1e-9);
        assert_eq!(r.mean_cached(), 1504.0);
        assert_eq!(r.prompt_range(), (1520, 1520));
        let empty = Run {
            rounds: vec![],
            ..r
        };
        assert_eq!(empty.mean_cached(), 0.0);
        assert_eq!(empty.prompt_range(), (0, 0));
    }

    #[test]
    fn the_report_states_both_ratios_and_the_target() {
        let report = PrefixCacheReport {
            model: "SmolLM2.Q4_1".into(),
            rounds: 2,
            runs: vec![
                run(Setup::Cached, "", &[&[40, 40], &[40, 40]], 1504),
                run(
                    Setup::Uncached,
                    "--no-prefix-caching",
                    &[&[300, 300], &[300, 300]],
                    0,
                ),
                run(
                    Setup::LlamaServer,
                    "-np 8",
                    &[&[200, 200], &[200, 60]],
                    1200,
                ),
            ],
        };
        assert!((report.cache_speedup().unwrap() - 7.5).abs() < 1e-9);
        assert!((report.versus_llama_server().unwrap() - 5.0).abs() < 1e-9);
        assert!((report.versus_llama_server_later().unwrap() - 1.5).abs() < 1e-9);
        let md = report.markdown();
        assert!(md.contains("same 1500-token prefix"), "{md}");
        assert!(
            md.contains(
                "| ours, prefix caching | (defaults) | 900 ms (1500 tokens) | 40 ms | 40 ms | 40 / 40 ms | 1504 of 1520 (99 %) | 4 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| llama-server, prompt cache | -np 8 |"),
            "{md}"
        );
        assert!(md.contains("| 200 ms | 200 ms | 200 / 60 ms |"), "{md}");
        assert!(md.contains("| **7.50×** | ≥ 5× (met) |"), "{md}");
        assert!(md.contains("prefix cache | 5.00× | (none) |"), "{md}");
        // From round 2 on: 60 ms against 40.
        assert!(md.contains("mostly cold) | 1.50× | (none) |"), "{md}");

        let slow_cache = PrefixCacheReport {
            runs: vec![
                run(Setup::Cached, "", &[&[100, 100]], 0),
                run(
                    Setup::Uncached,
                    "--no-prefix-caching",
                    &[&[300, 300], &[300, 300]],
                    0,
                ),
            ],
            ..report.clone()
        };
        let md = slow_cache.markdown();
        assert!(md.contains("| **3.00×** | ≥ 5× (**missed**) |"), "{md}");
        assert!(md.contains("(deadline: 1 of 2 rounds)"), "{md}");
        assert!(md.contains("| n/a (not run) | (none) |"), "{md}");

        let llama_only = PrefixCacheReport {
            runs: vec![run(
                Setup::LlamaServer,
                "-np 8",
                &[&[60, 60], &[60, 60]],
                1200,
            )],
            ..report
        };
        let md = llama_only.markdown();
        assert!(md.contains("| **n/a (not run)** | ≥ 5× |"), "{md}");
    }
}
