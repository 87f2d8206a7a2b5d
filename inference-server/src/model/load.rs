//! Reads a GGUF file into a [`Model`] plus the tokenizer and chat template its
//! metadata carries.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;

use super::config::{Family, ModelConfig};
use super::device::{
    self, DeviceBlock, DeviceLinear, DeviceModel, DeviceProjections, DeviceWeights,
};
use super::file::ModelFile;
use super::linear::{dims, Linear, WeightPart};
use super::ops::{self, Rope};
use super::projection::Projection;
use super::tensor_types;
use super::{Block, Embedding, HostModel, Model, ModelError};
use crate::text::{ChatTemplate, MetadataSource, MetadataValue, TextTokenizer, TokenizerSpec};

pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Arc<TextTokenizer>,
    /// `None` when the file has no `tokenizer.chat_template`: chat requests
    /// are then refused rather than formatted with a guessed template.
    pub chat_template: Option<ChatTemplate>,
    /// What the file is (format, tensor types, size), for `/health`.
    pub file: ModelFile,
}

/// Where the forward pass runs.
#[derive(Debug, Clone)]
pub enum Placement {
    /// Our packed kernels on the CPU (the default).
    Host,
    /// candle tensors on this device (a GPU under `--features cuda`; tests
    /// use candle's CPU device).
    Device(Device),
}

struct Reader {
    content: Content,
    file: BufReader<File>,
    path: String,
    file_bytes: u64,
}

impl Reader {
    fn open(path: &Path) -> Result<Self, ModelError> {
        let display = path.display().to_string();
        let io = |source| ModelError::Io {
            path: display.clone(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let file_bytes = file.metadata().map_err(io)?.len();
        let mut file = BufReader::new(file);
        if let Some((key, problem)) = tensor_types::metadata_problem(&mut file) {
            return Err(ModelError::Metadata { key, problem });
        }
        let content = match Content::read(&mut file) {
            Ok(content) => content,
            Err(e) => {
                return Err(match tensor_types::first_unsupported(&mut file) {
                    Some((name, id)) => ModelError::Tensor {
                        name,
                        problem: format!(
                            "its type {} is not one this server runs (supported: {})",
                            tensor_types::name(id),
                            tensor_types::supported_names()
                        ),
                    },
                    None => ModelError::Metadata {
                        key: display.clone(),
                        problem: format!("not a readable GGUF file: {e}"),
                    },
                })
            }
        };
        Ok(Self {
            content,
            file,
            path: display,
            file_bytes,
        })
    }

    /// The forward pass, checked against the metadata.
    fn model(
        &mut self,
        max_positions: Option<usize>,
        placement: &Placement,
    ) -> Result<Model, ModelError> {
        let config = ModelConfig::from_metadata(&self.content.metadata)?;
        if let Some((name, what)) = UNAPPLIED.iter().find(|(name, _)| self.has(name)) {
            return Err(ModelError::tensor(name, format!("{what} is not supported")));
        }
        let positions = max_positions
            .unwrap_or(config.context_length)
            .min(config.context_length);
        let ropes = ropes(self, &config, positions)?;
        Ok(match placement {
            Placement::Host => Model::Host(host_model(self, config, ropes)?),
            Placement::Device(d) => Model::Device(device_model(self, config, &ropes, d)?),
        })
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn tensor(&mut self, name: &str) -> Result<QTensor, ModelError> {
        self.tensor_on(name, &Device::Cpu)
    }

    fn tensor_on(&mut self, name: &str, device: &Device) -> Result<QTensor, ModelError> {
        self.content
            .tensor(&mut self.file, name, device)
            .map_err(|e| ModelError::tensor(name, format!("cannot read from {}: {e}", self.path)))
    }

    fn optional(&mut self, name: &str) -> Result<Option<QTensor>, ModelError> {
        if self.has(name) {
            self.tensor(name).map(Some)
        } else {
            Ok(None)
        }
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.tensor(name)?;
        to_vector(name, &t, len)
    }

    fn optional_vector(&mut self, name: &str, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
        match self.optional(name)? {
            Some(t) => to_vector(name, &t, len).map(Some),
            None => Ok(None),
        }
    }

    /// A part of a stacked projection, with `rows` outputs: checked alone,
    /// as the parts are sliced by the configured widths (a Q with K's rows
    /// and a K with none would add up, and mix Q into K).
    fn part(&mut self, name: &str, rows: usize) -> Result<WeightPart, ModelError> {
        let weight_name = format!("{name}.weight");
        let weight = self.tensor(&weight_name)?;
        let (found, _) = super::linear::dims(&weight_name, &weight)?;
        if found != rows {
            return Err(ModelError::tensor(
                &weight_name,
                format!("{found} rows, expected {rows}"),
            ));
        }
        let bias = self.optional_vector(&format!("{name}.bias"), rows)?;
        Ok((weight_name, weight, bias))
    }
}

fn to_vector(name: &str, t: &QTensor, len: usize) -> Result<Vec<f32>, ModelError> {
    let v = t
        .dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    if v.len() != len {
        return Err(ModelError::tensor(
            name,
            format!("expected {len} values, found {}", v.len()),
        ));
    }
    Ok(v)
}

/// Loads a GGUF model for the host kernels. `max_positions` caps the
/// positions the RoPE covers (and so every sequence's length) below the
/// model's trained context when the operator asks for less.
pub fn load_gguf(path: &Path, max_positions: Option<usize>) -> Result<LoadedModel, ModelError> {
    load_gguf_on(path, max_positions, &Placement::Host)
}

/// Loads only the forward pass of a GGUF model (no tokenizer): for tools
/// and tests that feed token ids, e.g. to compare with another runtime.
pub fn load_model(
    path: &Path,
    max_positions: Option<usize>,
    placement: &Placement,
) -> Result<Model, ModelError> {
    Reader::open(path)?.model(max_positions, placement)
}

/// Loads a GGUF model for `placement`.
pub fn load_gguf_on(
    path: &Path,
    max_positions: Option<usize>,
    placement: &Placement,
) -> Result<LoadedModel, ModelError> {
    let loaded = read_gguf(path, max_positions, placement);
    // Everything loading allocated only for itself (tensor buffers, the
    // metadata, the tokenizer spec) is freed by now.
    release_freed_memory();
    loaded
}

fn read_gguf(
    path: &Path,
    max_positions: Option<usize>,
    placement: &Placement,
) -> Result<LoadedModel, ModelError> {
    let mut r = Reader::open(path)?;
    let spec = TokenizerSpec::from_metadata(&r.content)
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let tokenizer =
        TextTokenizer::from_spec(&spec).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let chat_template = match &spec.chat_template {
        Some(source) => {
            let token = |id: Option<u32>| id.and_then(|id| spec.tokens.get(id as usize).cloned());
            Some(
                ChatTemplate::new(source, token(spec.bos_token_id), token(spec.eos_token_id))
                    .map_err(|e| ModelError::Tokenizer(format!("tokenizer.chat_template: {e}")))?,
            )
        }
        None => None,
    };
    let model = r.model(max_positions, placement)?;
    if spec.tokens.len() > model.vocab_size() {
        return Err(ModelError::metadata(
            "tokenizer.ggml.tokens",
            &format!(
                "{} tokens but the output layer has {} rows",
                spec.tokens.len(),
                model.vocab_size()
            ),
        ));
    }
    Ok(LoadedModel {
        model,
        tokenizer: Arc::new(tokenizer),
        chat_template,
        file: ModelFile::from_header(&r.content, r.file_bytes),
    })
}

/// Hands the heap pages loading freed back to the OS. Reading a GGUF file
/// allocates each tensor's bytes (candle's read buffer and its block copy)
/// before packing them; glibc serves most of those from its heap rather
/// than from fresh mappings (its mmap threshold rises with every large
/// free), and keeps the freed pages resident: 35 MB of SmolLM2-135M's 170 MB
/// RSS after load. `malloc_trim` returns every whole free page.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's `malloc_trim` only releases free heap memory; it
        // takes the allocator's locks and is safe to call at any time.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// The RoPE the layers use: the global one first, then the local layers'
/// one when the model has sliding-window layers. Llama 3.x files
/// carry per-pair frequency factors as `rope_freqs.weight`.
fn ropes(r: &mut Reader, cfg: &ModelConfig, positions: usize) -> Result<Vec<Rope>, ModelError> {
    const FACTORS: &str = "rope_freqs.weight";
    let factors = match cfg.family {
        Family::Llama => r.optional_vector(FACTORS, cfg.head_dim / 2)?,
        Family::Gemma3 if r.has(FACTORS) => {
            return Err(ModelError::tensor(
                FACTORS,
                format!("not supported for {}", cfg.architecture),
            ))
        }
        Family::Gemma3 => None,
    };
    let rope = |params| {
        let freqs = ops::rope_frequencies(cfg.head_dim, params, factors.as_deref());
        Rope::new(&freqs, positions, cfg.rope_style)
    };
    let mut ropes = vec![rope(cfg.rope)];
    if let Some(sw) = &cfg.sliding_window {
        ropes.push(rope(sw.local_rope));
    }
    Ok(ropes)
}

/// Tensors that change what a model computes and that neither path
/// applies: a file carrying one is refused by that name rather than run
/// wrongly.
const UNAPPLIED: &[(&str, &str)] = &[
    (
        "rope_factors_long.weight",
        "LongRoPE scaling (Phi-3's 128k-context files)",
    ),
    ("output.bias", "a bias on the output projection"),
];

/// How a block's projections are written: one matrix each (most files), or
/// Phi-3's two stacks, `attn_qkv` (`[q | k | v]` rows) and `ffn_up` holding
/// `[gate | up]` (no `ffn_gate`), which both paths use as stacked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stacking {
    Separate,
    Stacked,
}

impl Stacking {
    fn qkv(r: &Reader, block: &str) -> Self {
        if r.has(&format!("{block}.attn_qkv.weight")) {
            Self::Stacked
        } else {
            Self::Separate
        }
    }

    fn gate_up(r: &Reader, block: &str) -> Self {
        if r.has(&format!("{block}.ffn_gate.weight")) {
            Self::Separate
        } else {
            Self::Stacked
        }
    }
}

/// A block's norm weights and attention kind, read the same for both paths.
struct BlockNorms {
    attn: Vec<f32>,
    ffn: Vec<f32>,
    /// Per-head Q/K norms (Qwen 3, Gemma 3).
    qk: Option<(Vec<f32>, Vec<f32>)>,
    /// Gemma's sandwich norms, on the attention and MLP outputs.
    post_attn: Option<Vec<f32>>,
    post_ffn: Option<Vec<f32>>,
    window: Option<usize>,
    /// Which RoPE the layer uses: local layers the second (see `ropes`).
    rope: usize,
}

impl BlockNorms {
    fn read(r: &mut Reader, cfg: &ModelConfig, layer: usize) -> Result<Self, ModelError> {
        let mut norm =
            |name: &str, len: usize| r.vector(&format!("blk.{layer}.{name}.weight"), len);
        let qk = if cfg.qk_norm {
            Some((
                norm("attn_q_norm", cfg.head_dim)?,
                norm("attn_k_norm", cfg.head_dim)?,
            ))
        } else {
            None
        };
        let (post_attn, post_ffn) = if cfg.family == Family::Gemma3 {
            (
                Some(norm("post_attention_norm", cfg.hidden)?),
                Some(norm("post_ffw_norm", cfg.hidden)?),
            )
        } else {
            (None, None)
        };
        let (window, _) = cfg.layer_attention(layer);
        Ok(Self {
            attn: norm("attn_norm", cfg.hidden)?,
            ffn: norm("ffn_norm", cfg.hidden)?,
            qk,
            post_attn,
            post_ffn,
            window,
            rope: usize::from(window.is_some()),
        })
    }
}

/// Weights for [`HostModel`]: projections packed for our kernels where their
/// format allows (see [`Projection`]).
fn host_model(
    r: &mut Reader,
    config: ModelConfig,
    ropes: Vec<Rope>,
) -> Result<HostModel, ModelError> {
    let cfg = &config;
    let q_width = cfg.q_width();
    let mut blocks = Vec::with_capacity(cfg.layers);
    for i in 0..cfg.layers {
        let p = format!("blk.{i}");
        let qkv = Projection::new(match Stacking::qkv(r, &p) {
            Stacking::Separate => vec![
                r.part(&format!("{p}.attn_q"), q_width)?,
                r.part(&format!("{p}.attn_k"), cfg.kv_width())?,
                r.part(&format!("{p}.attn_v"), cfg.kv_width())?,
            ],
            Stacking::Stacked => {
                vec![r.part(&format!("{p}.attn_qkv"), q_width + 2 * cfg.kv_width())?]
            }
        })?;
        let out = Projection::new(vec![r.part(&format!("{p}.attn_output"), cfg.hidden)?])?;
        let gate_up = Projection::new(match Stacking::gate_up(r, &p) {
            Stacking::Separate => vec![
                r.part(&format!("{p}.ffn_gate"), cfg.ffn)?,
                r.part(&format!("{p}.ffn_up"), cfg.ffn)?,
            ],
            Stacking::Stacked => vec![r.part(&format!("{p}.ffn_up"), 2 * cfg.ffn)?],
        })?;
        let down = Projection::new(vec![r.part(&format!("{p}.ffn_down"), cfg.hidden)?])?;
        check_shape(
            &format!("{p}.attn_qkv"),
            &qkv,
            q_width + 2 * cfg.kv_width(),
            cfg.hidden,
        )?;
        check_shape(&format!("{p}.attn_output"), &out, cfg.hidden, q_width)?;
        check_shape(
            &format!("{p}.ffn_gate_up"),
            &gate_up,
            2 * cfg.ffn,
            cfg.hidden,
        )?;
        check_shape(&format!("{p}.ffn_down"), &down, cfg.hidden, cfg.ffn)?;
        let n = BlockNorms::read(r, cfg, i)?;
        blocks.push(Block {
            attn_norm: n.attn,
            qkv,
            qk_norm: n.qk,
            out,
            post_attn_norm: n.post_attn,
            ffn_norm: n.ffn,
            gate_up,
            down,
            post_ffn_norm: n.post_ffn,
            window: n.window,
            rope: n.rope,
        });
    }
    let norm = r.vector("output_norm.weight", cfg.hidden)?;

    // Tied models reuse the embedding as the output projection.
    let (output, tied) = match r.optional("output.weight")? {
        Some(t) => (t, false),
        None => (r.tensor("token_embd.weight")?, true),
    };
    let lm_head = Linear::stacked(vec![("output.weight".to_string(), output, None)])?;
    let vocab = lm_head.rows();
    if lm_head.cols() != cfg.hidden {
        return Err(ModelError::tensor(
            "output.weight",
            format!("{} columns, expected {}", lm_head.cols(), cfg.hidden),
        ));
    }
    let embedding = match (&lm_head, tied) {
        (Linear::Packed { .. }, true) => Embedding::Output,
        _ => match Linear::stacked(vec![(
            "token_embd.weight".to_string(),
            r.tensor("token_embd.weight")?,
            None,
        )])? {
            // Untied (an output projection of its own): the embedding is
            // checked as the tied and device paths check it, or a token
            // past its rows fails every sequence of its step.
            Linear::Packed { matrix, .. } => {
                expect_shape(
                    "token_embd.weight",
                    (matrix.rows(), matrix.cols()),
                    (vocab, cfg.hidden),
                )?;
                Embedding::Packed(matrix)
            }
            Linear::Candle { matmul, .. } => {
                let dense = matmul_weights(matmul)?;
                if dense.len() != vocab * cfg.hidden {
                    return Err(ModelError::tensor(
                        "token_embd.weight",
                        "shape differs from the output projection".into(),
                    ));
                }
                Embedding::Dense(dense)
            }
        },
    };
    Ok(HostModel {
        config,
        vocab,
        embedding,
        blocks,
        norm,
        lm_head,
        ropes,
    })
}

/// The same weights for [`DeviceModel`]: each linear keeps its GGUF block
/// format on the device (Q, K and V stay separate: the device has no packed
/// layout to share), norms and the embedding table are dequantized.
fn device_model(
    r: &mut Reader,
    config: ModelConfig,
    ropes: &[Rope],
    device: &Device,
) -> Result<DeviceModel, ModelError> {
    let cfg = &config;
    let q_width = cfg.q_width();
    let kv = cfg.kv_width();
    let mut blocks = Vec::with_capacity(cfg.layers);
    for i in 0..cfg.layers {
        let p = format!("blk.{i}");
        let (qkv_stacking, gate_up_stacking) = (Stacking::qkv(r, &p), Stacking::gate_up(r, &p));
        let mut linear = |name: &str, rows: usize, cols: usize| {
            device_linear(r, &format!("{p}.{name}"), rows, cols, device)
        };
        let qkv = match qkv_stacking {
            Stacking::Separate => DeviceProjections::Separate(vec![
                linear("attn_q", q_width, cfg.hidden)?,
                linear("attn_k", kv, cfg.hidden)?,
                linear("attn_v", kv, cfg.hidden)?,
            ]),
            Stacking::Stacked => DeviceProjections::Stacked(
                linear("attn_qkv", q_width + 2 * kv, cfg.hidden)?,
                vec![q_width, kv, kv],
            ),
        };
        let out = linear("attn_output", cfg.hidden, q_width)?;
        let gate_up = match gate_up_stacking {
            Stacking::Separate => DeviceProjections::Separate(vec![
                linear("ffn_gate", cfg.ffn, cfg.hidden)?,
                linear("ffn_up", cfg.ffn, cfg.hidden)?,
            ]),
            Stacking::Stacked => DeviceProjections::Stacked(
                linear("ffn_up", 2 * cfg.ffn, cfg.hidden)?,
                vec![cfg.ffn, cfg.ffn],
            ),
        };
        let down = linear("ffn_down", cfg.hidden, cfg.ffn)?;
        let n = BlockNorms::read(r, cfg, i)?;
        let on_device = |v: &[f32]| device::vector(v, device);
        let pair =
            |(q, k): &(Vec<f32>, Vec<f32>)| Ok::<_, ModelError>((on_device(q)?, on_device(k)?));
        blocks.push(DeviceBlock {
            attn_norm: on_device(&n.attn)?,
            ffn_norm: on_device(&n.ffn)?,
            qkv,
            qk_norm: n.qk.as_ref().map(pair).transpose()?,
            out,
            post_attn_norm: n.post_attn.as_deref().map(on_device).transpose()?,
            gate_up,
            down,
            post_ffn_norm: n.post_ffn.as_deref().map(on_device).transpose()?,
            window: n.window,
            rope: n.rope,
        });
    }
    let norm = device::vector(&r.vector("output_norm.weight", cfg.hidden)?, device)?;
    let embedding_weight = r.tensor_on("token_embd.weight", device)?;
    let (vocab, _) = dims("token_embd.weight", &embedding_weight)?;
    let embedding = device::dense(&embedding_weight, device)?;
    if embedding.dims() != [vocab, cfg.hidden] {
        return Err(ModelError::tensor(
            "token_embd.weight",
            format!(
                "shape {:?}, expected [{vocab}, {}]",
                embedding.dims(),
                cfg.hidden
            ),
        ));
    }
    // Tied models reuse the embedding as the output projection.
    let output = if r.content.tensor_infos.contains_key("output.weight") {
        "output"
    } else {
        "token_embd"
    };
    let lm_head = device_linear(r, output, vocab, cfg.hidden, device)?;
    DeviceModel::new(
        device.clone(),
        config,
        DeviceWeights {
            vocab,
            embedding,
            blocks,
            norm,
            lm_head,
        },
        ropes,
    )
}

fn device_linear(
    r: &mut Reader,
    name: &str,
    rows: usize,
    cols: usize,
    device: &Device,
) -> Result<DeviceLinear, ModelError> {
    let weight_name = format!("{name}.weight");
    let weight = r.tensor_on(&weight_name, device)?;
    expect_shape(&weight_name, dims(&weight_name, &weight)?, (rows, cols))?;
    let bias = r
        .optional_vector(&format!("{name}.bias"), rows)?
        .map(|b| device::vector(&b, device))
        .transpose()?;
    DeviceLinear::new(weight, bias)
}

fn matmul_weights(matmul: candle_core::quantized::QMatMul) -> Result<Vec<f32>, ModelError> {
    use candle_core::quantized::QMatMul;
    let dense = match matmul {
        QMatMul::QTensor(q) => q.dequantize(&Device::Cpu)?,
        QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t,
    };
    Ok(dense
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

fn check_shape(name: &str, l: &Projection, rows: usize, cols: usize) -> Result<(), ModelError> {
    expect_shape(name, (l.rows(), l.cols()), (rows, cols))
}

/// A matrix `name` of shape `found` where `expected` is needed.
fn expect_shape(
    name: &str,
    found: (usize, usize),
    expected: (usize, usize),
) -> Result<(), ModelError> {
    if found != expected {
        return Err(ModelError::tensor(
            name,
            format!(
                "shape [{}, {}], expected [{}, {}]",
                found.0, found.1, expected.0, expected.1
            ),
        ));
    }
    Ok(())
}

/// candle's GGUF metadata, seen through the text module's lookup trait so
/// the tokenizer spec is type-checked in one place.
impl MetadataSource for Content {
    fn metadata(&self, key: &str) -> Option<MetadataValue<'_>> {
        self.metadata.get(key).map(view)
    }
}

fn view(v: &Value) -> MetadataValue<'_> {
    match v {
        Value::U8(x) => MetadataValue::Int((*x).into()),
        Value::I8(x) => MetadataValue::Int((*x).into()),
        Value::U16(x) => MetadataValue::Int((*x).into()),
        Value::I16(x) => MetadataValue::Int((*x).into()),
        Value::U32(x) => MetadataValue::Int((*x).into()),
        Value::I32(x) => MetadataValue::Int((*x).into()),
        Value::U64(x) => MetadataValue::Int((*x).into()),
        Value::I64(x) => MetadataValue::Int((*x).into()),
        Value::F32(x) => MetadataValue::Float((*x).into()),
        Value::F64(x) => MetadataValue::Float(*x),
        Value::Bool(b) => MetadataValue::Bool(*b),
        Value::String(s) => MetadataValue::Str(s),
        Value::Array(items) => MetadataValue::Array(items.iter().map(view).collect()),
    }
}
