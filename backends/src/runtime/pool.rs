//! A persistent worker pool: `threads - 1` workers plus the calling thread
//! run the units of one kernel at a time, each taking a fixed slice
//! `[t·U/T, (t+1)·U/T)` of the kernel's `U` units.
//!
//! A run dispatches a few hundred kernels back to back, so waking workers
//! through the OS for each would cost more than small kernels take. Workers
//! therefore spin on an epoch counter for a while after each job, then yield,
//! then sleep on a condition variable (so an idle model costs no CPU).

// Calling JIT-compiled kernels through raw function pointers is inherently
// unsafe; this module and `compiled` are the only places that do it.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The signature of every kernel: `(arena, begin, end)`.
pub(crate) type KernelFn = unsafe extern "C" fn(*mut u8, i64, i64);

/// How long an idle thread spins, then yields, before sleeping.
const SPIN: Duration = Duration::from_micros(200);
const YIELD: Duration = Duration::from_millis(2);

struct Shared {
    threads: usize,
    epoch: AtomicU64,
    func: AtomicUsize,
    arena: AtomicUsize,
    units: AtomicUsize,
    pending: AtomicUsize,
    shutdown: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

/// The units of `units` that thread `t` of `threads` runs.
pub(crate) fn slice_of(t: usize, threads: usize, units: usize) -> (usize, usize) {
    (t * units / threads, (t + 1) * units / threads)
}

/// Waits until `done()` holds: spinning first, then yielding.
fn wait_until(mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut n = 0u32;
    while !done() {
        n = n.wrapping_add(1);
        if n % 64 != 0 {
            std::hint::spin_loop();
        } else if start.elapsed() > SPIN {
            std::thread::yield_now();
        }
    }
}

/// See the module docs.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool running kernels on `threads` threads in all (the caller
    /// included), so `threads - 1` workers are started.
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            threads,
            epoch: AtomicU64::new(0),
            func: AtomicUsize::new(0),
            arena: AtomicUsize::new(0),
            units: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut handles = Vec::new();
        for t in 1..threads {
            let s = Arc::clone(&shared);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("kiln-worker-{t}"))
                    .spawn(move || worker(&s, t))?,
            );
        }
        Ok(Pool { shared, handles })
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
        if threads == 1 {
            // SAFETY: the caller's contract.
            unsafe { func(arena, 0, units as i64) };
            return;
        }
        s.func.store(func as usize, Ordering::Relaxed);
        s.arena.store(arena as usize, Ordering::Relaxed);
        s.units.store(units, Ordering::Relaxed);
        s.pending.store(threads - 1, Ordering::Relaxed);
        // SeqCst pairs with the sleepers protocol in `worker`: either we see
        // a sleeper and notify it, or it sees the new epoch before sleeping.
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let (lo, hi) = slice_of(0, threads, units);
        if lo < hi {
            // SAFETY: the caller's contract; units [lo, hi) are ours alone.
            unsafe { func(arena, lo as i64, hi as i64) };
        }
        wait_until(|| s.pending.load(Ordering::Acquire) == 0);
    }
}

fn worker(s: &Shared, t: usize) {
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut n = 0u32;
        loop {
            let ep = s.epoch.load(Ordering::Acquire);
            if ep != seen {
                seen = ep;
                break;
            }
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            n = n.wrapping_add(1);
            if n % 64 != 0 {
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
                if s.epoch.load(Ordering::SeqCst) == seen && !s.shutdown.load(Ordering::SeqCst) {
                    // The timeout only guards against a lost wake-up bug;
                    // the protocol above does not lose them.
                    let _ = s.wake.wait_timeout(g, Duration::from_millis(100));
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        let func = s.func.load(Ordering::Relaxed);
        let arena = s.arena.load(Ordering::Relaxed) as *mut u8;
        let units = s.units.load(Ordering::Relaxed);
        let (lo, hi) = slice_of(t, s.threads, units);
        if lo < hi {
            // SAFETY: `func` was stored by `Pool::run` from a `KernelFn`
            // (same size and representation as usize on every supported
            // target), and `run` does not return — so the arena stays valid —
            // until every worker has decremented `pending` below.
            unsafe {
                let f: KernelFn = std::mem::transmute::<usize, KernelFn>(func);
                f(arena, lo as i64, hi as i64);
            }
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
