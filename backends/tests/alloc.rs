//! `run_into` allocates nothing once the arena pool has its arena: a
//! counting global allocator watches a warmed-up call, at 1 and 2 threads.

// A global allocator must be an `unsafe impl`; this test binary's allocator
// forwards every call to the system allocator unchanged and only counts.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::{Fill, Rng, opts, poisoned, single};
use kiln_backends::compile;
use kiln_ir::Op;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
/// The counter is global: the tests take turns, so that one's compiling
/// is not counted as the other's run.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

// SAFETY: every method forwards to `System` with the caller's arguments, so
// the allocator contract is `System`'s; the counter has no effect on it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A 3×3 conv 8 → 16 channels over `n` images of `hw`², random from `seed`.
fn conv(n: usize, hw: usize, seed: u64) -> (kiln_ir::Model, Vec<kiln_ir::Tensor>) {
    single(
        Op::Conv2d {
            stride: [1, 1],
            pad: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: 1,
        },
        &[
            common::input(&[n, 8, hw, hw]),
            common::weight(&[16, 8, 3, 3]),
            common::weight(&[16]),
        ],
        &mut Rng(seed),
        Fill::Signed,
    )
}

/// Allocations made while `run` runs ten times.
fn allocations(mut run: impl FnMut()) -> usize {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..10 {
        run();
    }
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCATIONS.load(Ordering::SeqCst)
}

#[test]
fn run_into_does_not_allocate() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (model, inputs) = conv(1, 30, 9);
    for threads in [1, 2] {
        let m = compile(&model, &opts(threads)).unwrap();
        let mut out = poisoned(&m);
        m.run_into(&inputs, &mut out).unwrap(); // warm-up: the arena
        assert_eq!(
            allocations(|| m.run_into(&inputs, &mut out).unwrap()),
            0,
            "run_into allocated at {threads} thread(s)"
        );
    }
}

/// A batch run in groups of images allocates nothing either: its arenas
/// (one per group running at once, plus one for the call's addresses) are
/// made when the model is.
#[test]
fn grouped_runs_do_not_allocate() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (model, inputs) = conv(4, 20, 10);
    let one = kiln_ir::batch::rebatch(&model, 1).unwrap();
    let types = |vs: &[kiln_ir::Value]| -> Vec<kiln_ir::TensorType> {
        vs.iter()
            .map(|v| model.graph.value_type(*v).clone())
            .collect()
    };
    let g = &model.graph;
    let ins: Vec<kiln_ir::Value> = g.inputs().iter().map(|&i| kiln_ir::Value::of(i)).collect();
    for threads in [1, 2] {
        let m = compile(&one, &opts(threads))
            .unwrap()
            .in_groups(4, &types(&ins), &types(g.outputs()))
            .unwrap();
        let mut out = poisoned(&m);
        assert_eq!(
            allocations(|| m.run_into(&inputs, &mut out).unwrap()),
            0,
            "a grouped run_into allocated at {threads} thread(s)"
        );
    }
}
