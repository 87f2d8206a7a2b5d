//! A fixed team of compute threads for the forward pass, in the style of
//! ggml's thread pool: between the parallel regions of a step (≈120 of them
//! for a 30-layer model: every matmul, the activation quantization and the
//! attention), the team's workers spin on an epoch counter instead of going
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

use std::any::Any;
use std::cell::Cell;
use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
}

struct Shared {
    /// Bumped once per region (Release) after `job` is written.
    epoch: AtomicUsize,
    /// Written only by the caller between regions, read by workers after they
    /// observe a new epoch (Acquire), and no longer read once they have
    /// decremented `busy`.
    job: Mutex<Option<Job>>,
    /// The next unclaimed task index of the current region.
    next: AtomicUsize,
    /// Workers that have not yet finished with the current region.
    busy: AtomicUsize,
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

// SAFETY: the raw task pointer in `Job` is only dereferenced between the
// epoch bump that published it and the `busy` decrement that retires it,
// while `Team::run` keeps the closure alive and borrowed (see `run`).
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
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            next: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
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
        let s = &*self.shared;
        if self.workers.is_empty() || tasks <= 1 {
            run_inline(tasks, f);
            return;
        }
        // SAFETY (lifetime erasure): the pointer is published to workers
        // below and this function does not return before `busy` reaches zero,
        // i.e. before every worker has stopped using it; a panic on this
        // thread is caught and resumed only after that wait too.
        let erased: *const (dyn Fn(usize) + Sync) = unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f)
        };
        *s.job.lock().unwrap_or_else(PoisonError::into_inner) = Some(Job { f: erased, tasks });
        s.next.store(0, Ordering::Relaxed);
        s.busy.store(self.workers.len(), Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.parking.lock().unwrap_or_else(PoisonError::into_inner);
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| claim_tasks(s, f, tasks)));
        while s.busy.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        // Taken whatever happened here, so a worker's panic is never
        // re-raised by a later region.
        let theirs = s
            .panicked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(payload) = mine.err().or(theirs) {
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

/// Claims and runs tasks of the current region until none are left.
fn claim_tasks(s: &Shared, f: &(dyn Fn(usize) + Sync), tasks: usize) {
    let _in_task = InTask::enter();
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= tasks {
            break;
        }
        f(i);
    }
}

/// A worker's life: wait for a new epoch, take tasks, report done.
fn work(s: &Shared) {
    // The epoch the team was created at, not the current one: a region may
    // have been published before this thread got to run, and the caller is
    // waiting for it.
    let mut seen = 0;
    loop {
        if !wait_for_region(s, seen) {
            return;
        }
        seen = s.epoch.load(Ordering::Acquire);
        let job = *s.job.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(job) = job {
            // SAFETY: see `Job`: the caller keeps `f` alive until `busy`,
            // decremented below, reaches zero.
            let f = unsafe { &*job.f };
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| claim_tasks(s, f, job.tasks))) {
                *s.panicked.lock().unwrap_or_else(PoisonError::into_inner) = Some(payload);
            }
        }
        s.busy.fetch_sub(1, Ordering::Release);
    }
}

/// Spins (while the team is hot) or parks until the epoch moves past
/// `seen`; false on shutdown.
fn wait_for_region(s: &Shared, seen: usize) -> bool {
    let mut spins = 0u32;
    loop {
        if s.shutdown.load(Ordering::Acquire) {
            return false;
        }
        if s.epoch.load(Ordering::Acquire) != seen {
            return true;
        }
        spins = spins.wrapping_add(1);
        // Checking the clock every spin would cost more than the spin.
        if !spins.is_multiple_of(1024) || still_hot(s) {
            std::hint::spin_loop();
            continue;
        }
        let guard = s.parking.lock().unwrap_or_else(PoisonError::into_inner);
        s.sleepers.fetch_add(1, Ordering::SeqCst);
        // Re-checked under the lock the caller takes to notify, so a region
        // published after the check above is not missed.
        let _guard = s
            .wake
            .wait_while(guard, |_| {
                s.epoch.load(Ordering::SeqCst) == seen && !s.shutdown.load(Ordering::SeqCst)
            })
            .unwrap_or_else(PoisonError::into_inner);
        s.sleepers.fetch_sub(1, Ordering::SeqCst);
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
    fn parked_workers_wake_for_the_next_region() {
        let team = Team::new(2).expect("team");
        team.install(|| for_each(2, |_| {}));
        std::thread::sleep(LINGER * 5);
        assert_eq!(
            team.shared.sleepers.load(Ordering::SeqCst),
            1,
            "the worker parked"
        );
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
