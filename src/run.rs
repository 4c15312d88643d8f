//! Running a model: backend choice, input checks, seeded random inputs and
//! the top-k summary `kiln run` prints.

use kiln_ir::{DType, Graph, Model, Tensor, TensorType, Value, interp};

use crate::compile::{CompileOptions, compile};
use crate::error::KilnError;

/// Which engine executes a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The Cranelift JIT (`kiln-backends`): native code for this CPU, on
    /// every core.
    Jit,
    /// The reference interpreter: slow, f64 accumulation, the oracle.
    Interp,
}

impl Backend {
    /// What `kiln run` uses without `--backend`.
    pub const DEFAULT: Backend = Backend::Jit;

    /// The name `--backend` accepts.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Jit => "jit",
            Backend::Interp => "interp",
        }
    }
}

/// Checks that `t` fits graph input `index` of `g`; `source` names where the
/// tensor came from (a file) for the message.
pub fn check_input(g: &Graph, index: usize, t: &Tensor, source: &str) -> Result<(), KilnError> {
    let Some(&id) = g.inputs().get(index) else {
        return Err(KilnError::Usage(format!(
            "{source}: the model has only {} input(s)",
            g.inputs().len()
        )));
    };
    let want = g.value_info(Value::of(id));
    if t.ty() != want.ty {
        return Err(KilnError::Input(format!(
            "{source} holds {}, but model input %{} is {}",
            t.ty(),
            want.name,
            want.ty
        )));
    }
    Ok(())
}

/// Runs `model` on `inputs` (one per graph input, in order; checked first)
/// with the chosen backend; returns one tensor per graph output. The JIT
/// runs the optimised graph ([`CompileOptions::default`]).
pub fn run_model(
    model: &Model,
    inputs: &[Tensor],
    backend: Backend,
) -> Result<Vec<Tensor>, KilnError> {
    run_model_with(model, inputs, backend, &CompileOptions::default())
}

/// [`run_model`] with the JIT's compile options (ignored by the
/// interpreter, which always runs the graph as given: it is the oracle).
pub fn run_model_with(
    model: &Model,
    inputs: &[Tensor],
    backend: Backend,
    opts: &CompileOptions,
) -> Result<Vec<Tensor>, KilnError> {
    let g = &model.graph;
    if inputs.len() != g.inputs().len() {
        return Err(KilnError::Usage(format!(
            "the model takes {} input(s), {} given",
            g.inputs().len(),
            inputs.len()
        )));
    }
    for (i, t) in inputs.iter().enumerate() {
        check_input(g, i, t, &format!("input {i}"))?;
    }
    match backend {
        Backend::Jit => {
            let jit = compile(model, opts)?;
            Ok(jit.model.run(inputs)?)
        }
        Backend::Interp => Ok(interp::run(g, &model.weights, inputs)?),
    }
}

/// A deterministic random tensor of type `ty`: `f32` elements uniform in
/// `[-1, 1)`, `i64` elements uniform in `0..10`, from a SplitMix64 stream
/// seeded with `seed` — the same on every machine, so that a run without
/// `--input` is reproducible.
pub fn random_input(ty: &TensorType, seed: u64) -> Tensor {
    let mut state = seed;
    let mut next = move || {
        // SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, well mixed.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let n = ty.numel();
    let result = match ty.dtype {
        DType::F32 => Tensor::from_f32(
            ty.shape.clone(),
            // 24 random bits -> an exact f32 in [0, 1), then to [-1, 1).
            (0..n)
                .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
                .collect::<Vec<_>>(),
        ),
        DType::I64 => Tensor::from_i64(
            ty.shape.clone(),
            (0..n).map(|_| (next() % 10) as i64).collect::<Vec<_>>(),
        ),
    };
    result.expect("the data has exactly numel elements")
}

/// The `k` largest values with their indices, largest first; ties keep the
/// lower index first, NaN sorts above everything (so it is seen, not hidden).
pub fn top_k(values: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, values[i])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_input_is_deterministic_and_in_range() {
        let ty = TensorType::f32([2, 3, 4]);
        let a = random_input(&ty, 7);
        assert_eq!(a, random_input(&ty, 7));
        assert_ne!(a, random_input(&ty, 8));
        let v = a.as_f32().unwrap();
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        // not degenerate: both signs present
        assert!(v.iter().any(|&x| x < 0.0) && v.iter().any(|&x| x > 0.0));
        let i = random_input(&TensorType::i64([50]), 1);
        assert!(i.as_i64().unwrap().iter().all(|x| (0..10).contains(x)));
    }

    #[test]
    fn top_k_orders_by_value_then_index() {
        let v = [0.5, 2.0, -1.0, 2.0, 0.0];
        assert_eq!(top_k(&v, 3), vec![(1, 2.0), (3, 2.0), (0, 0.5)]);
        assert_eq!(top_k(&v, 10).len(), 5);
        assert_eq!(top_k(&[1.0, f32::NAN], 1)[0].0, 1);
    }

    #[test]
    fn inputs_are_checked_by_type() {
        let mut g = Graph::new("t");
        g.add_input("x", TensorType::f32([1, 3])).unwrap();
        let good = Tensor::from_f32([1, 3], vec![0.0; 3]).unwrap();
        let bad = Tensor::from_f32([3], vec![0.0; 3]).unwrap();
        check_input(&g, 0, &good, "x.npy").unwrap();
        assert_eq!(
            check_input(&g, 0, &bad, "x.npy").unwrap_err().to_string(),
            "x.npy holds f32[3], but model input %x is f32[1,3]"
        );
        assert!(check_input(&g, 1, &good, "y.npy").is_err());
    }
}
