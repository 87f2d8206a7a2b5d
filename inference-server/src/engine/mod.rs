//! The engine owns the model on its own thread. HTTP handlers validate a
//! request, take an admission permit and hand the engine a [`Submission`]
//! carrying its own event channel; it never sees HTTP types. The engine
//! schedules every live sequence into one batched forward per step and
//! streams each token back as text.

pub mod grammar;
pub mod kv_blocks;
pub mod sampling;
pub mod scheduler;
mod sequence;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use maas_kernels::team::Team;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::metrics::{CacheConfig, Metrics};
use crate::model::{KvMemory, LoadedModel, Model, ModelError};
pub use grammar::Constraint;
use kv_blocks::{BlockPool, KvShape};
use sampling::SamplingParams;
use scheduler::{LimitsError, Scheduler, SchedulerLimits};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Leading prompt tokens found in the prefix cache (OpenAI's
    /// `prompt_tokens_details.cached_tokens`): counted in `prompt_tokens`,
    /// not computed again.
    pub cached_tokens: usize,
}

/// What a request's channel receives, in order: text pieces (whole UTF-8
/// characters, never part of a stop string), then exactly one end event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token's log-probabilities, when the request asked for
    /// them: sent before the text it adds (which may come later, when a
    /// character or a possible stop string is held back).
    Logprobs(sampling::TokenLogprobs),
    Text(String),
    Finished {
        reason: FinishReason,
        usage: Usage,
    },
    /// The engine could not finish the sequence; what was streamed so far
    /// stands, and `usage` is what it computed: its prompt and the tokens
    /// it generated once it was admitted, nothing when it never was (a
    /// gateway charges an error from this, not an estimate).
    Failed {
        failure: Failure,
        usage: Usage,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Shutdown refused or cut it: the client may retry elsewhere (503).
    Unavailable(String),
    /// The model or the engine failed on it (500).
    Internal(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Self::Unavailable(m) | Self::Internal(m) => m,
        }
    }
}

/// How each token is chosen and when generation stops, as a request asks:
/// one list, carried from the API's first validation stage to the sequence.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decoding {
    pub sampling: SamplingParams,
    /// `(token, bias)` added to the logits, each token once (inside the
    /// vocabulary once the API's second stage has checked it).
    pub logit_bias: Vec<(u32, f32)>,
    /// `Some(k)`: report each token's log-probability and the `k` most
    /// likely tokens'.
    pub logprobs: Option<usize>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
}

#[derive(Debug)]
pub struct GenerationParams {
    /// At least 1; with the prompt, within the model's positions.
    pub max_new_tokens: usize,
    pub decoding: Decoding,
    /// The response format's grammar, compiled for this request: each
    /// step's tokens are masked to those it allows.
    pub grammar: Option<Constraint>,
    /// Special tokens the answer's text includes, spelled out (a tool-call
    /// format's markers, where the vocabulary has them as control tokens);
    /// every other special token adds no text.
    pub shown_special: Vec<u32>,
}

/// A request for the engine, validated by its sender (the API's
/// `validation`): a non-empty prompt of ids in the vocabulary, and a budget
/// that fits after it in the model's positions. The engine trusts this and
/// does not check it again (only debug builds assert it).
///
/// Several `choices` (OpenAI's `n`) share one prefill: the prompt is run
/// once, its KV cache copied for each further choice, and every choice
/// samples its first token from the same logits. Choice `i` samples with
/// the seed plus `i`, so choice 0 is what the same request with `n: 1`
/// gives.
pub struct Submission {
    pub prompt: Vec<u32>,
    pub params: GenerationParams,
    /// Prompts share prefix-cached blocks only within one scope (the
    /// gateway's subscription); `None`: with every unscoped prompt.
    pub cache_scope: Option<String>,
    /// At least one, at most the engine's running sequences.
    pub choices: Vec<ChoiceOutput>,
    pub received: Instant,
}

/// Where one choice's events go, and the admission slot it holds until it
/// ends.
pub struct ChoiceOutput {
    pub events: mpsc::UnboundedSender<Event>,
    pub permit: OwnedSemaphorePermit,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Limits(#[from] LimitsError),
    #[error("cannot start the compute threads: {0}")]
    Team(std::io::Error),
    #[error("cannot start the engine thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error(
        "--kv-cache-memory {memory} bytes holds {blocks} blocks of {block_tokens} positions, but one sequence of the whole context ({context} positions) needs {needed} blocks ({needed_bytes} bytes): raise --kv-cache-memory or lower --context"
    )]
    KvTooSmall {
        memory: u64,
        blocks: usize,
        block_tokens: usize,
        context: usize,
        needed: usize,
        needed_bytes: u64,
    },
    #[error(transparent)]
    KvMemory(#[from] ModelError),
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the server is at capacity: {0} choices running or queued")]
    Full(usize),
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// How much memory the KV cache takes (`--kv-cache-memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvBudget {
    Bytes(u64),
    /// This share, in percent (1 to 100), of the memory free where the
    /// cache lives, measured at start once the weights are loaded: the
    /// GPU's on `--device cuda` (as vLLM's `--gpu-memory-utilization`,
    /// though of free rather than total memory), the host's available
    /// memory otherwise.
    Percent(u8),
}

/// The KV cache's size and layout (`--kv-cache-memory`, `--block-size`,
/// `--no-prefix-caching`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheConfig {
    /// Memory for every sequence's keys and values; `None`: the default
    /// (see [`KvCacheConfig::blocks`]).
    pub memory: Option<KvBudget>,
    pub block_tokens: usize,
    pub prefix_caching: bool,
}

impl KvCacheConfig {
    /// The default budget: as much as vLLM's CPU backend takes by default.
    pub const DEFAULT_MEMORY: u64 = 4 << 30;

    /// How many blocks the memory holds for `model`, checked to hold one
    /// sequence of its whole context (so any admitted request can always
    /// finish, if need be alone).
    pub fn blocks(&self, model: &Model) -> Result<usize, StartError> {
        self.blocks_with(model.config(), model.max_positions(), || {
            model.free_memory()
        })
    }

    /// [`Self::blocks`] for a model of `config` and `context` positions,
    /// with `free` measuring the free memory (asked only for a percentage).
    fn blocks_with(
        &self,
        config: &crate::model::ModelConfig,
        context: usize,
        free: impl FnOnce() -> Result<u64, ModelError>,
    ) -> Result<usize, StartError> {
        let block_bytes = KvMemory::block_bytes(config, self.block_tokens).max(1) as u64;
        let needed = context.div_ceil(self.block_tokens);
        let needed_bytes = needed as u64 * block_bytes;
        let memory = match self.memory {
            None => Self::DEFAULT_MEMORY.max(needed_bytes),
            Some(KvBudget::Bytes(bytes)) => bytes,
            // Cannot overflow: at most the free memory itself.
            Some(KvBudget::Percent(p)) => (u128::from(free()?) * u128::from(p) / 100) as u64,
        };
        let blocks = usize::try_from(memory / block_bytes).unwrap_or(usize::MAX);
        if blocks < needed {
            return Err(StartError::KvTooSmall {
                memory,
                blocks,
                block_tokens: self.block_tokens,
                context,
                needed,
                needed_bytes,
            });
        }
        Ok(blocks)
    }
}

impl Default for KvCacheConfig {
    fn default() -> Self {
        Self {
            memory: None,
            block_tokens: 16,
            prefix_caching: true,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub limits: SchedulerLimits,
    pub kv: KvCacheConfig,
    /// How long running sequences may take to finish after shutdown starts.
    pub shutdown_grace: Duration,
    /// Compute threads for the forward pass (`None`: one per core).
    pub threads: Option<usize>,
}

/// The HTTP side's view of the engine. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Shared>,
}

/// What the engine thread receives.
pub(crate) enum Command {
    Submit(Box<Submission>),
    /// Wakes an idle engine to notice the shutdown flag.
    Shutdown,
}

struct Shared {
    submissions: mpsc::UnboundedSender<Command>,
    permits: Arc<Semaphore>,
    capacity: usize,
    max_running: usize,
    kv: KvShape,
    shutting_down: Arc<AtomicBool>,
}

pub struct Engine {
    pub handle: EngineHandle,
    pub thread: std::thread::JoinHandle<()>,
}

impl Engine {
    /// Starts the engine thread for a loaded model.
    pub fn start(
        loaded: Arc<LoadedModel>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StartError> {
        let blocks = config.kv.blocks(&loaded.model)?;
        let prefix_caching = config.kv.prefix_caching;
        let mut pool = BlockPool::new(blocks, config.kv.block_tokens);
        if !prefix_caching {
            pool = pool.without_prefix_caching();
        }
        let kv = loaded.model.new_kv(blocks, config.kv.block_tokens)?;
        let _ = metrics.cache_config.set(CacheConfig {
            blocks,
            block_tokens: config.kv.block_tokens,
            prefix_caching,
            dtype: "float16",
        });
        tracing::info!(
            blocks,
            block_tokens = config.kv.block_tokens,
            prefix_caching,
            "KV cache"
        );
        let kv_shape = pool.shape();
        let scheduler = Scheduler::new(config.limits, pool)?;
        // The forward pass runs with this team installed (see
        // `Worker::step`): the engine thread and the team's workers share the
        // step's ~120 parallel regions, the workers spinning between them
        // rather than sleeping (see `maas_kernels::team` for why).
        let threads = config
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let team = Team::new(threads).map_err(StartError::Team)?;
        let capacity = config.limits.max_running + config.limits.max_waiting;
        let (tx, rx) = mpsc::unbounded_channel();
        let shutting_down = Arc::new(AtomicBool::new(false));
        let worker = worker::Worker::new(
            loaded,
            scheduler,
            rx,
            metrics,
            shutting_down.clone(),
            config.shutdown_grace,
            team,
            kv,
        );
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                // A panic here leaves every sequence's state unknown: exit
                // so the supervisor restarts the server, rather than keep
                // answering /health with a dead engine.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run())).is_err()
                {
                    tracing::error!("the engine thread panicked; exiting");
                    std::process::exit(70);
                }
            })?;
        Ok(Self {
            handle: EngineHandle {
                inner: Arc::new(Shared {
                    submissions: tx,
                    permits: Arc::new(Semaphore::new(capacity)),
                    capacity,
                    max_running: config.limits.max_running,
                    kv: kv_shape,
                    shutting_down,
                }),
            },
            thread,
        })
    }
}

impl EngineHandle {
    /// Takes a slot per choice among `max running + max queued`, or says
    /// why not at once: a full server answers 503 instead of holding the
    /// client.
    pub fn admit(&self, choices: usize) -> Result<Vec<OwnedSemaphorePermit>, SubmitError> {
        if self.is_shutting_down() {
            return Err(SubmitError::ShuttingDown);
        }
        let wanted =
            u32::try_from(choices.max(1)).map_err(|_| SubmitError::Full(self.inner.capacity))?;
        let mut all = match self.inner.permits.clone().try_acquire_many_owned(wanted) {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => return Err(SubmitError::Full(self.inner.capacity)),
            Err(TryAcquireError::Closed) => return Err(SubmitError::ShuttingDown),
        };
        // One permit each, so a choice that ends frees its own slot.
        let mut permits: Vec<_> = (1..wanted).filter_map(|_| all.split(1)).collect();
        permits.push(all);
        Ok(permits)
    }

    /// The most choices one request may ask for: they run at once.
    pub fn max_choices(&self) -> usize {
        self.inner.max_running
    }

    /// The KV memory's size: a request that can never fit is refused
    /// before it is queued.
    pub fn kv_shape(&self) -> KvShape {
        self.inner.kv
    }

    pub fn submit(&self, s: Submission) -> Result<(), SubmitError> {
        if self.is_shutting_down() {
            return Err(SubmitError::ShuttingDown);
        }
        self.inner
            .submissions
            .send(Command::Submit(Box::new(s)))
            .map_err(|_| SubmitError::ShuttingDown)
    }

    /// Stops admission; the engine finishes running sequences within its
    /// grace period, fails queued ones, then its thread exits.
    pub fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.permits.close();
        let _ = self.inner.submissions.send(Command::Shutdown);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests;
