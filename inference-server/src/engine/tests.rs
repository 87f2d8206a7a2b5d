//! The engine on a tiny random-weight model (no model file needed): events,
//! usage, a hung-up client retiring its sequence and returning its permit,
//! and shutdown.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::*;
use crate::model::{load_gguf, load_gguf_on, tiny::tiny_gguf, Placement};

fn engine(max_running: usize, max_waiting: usize) -> (Engine, Arc<Metrics>) {
    engine_with(max_running, max_waiting, KvCacheConfig::default())
}

fn engine_with(
    max_running: usize,
    max_waiting: usize,
    kv: KvCacheConfig,
) -> (Engine, Arc<Metrics>) {
    engine_on(max_running, max_waiting, kv, &Placement::Host)
}

fn engine_on(
    max_running: usize,
    max_waiting: usize,
    kv: KvCacheConfig,
    placement: &Placement,
) -> (Engine, Arc<Metrics>) {
    engine_graced(
        max_running,
        max_waiting,
        kv,
        placement,
        Duration::from_secs(5),
    )
}

fn engine_graced(
    max_running: usize,
    max_waiting: usize,
    kv: KvCacheConfig,
    placement: &Placement,
    shutdown_grace: Duration,
) -> (Engine, Arc<Metrics>) {
    let path = tiny_gguf();
    let loaded = Arc::new(load_gguf_on(&path, None, placement).unwrap());
    std::fs::remove_file(path).unwrap();
    let metrics = Arc::new(Metrics::default());
    let config = EngineConfig {
        limits: SchedulerLimits {
            max_running,
            max_waiting,
            max_batch_tokens: 64,
            prefill_chunk: 8,
        },
        kv,
        shutdown_grace,
        threads: Some(1),
    };
    (
        Engine::start(loaded, config, metrics.clone()).unwrap(),
        metrics,
    )
}

/// Shuts the engine down and waits for its thread.
fn stop(engine: Engine) {
    engine.handle.shutdown();
    engine.thread.join().unwrap();
}

fn submit(
    handle: &EngineHandle,
    prompt: Vec<u32>,
    max_new_tokens: usize,
) -> mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = mpsc::unbounded_channel();
    submit_to(handle, prompt, max_new_tokens, tx);
    rx
}

fn submit_to(
    handle: &EngineHandle,
    prompt: Vec<u32>,
    max_new_tokens: usize,
    tx: mpsc::UnboundedSender<Event>,
) {
    let greedy = SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    };
    submit_choices(handle, prompt, max_new_tokens, greedy, None, vec![tx]);
}

/// One request with a choice per channel.
fn submit_choices(
    handle: &EngineHandle,
    prompt: Vec<u32>,
    max_new_tokens: usize,
    sampling: SamplingParams,
    seed: Option<u64>,
    events: Vec<mpsc::UnboundedSender<Event>>,
) {
    let permits = handle.admit(events.len()).unwrap();
    handle
        .submit(Submission {
            prompt,
            params: GenerationParams {
                max_new_tokens,
                decoding: Decoding {
                    sampling,
                    seed,
                    // Random weights emit end-of-sequence whenever they like.
                    ignore_eos: true,
                    ..Decoding::default()
                },
                grammar: None,
                shown_special: Vec::new(),
            },
            cache_scope: None,
            choices: events
                .into_iter()
                .zip(permits)
                .map(|(events, permit)| ChoiceOutput { events, permit })
                .collect(),
            received: Instant::now(),
        })
        .unwrap();
}

/// Each choice's whole text and end, for `n` choices sampled with `seed`.
fn choices(handle: &EngineHandle, prompt: &[u32], n: usize, seed: u64) -> Vec<(String, Event)> {
    let sampling = SamplingParams {
        temperature: 1.0,
        ..SamplingParams::default()
    };
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
    submit_choices(handle, prompt.to_vec(), 8, sampling, Some(seed), txs);
    rxs.into_iter().map(|mut rx| drain(&mut rx)).collect()
}

/// Every event until the end one.
fn drain(rx: &mut mpsc::UnboundedReceiver<Event>) -> (String, Event) {
    let mut text = String::new();
    loop {
        match rx
            .blocking_recv()
            .expect("the engine ends every sequence with an event")
        {
            Event::Text(t) => text.push_str(&t),
            end => return (text, end),
        }
    }
}

#[test]
fn a_sequence_streams_text_then_finishes_with_exact_usage() {
    let (engine, metrics) = engine(4, 4);
    let mut rx = submit(
        &engine.handle,
        vec![1, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130],
        7,
    );
    let (_, end) = drain(&mut rx);
    assert_eq!(
        end,
        Event::Finished {
            reason: FinishReason::Length,
            usage: Usage {
                prompt_tokens: 11,
                completion_tokens: 7,
                cached_tokens: 0,
            }
        }
    );
    assert_eq!(
        metrics.prompt_tokens.get(),
        11,
        "a chunked prompt is counted once"
    );
    assert_eq!(metrics.generated_tokens.get(), 7);
    stop(engine);
}

#[test]
fn choices_share_one_prefill_and_each_samples_with_its_own_seed() {
    let (engine, metrics) = engine(4, 4);
    let prompt = [1, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130];
    let three = choices(&engine.handle, &prompt, 3, 7);
    assert_eq!(
        metrics.prompt_tokens.get(),
        11,
        "the prompt of three choices is run once"
    );
    for (_, end) in &three {
        assert_eq!(
            *end,
            Event::Finished {
                reason: FinishReason::Length,
                usage: Usage {
                    prompt_tokens: 11,
                    completion_tokens: 8,
                    cached_tokens: 0,
                }
            }
        );
    }
    // Choice i is what one choice seeded with 7 + i gives: the copied cache
    // holds what the choice's own prefill would have.
    for (i, (text, _)) in three.iter().enumerate() {
        let alone = choices(&engine.handle, &prompt, 1, 7 + i as u64);
        assert_eq!(*text, alone[0].0, "choice {i}");
    }
    assert!(
        three[0].0 != three[1].0 || three[1].0 != three[2].0,
        "three seeds sampled the same text: {three:?}"
    );
    // A prompt of two full blocks and part of a third: the choices share
    // the full ones and copy the third, and still sample what they would
    // alone.
    let long: Vec<u32> = (0..37).map(|i| 1 + i * 7 % 250).collect();
    let forked = choices(&engine.handle, &long, 3, 11);
    for (i, (text, _)) in forked.iter().enumerate() {
        let alone = choices(&engine.handle, &long, 1, 11 + i as u64);
        assert_eq!(*text, alone[0].0, "choice {i} of a long prompt");
    }
    // Every choice's slot is back: four running plus four queued.
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.handle.admit(8).is_err() {
        assert!(
            Instant::now() < deadline,
            "a choice's permit was not returned"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    stop(engine);
}

#[test]
fn a_choice_gone_before_the_prefill_takes_its_request_with_it() {
    let (engine, metrics) = engine(2, 2);
    let handle = engine.handle.clone();
    let greedy = SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    };
    // The second choice's receiver is gone before the engine sees the
    // request (so the outcome does not race the tiny model's speed).
    let (first_tx, mut first_rx) = mpsc::unbounded_channel();
    let (gone_tx, gone_rx) = mpsc::unbounded_channel();
    drop(gone_rx);
    submit_choices(
        &handle,
        vec![1, 2, 3],
        50,
        greedy,
        None,
        vec![first_tx, gone_tx],
    );
    assert_eq!(
        first_rx.blocking_recv(),
        None,
        "the first choice is cancelled with it, before any token"
    );
    // The engine counts the cancellations just after it drops the channels.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.requests_cancelled.get() < 2 {
        assert!(Instant::now() < deadline, "both choices count as cancelled");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(metrics.requests_cancelled.get(), 2);
    assert_eq!(metrics.prompt_tokens.get(), 0, "nothing was prefilled");
    // Both slots are back, in the permits and in the scheduler: a request
    // for two choices runs.
    let two = choices(&handle, &[1, 5], 2, 9);
    assert!(
        two.iter()
            .all(|(_, end)| matches!(end, Event::Finished { .. })),
        "{two:?}"
    );
    handle.shutdown();
    engine.thread.join().unwrap();
}

#[test]
fn shutdown_fails_every_choice_of_a_waiting_request() {
    let (engine, _) = engine(2, 4);
    let handle = engine.handle.clone();
    let mut running = submit(&handle, vec![1, 2, 3], 120);
    // Let the engine admit the first one before the rest arrive.
    assert!(matches!(running.blocking_recv(), Some(Event::Text(_))));
    // Two choices need both slots: they wait behind the running one.
    let sampling = SamplingParams::default();
    let (txs, mut rxs): (Vec<_>, Vec<_>) = (0..2).map(|_| mpsc::unbounded_channel()).unzip();
    submit_choices(&handle, vec![1, 4], 20, sampling, Some(1), txs);
    handle.shutdown();
    for rx in &mut rxs {
        let end = drain(rx).1;
        assert!(
            matches!(
                end,
                Event::Failed {
                    failure: Failure::Unavailable(_),
                    usage: Usage {
                        prompt_tokens: 0,
                        completion_tokens: 0,
                        ..
                    }
                }
            ),
            "never admitted, nothing computed: {end:?}"
        );
    }
    assert!(matches!(drain(&mut running).1, Event::Finished { .. }));
    engine.thread.join().unwrap();
}

#[test]
fn a_sequence_cut_by_the_grace_deadline_reports_what_it_computed() {
    let (engine, _) = engine_graced(
        1,
        4,
        KvCacheConfig::default(),
        &Placement::Host,
        Duration::ZERO,
    );
    let prompt = vec![1, 2, 3, 4, 5];
    let mut running = submit(&engine.handle, prompt.clone(), 120);
    let mut texts = 0;
    while texts < 3 {
        match running.blocking_recv() {
            Some(Event::Text(_)) => texts += 1,
            Some(Event::Logprobs(_)) => {}
            other => panic!("ended before the cut: {other:?}"),
        }
    }
    engine.handle.shutdown();
    let (rest, end) = drain(&mut running);
    let Event::Failed {
        failure: Failure::Unavailable(_),
        usage,
    } = end
    else {
        panic!("{end:?}")
    };
    assert_eq!(usage.prompt_tokens, prompt.len());
    // At least the tokens whose text came, at most one per step it ran.
    assert!(usage.completion_tokens >= 3, "{usage:?}");
    assert!(usage.completion_tokens < 120, "{usage:?} {rest:?}");
    engine.thread.join().unwrap();
}

#[test]
fn a_hung_up_client_is_retired_and_its_permit_returned() {
    let (engine, metrics) = engine(1, 1);
    let handle = engine.handle.clone();
    // The client is gone before the engine sees its request (receiver
    // dropped first, so the outcome does not race the tiny model's speed).
    let (tx, rx) = mpsc::unbounded_channel();
    drop(rx);
    submit_to(&handle, vec![1, 2, 3], 100, tx);
    let mut next = submit(&handle, vec![1, 5], 3);
    let (_, end) = drain(&mut next);
    assert!(matches!(end, Event::Finished { .. }), "{end:?}");
    assert_eq!(metrics.requests_cancelled.get(), 1);
    // Both permits (one running slot, one queue place) are back.
    let deadline = Instant::now() + Duration::from_secs(10);
    let held = loop {
        match (handle.admit(1), handle.admit(1)) {
            (Ok(a), Ok(b)) => break (a, b),
            _ => assert!(Instant::now() < deadline, "permits were not returned"),
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(matches!(handle.admit(1), Err(SubmitError::Full(2))));
    drop(held);
    handle.shutdown();
    engine.thread.join().unwrap();
}

#[test]
fn shutdown_fails_queued_requests_and_finishes_running_ones() {
    let (engine, _) = engine(1, 4);
    let handle = engine.handle.clone();
    // Long enough (the tiny model's whole context) that it is still running
    // when the signal comes: at 20 tokens an optimised build finished it
    // first, and the queued request then ran instead of failing.
    let mut running = submit(&handle, vec![1, 2, 3], 120);
    let mut queued = submit(&handle, vec![1, 4], 20);
    // Let the engine admit the first one before the signal.
    let first = running.blocking_recv();
    assert!(
        matches!(first, Some(Event::Text(_)) | Some(Event::Finished { .. })),
        "{first:?}"
    );
    handle.shutdown();
    assert!(matches!(handle.admit(1), Err(SubmitError::ShuttingDown)));
    let end = drain(&mut queued).1;
    assert!(
        matches!(end, Event::Failed { usage, .. } if usage == Usage::default()),
        "{end:?}"
    );
    assert!(matches!(
        drain(&mut running).1,
        Event::Finished {
            reason: FinishReason::Length,
            ..
        }
    ));
    engine.thread.join().unwrap();
}

/// Greedy text and end event of one request, alone on its engine's queue.
fn greedy(handle: &EngineHandle, prompt: Vec<u32>, max_new_tokens: usize) -> (String, Event) {
    drain(&mut submit(handle, prompt, max_new_tokens))
}

/// KV memory for exactly `blocks` blocks of 16 positions of the tiny model.
fn kv_blocks(blocks: usize) -> KvCacheConfig {
    let path = tiny_gguf();
    let loaded = load_gguf(&path, None).unwrap();
    std::fs::remove_file(path).unwrap();
    let block = KvMemory::block_bytes(loaded.model.config(), 16) as u64;
    KvCacheConfig {
        memory: Some(KvBudget::Bytes(block * blocks as u64)),
        ..KvCacheConfig::default()
    }
}

#[test]
fn a_percentage_of_the_free_memory_sizes_the_kv_cache() {
    let path = tiny_gguf();
    let loaded = load_gguf(&path, None).unwrap();
    std::fs::remove_file(path).unwrap();
    let cfg = loaded.model.config();
    let block = KvMemory::block_bytes(cfg, 16) as u64;
    let quarter = KvCacheConfig {
        memory: Some(KvBudget::Percent(25)),
        ..KvCacheConfig::default()
    };
    assert_eq!(
        quarter.blocks_with(cfg, 128, || Ok(400 * block)).unwrap(),
        100
    );
    // A quarter of 16 blocks cannot hold the 8 of one whole context.
    assert!(matches!(
        quarter.blocks_with(cfg, 128, || Ok(16 * block)),
        Err(StartError::KvTooSmall {
            blocks: 4,
            needed: 8,
            ..
        })
    ));
    let unreadable = || Err(ModelError::Forward("no /proc".into()));
    assert!(matches!(
        quarter.blocks_with(cfg, 128, unreadable),
        Err(StartError::KvMemory(_))
    ));
    // A size never asks what is free.
    let sized = KvCacheConfig {
        memory: Some(KvBudget::Bytes(10 * block)),
        ..KvCacheConfig::default()
    };
    assert_eq!(sized.blocks_with(cfg, 128, || panic!("asked")).unwrap(), 10);
    // The real measure, on this host: some memory is available.
    assert!(loaded.model.free_memory().unwrap() > 0);
}

#[test]
fn a_burst_beyond_the_kv_memory_waits_or_is_preempted_and_every_request_finishes() {
    // Eight blocks: one sequence of the whole context (128 positions), and
    // each request here needs five (40 prompt + 40 generated positions), so
    // two at once must preempt.
    let (small, metrics) = engine_with(6, 8, kv_blocks(8));
    let (large, _) = engine(6, 8);
    let prompts: Vec<Vec<u32>> = (0..6u32)
        .map(|r| (0..40).map(|i| 1 + (r * 31 + i * 7) % 250).collect())
        .collect();
    let mut rxs: Vec<_> = prompts
        .iter()
        .map(|p| submit(&small.handle, p.clone(), 40))
        .collect();
    for (r, rx) in rxs.iter_mut().enumerate() {
        let (text, end) = drain(rx);
        assert_eq!(
            end,
            Event::Finished {
                reason: FinishReason::Length,
                usage: Usage {
                    prompt_tokens: 40,
                    completion_tokens: 40,
                    cached_tokens: 0,
                }
            },
            "request {r}"
        );
        // Computed again after a preemption, a sequence goes on with the
        // tokens it would have had with memory to spare.
        let (alone, _) = greedy(&large.handle, prompts[r].clone(), 40);
        assert_eq!(text, alone, "request {r}");
    }
    assert!(metrics.preemptions.get() > 0, "no request was preempted");
    assert_eq!(metrics.requests_failed.get(), 0);
    [small, large].into_iter().for_each(stop);
}

#[test]
fn a_shared_prefix_is_found_in_the_cache_and_changes_no_token() {
    let (cached, metrics) = engine(4, 4);
    let (uncached, _) = engine_with(
        4,
        4,
        KvCacheConfig {
            prefix_caching: false,
            ..KvCacheConfig::default()
        },
    );
    let system: Vec<u32> = (0..40).map(|i| 1 + i * 13 % 250).collect();
    let ask = |question: &[u32]| system.iter().chain(question).copied().collect::<Vec<u32>>();
    for (n, question) in [[200u32, 201, 202], [210, 211, 212]].iter().enumerate() {
        let (text, end) = greedy(&cached.handle, ask(question), 12);
        let Event::Finished { usage, .. } = end else {
            panic!("{end:?}")
        };
        // The first request finds nothing; the second the two full blocks
        // of the shared 40 tokens (the third also holds the question).
        assert_eq!(
            usage.cached_tokens,
            if n == 0 { 0 } else { 32 },
            "request {n}"
        );
        assert_eq!(usage.prompt_tokens, 43);
        let (reference, end) = greedy(&uncached.handle, ask(question), 12);
        assert!(matches!(end, Event::Finished { usage, .. } if usage.cached_tokens == 0));
        assert_eq!(text, reference, "request {n}");
    }
    assert_eq!(metrics.prefix_cache_hits.get(), 32);
    assert_eq!(metrics.prefix_cache_queries.get(), 86);
    [cached, uncached].into_iter().for_each(stop);
}

/// On the device path (candle's CPU backend here) the KV memory is paged
/// as on the host: choices share the prompt's blocks and copy its last one,
/// and a later request with the same prompt finds its full blocks.
#[test]
fn choices_and_prefixes_on_the_device_path() {
    let (engine, metrics) = engine_on(
        4,
        4,
        KvCacheConfig::default(),
        &Placement::Device(candle_core::Device::Cpu),
    );
    // 37 tokens: two full blocks and part of a third.
    let long: Vec<u32> = (0..37).map(|i| 1 + i * 7 % 250).collect();
    let cached = |end: &Event| match end {
        Event::Finished { usage, .. } => usage.cached_tokens,
        other => panic!("{other:?}"),
    };
    for round in 0..2 {
        let forked = choices(&engine.handle, &long, 3, 11);
        for (i, (text, end)) in forked.iter().enumerate() {
            assert_eq!(
                cached(end),
                if round == 0 { 0 } else { 32 },
                "round {round}"
            );
            let alone = choices(&engine.handle, &long, 1, 11 + i as u64);
            assert_eq!(*text, alone[0].0, "choice {i}");
            assert_eq!(cached(&alone[0].1), 32);
        }
    }
    assert_eq!(metrics.prefix_cache_queries.get(), 8 * 37);
    assert_eq!(metrics.prefix_cache_hits.get(), 7 * 32);
    stop(engine);
}
