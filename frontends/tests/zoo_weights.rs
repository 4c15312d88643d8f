//! Weights for zoo graphs: seeded initialisation and checkpoint binding.

use kiln_frontends::FrontendError;
use kiln_frontends::builder::const_name;
use kiln_frontends::init::seeded_weights;
use kiln_frontends::zoo::{self, ZooOptions};
use kiln_ir::{IrError, Tensor, WeightStore};

fn model(name: &str) -> kiln_ir::Model {
    zoo::build(name, &ZooOptions::default()).unwrap()
}

/// A timm-like checkpoint of a zoo model: its tensors minus the constants
/// (checkpoints hold parameters and buffers only) plus timm's i64
/// `num_batches_tracked` counter beside every BN.
fn checkpoint(m: &kiln_ir::Model) -> WeightStore {
    let mut ck = WeightStore::new();
    for (name, t) in m.weights.iter() {
        if name.starts_with("const.") {
            continue;
        }
        ck.insert(name, t.clone());
        if let Some(bn) = name.strip_suffix(".running_var") {
            ck.insert(
                format!("{bn}.num_batches_tracked"),
                Tensor::from_i64(Vec::<usize>::new(), vec![7]).unwrap(),
            );
        }
    }
    ck
}

#[test]
fn a_complete_checkpoint_binds_as_is() {
    let m = model("mobilevitv2_050");
    let bound = zoo::bind_weights(&m.graph, checkpoint(&m)).unwrap();
    // constants come back from their names; everything else is the checkpoint's
    assert_eq!(bound, m.weights);
}

#[test]
fn every_problem_is_reported_in_one_error() {
    let m = model("mobile_former_26m");
    let mut ck = checkpoint(&m);
    ck.remove("features.3.local_global.q.bias");
    ck.remove("stem.1.running_mean");
    ck.insert(
        "features.1.conv1.0.weight",
        Tensor::from_f32([36, 12, 1, 1], vec![0.0; 36 * 12]).unwrap(),
    );
    ck.insert(
        "head.extra.weight",
        Tensor::from_f32([2], vec![0.0; 2]).unwrap(),
    );
    let err = zoo::bind_weights(&m.graph, ck).unwrap_err();
    let FrontendError::Ir(IrError::Weights(problems)) = &err else {
        panic!("unexpected error {err}");
    };
    assert_eq!(problems.len(), 4, "{err}");
    let text = err.to_string();
    for needle in [
        "@features.3.local_global.q.bias: missing",
        "@stem.1.running_mean: missing",
        "@features.1.conv1.0.weight: declared f32[36,3,1,1], checkpoint has f32[36,12,1,1]",
        "@head.extra.weight: in the checkpoint",
    ] {
        assert!(text.contains(needle), "{needle} not in\n{text}");
    }
    // num_batches_tracked counters are never reported
    assert!(!text.contains("num_batches_tracked"), "{text}");
}

#[test]
fn linear_and_pointwise_conv_layouts_bind_both_ways() {
    let m = model("mobilevitv2_050");
    let mut ck = checkpoint(&m);
    // a converter that stored a 1x1 conv as a Linear, and a Linear as a 1x1 conv
    let qkv = "stages.2.1.transformer.0.attn.qkv_proj.weight";
    let fc = "head.fc.weight";
    let q = ck.get(qkv).unwrap().reshaped([129, 64]).unwrap();
    let f = ck.get(fc).unwrap().reshaped([1000, 256, 1, 1]).unwrap();
    ck.insert(qkv, q);
    ck.insert(fc, f);
    let bound = zoo::bind_weights(&m.graph, ck).unwrap();
    assert_eq!(bound.get(qkv).unwrap().shape(), [129, 64, 1, 1]);
    assert_eq!(bound.get(fc).unwrap().shape(), [1000, 256]);
    assert_eq!(bound, m.weights);
    // but no other reshape is accepted, even with the same element count
    let mut ck = checkpoint(&m);
    let t = ck.get(fc).unwrap().reshaped([256, 1000]).unwrap();
    ck.insert(fc, t);
    assert!(zoo::bind_weights(&m.graph, ck).is_err());
}

fn values(s: &WeightStore, name: &str) -> Vec<f32> {
    s.get(name).unwrap().as_f32().unwrap().to_vec()
}

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / n;
    let var = v
        .iter()
        .map(|x| (f64::from(*x) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

#[test]
fn seeded_weights_follow_the_roles() {
    let m = model("mobile_former_52m");
    let s = seeded_weights(&m.graph, 3);
    assert_eq!(s, seeded_weights(&m.graph, 3));
    assert_ne!(s, seeded_weights(&m.graph, 4));
    // tokens N(0, 1)
    let (mean, std) = mean_std(&values(&s, "tokens.weight"));
    assert!(
        mean.abs() < 0.25 && (0.75..1.25).contains(&std),
        "{mean} {std}"
    );
    // BN statistics near identity but not exactly
    let mu = values(&s, "features.6.conv1.1.running_mean");
    let (mean, std) = mean_std(&mu);
    assert!(
        mean.abs() < 0.05 && (0.07..0.13).contains(&std),
        "{mean} {std}"
    );
    let var = values(&s, "features.6.conv1.1.running_var");
    assert!(var.iter().all(|v| (0.5..=1.5).contains(v)));
    let (mean, _) = mean_std(&var);
    assert!((0.9..1.1).contains(&mean), "{mean}");
    // LN affine near (1, 0)
    let g = values(&s, "features.7.global_block.layer_norm.weight");
    assert!(g.iter().all(|v| (0.9..=1.1).contains(v)) && g.iter().any(|v| *v != 1.0));
    let b = values(&s, "features.7.global_block.layer_norm.bias");
    assert!(b.iter().all(|v| v.abs() < 0.2) && b.iter().any(|v| *v != 0.0));
    // a pointwise conv with 48 inputs feeding a DyReLU: He-scaled
    let w = values(&s, "features.6.conv1.0.weight");
    let (_, std) = mean_std(&w);
    let want = (2.0f64 / 48.0).sqrt();
    assert!((std / want - 1.0).abs() < 0.1, "{std} vs {want}");
    // the classifier Linear [1000, 1024]: fan-in 1024, no activation after it
    let (_, std) = mean_std(&values(&s, "classifier.classifier.1.weight"));
    let want = (1.0f64 / 1024.0).sqrt();
    assert!((std / want - 1.0).abs() < 0.05, "{std} vs {want}");
    // constants are exact
    assert_eq!(values(&s, &const_name(2.0)), [2.0]);
}

#[test]
fn a_checkpoint_file_round_trips_through_safetensors() {
    // What `--weights` does with a timm checkpoint saved as safetensors:
    // i64 counters and all, the file binds to the zoo graph unchanged.
    let m = model("mobilevitv2_050");
    let path = std::env::temp_dir().join(format!(
        "kiln-zoo-{}-mobilevitv2_050.safetensors",
        std::process::id()
    ));
    kiln_frontends::safetensors::save(&path, &checkpoint(&m)).unwrap();
    let loaded = kiln_frontends::safetensors::load(&path);
    let _ = std::fs::remove_file(&path);
    let bound = zoo::bind_weights(&m.graph, loaded.unwrap()).unwrap();
    assert_eq!(bound, m.weights);
}
