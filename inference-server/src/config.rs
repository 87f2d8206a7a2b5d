//! Command-line configuration, validated once at start.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::api::ApiKeys;
use crate::engine::scheduler::{LimitsError, SchedulerLimits};
use crate::engine::{KvBudget, KvCacheConfig};
use crate::text::ChatTemplate;

/// The embedded default: SmolLM2-135M-Instruct (Q4_1), fetched into the
/// project's cache by `make model` (scripts/fetch-model.sh).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_ID: &str = "smollm2-135m-instruct";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "inference-server",
    version,
    about = "OpenAI-compatible GGUF inference server with continuous batching"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// GGUF model file. Default: the embedded SmolLM2-135M-Instruct from the
    /// project's cache (.cache/models, or $MAAS_MODEL_DIR).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The model's name in the API. Default: smollm2-135m-instruct for the
    /// embedded model, else the file's stem.
    #[arg(long)]
    pub model_id: Option<String>,
    /// Sequences decoding or prefilling at once.
    #[arg(long, default_value_t = 16)]
    pub max_running: usize,
    /// Requests waiting for a running slot; beyond that, 503 at once.
    #[arg(long, default_value_t = 64)]
    pub max_queued: usize,
    /// Tokens fed through the model in one step (decodes + prompt chunks).
    #[arg(long, default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// The largest piece of one prompt fed in one step.
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
    /// Longest sequence (prompt + completion). Default: the model's context.
    #[arg(long)]
    pub context: Option<usize>,
    /// Memory for the KV cache, shared by every sequence in blocks: a
    /// number of bytes, or with KiB, MiB or GiB, or a percentage (`90%`) of
    /// the memory free once the model is loaded (the GPU's on `cuda`, the
    /// host's available memory otherwise). On the host pages are committed
    /// as blocks are first written; on a GPU it is allocated at start.
    /// Default: 4 GiB, or one whole context if that is more. It must hold
    /// at least one sequence of the whole context.
    #[arg(long, value_name = "SIZE|PERCENT%", value_parser = parse_kv_memory)]
    pub kv_cache_memory: Option<KvBudget>,
    /// Positions per KV block: the unit of allocation and of prefix
    /// sharing.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Do not reuse the KV blocks of prompts that start alike (automatic
    /// prefix caching, on by default).
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Largest accepted request body.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds a request's body may take to arrive, whole; one still
    /// arriving then is answered 408.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_read_timeout_secs: u64,
    /// Seconds running sequences get to finish after SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where the forward pass runs: `cpu` (our quantized kernels), `cuda` or
    /// `cuda:N` (candle on GPU N; needs a build with `--features cuda`), or
    /// `candle-cpu` (the GPU code path on candle's CPU backend: slower, for
    /// checking that path on a machine without a GPU).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// A Jinja chat template for /v1/chat/completions, used instead of the
    /// file's `tokenizer.chat_template` (or the built-in one for its
    /// architecture). Checked at start: one that does not parse stops the
    /// server.
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// `auto`: where the chat template writes thinking (`<think>`, as Qwen
    /// 3's and DeepSeek-R1's do), a chat answer's `<think>…</think>` goes
    /// out as `message.reasoning_content` (`delta.reasoning_content` when
    /// streamed) and the rest as `content`, as llama.cpp's default and
    /// vLLM's reasoning parsers do; `none`: all of it is `content`.
    #[arg(long, value_enum, default_value = "auto")]
    pub reasoning_format: ReasoningFormat,
    /// Answer /v1/ only to callers sending `Authorization: Bearer KEY`, KEY
    /// being a line of this file (at least 16 printable characters;
    /// surrounding whitespace is dropped; two lines while a key is
    /// rotated). Behind the MaaS gateway the filter presents it (its
    /// `model_server_api_key`), so requests that bypass the filter are
    /// refused. /health and /metrics stay open.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
}

/// `--api-key-file`, read once at start.
fn read_api_keys(path: PathBuf) -> Result<ApiKeys, ConfigError> {
    let refuse = |reason: String| ConfigError::ApiKey {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| refuse(e.to_string()))?;
    ApiKeys::parse(&text).map_err(|e| refuse(e.to_string()))
}

/// `--chat-template`, read and parsed once at start.
#[derive(Debug, Clone)]
pub struct ChatTemplateFile {
    pub path: PathBuf,
    pub source: String,
}

impl ChatTemplateFile {
    fn read(path: PathBuf) -> Result<Self, ConfigError> {
        let refuse = |reason: String| ConfigError::ChatTemplate {
            path: path.clone(),
            reason,
        };
        let source = std::fs::read_to_string(&path).map_err(|e| refuse(e.to_string()))?;
        // The special tokens come from the model, loaded later; parsing
        // does not need them.
        ChatTemplate::new(&source, None, None).map_err(|e| refuse(e.to_string()))?;
        Ok(Self { path, source })
    }
}

/// `--device`, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    CandleCpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "candle-cpu" => Ok(Self::CandleCpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("{s:?}: expected cpu, candle-cpu, cuda or cuda:N")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Limits(#[from] LimitsError),
    #[error("--max-queued must be at least 1")]
    NoQueue,
    #[error("--context must be at least 2")]
    Context,
    #[error("--block-size must be between 1 and 1024, not {0}")]
    BlockSize(usize),
    #[error(
        "the default model is not at {0}; fetch it with `make model` (scripts/fetch-model.sh), or pass --model PATH.gguf"
    )]
    DefaultModelMissing(PathBuf),
    #[error("model file {0} does not exist")]
    ModelMissing(PathBuf),
    #[error(
        "--device cuda: this build has no CUDA support; build with `make server-cuda` (cargo build --features cuda)"
    )]
    NoCuda,
    #[error("--chat-template {}: {reason}", path.display())]
    ChatTemplate { path: PathBuf, reason: String },
    #[error("--api-key-file {}: {reason}", path.display())]
    ApiKey { path: PathBuf, reason: String },
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: IpAddr,
    pub port: u16,
    pub model_path: PathBuf,
    pub model_id: String,
    pub limits: SchedulerLimits,
    pub kv: KvCacheConfig,
    pub context: Option<usize>,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub shutdown_grace: Duration,
    pub threads: Option<usize>,
    pub device: DeviceChoice,
    pub chat_template: Option<ChatTemplateFile>,
    pub reasoning_format: ReasoningFormat,
    pub api_keys: Option<ApiKeys>,
}

/// `--reasoning-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReasoningFormat {
    Auto,
    None,
}

/// Where the embedded default lives: `$MAAS_MODEL_DIR`, else the cache of the
/// checkout this binary was built from, else `./.cache/models`.
pub fn default_model_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("MAAS_MODEL_DIR") {
        return PathBuf::from(dir).join(DEFAULT_MODEL_FILE);
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.cache/models")
        .join(DEFAULT_MODEL_FILE);
    if built.exists() {
        return built;
    }
    PathBuf::from(".cache/models").join(DEFAULT_MODEL_FILE)
}

impl Args {
    pub fn into_config(self) -> Result<ServerConfig, ConfigError> {
        let limits = SchedulerLimits {
            max_running: self.max_running,
            max_waiting: self.max_queued,
            max_batch_tokens: self.max_batch_tokens,
            prefill_chunk: self.prefill_chunk,
        };
        limits.validate()?;
        if self.max_queued == 0 {
            return Err(ConfigError::NoQueue);
        }
        if self.context.is_some_and(|c| c < 2) {
            return Err(ConfigError::Context);
        }
        if !(1..=1024).contains(&self.block_size) {
            return Err(ConfigError::BlockSize(self.block_size));
        }
        if matches!(self.device, DeviceChoice::Cuda(_)) && !cfg!(feature = "cuda") {
            return Err(ConfigError::NoCuda);
        }
        let (model_path, model_id) = match self.model {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::ModelMissing(path));
                }
                let id = self.model_id.unwrap_or_else(|| {
                    path.file_stem().map_or_else(
                        || DEFAULT_MODEL_ID.to_string(),
                        |s| s.to_string_lossy().into_owned(),
                    )
                });
                (path, id)
            }
            None => {
                let path = default_model_path();
                if !path.exists() {
                    return Err(ConfigError::DefaultModelMissing(path));
                }
                (
                    path,
                    self.model_id
                        .unwrap_or_else(|| DEFAULT_MODEL_ID.to_string()),
                )
            }
        };
        Ok(ServerConfig {
            host: self.host,
            port: self.port,
            model_path,
            model_id,
            limits,
            kv: KvCacheConfig {
                memory: self.kv_cache_memory,
                block_tokens: self.block_size,
                prefix_caching: !self.no_prefix_caching,
            },
            context: self.context,
            max_body_bytes: self.max_body_bytes,
            body_read_timeout: Duration::from_secs(self.body_read_timeout_secs),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            threads: self.threads,
            device: self.device,
            chat_template: self.chat_template.map(ChatTemplateFile::read).transpose()?,
            reasoning_format: self.reasoning_format,
            api_keys: self.api_key_file.map(read_api_keys).transpose()?,
        })
    }
}

/// A size in bytes: a number, optionally followed by KiB, MiB or GiB (or
/// K, M, G, as powers of 1024).
/// `--kv-cache-memory`: a size (see [`parse_size`]) or a percentage.
fn parse_kv_memory(text: &str) -> Result<KvBudget, String> {
    match text.trim().strip_suffix('%') {
        Some(percent) => percent
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|p| (1..=100).contains(p))
            .map(KvBudget::Percent)
            .ok_or_else(|| format!("{text:?}: a percentage is a whole number from 1% to 100%")),
        None => parse_size(text).map(KvBudget::Bytes),
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} (use a number of bytes, or KiB, MiB or GiB)"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{text:?} is not a size (e.g. 512MiB, 4GiB)"))
}

#[cfg(test)]
mod size_tests {
    use super::{parse_kv_memory, parse_size, KvBudget};

    #[test]
    fn the_kv_memory_is_a_size_or_a_percentage_of_what_is_free() {
        assert_eq!(parse_kv_memory("512MiB"), Ok(KvBudget::Bytes(512 << 20)));
        assert_eq!(parse_kv_memory("90%"), Ok(KvBudget::Percent(90)));
        assert_eq!(parse_kv_memory("100%"), Ok(KvBudget::Percent(100)));
        for bad in ["0%", "101%", "50.5%", "%", "-5%"] {
            assert!(
                parse_kv_memory(bad).unwrap_err().contains("1% to 100%"),
                "{bad}"
            );
        }
    }

    #[test]
    fn sizes_take_binary_units_and_refuse_the_rest() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert!(parse_size("4 GB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("0").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
