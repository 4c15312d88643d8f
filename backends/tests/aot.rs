//! Ahead-of-time objects end to end: compile a model with `compile_aot`,
//! link it with the C harness of `examples/aot-c/main.c` using the target's
//! C compiler, run it (natively, or under qemu-user for aarch64 and
//! riscv64), and compare its output with the reference interpreter
//! (relative error at most 1e-4 of the largest output magnitude). Every
//! object's symbols are checked too: exactly the two documented exports,
//! and undefined symbols exactly the ones the header lists.
//!
//! Cross tests need `aarch64-linux-gnu-gcc`, `riscv64-linux-gnu-gcc`,
//! `qemu-aarch64` and `qemu-riscv64` (Debian: `apt-get install
//! gcc-aarch64-linux-gnu gcc-riscv64-linux-gnu qemu-user`; `scripts/test`
//! installs them where it can). Without them the cross parts are reported
//! as skipped (`kiln_ir::skip`), or fail when `KILN_AOT_CROSS=require`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Fill, Rng, TOL, rel_error, tensor};
use kiln_backends::CompileOptions;
use kiln_backends::aot::{AotOptions, compile_aot};
use kiln_frontends::zoo::{self, ZooOptions};
use kiln_ir::{BinaryOp, Graph, Model, Op, Tensor, TensorType, UnaryOp, Value, WeightStore};

/// C library symbols an object may need (the header lists the actual ones).
const ALLOWED_UNDEFINED: &[&str] = &["powf", "fmaf", "floorf", "ceilf", "truncf", "nearbyintf"];

/// How to build and run for one target.
struct Host {
    triple: &'static str,
    cpu: &'static str,
    cc: &'static str,
    /// command prefix that runs a binary of the target (empty: natively)
    runner: &'static [&'static str],
}

const X86_V2: Host = Host {
    triple: "x86_64-unknown-linux-gnu",
    cpu: "x86-64-v2",
    cc: "cc",
    runner: &[],
};
const X86_V3: Host = Host {
    triple: "x86_64-unknown-linux-gnu",
    cpu: "x86-64-v3",
    cc: "cc",
    runner: &[],
};
/// AVX-512: objects carry the assembled functions (tiles, transcendentals,
/// depthwise rows) as local functions.
const X86_V4: Host = Host {
    triple: "x86_64-unknown-linux-gnu",
    cpu: "x86-64-v4",
    cc: "cc",
    runner: &[],
};
const AARCH64: Host = Host {
    triple: "aarch64-unknown-linux-gnu",
    cpu: "generic",
    cc: "aarch64-linux-gnu-gcc",
    runner: &["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"],
};
/// Plain RV64GC: kernels scalarised, run on a qemu CPU with V turned off
/// (qemu's `rv64` model has no V by default; `v=false` says so).
const RISCV64: Host = Host {
    triple: "riscv64gc-unknown-linux-gnu",
    cpu: "rv64gc",
    cc: "riscv64-linux-gnu-gcc",
    runner: RV64_NO_V,
};
const RV64_NO_V: &[&str] = &[
    "qemu-riscv64",
    "-cpu",
    "rv64,v=false",
    "-L",
    "/usr/riscv64-linux-gnu",
];
const RISCV64_V: Host = Host {
    triple: "riscv64gc-unknown-linux-gnu",
    cpu: "rv64gcv",
    cc: "riscv64-linux-gnu-gcc",
    runner: &[
        "qemu-riscv64",
        "-cpu",
        "rv64,v=true,vlen=128,elen=64",
        "-L",
        "/usr/riscv64-linux-gnu",
    ],
};

fn present(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether `host`'s tools are installed; when they are missing, reports a
/// skip — or panics when `KILN_AOT_CROSS=require`.
fn tools(host: &Host) -> bool {
    let mut missing: Vec<&str> = Vec::new();
    for t in std::iter::once(host.cc).chain(host.runner.first().copied()) {
        if !present(t) {
            missing.push(t);
        }
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "missing {} (apt-get install gcc-aarch64-linux-gnu gcc-riscv64-linux-gnu qemu-user)",
        missing.join(", ")
    );
    if std::env::var("KILN_AOT_CROSS").as_deref() == Ok("require") {
        panic!("{}: {why} and KILN_AOT_CROSS=require", host.triple);
    }
    kiln_ir::skip::skip(&format!("aot {} ({})", host.triple, host.cpu), &why);
    false
}

fn harness() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/aot-c/main.c")
}

fn run(cmd: &mut Command, what: &str) {
    if let Err(e) = try_run(cmd, what) {
        panic!("{e}");
    }
}

fn try_run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what}: {cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Global symbols of an ELF object: (defined, undefined).
fn symbols(obj: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new("readelf")
        .args(["-sW"])
        .arg(obj)
        .output()
        .expect("readelf (binutils) is needed for the symbol checks");
    assert!(out.status.success(), "readelf failed");
    let (mut def, mut undef) = (BTreeSet::new(), BTreeSet::new());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Num: Value Size Type Bind Vis Ndx Name
        if f.len() < 8 || !(f[4] == "GLOBAL" || f[4] == "WEAK") {
            continue;
        }
        if f[6] == "UND" {
            undef.insert(f[7].to_string());
        } else {
            def.insert(f[7].to_string());
        }
    }
    (def, undef)
}

/// Compiles `model` for `host`, links and runs it on `input`, checks the
/// symbols, and returns the output tensor.
fn aot_run(
    what: &str,
    model: &Model,
    input: &Tensor,
    host: &Host,
    compile: &CompileOptions,
) -> Tensor {
    aot_try_run(what, model, input, host, host.runner, compile, 1).unwrap_or_else(|e| panic!("{e}"))
}

/// The front-end options every object here is compiled with: Cranelift's
/// verifier on.
fn aot_options() -> CompileOptions {
    CompileOptions {
        verify_ir: true,
        ..CompileOptions::default()
    }
}

/// [`aot_run`] under `runner`, through the parallel entry point on the
/// header's pthread pool when `threads > 1` (the harness then fails unless
/// the output equals the serial call's bit for bit); a run that fails is an
/// `Err` with its output (compiling and linking still panic).
fn aot_try_run(
    what: &str,
    model: &Model,
    input: &Tensor,
    host: &Host,
    runner: &[&str],
    compile: &CompileOptions,
    threads: usize,
) -> Result<Tensor, String> {
    let name = "m";
    let opts = AotOptions {
        target: host.triple.into(),
        cpu: host.cpu.into(),
        name: name.into(),
        compile: compile.clone(),
    };
    let obj = compile_aot(model, &opts).unwrap_or_else(|e| panic!("{what}: compile failed: {e}"));
    let dir = std::env::temp_dir().join(format!(
        "kiln_aot_{what}_{}_{}_{}",
        host.triple,
        host.cpu,
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let o = dir.join("model.o");
    std::fs::write(&o, &obj.object).unwrap();
    std::fs::write(dir.join("model.h"), &obj.header).unwrap();

    // symbols: exactly the two entry points; undefined exactly as documented
    let (def, undef) = symbols(&o);
    let want: BTreeSet<String> = [
        format!("kiln_{name}_run"),
        format!("kiln_{name}_run_parallel"),
        format!("kiln_{name}_scratch_bytes"),
    ]
    .into_iter()
    .collect();
    assert_eq!(def, want, "{what}: exported symbols");
    let listed: BTreeSet<String> = obj.undefined.iter().cloned().collect();
    assert_eq!(
        undef, listed,
        "{what}: undefined symbols vs AotObject::undefined"
    );
    for u in &undef {
        assert!(
            ALLOWED_UNDEFINED.contains(&u.as_str()),
            "{what}: unexpected undefined symbol {u}"
        );
        assert!(
            obj.header.contains(u.as_str()),
            "{what}: header does not list {u}"
        );
    }

    let exe = dir.join("run");
    run(
        Command::new(host.cc)
            .args(["-O2", "-std=c11", "-I"])
            .arg(&dir)
            .arg("-DKILN_MODEL_HEADER=\"model.h\"")
            .arg(format!("-DKILN_NAME={name}"))
            .arg(format!("-DKILN_UPPER={}", name.to_ascii_uppercase()))
            .arg(harness())
            .arg(&o)
            .args(["-lm", "-pthread"])
            .arg("-o")
            .arg(&exe),
        what,
    );
    let inp = dir.join("input.raw");
    let bytes: Vec<u8> = input
        .as_f32()
        .unwrap()
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    std::fs::write(&inp, bytes).unwrap();
    let outp = dir.join("output.raw");
    let mut cmd = match runner.split_first() {
        Some((r, rest)) => {
            let mut c = Command::new(r);
            c.args(rest).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    // two runs: the second reuses the scratch the first left dirty
    let ran = try_run(
        cmd.arg(&inp).arg("2").arg(&outp).arg(threads.to_string()),
        what,
    );
    if let Err(e) = ran {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    let raw = std::fs::read(&outp).unwrap();
    let g = &model.graph;
    let ty = g.value_type(g.outputs()[0]).clone();
    let vals: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Tensor::from_f32(ty.shape.clone(), vals).unwrap())
}

/// Runs `model` through every host in `hosts` and compares with the
/// interpreter.
fn check(what: &str, model: &Model, hosts: &[&Host]) {
    check_against(what, model, model, hosts, &aot_options());
}

/// What `kiln compile` ships: the optimised model (fused kernels in the
/// object), compared with the interpreter on the model as built.
fn check_optimised(what: &str, model: &Model, hosts: &[&Host]) {
    check_optimised_with(what, model, hosts, &aot_options());
}

/// [`check_optimised`] with these front-end options.
fn check_optimised_with(what: &str, model: &Model, hosts: &[&Host], compile: &CompileOptions) {
    let (opt, _) = kiln_passes::optimize(model, &kiln_passes::OptOptions::default())
        .unwrap_or_else(|e| panic!("{what}: optimiser failed: {e}"));
    assert!(
        opt.graph
            .node_ids()
            .any(|id| matches!(opt.graph.node(id).op, Op::Fused(_))),
        "{what}: nothing fused"
    );
    check_against(&format!("{what} (optimised)"), &opt, model, hosts, compile);
}

/// Runs `model` through every host and compares with the interpreter on
/// `reference` (the same function, possibly before optimisation).
fn check_against(
    what: &str,
    model: &Model,
    reference: &Model,
    hosts: &[&Host],
    compile: &CompileOptions,
) {
    let input = common::graph_inputs(&model.graph).remove(0);
    let want = kiln_ir::interp::run(
        &reference.graph,
        &reference.weights,
        std::slice::from_ref(&input),
    )
    .unwrap_or_else(|e| panic!("{what}: interpreter failed: {e}"));
    for host in hosts {
        if !tools(host) {
            continue;
        }
        let got = aot_run(what, model, &input, host, compile);
        let e = rel_error(&got, &want[0]);
        assert!(
            e <= TOL,
            "{what} on {} ({}): relative error {e:.3e}",
            host.triple,
            host.cpu
        );
    }
}

fn zoo_model(name: &str) -> Model {
    zoo::build(name, &ZooOptions::default()).unwrap()
}

/// A small graph with a convolution, GELU, a per-channel runtime power
/// (`powf`), a pointwise convolution and a softmax.
fn small_graph(seed: u64) -> Model {
    let mut rng = Rng(seed);
    let mut g = Graph::new("small");
    let mut weights = WeightStore::new();
    let mut w = |g: &mut Graph, name: &str, shape: &[usize], fill: Fill| {
        let v = g.add_weight(name, TensorType::f32(shape.to_vec())).unwrap();
        weights.insert(name.to_string(), tensor(&mut rng, shape, fill));
        v
    };
    let x = g.add_input("x", TensorType::f32([1, 8, 6, 6])).unwrap();
    let w1 = w(&mut g, "w1", &[16, 8, 3, 3], Fill::Range(-0.5, 0.5));
    let p = w(&mut g, "p", &[1, 16, 1, 1], Fill::Range(0.5, 2.0));
    let w2 = w(&mut g, "w2", &[4, 16, 1, 1], Fill::Range(-0.5, 0.5));
    let conv = |stride, pad| Op::Conv2d {
        stride,
        pad,
        dilation: [1, 1],
        groups: 1,
    };
    let y = g.add(conv([1, 1], [1, 1, 1, 1]), &[x, w1]).unwrap();
    let y = g.add(Op::Unary(UnaryOp::Gelu), &[y]).unwrap();
    let y = g.add(Op::Unary(UnaryOp::Abs), &[y]).unwrap();
    let y = g.add(Op::Binary(BinaryOp::Pow), &[y, p]).unwrap();
    let y = g.add(conv([1, 1], [0, 0, 0, 0]), &[y, w2]).unwrap();
    let y = g.add(Op::Softmax { axis: 1 }, &[y]).unwrap();
    g.set_outputs(vec![y]);
    Model { graph: g, weights }
}

#[test]
fn x86_64_mobile_former_26m() {
    check(
        "mobile_former_26m",
        &zoo_model("mobile_former_26m"),
        &[&X86_V2],
    );
}

#[test]
fn x86_64_mobilevitv2_050() {
    check(
        "mobilevitv2_050",
        &zoo_model("mobilevitv2_050"),
        &[&X86_V2, &X86_V3],
    );
}

#[test]
fn x86_64_xformer() {
    check("xformer", &zoo_model("xformer"), &[&X86_V2]);
}

#[test]
fn x86_64_optimised_zoo_models() {
    for name in ["mobile_former_26m", "mobilevitv2_050", "xformer"] {
        check_optimised(name, &zoo_model(name), &[&X86_V2]);
    }
}

/// x86-64-v4 objects with the assembled AVX-512 functions, run natively
/// when this machine has AVX-512 (skipped, saying so, otherwise).
#[test]
fn x86_64_v4_objects_with_assembled_functions() {
    let avx512 = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512bw");
    // the object holds local assembled functions whichever machine compiles
    let obj = compile_aot(
        &small_graph(6),
        &AotOptions {
            target: X86_V4.triple.into(),
            cpu: X86_V4.cpu.into(),
            name: "v4".into(),
            compile: CompileOptions::default(),
        },
    )
    .unwrap();
    assert!(obj.header.contains("__builtin_cpu_supports(\"avx512f\")"));
    if !avx512 {
        kiln_ir::skip::skip(
            "x86_64_v4_objects_with_assembled_functions (running the object)",
            "no AVX-512 here",
        );
        return;
    }
    check("small", &small_graph(6), &[&X86_V4]);
    for name in ["mobile_former_26m", "mobilevitv2_050"] {
        check_optimised(name, &zoo_model(name), &[&X86_V4]);
    }
}

/// x86-64-v3 objects carry the assembled AVX2 tiles as local functions
/// (the header names the level and checks AVX2 and FMA), and run natively
/// when this machine has AVX2 + FMA (skipped, saying so, otherwise).
#[test]
fn x86_64_v3_objects_with_avx2_tiles() {
    let avx2 =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    let compile = |cpu: &str| {
        compile_aot(
            &small_graph(7),
            &AotOptions {
                target: X86_V3.triple.into(),
                cpu: cpu.into(),
                name: "v3".into(),
                compile: CompileOptions::default(),
            },
        )
        .unwrap()
    };
    let obj = compile(X86_V3.cpu);
    assert_eq!(obj.tiles, kiln_backends::TileLevel::Avx2);
    assert!(obj.asm_functions > 0, "no assembled tiles in the object");
    assert!(obj.header.contains("#define KILN_V3_TILES \"avx2\""));
    assert!(obj.header.contains("__builtin_cpu_supports(\"avx2\")"));
    assert!(obj.header.contains("__builtin_cpu_supports(\"fma\")"));
    assert!(!obj.header.contains("avx512f"));
    // v2 has no AVX: no assembled code at all
    let v2 = compile(X86_V2.cpu);
    assert_eq!(v2.asm_functions, 0);
    assert!(v2.header.contains("#define KILN_V3_TILES \"f32x4\""));
    if !avx2 {
        kiln_ir::skip::skip(
            "x86_64_v3_objects_with_avx2_tiles (running the object)",
            "no AVX2 + FMA here",
        );
        return;
    }
    check("small", &small_graph(7), &[&X86_V3]);
    for name in ["mobile_former_26m", "mobilevitv2_050"] {
        check_optimised(name, &zoo_model(name), &[&X86_V3]);
    }
    // `kiln compile --banded-chains`: the inverted residuals band by band
    check_optimised_with(
        "mobilevitv2_050 banded chains",
        &zoo_model("mobilevitv2_050"),
        &[&X86_V3],
        &CompileOptions {
            banded_chains: true,
            ..aot_options()
        },
    );
}

#[test]
fn aarch64_optimised_mobile_former_26m() {
    check_optimised(
        "mobile_former_26m",
        &zoo_model("mobile_former_26m"),
        &[&AARCH64],
    );
}

/// The parallel entry point on the header's pthread pool at 1, 2 and 4
/// threads: each run equals the serial call bit for bit (the harness
/// checks) and the interpreter within TOL; natively and on aarch64 under
/// qemu. The object says which kernels it splits.
#[test]
fn parallel_entry_point_is_bit_identical_at_any_thread_count() {
    let model = zoo_model("mobilevitv2_050");
    let (opt, _) = kiln_passes::optimize(&model, &kiln_passes::OptOptions::default()).unwrap();
    let input = common::graph_inputs(&model.graph).remove(0);
    let want = kiln_ir::interp::run(&model.graph, &model.weights, std::slice::from_ref(&input))
        .unwrap()
        .remove(0);
    for host in [&X86_V2, &X86_V3, &AARCH64] {
        if !tools(host) {
            continue;
        }
        let opts = AotOptions {
            target: host.triple.into(),
            cpu: host.cpu.into(),
            name: "m".into(),
            compile: aot_options(),
        };
        let obj = compile_aot(&opt, &opts).unwrap();
        assert_eq!(obj.threads, kiln_backends::aot::DEFAULT_THREADS);
        assert!(
            obj.parallel_kernels * 2 > obj.kernels,
            "{}: only {} of {} kernels split",
            host.triple,
            obj.parallel_kernels,
            obj.kernels
        );
        let mut outs = Vec::new();
        for threads in [1, 2, 4] {
            let what = format!("parallel_{threads}");
            let got = aot_try_run(
                &what,
                &opt,
                &input,
                host,
                host.runner,
                &aot_options(),
                threads,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let e = rel_error(&got, &want);
            assert!(
                e <= TOL,
                "{what} on {}: relative error {e:.3e}",
                host.triple
            );
            outs.push(got);
        }
        // and across processes: the 2- and 4-thread runs equal the 1-thread one
        for (o, threads) in outs[1..].iter().zip([2, 4]) {
            let (a, b) = (outs[0].as_f32().unwrap(), o.as_f32().unwrap());
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{} at {threads} threads differs from 1 thread",
                host.triple
            );
        }
    }
}

#[test]
fn x86_64_small_graph() {
    check("small", &small_graph(1), &[&X86_V2, &X86_V3]);
}

#[test]
fn aarch64_small_graph_and_mobilevitv2_050() {
    check("small", &small_graph(2), &[&AARCH64]);
    check(
        "mobilevitv2_050",
        &zoo_model("mobilevitv2_050"),
        &[&AARCH64],
    );
}

/// Plain rv64gc (scalarised kernels) on a qemu CPU without V: the small
/// graph and a whole model.
#[test]
fn riscv64gc_small_graph_and_mobilevitv2_050() {
    check("small", &small_graph(3), &[&RISCV64]);
    check(
        "mobilevitv2_050",
        &zoo_model("mobilevitv2_050"),
        &[&RISCV64],
    );
}

/// rv64gcv (vector kernels) with V; and the same object on the CPU without
/// V must fail (an illegal instruction), which shows that the rv64gc runs
/// above really execute without V.
#[test]
fn riscv64gcv_small_graph_and_no_v_cpu_rejects_it() {
    let model = small_graph(7);
    check("small", &model, &[&RISCV64_V]);
    if !tools(&RISCV64_V) {
        return;
    }
    let g = &model.graph;
    let shape = g.value_type(Value::of(g.inputs()[0])).shape.clone();
    let input = tensor(&mut Rng(42), &shape, Fill::Range(-1.0, 1.0));
    let r = aot_try_run(
        "small_v_on_rv64",
        &model,
        &input,
        &RISCV64_V,
        RV64_NO_V,
        &aot_options(),
        1,
    );
    let e = r.expect_err("an rv64gcv object ran on `-cpu rv64,v=false`: that CPU has V after all");
    // the harness calls the checked entry point: an error code, not SIGILL
    assert!(
        e.contains("lacks the object's instruction-set features"),
        "{e}"
    );
}

#[test]
fn the_powf_import_is_declared_only_when_used() {
    // small graph: a runtime power needs powf; a relu-only model needs nothing
    let mut g = Graph::new("relu");
    let x = g.add_input("x", TensorType::f32([4])).unwrap();
    let y = g.add(Op::Unary(UnaryOp::Relu), &[x]).unwrap();
    g.set_outputs(vec![y]);
    let relu = Model {
        graph: g,
        weights: WeightStore::new(),
    };
    let opts = |name: &str| AotOptions {
        target: X86_V2.triple.into(),
        cpu: X86_V2.cpu.into(),
        name: name.into(),
        compile: CompileOptions::default(),
    };
    assert!(compile_aot(&relu, &opts("r")).unwrap().undefined.is_empty());
    assert_eq!(
        compile_aot(&small_graph(4), &opts("s")).unwrap().undefined,
        vec!["powf".to_string()]
    );
}

#[test]
fn unsupported_targets_and_models_are_clear_errors() {
    let model = small_graph(5);
    let mk = |t: &str, c: &str, n: &str| AotOptions {
        target: t.into(),
        cpu: c.into(),
        name: n.into(),
        compile: CompileOptions::default(),
    };
    let e = compile_aot(&model, &mk("mips-unknown-linux-gnu", "generic", "m"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mips") && e.contains("aarch64-unknown-linux-gnu"),
        "{e}"
    );
    let e = compile_aot(&model, &mk(X86_V2.triple, "pentium", "m"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("pentium") && e.contains("x86-64-v3"), "{e}");
    let e = compile_aot(&model, &mk(X86_V2.triple, "x86-64-v2", "bad-name"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad-name"), "{e}");
    // two outputs: no single-output entry point
    let mut two = small_graph(6);
    let x = Value::of(two.graph.inputs()[0]);
    let o = two.graph.outputs()[0];
    two.graph.set_outputs(vec![o, x]);
    let e = compile_aot(&two, &mk(X86_V2.triple, "x86-64-v2", "m"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 outputs"), "{e}");
}

/// A convolution weight is read only packed: the blob holds the packed copy
/// alone, not the raw weight as well (it used to hold both). An
/// element-wise weight operand is read raw and stays.
#[test]
fn weights_read_only_packed_are_stored_once() {
    let mut rng = Rng(8);
    let mut g = Graph::new("conv");
    let mut weights = WeightStore::new();
    let x = g.add_input("x", TensorType::f32([1, 8, 6, 6])).unwrap();
    let w = g
        .add_weight("w", TensorType::f32(vec![16, 8, 3, 3]))
        .unwrap();
    weights.insert(
        "w".to_string(),
        tensor(&mut rng, &[16, 8, 3, 3], Fill::Range(-0.5, 0.5)),
    );
    let conv = Op::Conv2d {
        stride: [1, 1],
        pad: [1, 1, 1, 1],
        dilation: [1, 1],
        groups: 1,
    };
    let y = g.add(conv, &[x, w]).unwrap();
    g.set_outputs(vec![y]);
    let model = Model { graph: g, weights };
    let raw = 16 * 8 * 9 * 4;
    let opts = AotOptions {
        target: X86_V2.triple.into(),
        cpu: X86_V2.cpu.into(),
        name: "c".into(),
        compile: CompileOptions::default(),
    };
    let packed_only = compile_aot(&model, &opts).unwrap().const_bytes;
    assert!(
        packed_only < 2 * raw,
        "{packed_only} bytes of constants for a {raw}-byte weight read only packed"
    );
    // the same weight also added element-wise: now it is read raw too
    let mut both = model.clone();
    let y = both.graph.outputs()[0];
    let b = both
        .graph
        .add_weight("b", TensorType::f32(vec![1, 16, 6, 6]))
        .unwrap();
    both.weights.insert(
        "b".to_string(),
        tensor(&mut rng, &[1, 16, 6, 6], Fill::Range(-0.5, 0.5)),
    );
    let z = both.graph.add(Op::Binary(BinaryOp::Add), &[y, b]).unwrap();
    both.graph.set_outputs(vec![z]);
    let with_raw = compile_aot(&both, &opts).unwrap().const_bytes;
    assert!(
        with_raw >= packed_only + 16 * 36 * 4,
        "{with_raw} vs {packed_only}: the element-wise weight is missing"
    );
    check("conv_plus_weight", &both, &[&X86_V2]);
}

#[test]
fn the_header_checks_the_cpu_features_of_the_level() {
    let model = small_graph(5);
    let header = |host: &Host| {
        let opts = AotOptions {
            target: host.triple.into(),
            cpu: host.cpu.into(),
            name: "m".into(),
            compile: CompileOptions::default(),
        };
        compile_aot(&model, &opts).unwrap().header
    };
    let v2 = header(&X86_V2);
    let v3 = header(&X86_V3);
    for h in [&v2, &v3] {
        assert!(h.contains("static inline int kiln_m_run_checked("), "{h}");
        assert!(h.contains("static inline int kiln_m_run_sized("), "{h}");
        assert!(h.contains("#define KILN_M_ERR_CPU (-2)"), "{h}");
        assert!(h.contains("__builtin_cpu_supports(\"sse4.1\")"), "{h}");
    }
    // AVX2 and FMA are what separates the levels
    assert!(!v2.contains("\"avx2\"") && !v2.contains("\"fma\""), "{v2}");
    assert!(v3.contains("__builtin_cpu_supports(\"avx2\")"), "{v3}");
    assert!(v3.contains("__builtin_cpu_supports(\"fma\")"), "{v3}");
    // baseline aarch64 assumes nothing to check; rv64gcv checks V
    assert!(header(&AARCH64).contains("return 1;"));
    let rvv = header(&RISCV64_V);
    assert!(rvv.contains("getauxval(AT_HWCAP)") && rvv.contains("#include <sys/auxv.h>"));
}
