//! A decoder over GGUF weights (llama-shaped blocks, and Gemma 3's) that
//! runs one forward pass for many sequences at once, each at its own
//! position over its own blocks of one paged KV memory (`cache`). Sliding-window layers (Gemma 3) read only
//! their window, but their cache keeps every position like the global
//! layers' (simple, and the block budget already counts them).
//!
//! candle's `quantized_llama::ModelWeights` keeps one KV cache per layer and
//! one position for the whole batch, so it cannot serve continuous batching.
//! This forward is written on row-major `f32` buffers: linear layers take all
//! of a step's tokens as one `[tokens, hidden]` matrix, RoPE rotates each row
//! at its own position, and each token attends over its sequence's blocks.
//!
//! Two implementations serve that contract: [`HostModel`] (our own quantized
//! kernels on the CPU, the default) and [`DeviceModel`] (candle tensors on an
//! accelerator, `--device cuda`). [`Model`] is whichever one was loaded.

mod cache;
mod config;
mod device;
mod device_kv;
mod file;
mod linear;
mod load;
mod ops;
mod paged_attention;
mod projection;

use thiserror::Error;

pub use cache::{BlockId, HostKv, KvMemory};
pub use config::{Family, ModelConfig, RopeParams, RopeStyle, SlidingWindow};
pub use device::DeviceModel;
pub use file::{file_type_name, ModelFile};
pub use linear::Linear;
pub use load::{load_gguf, load_gguf_on, load_model, LoadedModel, Placement};
use maas_kernels::{team, PackedMatrix};
use ops::{AttentionShape, Rope, RopeAngles};
use projection::Projection;

thread_local! {
    /// Each compute thread's attention-score buffer, reused across layers
    /// and steps (it grows to the longest context seen).
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("model metadata {key}: {problem}")]
    Metadata { key: String, problem: String },
    #[error(
        "unsupported model architecture {0:?} (supported: {supported})",
        supported = config::supported_architectures()
    )]
    UnsupportedArchitecture(String),
    #[error("tensor {name}: {problem}")]
    Tensor { name: String, problem: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("forward pass: {0}")]
    Forward(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub(crate) fn metadata(key: &str, problem: &str) -> Self {
        Self::Metadata {
            key: key.to_string(),
            problem: problem.to_string(),
        }
    }

    pub(crate) fn tensor(name: &str, problem: String) -> Self {
        Self::Tensor {
            name: name.to_string(),
            problem,
        }
    }
}

struct Block {
    attn_norm: Vec<f32>,
    /// Q, K and V side by side: one pass over the normalised activations.
    qkv: Projection,
    /// Per-head RMSNorm weights of queries and keys (Qwen 3, Gemma 3).
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    out: Projection,
    /// Gemma 3 normalises each branch's output again before the residual add.
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    /// Gate and up projections side by side, for the same reason.
    gate_up: Projection,
    down: Projection,
    post_ffn_norm: Option<Vec<f32>>,
    /// Sliding window of this layer (`None`: global attention).
    window: Option<usize>,
    /// Index of this layer's RoPE in [`HostModel::ropes`].
    rope: usize,
}

enum Embedding {
    /// Tied weights: rows of the (packed) output projection.
    Output,
    Packed(PackedMatrix),
    Dense(Vec<f32>),
}

/// The loaded model, on the host or on a device.
// One per process, never moved after load: the variants' size gap costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Model {
    Host(HostModel),
    Device(DeviceModel),
}

impl Model {
    pub fn config(&self) -> &ModelConfig {
        match self {
            Self::Host(m) => &m.config,
            Self::Device(m) => m.config(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Host(m) => m.vocab,
            Self::Device(m) => m.vocab_size(),
        }
    }

    /// The most positions any sequence may reach (those its RoPE covers).
    pub fn max_positions(&self) -> usize {
        match self {
            Self::Host(m) => m.max_positions(),
            Self::Device(m) => m.max_positions(),
        }
    }

    /// Where the forward pass runs, for logs.
    pub fn placement(&self) -> String {
        match self {
            Self::Host(_) => format!("cpu ({} kernels)", maas_kernels::instruction_set()),
            Self::Device(m) => format!("candle {:?}", m.device().location()),
        }
    }

    /// Bytes free where the model's KV memory would live: the GPU's free
    /// memory on a CUDA device, the host's available memory otherwise.
    pub fn free_memory(&self) -> Result<u64, ModelError> {
        match self {
            Self::Device(m) => m.free_memory(),
            Self::Host(_) => host_available_memory(),
        }
    }

    /// The KV memory, where the model runs: `blocks` blocks of
    /// `block_tokens` positions.
    pub fn new_kv(&self, blocks: usize, block_tokens: usize) -> Result<KvMemory, ModelError> {
        Ok(match self {
            Self::Host(_) => KvMemory::Host(HostKv::new(self.config(), blocks, block_tokens)?),
            Self::Device(m) => KvMemory::Device(m.new_kv(blocks, block_tokens)?),
        })
    }

    /// Runs every input's tokens through the model, stores their keys and
    /// values in their blocks of `kv`, and returns the logits (one
    /// `vocab`-wide row per input that asked, in input order). Hand them
    /// back with [`Scratch::recycle`] so the next step reuses their buffer.
    pub fn forward(
        &self,
        batch: &[StepInput<'_>],
        kv: &mut KvMemory,
        s: &mut Scratch,
    ) -> Result<Logits, ModelError> {
        match (self, kv) {
            (Self::Host(m), KvMemory::Host(kv)) => m.forward(batch, kv, s),
            (Self::Device(m), KvMemory::Device(kv)) => m.forward(batch, kv),
            _ => Err(ModelError::Forward(
                "a KV memory from another device".into(),
            )),
        }
    }
}

/// The host's available memory: `MemAvailable` in /proc/meminfo (free
/// memory plus what the kernel can reclaim without swapping), or less if
/// this process's cgroup (a container's limit) leaves it less.
pub(crate) fn host_available_memory() -> Result<u64, ModelError> {
    let unreadable = |why: String| {
        ModelError::Forward(format!(
            "cannot tell the host's available memory ({why}): give --kv-cache-memory as a size"
        ))
    };
    let meminfo =
        std::fs::read_to_string("/proc/meminfo").map_err(|e| unreadable(e.to_string()))?;
    let available = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| unreadable("no MemAvailable in /proc/meminfo".into()))?;
    Ok(cgroup_headroom().map_or(available, |left| left.min(available)))
}

/// What this process's memory cgroup still lets it take, if it has a
/// limit: cgroup v2 (its own group's `memory.max` less `memory.current`),
/// else v1. Host pages of the KV memory are committed only as blocks fill,
/// so a budget above this would be killed long after start.
fn cgroup_headroom() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let number = |text: Option<String>| text?.trim().parse::<u64>().ok();
    let groups = read("/proc/self/cgroup")?;
    // v2: one line `0::/path`. "max" (no limit) does not parse.
    if let Some(path) = groups.lines().find_map(|line| line.strip_prefix("0::")) {
        let dir = format!("/sys/fs/cgroup{}", path.trim_end_matches('/'));
        if let Some(max) = number(read(&format!("{dir}/memory.max"))) {
            let used = number(read(&format!("{dir}/memory.current"))).unwrap_or(0);
            return Some(max.saturating_sub(used));
        }
    }
    // v1: `N:memory:/path` (or with other controllers), mounted under
    // memory/ with the path, or at its root inside a cgroup namespace.
    let path = groups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':').skip(1);
        let controllers = fields.next()?;
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| fields.next())?
    })?;
    let dirs = [
        format!("/sys/fs/cgroup/memory{}", path.trim_end_matches('/')),
        "/sys/fs/cgroup/memory".to_string(),
    ];
    let dir = dirs
        .iter()
        .find(|dir| std::path::Path::new(&format!("{dir}/memory.limit_in_bytes")).exists())?;
    let limit = number(read(&format!("{dir}/memory.limit_in_bytes")))?;
    let used = number(read(&format!("{dir}/memory.usage_in_bytes"))).unwrap_or(0);
    // v1 writes "no limit" as a number near 2^63.
    (limit < 1 << 60).then(|| limit.saturating_sub(used))
}

/// `x += branch`, or `x += rms_norm(branch)` when the block normalises its
/// branch outputs (Gemma 3); `normed` is scratch.
fn residual_add(
    x: &mut [f32],
    branch: &[f32],
    post_norm: &Option<Vec<f32>>,
    eps: f32,
    normed: &mut Vec<f32>,
) {
    match post_norm {
        Some(weight) => {
            ops::rms_norm(branch, weight, eps, normed);
            ops::add_assign(x, normed);
        }
        None => ops::add_assign(x, branch),
    }
}

/// Query rows of a prompt chunk per attention job: small enough that a
/// 256-row chunk spreads over the threads (later rows, which see more
/// positions, take longer, so more pieces than threads balance them).
const ATTENTION_ROWS: usize = 32;

/// The default model: our packed kernels over row-major `f32` buffers.
pub struct HostModel {
    config: ModelConfig,
    vocab: usize,
    embedding: Embedding,
    blocks: Vec<Block>,
    norm: Vec<f32>,
    lm_head: Linear,
    /// The global layers' table first, then the local layers' (Gemma 3).
    ropes: Vec<Rope>,
}

/// One sequence's share of a step: the tokens to feed (a prefill chunk or the
/// last sampled token), its blocks in the KV memory (in position order), the
/// position of its first token (what the blocks hold before it), and whether
/// to return logits for its last token.
pub struct StepInput<'a> {
    pub tokens: &'a [u32],
    pub blocks: &'a [BlockId],
    pub start: usize,
    pub logits: bool,
}

/// One step's logits: a `vocab`-wide row per input that asked for them, in
/// input order, in one buffer. The host model writes its head's output
/// straight into it and gets it back through [`Scratch::recycle`]: copying
/// rows out was 8 MB per step for eight streams of Gemma 3's vocabulary.
#[derive(Debug, Default)]
pub struct Logits {
    data: Vec<f32>,
    vocab: usize,
}

impl Logits {
    /// `data` holds whole rows of `vocab` logits.
    pub fn new(data: Vec<f32>, vocab: usize) -> Self {
        debug_assert!(vocab > 0 && data.len().is_multiple_of(vocab));
        Self { data, vocab }
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.vocab).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    pub fn iter(&self) -> impl Iterator<Item = &[f32]> {
        (0..self.len()).map(|i| self.row(i))
    }

    /// The rows as vectors of their own.
    pub fn into_rows(self) -> Vec<Vec<f32>> {
        self.iter().map(<[f32]>::to_vec).collect()
    }
}

/// Buffers reused across steps so a step allocates nothing in steady state.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    q: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    part: Vec<f32>,
    last: Vec<f32>,
    logits: Vec<f32>,
    /// The step's rotation angles, one per entry of [`HostModel::ropes`].
    angles: Vec<RopeAngles>,
}

impl Scratch {
    /// Gives a step's logits buffer back for the next step.
    pub fn recycle(&mut self, logits: Logits) {
        if logits.data.capacity() > self.logits.capacity() {
            self.logits = logits.data;
        }
    }

    /// The logits buffer, as the head filled it, as this step's result.
    fn take_logits(&mut self, vocab: usize) -> Logits {
        Logits::new(std::mem::take(&mut self.logits), vocab)
    }

    /// No rows, for a step where no input asked for logits.
    fn no_logits(&mut self, vocab: usize) -> Logits {
        self.logits.clear();
        self.take_logits(vocab)
    }
}

impl HostModel {
    fn max_positions(&self) -> usize {
        self.ropes.first().map_or(0, Rope::positions)
    }

    fn forward(
        &self,
        batch: &[StepInput<'_>],
        kv: &mut HostKv,
        s: &mut Scratch,
    ) -> Result<Logits, ModelError> {
        let cfg = &self.config;
        let hidden = cfg.hidden;
        let q_width = cfg.q_width();
        let kv_width = cfg.kv_width();
        let qkv_width = q_width + 2 * kv_width;

        let mut positions = Vec::new();
        for input in batch {
            let start = input.start;
            let end = start + input.tokens.len();
            if end > self.max_positions() {
                return Err(ModelError::Forward(format!(
                    "position {end} beyond the model's {} positions",
                    self.max_positions()
                )));
            }
            // Checked before anything is written, so a bad block table
            // fails the step before it touches any cache. (A later error
            // may leave blocks half written: the engine then retires the
            // step's sequences without naming their blocks.)
            kv.check(input.blocks, end)?;
            positions.extend(start..end);
        }
        let n = positions.len();
        if n == 0 {
            return Ok(s.no_logits(self.vocab));
        }

        s.x.clear();
        s.x.resize(n * hidden, 0.0);
        let tokens = batch.iter().flat_map(|i| i.tokens.iter().copied());
        for (row, token) in s.x.chunks_exact_mut(hidden).zip(tokens) {
            self.embed(token, row)?;
        }
        if cfg.family == Family::Gemma3 {
            // Gemma scales its embeddings by sqrt(hidden) (in f32, as
            // llama.cpp does).
            ops::scale(&mut s.x, (hidden as f32).sqrt());
        }

        s.angles.resize_with(self.ropes.len(), RopeAngles::default);
        for (angles, rope) in s.angles.iter_mut().zip(&self.ropes) {
            angles.fill(rope, &positions);
        }

        for (layer, block) in self.blocks.iter().enumerate() {
            let shape = AttentionShape {
                heads: cfg.heads,
                kv_heads: cfg.kv_heads,
                head_dim: cfg.head_dim,
                scale: cfg.attention_scale,
                window: block.window,
            };
            let (rope, angles) = (&self.ropes[block.rope], &s.angles[block.rope]);
            ops::rms_norm(&s.x, &block.attn_norm, cfg.rms_eps, &mut s.normed);
            block.qkv.forward(&s.normed, n, &mut s.qkv, &mut s.part)?;

            s.q.clear();
            for (i, row) in s.qkv.chunks_exact_mut(qkv_width).enumerate() {
                let (q, kv) = row.split_at_mut(q_width);
                let k = &mut kv[..kv_width];
                if let Some((q_norm, k_norm)) = &block.qk_norm {
                    ops::rms_norm_in_place(q, q_norm, cfg.rms_eps);
                    ops::rms_norm_in_place(k, k_norm, cfg.rms_eps);
                }
                rope.apply(q, angles.row(i));
                rope.apply(k, angles.row(i));
                s.q.extend_from_slice(q);
            }
            let mut rows = s.qkv.chunks_exact(qkv_width);
            for input in batch {
                for (position, row) in (input.start..).zip(rows.by_ref().take(input.tokens.len())) {
                    kv.write(
                        layer,
                        input.blocks,
                        position,
                        &row[q_width..q_width + kv_width],
                        &row[q_width + kv_width..],
                    )?;
                }
            }

            s.attn.clear();
            s.attn.resize(n * q_width, 0.0);
            // A decoding sequence (one query row) is one job, split further
            // by KV head when there are fewer sequences than threads, so a
            // lone stream's attention is not one core's work. A prompt
            // chunk is split by query rows (each row attends over its own
            // prefix, already in the cache, so the pieces are independent
            // and the bits the same): a long prompt's attention, quadratic
            // in its length, was one core's work while the others waited.
            let split = batch.len() < team::threads();
            let head_width = q_width / cfg.kv_heads;
            let mut jobs = Vec::with_capacity(batch.len() * cfg.kv_heads);
            let (mut q_rest, mut out_rest) = (&s.q[..], &mut s.attn[..]);
            for input in batch {
                let t = input.tokens.len();
                let (q, q_tail) = q_rest.split_at(t * q_width);
                let (out, out_tail) = out_rest.split_at_mut(t * q_width);
                q_rest = q_tail;
                out_rest = out_tail;
                let cache = kv.layer(layer, input.blocks);
                if split && t == 1 {
                    for (head, out) in out.chunks_exact_mut(head_width).enumerate() {
                        jobs.push((head..head + 1, q, out, cache, input.start));
                    }
                } else {
                    let rows = ATTENTION_ROWS * q_width;
                    for (i, (q, out)) in q.chunks(rows).zip(out.chunks_mut(rows)).enumerate() {
                        let start = input.start + i * ATTENTION_ROWS;
                        jobs.push((0..cfg.kv_heads, q, out, cache, start));
                    }
                }
            }
            team::for_each_mut(&mut jobs, |(heads, q, out, cache, start)| {
                SCORES.with_borrow_mut(|scores| {
                    ops::attention_heads(&shape, heads.clone(), q, *cache, *start, out, scores)
                })
            });

            block.out.forward(&s.attn, n, &mut s.proj, &mut s.part)?;
            residual_add(
                &mut s.x,
                &s.proj,
                &block.post_attn_norm,
                cfg.rms_eps,
                &mut s.normed,
            );

            ops::rms_norm(&s.x, &block.ffn_norm, cfg.rms_eps, &mut s.normed);
            block
                .gate_up
                .forward(&s.normed, n, &mut s.gate_up, &mut s.part)?;
            match cfg.family {
                Family::Llama => ops::swiglu(&s.gate_up, cfg.ffn, &mut s.act),
                Family::Gemma3 => ops::geglu(&s.gate_up, cfg.ffn, &mut s.act),
            }
            block.down.forward(&s.act, n, &mut s.proj, &mut s.part)?;
            residual_add(
                &mut s.x,
                &s.proj,
                &block.post_ffn_norm,
                cfg.rms_eps,
                &mut s.normed,
            );
        }

        s.last.clear();
        let mut offset = 0;
        for input in batch {
            let t = input.tokens.len();
            if input.logits {
                let row = offset + t - 1;
                s.last
                    .extend_from_slice(&s.x[row * hidden..(row + 1) * hidden]);
            }
            offset += t;
        }
        let m = s.last.len() / hidden;
        if m == 0 {
            return Ok(s.no_logits(self.vocab));
        }
        ops::rms_norm(&s.last, &self.norm, cfg.rms_eps, &mut s.normed);
        self.lm_head.forward(&s.normed, m, &mut s.logits)?;
        if let Some(cap) = cfg.final_logit_softcap {
            ops::softcap(&mut s.logits, cap);
        }
        Ok(s.take_logits(self.vocab))
    }

    fn embed(&self, token: u32, row: &mut [f32]) -> Result<(), ModelError> {
        let id = token as usize;
        if id >= self.vocab {
            return Err(ModelError::Forward(format!(
                "token id {id} outside the vocabulary of {}",
                self.vocab
            )));
        }
        let packed = match &self.embedding {
            Embedding::Output => match &self.lm_head {
                Linear::Packed { matrix, .. } => matrix,
                Linear::Candle { .. } => {
                    return Err(ModelError::Forward("tied embedding is not packed".into()))
                }
            },
            Embedding::Packed(matrix) => matrix,
            Embedding::Dense(data) => {
                row.copy_from_slice(&data[id * row.len()..(id + 1) * row.len()]);
                return Ok(());
            }
        };
        packed
            .dequantize_row(id, row)
            .map_err(|e| ModelError::Forward(e.to_string()))
    }
}

mod tensor_types;
#[cfg(test)]
mod tests;
#[cfg(any(test, feature = "test-models"))]
pub mod tiny;
