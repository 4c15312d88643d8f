//! Before/after file tests: each `passes/tests/data/*.kir` is optimised with
//! every rule family and seeded weights; the optimised `.kir` text is an
//! insta snapshot (`cargo insta review` to update — and read each one), and
//! the optimised model is checked against the original on the interpreter.

mod common;

use kiln_frontends::init::seeded_weights;
use kiln_ir::{Model, text};
use kiln_passes::{OptOptions, optimize};

fn check(name: &str) -> String {
    let path = format!("{}/tests/data/{name}.kir", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).unwrap();
    let graph = text::parse(&src).unwrap();
    let weights = seeded_weights(&graph, 0);
    let m = Model { graph, weights };
    let (o, r) = optimize(&m, &OptOptions::default()).unwrap();
    common::assert_same_function(&m, &o);
    format!("{}\n# {}", text::print(&o.graph), r.to_json())
}

#[test]
fn canon() {
    insta::assert_snapshot!(check("canon"));
}

#[test]
fn conv() {
    insta::assert_snapshot!(check("conv"));
}

#[test]
fn conv_chain() {
    insta::assert_snapshot!(check("conv_chain"));
}

#[test]
fn activations() {
    insta::assert_snapshot!(check("activations"));
}

#[test]
fn mha() {
    insta::assert_snapshot!(check("mha"));
}

#[test]
fn m2f() {
    insta::assert_snapshot!(check("m2f"));
}

#[test]
fn f2m() {
    insta::assert_snapshot!(check("f2m"));
}

#[test]
fn sep_attn() {
    insta::assert_snapshot!(check("sep_attn"));
}

#[test]
fn xca() {
    insta::assert_snapshot!(check("xca"));
}
