//! The compiled model at run time: checking and binding tensors, running
//! the kernels over a per-call arena (on the worker pool), running a batch
//! as groups of images (on the pool's threads), profiling.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cranelift_jit::JITModule;
use kiln_ir::{DType, Tensor, TensorData, TensorType};

use crate::error::BackendError;
use crate::runtime::pool::{KernelFn, Pool};
use crate::runtime::{Arena, ConstStore};
use crate::target::TileLevel;

/// Facts about a compiled model, for `kiln bench` and reports.
#[derive(Clone, Debug)]
pub struct CompileStats {
    /// wall time of [`compile`](super::compile)
    pub compile_time: Duration,
    /// kernel functions generated
    pub kernels: usize,
    /// size of the per-call arena (intermediates and scratch, after reuse)
    pub arena_bytes: usize,
    /// what the intermediates would take without buffer reuse
    pub unshared_bytes: usize,
    /// bytes of packed weights and tables owned by the model
    pub const_bytes: usize,
    /// element-wise kernels that write over their operand
    pub inplace_kernels: usize,
    /// assembled functions (tile variants and, at `Avx512`, the other
    /// assembled kernels; 0 at the f32x4 level)
    pub asm_variants: usize,
    /// the tile level the model was compiled at: the target's, capped by
    /// the options
    pub tiles: TileLevel,
    /// threads the model runs on
    pub threads: usize,
    /// the host target and the features kiln uses
    pub target: String,
}

/// A kernel function ready to call.
pub(super) struct Step {
    pub(super) func: usize,
    pub(super) units: usize,
    pub(super) parallel: bool,
    /// the node it came from and what it does, for profiles
    pub(super) node: String,
    pub(super) what: String,
    pub(super) work: NodeWork,
}

/// The compulsory work of one graph node: what a profile divides a
/// kernel's time by (GFLOP/s for compute, GB/s for memory traffic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeWork {
    /// multiply-accumulates (`kiln_ir::stats::node_macs`)
    pub macs: u64,
    /// bytes of the node's operands plus its outputs: the traffic a kernel
    /// cannot avoid (each read and written once)
    pub bytes: u64,
}

/// Time spent in one kernel during [`CompiledModel::profile`].
#[derive(Clone, Debug)]
pub struct KernelTime {
    /// the node the kernel came from (`%12 (conv2d)`)
    pub node: String,
    /// what the kernel does
    pub kernel: String,
    /// wall time
    pub time: Duration,
    /// the node's work; a node lowered to several kernels (im2col, then a
    /// GEMM) repeats it on each, so sum times per node before dividing
    pub work: NodeWork,
    /// whether the kernel was split over the worker pool (always false at
    /// one thread)
    pub parallel: bool,
}

/// Owns the JIT's executable memory (the assembled tiles' module and the
/// kernels' module) and frees it on drop.
pub(super) struct JitCode(pub(super) Vec<JITModule>);

// SAFETY: after `finalize_definitions` the module is never used again except
// to free its memory in `drop`, which needs `&mut self` (so no other thread
// can be using it); the code it owns is immutable and callable from any thread.
unsafe impl Send for JitCode {}
// SAFETY: as above — no method of the module is called through `&JitCode`.
unsafe impl Sync for JitCode {}

impl Drop for JitCode {
    fn drop(&mut self) {
        for m in self.0.drain(..) {
            // SAFETY: the only pointers into this memory are the `Step`s of the
            // `CompiledModel` being dropped (and the tile addresses baked into
            // its kernels); no run can be in progress because running borrows
            // the model.
            unsafe { m.free_memory() };
        }
    }
}

/// A model compiled to native code for the host. See the module docs for
/// how it may be shared between threads.
pub struct CompiledModel {
    pub(super) steps: Vec<Step>,
    pub(super) inputs: Vec<(String, TensorType)>,
    pub(super) outputs: Vec<(String, TensorType)>,
    pub(super) arena_bytes: usize,
    pub(super) arenas: Mutex<Vec<Arena>>,
    pub(super) pool: Mutex<Pool>,
    /// runs of the kernels per call, each on the next group of images
    /// ([`CompiledModel::in_groups`]); 1: the kernels compute the whole call
    pub(super) groups: usize,
    /// per input then output: bytes from one group's elements to the next
    pub(super) group_bytes: Vec<usize>,
    /// the kernels run once for the whole batch after the groups
    /// ([`CompiledModel::with_tail`])
    pub(super) tail: Option<Box<Tail>>,
    pub(super) stats: CompileStats,
    // Kept alive because compiled code holds their addresses.
    pub(super) _consts: ConstStore,
    pub(super) _weights: kiln_ir::WeightStore,
    pub(super) _code: JitCode,
}

/// The part of a batch model run once for the whole batch after its
/// groups: its inputs are this model's (the groups') outputs, held in a
/// buffer of the model's.
pub(super) struct Tail {
    model: CompiledModel,
    /// byte offset of each cut tensor in a cut buffer
    offsets: Vec<usize>,
    /// bytes of a cut buffer
    bytes: usize,
    /// cut buffers, one per call in flight (as arenas)
    cuts: Mutex<Vec<Arena>>,
}

/// Elements of a tensor borrowed from the caller (a numpy array, a
/// memory-mapped file, ...), for [`CompiledModel::run_views`].
#[derive(Clone, Copy, Debug)]
pub enum Elems<'a> {
    /// `f32` elements, row-major.
    F32(&'a [f32]),
    /// `i64` elements, row-major.
    I64(&'a [i64]),
}

/// Mutable elements of a tensor borrowed from the caller, for
/// [`CompiledModel::run_views`].
#[derive(Debug)]
pub enum ElemsMut<'a> {
    /// `f32` elements, row-major.
    F32(&'a mut [f32]),
    /// `i64` elements, row-major.
    I64(&'a mut [i64]),
}

/// An input read in place: a shape and the caller's row-major elements.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    /// the shape; the elements must number its product
    pub shape: &'a [usize],
    /// the elements
    pub data: Elems<'a>,
}

/// An output written in place: a shape and the caller's row-major elements.
#[derive(Debug)]
pub struct TensorMut<'a> {
    /// the shape; the elements must number its product
    pub shape: &'a [usize],
    /// the elements
    pub data: ElemsMut<'a>,
}

/// Checks arguments — `(dtype, shape, element count)` each — against the
/// declared types without allocating (the message is built only on error).
/// The element count matters for borrowed views, whose slices could be
/// shorter than their shape says: kernels index by the shape.
fn check<'t>(
    what: &str,
    want: &[(String, TensorType)],
    got: impl ExactSizeIterator<Item = (DType, &'t [usize], usize)>,
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "the model has {} {what}s, {} given",
            want.len(),
            got.len()
        ));
    }
    for (k, ((name, ty), (dtype, shape, len))) in want.iter().zip(got).enumerate() {
        if dtype != ty.dtype || shape != ty.shape.as_slice() {
            let got = TensorType::new(dtype, shape.to_vec());
            return Err(format!("{what} {k} (%{name}) must be {ty}, got {got}"));
        }
        if len != ty.numel() {
            return Err(format!(
                "{what} {k} (%{name}) has {len} elements, its shape {ty} needs {}",
                ty.numel()
            ));
        }
    }
    Ok(())
}

fn tensor_arg(t: &Tensor) -> (DType, &[usize], usize) {
    (t.dtype(), t.shape(), t.numel())
}

fn tensor_addr(t: &Tensor) -> usize {
    match t.data() {
        TensorData::F32(d) => d.as_ptr() as usize,
        TensorData::I64(d) => d.as_ptr() as usize,
    }
}

/// The address of `t`'s elements, made unique first (copy-on-write).
fn tensor_addr_mut(t: &mut Tensor) -> usize {
    match t.dtype() {
        DType::F32 => t.as_f32_mut().map_or(0, |d| d.as_mut_ptr() as usize),
        DType::I64 => t.as_i64_mut().map_or(0, |d| d.as_mut_ptr() as usize),
    }
}

impl Elems<'_> {
    fn arg<'s>(&self, shape: &'s [usize]) -> (DType, &'s [usize], usize) {
        match self {
            Elems::F32(d) => (DType::F32, shape, d.len()),
            Elems::I64(d) => (DType::I64, shape, d.len()),
        }
    }
}

impl ElemsMut<'_> {
    fn arg<'s>(&self, shape: &'s [usize]) -> (DType, &'s [usize], usize) {
        match self {
            ElemsMut::F32(d) => (DType::F32, shape, d.len()),
            ElemsMut::I64(d) => (DType::I64, shape, d.len()),
        }
    }
}

impl CompiledModel {
    /// Runs the model; returns one tensor per graph output.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let mut outs: Vec<Tensor> = self.outputs.iter().map(|(_, t)| Tensor::zeros(t)).collect();
        self.run_into(inputs, &mut outs)?;
        Ok(outs)
    }

    /// Runs the model writing into `outputs`, which must already have the
    /// outputs' types. Allocates nothing once an arena is pooled (the first
    /// call allocates it) and the output tensors own their data (a shared
    /// output tensor is copied on write, see [`Tensor::as_f32_mut`]).
    pub fn run_into(&self, inputs: &[Tensor], outputs: &mut [Tensor]) -> Result<(), BackendError> {
        self.check_args(
            inputs.iter().map(tensor_arg),
            outputs.iter().map(tensor_arg),
        )?;
        // SAFETY: the addresses are those of `inputs` and `outputs`, just
        // checked and borrowed (outputs mutably, each made unique by
        // `as_f32_mut`) for the whole call.
        unsafe {
            self.execute(
                inputs.iter().map(tensor_addr),
                outputs.iter_mut().map(tensor_addr_mut),
                None,
            )
        };
        Ok(())
    }

    /// [`CompiledModel::run_into`] on borrowed memory: reads the inputs and
    /// writes the outputs in place, without copying either (the Python
    /// binding passes numpy arrays this way). Each view's shape must be the
    /// declared one and its slice hold exactly that many elements. The
    /// elements may have any address their type allows (no alignment beyond
    /// the element's is assumed, as for [`Tensor`] data).
    pub fn run_views(
        &self,
        inputs: &[TensorRef<'_>],
        outputs: &mut [TensorMut<'_>],
    ) -> Result<(), BackendError> {
        self.check_args(
            inputs.iter().map(|t| t.data.arg(t.shape)),
            outputs.iter().map(|t| t.data.arg(t.shape)),
        )?;
        // SAFETY: the addresses are those of `inputs` and `outputs`, just
        // checked and borrowed (outputs mutably, so overlapping nothing
        // else) for the whole call.
        unsafe {
            self.execute(
                inputs.iter().map(|t| match t.data {
                    Elems::F32(d) => d.as_ptr() as usize,
                    Elems::I64(d) => d.as_ptr() as usize,
                }),
                outputs.iter_mut().map(|t| match &mut t.data {
                    ElemsMut::F32(d) => d.as_mut_ptr() as usize,
                    ElemsMut::I64(d) => d.as_mut_ptr() as usize,
                }),
                None,
            )
        };
        Ok(())
    }

    /// Runs the model once, timing every kernel (the outputs are discarded).
    pub fn profile(&self, inputs: &[Tensor]) -> Result<Vec<KernelTime>, BackendError> {
        let mut outs: Vec<Tensor> = self.outputs.iter().map(|(_, t)| Tensor::zeros(t)).collect();
        self.check_args(inputs.iter().map(tensor_arg), outs.iter().map(tensor_arg))?;
        let mut times = Vec::with_capacity(self.all_steps().count());
        // SAFETY: as in `run_into`.
        unsafe {
            self.execute(
                inputs.iter().map(tensor_addr),
                outs.iter_mut().map(tensor_addr_mut),
                Some(&mut times),
            )
        };
        Ok(self
            .all_steps()
            .zip(times)
            .map(|(s, time)| KernelTime {
                node: s.node.clone(),
                kernel: s.what.clone(),
                time,
                work: s.work,
                parallel: s.parallel,
            })
            .collect())
    }

    /// Checks run arguments against the graph's inputs and outputs.
    fn check_args<'a, 'b>(
        &self,
        inputs: impl ExactSizeIterator<Item = (DType, &'a [usize], usize)>,
        outputs: impl ExactSizeIterator<Item = (DType, &'b [usize], usize)>,
    ) -> Result<(), BackendError> {
        check("input", &self.inputs, inputs).map_err(BackendError::Input)?;
        check("output", &self.outputs, outputs).map_err(BackendError::Output)
    }

    /// Runs the kernels over the given input and output addresses.
    ///
    /// # Safety
    ///
    /// The addresses are those of the arguments the caller checked with
    /// [`CompiledModel::check_args`] (declared dtype and shape, exactly
    /// that many elements), in order, and the caller keeps them borrowed
    /// (outputs mutably, not overlapping anything else) until this returns.
    unsafe fn execute(
        &self,
        inputs: impl Iterator<Item = usize>,
        outputs: impl Iterator<Item = usize>,
        mut times: Option<&mut Vec<Duration>>,
    ) {
        let mut arena = self.take_arena();
        let n_in = self.inputs.len();
        for (k, p) in inputs.enumerate() {
            arena.set_slot(k, p);
        }
        // with a tail, the groups write the cut buffer and the tail the outputs
        let mut tail = self.tail.as_deref().map(|t| {
            let mut cut = t
                .cuts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .unwrap_or_else(|| Arena::new(t.bytes));
            let mut ta = t.model.take_arena();
            let base = cut.base() as usize;
            for (k, off) in t.offsets.iter().enumerate() {
                arena.set_slot(n_in + k, base + off);
                ta.set_slot(k, base + off);
            }
            (t, cut, ta)
        });
        match &mut tail {
            Some((t, _, ta)) => {
                for (k, p) in outputs.enumerate() {
                    ta.set_slot(t.offsets.len() + k, p);
                }
            }
            None => {
                for (k, p) in outputs.enumerate() {
                    arena.set_slot(n_in + k, p);
                }
            }
        }
        let pool = self.pool.try_lock().ok();
        if self.groups == 1 {
            // SAFETY: the arena was laid out by this model's plan: its header
            // holds the addresses of `inputs` and `outputs` (or of the cut
            // buffer, ours), which by this function's contract are checked
            // and stay borrowed until we return; nobody else uses this arena.
            unsafe { self.run_steps(arena.base(), pool.as_deref(), times.as_deref_mut()) };
        } else {
            // SAFETY: as above; `arena` holds the first group's addresses.
            unsafe { self.run_groups(&arena, pool.as_deref(), times.as_deref_mut()) };
        }
        if let Some((t, cut, mut ta)) = tail {
            // SAFETY: the tail's arena holds the cut buffer's addresses (ours,
            // written by the groups just run) and the caller's outputs.
            unsafe { t.model.run_steps(ta.base(), pool.as_deref(), times) };
            t.model.put_arena(ta);
            t.cuts.lock().unwrap_or_else(|e| e.into_inner()).push(cut);
        }
        drop(pool);
        self.put_arena(arena);
    }

    /// An arena from the model's free list, or a new one.
    fn take_arena(&self) -> Arena {
        self.arenas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_else(|| Arena::new(self.arena_bytes))
    }

    /// Returns an arena to the free list.
    fn put_arena(&self, arena: Arena) {
        self.arenas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(arena);
    }

    /// Runs every kernel once over the arena at `base`, splitting the
    /// parallel ones over `pool`; pushes each kernel's time to `times`.
    ///
    /// # Safety
    ///
    /// `base` is an arena of this model whose header holds the addresses of
    /// checked inputs and outputs that stay borrowed (outputs mutably, not
    /// overlapping anything else) until this returns; nobody else uses it.
    unsafe fn run_steps(
        &self,
        base: *mut u8,
        pool: Option<&Pool>,
        mut times: Option<&mut Vec<Duration>>,
    ) {
        for s in &self.steps {
            let t0 = times.is_some().then(Instant::now);
            if s.units > 0 {
                // SAFETY: `s.func` is a finalized kernel of this model's JIT
                // module (kept alive by `self`) with signature `KernelFn`.
                let f: KernelFn = unsafe { std::mem::transmute::<usize, KernelFn>(s.func) };
                match (pool, s.parallel) {
                    // SAFETY: the arena is this model's, bound as this
                    // function's contract says.
                    (Some(p), true) => unsafe { p.run(f, base, s.units) },
                    // SAFETY: as above, on this thread alone.
                    _ => unsafe { f(base, 0, s.units as i64) },
                }
            }
            if let (Some(t), Some(t0)) = (times.as_deref_mut(), t0) {
                t.push(t0.elapsed());
            }
        }
    }

    /// Runs the kernels once per group of images. `first` holds the first
    /// group's addresses; group `g`'s are `g` group strides further on.
    /// With a pool of `t` threads, groups run `t` at a time, one per thread
    /// with its own arena and every kernel on that thread; the groups left
    /// over (fewer than `t`) run one after the other with their kernels
    /// split over the pool, as are all groups when profiling (`times` then
    /// gets each kernel's time summed over the groups).
    ///
    /// # Safety
    ///
    /// As [`CompiledModel::run_steps`], for every group: the addresses in
    /// `first` plus `g` strides are of checked, borrowed tensors.
    unsafe fn run_groups(
        &self,
        first: &Arena,
        pool: Option<&Pool>,
        times: Option<&mut Vec<Duration>>,
    ) {
        let threads = pool.map_or(1, |_| self.stats.threads);
        let together = if threads > 1 && times.is_none() {
            self.groups - self.groups % threads
        } else {
            0
        };
        if let (Some(p), true) = (pool, together > 0) {
            let job = GroupJob { model: self, first };
            // SAFETY: `group_task` reads `job` through the pointer only while
            // `run` has not returned, and `job` outlives the call; each group
            // runs on its own arena with addresses of this call's tensors
            // (this function's contract), disjoint between groups.
            unsafe { p.run(group_task, (&raw const job).cast_mut().cast(), together) };
        }
        let mut sum: Vec<Duration> = Vec::new();
        for g in together..self.groups {
            let mut arena = self.take_arena();
            for (k, step) in self.group_bytes.iter().enumerate() {
                arena.set_slot(k, first.slot(k) + g * step);
            }
            let mut t = times.as_ref().map(|_| Vec::with_capacity(self.steps.len()));
            // SAFETY: group `g`'s addresses, by this function's contract.
            unsafe { self.run_steps(arena.base(), pool, t.as_mut()) };
            self.put_arena(arena);
            if let Some(t) = t {
                sum.resize(t.len(), Duration::ZERO);
                sum.iter_mut().zip(t).for_each(|(s, t)| *s += t);
            }
        }
        if let Some(times) = times {
            times.extend(sum);
        }
    }

    /// Runs each call as `groups` runs of these kernels, on consecutive
    /// groups of images: the kernels compute one group (as built by
    /// `kiln_ir::batch::rebatch`), and a call takes the whole batch,
    /// `inputs` and `outputs` being its types (the names stay the
    /// compiled ones). Each group's part of every
    /// input and output must be one contiguous slice, the `g`-th of
    /// `groups` equal ones (the batch is the major axis).
    pub fn in_groups(
        mut self,
        groups: usize,
        inputs: &[TensorType],
        outputs: &[TensorType],
    ) -> Result<CompiledModel, BackendError> {
        let fits = |mine: &[(String, TensorType)], call: &[TensorType]| {
            mine.len() == call.len()
                && mine
                    .iter()
                    .zip(call)
                    .all(|((_, t), c)| t.dtype == c.dtype && t.numel() * groups == c.numel())
        };
        if groups == 0 || !fits(&self.inputs, inputs) || !fits(&self.outputs, outputs) {
            return Err(BackendError::Invalid(kiln_ir::IrError::Graph(format!(
                "{groups} groups of the compiled inputs and outputs do not make the call's"
            ))));
        }
        self.group_bytes = self
            .inputs
            .iter()
            .chain(&self.outputs)
            .map(|(_, t)| t.size_bytes())
            .collect();
        self.groups = groups;
        // A call holds one arena for the addresses and one per group
        // running at once: made now, so that no call allocates (a worker
        // that joins for the first time in a later call would otherwise).
        let arenas = 1 + groups.min(self.stats.threads);
        *self.arenas.get_mut().unwrap_or_else(|e| e.into_inner()) =
            (0..arenas).map(|_| Arena::new(self.arena_bytes)).collect();
        for ((_, t), c) in self.inputs.iter_mut().zip(inputs) {
            *t = c.clone();
        }
        for ((_, t), c) in self.outputs.iter_mut().zip(outputs) {
            *t = c.clone();
        }
        Ok(self)
    }

    /// Runs `tail` once per call after this model's kernels (its groups),
    /// on the whole batch: `tail`'s inputs are this model's outputs (same
    /// count, dtypes and shapes, as `kiln_ir::batch::split_tail` cuts
    /// them), which then live in a buffer of the model's, and the call's
    /// outputs are `tail`'s. `tail` runs its kernels on this model's pool.
    pub fn with_tail(mut self, mut tail: CompiledModel) -> Result<CompiledModel, BackendError> {
        let fits = self.outputs.len() == tail.inputs.len()
            && self
                .outputs
                .iter()
                .zip(&tail.inputs)
                .all(|((_, a), (_, b))| a == b);
        if !fits || self.tail.is_some() || tail.tail.is_some() {
            return Err(BackendError::Invalid(kiln_ir::IrError::Graph(
                "the tail's inputs are not the outputs of the model before it".into(),
            )));
        }
        let mut offsets = Vec::with_capacity(self.outputs.len());
        let mut bytes = 0usize;
        for (_, t) in &self.outputs {
            offsets.push(bytes);
            bytes += t.size_bytes().next_multiple_of(64);
        }
        let outputs = tail.outputs.clone();
        // made now, so that no call allocates
        *tail.arenas.get_mut().unwrap_or_else(|e| e.into_inner()) =
            vec![Arena::new(tail.arena_bytes)];
        self.tail = Some(Box::new(Tail {
            model: tail,
            offsets,
            bytes,
            cuts: Mutex::new(vec![Arena::new(bytes)]),
        }));
        self.outputs = outputs;
        Ok(self)
    }

    /// Kernels run once per call for the whole batch after the groups
    /// ([`CompiledModel::with_tail`]; 0 without a tail).
    pub fn tail_kernels(&self) -> usize {
        self.tail.as_deref().map_or(0, |t| t.model.steps.len())
    }

    /// Runs of the kernels per call (1 unless [`CompiledModel::in_groups`]).
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Every kernel in run order: the node it came from and what it
    /// computes (the names [`CompiledModel::profile`] reports, e.g. `fused
    /// pointwise conv 96→24 1x1 +bias relu6 +res: gemm ...`).
    pub fn kernel_descriptions(&self) -> Vec<(String, String)> {
        self.all_steps()
            .map(|s| (s.node.clone(), s.what.clone()))
            .collect()
    }

    /// This model's kernels, then its tail's.
    fn all_steps(&self) -> impl Iterator<Item = &Step> {
        let tail = self.tail.as_deref().map(|t| t.model.steps.iter());
        self.steps.iter().chain(tail.into_iter().flatten())
    }

    /// Compile-time facts: time, kernel count, arena size, threads.
    pub fn stats(&self) -> &CompileStats {
        &self.stats
    }

    /// Bytes of the per-call arena.
    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }

    /// Kernels split over the worker pool (each pays one fork/join).
    pub fn parallel_kernels(&self) -> usize {
        self.all_steps().filter(|s| s.parallel).count()
    }

    /// The median overhead of one fork/join of the worker pool over
    /// `samples` rounds (zero at one thread): a job of `4·threads` units
    /// that each spin for 1 µs is timed, and the ideal split of its work
    /// (`4 µs` per thread) subtracted. What remains is publishing the job,
    /// waking or reaching the workers, claiming chunks and waiting for the
    /// last one — including the cost of a worker that arrives late. Times
    /// [`CompiledModel::parallel_kernels`], it estimates what
    /// synchronisation costs a run. Waits for any run in progress on
    /// another thread.
    pub fn barrier_cost(&self, samples: usize) -> Duration {
        const SPIN: Duration = Duration::from_micros(1);
        /// One unit of work: a 1 µs spin per unit in `[begin, end)`.
        unsafe extern "C" fn spin(_: *mut u8, begin: i64, end: i64) {
            for _ in begin..end {
                let t = Instant::now();
                while t.elapsed() < SPIN {
                    std::hint::spin_loop();
                }
            }
        }
        let threads = self.stats.threads;
        if threads <= 1 || samples == 0 {
            return Duration::ZERO;
        }
        let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let units = 4 * threads;
        let ideal = SPIN * (units / threads) as u32;
        let mut times: Vec<Duration> = (0..samples)
            .map(|_| {
                let t = Instant::now();
                // SAFETY: `spin` touches no memory, so any arena pointer
                // (here null) satisfies `run`'s contract.
                unsafe { pool.run(spin, std::ptr::null_mut(), units) };
                t.elapsed().saturating_sub(ideal)
            })
            .collect();
        times.sort();
        times[times.len() / 2]
    }

    /// How many times the worker pool has gone to running kernels on the
    /// caller alone because its workers missed jobs (`runtime::pool`,
    /// "When the workers stay away"); 0 at one thread. Waits for any run
    /// in progress on another thread.
    pub fn solo_spells(&self) -> u32 {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .solo_spells()
    }

    /// Threads a run uses.
    pub fn threads(&self) -> usize {
        self.stats.threads
    }

    /// Names and types of the graph inputs, in order.
    pub fn inputs(&self) -> &[(String, TensorType)] {
        &self.inputs
    }

    /// Names and types of the graph outputs, in order.
    pub fn outputs(&self) -> &[(String, TensorType)] {
        &self.outputs
    }
}

/// What [`group_task`] runs: the model and the first group's addresses.
struct GroupJob<'a> {
    model: &'a CompiledModel,
    first: &'a Arena,
}

/// A pool job over groups of images: groups `[begin, end)`, each on its
/// own arena with every kernel on this thread.
///
/// # Safety
///
/// `job` points to a live [`GroupJob`] whose addresses satisfy
/// [`CompiledModel::run_groups`]' contract for these groups.
unsafe extern "C" fn group_task(job: *mut u8, begin: i64, end: i64) {
    // SAFETY: the caller's contract.
    let job = unsafe { &*(job as *const GroupJob<'_>) };
    let m = job.model;
    for g in begin as usize..end as usize {
        let mut arena = m.take_arena();
        for (k, step) in m.group_bytes.iter().enumerate() {
            arena.set_slot(k, job.first.slot(k) + g * step);
        }
        // SAFETY: group `g`'s addresses, by the caller's contract; no pool,
        // since this runs inside one of its jobs.
        unsafe { m.run_steps(arena.base(), None, None) };
        m.put_arena(arena);
    }
}
