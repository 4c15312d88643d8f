//! `kiln info` tables of one model per family, as reviewed insta snapshots:
//! the table is the artefact a user reads to see a model's structure, so a
//! change in any layer's type, parameters or MACs shows up in review.

use kiln::frontends::zoo::{ZooOptions, build_graph};
use kiln::info::{render_text, report};

fn info(name: &str) -> String {
    let g = build_graph(name, &ZooOptions::default()).expect("zoo model builds");
    render_text(&report(&g))
}

#[test]
fn info_mobile_former_26m() {
    insta::assert_snapshot!(info("mobile_former_26m"));
}

#[test]
fn info_mobilevitv2_050() {
    insta::assert_snapshot!(info("mobilevitv2_050"));
}

#[test]
fn info_xformer() {
    insta::assert_snapshot!(info("xformer"));
}
