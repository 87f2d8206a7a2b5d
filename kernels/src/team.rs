//! A fixed team of compute threads for the forward pass, in the style of
//! ggml's thread pool: between the parallel regions of a step (≈120 of them
//! for a 30-layer model: every matmul, the activation quantization and the
//! attention), the team's workers spin on a region counter instead of going
//! to sleep, so a region starts in well under a microsecond.
//!
//! Why not rayon: rayon's idle workers yield a few dozen times and then sleep
//! on a condition variable. A decode step's serial parts (norms, RoPE, the
//! residual adds) are often longer than that, so every region paid a futex
//! wake-up and a trip through the OS scheduler; profiled on a 2-vCPU Xeon
//! those hand-offs took about a fifth of a one-stream step. rayon has no knob
//! for its spin time.
//!
//! The team is entered with `Team::install`; inside it `for_each` and its
//! slice helpers run on the team, outside it (tests, model loading) they fall
//! back to rayon's global pool, so callers need not know which. After a step
//! ends, workers keep spinning for `LINGER` (the engine usually starts the
//! next step within it) and then park until the next region.
//!
//! A region waits for the tasks it hands out, never for the workers: a
//! worker takes a task only by naming the region it read the task from, and
//! the caller returns once every task is done, whoever ran it. So a worker
//! the OS has descheduled (more threads than cores: other processes, a CPU
//! quota) delays nothing unless it holds a task, and the caller runs the
//! tasks nobody took.

use std::any::Any;
use std::cell::Cell;
use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long workers keep spinning after the last region before they park:
/// longer than the engine's gap between two steps, short enough that an idle
/// server does not hold a core.
const LINGER: Duration = Duration::from_millis(2);

/// A region's work as the workers see it: a task function whose lifetime was
/// erased by `Team::run` (which does not return until every worker is done
/// with it) and the task count.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    tasks: usize,
    region: u64,
}

/// `Shared::claim` packs the region's number above the index of its next
/// unclaimed task, so that taking a task and checking that it belongs to the
/// region one read the job of is a single compare-and-swap.
const INDEX_BITS: u32 = 20;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
/// The most tasks one region hands out; `run` splits larger ones. One less
/// than the index field holds: claiming the last task stores `tasks` in it,
/// which must not carry into the region number.
const MAX_TASKS: usize = (1 << INDEX_BITS) - 1;

struct Shared {
    /// The current region's number and next unclaimed task (see
    /// `INDEX_BITS`); a new region is published by storing it (Release)
    /// after `job` and `done` are written. 44 bits of regions last decades.
    claim: AtomicU64,
    /// The current region's job, written only by the caller between regions.
    /// A worker reads it, then may call `f` only for tasks it claimed under
    /// the same region number: the caller is still waiting for those.
    job: Mutex<Option<Job>>,
    /// Tasks of the current region that have finished (panics included).
    done: AtomicUsize,
    /// A worker's task panicked with this payload; the caller resumes it.
    panicked: Mutex<Option<Box<dyn Any + Send>>>,
    /// Workers spin (rather than park) while this is set, and for `LINGER`
    /// after it is cleared.
    hot: AtomicBool,
    hot_until: Mutex<Option<Instant>>,
    /// Parked workers and the condition they wait on.
    sleepers: AtomicUsize,
    parking: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

// SAFETY: the raw task pointer in `Job` is only dereferenced to run a task
// claimed under the job's region, and `Team::run` keeps the closure alive
// and borrowed until every task of that region is done (see `run`).
unsafe impl Send for Job {}

/// A fixed set of compute threads; the thread that calls `install` is one of
/// them.
///
/// Not `Sync`: one thread runs a team's regions at a time (two callers
/// would overwrite each other's job while workers still run it).
pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    not_sync: PhantomData<Cell<()>>,
}

thread_local! {
    /// The team this thread is running a step for, while inside `install`.
    static CURRENT: Cell<Option<*const Team>> = const { Cell::new(None) };
    /// Set while this thread runs a region's task, so a nested `for_each`
    /// runs inline instead of waiting on a team that is waiting on it.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

impl Team {
    /// Starts `threads - 1` workers (the caller of `install` is the last).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(0),
            job: Mutex::new(None),
            done: AtomicUsize::new(0),
            panicked: Mutex::new(None),
            hot: AtomicBool::new(false),
            hot_until: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            parking: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let mut workers = Vec::with_capacity(threads - 1);
        for i in 1..threads {
            let shared = shared.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("compute-{i}"))
                    .spawn(move || work(&shared))?,
            );
        }
        Ok(Self {
            shared,
            workers,
            not_sync: PhantomData,
        })
    }

    /// Threads in the team, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f` (a forward step) with this team as the current one, its
    /// workers spinning between the step's regions.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Exit<'a>(&'a Shared, Option<*const Team>);
        impl Drop for Exit<'_> {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.1));
                *self
                    .0
                    .hot_until
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + LINGER);
                self.0.hot.store(false, Ordering::Release);
            }
        }
        self.shared.hot.store(true, Ordering::Release);
        let previous = CURRENT.with(|c| c.replace(Some(self as *const Team)));
        let _exit = Exit(&self.shared, previous);
        f()
    }

    /// Runs `f(0) .. f(tasks - 1)` on the team, the caller taking tasks too,
    /// and returns when all are done.
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() || tasks <= 1 {
            run_inline(tasks, f);
        } else if tasks > MAX_TASKS {
            for first in (0..tasks).step_by(MAX_TASKS) {
                let part = (tasks - first).min(MAX_TASKS);
                self.run(part, &|i| f(first + i));
            }
        } else {
            self.run_region(tasks, f);
        }
    }

    fn run_region(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        debug_assert!(tasks <= MAX_TASKS);
        let s = &*self.shared;
        // SAFETY (lifetime erasure): the pointer is published to workers
        // below, a worker calls it only for a task it claimed under this
        // region, and this function does not return before every task of
        // the region is done (a task's panic is caught and counted as done).
        let erased: *const (dyn Fn(usize) + Sync) = unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f)
        };
        let region =
            ((s.claim.load(Ordering::Relaxed) >> INDEX_BITS) + 1) & (u64::MAX >> INDEX_BITS);
        let job = Job {
            f: erased,
            tasks,
            region,
        };
        *s.job.lock().unwrap_or_else(PoisonError::into_inner) = Some(job);
        s.done.store(0, Ordering::Relaxed);
        s.claim.store(region << INDEX_BITS, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.parking.lock().unwrap_or_else(PoisonError::into_inner);
            s.wake.notify_all();
        }
        run_claimed(s, &job);
        let mut waited = 0;
        while s.done.load(Ordering::Acquire) != tasks {
            pause(&mut waited);
        }
        let panicked = s
            .panicked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(payload) = panicked {
            resume_unwind(payload);
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _guard = self
                .shared
                .parking
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.wake.notify_all();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Threads a region can use on this thread: the current team's, or rayon's.
pub fn threads() -> usize {
    match CURRENT.with(Cell::get) {
        // SAFETY: `CURRENT` is set only inside `Team::install`, which
        // borrows the team for as long as it is set.
        Some(team) => unsafe { (*team).threads() },
        None => rayon::current_num_threads(),
    }
}

/// Runs `f(i)` for every `i < tasks` in parallel and returns when all are
/// done: on the current team inside `Team::install`, on rayon otherwise.
pub fn for_each(tasks: usize, f: impl Fn(usize) + Sync) {
    if IN_TASK.with(Cell::get) {
        run_inline(tasks, &f);
        return;
    }
    match CURRENT.with(Cell::get) {
        // SAFETY: as in `threads`.
        Some(team) => unsafe { (*team).run(tasks, &f) },
        None => (0..tasks).into_par_iter().for_each(&f),
    }
}

/// Splits `items` into chunks of `chunk` (the last may be shorter) and runs
/// `f(chunk index, chunk)` for each in parallel.
pub fn for_each_chunk_mut<T: Send>(
    items: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk = chunk.max(1);
    let len = items.len();
    let base = SendPtr(items.as_mut_ptr());
    for_each(len.div_ceil(chunk), |c| {
        let start = c * chunk;
        let end = (start + chunk).min(len);
        // SAFETY: `for_each` runs each index exactly once, so the chunks
        // `[start, end)` handed out are disjoint and within `items`, which
        // stays mutably borrowed until `for_each` returns.
        let part = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        f(c, part);
    });
}

/// `f(item)` for each item of `items`, in parallel.
pub fn for_each_mut<T: Send>(items: &mut [T], f: impl Fn(&mut T) + Sync) {
    for_each_chunk_mut(items, 1, |_, part| part.iter_mut().for_each(&f));
}

struct SendPtr<T>(*mut T);
impl<T> SendPtr<T> {
    /// Through a method, so closures capture the whole (`Sync`) wrapper
    /// rather than its raw-pointer field.
    fn get(&self) -> *mut T {
        self.0
    }
}
// SAFETY: used only by `for_each_chunk_mut`, which hands each thread a
// disjoint part of a slice of `Send` items.
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// Marks this thread as running a task until dropped (panics included).
struct InTask(bool);
impl InTask {
    fn enter() -> Self {
        Self(IN_TASK.with(|t| t.replace(true)))
    }
}
impl Drop for InTask {
    fn drop(&mut self) {
        IN_TASK.with(|t| t.set(self.0));
    }
}

fn run_inline(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    let _in_task = InTask::enter();
    (0..tasks).for_each(f);
}

/// Claims tasks of `job`'s region and runs them with the job's function
/// until none are left or a newer region has begun, counting each as done
/// even if it panicked (the first panic is kept for the caller).
///
/// The function is reached through the job's raw pointer only after a claim
/// succeeded: a worker may read a job whose region has ended (its caller
/// returned, the closure is gone), and must not even hold a reference to it.
fn run_claimed(s: &Shared, job: &Job) {
    let _in_task = InTask::enter();
    let mut current = s.claim.load(Ordering::Acquire);
    loop {
        let index = (current & INDEX_MASK) as usize;
        if current >> INDEX_BITS != job.region || index >= job.tasks {
            return;
        }
        match s.claim.compare_exchange_weak(
            current,
            current + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                // SAFETY: see `Job`: this task was claimed under the job's
                // region, so its caller is still waiting for it and `f` alive.
                let f = unsafe { &*job.f };
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(index))) {
                    s.panicked
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert(payload);
                }
                s.done.fetch_add(1, Ordering::Release);
                current = s.claim.load(Ordering::Acquire);
            }
            Err(now) => current = now,
        }
    }
}

/// A worker's life: wait for a new region, take its tasks while any are
/// left.
fn work(s: &Shared) {
    // Region 0 has no job: a region published before this thread got to
    // run is still seen as new.
    let mut seen = 0;
    loop {
        if !wait_for_region(s, seen) {
            return;
        }
        let Some(job) = *s.job.lock().unwrap_or_else(PoisonError::into_inner) else {
            continue;
        };
        seen = job.region;
        run_claimed(s, &job);
    }
}

/// The current region's number.
fn region(s: &Shared, order: Ordering) -> u64 {
    s.claim.load(order) >> INDEX_BITS
}

/// Spins (while the team is hot) or parks until a region newer than `seen`
/// is published; false on shutdown.
fn wait_for_region(s: &Shared, seen: u64) -> bool {
    let mut waited = 0u32;
    loop {
        if s.shutdown.load(Ordering::Acquire) {
            return false;
        }
        if region(s, Ordering::Acquire) != seen {
            return true;
        }
        // While spinning, reading the clock every time would cost more than
        // the wait; once yielding, each wait may be a time slice.
        let spinning = waited < SPINS_BEFORE_YIELD;
        if (spinning && !(waited + 1).is_multiple_of(128)) || still_hot(s) {
            pause(&mut waited);
            continue;
        }
        let guard = s.parking.lock().unwrap_or_else(PoisonError::into_inner);
        s.sleepers.fetch_add(1, Ordering::SeqCst);
        // Re-checked under the lock the caller takes to notify, so a region
        // published after the check above is not missed.
        let _guard = s
            .wake
            .wait_while(guard, |_| {
                region(s, Ordering::SeqCst) == seen && !s.shutdown.load(Ordering::SeqCst)
            })
            .unwrap_or_else(PoisonError::into_inner);
        s.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Pauses a waiting thread spends spinning before it starts yielding its
/// core at each check (a few microseconds to a few tens, by CPU).
const SPINS_BEFORE_YIELD: u32 = 512;

/// One wait between two checks of what another thread of the team does:
/// spin first (a region's hand-off takes well under a microsecond), then
/// give the core away at each check. When the team has more threads than
/// it gets cores (other processes, a CPU quota), the thread it waits for
/// may be descheduled: spinning on would burn that thread's time slice and
/// made every region cost milliseconds (a test server beside two busy loops
/// on 2 cores ran 8.5× slower than alone, not 2×). On idle cores `yield`
/// returns at once, so the hand-off stays quick.
fn pause(waited: &mut u32) {
    *waited = waited.saturating_add(1);
    if *waited < SPINS_BEFORE_YIELD {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn still_hot(s: &Shared) -> bool {
    if s.hot.load(Ordering::Acquire) {
        return true;
    }
    match *s.hot_until.lock().unwrap_or_else(PoisonError::into_inner) {
        Some(until) => Instant::now() < until,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_task_runs_once_on_the_team_and_outside_it() {
        let team = Team::new(3).expect("team");
        for tasks in [0, 1, 2, 3, 7, 100] {
            let counts: Vec<AtomicU64> = (0..tasks).map(|_| AtomicU64::new(0)).collect();
            team.install(|| {
                assert_eq!(threads(), 3);
                for_each(tasks, |i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                })
            });
            for_each(tasks, |i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                counts.iter().all(|c| c.load(Ordering::Relaxed) == 2),
                "tasks = {tasks}"
            );
        }
    }

    #[test]
    fn chunks_cover_the_slice_and_regions_follow_each_other() {
        let team = Team::new(2).expect("team");
        let mut v = vec![0u32; 1001];
        team.install(|| {
            for round in 1..=500u32 {
                for_each_chunk_mut(&mut v, 64, |c, part| {
                    for (j, x) in part.iter_mut().enumerate() {
                        *x += (c * 64 + j) as u32 % 7 + round - round;
                    }
                });
            }
        });
        assert!(v
            .iter()
            .enumerate()
            .all(|(i, &x)| x == 500 * (i as u32 % 7)));
    }

    #[test]
    fn a_nested_region_runs_inline() {
        let team = Team::new(2).expect("team");
        let sum = AtomicU64::new(0);
        team.install(|| {
            for_each(4, |_| {
                for_each(4, |j| {
                    sum.fetch_add(j as u64, Ordering::Relaxed);
                })
            })
        });
        assert_eq!(sum.load(Ordering::Relaxed), 4 * 6);
    }

    #[test]
    fn with_more_threads_than_cores_every_task_runs_once_per_region() {
        // Workers descheduled mid-region, late to a region or still in the
        // previous one must neither run a task twice nor run a stale one.
        let threads = 4 * std::thread::available_parallelism().map_or(2, |n| n.get());
        let team = Team::new(threads).expect("team");
        let counts: Vec<AtomicU64> = (0..64).map(|_| AtomicU64::new(0)).collect();
        team.install(|| {
            for region in 0..3000usize {
                let tasks = region * 7 % 64;
                for_each(tasks, |i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                });
                for (i, c) in counts.iter().enumerate() {
                    let want = u64::from(i < tasks);
                    assert_eq!(
                        c.swap(0, Ordering::Relaxed),
                        want,
                        "region {region}, task {i}"
                    );
                }
            }
        });
    }

    #[test]
    fn the_largest_regions_run_every_task_and_let_workers_park() {
        // A region of the most tasks and one split in two: claiming the
        // last task must not look like the start of another region, or the
        // workers would never park.
        let team = Team::new(2).expect("team");
        for tasks in [MAX_TASKS, MAX_TASKS + 1] {
            let hits = AtomicU64::new(0);
            team.install(|| {
                for_each(tasks, |_| {
                    hits.fetch_add(1, Ordering::Relaxed);
                })
            });
            assert_eq!(hits.load(Ordering::Relaxed), tasks as u64);
            let parked = (0..100).any(|_| {
                std::thread::sleep(LINGER * 5);
                team.shared.sleepers.load(Ordering::SeqCst) == 1
            });
            assert!(parked, "the worker did not park after {tasks} tasks");
        }
    }

    #[test]
    fn parked_workers_wake_for_the_next_region() {
        let team = Team::new(2).expect("team");
        team.install(|| for_each(2, |_| {}));
        // Bounded by a second: other tests' threads may hold the cores.
        let parked = (0..100).any(|_| {
            std::thread::sleep(LINGER * 5);
            team.shared.sleepers.load(Ordering::SeqCst) == 1
        });
        assert!(parked, "the worker did not park");
        let hits = AtomicU64::new(0);
        team.install(|| {
            for_each(64, |_| {
                hits.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(hits.load(Ordering::Relaxed), 64);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_team_survives() {
        let team = Team::new(2).expect("team");
        let caught = catch_unwind(AssertUnwindSafe(|| {
            team.install(|| for_each(8, |i| assert!(i != 5, "task five")))
        }));
        assert!(caught.is_err());
        let hits = AtomicU64::new(0);
        team.install(|| {
            for_each(8, |_| {
                hits.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(hits.load(Ordering::Relaxed), 8);
    }
}
