//! A persistent worker pool: `threads - 1` workers plus the calling thread
//! run the units of one kernel at a time. The units are cut into a fixed
//! number of chunks, which threads claim one at a time from a shared
//! counter: on a loaded machine a worker that is not scheduled simply claims
//! nothing and the caller does its share, instead of the whole model waiting
//! for it at every kernel. (Which thread runs a chunk never changes a
//! result: kernels compute each unit the same way wherever it runs.)
//!
//! The caller claims chunks from the front, the workers from the back,
//! until the two ends meet: at two threads each thread takes the same end
//! of every kernel's units, so what one kernel writes the next one mostly
//! reads on the same core. With one shared counter either thread took any
//! chunk, and the halves of a tensor could cross between the cores from
//! kernel to kernel. (Seen on this 2-vCPU machine for an hour: PVT-v2-B0
//! at two threads 7.7 ms against 6.8 at one, its transposes and attention
//! products 2.5–3.6× slower than at one thread, then 3.8 ms again with the
//! same binary; with claims from both ends it measured 3.77–3.82 against
//! 3.84–3.88 in the good state, and the bad state has not come back to
//! measure it in. docs/kernels.md, "Session 9".)
//!
//! Both ends and the job's epoch share one atomic word, so a worker that
//! wakes up late can only ever claim chunks of the job it read: once the
//! caller has published the next job, its compare-and-swap fails.
//!
//! **When the workers stay away.** On a shared machine the OS sometimes
//! leaves a worker unscheduled, or runs it on the caller's core, for
//! seconds: then every split kernel pays for publishing a job the caller
//! ends up doing alone, and worse, for waiting on a chunk a worker claimed
//! just before it was descheduled (one process of xformer at two threads
//! took 24.9 ms against 9.3 in its other processes and 17.2 at one
//! thread; bench/threads/run). The caller therefore judges each job: it
//! is *missed* when awake workers claimed none of it, or when the caller
//! waited longer for their chunks than its own share took, or when a
//! worker that took chunks ran on the caller's own CPU (the OS put both
//! threads on one CPU while another process held the other: then every
//! split kernel ran 1.5x slower than alone, mobile_former_26m 0.60–0.65 ms
//! at two threads against 0.42–0.45 at one). After
//! [`MISSES`] missed jobs in a row (or one wait of more than [`STALL`])
//! the caller runs the next jobs alone —
//! exactly as one thread would — then splits again to probe; each probe
//! that fails doubles the time alone (from [`SOLO_MIN`] to [`SOLO_MAX`]
//! jobs, a few runs of a model), and a job the workers join resets it.
//! Which thread runs a unit never changes a result, so neither does this.
//!
//! A run dispatches a few hundred kernels back to back, so waking workers
//! through the OS for each would cost more than small kernels take. Workers
//! therefore spin on an epoch counter for a while after each job, then yield,
//! then sleep on a condition variable (so an idle model costs no CPU).

// Calling JIT-compiled kernels through raw function pointers is inherently
// unsafe; this module and `compiled` are the only places that do it.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The signature of every kernel: `(arena, begin, end)`.
pub(crate) type KernelFn = unsafe extern "C" fn(*mut u8, i64, i64);

/// How long an idle thread spins, then yields, before sleeping.
const SPIN: Duration = Duration::from_micros(50);
const YIELD: Duration = Duration::from_millis(1);

struct Shared {
    threads: usize,
    /// `epoch << 24 | front << 12 | back`: chunks `[front, back)` are
    /// unclaimed ([`pack`])
    state: AtomicU64,
    func: AtomicUsize,
    arena: AtomicUsize,
    units: AtomicUsize,
    chunks: AtomicUsize,
    /// chunks finished in the current job
    done: AtomicUsize,
    shutdown: AtomicBool,
    sleepers: AtomicUsize,
    /// workers that have started running `worker`
    started: AtomicUsize,
    /// the CPU the last worker to take a job ran on ([`current_cpu`])
    worker_cpu: AtomicI64,
    /// tests: workers see jobs but claim nothing, as if never scheduled
    #[cfg(test)]
    muted: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// Bits of each end of the unclaimed chunks in the state word; a job has
/// fewer chunks than `1 << END_BITS` (`compiled::chunks_for`: 8 a thread).
const END_BITS: u32 = 12;
const END_MASK: u64 = (1 << END_BITS) - 1;

/// The state word of `epoch` (its low 40 bits) with chunks `[front, back)`
/// unclaimed.
fn pack(epoch: u64, front: u64, back: u64) -> u64 {
    (epoch << (2 * END_BITS)) | (front << END_BITS) | back
}

/// The epoch (low 40 bits) of a state word.
fn epoch_of(state: u64) -> u64 {
    state >> (2 * END_BITS)
}

/// Units `[lo, hi)` of chunk `c` of `chunks` over `units`.
fn chunk_range(c: usize, chunks: usize, units: usize) -> (usize, usize) {
    (c * units / chunks, (c + 1) * units / chunks)
}

/// Waits until `done()` holds: spinning first, then yielding.
fn wait_until(mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut n = 0u32;
    while !done() {
        n = n.wrapping_add(1);
        if !n.is_multiple_of(64) {
            std::hint::spin_loop();
        } else if start.elapsed() > SPIN {
            std::thread::yield_now();
        }
    }
}

impl Shared {
    /// Claims and runs chunks of the job of `epoch` until none are left;
    /// returns how many this thread ran.
    ///
    /// # Safety
    /// `func`, `arena`, `units` and `chunks` must have been read after
    /// observing `epoch` (see the module docs for why a stale read is harmless).
    unsafe fn work(
        &self,
        epoch: u64,
        func: usize,
        arena: usize,
        units: usize,
        chunks: usize,
        from_back: bool,
    ) -> usize {
        let mut ran = 0;
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            let (front, back) = ((cur >> END_BITS) & END_MASK, cur & END_MASK);
            if epoch_of(cur) != epoch || front >= back {
                return ran;
            }
            let (next, c) = if from_back {
                (cur - 1, back - 1)
            } else {
                (cur + (1 << END_BITS), front)
            };
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let c = c as usize;
                    let (lo, hi) = chunk_range(c, chunks, units);
                    if lo < hi {
                        // SAFETY: the claim succeeded under `epoch`, so the job
                        // is still running (its last chunk is this one or later)
                        // and `func`/`arena` are the ones published with it:
                        // `Pool::run`'s caller guarantees they are valid until
                        // every chunk is done.
                        unsafe {
                            let f: KernelFn = std::mem::transmute::<usize, KernelFn>(func);
                            f(arena as *mut u8, lo as i64, hi as i64);
                        }
                    }
                    self.done.fetch_add(1, Ordering::Release);
                    ran += 1;
                    cur = self.state.load(Ordering::Acquire);
                }
                Err(now) => cur = now,
            }
        }
    }
}

/// See the module docs.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    /// when the workers stay away: see [`Solo`]
    solo: Cell<Solo>,
}

/// Jobs in a row the workers miss before the caller runs jobs alone.
const MISSES: u32 = 8;
/// Jobs run alone after the first run of misses; doubled each time the
/// jobs after it are missed again, up to [`SOLO_MAX`].
const SOLO_MIN: u32 = 256;
const SOLO_MAX: u32 = 8192;

/// The caller's judgement of whether splitting jobs pays (see the module
/// docs, "When the workers stay away").
#[derive(Clone, Copy, Debug)]
struct Solo {
    /// consecutive missed jobs
    misses: u32,
    /// jobs still to run alone
    left: u32,
    /// how many to run alone after the next run of misses
    next: u32,
    /// runs of misses so far (each started a time alone)
    spells: u32,
}

impl Pool {
    /// A pool running kernels on `threads` threads in all (the caller
    /// included), so `threads - 1` workers are started.
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            threads,
            state: AtomicU64::new(0),
            func: AtomicUsize::new(0),
            arena: AtomicUsize::new(0),
            units: AtomicUsize::new(0),
            chunks: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            worker_cpu: AtomicI64::new(-1),
            #[cfg(test)]
            muted: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut handles = Vec::new();
        for t in 1..threads {
            let s = Arc::clone(&shared);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("kiln-worker-{t}"))
                    .spawn(move || {
                        s.started.fetch_add(1, Ordering::Release);
                        worker(&s)
                    })?,
            );
        }
        // Wait until every worker runs: a thread's start-up allocates (its
        // name, thread-local state), and that must happen here, at compile
        // time, not inside the first `run_into` that needs the worker
        // (`run_into` allocates nothing; backends/tests/alloc.rs).
        wait_until(|| shared.started.load(Ordering::Acquire) == threads - 1);
        Ok(Pool {
            shared,
            handles,
            solo: Cell::new(Solo {
                misses: 0,
                left: 0,
                next: SOLO_MIN,
                spells: 0,
            }),
        })
    }

    /// How many times so far the workers missed [`MISSES`] jobs in a row,
    /// so that the caller ran jobs alone.
    pub fn solo_spells(&self) -> u32 {
        self.solo.get().spells
    }

    /// Whether this job runs on the caller alone (and counts it).
    fn alone(&self) -> bool {
        let mut solo = self.solo.get();
        let alone = solo.left > 0;
        if alone {
            solo.left -= 1;
            self.solo.set(solo);
        }
        alone
    }

    /// Records whether the workers missed the job just run (`None`: no
    /// evidence either way): after [`MISSES`] misses in a row the next
    /// jobs run alone.
    fn judge(&self, missed: Option<bool>) {
        let Some(missed) = missed else {
            return;
        };
        let mut solo = self.solo.get();
        if !missed {
            solo.misses = 0;
            solo.next = SOLO_MIN;
        } else {
            solo.misses += 1;
            if solo.misses >= MISSES {
                solo.misses = 0;
                solo.spells += 1;
                solo.left = solo.next;
                solo.next = (solo.next * 2).min(SOLO_MAX);
            }
        }
        self.solo.set(solo);
    }

    /// After a stall (see [`STALL`]): the next jobs run alone at once.
    fn judge_stalled(&self) {
        let mut solo = self.solo.get();
        solo.misses = MISSES - 1;
        self.solo.set(solo);
        self.judge(Some(true));
    }

    /// Runs units `[0, units)` of `func` over every thread and returns when
    /// all are done.
    ///
    /// # Safety
    /// `func` must be a kernel compiled for an arena laid out like `arena`,
    /// and `arena` must stay valid and unused by anyone else until this returns.
    pub unsafe fn run(&self, func: KernelFn, arena: *mut u8, units: usize) {
        let s = &*self.shared;
        let threads = s.threads;
        if threads == 1 || self.alone() {
            // SAFETY: the caller's contract.
            unsafe { func(arena, 0, units as i64) };
            return;
        }
        // the state word holds each end in END_BITS
        let chunks = crate::compiled::chunks_for(units, threads).min(END_MASK as usize);
        s.func.store(func as usize, Ordering::Relaxed);
        s.arena.store(arena as usize, Ordering::Relaxed);
        s.units.store(units, Ordering::Relaxed);
        s.chunks.store(chunks, Ordering::Relaxed);
        s.done.store(0, Ordering::Relaxed);
        let epoch = (epoch_of(s.state.load(Ordering::Relaxed)) + 1) & ((1 << 40) - 1);
        let start = Instant::now();
        // SeqCst pairs with the sleepers protocol in `worker`: either we see
        // a sleeper and notify it, or it sees the new epoch before sleeping.
        s.state
            .store(pack(epoch, 0, chunks as u64), Ordering::SeqCst);
        let asleep = s.sleepers.load(Ordering::SeqCst) > 0;
        if asleep {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        // SAFETY: the fields above were written before publishing `epoch`.
        let mine = unsafe { s.work(epoch, func as usize, arena as usize, units, chunks, false) };
        let own = start.elapsed();
        let waited = if s.done.load(Ordering::Acquire) == chunks {
            Duration::ZERO
        } else {
            wait_until(|| s.done.load(Ordering::Acquire) == chunks);
            start.elapsed() - own
        };
        // Missed: awake workers took nothing (not scheduled), or the caller
        // waited longer for their chunks than its own share took (a worker
        // descheduled holding one). A worker woken from its sleep is late
        // by design: its job counts neither way.
        // On the caller's CPU a worker only takes turns with it (the OS
        // put both threads on one CPU while another process holds the
        // other): each kernel split that way ran 1.5x slower than alone.
        let shared_cpu = mine < chunks && {
            let cpu = current_cpu();
            cpu >= 0 && s.worker_cpu.load(Ordering::Relaxed) == cpu
        };
        if waited > own + STALL {
            // a worker descheduled holding a chunk for a time slice: one such
            // wait costs more than the split could ever save
            self.judge_stalled();
            return;
        }
        self.judge(if waited > own + MISS_SLACK || shared_cpu {
            Some(true)
        } else if mine == chunks {
            // a job the caller finished before an awake, spinning worker
            // could notice it says nothing either
            (!asleep && own > MISS_SLACK).then_some(true)
        } else {
            Some(false)
        });
    }
}

/// A wait for the workers' chunks this much longer than the caller's own
/// share counts as [`MISSES`] misses at once: the OS took a worker away
/// for a time slice while it held a chunk.
const STALL: Duration = Duration::from_micros(500);

/// The CPU this thread is running on, or -1 where the OS does not say.
fn current_cpu() -> i64 {
    #[cfg(target_os = "linux")]
    {
        unsafe extern "C" {
            /// glibc and musl: the CPU the calling thread runs on, or -1
            fn sched_getcpu() -> std::ffi::c_int;
        }
        // SAFETY: `sched_getcpu` takes no arguments and touches no memory
        // of ours; it only reads the kernel's per-thread CPU number.
        i64::from(unsafe { sched_getcpu() })
    }
    #[cfg(not(target_os = "linux"))]
    {
        -1
    }
}

/// How much longer than its own share the caller may wait for the
/// workers' last chunks before the job counts as missed (a chunk's end
/// varies by a few microseconds of cache misses), and how long a job the
/// caller ran entirely must have taken to count as missed (a spinning
/// worker notices a job within a microsecond or two).
const MISS_SLACK: Duration = Duration::from_micros(20);

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut n = 0u32;
        let epoch = loop {
            let ep = epoch_of(s.state.load(Ordering::Acquire));
            if ep != seen {
                break ep;
            }
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            n = n.wrapping_add(1);
            if !n.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let idle = start.elapsed();
            if idle < SPIN {
                std::hint::spin_loop();
            } else if idle < SPIN + YIELD {
                std::thread::yield_now();
            } else {
                let g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                if epoch_of(s.state.load(Ordering::SeqCst)) == seen
                    && !s.shutdown.load(Ordering::SeqCst)
                {
                    // The timeout only guards against a lost wake-up bug;
                    // the protocol above does not lose them.
                    let _ = s.wake.wait_timeout(g, Duration::from_millis(100));
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        };
        seen = epoch;
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        #[cfg(test)]
        if s.muted.load(Ordering::Acquire) {
            continue;
        }
        s.worker_cpu.store(current_cpu(), Ordering::Relaxed);
        let func = s.func.load(Ordering::Relaxed);
        let arena = s.arena.load(Ordering::Relaxed);
        let units = s.units.load(Ordering::Relaxed);
        let chunks = s.chunks.load(Ordering::Relaxed);
        // SAFETY: read after observing `epoch` with Acquire; a claim only
        // succeeds while that job is still the current one.
        unsafe { s.work(epoch, func, arena, units, chunks, true) };
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU8;
    use std::thread::ThreadId;

    /// What a test job records: which thread ran each unit.
    struct Owners {
        caller: ThreadId,
        owner: [AtomicU8; 16],
    }

    /// Marks units `[lo, hi)` as run by the caller (1) or a worker (2).
    unsafe extern "C" fn mark(arena: *mut u8, lo: i64, hi: i64) {
        // SAFETY: the test passes a live `Owners` as the arena.
        let o = unsafe { &*(arena as *const Owners) };
        let who = if std::thread::current().id() == o.caller {
            1
        } else {
            2
        };
        for u in lo..hi {
            o.owner[u as usize].store(who, Ordering::Relaxed);
            // long enough a unit that the worker can join the job (16
            // empty units are done before it notices one)
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(20) {
                std::hint::spin_loop();
            }
        }
    }

    /// Every chunk runs once, the caller's a prefix and the worker's the
    /// rest: the caller claims from the front, the worker from the back,
    /// so neither ever takes a chunk between two of the other's (with one
    /// shared counter they interleave).
    #[test]
    fn the_caller_takes_the_front_and_the_worker_the_back() {
        let pool = Pool::new(2).expect("a pool");
        let mut o = Owners {
            caller: std::thread::current().id(),
            owner: std::array::from_fn(|_| AtomicU8::new(0)),
        };
        let mut both = 0;
        for _ in 0..300 {
            for x in &o.owner {
                x.store(0, Ordering::Relaxed);
            }
            // every job split: this test is about the claims, not about
            // when the caller goes alone (a worker slow to start on a
            // loaded machine would otherwise send it alone for the rest)
            pool.solo.set(Solo {
                left: 0,
                ..pool.solo.get()
            });
            // SAFETY: `mark` reads the arena as the `Owners` it is, which
            // outlives the call and is only read through atomics.
            unsafe { pool.run(mark, (&mut o as *mut Owners).cast(), 16) };
            let who: Vec<u8> = o.owner.iter().map(|x| x.load(Ordering::Relaxed)).collect();
            assert!(who.iter().all(|&w| w != 0), "a chunk did not run: {who:?}");
            let split = who.iter().take_while(|&&w| w == 1).count();
            assert!(who[split..].iter().all(|&w| w == 2), "interleaved: {who:?}");
            both += usize::from(split > 0 && split < 16);
        }
        // The worker spins between jobs and joins most of them, but on an
        // oversubscribed machine it may never be scheduled: then nothing
        // above tested the two ends, and the test says so.
        if both == 0 {
            kiln_ir::skip::skip(
                "runtime::pool::tests::the_caller_takes_the_front_and_the_worker_the_back",
                "the worker never ran a chunk (the machine did not schedule it)",
            );
        }
    }

    /// Workers that see every job but claim none (as when the OS never
    /// schedules them): after `MISSES` such jobs the caller stops
    /// publishing jobs for `SOLO_MIN` of them, then probes, and a failed
    /// probe doubles the time alone. Every unit still runs, on the caller.
    #[test]
    fn jobs_run_alone_while_the_workers_stay_away() {
        let pool = Pool::new(2).expect("a pool");
        pool.shared.muted.store(true, Ordering::SeqCst);
        let mut o = Owners {
            caller: std::thread::current().id(),
            owner: std::array::from_fn(|_| AtomicU8::new(0)),
        };
        let epoch = || epoch_of(pool.shared.state.load(Ordering::SeqCst));
        let job = |o: &mut Owners| {
            for x in &o.owner {
                x.store(0, Ordering::Relaxed);
            }
            // SAFETY: as in the test above.
            unsafe { pool.run(mark, (o as *mut Owners).cast(), 16) };
            assert!(o.owner.iter().all(|x| x.load(Ordering::Relaxed) == 1));
        };
        // Jobs until the caller goes alone: each published and missed, but
        // a job published while the worker slept (the machine left the
        // caller unscheduled for a millisecond) counts neither way, so on a
        // loaded machine it may take a few more than MISSES.
        let until_alone = |job: &dyn Fn(&mut Owners), o: &mut Owners| {
            let mut n = 0;
            while pool.solo.get().left == 0 {
                job(o);
                n += 1;
                assert!(n <= 100 * MISSES, "{n} missed jobs did not stop");
            }
            assert!(n >= MISSES, "alone after {n} jobs");
            n
        };
        let e0 = epoch();
        let first = until_alone(&job, &mut o);
        assert_eq!(
            epoch() - e0,
            u64::from(first),
            "each missed job was published"
        );
        assert_eq!(pool.solo.get().left, SOLO_MIN);
        for _ in 0..SOLO_MIN {
            job(&mut o);
        }
        assert_eq!(
            epoch() - e0,
            u64::from(first),
            "jobs alone are not published"
        );
        // the probe: published again, missed again, then twice as long alone
        let probes = until_alone(&job, &mut o);
        assert_eq!(epoch() - e0, u64::from(first + probes));
        assert_eq!(pool.solo.get().left, 2 * SOLO_MIN);
    }
}
