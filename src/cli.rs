//! The `kiln` command line: argument definitions (clap derive) and one
//! function per subcommand. `main.rs` only parses, calls [`run`] and turns
//! an error into `error: <message>` and an exit code.
//!
//! Results go to stdout; notes about what kiln chose for the user (a seeded
//! random input, files written) go to stderr, so that stdout can be piped.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use kiln_frontends::{npy, onnx, safetensors, zoo};
use kiln_ir::{Limits, Model, Tensor, Value, WeightStore, text};

use crate::bench;
use crate::compile::CompileOptions;
use crate::error::KilnError;
use crate::info;
use crate::load::{LoadOptions, ModelSpec, load_model_with_notes, parse_input_shape};
use crate::opt::{Emit, cmd_opt};
use crate::run::{Backend, check_input, random_input, run_model_with, top_k};

/// kiln: a compiler for hybrid CNN-transformer vision models.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None)]
pub struct Cli {
    /// the subcommand
    #[command(subcommand)]
    pub command: Command,
}

/// `MODEL`: a `.kir` file, an `.onnx` file or a zoo name (`kiln list`).
const MODEL_HELP: &str = "a .kir file, an .onnx file or a zoo model name (see `kiln list`)";

/// How to get a model's weights; shared by every command that loads one.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// The model
    #[arg(value_name = "MODEL", help = MODEL_HELP)]
    pub model: String,
    /// Take every weight from this safetensors file
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Seed of the deterministic weight initialisation (and of the random
    /// input of `run`)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Set a resource limit (repeatable): tensor, weights, folded, arena,
    /// consts (bytes: 512M, 8G, ...), nodes, extract (counts); see docs/cli.md
    #[arg(long = "limit", value_name = "KEY=VALUE")]
    pub limit: Vec<String>,
    /// The shape of an input, NAME=D0,D1,... (repeatable): sizes an .onnx
    /// input's symbolic dimensions, e.g. --input-shape input=4,3,224,224
    #[arg(long, value_name = "NAME=DIMS", value_parser = parse_input_shape)]
    pub input_shape: Vec<(String, Vec<usize>)>,
}

impl ModelArgs {
    fn options(&self) -> Result<LoadOptions, KilnError> {
        Ok(LoadOptions {
            weights: self.weights.clone(),
            seed: self.seed,
            graph_only: false,
            limits: self.limits()?,
            input_shapes: self.input_shape.clone(),
        })
    }

    /// The default limits with every `--limit` applied in order.
    fn limits(&self) -> Result<Limits, KilnError> {
        let mut l = Limits::default();
        for spec in &self.limit {
            l.set(spec).map_err(KilnError::Usage)?;
        }
        Ok(l)
    }
}

/// [`load_model_with_notes`], with the notes on stderr.
fn load(args: &ModelArgs, opts: &LoadOptions, err: &mut dyn Write) -> Result<Model, KilnError> {
    let (model, notes) = load_model_with_notes(&args.model, opts)?;
    for n in notes {
        emit(err, &format!("note: {n}\n"))?;
    }
    Ok(model)
}

/// `--tiles`: the widest GEMM tile level the JIT may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tiles {
    /// assembled AVX-512 tiles (14×32) and the other assembled kernels
    Avx512,
    /// assembled AVX2 + FMA tiles (6×16)
    Avx2,
    /// the Cranelift f32x4 tile (4×8), nothing assembled
    F32x4,
}

impl From<Tiles> for kiln_backends::TileLevel {
    fn from(t: Tiles) -> Self {
        match t {
            Tiles::Avx512 => kiln_backends::TileLevel::Avx512,
            Tiles::Avx2 => kiln_backends::TileLevel::Avx2,
            Tiles::F32x4 => kiln_backends::TileLevel::F32x4,
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a model's inputs, outputs, parameter and MAC counts, per node
    Info {
        /// the model
        #[command(flatten)]
        model: ModelArgs,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Run a model on an input and print or save the output
    Run {
        /// the model
        #[command(flatten)]
        model: ModelArgs,
        /// Input tensor (.npy); repeat once per model input, in order.
        /// Without it, a seeded random input is used
        #[arg(long, value_name = "FILE")]
        input: Vec<PathBuf>,
        /// Write the output here (.npy); repeat once per model output
        #[arg(long, value_name = "FILE")]
        output: Vec<PathBuf>,
        /// Execution engine
        #[arg(long, value_enum, default_value_t = Backend::DEFAULT)]
        backend: Backend,
        /// Compile the graph as loaded, without the optimiser (JIT only)
        #[arg(long)]
        no_opt: bool,
        /// The widest GEMM tiles to use (JIT only; default: the widest the
        /// CPU has)
        #[arg(long, value_enum, value_name = "LEVEL")]
        tiles: Option<Tiles>,
        /// Run inverted-residual conv chains band by band (smaller arena;
        /// JIT only)
        #[arg(long)]
        banded_chains: bool,
        /// Images per group of a batch: the kernels are compiled for a
        /// group and each call runs them per group, groups on separate
        /// threads (default 1); `all` compiles the whole batch into the
        /// kernels. A batch whose images the graph mixes is compiled whole
        #[arg(long, value_name = "N|all", value_parser = parse_batch_group, default_value = "1")]
        batch_group: BatchGroup,
    },
    /// Optimise a model: discover fusions by equality saturation and
    /// explain the result or print the optimised graph
    Opt {
        /// the model
        #[command(flatten)]
        model: ModelArgs,
        /// Report what the optimiser did: rules fired, stop reason, cost
        /// before and after, ops of the result (the default)
        #[arg(long)]
        explain: bool,
        /// With --explain: print JSON
        #[arg(long, requires = "explain")]
        json: bool,
        /// Print the optimised graph instead: `ir` (.kir text), `dot`
        /// (Graphviz), `clif` (the JIT's Cranelift IR) or `plan` (the
        /// kernel chosen for each node)
        #[arg(long, value_enum, value_name = "FORMAT", conflicts_with = "explain")]
        emit: Option<Emit>,
        /// With --emit clif or plan: the widest GEMM tiles to use (default:
        /// the widest the CPU has)
        #[arg(long, value_enum, value_name = "LEVEL", requires = "emit")]
        tiles: Option<Tiles>,
    },
    /// Compile a model with the JIT and time it: compile time, median and
    /// minimum latency, GFLOP/s, arena size
    Bench {
        /// the model
        #[command(flatten)]
        model: ModelArgs,
        /// Threads to run on (default: every core)
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        /// Timed runs
        #[arg(long, value_name = "N", default_value_t = 50)]
        iters: usize,
        /// Untimed runs before timing
        #[arg(long, value_name = "N", default_value_t = 5)]
        warmup: usize,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        /// Compile the graph as loaded, without the optimiser
        #[arg(long)]
        no_opt: bool,
        /// Also time every kernel: a per-node table (time, share, GFLOP/s
        /// or GB/s), slowest first
        #[arg(long)]
        profile: bool,
        /// The widest GEMM tiles to use (default: the widest the CPU has),
        /// to compare levels on one machine
        #[arg(long, value_enum, value_name = "LEVEL")]
        tiles: Option<Tiles>,
        /// Run inverted-residual conv chains band by band (smaller arena)
        #[arg(long)]
        banded_chains: bool,
        /// Images per group of a batch: the kernels are compiled for a
        /// group and each call runs them per group, groups on separate
        /// threads (default 1); `all` compiles the whole batch into the
        /// kernels. A batch whose images the graph mixes is compiled whole
        #[arg(long, value_name = "N|all", value_parser = parse_batch_group, default_value = "1")]
        batch_group: BatchGroup,
    },
    /// List the zoo's models
    List,
    /// Write a model as .kir text (and optionally its weights)
    ExportKir {
        /// the model
        #[command(flatten)]
        model: ModelArgs,
        /// The .kir file to write
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Also write the weight values to this safetensors file
        #[arg(long, value_name = "FILE")]
        weights_out: Option<PathBuf>,
    },
    /// Compile a model ahead of time into an object file plus a C header
    /// (`model.o` and `model.h` beside it; see docs/aot.md)
    Compile {
        /// The model (required unless --list-targets)
        #[arg(value_name = "MODEL", help = MODEL_HELP, required_unless_present = "list_targets")]
        model: Option<String>,
        /// Take every weight from this safetensors file
        #[arg(long, value_name = "FILE")]
        weights: Option<PathBuf>,
        /// Seed of the deterministic weight initialisation
        #[arg(long, value_name = "N", default_value_t = 0)]
        seed: u64,
        /// The shape of an input, NAME=D0,D1,... (repeatable): sizes an
        /// .onnx input's symbolic dimensions
        #[arg(long, value_name = "NAME=DIMS", value_parser = parse_input_shape)]
        input_shape: Vec<(String, Vec<usize>)>,
        /// Target triple (see --list-targets)
        #[arg(
            long,
            value_name = "TRIPLE",
            default_value = "x86_64-unknown-linux-gnu"
        )]
        target: String,
        /// CPU level (default: the target's first, most portable one)
        #[arg(long, value_name = "LEVEL")]
        cpu: Option<String>,
        /// Symbol prefix: the entry point is `kiln_<NAME>_run` (default: the
        /// model name with non-identifier characters replaced by `_`)
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// The object file to write; the header goes beside it (`.h`)
        #[arg(short, long, value_name = "FILE", default_value = "model.o")]
        output: PathBuf,
        /// List the supported targets and CPU levels, then exit
        #[arg(long)]
        list_targets: bool,
        /// Compile the graph as loaded, without the optimiser
        #[arg(long)]
        no_opt: bool,
        /// Run inverted-residual conv chains band by band: the expanded
        /// tensors never in the scratch buffer, which shrinks
        #[arg(long)]
        banded_chains: bool,
        /// Partition the kernels for up to N threads: the most
        /// `kiln_<NAME>_run_parallel` can use (default 4)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
        threads: Option<u32>,
        /// Set a resource limit (repeatable; see `kiln run --help`)
        #[arg(long = "limit", value_name = "KEY=VALUE")]
        limit: Vec<String>,
    },
    /// Write a model and its weights as a self-contained ONNX file (opset 21)
    Export {
        /// the model
        #[command(flatten)]
        model: ModelArgs,
        /// The .onnx file to write
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
}

/// Where a subcommand writes: stdout for results, stderr for notes. Tests
/// capture both; the binary passes the process's streams.
pub struct Io<'a> {
    /// results
    pub out: &'a mut dyn Write,
    /// notes
    pub err: &'a mut dyn Write,
}

/// A write to stdout or stderr failed: the reader went away (`| head`), which
/// is not the user's error, or the disk is full. Reported, never a panic.
fn emit(w: &mut dyn Write, text: &str) -> Result<(), KilnError> {
    w.write_all(text.as_bytes())
        .and_then(|()| w.flush())
        .map_err(|source| KilnError::Io {
            path: PathBuf::from("<standard output or error>"),
            source,
        })
}

/// Runs one parsed command line.
pub fn run(cli: Cli, io: Io<'_>) -> Result<(), KilnError> {
    match cli.command {
        Command::Info { model, json } => cmd_info(&model, json, io),
        Command::Run {
            model,
            input,
            output,
            backend,
            no_opt,
            tiles,
            banded_chains,
            batch_group,
        } => cmd_run(
            &model,
            &input,
            &output,
            backend,
            (!no_opt, tiles, banded_chains, batch_group.0),
            io,
        ),
        Command::Opt {
            model,
            explain: _,
            json,
            emit: format,
            tiles,
        } => {
            // The optimiser needs weight values (batch-norm folding).
            let lo = model.options()?;
            let m = load(&model, &lo, io.err)?;
            let (out, note) = cmd_opt(&m, json, format, tiles.map(Into::into), lo.limits)?;
            emit(io.err, &note)?;
            emit(io.out, &out)
        }
        Command::Bench {
            model,
            threads,
            iters,
            warmup,
            json,
            no_opt,
            profile,
            tiles,
            banded_chains,
            batch_group,
        } => {
            let opts = bench::BenchOptions {
                threads,
                iters,
                warmup,
                seed: model.seed,
                optimize: !no_opt,
                profile,
                tiles: tiles.map(Into::into),
                banded_chains,
                batch_group: batch_group.0,
                limits: model.limits()?,
            };
            cmd_bench(&model, &opts, json, io)
        }
        Command::List => cmd_list(io),
        Command::ExportKir {
            model,
            output,
            weights_out,
        } => cmd_export_kir(&model, &output, weights_out.as_ref(), io),
        Command::Export { model, output } => cmd_export(&model, &output, io),
        Command::Compile {
            model,
            weights,
            seed,
            input_shape,
            target,
            cpu,
            name,
            output,
            list_targets,
            no_opt,
            banded_chains,
            threads,
            limit,
        } => match (list_targets, model) {
            (false, Some(model)) => {
                let args = ModelArgs {
                    model,
                    weights,
                    seed,
                    limit,
                    input_shape,
                };
                // the limits come from the model arguments (`--limit`)
                let aot = crate::compile::AotRequest {
                    target,
                    cpu,
                    name,
                    optimize: !no_opt,
                    banded_chains,
                    threads: threads.map(|t| t as usize),
                    limits: args.limits()?,
                };
                cmd_compile(&args, &aot, &output, io)
            }
            _ => cmd_list_targets(io),
        },
    }
}

fn cmd_list_targets(io: Io<'_>) -> Result<(), KilnError> {
    let mut text = String::new();
    for (t, levels) in kiln_backends::aot::aot_targets() {
        text.push_str(&format!("{t}  --cpu {}\n", levels.join(" | ")));
    }
    emit(io.out, &text)
}

fn cmd_compile(
    args: &ModelArgs,
    aot: &crate::compile::AotRequest,
    output: &PathBuf,
    io: Io<'_>,
) -> Result<(), KilnError> {
    // Before the (long) compilation, so a bad path fails at once.
    prepare_output_folder(output, io.err)?;
    let loaded = load(args, &args.options()?, io.err)?;
    let (obj, opts) = crate::compile::aot(&loaded, aot)?;
    let header_path = output.with_extension("h");
    std::fs::write(output, &obj.object).map_err(|source| KilnError::Io {
        path: output.clone(),
        source,
    })?;
    std::fs::write(&header_path, &obj.header).map_err(|source| KilnError::Io {
        path: header_path.clone(),
        source,
    })?;
    emit(
        io.err,
        &format!(
            "wrote {} ({} bytes: {} of constants; scratch {} bytes; entry kiln_{}_run, or _run_parallel splitting {} of {} kernels for up to {} threads; needs {}) and {}\n",
            output.display(),
            obj.object.len(),
            obj.const_bytes,
            obj.scratch_bytes,
            opts.name,
            obj.parallel_kernels,
            obj.kernels,
            obj.threads,
            if obj.undefined.is_empty() {
                "no symbols".to_string()
            } else {
                obj.undefined.join(", ")
            },
            header_path.display()
        ),
    )
}

/// Creates the folder `output` goes in if it does not exist (saying so on
/// stderr); a parent that exists but is not a folder is an error.
fn prepare_output_folder(output: &std::path::Path, err: &mut dyn Write) -> Result<(), KilnError> {
    let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.is_dir() {
        return Ok(());
    }
    let io_err = |source| KilnError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if dir.exists() {
        return Err(io_err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "exists and is not a folder, so the output cannot go in it",
        )));
    }
    std::fs::create_dir_all(dir).map_err(io_err)?;
    emit(err, &format!("note: created folder {}\n", dir.display()))
}

fn cmd_info(args: &ModelArgs, json: bool, io: Io<'_>) -> Result<(), KilnError> {
    // The report needs no weight values; given ones are still checked.
    let opts = LoadOptions {
        graph_only: true,
        ..args.options()?
    };
    let model = load(args, &opts, io.err)?;
    let report = info::report(&model.graph);
    let text = if json {
        info::render_json(&report)
    } else {
        info::render_text(&report)
    };
    emit(io.out, &text)?;
    // For an ONNX file, also what the import folded away.
    if let (false, Ok(ModelSpec::Onnx(path))) = (json, ModelSpec::parse(&args.model)) {
        let (_, import) = onnx::import_with_report(&path, &crate::load::import_options(&opts))?;
        emit(io.out, &format!("\nimport: {import}\n"))?;
    }
    Ok(())
}

fn cmd_export(args: &ModelArgs, output: &std::path::Path, io: Io<'_>) -> Result<(), KilnError> {
    let model = load(args, &args.options()?, io.err)?;
    onnx::export(&model, output)?;
    emit(io.err, &format!("wrote {}\n", output.display()))
}

/// `kiln run`'s code-generation switches: optimise, `--tiles`,
/// `--banded-chains`, `--batch-group`.
type RunSwitches = (bool, Option<Tiles>, bool, Option<usize>);

/// `--batch-group`: images per group, `None` for `all`.
#[derive(Clone, Copy, Debug)]
pub struct BatchGroup(Option<usize>);

fn parse_batch_group(s: &str) -> Result<BatchGroup, String> {
    if s == "all" {
        return Ok(BatchGroup(None));
    }
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(BatchGroup(Some(n))),
        _ => Err(format!(
            "expected a positive number of images or `all`, got `{s}`"
        )),
    }
}

fn cmd_run(
    args: &ModelArgs,
    inputs: &[PathBuf],
    outputs: &[PathBuf],
    backend: Backend,
    (optimize, tiles, banded_chains, batch_group): RunSwitches,
    io: Io<'_>,
) -> Result<(), KilnError> {
    let model = load(args, &args.options()?, io.err)?;
    let g = &model.graph;
    if !inputs.is_empty() && inputs.len() != g.inputs().len() {
        return Err(KilnError::Usage(format!(
            "--input given {} time(s), the model has {} input(s)",
            inputs.len(),
            g.inputs().len()
        )));
    }
    if !outputs.is_empty() && outputs.len() != g.outputs().len() {
        return Err(KilnError::Usage(format!(
            "--output given {} time(s), the model has {} output(s)",
            outputs.len(),
            g.outputs().len()
        )));
    }
    let tensors: Vec<Tensor> = if inputs.is_empty() {
        g.inputs()
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let info = g.value_info(Value::of(id));
                // Each input gets its own stream.
                let seed = args.seed.wrapping_add(i as u64);
                emit(
                    io.err,
                    &format!(
                        "note: no --input given: using a seeded random input for %{} ({}, seed {seed}, uniform in [-1, 1))\n",
                        info.name, info.ty
                    ),
                )?;
                Ok(random_input(&info.ty, seed))
            })
            .collect::<Result<_, KilnError>>()?
    } else {
        inputs
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let t = npy::read(path)?;
                check_input(g, i, &t, &path.display().to_string())?;
                Ok(t)
            })
            .collect::<Result<_, KilnError>>()?
    };
    let mut opts = CompileOptions {
        optimize,
        ..CompileOptions::default()
    }
    .with_limits(args.limits()?);
    if let Some(t) = tiles {
        opts.backend.max_tiles = t.into();
    }
    opts.backend.banded_chains = banded_chains;
    opts.batch_group = batch_group;
    let results = run_model_with(&model, &tensors, backend, &opts)?;
    if !outputs.is_empty() {
        for (path, t) in outputs.iter().zip(&results) {
            npy::write(path, t)?;
            emit(io.err, &format!("wrote {} ({})\n", path.display(), t.ty()))?;
        }
        return Ok(());
    }
    let mut text = String::new();
    for (v, t) in g.outputs().iter().zip(&results) {
        text.push_str(&format!("output {}: {}\n", g.display_value(*v), t.ty()));
        if let (&[1, k], Some(values)) = (t.shape(), t.as_f32()) {
            text.push_str(&format!("top-{} of {k}:\n", k.min(5)));
            for (rank, (i, x)) in top_k(values, 5).into_iter().enumerate() {
                text.push_str(&format!("  {}. index {i:>5}  value {x:.6}\n", rank + 1));
            }
        }
    }
    emit(io.out, &text)
}

fn cmd_bench(
    args: &ModelArgs,
    opts: &bench::BenchOptions,
    json: bool,
    io: Io<'_>,
) -> Result<(), KilnError> {
    opts.check()?;
    let model = load(args, &args.options()?, io.err)?;
    // Progress: optimising and compiling a large model takes a noticeable
    // fraction of a second; say what is happening (stderr, so stdout stays
    // one report).
    emit(
        io.err,
        &format!(
            "compiling {} ({} nodes{})...\n",
            model.graph.name,
            model.graph.node_count(),
            if opts.optimize {
                ", optimising first"
            } else {
                ""
            }
        ),
    )?;
    let report = bench::bench_model(&model, opts)?;
    let text = if json {
        bench::render_json(&report)
    } else {
        bench::render_text(&report)
    };
    emit(io.out, &text)
}

fn cmd_list(io: Io<'_>) -> Result<(), KilnError> {
    let entries = zoo::list();
    let w0 = entries
        .iter()
        .map(|e| e.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let w1 = entries
        .iter()
        .map(|e| e.family.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let mut text = format!("{:<w0$}  {:<w1$}  resolution\n", "name", "family");
    for e in entries {
        text.push_str(&format!(
            "{:<w0$}  {:<w1$}  {}x{}\n",
            e.name, e.family, e.resolution, e.resolution
        ));
    }
    emit(io.out, &text)
}

fn cmd_export_kir(
    args: &ModelArgs,
    output: &PathBuf,
    weights_out: Option<&PathBuf>,
    io: Io<'_>,
) -> Result<(), KilnError> {
    // Weight values are needed only to write them.
    let opts = LoadOptions {
        graph_only: weights_out.is_none(),
        ..args.options()?
    };
    let model = load(args, &opts, io.err)?;
    std::fs::write(output, text::print(&model.graph)).map_err(|source| KilnError::Io {
        path: output.clone(),
        source,
    })?;
    emit(io.err, &format!("wrote {}\n", output.display()))?;
    if let Some(path) = weights_out {
        // Only the weights the graph declares: a `--weights` file may hold
        // more, and the exported pair should be exactly the model.
        let mut declared = WeightStore::new();
        for &id in model.graph.weights() {
            let name = &model.graph.value_info(Value::of(id)).name;
            if let Some(t) = model.weights.get(name) {
                declared.insert(name.clone(), t.clone());
            }
        }
        safetensors::save(path, &declared)?;
        emit(
            io.err,
            &format!("wrote {} ({} tensors)\n", path.display(), declared.len()),
        )?;
    }
    Ok(())
}
