//! Continuous-batching policy, free of any model or I/O.
//!
//! Each step the scheduler first makes room for the sequences already
//! running: every decoding sequence gets the KV block its next position
//! needs, and when none is free the youngest running sequence is preempted
//! (its blocks given back, its tokens computed again when it is admitted
//! anew — vLLM's recompute preemption; never a failed request). Then it
//! admits waiting sequences in arrival order while there is a running slot
//! and KV blocks for the whole prompt, less what the prefix cache already
//! holds. Then it fills the step's token budget: every decoding sequence
//! contributes its one token first (so a long prompt never stalls running
//! streams by more than one chunk), and the remaining budget goes to prompt
//! chunks in admission order.
//!
//! The blocks themselves are [`BlockPool`]'s bookkeeping; the tokens a
//! sequence holds are its owner's, passed in when needed (they name the
//! blocks for prefix caching).
//!
//! A request for several choices (`n`) is one group: admitted when it has a
//! slot for every choice, prefilled once as its first sequence, and then
//! [`Scheduler::fork`]ed into one decoding sequence per choice, sharing the
//! prompt's full blocks.

use std::collections::VecDeque;

use super::kv_blocks::{BlockError, BlockId, BlockName, BlockPool, BlockTable};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerLimits {
    /// Sequences decoding or prefilling at once.
    pub max_running: usize,
    /// Sequences waiting for a running slot.
    pub max_waiting: usize,
    /// Tokens fed through the model in one step (decodes + prompt chunks).
    pub max_batch_tokens: usize,
    /// The largest piece of one prompt fed in a step.
    pub prefill_chunk: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitsError {
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error(
        "max batch tokens ({tokens}) must cover one decode token per running sequence ({running})"
    )]
    BudgetBelowRunning { tokens: usize, running: usize },
    #[error("prefill chunk ({chunk}) must not exceed max batch tokens ({tokens})")]
    ChunkAboveBudget { chunk: usize, tokens: usize },
}
impl SchedulerLimits {
    pub fn validate(&self) -> Result<(), LimitsError> {
        for (value, name) in [
            (self.max_running, "max running sequences"),
            (self.max_batch_tokens, "max batch tokens"),
            (self.prefill_chunk, "prefill chunk"),
        ] {
            if value == 0 {
                return Err(LimitsError::Zero(name));
            }
        }
        if self.max_batch_tokens < self.max_running {
            return Err(LimitsError::BudgetBelowRunning {
                tokens: self.max_batch_tokens,
                running: self.max_running,
            });
        }
        if self.prefill_chunk > self.max_batch_tokens {
            return Err(LimitsError::ChunkAboveBudget {
                chunk: self.prefill_chunk,
                tokens: self.max_batch_tokens,
            });
        }
        Ok(())
    }
}

/// What one sequence does in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Feed prompt tokens `start..start + len`; `completes` when that is the
    /// prompt's end, so the step samples the first new token.
    Prefill {
        id: SeqId,
        start: usize,
        len: usize,
        completes: bool,
    },
    /// Feed the last sampled token and sample the next.
    Decode { id: SeqId },
}

impl Work {
    pub fn id(&self) -> SeqId {
        match self {
            Self::Prefill { id, .. } | Self::Decode { id } => *id,
        }
    }

    pub fn tokens(&self) -> usize {
        match self {
            Self::Prefill { len, .. } => *len,
            Self::Decode { .. } => 1,
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sequences that left the queue for a running slot this step.
    pub admitted: Vec<Admission>,
    /// Running sequences sent back to the queue to free KV blocks: their
    /// caches are gone, and when admitted again they are fed every token
    /// they had (the prefix cache usually still holds most of them).
    pub preempted: Vec<SeqId>,
    /// Waiting sequences whose prompt (with a block for each further
    /// choice's copy of its last one) needs more KV blocks than there are
    /// at all: they can never run. Start-up validation makes the pool hold
    /// one whole context, so only a wide request near the context gets here.
    pub refused: Vec<SeqId>,
    pub work: Vec<Work>,
}

impl Plan {
    pub fn tokens(&self) -> usize {
        self.work.iter().map(Work::tokens).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub id: SeqId,
    /// Tokens it is fed before it samples (its prompt, or all it had).
    pub tokens: usize,
    /// Leading prompt positions found in the prefix cache: not fed again.
    pub cached_tokens: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnqueueError {
    #[error("the queue is full ({0} waiting)")]
    Full(usize),
    #[error("{width} choices can never run at once: at most {max_running} sequences run")]
    TooWide { width: usize, max_running: usize },
}

struct Waiting {
    id: SeqId,
    /// The prefix cache's scope it shares blocks in (see `kv_blocks`).
    scope: Option<BlockName>,
    /// Tokens to feed before the next is sampled: the prompt, or for a
    /// preempted sequence every token it had.
    target: usize,
    /// Running slots the sequence takes when admitted: one per choice.
    width: usize,
}

struct Running {
    id: SeqId,
    scope: Option<BlockName>,
    target: usize,
    /// Positions in the cache once this plan's work has run.
    fed: usize,
    /// Slots held: the choices it will fork into, until it does.
    slots: usize,
    table: BlockTable,
    /// Until a group forks: a block for each other choice's copy of the
    /// prompt's unfinished last block, taken at admission so that the fork
    /// never waits for memory.
    for_choices: BlockTable,
}

pub struct Scheduler {
    limits: SchedulerLimits,
    pool: BlockPool,
    waiting: VecDeque<Waiting>,
    /// In admission order: the last is the youngest, preempted first.
    running: Vec<Running>,
}

impl Scheduler {
    pub fn new(limits: SchedulerLimits, pool: BlockPool) -> Result<Self, LimitsError> {
        limits.validate()?;
        Ok(Self {
            limits,
            pool,
            waiting: VecDeque::new(),
            running: Vec::new(),
        })
    }

    pub fn limits(&self) -> SchedulerLimits {
        self.limits
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Running slots taken (a group not yet forked holds one per choice).
    pub fn running(&self) -> usize {
        self.running.iter().map(|r| r.slots).sum()
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// A running sequence's KV blocks, in position order.
    pub fn blocks(&self, id: SeqId) -> Option<&[BlockId]> {
        self.running
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.table.blocks.as_slice())
    }

    /// Queues a sequence whose prompt has `prompt_len` (≥ 1) tokens, for
    /// `width` (≥ 1) choices, sharing cached blocks with every prompt.
    pub fn enqueue(
        &mut self,
        id: SeqId,
        prompt_len: usize,
        width: usize,
    ) -> Result<(), EnqueueError> {
        self.enqueue_in(None, id, prompt_len, width)
    }

    /// [`Self::enqueue`] within a prefix cache scope (e.g. a subscription):
    /// cached blocks are shared only with prompts of the same scope. The
    /// bound is on running + waiting slots together: requests that arrive
    /// between two steps wait here even when free slots will take them at
    /// the next.
    pub fn enqueue_in(
        &mut self,
        scope: Option<&str>,
        id: SeqId,
        prompt_len: usize,
        width: usize,
    ) -> Result<(), EnqueueError> {
        let width = width.max(1);
        if width > self.limits.max_running {
            return Err(EnqueueError::TooWide {
                width,
                max_running: self.limits.max_running,
            });
        }
        let capacity = self.limits.max_running + self.limits.max_waiting;
        let queued: usize = self.waiting.iter().map(|w| w.width).sum();
        if self.running() + queued + width > capacity {
            return Err(EnqueueError::Full(self.waiting.len()));
        }
        self.waiting.push_back(Waiting {
            id,
            scope: scope.map(|s| self.pool.scope(s)),
            target: prompt_len.max(1),
            width,
        });
        Ok(())
    }

    /// A group's prompt is in its cache and its first token sampled: each
    /// of `choices` now decodes on its own, in a slot the group held
    /// (slots of choices that went away are freed), sharing the prompt's
    /// full blocks. `prompt` is the group's. Returns the `(from, to)` block
    /// copies the cache must make (the prompt's unfinished last block, for
    /// each choice), or `None` when the group is not running with its
    /// prompt fed and a slot for each choice.
    pub fn fork(
        &mut self,
        id: SeqId,
        choices: &[SeqId],
        prompt: &[u32],
    ) -> Option<Vec<(BlockId, BlockId)>> {
        let group = self.running.iter_mut().find(|r| r.id == id)?;
        if group.fed < group.target || choices.len() >= group.slots {
            return None;
        }
        group.slots = 1;
        let (target, fed, scope) = (group.target, group.fed, group.scope);
        self.pool.commit(&mut group.table, prompt, fed);
        // The blocks set aside at admission go back and are taken again at
        // once (unnamed free blocks are taken first, last freed first), so
        // every share below finds its block.
        self.pool.release(std::mem::take(&mut group.for_choices));
        let table = group.table.clone();
        let mut copies = Vec::new();
        for &choice in choices {
            let Ok((table, copied)) = self.pool.share(&table) else {
                // Unreachable (see above); the choice is left out and its
                // caller fails it.
                break;
            };
            copies.extend(copied);
            self.running.push(Running {
                id: choice,
                scope,
                target,
                fed,
                slots: 1,
                table,
                for_choices: BlockTable::default(),
            });
        }
        Some(copies)
    }

    /// Forgets a sequence whose every planned step ran (it finished, or its
    /// client went away): its full blocks are named first, with `tokens`
    /// (its own), so that later prompts find them. Returns whether it was
    /// known.
    pub fn finish(&mut self, id: SeqId, tokens: &[u32]) -> bool {
        if let Some(r) = self.running.iter_mut().find(|r| r.id == id) {
            self.pool.commit(&mut r.table, tokens, r.fed);
        }
        self.retire(id)
    }

    /// Forgets a sequence, waiting or running, without naming its blocks
    /// (it failed: what its last step wrote may be incomplete), giving back
    /// its blocks. Returns whether it was known.
    pub fn retire(&mut self, id: SeqId) -> bool {
        if let Some(i) = self.running.iter().position(|r| r.id == id) {
            let r = self.running.remove(i);
            self.release(r);
            return true;
        }
        if let Some(i) = self.waiting.iter().position(|w| w.id == id) {
            self.waiting.remove(i);
            return true;
        }
        false
    }

    /// Waiting sequences, oldest first (e.g. to fail them at shutdown).
    pub fn waiting_ids(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.waiting.iter().map(|w| w.id)
    }

    /// Sends `running[i]` back to the head of the queue, to be fed every
    /// token it has when admitted again; its blocks go back to the pool
    /// (the full ones keep their names, so that recomputation mostly hits).
    fn preempt<'t>(&mut self, i: usize, tokens: &dyn Fn(SeqId) -> &'t [u32]) {
        let r = self.running.remove(i);
        let had = tokens(r.id).len().max(r.fed);
        let (id, width, scope) = (r.id, r.slots, r.scope);
        self.release(r);
        self.waiting.push_front(Waiting {
            id,
            scope,
            target: had.max(1),
            width,
        });
    }

    /// Gives back every block a running sequence held: its table's and
    /// those set aside for its choices.
    fn release(&mut self, r: Running) {
        self.pool.release(r.table);
        self.pool.release(r.for_choices);
    }

    /// Decides the next step and records the progress it makes: the caller
    /// must run exactly this work (or retire the sequences it fails).
    /// `tokens` gives each sequence's tokens so far (prompt, then those
    /// sampled): every fed position's, and for a decoding sequence the one
    /// it feeds next.
    pub fn plan<'t>(&mut self, tokens: &dyn Fn(SeqId) -> &'t [u32]) -> Plan {
        let mut plan = Plan::default();
        // What the last step computed is final now: its full blocks get
        // their names, so that prompts admitted below can share them.
        for r in &mut self.running {
            self.pool.commit(&mut r.table, tokens(r.id), r.fed);
        }
        self.grow_decoders(tokens, &mut plan);
        // After a preemption there are no blocks to spare: admitting now
        // would only be preempted next.
        if plan.preempted.is_empty() {
            self.admit(tokens, &mut plan);
        }

        let mut budget = self.limits.max_batch_tokens;
        for r in self.running.iter_mut().filter(|r| r.fed >= r.target) {
            plan.work.push(Work::Decode { id: r.id });
            r.fed += 1;
            budget -= 1;
        }
        for r in self.running.iter_mut().filter(|r| r.fed < r.target) {
            if budget == 0 {
                break;
            }
            let len = (r.target - r.fed)
                .min(self.limits.prefill_chunk)
                .min(budget);
            plan.work.push(Work::Prefill {
                id: r.id,
                start: r.fed,
                len,
                completes: r.fed + len == r.target,
            });
            r.fed += len;
            budget -= len;
        }
        plan
    }

    /// Every decoding sequence, oldest first, gets a block for the
    /// position it feeds next, preempting the youngest when none is free.
    fn grow_decoders<'t>(&mut self, tokens: &dyn Fn(SeqId) -> &'t [u32], plan: &mut Plan) {
        let mut i = 0;
        while i < self.running.len() {
            let r = &mut self.running[i];
            if r.fed < r.target {
                i += 1;
                continue;
            }
            let need = r.fed + 1;
            match self.pool.grow(&mut r.table, need) {
                Ok(()) => i += 1,
                Err(BlockError::OutOfBlocks { .. }) => {
                    // The youngest goes, this one included when it is the
                    // youngest (a decoder younger than a sequence still
                    // prefilling preempts itself); the oldest running
                    // sequence always ends up with room (the pool holds at
                    // least one whole context).
                    let victim = self.running.len() - 1;
                    plan.preempted.push(self.running[victim].id);
                    self.preempt(victim, tokens);
                }
            }
        }
    }

    /// Admits waiting sequences, oldest first, while each has slots and
    /// blocks for its whole prompt beyond what the prefix cache holds.
    fn admit<'t>(&mut self, tokens: &dyn Fn(SeqId) -> &'t [u32], plan: &mut Plan) {
        // A wide group at the head waits for its slots rather than be
        // overtaken by narrower requests behind it.
        let mut free = self.limits.max_running - self.running();
        while let Some(w) = self.waiting.front().filter(|w| w.width <= free) {
            let all = tokens(w.id);
            let prompt = &all[..w.target.min(all.len())];
            let shape = self.pool.shape();
            let needed = shape.group_blocks(w.target, w.width);
            if needed > shape.blocks {
                plan.refused.push(w.id);
                self.waiting.pop_front();
                continue;
            }
            // Each other choice's copy of the prompt's partial last block.
            let others = needed - shape.blocks_for(w.target);
            let Ok(admitted) = self.pool.admit_leaving(prompt, w.target, w.scope, others) else {
                break;
            };
            let mut for_choices = BlockTable::default();
            if others > 0 {
                // Cannot fail: admitted only while they stay free.
                let _ = self
                    .pool
                    .grow(&mut for_choices, others * self.pool.block_tokens());
            }
            free -= w.width;
            plan.admitted.push(Admission {
                id: w.id,
                tokens: w.target,
                cached_tokens: admitted.cached_tokens,
            });
            self.running.push(Running {
                id: w.id,
                scope: w.scope,
                target: w.target,
                fed: admitted.cached_tokens,
                slots: w.width,
                table: admitted.table,
                for_choices,
            });
            self.waiting.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// The scheduler with the tokens its owner would keep: each request's
    /// prompt distinct (no prefix hits unless a test makes them), each
    /// choice the group's prompt, in a pool that never runs short.
    struct Sched {
        s: Scheduler,
        tokens: HashMap<SeqId, Vec<u32>>,
    }

    impl Sched {
        fn new(limits: SchedulerLimits) -> Result<Sched, LimitsError> {
            Sched::with_pool(limits, BlockPool::new(4096, 4))
        }

        fn with_pool(limits: SchedulerLimits, pool: BlockPool) -> Result<Sched, LimitsError> {
            Ok(Sched {
                s: Scheduler::new(limits, pool)?,
                tokens: HashMap::new(),
            })
        }

        fn enqueue(&mut self, id: SeqId, len: usize, width: usize) -> Result<(), EnqueueError> {
            let prompt = (0..len as u32).map(|i| (id.0 as u32) << 16 | i).collect();
            self.enqueue_tokens(id, prompt, width)
        }

        fn enqueue_tokens(
            &mut self,
            id: SeqId,
            prompt: Vec<u32>,
            width: usize,
        ) -> Result<(), EnqueueError> {
            let len = prompt.len();
            self.tokens.insert(id, prompt);
            self.s.enqueue(id, len, width)
        }

        fn plan(&mut self) -> Plan {
            let tokens = &self.tokens;
            self.s
                .plan(&|id| tokens.get(&id).map_or(&[][..], Vec::as_slice))
        }

        fn fork(&mut self, id: SeqId, choices: &[SeqId]) -> bool {
            let prompt = self.tokens.get(&id).cloned().unwrap_or_default();
            for c in choices {
                self.tokens.insert(*c, prompt.clone());
            }
            self.s.fork(id, choices, &prompt).is_some()
        }
    }

    impl std::ops::Deref for Sched {
        type Target = Scheduler;
        fn deref(&self) -> &Scheduler {
            &self.s
        }
    }

    impl std::ops::DerefMut for Sched {
        fn deref_mut(&mut self) -> &mut Scheduler {
            &mut self.s
        }
    }

    fn ids(admitted: &[Admission]) -> Vec<SeqId> {
        admitted.iter().map(|a| a.id).collect()
    }

    fn limits(
        max_running: usize,
        max_batch_tokens: usize,
        prefill_chunk: usize,
    ) -> SchedulerLimits {
        SchedulerLimits {
            max_running,
            max_waiting: 4,
            max_batch_tokens,
            prefill_chunk,
        }
    }

    fn prefill(id: u64, start: usize, len: usize, completes: bool) -> Work {
        Work::Prefill {
            id: SeqId(id),
            start,
            len,
            completes,
        }
    }

    #[test]
    fn limits_are_validated() {
        assert_eq!(
            Sched::new(limits(8, 4, 4)).err(),
            Some(LimitsError::BudgetBelowRunning {
                tokens: 4,
                running: 8
            })
        );
        assert_eq!(
            Sched::new(limits(2, 16, 32)).err(),
            Some(LimitsError::ChunkAboveBudget {
                chunk: 32,
                tokens: 16
            })
        );
        assert!(matches!(
            Sched::new(limits(0, 16, 8)),
            Err(LimitsError::Zero(_))
        ));
    }

    #[test]
    fn a_long_prompt_is_chunked_and_decodes_are_never_starved() {
        let mut s = Sched::new(limits(4, 10, 8)).unwrap();
        s.enqueue(SeqId(1), 3, 1).unwrap();
        assert_eq!(s.plan().work, vec![prefill(1, 0, 3, true)]);
        s.enqueue(SeqId(2), 20, 1).unwrap();
        // Sequence 1 decodes every step while 2's prompt goes in chunks.
        let p = s.plan();
        assert_eq!(ids(&p.admitted), vec![SeqId(2)]);
        assert_eq!(
            p.work,
            vec![Work::Decode { id: SeqId(1) }, prefill(2, 0, 8, false)]
        );
        assert_eq!(
            s.plan().work,
            vec![Work::Decode { id: SeqId(1) }, prefill(2, 8, 8, false)]
        );
        assert_eq!(
            s.plan().work,
            vec![Work::Decode { id: SeqId(1) }, prefill(2, 16, 4, true)]
        );
        assert_eq!(
            s.plan().work,
            vec![Work::Decode { id: SeqId(1) }, Work::Decode { id: SeqId(2) }]
        );
    }

    #[test]
    fn admission_is_fifo_and_bounded_by_running_slots() {
        let mut s = Sched::new(limits(2, 64, 16)).unwrap();
        // Two running slots and four queue places: six may be in.
        for id in 1..=6 {
            s.enqueue(SeqId(id), 2, 1).unwrap();
        }
        assert_eq!(s.enqueue(SeqId(9), 2, 1), Err(EnqueueError::Full(6)));
        assert_eq!(ids(&s.plan().admitted), vec![SeqId(1), SeqId(2)]);
        assert_eq!((s.running(), s.waiting()), (2, 4));
        assert_eq!(s.enqueue(SeqId(9), 2, 1), Err(EnqueueError::Full(4)));
        assert!(s.plan().admitted.is_empty());
        // A finished sequence frees its slot for the oldest waiter.
        assert!(s.retire(SeqId(1)));
        let p = s.plan();
        assert_eq!(ids(&p.admitted), vec![SeqId(3)]);
        assert_eq!(
            p.work,
            vec![Work::Decode { id: SeqId(2) }, prefill(3, 0, 2, true)]
        );
    }

    #[test]
    fn prefill_budget_goes_to_the_oldest_prompt_first() {
        let mut s = Sched::new(limits(3, 10, 10)).unwrap();
        s.enqueue(SeqId(1), 8, 1).unwrap();
        s.enqueue(SeqId(2), 8, 1).unwrap();
        assert_eq!(
            s.plan().work,
            vec![prefill(1, 0, 8, true), prefill(2, 0, 2, false)]
        );
        assert_eq!(
            s.plan().work,
            vec![Work::Decode { id: SeqId(1) }, prefill(2, 2, 6, true)]
        );
    }

    #[test]
    fn a_retired_waiting_sequence_is_never_admitted() {
        let mut s = Sched::new(limits(1, 8, 8)).unwrap();
        s.enqueue(SeqId(1), 1, 1).unwrap();
        s.enqueue(SeqId(2), 1, 1).unwrap();
        s.plan();
        assert!(s.retire(SeqId(2)));
        assert!(!s.retire(SeqId(2)));
        s.retire(SeqId(1));
        assert_eq!(s.plan(), Plan::default());
        assert!(s.is_idle());
    }

    #[test]
    fn a_group_waits_for_a_slot_per_choice_then_forks_into_decoders() {
        let mut s = Sched::new(limits(4, 16, 8)).unwrap();
        assert_eq!(
            s.enqueue(SeqId(9), 2, 5),
            Err(EnqueueError::TooWide {
                width: 5,
                max_running: 4
            })
        );
        s.enqueue(SeqId(1), 2, 1).unwrap();
        s.enqueue(SeqId(2), 4, 3).unwrap();
        s.enqueue(SeqId(3), 2, 1).unwrap();
        // 1 and the group of three fill the four slots; 3 waits behind them.
        let p = s.plan();
        assert_eq!(ids(&p.admitted), vec![SeqId(1), SeqId(2)]);
        assert_eq!(p.work, vec![prefill(1, 0, 2, true), prefill(2, 0, 4, true)]);
        assert_eq!((s.running(), s.waiting()), (4, 1));
        // The group's prompt is fed once; its choices then decode alone.
        assert!(s.fork(SeqId(2), &[SeqId(20), SeqId(21)]));
        assert!(!s.fork(SeqId(2), &[SeqId(22)]), "forked twice");
        assert_eq!(
            s.plan().work,
            vec![
                Work::Decode { id: SeqId(1) },
                Work::Decode { id: SeqId(2) },
                Work::Decode { id: SeqId(20) },
                Work::Decode { id: SeqId(21) },
            ]
        );
        // A choice that ends frees its slot for the next waiter.
        s.retire(SeqId(1));
        s.retire(SeqId(21));
        let p = s.plan();
        assert_eq!(ids(&p.admitted), vec![SeqId(3)]);
        assert_eq!(s.running(), 3);
    }

    #[test]
    fn a_choice_gone_before_the_fork_frees_its_slot_at_the_fork() {
        let mut s = Sched::new(limits(3, 16, 8)).unwrap();
        s.enqueue(SeqId(1), 2, 3).unwrap();
        s.enqueue(SeqId(2), 2, 1).unwrap();
        assert_eq!(ids(&s.plan().admitted), vec![SeqId(1)]);
        assert!(!s.fork(SeqId(9), &[]), "no such group");
        // One of the two other choices went away: one slot comes free.
        assert!(s.fork(SeqId(1), &[SeqId(10)]));
        assert_eq!(s.running(), 2);
        let p = s.plan();
        assert_eq!(ids(&p.admitted), vec![SeqId(2)]);
        assert_eq!(s.running(), 3);
    }

    #[test]
    fn a_group_forks_only_once_its_prompt_is_fed() {
        let mut s = Sched::new(limits(3, 16, 4)).unwrap();
        s.enqueue(SeqId(1), 6, 2).unwrap();
        assert_eq!(s.plan().work, vec![prefill(1, 0, 4, false)]);
        assert!(!s.fork(SeqId(1), &[SeqId(10)]), "prompt not yet fed");
        assert_eq!(s.plan().work, vec![prefill(1, 4, 2, true)]);
        assert!(s.fork(SeqId(1), &[SeqId(10)]));
    }

    #[test]
    fn a_wide_group_at_the_head_is_not_overtaken() {
        let mut s = Sched::new(limits(3, 16, 8)).unwrap();
        s.enqueue(SeqId(1), 2, 2).unwrap();
        s.enqueue(SeqId(2), 2, 3).unwrap();
        s.enqueue(SeqId(3), 2, 1).unwrap();
        assert_eq!(ids(&s.plan().admitted), vec![SeqId(1)]);
        // One slot is free, but the group of three came first.
        assert!(s.plan().admitted.is_empty());
        assert!(s.retire(SeqId(1)));
        assert_eq!(ids(&s.plan().admitted), vec![SeqId(2)]);
    }

    #[test]
    fn the_queue_bound_counts_a_slot_per_choice() {
        // Three running slots and four queue places: seven slots in all.
        let mut s = Sched::new(limits(3, 8, 8)).unwrap();
        s.enqueue(SeqId(1), 2, 3).unwrap();
        s.enqueue(SeqId(2), 2, 3).unwrap();
        assert_eq!(s.enqueue(SeqId(3), 2, 2), Err(EnqueueError::Full(2)));
        s.enqueue(SeqId(3), 2, 1).unwrap();
    }

    /// A question of two tokens after a system prompt of twelve (three
    /// blocks of four).
    fn ask(q: u32) -> Vec<u32> {
        (100..112).chain([q, q]).collect()
    }

    /// A group's prompt whose prefix a running sequence holds needs only
    /// its own blocks: counting the held hits as blocks to take kept it
    /// (and the whole queue behind it) waiting for that sequence to end.
    #[test]
    fn a_group_counts_only_the_blocks_its_cache_hits_do_not_cover() {
        // Seven blocks of four positions.
        let mut s = Sched::with_pool(limits(4, 64, 64), BlockPool::new(7, 4)).unwrap();
        s.enqueue_tokens(SeqId(1), ask(1), 1).unwrap();
        assert_eq!(ids(&s.plan().admitted), vec![SeqId(1)]);
        s.tokens.get_mut(&SeqId(1)).unwrap().push(7);
        // 1 holds four blocks (three of them the system prompt's, named at
        // this plan); three are free. Two choices of a prompt that shares
        // them need one block and a copy of its partial last one.
        s.enqueue_tokens(SeqId(2), ask(2), 2).unwrap();
        let p = s.plan();
        assert_eq!(ids(&p.admitted), vec![SeqId(2)]);
        assert_eq!(p.admitted[0].cached_tokens, 12);
    }

    #[test]
    fn a_prompt_waits_for_blocks_and_a_shared_prefix_is_not_fed_again() {
        // Six blocks of four positions.
        let mut s = Sched::with_pool(limits(4, 64, 64), BlockPool::new(6, 4)).unwrap();
        s.enqueue_tokens(SeqId(1), ask(1), 1).unwrap();
        s.enqueue_tokens(SeqId(2), ask(2), 1).unwrap();
        // 14 tokens take four blocks: the second waits for the first's.
        let p = s.plan();
        assert_eq!(ids(&p.admitted), vec![SeqId(1)]);
        assert_eq!(p.work, vec![prefill(1, 0, 14, true)]);
        assert_eq!(s.waiting(), 1);
        // It ends after its first token: its full blocks keep their names.
        s.tokens.get_mut(&SeqId(1)).unwrap().push(7);
        let tokens = s.tokens[&SeqId(1)].clone();
        s.finish(SeqId(1), &tokens);
        // Its three full blocks of the system prompt are found.
        let p = s.plan();
        assert_eq!(
            p.admitted,
            vec![Admission {
                id: SeqId(2),
                tokens: 14,
                cached_tokens: 12
            }]
        );
        assert_eq!(p.work, vec![prefill(2, 12, 2, true)]);
    }

    #[test]
    fn a_group_is_refused_only_when_its_prompt_and_copies_can_never_fit() {
        // Four blocks of four positions.
        let mut s = Sched::with_pool(limits(4, 64, 64), BlockPool::new(4, 4)).unwrap();
        // 16 tokens fill the four blocks exactly: the choices share them
        // all and copy none, so three choices fit.
        s.enqueue_tokens(SeqId(1), (0..16).collect(), 3).unwrap();
        // 14 tokens take four blocks, the last one partial: each other
        // choice needs a copy of it, six blocks in all.
        s.enqueue_tokens(SeqId(2), (0..14).collect(), 3).unwrap();
        let p = s.plan();
        assert_eq!(ids(&p.admitted), vec![SeqId(1)]);
        assert!(p.refused.is_empty());
        s.retire(SeqId(1));
        let p = s.plan();
        assert_eq!(p.refused, vec![SeqId(2)]);
        assert!(p.admitted.is_empty());
    }

    #[test]
    fn the_youngest_is_preempted_for_a_decoder_and_fed_all_its_tokens_again() {
        // Four blocks of four positions; two prompts of six tokens take two
        // blocks each, and the first to need a third block preempts.
        let mut s = Sched::with_pool(limits(4, 64, 64), BlockPool::new(4, 4)).unwrap();
        s.enqueue(SeqId(1), 6, 1).unwrap();
        s.enqueue(SeqId(2), 6, 1).unwrap();
        assert_eq!(
            s.plan().work,
            vec![prefill(1, 0, 6, true), prefill(2, 0, 6, true)]
        );
        // Each samples and decodes until position 8 needs a third block.
        for _ in 0..3 {
            for id in [1, 2] {
                s.tokens.get_mut(&SeqId(id)).unwrap().push(9);
            }
            let p = s.plan();
            if !p.preempted.is_empty() {
                // Sequence 2, the younger, went back with its 9 tokens
                // (6 prompt + 3 sampled, the last not yet fed).
                assert_eq!(p.preempted, vec![SeqId(2)]);
                assert_eq!(p.work, vec![Work::Decode { id: SeqId(1) }]);
                assert_eq!(s.waiting(), 1);
                s.retire(SeqId(1));
                let p = s.plan();
                assert_eq!(ids(&p.admitted), vec![SeqId(2)]);
                // Both its full blocks were named before it left; the
                // second, released first, was evicted for sequence 1's
                // third, and the first is found.
                assert_eq!(p.admitted[0].cached_tokens, 4);
                assert_eq!(p.work, vec![prefill(2, 4, 5, true)]);
                return;
            }
            assert_eq!(p.work.len(), 2);
        }
        panic!("no preemption");
    }

    /// Limits, then requests of `(prompt length, choices, one choice hangs
    /// up before the fork)` that fit them.
    fn limits_and_requests(
    ) -> impl Strategy<Value = (usize, usize, usize, Vec<(usize, usize, bool)>)> {
        (1usize..6).prop_flat_map(|running| {
            (
                Just(running),
                0usize..40,
                1usize..30,
                proptest::collection::vec((1usize..50, 1..=running, any::<bool>()), 1..12),
            )
        })
    }

    proptest! {
        /// Whatever arrives, a step stays within its budgets, every decoding
        /// sequence is in every step, each prompt is fed exactly once, in
        /// order, a group's choices decode only after its prefill, and slots
        /// of choices gone before the fork come back.
        #[test]
        fn plans_respect_budgets_and_feed_each_prompt_once(
            (running, extra, chunk, requests) in limits_and_requests(),
        ) {
            let tokens = running + extra.max(chunk);
            let slots: usize = requests.iter().map(|r| r.1).sum();
            let mut s = Sched::new(SchedulerLimits {
                max_running: running,
                max_waiting: slots,
                max_batch_tokens: tokens,
                prefill_chunk: chunk.min(tokens),
            }).unwrap();
            for (i, (len, width, _)) in requests.iter().enumerate() {
                s.enqueue(SeqId(i as u64), *len, *width).unwrap();
            }
            // Choice `c` of request `i` (c ≥ 1) is sequence 1000 * c + i.
            let request_of = |id: SeqId| (id.0 % 1000) as usize;
            let mut fed = vec![0usize; requests.len()];
            let mut decodes = std::collections::HashMap::new();
            let mut expected = 0;
            for _ in 0..10_000 {
                if s.is_idle() {
                    break;
                }
                let plan = s.plan();
                prop_assert!(plan.tokens() <= tokens);
                prop_assert!(s.running() <= running);
                prop_assert!(plan.work.len() <= running);
                for w in &plan.work {
                    match *w {
                        Work::Prefill { id, start, len, completes } => {
                            let i = id.0 as usize;
                            let (prompt, width, one_gone) = requests[i];
                            prop_assert_eq!(start, fed[i]);
                            prop_assert!(len <= chunk);
                            fed[i] += len;
                            prop_assert_eq!(completes, fed[i] == prompt);
                            if completes {
                                let mut choices: Vec<SeqId> = (1..width)
                                    .map(|c| SeqId(1000 * c as u64 + id.0))
                                    .collect();
                                if one_gone {
                                    choices.pop();
                                }
                                expected += 1 + choices.len();
                                prop_assert!(s.fork(id, &choices));
                            }
                        }
                        Work::Decode { id } => {
                            let i = request_of(id);
                            prop_assert_eq!(fed[i], requests[i].0);
                            let n = decodes.entry(id).or_insert(0usize);
                            *n += 1;
                            // Each sequence generates three tokens, then ends.
                            if *n == 3 {
                                s.retire(id);
                            }
                        }
                    }
                }
            }
            prop_assert!(s.is_idle());
            prop_assert_eq!(fed, requests.iter().map(|r| r.0).collect::<Vec<_>>());
            // Every choice that stayed decoded.
            prop_assert_eq!(decodes.len(), expected);
        }
    }
}
