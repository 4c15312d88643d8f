//! From a loaded model to native code in one call: the optimiser
//! (kiln-passes: fusions by equality saturation, batch-norm folding, DCE,
//! CSE) and then the JIT (kiln-backends). `kiln run` and `kiln bench` go
//! through here, so what users run is the optimised graph; the reference
//! interpreter always runs the graph as loaded (it is the oracle).
//!
//! A batch of more than one image is compiled as the program for a group
//! of images (one by default) that each call runs once per group, the
//! groups spread over the threads, when `kiln_ir::batch` proves the graph
//! computes its images independently; otherwise the kernels compute the
//! whole batch.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use kiln_backends::CompiledModel;
use kiln_backends::aot::{AotObject, AotOptions, aot_targets, compile_aot};
use kiln_ir::{Graph, Limits, Model, TensorType, Value, batch};
use kiln_passes::{OptOptions, OptReport, optimize};

use crate::error::KilnError;

/// How to compile.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Run the optimiser before code generation (default `true`; `kiln
    /// run/bench/compile --no-opt` turns it off, to compare or to isolate a
    /// backend bug from a rewrite bug).
    pub optimize: bool,
    /// The optimiser's limits, cost model and rule families.
    pub passes: OptOptions,
    /// Threads, tiles and code-generation switches of the JIT.
    pub backend: kiln_backends::CompileOptions,
    /// Images a group of a batch holds (default 1): the kernels are
    /// compiled for one group and a call runs them per group, groups on
    /// separate threads. `None` compiles the kernels for the whole batch
    /// (`--batch-group all`). A batch the graph cannot split (see
    /// `kiln_ir::batch`) or that the group does not divide is compiled
    /// whole, and [`Compiled::whole_batch`] says why.
    pub batch_group: Option<usize>,
}

impl CompileOptions {
    /// These options with `limits` for the optimiser and the JIT alike.
    pub fn with_limits(mut self, limits: Limits) -> CompileOptions {
        self.passes.limits = limits;
        self.backend.limits = limits;
        self
    }
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            optimize: true,
            passes: OptOptions::default(),
            backend: kiln_backends::CompileOptions::default(),
            batch_group: Some(1),
        }
    }
}

/// A compiled model and what it took to get there.
pub struct Compiled {
    /// The native inference function (see [`CompiledModel`] for threads,
    /// `run` and `run_into`).
    pub model: CompiledModel,
    /// The optimiser's report, `None` when it did not run.
    pub report: Option<OptReport>,
    /// The graph that was compiled: the optimised one, or the model's own
    /// when the optimiser did not run (the Python binding's `Model.kir`).
    pub graph: Graph,
    /// Wall time of the optimiser (zero when it did not run).
    pub passes_time: Duration,
    /// Wall time of lowering, code generation and tile assembly.
    pub codegen_time: Duration,
    /// Why a batch of more than one image was compiled whole rather than
    /// in groups (`None` for batch 1 and for a batch run in groups,
    /// `model.groups()` of them).
    pub whole_batch: Option<String>,
    /// For a batch run in groups whose last nodes run once for the whole
    /// batch: those nodes' graph, optimised (`graph` is then the groups').
    pub tail_graph: Option<Graph>,
}

impl Compiled {
    /// Passes plus code generation.
    pub fn compile_time(&self) -> Duration {
        self.passes_time + self.codegen_time
    }
}

/// The optimised model, or `model` itself when `opts.optimize` is off,
/// with the optimiser's report and wall time.
pub fn prepare<'m>(
    model: &'m Model,
    opts: &CompileOptions,
) -> Result<(Cow<'m, Model>, Option<OptReport>, Duration), KilnError> {
    if !opts.optimize {
        return Ok((Cow::Borrowed(model), None, Duration::ZERO));
    }
    let t = Instant::now();
    let (opt, report) = optimize(model, &opts.passes)?;
    Ok((Cow::Owned(opt), Some(report), t.elapsed()))
}

/// Optimises (unless `opts.optimize` is off) and compiles `model` for this
/// CPU.
///
/// ```
/// let model = kiln::load_model("mobile_former_26m", &kiln::LoadOptions::default())?;
/// let c = kiln::compile(&model, &kiln::CompileOptions::default())?;
/// let x = kiln::random_input(&c.model.inputs()[0].1, 0);
/// let y = c.model.run(&[x])?;
/// assert_eq!(y[0].shape(), &[1, 1000]);
/// assert!(c.report.unwrap().ops.keys().any(|op| op.starts_with("fused_")));
/// # Ok::<(), kiln::KilnError>(())
/// ```
pub fn compile(model: &Model, opts: &CompileOptions) -> Result<Compiled, KilnError> {
    let (group, whole_batch) = match batch::batch_size(&model.graph) {
        Some(n) if n > 1 => match opts.batch_group {
            Some(images) if images < n => match grouped(model, images) {
                Ok(parts) => (Some((parts, n / images)), None),
                Err(why) => (None, Some(why)),
            },
            Some(_) => (None, None),
            None => (None, Some("--batch-group all".to_string())),
        },
        _ => (None, None),
    };
    let Some(((head, tail), groups)) = group else {
        let mut c = compile_graph(model, opts)?;
        c.whole_batch = whole_batch;
        return Ok(c);
    };
    let mut c = compile_graph(&head.group, opts)?;
    let g = &head.batch.graph;
    let types = |vs: Vec<Value>| -> Vec<TensorType> {
        vs.into_iter().map(|v| g.value_type(v).clone()).collect()
    };
    c.model = c.model.in_groups(
        groups,
        &types(g.inputs().iter().map(|&i| Value::of(i)).collect()),
        &types(g.outputs().to_vec()),
    )?;
    if let Some(tail) = tail {
        // the tail's kernels are small next to the groups': they run on the
        // calling thread, and its model starts no workers of its own
        let mut one = opts.clone();
        one.backend.threads = Some(1);
        let t = compile_graph(&tail, &one)?;
        c.passes_time += t.passes_time;
        c.codegen_time += t.codegen_time;
        c.model = c.model.with_tail(t.model)?;
        c.tail_graph = Some(t.graph);
    }
    Ok(c)
}

/// Bytes an image's values may hold, from some node to the outputs, for
/// that part of a batch model to run once on the whole batch after the
/// groups (`kiln_ir::batch::split_tail`): a classifier on pooled features
/// (Mobile-Former-294m's 1344 → 1920 → 1000 head holds 7.5 KiB an image).
const TAIL_BYTES: usize = 16 << 10;

/// The group part of a batch model.
struct Head {
    /// the model (its head, when a tail is cut off) at the whole batch
    batch: Model,
    /// the same for one group of images
    group: Model,
}

/// `model` for groups of `images` images: the head for a group, and the
/// tail (if one is cut off) for the whole batch; or why not.
fn grouped(model: &Model, images: usize) -> Result<(Head, Option<Model>), String> {
    if let Some(split) = batch::split_tail(model, TAIL_BYTES)
        && let Ok(group) = batch::rebatch(&split.head, images)
    {
        return Ok((
            Head {
                batch: split.head,
                group,
            },
            Some(split.tail),
        ));
    }
    let group = batch::rebatch(model, images)?;
    Ok((
        Head {
            batch: model.clone(),
            group,
        },
        None,
    ))
}

/// [`compile`] without splitting the batch.
fn compile_graph(model: &Model, opts: &CompileOptions) -> Result<Compiled, KilnError> {
    let (prepared, report, passes_time) = prepare(model, opts)?;
    let t = Instant::now();
    let compiled = kiln_backends::compile(&prepared, &opts.backend)?;
    Ok(Compiled {
        model: compiled,
        graph: prepared.into_owned().graph,
        report,
        passes_time,
        codegen_time: t.elapsed(),
        whole_batch: None,
        tail_graph: None,
    })
}

/// What [`aot`] compiles for (`kiln compile`'s switches).
#[derive(Clone, Debug)]
pub struct AotRequest {
    /// the target triple (`kiln compile --list-targets`)
    pub target: String,
    /// the CPU level; `None`: the target's first, most portable one
    pub cpu: Option<String>,
    /// the symbol prefix; `None`: the graph name made an identifier
    pub name: Option<String>,
    /// run the optimiser first
    pub optimize: bool,
    /// run inverted-residual chains band by band
    pub banded_chains: bool,
    /// threads the kernels are partitioned for (`None`:
    /// [`kiln_backends::aot::DEFAULT_THREADS`])
    pub threads: Option<usize>,
    /// resource limits of the optimiser and the code generator
    pub limits: Limits,
}

/// Optimises (unless `req.optimize` is off) and compiles `model` ahead of
/// time into an object file and its C header (docs/aot.md); returns them
/// with the options used (the resolved CPU level and symbol prefix).
pub fn aot(model: &Model, req: &AotRequest) -> Result<(AotObject, AotOptions), KilnError> {
    let (model, _, _) = prepare(
        model,
        &CompileOptions {
            optimize: req.optimize,
            ..CompileOptions::default()
        }
        .with_limits(req.limits),
    )?;
    let cpu = match &req.cpu {
        Some(c) => c.clone(),
        None => aot_targets()
            .into_iter()
            .find(|(t, _)| *t == req.target)
            .and_then(|(_, l)| l.first().map(|c| c.to_string()))
            .unwrap_or_default(),
    };
    let name = req.name.clone().unwrap_or_else(|| {
        let n: String = model
            .graph
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        if n.starts_with(|c: char| c.is_ascii_digit()) || n.is_empty() {
            format!("m{n}")
        } else {
            n
        }
    });
    let opts = AotOptions {
        target: req.target.clone(),
        cpu,
        name,
        compile: kiln_backends::CompileOptions {
            banded_chains: req.banded_chains,
            limits: req.limits,
            threads: req.threads,
            ..kiln_backends::CompileOptions::default()
        },
    };
    let obj = compile_aot(&model, &opts)?;
    Ok((obj, opts))
}
