//! Hostile and degenerate models through the real `kiln` binary: sizes
//! that overflow or exceed a resource limit, empty tensors, huge names,
//! control characters. Each must end in one `error:` line (exit 1) or a
//! correct result — never a panic, an abort or a crash. These are the
//! reproducers of issue 18's fuzzing findings, kept as regression tests.

mod common;

use common::{Run, arg, kiln, scratch};

/// Asserts exit code `code`, no panic, and that stderr ends in exactly one
/// `error:` line (notes may come before it); returns that line.
fn fails(run: &Run, code: i32) -> String {
    assert!(
        !run.stderr.contains("panicked"),
        "kiln panicked: {}",
        run.stderr
    );
    assert_eq!(run.code, code, "stderr: {}", run.stderr);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line: {}", run.stderr);
    assert_eq!(run.stderr.lines().last(), Some(errors[0]), "{}", run.stderr);
    errors[0].to_string()
}

/// Writes `text` as a `.kir` file named `name` and returns its path.
fn kir(name: &str, text: &str) -> std::path::PathBuf {
    let p = scratch(&format!("{name}.kir"));
    std::fs::write(&p, text).expect("scratch is writable");
    p
}

#[test]
fn a_type_too_large_for_any_allocation_is_a_parse_error() {
    let p = kir(
        "wraps",
        "graph g {\n  input %x : f32[8589934592,2147483648]\n  %y = relu(%x) : f32[8589934592,2147483648]\n  output %y\n}\n",
    );
    for cmd in ["info", "opt", "run"] {
        let e = fails(&kiln([cmd, arg(&p)]), 1);
        assert!(e.contains("is too large"), "{cmd}: {e}");
    }
}

#[test]
fn a_huge_input_stops_at_the_tensor_limit_in_every_command() {
    let p = kir(
        "huge_input",
        "graph g {\n  input %x : f32[100000,100000,100000]\n  %y = relu(%x) : f32[100000,100000,100000]\n  output %y\n}\n",
    );
    let out = scratch("huge_input.o");
    for args in [
        vec!["info", arg(&p)],
        vec!["opt", arg(&p), "--explain"],
        vec!["run", arg(&p)],
        vec!["bench", arg(&p)],
        vec!["compile", arg(&p), "-o", arg(&out)],
    ] {
        let e = fails(&kiln(&args), 1);
        assert!(
            e.contains("over the tensor limit") && e.contains("--limit tensor="),
            "{args:?}: {e}"
        );
    }
    // a raised limit lets `info` through (it allocates nothing)
    kiln(["info", arg(&p), "--limit", "tensor=4000T"]).ok();
}

#[test]
fn a_huge_weight_is_refused_before_it_is_allocated() {
    // 14.4 GB of seeded weights: refused by the tensor limit, at once
    let p = kir(
        "huge_weight",
        "graph g {\n  input %x : f32[60000]\n  weight @w : f32[60000,60000]\n  %y = add(%x, @w) : f32[60000,60000]\n  output %y\n}\n",
    );
    let t = std::time::Instant::now();
    let e = fails(&kiln(["run", arg(&p)]), 1);
    assert!(e.contains("over the tensor limit"), "{e}");
    // an allocation of 14.4 GB would take far longer than this
    assert!(t.elapsed().as_secs() < 30);
}

/// A 4 MiB weight that the optimiser folds (a transpose), a 4 MiB
/// intermediate in the arena, and 4 MiB of constants.
const FOURMEG: &str = "graph g {\n  input %x : f32[1024,1024]\n  weight @w : f32[1024,1024]\n  %t = transpose(@w) {perm=[1,0]} : f32[1024,1024]\n  %y = add(%x, %t) : f32[1024,1024]\n  %z = relu(%y) : f32[1024,1024]\n  %o = sigmoid(%z) : f32[1024,1024]\n  output %o\n}\n";

#[test]
fn every_limit_is_settable_and_named_when_exceeded() {
    let p = kir("fourmeg", FOURMEG);
    kiln(["run", arg(&p)]).ok();
    for (limit, key) in [
        ("folded=1M", "folded"),
        ("arena=1M", "arena"),
        ("consts=1M", "consts"),
        ("nodes=3", "nodes"),
        ("tensor=1M", "tensor"),
        ("weights=1M", "weights"),
    ] {
        let e = fails(&kiln(["run", arg(&p), "--limit", limit]), 1);
        assert!(
            e.contains(&format!("over the {key} limit")) && e.contains(&format!("--limit {key}=")),
            "{limit}: {e}"
        );
    }
    let e = fails(&kiln(["run", arg(&p), "--limit", "arena"]), 2);
    assert!(e.contains("expected KEY=VALUE"), "{e}");
    let e = fails(&kiln(["run", arg(&p), "--limit", "bogus=1"]), 2);
    assert!(e.contains("unknown key `bogus`"), "{e}");
}

#[test]
fn extraction_over_its_budget_falls_back_to_greedy_and_says_so() {
    let explain = kiln([
        "opt",
        "mobile_former_26m",
        "--explain",
        "--limit",
        "extract=1",
    ]);
    let text = explain.ok();
    assert!(text.contains("extraction: greedy by tree cost"), "{text}");
    // and the greedy graph still computes the model: the JIT on it against
    // the interpreter on the graph as loaded
    let a = scratch("greedy_jit.npy");
    let b = scratch("greedy_interp.npy");
    kiln([
        "run",
        "mobile_former_26m",
        "--limit",
        "extract=1",
        "--output",
        arg(&a),
    ])
    .ok();
    kiln([
        "run",
        "mobile_former_26m",
        "--backend",
        "interp",
        "--output",
        arg(&b),
    ])
    .ok();
    let (x, y) = (
        kiln::frontends::npy::read(&a).unwrap(),
        kiln::frontends::npy::read(&b).unwrap(),
    );
    let (x, y) = (x.as_f32().unwrap(), y.as_f32().unwrap());
    let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(
        err <= 1e-4 * scale,
        "greedy extraction: max error {err} of {scale}"
    );
}

#[test]
fn empty_results_are_computed_as_empty_by_both_backends() {
    // batch 0 through conv, pool, softmax and an optimiser-fused conv+relu
    let p = kir(
        "empty_batch",
        "graph g {\n  input %x : f32[0,3,8,8]\n  weight @w : f32[4,3,3,3]\n  weight @b : f32[4]\n  %c = conv2d(%x, @w, @b) {stride=[1,1], pad=[1,1,1,1], groups=1} : f32[0,4,8,8]\n  %r = relu(%c) : f32[0,4,8,8]\n  %m = max_pool2d(%r) {kernel=[2,2], stride=[2,2], pad=[0,0,0,0]} : f32[0,4,4,4]\n  %s = softmax(%m) {axis=1} : f32[0,4,4,4]\n  output %s\n}\n",
    );
    for backend in ["jit", "interp"] {
        let out = kiln(["run", arg(&p), "--backend", backend])
            .ok()
            .to_string();
        assert!(out.contains("f32[0,4,4,4]"), "{backend}: {out}");
    }
    // zero channels, and softmax over an empty axis
    let p = kir(
        "empty_axis",
        "graph g {\n  input %x : f32[2,0]\n  %s = softmax(%x) {axis=1} : f32[2,0]\n  %e = exp(%s) : f32[2,0]\n  output %e\n}\n",
    );
    for backend in ["jit", "interp"] {
        let out = kiln(["run", arg(&p), "--backend", backend])
            .ok()
            .to_string();
        assert!(out.contains("f32[2,0]"), "{backend}: {out}");
    }
}

#[test]
fn a_non_empty_result_from_an_empty_operand_is_refused_naming_it() {
    // a convolution over 0 input channels would be a sum over nothing
    let p = kir(
        "empty_reduction",
        "graph g {\n  input %x : f32[1,0,8,8]\n  weight @w : f32[4,0,3,3]\n  %c = conv2d(%x, @w) {stride=[1,1], pad=[1,1,1,1], groups=1} : f32[1,4,8,8]\n  output %c\n}\n",
    );
    for cmd in ["run", "info"] {
        let e = fails(&kiln([cmd, arg(&p)]), 1);
        assert!(
            e.contains("%c (conv2d)") && e.contains("operand 0") && e.contains("dimension 1 is 0"),
            "{cmd}: {e}"
        );
    }
}

#[test]
fn info_prints_a_value_name_longer_than_a_format_width() {
    let name = "v".repeat(70_000);
    let p = kir(
        "long_name",
        &format!(
            "graph g {{\n  input %x : f32[4]\n  %{name} = relu(%x) : f32[4]\n  output %{name}\n}}\n"
        ),
    );
    let out = kiln(["info", arg(&p)]).ok().to_string();
    assert!(out.contains(&name));
}

#[test]
fn error_messages_escape_control_characters() {
    let p = kir(
        "control",
        "graph g {\n  input %x : f32[4]\n  %y = \u{1b}[31mrelu(%x) : f32[4]\n  output %y\n}\n",
    );
    let e = fails(&kiln(["run", arg(&p)]), 1);
    assert!(!e.contains('\u{1b}'), "raw escape in {e:?}");
}
