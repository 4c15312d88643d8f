//! End to end: the smallest model of each zoo family, compiled and compared
//! with the reference interpreter at 1 and 2 threads (relative error at
//! most 1e-4 of the largest output magnitude; the two thread counts agree
//! bit for bit). `mobile_former_26m` also runs scalarised (every vector
//! rewritten into scalars, the code riscv64 without V gets).

mod common;

use common::{check, check_scalar, graph_inputs};
use kiln_frontends::zoo::{self, ZooOptions};

fn zoo_case(name: &str) -> (kiln_ir::Model, Vec<kiln_ir::Tensor>) {
    let model = zoo::build(name, &ZooOptions::default()).unwrap();
    let inputs = graph_inputs(&model.graph);
    (model, inputs)
}

fn check_zoo(name: &str) {
    let (model, inputs) = zoo_case(name);
    check(name, &model, &inputs);
}

#[test]
fn mobile_former_26m_scalarised() {
    let (model, inputs) = zoo_case("mobile_former_26m");
    check_scalar("mobile_former_26m", &model, &inputs);
}

#[test]
fn mobile_former_26m() {
    check_zoo("mobile_former_26m");
}

#[test]
fn mobilevitv2_050() {
    check_zoo("mobilevitv2_050");
}

#[test]
fn xformer() {
    check_zoo("xformer");
}

/// Every kernel of a whole model, scalarised, is free of vector types (the
/// transform itself also checks this, and the verifier runs after it).
#[test]
fn scalarised_kernels_have_no_vectors() {
    let (model, _) = zoo_case("mobilevitv2_050");
    let opts = kiln_backends::CompileOptions {
        scalarize: true,
        asm_tiles: false,
        verify_ir: true,
        ..kiln_backends::CompileOptions::default()
    };
    let clif = kiln_backends::emit_clif(&model, &opts).unwrap();
    for ty in ["f32x4", "i32x4", "i8x16", "i16x8"] {
        assert!(!clif.contains(ty), "scalarised CLIF mentions {ty}");
    }
    // the same model unscalarised does use vectors (the check above means
    // something)
    let vec = kiln_backends::emit_clif(&model, &kiln_backends::CompileOptions::default()).unwrap();
    assert!(vec.contains("f32x4"));
}
