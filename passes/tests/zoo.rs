//! The optimiser on every zoo model: fused-op counts derived from the model
//! specs' layer tables (docs/models/*.md), not from running the
//! optimiser; and, for the smallest model of each family, the optimised
//! graph checked against the interpreter.

mod common;

use std::collections::BTreeMap;

use kiln_frontends::zoo::{ZooOptions, build};
use kiln_passes::{OptOptions, Stop, optimize};

/// A Mobile-Former block kind from the spec's compact table (§3.1).
#[derive(Clone, Copy, PartialEq)]
enum Mf {
    Lite,
    Down,
    S1,
}

/// Blocks of each variant (mobile-former.md §3.1) and whether its
/// pointwise convs are grouped with channel shuffles (26M only).
fn mf_blocks(name: &str) -> (Vec<Mf>, bool) {
    use Mf::*;
    let big = vec![Lite, Down, S1, Down, S1, Down, S1, S1, S1, Down, S1, S1];
    match name {
        "mobile_former_508m" | "mobile_former_294m" | "mobile_former_214m"
        | "mobile_former_151m" => (big, false),
        "mobile_former_96m" => (vec![Lite, Down, Down, S1, Down, S1, S1, Down, S1], false),
        "mobile_former_52m" => (vec![Lite, S1, Down, S1, Down, S1, S1, Down, S1], false),
        "mobile_former_26m" => (vec![Lite, S1, Down, S1, Down, S1, S1, Down, S1], true),
        other => panic!("not a Mobile-Former variant: {other}"),
    }
}

/// Expected op counts after optimisation, from the spec.
fn expected_mobile_former(name: &str) -> BTreeMap<&'static str, usize> {
    let (blocks, _shuffled) = mf_blocks(name);
    let mf = blocks.iter().filter(|b| **b != Mf::Lite).count();
    let s1 = blocks.iter().filter(|b| **b == Mf::S1).count();
    let down = blocks.iter().filter(|b| **b == Mf::Down).count();
    // Conv chains: the lite block is dw -> pw; a stride-1 block pw -> dw ->
    // pw; a stride-2 block two dw -> pw chains (§2.2, 2.6, 2.7). In 26M
    // the channel shuffles after its convs (§2.9) are part of those convs
    // (`fused_conv {shuffle}`), so the same chains form.
    let chains = 1 + s1 + 2 * down;
    BTreeMap::from([
        // every block's bridges plus the final M2F before the head (§2.11)
        ("fused_m2f", mf + 1),
        ("fused_f2m", mf),
        // one Former per block, two post-norms each; the M2F's LN is inside
        // fused_m2f
        ("fused_mha", mf),
        ("layer_norm", 2 * mf),
        ("batch_norm", 0),
        ("softmax", 0),
        ("fused_conv_chain", chains),
        // every `max` is a dynamic ReLU right after a conv (+BN, + 26M's
        // shuffle): all of them are conv epilogues
        ("max", 0),
    ])
}

/// MobileViTv2 (mobilevitv2.md §1): blocks of depth 2, 4, 3; six inverted
/// residuals (layer_1: 1, layer_2: 2, layers 3-5: 1 each), each a pw -> dw
/// -> pw chain; each block's local representation is dw 3x3 -> 1x1, a
/// dw -> pw chain; each layer's FFN is 1x1 -> 1x1, a pw -> pw chain; every
/// GroupNorm(1) stays (two per layer, one per block).
/// The unfold/fold around each block are its only transposes, and they are
/// absorbed into the separable attention's indexing.
fn expected_mobilevitv2() -> BTreeMap<&'static str, usize> {
    let layers = 2 + 4 + 3;
    BTreeMap::from([
        ("fused_sep_attn", layers),
        ("transpose", 0),
        ("fused_conv_chain", 6 + 3 + layers),
        ("group_norm", 2 * layers + 3),
        ("batch_norm", 0),
        ("softmax", 0),
    ])
}

/// XFormer-R (xformer.md §3): blocks of depth 2, 4, 3 with XFA-R; seven
/// MV2 inverted residuals (layer1 1, layer2 3, layers 3-5 1 each); the
/// blocks' local convs are full 3x3, not depthwise, so they do not chain.
fn expected_xformer() -> BTreeMap<&'static str, usize> {
    let layers = 2 + 4 + 3;
    BTreeMap::from([
        ("fused_xca", layers),
        ("fused_conv_chain", 7),
        ("layer_norm", 2 * layers + 3),
        ("batch_norm", 0),
        ("softmax", 0),
    ])
}

fn expected(name: &str) -> BTreeMap<&'static str, usize> {
    if name.starts_with("mobile_former") {
        expected_mobile_former(name)
    } else if name.starts_with("mobilevitv2") {
        expected_mobilevitv2()
    } else {
        expected_xformer()
    }
}

fn check_counts(name: &str) -> kiln_ir::Model {
    let m = build(name, &ZooOptions::default()).unwrap();
    let (o, r) = optimize(&m, &OptOptions::default()).unwrap();
    assert_eq!(r.stop, Stop::Saturated, "{name}: {}", r.explain());
    let got = common::histogram(&o);
    for (op, want) in expected(name) {
        assert_eq!(
            got.get(op).copied().unwrap_or(0),
            want,
            "{name}: {op}\n{}",
            r.explain()
        );
    }
    assert!(r.cost_after < r.cost_before, "{name}");
    if name.starts_with("mobilevitv2") {
        // every separable attention works on the folded map, 2x2 patches
        for id in o.graph.node_ids() {
            if let kiln_ir::Op::Fused(f @ kiln_ir::FusedOp::SepAttn { .. }) = &o.graph.node(id).op {
                assert_eq!(
                    *f,
                    kiln_ir::FusedOp::SepAttn {
                        patch: Some([2, 2])
                    },
                    "{name}"
                );
            }
        }
    }
    o
}

#[test]
fn every_zoo_model_fuses_as_its_structure_says() {
    for e in kiln_frontends::zoo::list() {
        check_counts(e.name);
    }
}

#[test]
fn mobile_former_26m_shuffles_fuse_into_its_convs() {
    // 26M is 52M's network plus channel shuffles (§2.9, §3.1). Every
    // shuffle after a conv becomes that conv's `shuffle` attribute; the
    // one before the head conv shuffles a conv's *input* and stays, so 26M
    // keeps exactly one transpose more than 52M.
    let transposes = |name: &str| {
        let m = build(name, &ZooOptions::default()).unwrap();
        let (o, _) = optimize(&m, &OptOptions::default()).unwrap();
        let shuffled = o
            .graph
            .node_ids()
            .filter(|&id| {
                matches!(
                    &o.graph.node(id).op,
                    kiln_ir::Op::Fused(kiln_ir::FusedOp::Conv { shuffle, .. }) if *shuffle > 1
                ) || matches!(&o.graph.node(id).op,
                    kiln_ir::Op::Fused(kiln_ir::FusedOp::ConvChain { stages, .. })
                        if stages.iter().any(|s| s.shuffle > 1))
            })
            .count();
        (
            common::histogram(&o).get("transpose").copied().unwrap_or(0),
            shuffled,
        )
    };
    let (t52, s52) = transposes("mobile_former_52m");
    let (t26, s26) = transposes("mobile_former_26m");
    assert_eq!(t26, t52 + 1);
    assert_eq!(s52, 0);
    // every chain of 26M has a shuffled stage: the lite block's dw (by
    // Cin), each stride-1 block's first and last pw (by 4), each stride-2
    // block's two dw-expanding convs (by their input channels)
    let (blocks, _) = mf_blocks("mobile_former_26m");
    let s1 = blocks.iter().filter(|b| **b == Mf::S1).count();
    let down = blocks.iter().filter(|b| **b == Mf::Down).count();
    assert_eq!((s1, down), (5, 3));
    assert_eq!(s26, 1 + s1 + 2 * down);
}

#[test]
fn smallest_model_of_each_family_computes_the_same() {
    for name in ["mobile_former_26m", "mobilevitv2_050", "xformer"] {
        let m = build(name, &ZooOptions::default()).unwrap();
        let o = check_counts(name);
        common::assert_same_function(&m, &o);
    }
}

#[test]
fn fusion_keeps_the_arithmetic() {
    // Fused ops count the MACs of the primitives they stand for, so an
    // optimisation that neither recomputes nor drops work keeps the total.
    for name in ["mobile_former_508m", "mobilevitv2_200", "xformer"] {
        let m = build(name, &ZooOptions::default()).unwrap();
        let (o, _) = optimize(&m, &OptOptions::default()).unwrap();
        assert_eq!(
            kiln_ir::stats::graph_macs(&o.graph),
            kiln_ir::stats::graph_macs(&m.graph),
            "{name}"
        );
    }
}

#[test]
fn zoo_models_through_onnx_fuse_the_same() {
    // Export to ONNX and import back: the graph arrives in the importer's
    // spelling (ONNX ops, folded shape arithmetic, its own names), and every
    // fusion must still be found.
    use kiln_frontends::onnx::{ImportOptions, export_bytes, import_bytes};
    for name in ["mobile_former_26m", "mobilevitv2_050", "xformer"] {
        let m = build(name, &ZooOptions::default()).unwrap();
        let bytes = export_bytes(&m).unwrap();
        let (imported, _) = import_bytes(&bytes, &ImportOptions::default()).unwrap();
        let (o, r) = optimize(&imported, &OptOptions::default()).unwrap();
        assert_eq!(r.stop, Stop::Saturated, "{name}");
        let got = common::histogram(&o);
        for (op, want) in expected(name) {
            assert_eq!(
                got.get(op).copied().unwrap_or(0),
                want,
                "{name} via ONNX: {op}\n{}",
                r.explain()
            );
        }
        common::assert_same_function(&imported, &o);
    }
}

#[test]
fn an_optimised_model_exports_to_onnx_and_back() {
    // ONNX has no fused ops: export lowers them; the re-imported model
    // computes what the optimised one does.
    use kiln_frontends::onnx::{ImportOptions, export_bytes, import_bytes};
    let m = build("mobilevitv2_050", &ZooOptions::default()).unwrap();
    let (o, _) = optimize(&m, &OptOptions::default()).unwrap();
    let bytes = export_bytes(&o).unwrap();
    let (back, _) = import_bytes(&bytes, &ImportOptions::default()).unwrap();
    assert!(
        common::histogram(&back)
            .keys()
            .all(|k| !k.starts_with("fused_"))
    );
    common::assert_same_function(&o, &back);
}
