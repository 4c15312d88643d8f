//! From a loaded model to native code in one call: the optimiser
//! (kiln-passes: fusions by equality saturation, batch-norm folding, DCE,
//! CSE) and then the JIT (kiln-backends). `kiln run` and `kiln bench` go
//! through here, so what users run is the optimised graph; the reference
//! interpreter always runs the graph as loaded (it is the oracle).

use std::borrow::Cow;
use std::time::{Duration, Instant};

use kiln_backends::CompiledModel;
use kiln_backends::aot::{AotObject, AotOptions, aot_targets, compile_aot};
use kiln_ir::{Graph, Limits, Model};
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
    let (prepared, report, passes_time) = prepare(model, opts)?;
    let t = Instant::now();
    let compiled = kiln_backends::compile(&prepared, &opts.backend)?;
    Ok(Compiled {
        model: compiled,
        graph: prepared.into_owned().graph,
        report,
        passes_time,
        codegen_time: t.elapsed(),
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
