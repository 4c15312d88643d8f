//! Kernel plans (`kiln opt --emit plan`) of the smallest zoo model of each
//! family at every tile level the host has, as reviewed insta snapshots:
//! the numerical tests pass just the same when a node silently falls back
//! from its fused kernel or assembled function to another path, so the
//! kernel chosen for each node, and the assembled functions it calls, are
//! pinned here. Levels the host lacks are printed as skipped (the JIT
//! would cap them to the host's, which is another plan).

use kiln::backends::TileLevel;
use kiln::frontends::zoo::{ZooOptions, build};
use kiln::opt::{Emit, cmd_opt};

fn plans(name: &str) {
    let model = build(name, &ZooOptions::default()).expect("zoo model builds");
    for level in TileLevel::ALL {
        if level > TileLevel::host() {
            kiln::ir::skip::skip(
                &format!("plan snapshot {name} at {level}"),
                "the host lacks the level",
            );
            continue;
        }
        let (plan, _) = cmd_opt(
            &model,
            false,
            Some(Emit::Plan),
            Some(level),
            kiln::ir::Limits::default(),
        )
        .unwrap();
        insta::assert_snapshot!(format!("plan_{name}_{level}"), plan);
    }
}

#[test]
fn plan_mobile_former_26m() {
    plans("mobile_former_26m");
}

#[test]
fn plan_mobilevitv2_050() {
    plans("mobilevitv2_050");
}

#[test]
fn plan_xformer() {
    plans("xformer");
}
