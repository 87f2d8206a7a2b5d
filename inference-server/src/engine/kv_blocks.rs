//! The KV cache as a pool of fixed-size blocks, and which blocks each
//! sequence holds: the bookkeeping of a paged cache with automatic prefix
//! caching, as vLLM keeps it (PagedAttention's block tables; full blocks
//! named by their content and their whole prefix, shared read-only, evicted
//! least recently used). Pure logic: where the keys and values live is the
//! cache's business, this says only which block numbers a sequence may
//! write and read.
//!
//! - A **block** holds [`BlockPool::block_tokens`] positions of every layer.
//! - A sequence's **block table** lists its blocks in position order.
//! - A **full** block whose tokens are final is *committed*: named by the
//!   hash of its tokens chained to its predecessor's name, so a name stands
//!   for the whole prefix up to the block's end. A later prompt that starts
//!   with the same tokens takes the same blocks instead of computing them.
//!   A hit is checked against the block's stored tokens and its
//!   predecessor's name, so a colliding name alone cannot hand out another
//!   prompt's keys and values: that would take two prefixes whose 64-bit
//!   names collide and then continue with the same tokens. Names are keyed
//!   at random per pool, so no such pair can be searched for offline.
//! - A prompt may be admitted in a **scope** (the gateway's subscription):
//!   its first block's predecessor is then the scope's name, so prompts
//!   share cached blocks only within one scope. Unscoped, every prompt
//!   shares with every other, and how much of a prompt was cached (its
//!   `cached_tokens`, its time to first token) would tell one tenant what
//!   another sent.
//! - A block nobody holds is **free**. A free committed block keeps its name
//!   (a later prompt may still hit it) until a new block is needed and no
//!   unnamed free block is left: then the least recently released one is
//!   taken (LRU eviction).
//!
//! Invariants (checked by the property test): every block is held by
//! exactly as many tables as its reference count says, or free with a
//! count of 0; free blocks are each in exactly one of the two free lists;
//! a name maps to exactly one block, which carries that name.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};

pub use crate::model::BlockId;

/// A committed block's name: its tokens hashed together with its
/// predecessor's name (for a sequence's first block, its scope's name or
/// `None`). Also a scope's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockName(u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// Not enough free blocks: the caller waits or preempts, never fails
    /// the request.
    #[error("{needed} KV blocks needed, {free} free")]
    OutOfBlocks { needed: usize, free: usize },
}

#[derive(Debug, Clone, Default)]
struct Block {
    refs: u32,
    name: Option<BlockName>,
    /// The tokens a committed block holds, and its predecessor's name: a
    /// hit compares both, so a hit is the same tokens after the same
    /// prefix whatever the hashes do.
    tokens: Vec<u32>,
    parent: Option<BlockName>,
    /// When it was last released (the LRU clock).
    released_at: u64,
}

/// One sequence's blocks, in position order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    pub blocks: Vec<BlockId>,
    /// How many of the leading blocks are committed.
    committed: usize,
    /// The last committed block's name: the next one's parent. Kept here,
    /// not read from the block, since a block committed under a name that
    /// another already carries stays unnamed.
    last_name: Option<BlockName>,
}

/// A prompt's blocks: its table, and how many leading positions were found
/// in the cache (their prefill is skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub table: BlockTable,
    pub cached_tokens: usize,
}

/// A pool's size, which a request can be checked against before it is
/// queued (the pool itself lives on the engine thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub blocks: usize,
    pub block_tokens: usize,
}

impl KvShape {
    /// Blocks for `tokens` positions.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_tokens)
    }

    /// Blocks a request of `width` choices takes when admitted with a
    /// prompt of `prompt` tokens: the prompt's, and for each further choice
    /// a copy of the prompt's last block when it is partial (a full one is
    /// shared). More than the pool holds can never run.
    pub fn group_blocks(&self, prompt: usize, width: usize) -> usize {
        let partial = usize::from(!prompt.is_multiple_of(self.block_tokens));
        self.blocks_for(prompt) + width.saturating_sub(1) * partial
    }
}

pub struct BlockPool {
    block_tokens: usize,
    blocks: Vec<Block>,
    /// Free blocks with no name, used first.
    unnamed: Vec<BlockId>,
    /// Free named blocks, by release time (oldest first): the LRU.
    evictable: BTreeMap<(u64, BlockId), ()>,
    by_name: HashMap<BlockName, BlockId>,
    clock: u64,
    /// Off: no block is named, so nothing is ever found (`--no-prefix-caching`).
    prefix_caching: bool,
    /// SipHash keyed at random once per pool: the same prompt names the
    /// same blocks for the pool's life, and nobody can compute names
    /// offline.
    names: RandomState,
}

impl BlockPool {
    /// A pool of `blocks` blocks of `block_tokens` positions each.
    pub fn new(blocks: usize, block_tokens: usize) -> BlockPool {
        let count = BlockId::try_from(blocks).unwrap_or(BlockId::MAX);
        BlockPool {
            block_tokens: block_tokens.max(1),
            blocks: vec![Block::default(); count as usize],
            // Popped from the end: block 0 first.
            unnamed: (0..count).rev().collect(),
            evictable: BTreeMap::new(),
            by_name: HashMap::new(),
            clock: 0,
            prefix_caching: true,
            names: RandomState::new(),
        }
    }

    fn name(&self, parent: Option<BlockName>, tokens: &[u32]) -> BlockName {
        let mut h = self.names.build_hasher();
        parent.hash(&mut h);
        tokens.hash(&mut h);
        BlockName(h.finish())
    }

    /// The name of a scope (e.g. a subscription), for [`Self::admit`].
    pub fn scope(&self, scope: &str) -> BlockName {
        let mut h = self.names.build_hasher();
        "kv cache scope".hash(&mut h);
        scope.hash(&mut h);
        BlockName(h.finish())
    }

    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    /// The same pool with prefix caching off.
    pub fn without_prefix_caching(mut self) -> BlockPool {
        self.prefix_caching = false;
        self
    }

    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    pub fn total(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks a new allocation can take (named free ones by eviction).
    pub fn free(&self) -> usize {
        self.unnamed.len() + self.evictable.len()
    }

    pub fn shape(&self) -> KvShape {
        KvShape {
            blocks: self.total(),
            block_tokens: self.block_tokens,
        }
    }

    /// Blocks held by sequences, as a share of the pool (vLLM's
    /// `kv_cache_usage_perc`, 0 to 1).
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        (self.total() - self.free()) as f64 / self.total() as f64
    }

    /// Blocks for a prompt whose cache will hold `capacity` positions
    /// (the prompt and what is reserved beyond it), reusing the committed
    /// blocks its leading full blocks name within `scope` (see
    /// [`Self::scope`]). All or nothing.
    pub fn admit(
        &mut self,
        prompt: &[u32],
        capacity: usize,
        scope: Option<BlockName>,
    ) -> Result<Admitted, BlockError> {
        self.admit_leaving(prompt, capacity, scope, 0)
    }

    /// [`Self::admit`], only if `spare` more blocks stay free for the
    /// caller to take next (a group's copies of its last block): a prompt
    /// that does not fit with them evicts no cached prefix for nothing.
    pub fn admit_leaving(
        &mut self,
        prompt: &[u32],
        capacity: usize,
        scope: Option<BlockName>,
        spare: usize,
    ) -> Result<Admitted, BlockError> {
        let needed = self.shape().blocks_for(capacity.max(prompt.len()));
        // The longest run of leading full blocks already cached. A prompt's
        // last position is always computed (its logits start the answer),
        // so a prompt that is all cached still leaves its last block out.
        let mut hits = Vec::new();
        let mut parent = scope;
        for chunk in prompt[..prompt.len().saturating_sub(1)].chunks_exact(self.block_tokens) {
            let name = self.name(parent, chunk);
            match self.by_name.get(&name) {
                Some(&id)
                    if self.blocks[id as usize].tokens == chunk
                        && self.blocks[id as usize].parent == parent =>
                {
                    hits.push(id)
                }
                _ => break,
            }
            parent = Some(name);
        }
        // Hits that are free now leave the free lists when taken, so they
        // count against what is free; hits a running sequence holds take
        // nothing.
        let free_hits = hits
            .iter()
            .filter(|&&id| self.blocks[id as usize].refs == 0)
            .count();
        let fresh = needed - hits.len();
        let takes = fresh + free_hits + spare;
        if takes > self.free() {
            return Err(BlockError::OutOfBlocks {
                needed: takes,
                free: self.free(),
            });
        }
        let mut table = BlockTable::default();
        for id in hits {
            self.hold(id);
            table.blocks.push(id);
        }
        table.committed = table.blocks.len();
        // The scope, until a block is committed.
        table.last_name = parent;
        let cached_tokens = table.committed * self.block_tokens;
        // Cannot run short: the hits are held now, so none is evicted, and
        // `fresh` more were counted free above.
        table
            .blocks
            .extend(std::iter::from_fn(|| self.take_free()).take(fresh));
        Ok(Admitted {
            table,
            cached_tokens,
        })
    }

    /// Grows `table` to hold `positions` positions (a decoding sequence's
    /// next block). On `OutOfBlocks` the table is unchanged: the scheduler
    /// preempts someone and asks again.
    pub fn grow(&mut self, table: &mut BlockTable, positions: usize) -> Result<(), BlockError> {
        let needed = self
            .shape()
            .blocks_for(positions)
            .saturating_sub(table.blocks.len());
        if needed > self.free() {
            return Err(BlockError::OutOfBlocks {
                needed,
                free: self.free(),
            });
        }
        for _ in 0..needed {
            if let Some(id) = self.take_free() {
                table.blocks.push(id);
            }
        }
        Ok(())
    }

    /// Names the full blocks of `table` whose tokens are now final:
    /// `tokens` are the sequence's tokens so far (prompt and generated),
    /// of which the cache holds the first `cached` positions. A block
    /// another sequence already committed under the same name stays
    /// unnamed here (the two hold equal keys and values; one name suffices).
    pub fn commit(&mut self, table: &mut BlockTable, tokens: &[u32], cached: usize) {
        if !self.prefix_caching {
            // Counted as committed (a fork shares them) but never named.
            table.committed = (cached / self.block_tokens).min(table.blocks.len());
            return;
        }
        let full = (cached.min(tokens.len()) / self.block_tokens).min(table.blocks.len());
        let mut parent = table.last_name;
        for index in table.committed..full {
            let chunk = &tokens[index * self.block_tokens..(index + 1) * self.block_tokens];
            let name = self.name(parent, chunk);
            let id = table.blocks[index];
            if let std::collections::hash_map::Entry::Vacant(entry) = self.by_name.entry(name) {
                entry.insert(id);
                let block = &mut self.blocks[id as usize];
                block.name = Some(name);
                block.tokens = chunk.to_vec();
                block.parent = parent;
            }
            parent = Some(name);
        }
        if full > table.committed {
            table.committed = full;
            table.last_name = parent;
        }
    }

    /// A table for another choice of the same request, forked from
    /// `table` once its prompt is cached: its committed blocks are shared,
    /// every other block (the prompt's unfinished last one) gets a fresh
    /// block. Returns the new table and the `(from, to)` block copies the
    /// cache must make. All or nothing.
    pub fn share(
        &mut self,
        table: &BlockTable,
    ) -> Result<(BlockTable, Vec<(BlockId, BlockId)>), BlockError> {
        let fresh = table.blocks.len() - table.committed;
        if fresh > self.free() {
            return Err(BlockError::OutOfBlocks {
                needed: fresh,
                free: self.free(),
            });
        }
        let mut shared = table.clone();
        for &id in &table.blocks[..table.committed] {
            self.hold(id);
        }
        let mut copies = Vec::with_capacity(fresh);
        for slot in &mut shared.blocks[table.committed..] {
            // Counted free above.
            let Some(id) = self.take_free() else { break };
            copies.push((*slot, id));
            *slot = id;
        }
        Ok((shared, copies))
    }

    /// Gives back every block of `table` (a sequence finished, or was
    /// preempted to be computed again later).
    pub fn release(&mut self, table: BlockTable) {
        // Last block first: a sequence's tail is the least likely to be
        // shared, so it is evicted before its prefix.
        for &id in table.blocks.iter().rev() {
            self.clock += 1;
            let clock = self.clock;
            let block = &mut self.blocks[id as usize];
            block.refs = block.refs.saturating_sub(1);
            if block.refs > 0 {
                continue;
            }
            block.released_at = clock;
            if block.name.is_some() {
                self.evictable.insert((clock, id), ());
            } else {
                self.unnamed.push(id);
            }
        }
    }

    /// Takes a held (or free named) block once more.
    fn hold(&mut self, id: BlockId) {
        let block = &mut self.blocks[id as usize];
        if block.refs == 0 {
            self.evictable.remove(&(block.released_at, id));
        }
        block.refs += 1;
    }

    /// A free block for new positions: an unnamed one, else the least
    /// recently released named one, whose name is forgotten.
    fn take_free(&mut self) -> Option<BlockId> {
        let id = match self.unnamed.pop() {
            Some(id) => id,
            None => {
                let (&(clock, id), _) = self.evictable.iter().next()?;
                self.evictable.remove(&(clock, id));
                let block = &mut self.blocks[id as usize];
                if let Some(name) = block.name.take() {
                    self.by_name.remove(&name);
                }
                block.tokens.clear();
                id
            }
        };
        self.blocks[id as usize].refs = 1;
        Some(id)
    }

    /// Checks the invariants against the tables the caller holds (tests).
    #[cfg(test)]
    fn check(&self, tables: &[&BlockTable]) {
        let mut held: HashMap<BlockId, u32> = HashMap::new();
        for table in tables {
            for &id in &table.blocks {
                *held.entry(id).or_default() += 1;
            }
        }
        let mut free_seen = std::collections::HashSet::new();
        for &id in &self.unnamed {
            assert!(free_seen.insert(id), "block {id} free twice");
            assert!(self.blocks[id as usize].name.is_none());
        }
        for &(_, id) in self.evictable.keys() {
            assert!(free_seen.insert(id), "block {id} free twice");
            assert!(self.blocks[id as usize].name.is_some());
        }
        for (id, block) in self.blocks.iter().enumerate() {
            let id = id as BlockId;
            let holders = held.get(&id).copied().unwrap_or(0);
            assert_eq!(block.refs, holders, "block {id}'s count");
            assert_eq!(block.refs == 0, free_seen.contains(&id), "block {id}");
        }
        for (name, &id) in &self.by_name {
            assert_eq!(self.blocks[id as usize].name, Some(*name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SYSTEM: [u32; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

    fn prompt(question: &[u32]) -> Vec<u32> {
        SYSTEM.iter().chain(question).copied().collect()
    }

    #[test]
    fn a_shared_prefix_is_computed_once_and_held_by_both() {
        let mut pool = BlockPool::new(16, 4);
        let first = prompt(&[50, 51]);
        let mut a = pool.admit(&first, 16, None).unwrap();
        assert_eq!(a.cached_tokens, 0, "nothing cached yet");
        assert_eq!(a.table.blocks.len(), 4);
        pool.commit(&mut a.table, &first, first.len());

        let second = prompt(&[60, 61, 62]);
        let b = pool.admit(&second, 16, None).unwrap();
        // SYSTEM's first 8 tokens fill two blocks; the third block of the
        // first prompt also held 50 and 51, so it is not shared.
        assert_eq!(b.cached_tokens, 8);
        assert_eq!(b.table.blocks[..2], a.table.blocks[..2]);
        assert_ne!(b.table.blocks[2], a.table.blocks[2]);
        pool.check(&[&a.table, &b.table]);

        // Released, the named blocks stay findable until evicted.
        pool.release(a.table);
        pool.release(b.table);
        pool.check(&[]);
        assert_eq!(pool.free(), 16);
        let c = pool.admit(&second, 16, None).unwrap();
        assert_eq!(c.cached_tokens, 8);
    }

    #[test]
    fn prompts_share_blocks_only_within_their_scope() {
        let mut pool = BlockPool::new(32, 4);
        let (team_a, team_b) = (pool.scope("team-a"), pool.scope("team-b"));
        let p = prompt(&[50, 51]);
        let mut a = pool.admit(&p, 16, Some(team_a)).unwrap();
        pool.commit(&mut a.table, &p, p.len());
        let again = pool.admit(&p, 16, Some(team_a)).unwrap();
        assert_eq!(again.cached_tokens, 8, "the same scope shares");
        for other in [Some(team_b), None] {
            let b = pool.admit(&p, 16, other).unwrap();
            assert_eq!(b.cached_tokens, 0, "{other:?} sees nothing of team-a's");
            pool.release(b.table);
        }
        // A scope's later blocks chain to its own first ones.
        let mut b = pool.admit(&p, 16, Some(team_b)).unwrap();
        pool.commit(&mut b.table, &p, p.len());
        let b_again = pool.admit(&p, 16, Some(team_b)).unwrap();
        assert_eq!(b_again.cached_tokens, 8);
        pool.check(&[&a.table, &again.table, &b.table, &b_again.table]);
    }

    #[test]
    fn a_prompt_all_cached_still_computes_its_last_position() {
        let mut pool = BlockPool::new(8, 4);
        let p: Vec<u32> = (0..8).collect();
        let mut a = pool.admit(&p, 8, None).unwrap();
        pool.commit(&mut a.table, &p, 8);
        pool.release(a.table);
        let b = pool.admit(&p, 8, None).unwrap();
        assert_eq!(b.cached_tokens, 4, "the last block holds the last position");
    }

    #[test]
    fn a_colliding_name_is_not_a_hit_unless_the_tokens_and_predecessor_match() {
        let mut pool = BlockPool::new(8, 2);
        let p = [7, 8, 9, 10, 11];
        let mut a = pool.admit(&p, 6, None).unwrap();
        pool.commit(&mut a.table, &p, 4);
        // Forge a collision: another block's tokens under the first name.
        let name = pool.blocks[a.table.blocks[0] as usize].name.unwrap();
        pool.blocks[a.table.blocks[0] as usize].tokens = vec![1, 1];
        let b = pool.admit(&p, 6, None).unwrap();
        assert_eq!(b.cached_tokens, 0, "{name:?} named other tokens");
        // The same tokens after another prefix: a forged collision on the
        // second name, whose block claims another predecessor.
        let mut pool = BlockPool::new(8, 2);
        let mut a = pool.admit(&p, 6, None).unwrap();
        pool.commit(&mut a.table, &p, 4);
        pool.blocks[a.table.blocks[1] as usize].parent = None;
        let c = pool.admit(&p, 6, None).unwrap();
        assert_eq!(
            c.cached_tokens, 2,
            "only the first block is the same prefix"
        );
    }

    #[test]
    fn out_of_blocks_is_reported_and_changes_nothing() {
        let mut pool = BlockPool::new(4, 4);
        let a = pool.admit(&[1; 10], 12, None).unwrap();
        assert_eq!(
            pool.admit(&[2; 10], 12, None),
            Err(BlockError::OutOfBlocks { needed: 3, free: 1 })
        );
        let mut table = a.table.clone();
        assert_eq!(
            pool.grow(&mut table, 24),
            Err(BlockError::OutOfBlocks { needed: 3, free: 1 })
        );
        assert_eq!(table, a.table);
        pool.grow(&mut table, 16).unwrap();
        assert_eq!(pool.free(), 0);
        pool.check(&[&table]);
        assert_eq!(pool.usage(), 1.0);
    }

    #[test]
    fn a_fork_shares_the_committed_blocks_and_copies_the_rest() {
        let mut pool = BlockPool::new(6, 4);
        let p: Vec<u32> = (0..10).collect();
        let mut a = pool.admit(&p, 10, None).unwrap();
        pool.commit(&mut a.table, &p, 10);
        let (b, copies) = pool.share(&a.table).unwrap();
        assert_eq!(b.blocks[..2], a.table.blocks[..2]);
        assert_eq!(copies, vec![(a.table.blocks[2], b.blocks[2])]);
        pool.check(&[&a.table, &b]);
        // Two blocks left: two more forks fit, the next does not.
        let (c, _) = pool.share(&a.table).unwrap();
        let (d, _) = pool.share(&a.table).unwrap();
        assert_eq!(
            pool.share(&a.table).map(|_| ()),
            Err(BlockError::OutOfBlocks { needed: 1, free: 0 })
        );
        pool.check(&[&a.table, &b, &c, &d]);
        for t in [a.table, b, c, d] {
            pool.release(t);
        }
        pool.check(&[]);
    }

    #[test]
    fn eviction_takes_the_least_recently_released_named_block() {
        let mut pool = BlockPool::new(4, 2);
        let old = [1, 2, 3];
        let new = [4, 5, 6];
        for p in [&old, &new] {
            let mut a = pool.admit(p, 4, None).unwrap();
            pool.commit(&mut a.table, p, 2);
            pool.release(a.table);
        }
        // Both first blocks are named and free; taking 3 blocks evicts one,
        // the older.
        let c = pool.admit(&[9, 9, 9, 9, 9], 6, None).unwrap();
        pool.check(&[&c.table]);
        pool.release(c.table);
        assert_eq!(
            pool.admit(&old, 2, None).unwrap().cached_tokens,
            0,
            "evicted"
        );
        assert_eq!(pool.admit(&new, 2, None).unwrap().cached_tokens, 2, "kept");
        assert_eq!(
            BlockPool::new(0, 2).admit(&[1], 1, None),
            Err(BlockError::OutOfBlocks { needed: 1, free: 0 })
        );
    }

    #[test]
    fn a_block_committed_twice_keeps_one_name_and_the_chain_goes_on() {
        let mut pool = BlockPool::new(16, 2);
        let p = [1, 2, 3, 4, 5];
        // Admitted together, before either has committed: both compute.
        let mut a = pool.admit(&p, 8, None).unwrap();
        let mut b = pool.admit(&p, 8, None).unwrap();
        assert_eq!((a.cached_tokens, b.cached_tokens), (0, 0));
        pool.commit(&mut a.table, &p, 4);
        pool.commit(&mut b.table, &p, 4);
        // b decodes on: its third block is full and named after the chain
        // of a's names, though b's own first blocks carry none.
        let longer = [1, 2, 3, 4, 5, 6, 7];
        pool.commit(&mut b.table, &longer, 6);
        pool.check(&[&a.table, &b.table]);
        let c = pool.admit(&longer, 8, None).unwrap();
        assert_eq!(c.cached_tokens, 6);
        assert_eq!(c.table.blocks[..2], a.table.blocks[..2]);
        assert_eq!(c.table.blocks[2], b.table.blocks[2]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit { question: Vec<u32>, extra: usize },
        Decode { seq: usize, tokens: usize },
        Finish { seq: usize },
        Preempt { seq: usize },
        Fork { seq: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (prop::collection::vec(0u32..4, 0..12), 0usize..10)
                .prop_map(|(question, extra)| Op::Admit { question, extra }),
            (0usize..8, 1usize..6).prop_map(|(seq, tokens)| Op::Decode { seq, tokens }),
            (0usize..8).prop_map(|seq| Op::Finish { seq }),
            (0usize..8).prop_map(|seq| Op::Preempt { seq }),
            (0usize..8).prop_map(|seq| Op::Fork { seq }),
        ]
    }

    struct Running {
        table: BlockTable,
        tokens: Vec<u32>,
    }

    proptest! {
        /// Random admissions, decodes, finishes and preemptions never leak
        /// a block, free one twice, or hand a held block to another.
        #[test]
        fn the_pool_keeps_its_books(ops in prop::collection::vec(op(), 1..80)) {
            let mut pool = BlockPool::new(24, 4);
            let mut running: Vec<Running> = Vec::new();
            let mut preempted: Vec<Vec<u32>> = Vec::new();
            for op in ops {
                match op {
                    Op::Admit { question, extra } => {
                        // Preempted sequences come back first, as a scheduler would.
                        let tokens = preempted.pop().unwrap_or_else(|| prompt(&question));
                        if let Ok(mut a) = pool.admit(&tokens, tokens.len() + extra, None) {
                            prop_assert!(a.cached_tokens < tokens.len().max(1));
                            pool.commit(&mut a.table, &tokens, tokens.len());
                            running.push(Running { table: a.table, tokens });
                        }
                    }
                    Op::Decode { seq, tokens } if seq < running.len() => {
                        let r = &mut running[seq];
                        let len = r.tokens.len() + tokens;
                        if pool.grow(&mut r.table, len).is_ok() {
                            r.tokens.extend((0..tokens as u32).map(|t| 100 + t));
                            pool.commit(&mut r.table, &r.tokens, len);
                        }
                    }
                    Op::Finish { seq } if seq < running.len() => {
                        pool.release(running.swap_remove(seq).table);
                    }
                    Op::Preempt { seq } if seq < running.len() => {
                        let r = running.swap_remove(seq);
                        pool.release(r.table);
                        preempted.push(r.tokens);
                    }
                    Op::Fork { seq } if seq < running.len() => {
                        if let Ok((table, copies)) = pool.share(&running[seq].table) {
                            let from = &running[seq].table;
                            // Only what is not committed is copied.
                            prop_assert_eq!(copies.len(), from.blocks.len() - from.committed);
                            let tokens = running[seq].tokens.clone();
                            running.push(Running { table, tokens });
                        }
                    }
                    _ => {}
                }
                let tables: Vec<&BlockTable> = running.iter().map(|r| &r.table).collect();
                pool.check(&tables);
                let held: std::collections::HashSet<BlockId> =
                    tables.iter().flat_map(|t| t.blocks.iter().copied()).collect();
                prop_assert_eq!(held.len() + pool.free(), pool.total());
            }
            for r in running {
                pool.release(r.table);
            }
            pool.check(&[]);
            prop_assert_eq!(pool.free(), pool.total());
        }
    }
}
