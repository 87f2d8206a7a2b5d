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
use super::{Command, Constraint, Failure, FinishReason, Submission};
use crate::metrics::Metrics;
use crate::model::{KvMemory, LoadedModel, Model, ModelError, Scratch, StepInput};

pub(super) struct Worker {
    loaded: Arc<LoadedModel>,
    scheduler: Scheduler,
    commands: mpsc::UnboundedReceiver<Command>,
    metrics: Arc<Metrics>,
    shutting_down: Arc<AtomicBool>,
    grace: Duration,
    deadline: Option<Instant>,
    sequences: BTreeMap<SeqId, Sequence>,
    /// A request's first sequence → its other choices, until its prefill
    /// ends and they fork from it (see `Submission`).
    followers: HashMap<SeqId, Vec<SeqId>>,
    next_id: u64,
    scratch: Scratch,
    team: Team,
    /// The KV memory, in the blocks the scheduler hands out.
    kv: KvMemory,
}

impl Worker {
    // Each is a different part of the engine the thread takes over.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        loaded: Arc<LoadedModel>,
        scheduler: Scheduler,
        commands: mpsc::UnboundedReceiver<Command>,
        metrics: Arc<Metrics>,
        shutting_down: Arc<AtomicBool>,
        grace: Duration,
        team: Team,
        kv: KvMemory,
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
            followers: HashMap::new(),
            next_id: 0,
            scratch: Scratch::default(),
            team,
            kv,
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
            let sequences = &self.sequences;
            let plan = self
                .scheduler
                .plan(&|id| sequences.get(&id).map_or(&[][..], Sequence::tokens));
            self.admit(&plan);
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

    /// One sequence per choice; only the first is scheduled until its
    /// prefill ends (see `fork`).
    fn register(&mut self, s: Submission) {
        let first = SeqId(self.next_id);
        let d = s.params.decoding;
        let seed = d.seed.unwrap_or_else(|| entropy(first));
        let prompt_len = s.prompt.len();
        // Submissions come validated (see `Submission`); not checked again.
        debug_assert!(
            prompt_len > 0
                && !s.choices.is_empty()
                && s.params.max_new_tokens > 0
                && prompt_len
                    .checked_add(s.params.max_new_tokens)
                    .is_some_and(|end| end <= self.loaded.model.max_positions()),
            "an unvalidated submission reached the engine"
        );
        let width = s.choices.len();
        // The other choices copy the first's grammar state when they fork.
        let mut grammar = s.params.grammar;
        let mut group = Vec::with_capacity(width);
        let choices = Arc::new(());
        for (i, out) in s.choices.into_iter().enumerate() {
            let id = SeqId(self.next_id);
            self.next_id += 1;
            let seq = Sequence::new(
                SequenceParts {
                    prompt: s.prompt.clone(),
                    sampler: Sampler::new(
                        d.sampling,
                        d.logit_bias.clone(),
                        seed.wrapping_add(i as u64),
                    ),
                    max_new_tokens: s.params.max_new_tokens,
                    logprobs: d.logprobs,
                    stop: d.stop.clone(),
                    ignore_eos: d.ignore_eos,
                    shown_special: s.params.shown_special.clone(),
                    grammar: grammar.take(),
                    events: out.events,
                    received: s.received,
                    timed: i == 0,
                    choices: Arc::clone(&choices),
                    permit: out.permit,
                },
                self.loaded.tokenizer.clone(),
            );
            group.push((id, seq));
        }
        let scope = s.cache_scope.as_deref();
        if let Err(e) = self.scheduler.enqueue_in(scope, first, prompt_len, width) {
            // The admission permits bound the queue and the API bounds `n`,
            // so this is a misconfiguration rather than load; fail loudly.
            for (_, mut seq) in group {
                seq.fail(Failure::Unavailable(e.to_string()));
                self.metrics.requests_failed.add(1);
            }
            return;
        }
        if width > 1 {
            let others = group[1..].iter().map(|(id, _)| *id).collect();
            self.followers.insert(first, others);
        }
        self.sequences.extend(group);
    }

    /// A request's prompt is in its first sequence's cache: its other
    /// choices take its full blocks and a copy of its unfinished last one
    /// with its grammar state, and decode on their own from the next step.
    /// Returns those that did.
    fn fork(&mut self, first: SeqId, others: Vec<SeqId>) -> Vec<SeqId> {
        let Some(group) = self.sequences.get(&first) else {
            return Vec::new();
        };
        let grammar = group.grammar.as_ref().map(Constraint::fork);
        let cached_tokens = group.cached_tokens;
        let prompt = group.tokens().to_vec();
        let others: Vec<SeqId> = others
            .into_iter()
            .filter(|id| self.sequences.contains_key(id))
            .collect();
        let copied = match self.scheduler.fork(first, &others, &prompt) {
            Some(copies) => copies
                .into_iter()
                .try_for_each(|(from, to)| self.kv.copy_block(from, to)),
            // Unreachable: the first is sampled right after this, with its
            // prompt fed. Fail the choices rather than leave them waiting.
            None => Err(ModelError::Forward("a choice lost its prefill".into())),
        };
        if let Err(e) = copied {
            tracing::error!(error = %e, "failing a request's other choices: its prompt could not be copied");
            for id in others {
                self.fail_alone(id, Failure::Internal(e.to_string()));
            }
            return Vec::new();
        }
        let (forked, left_out): (Vec<SeqId>, Vec<SeqId>) = others
            .into_iter()
            .partition(|id| self.scheduler.blocks(*id).is_some());
        for id in left_out {
            self.fail_alone(id, Failure::Internal("no KV blocks for the choice".into()));
        }
        for id in &forked {
            if let Some(seq) = self.sequences.get_mut(id) {
                seq.grammar = grammar.as_ref().map(Constraint::fork);
                seq.cached_tokens = cached_tokens;
            }
        }
        forked
    }

    /// Sequences the scheduler admitted, refused or preempted.
    fn admit(&mut self, plan: &Plan) {
        for &id in &plan.refused {
            let blocks = self.scheduler.pool().total();
            self.end_with_failure(
                id,
                Failure::Unavailable(format!(
                    "the prompt needs more KV cache than the server has ({blocks} blocks)"
                )),
            );
        }
        self.metrics.preemptions.add(plan.preempted.len() as u64);
        let prefix_caching = self.scheduler.pool().prefix_caching();
        for a in &plan.admitted {
            let Some(seq) = self.sequences.get_mut(&a.id) else {
                continue;
            };
            // A preempted sequence's cached tokens are its first
            // admission's: usage reports what the prompt found, and the
            // prompt count and hit rate count prompts, not recomputations
            // (`prefill_tokens` counts what the steps computed).
            if seq.cached_tokens.is_none() {
                self.metrics.prompt_tokens.add(a.tokens as u64);
                if prefix_caching {
                    self.metrics.prefix_cache_queries.add(a.tokens as u64);
                    self.metrics.prefix_cache_hits.add(a.cached_tokens as u64);
                }
            }
            seq.cached_tokens.get_or_insert(a.cached_tokens);
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
            // Until the fork, a request's choices go together, whichever
            // hung up first: they are the same client's, and its scheduler
            // slots are held as one.
            let first = self
                .followers
                .iter()
                .find(|(_, others)| others.contains(&id))
                .map_or(id, |(first, _)| *first);
            let others = self.followers.remove(&first).unwrap_or_default();
            for id in std::iter::once(first).chain(others) {
                match self.sequences.remove(&id) {
                    Some(seq) => {
                        // Every step planned for it ran: its blocks are good.
                        self.scheduler.finish(id, seq.tokens());
                        self.metrics.requests_cancelled.add(1);
                    }
                    None => {
                        self.scheduler.retire(id);
                    }
                }
            }
        }
    }

    /// Shutdown: queued requests fail at once; running ones get the grace
    /// period. Returns true once nothing is left.
    fn wind_down(&mut self) -> bool {
        let deadline = *self
            .deadline
            .get_or_insert_with(|| Instant::now() + self.grace);
        // Those that never produced a token; a preempted sequence waiting to
        // be computed again has streamed already, so it gets the grace
        // period as running ones do.
        let waiting: Vec<SeqId> = self
            .scheduler
            .waiting_ids()
            .filter(|id| self.sequences.get(id).is_none_or(|s| s.generated() == 0))
            .collect();
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

    /// Fails a sequence, and the choices still waiting on its prefill.
    fn end_with_failure(&mut self, id: SeqId, failure: Failure) {
        for other in self.followers.remove(&id).unwrap_or_default() {
            self.fail_alone(other, failure.clone());
        }
        self.fail_alone(id, failure);
    }

    fn fail_alone(&mut self, id: SeqId, failure: Failure) {
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
        let Some(mut seq) = self.sequences.remove(&id) else {
            self.scheduler.retire(id);
            return;
        };
        self.scheduler.finish(id, seq.tokens());
        // The request's, once: when its last choice ends (before the end
        // goes out, so a scrape after the answer sees it).
        if seq.is_last_choice() {
            self.metrics
                .request_seconds
                .observe_duration(seq.received().elapsed());
        }
        seq.finish(reason);
        match reason {
            FinishReason::Stop => self.metrics.requests_finished_stop.add(1),
            FinishReason::Length => self.metrics.requests_finished_length.add(1),
        }
    }

    fn step(&mut self, plan: Plan) {
        let started = Instant::now();
        let work: HashMap<SeqId, Work> = plan.work.iter().map(|w| (w.id(), *w)).collect();
        let mut inputs = Vec::with_capacity(work.len());
        let mut sampled = Vec::new();
        let mut grammars = Vec::new();
        let mut prefill_tokens = 0;
        for (id, seq) in self.sequences.iter_mut() {
            let Some(w) = work.get(id) else { continue };
            let all = seq.tokens.as_slice();
            let (start, tokens, logits) = match *w {
                Work::Prefill {
                    start,
                    len,
                    completes,
                    ..
                } => {
                    prefill_tokens += len;
                    (start, &all[start..start + len], completes)
                }
                Work::Decode { .. } => (all.len() - 1, &all[all.len() - 1..], true),
            };
            // Always there: planned work is for running sequences.
            let Some(blocks) = self.scheduler.blocks(*id) else {
                continue;
            };
            if logits {
                sampled.push(*id);
                grammars.extend(seq.grammar.as_mut());
            }
            inputs.push(StepInput {
                tokens,
                blocks,
                start,
                logits,
            });
        }
        let (model, scratch, team, kv) = (
            &self.loaded.model,
            &mut self.scratch,
            &self.team,
            &mut self.kv,
        );
        let mut forward = || match model {
            Model::Host(_) => team.install(|| model.forward(&inputs, kv, scratch)),
            // A device step runs on the device (candle's CPU backend has its
            // own threads): the team's workers would only spin beside it.
            Model::Device(_) => model.forward(&inputs, kv, scratch),
        };
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

        let mut logits = match result {
            Ok(logits) => logits,
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
        self.metrics.prefill_tokens.add(prefill_tokens as u64);
        for (row, id) in sampled.into_iter().enumerate().take(logits.len()) {
            let logits = logits.row_mut(row);
            // A request's other choices start from the same logits.
            if let Some(others) = self.followers.remove(&id) {
                for other in self.fork(id, others) {
                    self.sample(other, &mut logits.to_vec());
                }
            }
            self.sample(id, logits);
        }
        self.scratch.recycle(logits);
        self.metrics.batch_tokens.observe(plan.tokens() as f64);
        self.metrics.batch_sequences.observe(plan.work.len() as f64);
        self.metrics
            .step_seconds
            .observe_duration(started.elapsed());
    }

    /// Masks a sequence's logits by its grammar, samples its next token and
    /// passes it on; ends the sequence when that token does.
    fn sample(&mut self, id: SeqId, logits: &mut [f32]) {
        let Some(seq) = self.sequences.get_mut(&id) else {
            return;
        };
        if let Some(grammar) = seq.grammar.as_mut() {
            if let Err(e) = grammar.mask_logits(logits) {
                self.fail_grammar(id, e);
                return;
            }
        }
        let (token, logprobs) = seq.sampler.sample_with_logprobs(logits, seq.logprobs);
        let grammar_done = match seq
            .grammar
            .as_mut()
            .map(|g| g.commit(token).map(|()| g.is_finished()))
        {
            Some(Err(e)) => {
                self.fail_grammar(id, e);
                return;
            }
            Some(Ok(done)) => done,
            None => false,
        };
        match seq.accept(token, logprobs, &self.loaded.tokenizer, &self.metrics) {
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

    fn publish_gauges(&self) {
        self.metrics
            .queue_depth
            .set(self.scheduler.waiting() as u64);
        self.metrics.running.set(self.scheduler.running() as u64);
        let pool = self.scheduler.pool();
        let held = pool.total() - pool.free();
        let bytes = held * KvMemory::block_bytes(self.loaded.model.config(), pool.block_tokens());
        self.metrics.kv_cache_bytes.set(bytes as u64);
        self.metrics.kv_cache_usage.set(pool.usage());
    }
}

/// A seed for requests that give none: distinct per request and per run.
fn entropy(id: SeqId) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
