//! Prometheus metrics shared by the HTTP layer and the engine thread.
//! Lock-free counters and fixed-bucket histograms, rendered in the text
//! exposition format on `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[derive(Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A gauge of a fraction (0 to 1), kept as the f64's bits.
#[derive(Default)]
pub struct Ratio(AtomicU64);

impl Ratio {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
}

/// How the KV cache is laid out, fixed at start (`vllm:cache_config_info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    pub blocks: usize,
    pub block_tokens: usize,
    pub prefix_caching: bool,
    /// The element type of the cached keys and values.
    pub dtype: &'static str,
}

/// A cumulative histogram with fixed upper bounds; the sum is kept in
/// micro-units so it stays an integer.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add((v * 1e6).max(0.0) as u64, Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

pub struct Metrics {
    pub queue_depth: Gauge,
    pub running: Gauge,
    pub kv_cache_bytes: Gauge,
    /// KV blocks held by sequences, as a share of all of them.
    pub kv_cache_usage: Ratio,
    pub cache_config: std::sync::OnceLock<CacheConfig>,
    /// Running sequences sent back to the queue for KV blocks.
    pub preemptions: Counter,
    /// Prompt tokens looked up in the prefix cache at admission, and those
    /// found there (their prefill skipped).
    pub prefix_cache_queries: Counter,
    pub prefix_cache_hits: Counter,
    pub requests_finished_stop: Counter,
    pub requests_finished_length: Counter,
    pub requests_cancelled: Counter,
    pub requests_failed: Counter,
    pub requests_rejected_full: Counter,
    /// Prompt tokens of the requests admitted, each prompt once (prefix
    /// cache hits included), as `usage.prompt_tokens` counts them.
    pub prompt_tokens: Counter,
    /// Tokens the prefill steps computed: prefix cache hits are not, and a
    /// preempted sequence's recomputation is again.
    pub prefill_tokens: Counter,
    pub generated_tokens: Counter,
    pub batch_tokens: Histogram,
    pub batch_sequences: Histogram,
    pub step_seconds: Histogram,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub request_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            queue_depth: Gauge::default(),
            running: Gauge::default(),
            kv_cache_bytes: Gauge::default(),
            kv_cache_usage: Ratio::default(),
            cache_config: std::sync::OnceLock::new(),
            preemptions: Counter::default(),
            prefix_cache_queries: Counter::default(),
            prefix_cache_hits: Counter::default(),
            requests_finished_stop: Counter::default(),
            requests_finished_length: Counter::default(),
            requests_cancelled: Counter::default(),
            requests_failed: Counter::default(),
            requests_rejected_full: Counter::default(),
            prompt_tokens: Counter::default(),
            prefill_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            batch_tokens: Histogram::new(SIZES),
            batch_sequences: Histogram::new(SIZES),
            step_seconds: Histogram::new(SECONDS),
            time_to_first_token: Histogram::new(SECONDS),
            inter_token_latency: Histogram::new(SECONDS),
            request_seconds: Histogram::new(SECONDS),
        }
    }
}

impl Metrics {
    pub fn render(&self, model: &str) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut out,
            "inference_queue_depth",
            "Requests waiting for a running slot.",
            self.queue_depth.get(),
        );
        gauge(
            &mut out,
            "inference_running_sequences",
            "Sequences prefilling or decoding.",
            self.running.get(),
        );
        gauge(
            &mut out,
            "inference_kv_cache_bytes",
            "Bytes of KV cache held by running sequences.",
            self.kv_cache_bytes.get(),
        );
        // Under the names of the Gateway API Inference Extension's
        // model-server protocol (vLLM's), which its endpoint picker reads
        // to balance replicas by queue and KV use.
        let usage = self.kv_cache_usage.get();
        for (name, kind, help, v) in [
            (
                "vllm:num_requests_waiting",
                "gauge",
                "Requests waiting for a running slot (model-server protocol).",
                self.queue_depth.get().to_string(),
            ),
            (
                "vllm:num_requests_running",
                "gauge",
                "Sequences prefilling or decoding (model-server protocol).",
                self.running.get().to_string(),
            ),
            (
                "vllm:kv_cache_usage_perc",
                "gauge",
                "KV-cache blocks held by sequences, 0 to 1 (model-server protocol).",
                usage.to_string(),
            ),
            (
                "vllm:num_preemptions_total",
                "counter",
                "Running sequences sent back to the queue to free KV blocks (computed again when readmitted).",
                self.preemptions.get().to_string(),
            ),
            (
                "vllm:prefix_cache_queries_total",
                "counter",
                "Prompt tokens looked up in the prefix cache.",
                self.prefix_cache_queries.get().to_string(),
            ),
            (
                "vllm:prefix_cache_hits_total",
                "counter",
                "Prompt tokens found in the prefix cache (not computed again).",
                self.prefix_cache_hits.get().to_string(),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{model_name=\"{model}\"}} {v}"
            );
        }
        if let Some(c) = self.cache_config.get() {
            let prefix = if c.prefix_caching { "True" } else { "False" };
            let _ = writeln!(
                out,
                "# HELP vllm:cache_config_info The KV cache's layout (model-server protocol): block_size in tokens, num_gpu_blocks the blocks of the cache wherever it lives.\n# TYPE vllm:cache_config_info gauge\nvllm:cache_config_info{{block_size=\"{}\",num_gpu_blocks=\"{}\",enable_prefix_caching=\"{prefix}\",cache_dtype=\"{}\"}} 1",
                c.block_tokens, c.blocks, c.dtype
            );
        }

        let _ = writeln!(
            out,
            "# HELP inference_requests_total Requests that ended, by outcome (a request for n choices counts each; rejected_queue_full counts requests).\n# TYPE inference_requests_total counter"
        );
        for (outcome, c) in [
            ("stop", &self.requests_finished_stop),
            ("length", &self.requests_finished_length),
            ("cancelled", &self.requests_cancelled),
            ("failed", &self.requests_failed),
            ("rejected_queue_full", &self.requests_rejected_full),
        ] {
            let _ = writeln!(
                out,
                "inference_requests_total{{model=\"{model}\",outcome=\"{outcome}\"}} {}",
                c.get()
            );
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{model=\"{model}\"}} {v}"
            );
        };
        counter(
            &mut out,
            "inference_prompt_tokens_total",
            "Prompt tokens of the requests admitted, each once.",
            self.prompt_tokens.get(),
        );
        counter(
            &mut out,
            "inference_prefill_tokens_total",
            "Tokens computed by prefill (prefix cache hits not, recomputation after preemption again).",
            self.prefill_tokens.get(),
        );
        counter(
            &mut out,
            "inference_generated_tokens_total",
            "Tokens generated.",
            self.generated_tokens.get(),
        );

        self.batch_tokens.render(
            &mut out,
            "inference_batch_tokens",
            "Tokens fed through the model per step.",
        );
        self.batch_sequences.render(
            &mut out,
            "inference_batch_sequences",
            "Sequences in one forward step.",
        );
        self.step_seconds.render(
            &mut out,
            "inference_step_seconds",
            "Duration of one forward step and sampling.",
        );
        self.time_to_first_token.render(
            &mut out,
            "inference_time_to_first_token_seconds",
            "From request arrival to its first generated token.",
        );
        self.inter_token_latency.render(
            &mut out,
            "inference_inter_token_latency_seconds",
            "Between consecutive tokens of a sequence.",
        );
        self.request_seconds.render(
            &mut out,
            "inference_request_seconds",
            "From request arrival to its last token.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_and_running_are_also_under_the_model_server_protocols_names() {
        let m = Metrics::default();
        m.queue_depth.set(3);
        m.running.set(5);
        let text = m.render("smol");
        assert!(text.contains("inference_queue_depth 3\n"), "{text}");
        assert!(
            text.contains("vllm:num_requests_waiting{model_name=\"smol\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("vllm:num_requests_running{model_name=\"smol\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE vllm:num_requests_waiting gauge\n"));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.time_to_first_token.observe(0.003);
        m.time_to_first_token.observe(0.2);
        m.time_to_first_token.observe(100.0);
        let text = m.render("m");
        assert!(text.contains("inference_time_to_first_token_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("inference_time_to_first_token_seconds_bucket{le=\"0.25\"} 2\n"));
        assert!(text.contains("inference_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("inference_time_to_first_token_seconds_count 3\n"));
    }
}
