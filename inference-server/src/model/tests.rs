//! The real loader and forward pass on a tiny random-weight GGUF written by
//! candle in the test: numerics against candle's own llama implementation,
//! and the batching invariants the engine relies on.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{Device, Tensor};

use super::tiny::*;
use super::*;
use crate::text::fixtures::tiny_spec;

fn load() -> LoadedModel {
    let path = tiny_gguf();
    let loaded = load_gguf(&path, None).unwrap();
    std::fs::remove_file(path).unwrap();
    loaded
}

/// Positions per KV block in these tests: small, so that every sequence
/// spans several.
const BLOCK: usize = 4;

/// Sequences' caches as the engine keeps them: blocks of one shared KV
/// memory (the host's or the device's), handed out round-robin so that
/// every sequence's blocks are scattered between the others'.
struct Caches {
    kv: KvMemory,
    seqs: Vec<SeqCache>,
}

struct SeqCache {
    blocks: Vec<BlockId>,
    len: usize,
}

impl Caches {
    fn new(model: &Model, capacities: &[usize]) -> Caches {
        let per: Vec<usize> = capacities.iter().map(|c| c.div_ceil(BLOCK)).collect();
        let rounds = per.iter().copied().max().unwrap_or(0);
        let mut seqs: Vec<SeqCache> = capacities
            .iter()
            .map(|_| SeqCache {
                blocks: Vec::new(),
                len: 0,
            })
            .collect();
        let mut next = 0;
        for round in 0..rounds {
            for (seq, &n) in seqs.iter_mut().zip(&per) {
                if round < n {
                    seq.blocks.push(next);
                    next += 1;
                }
            }
        }
        Caches {
            kv: model.new_kv(next as usize, BLOCK).unwrap(),
            seqs,
        }
    }

    /// One step: `(sequence, tokens, logits wanted)` in batch order, each
    /// sequence at most once.
    fn forward(
        &mut self,
        model: &Model,
        batch: &[(usize, &[u32], bool)],
        s: &mut Scratch,
    ) -> Result<Logits, ModelError> {
        let inputs: Vec<StepInput<'_>> = batch
            .iter()
            .map(|&(i, tokens, logits)| StepInput {
                tokens,
                blocks: &self.seqs[i].blocks,
                start: self.seqs[i].len,
                logits,
            })
            .collect();
        let out = model.forward(&inputs, &mut self.kv, s)?;
        drop(inputs);
        for &(i, tokens, _) in batch {
            self.seqs[i].len += tokens.len();
        }
        Ok(out)
    }
}

/// Feeds `prompt` (in chunks of `chunk`), then `decode` more tokens (the
/// argmax each time); returns every step's logits.
fn run_alone(model: &Model, prompt: &[u32], chunk: usize, decode: usize) -> Vec<Vec<f32>> {
    let mut caches = Caches::new(model, &[prompt.len() + decode]);
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    for (i, piece) in prompt.chunks(chunk).enumerate() {
        let last = (i + 1) * chunk >= prompt.len();
        let logits = caches.forward(model, &[(0, piece, last)], &mut scratch);
        out.extend(logits.unwrap().into_rows());
    }
    for _ in 0..decode {
        let next = crate::engine::sampling::argmax(out.last().unwrap());
        let logits = caches.forward(model, &[(0, &[next], true)], &mut scratch);
        out.extend(logits.unwrap().into_rows());
    }
    out
}

#[test]
fn logits_agree_with_candles_llama_on_the_same_file() {
    let path = tiny_gguf();
    let ours = load_gguf(&path, None).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut reference = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
        content,
        &mut file,
        &Device::Cpu,
    )
    .unwrap();
    std::fs::remove_file(&path).unwrap();

    let prompt: Vec<u32> = vec![1, 40, 77, 120, 9, 200, 33];
    let input = Tensor::new(prompt.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let expected: Vec<f32> = reference
        .forward(&input, 0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let got = run_alone(&ours.model, &prompt, prompt.len(), 0).remove(0);

    assert_eq!(got.len(), expected.len());
    let diff: f32 = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f32>()
        .sqrt();
    let norm: f32 = expected.iter().map(|b| b * b).sum::<f32>().sqrt();
    // Both quantize activations to 8 bits for the integer dot products, in
    // different blockings; anything structural (RoPE layout, GQA mapping,
    // norms) would be off by far more.
    assert!(diff / norm < 0.02, "relative error {}", diff / norm);
}

fn host_kv(kv: &KvMemory) -> &HostKv {
    match kv {
        KvMemory::Host(kv) => kv,
        KvMemory::Device(_) => panic!("a device's KV memory"),
    }
}

/// The host path caches keys and values in f16 (two bytes an element, half
/// of what an f32 cache holds), and a step writes only its own sequence's
/// blocks: the other sequence's stay as they were.
#[test]
fn a_step_writes_f16_into_its_own_blocks_only() {
    let loaded = load();
    let cfg = loaded.model.config();
    // Keys and values, every layer, every position of a block.
    assert_eq!(
        KvMemory::block_bytes(cfg, BLOCK),
        2 * (2 * cfg.layers * BLOCK * cfg.kv_width())
    );
    let prompt: Vec<u32> = vec![1, 40, 77, 120, 9];
    let mut caches = Caches::new(&loaded.model, &[8, 8]);
    caches
        .forward(
            &loaded.model,
            &[(0, &prompt, true)],
            &mut Scratch::default(),
        )
        .unwrap();
    for (seq, written) in [(0, true), (1, false)] {
        for &b in &caches.seqs[seq].blocks {
            assert_eq!(
                host_kv(&caches.kv).block_is_zero(b),
                !written,
                "sequence {seq} block {b}"
            );
        }
    }
}

#[test]
fn chunked_prefill_gives_bit_identical_logits() {
    let loaded = load();
    // 70 tokens fed whole are attended in pieces of 32 query rows on
    // different threads: the same bits as small chunks, each one piece.
    for len in [23, 70] {
        let prompt: Vec<u32> = (0..len).map(|i| (i * 37 % 260) as u32).collect();
        let whole = run_alone(&loaded.model, &prompt, prompt.len(), 4);
        for chunk in [1, 5, 8] {
            assert!(
                run_alone(&loaded.model, &prompt, chunk, 4) == whole,
                "{len} tokens in chunks of {chunk} differ"
            );
        }
    }
}

/// Logits of two sequences run alone and then together (A prefills with B,
/// then both decode in shared steps while a third sequence prefills in
/// chunks beside them): `[(alone_a, batched_a), (alone_b, batched_b)]`.
type Runs = Vec<(Vec<Vec<f32>>, Vec<Vec<f32>>)>;

fn alone_and_batched(model: &Model) -> Runs {
    let a: Vec<u32> = vec![1, 50, 60, 70, 80];
    let b: Vec<u32> = vec![1, 90, 91];
    let decode = 6;
    let alone_a = run_alone(model, &a, a.len(), decode);
    let alone_b = run_alone(model, &b, b.len(), decode);

    let c: Vec<u32> = (0..30).map(|i| (i * 7 % 250) as u32).collect();
    let mut caches = Caches::new(model, &[20, 20, 40]);
    let mut scratch = Scratch::default();
    let first = caches
        .forward(model, &[(0, &a, true), (1, &b, true)], &mut scratch)
        .unwrap()
        .into_rows();
    let (mut got_a, mut got_b) = (vec![first[0].clone()], vec![first[1].clone()]);
    for step in 0..decode {
        let na = crate::engine::sampling::argmax(got_a.last().unwrap());
        let nb = crate::engine::sampling::argmax(got_b.last().unwrap());
        let piece = &c[step * 5..step * 5 + 5];
        let batch: [(usize, &[u32], bool); 3] =
            [(2, piece, false), (1, &[nb], true), (0, &[na], true)];
        let rows = caches
            .forward(model, &batch, &mut scratch)
            .unwrap()
            .into_rows();
        got_b.push(rows[0].clone());
        got_a.push(rows[1].clone());
    }
    vec![(alone_a, got_a), (alone_b, got_b)]
}

#[test]
fn a_sequence_computes_the_same_alone_and_inside_a_batch() {
    for variant in ARCHITECTURES {
        let path = tiny_gguf_of(variant);
        let loaded = load_gguf(&path, None).unwrap();
        std::fs::remove_file(path).unwrap();
        for (i, (alone, batched)) in alone_and_batched(&loaded.model).iter().enumerate() {
            assert!(
                alone == batched,
                "{variant}: sequence {i} differs in a batch"
            );
        }
        let prompt: Vec<u32> = (0..23).map(|i| (i * 37 % 260) as u32).collect();
        let whole = run_alone(&loaded.model, &prompt, prompt.len(), 4);
        assert!(
            run_alone(&loaded.model, &prompt, 5, 4) == whole,
            "{variant}: chunked prefill differs"
        );
    }
}

/// What each variant's metadata turns into: the block family, head size,
/// per-head norms, windows per layer and RoPE parameters.
#[test]
fn the_new_architectures_read_their_shape_from_the_metadata() {
    let config = |variant: &str| {
        let path = tiny_gguf_of(variant);
        let loaded = load_gguf(&path, None).unwrap();
        std::fs::remove_file(path).unwrap();
        loaded.model.config().clone()
    };
    let qwen3 = config("qwen3");
    assert_eq!((qwen3.head_dim, qwen3.q_width()), (24, 96));
    assert!(qwen3.qk_norm && qwen3.sliding_window.is_none());
    assert_eq!(qwen3.rope_style, RopeStyle::Halves);

    let gemma = config("gemma3");
    assert_eq!(gemma.family, Family::Gemma3);
    assert!((gemma.attention_scale - 1.0 / 24f32.sqrt()).abs() < 1e-7);
    let sw = gemma.sliding_window.clone().unwrap();
    assert_eq!((sw.window, sw.local.clone()), (6, vec![true, false]));
    assert_eq!(gemma.layer_attention(0).0, Some(6));
    assert_eq!(gemma.layer_attention(1).0, None);
    assert_eq!(gemma.layer_attention(0).1.base, 10_000.0);

    let llama3 = config("llama3");
    assert_eq!(llama3.rope.scale, 0.5);
}

/// A file declaring what the forward pass cannot compute is refused at
/// load, naming the key.
#[test]
fn unsupported_rope_scaling_and_architectures_are_refused_by_name() {
    let mut md = std::collections::HashMap::new();
    md.insert(
        "general.architecture".to_string(),
        Value::String("phi2".into()),
    );
    let err = ModelConfig::from_metadata(&md).unwrap_err().to_string();
    assert!(
        err.contains("\"phi2\"") && err.contains("phi3") && err.contains("qwen3"),
        "{err}"
    );

    let path = tiny_gguf_of("llama");
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut md = content.metadata;
    md.insert(
        "llama.rope.scaling.type".into(),
        Value::String("yarn".into()),
    );
    let err = ModelConfig::from_metadata(&md).unwrap_err().to_string();
    assert!(err.contains("llama.rope.scaling.type"), "{err}");
}

/// Tensors that would change the computation and that the forward pass
/// does not apply (Phi-3 128k's LongRoPE factors, an output bias) are
/// refused by name, not ignored.
/// Rewrites the file at `path` with `content`'s metadata and `tensors`,
/// and returns why the loader refuses it (the file is removed).
fn refusal_of_rewritten(
    path: &std::path::Path,
    content: &gguf_file::Content,
    tensors: &[(String, candle_core::quantized::QTensor)],
) -> String {
    let md: Vec<(&str, &Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let ts: Vec<_> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut out, &md, &ts).unwrap();
    drop(out);
    let err = load_gguf(path, None).err().unwrap().to_string();
    std::fs::remove_file(path).unwrap();
    err
}

#[test]
fn tensors_the_forward_pass_does_not_apply_are_refused_by_name() {
    for extra in ["rope_factors_long.weight", "output.bias"] {
        let path = tiny_gguf_of("phi3");
        let mut file = std::fs::File::open(&path).unwrap();
        let content = gguf_file::Content::read(&mut file).unwrap();
        let mut tensors: Vec<(String, candle_core::quantized::QTensor)> = content
            .tensor_infos
            .keys()
            .map(|name| {
                let t = content.tensor(&mut file, name, &Device::Cpu).unwrap();
                (name.clone(), t)
            })
            .collect();
        let values = Tensor::zeros(8, candle_core::DType::F32, &Device::Cpu).unwrap();
        tensors.push((
            extra.into(),
            candle_core::quantized::QTensor::quantize(
                &values,
                candle_core::quantized::GgmlDType::F32,
            )
            .unwrap(),
        ));
        let err = refusal_of_rewritten(&path, &content, &tensors);
        assert!(
            err.contains(extra) && err.contains("not supported"),
            "{err}"
        );
    }
}

/// An untied model (phi3: an output matrix of its own) whose packed
/// embedding has fewer rows than the vocabulary: a token past them failed
/// every sequence of its step.
#[test]
fn an_untied_embedding_short_of_the_vocabulary_is_refused() {
    let path = tiny_gguf_of("phi3");
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let vocab = tiny_spec().tokens.len();
    let tensors: Vec<(String, candle_core::quantized::QTensor)> = content
        .tensor_infos
        .keys()
        .map(|name| {
            let t = if name == "token_embd.weight" {
                let short =
                    Tensor::zeros((vocab - 4, HIDDEN), candle_core::DType::F32, &Device::Cpu)
                        .unwrap();
                candle_core::quantized::QTensor::quantize(
                    &short,
                    candle_core::quantized::GgmlDType::Q8_0,
                )
                .unwrap()
            } else {
                content.tensor(&mut file, name, &Device::Cpu).unwrap()
            };
            (name.clone(), t)
        })
        .collect();
    let err = refusal_of_rewritten(&path, &content, &tensors);
    assert!(
        err.contains("token_embd.weight") && err.contains(&format!("expected [{vocab}, {HIDDEN}]")),
        "{err}"
    );
}

#[test]
fn the_loader_reads_shape_and_tokenizer_from_the_file() {
    let loaded = load();
    let cfg = loaded.model.config();
    assert_eq!(
        (
            cfg.layers,
            cfg.hidden,
            cfg.heads,
            cfg.kv_heads,
            cfg.head_dim
        ),
        (LAYERS, HIDDEN, HEADS, KV_HEADS, 16)
    );
    assert_eq!(cfg.rope_style, RopeStyle::Interleaved);
    assert_eq!(loaded.model.max_positions(), CONTEXT);
    assert_eq!(loaded.model.vocab_size(), tiny_spec().tokens.len());
    assert_eq!(loaded.tokenizer.eos_token_id(), Some(2));
    assert!(loaded.chat_template.is_some());
    let path = tiny_gguf();
    let capped = load_gguf(&path, Some(16)).unwrap();
    std::fs::remove_file(path).unwrap();
    assert_eq!(
        capped.model.max_positions(),
        16,
        "--context caps the positions"
    );
}

#[test]
fn steps_past_the_context_or_the_vocabulary_are_errors_not_panics() {
    let loaded = load();
    let model = &loaded.model;
    let mut scratch = Scratch::default();
    let long: Vec<u32> = vec![5; CONTEXT + 1];
    let mut step = |tokens: &[u32], capacity: usize| {
        Caches::new(model, &[capacity]).forward(model, &[(0, tokens, true)], &mut scratch)
    };
    assert!(matches!(
        step(&long, long.len()),
        Err(ModelError::Forward(_))
    ));
    assert!(matches!(step(&[100_000], 1), Err(ModelError::Forward(_))));
    // Positions beyond the sequence's blocks: an error, nothing written.
    assert!(matches!(step(&[5; 9], 8), Err(ModelError::Forward(_))));
    assert!(step(&[5; 8], 8).is_ok());
}

#[test]
fn unreadable_or_foreign_files_are_refused_with_their_reason() {
    let path = std::env::temp_dir().join(format!("maas-not-gguf-{}", std::process::id()));
    std::fs::write(&path, b"definitely not a gguf file").unwrap();
    let err = load_gguf(&path, None).err().unwrap().to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(err.contains("not a readable GGUF file"), "{err}");
    let err = load_gguf(std::path::Path::new("/nonexistent.gguf"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cannot read model file /nonexistent.gguf"),
        "{err}"
    );
}

/// The device path (candle tensors), on candle's CPU backend: the same
/// model, so the same logits as the host path up to the two paths'
/// different activation quantization, and the same batching contract.
mod device {
    use super::*;

    fn load_on_device() -> LoadedModel {
        load_arch("llama", &Placement::Device(Device::Cpu))
    }

    fn load_arch(arch: &str, placement: &Placement) -> LoadedModel {
        let path = tiny_gguf_of(arch);
        let loaded = load_gguf_on(&path, None, placement).unwrap();
        std::fs::remove_file(path).unwrap();
        loaded
    }

    fn relative_error(got: &[f32], expected: &[f32]) -> f32 {
        assert_eq!(got.len(), expected.len());
        let diff: f32 = got
            .iter()
            .zip(expected)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            .sqrt();
        diff / expected.iter().map(|b| b * b).sum::<f32>().sqrt()
    }

    /// Every architecture, Llama 3's RoPE factors, Qwen 3's Q/K norms and
    /// Gemma 3's blocks and sliding window (6 positions, every other layer,
    /// here shorter than the prompt) included.
    #[test]
    fn logits_agree_with_the_host_path_through_prefill_and_decode() {
        for &arch in crate::model::tiny::ARCHITECTURES {
            let host = load_arch(arch, &Placement::Host);
            let device = load_arch(arch, &Placement::Device(Device::Cpu));
            assert!(matches!(device.model, Model::Device(_)));
            assert_eq!(
                device.model.config().rope_style,
                host.model.config().rope_style
            );
            agree(arch, &host, &device);
        }
    }

    fn agree(arch: &str, host: &LoadedModel, device: &LoadedModel) {
        let prompt: Vec<u32> = (0..23).map(|i| (i * 37 % 260) as u32).collect();
        // The host path's greedy continuation drives both, so every step
        // compares the same positions even if one argmax were a near tie.
        let expected = run_alone(&host.model, &prompt, 8, 6);
        let mut caches = Caches::new(&device.model, &[prompt.len() + 6]);
        let mut scratch = Scratch::default();
        let mut feed = |tokens: &[u32], logits: bool| {
            caches
                .forward(&device.model, &[(0, tokens, logits)], &mut scratch)
                .unwrap()
                .into_rows()
        };
        let mut got = Vec::new();
        for (i, piece) in prompt.chunks(8).enumerate() {
            got.extend(feed(piece, (i + 1) * 8 >= prompt.len()));
        }
        for step in expected.iter().take(6) {
            got.extend(feed(&[crate::engine::sampling::argmax(step)], true));
        }
        assert_eq!(got.len(), expected.len());
        for (step, (g, e)) in got.iter().zip(&expected).enumerate() {
            let err = relative_error(g, e);
            assert!(err < 0.02, "{arch} step {step}: relative error {err}");
        }
    }

    #[test]
    fn a_sequence_decodes_the_same_tokens_alone_and_inside_a_batch() {
        let loaded = load_on_device();
        for (i, (alone, batched)) in alone_and_batched(&loaded.model).iter().enumerate() {
            assert_eq!(alone.len(), batched.len());
            for (step, (a, b)) in alone.iter().zip(batched).enumerate() {
                assert_eq!(
                    crate::engine::sampling::argmax(a),
                    crate::engine::sampling::argmax(b),
                    "sequence {i} step {step}: greedy token differs in a batch"
                );
                let err = relative_error(b, a);
                assert!(err < 1e-4, "sequence {i} step {step}: relative error {err}");
            }
        }
    }

    #[test]
    fn steps_past_the_cache_the_context_or_the_vocabulary_are_errors() {
        let loaded = load_on_device();
        let model = &loaded.model;
        let mut scratch = Scratch::default();
        let mut step = |tokens: &[u32], capacity: usize| {
            Caches::new(model, &[capacity]).forward(model, &[(0, tokens, true)], &mut scratch)
        };
        let long = vec![5; CONTEXT + 1];
        assert!(matches!(
            step(&long, long.len()),
            Err(ModelError::Forward(_))
        ));
        // One block of BLOCK positions holds no more.
        let over = vec![5; BLOCK + 1];
        assert!(matches!(step(&over, 2), Err(ModelError::Forward(_))));
        assert!(matches!(step(&[100_000], 1), Err(ModelError::Forward(_))));
        assert!(step(&over[..BLOCK], 2).is_ok());
    }

    #[test]
    fn a_host_cache_is_refused_by_the_device_model() {
        let host = load();
        let device = load_on_device();
        let mut caches = Caches::new(&host.model, &[4]);
        let batch = [StepInput {
            tokens: &[5],
            blocks: &caches.seqs[0].blocks,
            start: 0,
            logits: true,
        }];
        let err = device
            .model
            .forward(&batch, &mut caches.kv, &mut Scratch::default());
        assert!(matches!(err, Err(ModelError::Forward(_))));
    }
}
