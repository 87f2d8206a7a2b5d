//! Continuous-batching policy, free of any model or I/O.
//!
//! Each step the scheduler admits waiting sequences in arrival order while
//! there is a free running slot, then fills the step's token budget: every
//! decoding sequence contributes its one token first (so a long prompt never
//! stalls running streams by more than one chunk), and the remaining budget
//! goes to prompt chunks in admission order.
//!
//! A request for several choices (`n`) is one group: admitted when it has a
//! slot for every choice, prefilled once as its first sequence, and then
//! [`Scheduler::fork`]ed into one decoding sequence per choice.

use std::collections::VecDeque;

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
    pub admitted: Vec<SeqId>,
    pub work: Vec<Work>,
}

impl Plan {
    pub fn tokens(&self) -> usize {
        self.work.iter().map(Work::tokens).sum()
    }
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
    prompt_len: usize,
    /// Running slots the sequence takes when admitted: one per choice.
    width: usize,
}

struct Running {
    id: SeqId,
    prompt_len: usize,
    fed: usize,
    /// Slots held: the choices it will fork into, until it does.
    slots: usize,
}

pub struct Scheduler {
    limits: SchedulerLimits,
    waiting: VecDeque<Waiting>,
    running: Vec<Running>,
}

impl Scheduler {
    pub fn new(limits: SchedulerLimits) -> Result<Self, LimitsError> {
        limits.validate()?;
        Ok(Self {
            limits,
            waiting: VecDeque::new(),
            running: Vec::new(),
        })
    }

    pub fn limits(&self) -> SchedulerLimits {
        self.limits
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

    /// Queues a sequence whose prompt has `prompt_len` (≥ 1) tokens, for
    /// `width` (≥ 1) choices. The bound is on running + waiting slots
    /// together: requests that arrive between two steps wait here even when
    /// free slots will take them at the next.
    pub fn enqueue(
        &mut self,
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
            prompt_len: prompt_len.max(1),
            width,
        });
        Ok(())
    }

    /// A group's prompt is in its cache and its first token sampled: each
    /// of `choices` now decodes on its own, in a slot the group held
    /// (slots of choices that went away are freed). Returns whether the
    /// group was running with its prompt fed and room for them.
    pub fn fork(&mut self, id: SeqId, choices: &[SeqId]) -> bool {
        let Some(group) = self.running.iter_mut().find(|r| r.id == id) else {
            return false;
        };
        if group.fed < group.prompt_len || choices.len() >= group.slots {
            return false;
        }
        group.slots = 1;
        let prompt_len = group.prompt_len;
        self.running.extend(choices.iter().map(|&id| Running {
            id,
            prompt_len,
            fed: prompt_len,
            slots: 1,
        }));
        true
    }

    /// Forgets a sequence, waiting or running (finished, failed or its
    /// client went away). Returns whether it was known.
    pub fn retire(&mut self, id: SeqId) -> bool {
        if let Some(i) = self.running.iter().position(|r| r.id == id) {
            self.running.remove(i);
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

    /// Decides the next step and records the prompt progress it makes: the
    /// caller must run exactly this work (or retire the sequences it fails).
    pub fn plan(&mut self) -> Plan {
        let mut plan = Plan::default();
        // Oldest first: a wide group at the head waits for its slots
        // rather than be overtaken by narrower requests behind it.
        let mut free = self.limits.max_running - self.running();
        while let Some(w) = self.waiting.front().filter(|w| w.width <= free) {
            free -= w.width;
            plan.admitted.push(w.id);
            self.running.push(Running {
                id: w.id,
                prompt_len: w.prompt_len,
                fed: 0,
                slots: w.width,
            });
            self.waiting.pop_front();
        }

        let mut budget = self.limits.max_batch_tokens;
        for r in self.running.iter().filter(|r| r.fed == r.prompt_len) {
            plan.work.push(Work::Decode { id: r.id });
            budget -= 1;
        }
        for r in self.running.iter_mut().filter(|r| r.fed < r.prompt_len) {
            if budget == 0 {
                break;
            }
            let len = (r.prompt_len - r.fed)
                .min(self.limits.prefill_chunk)
                .min(budget);
            plan.work.push(Work::Prefill {
                id: r.id,
                start: r.fed,
                len,
                completes: r.fed + len == r.prompt_len,
            });
            r.fed += len;
            budget -= len;
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
            Scheduler::new(limits(8, 4, 4)).err(),
            Some(LimitsError::BudgetBelowRunning {
                tokens: 4,
                running: 8
            })
        );
        assert_eq!(
            Scheduler::new(limits(2, 16, 32)).err(),
            Some(LimitsError::ChunkAboveBudget {
                chunk: 32,
                tokens: 16
            })
        );
        assert!(matches!(
            Scheduler::new(limits(0, 16, 8)),
            Err(LimitsError::Zero(_))
        ));
    }

    #[test]
    fn a_long_prompt_is_chunked_and_decodes_are_never_starved() {
        let mut s = Scheduler::new(limits(4, 10, 8)).unwrap();
        s.enqueue(SeqId(1), 3, 1).unwrap();
        assert_eq!(s.plan().work, vec![prefill(1, 0, 3, true)]);
        s.enqueue(SeqId(2), 20, 1).unwrap();
        // Sequence 1 decodes every step while 2's prompt goes in chunks.
        let p = s.plan();
        assert_eq!(p.admitted, vec![SeqId(2)]);
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
        let mut s = Scheduler::new(limits(2, 64, 16)).unwrap();
        // Two running slots and four queue places: six may be in.
        for id in 1..=6 {
            s.enqueue(SeqId(id), 2, 1).unwrap();
        }
        assert_eq!(s.enqueue(SeqId(9), 2, 1), Err(EnqueueError::Full(6)));
        assert_eq!(s.plan().admitted, vec![SeqId(1), SeqId(2)]);
        assert_eq!((s.running(), s.waiting()), (2, 4));
        assert_eq!(s.enqueue(SeqId(9), 2, 1), Err(EnqueueError::Full(4)));
        assert!(s.plan().admitted.is_empty());
        // A finished sequence frees its slot for the oldest waiter.
        assert!(s.retire(SeqId(1)));
        let p = s.plan();
        assert_eq!(p.admitted, vec![SeqId(3)]);
        assert_eq!(
            p.work,
            vec![Work::Decode { id: SeqId(2) }, prefill(3, 0, 2, true)]
        );
    }

    #[test]
    fn prefill_budget_goes_to_the_oldest_prompt_first() {
        let mut s = Scheduler::new(limits(3, 10, 10)).unwrap();
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
        let mut s = Scheduler::new(limits(1, 8, 8)).unwrap();
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
        let mut s = Scheduler::new(limits(4, 16, 8)).unwrap();
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
        assert_eq!(p.admitted, vec![SeqId(1), SeqId(2)]);
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
        assert_eq!(p.admitted, vec![SeqId(3)]);
        assert_eq!(s.running(), 3);
    }

    #[test]
    fn a_choice_gone_before_the_fork_frees_its_slot_at_the_fork() {
        let mut s = Scheduler::new(limits(3, 16, 8)).unwrap();
        s.enqueue(SeqId(1), 2, 3).unwrap();
        s.enqueue(SeqId(2), 2, 1).unwrap();
        assert_eq!(s.plan().admitted, vec![SeqId(1)]);
        assert!(!s.fork(SeqId(9), &[]), "no such group");
        // One of the two other choices went away: one slot comes free.
        assert!(s.fork(SeqId(1), &[SeqId(10)]));
        assert_eq!(s.running(), 2);
        let p = s.plan();
        assert_eq!(p.admitted, vec![SeqId(2)]);
        assert_eq!(s.running(), 3);
    }

    #[test]
    fn a_group_forks_only_once_its_prompt_is_fed() {
        let mut s = Scheduler::new(limits(3, 16, 4)).unwrap();
        s.enqueue(SeqId(1), 6, 2).unwrap();
        assert_eq!(s.plan().work, vec![prefill(1, 0, 4, false)]);
        assert!(!s.fork(SeqId(1), &[SeqId(10)]), "prompt not yet fed");
        assert_eq!(s.plan().work, vec![prefill(1, 4, 2, true)]);
        assert!(s.fork(SeqId(1), &[SeqId(10)]));
    }

    #[test]
    fn a_wide_group_at_the_head_is_not_overtaken() {
        let mut s = Scheduler::new(limits(3, 16, 8)).unwrap();
        s.enqueue(SeqId(1), 2, 2).unwrap();
        s.enqueue(SeqId(2), 2, 3).unwrap();
        s.enqueue(SeqId(3), 2, 1).unwrap();
        assert_eq!(s.plan().admitted, vec![SeqId(1)]);
        // One slot is free, but the group of three came first.
        assert!(s.plan().admitted.is_empty());
        assert!(s.retire(SeqId(1)));
        assert_eq!(s.plan().admitted, vec![SeqId(2)]);
    }

    #[test]
    fn the_queue_bound_counts_a_slot_per_choice() {
        // Three running slots and four queue places: seven slots in all.
        let mut s = Scheduler::new(limits(3, 8, 8)).unwrap();
        s.enqueue(SeqId(1), 2, 3).unwrap();
        s.enqueue(SeqId(2), 2, 3).unwrap();
        assert_eq!(s.enqueue(SeqId(3), 2, 2), Err(EnqueueError::Full(2)));
        s.enqueue(SeqId(3), 2, 1).unwrap();
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
            let mut s = Scheduler::new(SchedulerLimits {
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
