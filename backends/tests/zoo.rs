//! End to end: the smallest model of each zoo family, compiled and compared
//! with the reference interpreter at 1 and 2 threads (relative error at
//! most 1e-4 of the largest output magnitude; the two thread counts agree
//! bit for bit).

mod common;

use common::{Fill, Rng, check, tensor};
use kiln_frontends::zoo::{self, ZooOptions};
use kiln_ir::Value;

fn check_zoo(name: &str) {
    let model = zoo::build(name, &ZooOptions::default()).unwrap();
    let g = &model.graph;
    let mut rng = Rng(42);
    let inputs: Vec<_> = g
        .inputs()
        .iter()
        .map(|&n| {
            tensor(
                &mut rng,
                &g.value_type(Value::of(n)).shape,
                Fill::Range(-1.0, 1.0),
            )
        })
        .collect();
    check(name, &model, &inputs);
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
