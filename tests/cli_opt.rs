//! `kiln opt`: the report (text and JSON), the optimised graph (`.kir` and
//! Graphviz), and its usage errors.

mod common;

use common::{arg, example, kiln};

const KIR: &str = "conv_norm_attention.kir";
const WEIGHTS: &str = "conv_norm_attention.safetensors";

fn opt(extra: &[&str]) -> common::Run {
    let (k, w) = (example(KIR), example(WEIGHTS));
    let mut args = vec!["opt", arg(&k), "--weights", arg(&w)];
    args.extend_from_slice(extra);
    kiln(args)
}

#[test]
fn explain_reports_saturation_rules_and_ops() {
    let out = opt(&[]).ok().to_string();
    assert_eq!(out, opt(&["--explain"]).ok());
    assert!(out.starts_with("saturation: saturated after "), "{out}");
    // The example's conv -> batch norm -> relu is one fused conv.
    assert!(out.contains("bn-fold-conv"), "{out}");
    assert!(out.contains("fused_conv "), "{out}");
}

#[test]
fn explain_json_has_the_documented_keys() {
    let out = opt(&["--explain", "--json"]).ok().to_string();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["stop_reason"], "saturated");
    assert!(v["cost_after"].as_f64().unwrap() < v["cost_before"].as_f64().unwrap());
    assert_eq!(v["ops"]["fused_conv"], 1);
    assert!(v["ops"].get("batch_norm").is_none());
    assert_eq!(v["rules"]["bn-fold-conv"], 1);
}

#[test]
fn emit_ir_prints_a_graph_that_parses() {
    let out = opt(&["--emit", "ir"]).ok().to_string();
    let g = kiln::ir::text::parse(&out).unwrap();
    assert_eq!(kiln::ir::text::print(&g), out);
    assert!(out.contains("= fused_conv("), "{out}");
}

#[test]
fn emit_dot_prints_a_digraph() {
    let out = opt(&["--emit", "dot"]).ok().to_string();
    assert!(
        out.starts_with("digraph \"conv_norm_attention\" {"),
        "{out}"
    );
    assert!(out.contains("fused_conv"), "{out}");
    assert!(out.trim_end().ends_with('}'));
}

#[test]
fn emit_clif_prints_every_kernel_with_its_node() {
    let out = opt(&["--emit", "clif"]).ok().to_string();
    assert!(out.starts_with("; kiln: "), "{out}");
    let kernels = out.matches("\n; kernel k").count();
    assert!(kernels >= 2, "{out}");
    // every kernel is a Cranelift function taking (arena, begin, end)
    // (other signatures with three i64s are calls into assembled code)
    let functions: Vec<&str> = out.lines().filter(|l| l.starts_with("function ")).collect();
    assert_eq!(functions.len(), kernels, "{out}");
    assert!(
        functions.iter().all(|l| l.contains("(i64, i64, i64)")),
        "{functions:?}"
    );
    assert!(out.contains(" from %"), "{out}");
}

#[test]
fn json_without_explain_and_explain_with_emit_are_usage_errors() {
    let line = opt(&["--json"]).fails_with(2).to_string();
    assert!(line.contains("--explain"), "{line}");
    let line = opt(&["--explain", "--emit", "ir"])
        .fails_with(2)
        .to_string();
    assert!(line.contains("--emit"), "{line}");
}

#[test]
fn zoo_model_bridges_are_reported() {
    let out = kiln(["opt", "mobile_former_26m", "--explain", "--json"])
        .ok()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // 8 Mobile-Former blocks plus the final bridge (mobile-former.md §3.1)
    assert_eq!(v["ops"]["fused_m2f"], 9);
    assert_eq!(v["ops"]["fused_f2m"], 8);
}

#[test]
fn output_is_byte_identical_across_processes() {
    let a = kiln(["opt", "mobilevitv2_050", "--emit", "ir"])
        .ok()
        .to_string();
    let b = kiln(["opt", "mobilevitv2_050", "--emit", "ir"])
        .ok()
        .to_string();
    assert_eq!(a, b);
    let a = kiln(["opt", "mobile_former_26m", "--explain", "--json"])
        .ok()
        .to_string();
    let b = kiln(["opt", "mobile_former_26m", "--explain", "--json"])
        .ok()
        .to_string();
    assert_eq!(a, b);
}

#[test]
fn an_optimised_model_runs_on_the_jit() {
    // The JIT runs fused ops as the primitives they stand for (until they
    // have kernels): an optimised model compiles and agrees with the
    // interpreter on the original.
    use kiln::{Backend, LoadOptions, load_model, random_input, run_model};
    let model = load_model(
        example(KIR).to_str().unwrap(),
        &LoadOptions {
            weights: Some(example(WEIGHTS)),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let (opt, _) = kiln::passes::optimize(&model, &kiln::passes::OptOptions::default()).unwrap();
    let input = kiln::ir::Value::of(model.graph.inputs()[0]);
    let x = random_input(model.graph.value_type(input), 3);
    let want = run_model(&model, std::slice::from_ref(&x), Backend::Interp).unwrap();
    let got = run_model(&opt, &[x], Backend::Jit).unwrap();
    let (w, g) = (want[0].as_f32().unwrap(), got[0].as_f32().unwrap());
    let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = w
        .iter()
        .zip(g)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= 1e-4 * scale, "{diff} vs {scale}");
}
