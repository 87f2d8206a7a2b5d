//! The engine thread: intake, cancellation, one planned step at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use maas_kernels::team::Team;
use tokio::sync::mpsc::{self, error::TryRecvError};

use super::grammar::GrammarError;
use super::sampling::Sampler;
use super::scheduler::{Plan, Scheduler, SeqId, Work};
use super::sequence::{Sequence, SequenceParts};
use super::{Command, Failure, FinishReason, Submission};
use crate::metrics::Metrics;
use crate::model::{LoadedModel, Scratch, StepInput};

pub(super) struct Worker {
    loaded: Arc<LoadedModel>,
    scheduler: Scheduler,
    commands: mpsc::UnboundedReceiver<Command>,
    metrics: Arc<Metrics>,
    shutting_down: Arc<AtomicBool>,
    grace: Duration,
    deadline: Option<Instant>,
    sequences: BTreeMap<SeqId, Sequence>,
    next_id: u64,
    scratch: Scratch,
    team: Team,
}

impl Worker {
    pub fn new(
        loaded: Arc<LoadedModel>,
        scheduler: Scheduler,
        commands: mpsc::UnboundedReceiver<Command>,
        metrics: Arc<Metrics>,
        shutting_down: Arc<AtomicBool>,
        grace: Duration,
        team: Team,
    ) -> Self {
        Self {
            loaded,
            scheduler,
            commands,
            metrics,
            shutting_down,
            grace,
            deadline: None,
            sequences: BTreeMap::new(),
            next_id: 0,
            scratch: Scratch::default(),
            team,
        }
    }

    pub fn run(mut self) {
        loop {
            if !self.intake() {
                break;
            }
            self.retire_abandoned();
            // Plan before winding down: requests accepted before the signal
            // still take the free slots; only those left waiting are refused.
            let plan = self.scheduler.plan();
            self.reserve_caches(&plan);
            if self.shutting_down.load(Ordering::SeqCst) && self.wind_down() {
                break;
            }
            if !plan.work.is_empty() {
                self.step(plan);
            }
            self.publish_gauges();
        }
        tracing::info!("engine stopped");
    }

    /// Takes new submissions; blocks while there is nothing to do. Returns
    /// false when the engine should stop (every handle is gone).
    fn intake(&mut self) -> bool {
        if self.scheduler.is_idle() && !self.shutting_down.load(Ordering::SeqCst) {
            match self.commands.blocking_recv() {
                Some(cmd) => self.command(cmd),
                None => return false,
            }
        }
        loop {
            match self.commands.try_recv() {
                Ok(cmd) => self.command(cmd),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return !self.scheduler.is_idle(),
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(s) => self.register(*s),
            Command::Shutdown => {}
        }
    }

    fn register(&mut self, s: Submission) {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        let d = s.params.decoding;
        let seed = d.seed.unwrap_or_else(|| entropy(id));
        let prompt_len = s.prompt.len();
        // Submissions come validated (see `Submission`); not checked again.
        debug_assert!(
            prompt_len > 0
                && s.params.max_new_tokens > 0
                && prompt_len
                    .checked_add(s.params.max_new_tokens)
                    .is_some_and(|end| end <= self.loaded.model.max_positions()),
            "an unvalidated submission reached the engine"
        );
        let mut seq = Sequence::new(
            SequenceParts {
                prompt: s.prompt,
                sampler: Sampler::new(d.sampling, d.logit_bias, seed),
                max_new_tokens: s.params.max_new_tokens,
                logprobs: d.logprobs,
                stop: d.stop,
                ignore_eos: d.ignore_eos,
                grammar: s.params.grammar,
                events: s.events,
                received: s.received,
                permit: s.permit,
            },
            self.loaded.tokenizer.clone(),
        );
        if let Err(full) = self.scheduler.enqueue(id, prompt_len) {
            // The admission permits bound the queue, so this is a
            // misconfiguration rather than load; fail loudly, not silently.
            seq.fail(Failure::Unavailable(full.to_string()));
            self.metrics.requests_failed.add(1);
            return;
        }
        self.sequences.insert(id, seq);
    }

    /// KV caches are reserved at admission: a queued request holds none.
    fn reserve_caches(&mut self, plan: &Plan) {
        for id in &plan.admitted {
            let Some(seq) = self.sequences.get_mut(id) else {
                continue;
            };
            let capacity = seq.prompt.len() + seq.max_new_tokens();
            match self.loaded.model.new_cache(capacity) {
                Ok(cache) => seq.cache = Some(cache),
                Err(e) => {
                    tracing::warn!(error = %e, "refusing a request: no memory for its KV cache");
                    self.end_with_failure(*id, Failure::Internal(e.to_string()));
                }
            }
        }
    }

    fn retire_abandoned(&mut self) {
        let gone: Vec<SeqId> = self
            .sequences
            .iter()
            .filter(|(_, s)| s.is_abandoned())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.scheduler.retire(id);
            self.sequences.remove(&id);
            self.metrics.requests_cancelled.add(1);
        }
    }

    /// Shutdown: queued requests fail at once; running ones get the grace
    /// period. Returns true once nothing is left.
    fn wind_down(&mut self) -> bool {
        let deadline = *self
            .deadline
            .get_or_insert_with(|| Instant::now() + self.grace);
        let waiting: Vec<SeqId> = self.scheduler.waiting_ids().collect();
        for id in waiting {
            self.end_with_failure(
                id,
                Failure::Unavailable("the server is shutting down".into()),
            );
        }
        if Instant::now() >= deadline {
            let running: Vec<SeqId> = self.sequences.keys().copied().collect();
            for id in running {
                self.end_with_failure(
                    id,
                    Failure::Unavailable(
                        "the server shut down before the response finished".into(),
                    ),
                );
            }
        }
        self.scheduler.is_idle()
    }

    fn end_with_failure(&mut self, id: SeqId, failure: Failure) {
        self.scheduler.retire(id);
        if let Some(mut seq) = self.sequences.remove(&id) {
            seq.fail(failure);
            self.metrics.requests_failed.add(1);
        }
    }

    /// The grammar engine failed mid-generation (it ran out of its step
    /// budget on a pathological schema, say): the request ends with a 500
    /// rather than with output the schema does not allow.
    fn fail_grammar(&mut self, id: SeqId, e: GrammarError) {
        tracing::warn!(error = %e, "constrained decoding failed; failing the request");
        self.end_with_failure(id, Failure::Internal(e.to_string()));
    }

    fn end(&mut self, id: SeqId, reason: FinishReason) {
        self.scheduler.retire(id);
        if let Some(mut seq) = self.sequences.remove(&id) {
            seq.finish(reason);
            self.metrics
                .request_seconds
                .observe_duration(seq.received().elapsed());
            match reason {
                FinishReason::Stop => self.metrics.requests_finished_stop.add(1),
                FinishReason::Length => self.metrics.requests_finished_length.add(1),
            }
        }
    }

    fn step(&mut self, plan: Plan) {
        let started = Instant::now();
        let work: HashMap<SeqId, Work> = plan.work.iter().map(|w| (w.id(), *w)).collect();
        let mut inputs = Vec::with_capacity(work.len());
        let mut sampled = Vec::new();
        let mut grammars = Vec::new();
        let mut prompt_tokens = 0;
        for (id, seq) in self.sequences.iter_mut() {
            let Some(w) = work.get(id) else { continue };
            let Sequence {
                prompt,
                cache: Some(cache),
                last_token,
                grammar,
                ..
            } = seq
            else {
                continue;
            };
            let (tokens, logits) = match *w {
                Work::Prefill {
                    start,
                    len,
                    completes,
                    ..
                } => {
                    prompt_tokens += len;
                    (&prompt[start..start + len], completes)
                }
                Work::Decode { .. } => (std::slice::from_ref(&*last_token), true),
            };
            if logits {
                sampled.push(*id);
                grammars.extend(grammar.as_mut());
            }
            inputs.push(StepInput {
                tokens,
                cache,
                logits,
            });
        }
        let (model, scratch, team) = (&self.loaded.model, &mut self.scratch, &self.team);
        let mut forward = || team.install(|| model.forward(&mut inputs, scratch));
        // The grammar masks for this step's tokens depend only on tokens
        // already chosen: computed on their own thread while the forward
        // pass runs, so constrained decoding costs the step little time.
        let result = if grammars.is_empty() {
            forward()
        } else {
            std::thread::scope(|scope| {
                let masks = scope.spawn(|| grammars.iter_mut().for_each(|g| g.prepare()));
                let result = forward();
                // A panic there leaves the masks unset; `mask_logits` then
                // computes them itself.
                let _ = masks.join();
                result
            })
        };
        drop(inputs);

        let rows = match result {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "forward step failed; failing its sequences");
                for id in work.keys() {
                    self.end_with_failure(
                        *id,
                        Failure::Internal("the model failed on this request".into()),
                    );
                }
                return;
            }
        };
        self.metrics.prompt_tokens.add(prompt_tokens as u64);
        let tokenizer = self.loaded.tokenizer.clone();
        for (id, logits) in sampled.into_iter().zip(rows) {
            let Some(seq) = self.sequences.get_mut(&id) else {
                continue;
            };
            let mut logits = logits;
            if let Some(grammar) = seq.grammar.as_mut() {
                if let Err(e) = grammar.mask_logits(&mut logits) {
                    self.fail_grammar(id, e);
                    continue;
                }
            }
            let (token, logprobs) = seq.sampler.sample_with_logprobs(&logits, seq.logprobs);
            let grammar_done = match seq
                .grammar
                .as_mut()
                .map(|g| g.commit(token).map(|()| g.is_finished()))
            {
                Some(Err(e)) => {
                    self.fail_grammar(id, e);
                    continue;
                }
                Some(Ok(done)) => done,
                None => false,
            };
            match seq.accept(token, logprobs, &tokenizer, &self.metrics) {
                Some(reason) => self.end(id, reason),
                // The grammar is complete (its end-of-sequence was taken
                // though `ignore_eos` is set, or nothing can follow).
                None if grammar_done => {
                    seq.flush();
                    self.end(id, FinishReason::Stop);
                }
                None => {}
            }
        }
        self.metrics.batch_tokens.observe(plan.tokens() as f64);
        self.metrics.batch_sequences.observe(plan.work.len() as f64);
        self.metrics
            .step_seconds
            .observe_duration(started.elapsed());
    }

    fn publish_gauges(&self) {
        self.metrics
            .queue_depth
            .set(self.scheduler.waiting() as u64);
        self.metrics.running.set(self.scheduler.running() as u64);
        let kv: usize = self.sequences.values().map(Sequence::kv_bytes).sum();
        self.metrics.kv_cache_bytes.set(kv as u64);
    }
}

/// A seed for requests that give none: distinct per request and per run.
fn entropy(id: SeqId) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
