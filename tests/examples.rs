//! The hand-written example, run through the CLI and compared with the
//! output numpy computed independently (examples/conv_norm_attention.py).

mod common;

use common::{arg, example, kiln, scratch};
use kiln::frontends::{npy, safetensors};

/// Tolerance of the comparison, relative to the largest output magnitude.
///
/// numpy computes in float64 throughout; kiln's interpreter accumulates in
/// f64 but stores every intermediate value as f32, as the graph's types say.
/// Each of the ~15 roundings adds a relative error of at most 2^-24 ≈ 6e-8,
/// which the softmax and the layer norm (division by a standard deviation
/// near 1) amplify by small factors only: measured differences are around
/// 1e-7 of the output scale. 1e-5 leaves two orders of magnitude of margin,
/// while a real mistake — a wrong axis, epsilon, scale or transpose — moves
/// the output by 1e-2 or more.
const TOLERANCE: f64 = 1e-5;

#[test]
fn conv_norm_attention_matches_numpy() {
    let out = scratch("conv_norm_attention_out.npy");
    let _ = std::fs::remove_file(&out);
    kiln([
        "run",
        arg(&example("conv_norm_attention.kir")),
        "--weights",
        arg(&example("conv_norm_attention.safetensors")),
        "--input",
        arg(&example("conv_norm_attention_input.npy")),
        "--output",
        arg(&out),
        "--backend",
        "interp",
    ])
    .ok();
    let got = npy::read(&out).unwrap();
    let want = npy::read(&example("conv_norm_attention_expected.npy")).unwrap();
    assert_eq!(got.shape(), want.shape());
    let (got, want) = (got.as_f32().unwrap(), want.as_f32().unwrap());
    let scale = want.iter().fold(0f64, |m, &x| m.max(f64::from(x).abs()));
    let diff = got.iter().zip(want).fold(0f64, |m, (&a, &b)| {
        m.max((f64::from(a) - f64::from(b)).abs())
    });
    assert!(scale > 0.1, "the expected output is not degenerate");
    assert!(
        diff / scale <= TOLERANCE,
        "max |kiln - numpy| = {diff:e}, max |numpy| = {scale}"
    );
}

#[test]
fn example_weights_are_what_the_script_wrote() {
    // The safetensors file was written by hand in Python; reading it checks
    // that format against an outside writer.
    let w = safetensors::load(&example("conv_norm_attention.safetensors")).unwrap();
    assert_eq!(w.len(), 12);
    assert_eq!(w.get("conv.weight").unwrap().shape(), &[16, 3, 3, 3]);
    let scale = w.get("attn.scale").unwrap();
    assert_eq!(scale.shape(), &[] as &[usize]);
    assert_eq!(scale.as_f32().unwrap(), &[0.25][..]);
    let var = w.get("bn.var").unwrap().as_f32().unwrap();
    assert!(var.iter().all(|&v| (0.5..1.5).contains(&v)));
}
