//! The model zoo: Mobile-Former, MobileViTv2 and XFormer-R graphs by name.
//!
//! Each family lives in its own module with public block builders (for
//! block-level tests) and a `build` for the whole network. [`build`] pairs
//! the graph with seeded weights; [`bind_weights`] checks a checkpoint
//! (e.g. a timm state dict saved as safetensors) against a zoo graph.
//! docs/zoo.md has the table, the weight names and the counting conventions.

pub mod mobile_former;
pub mod mobilevitv2;
pub mod xformer;

use kiln_ir::{Graph, Model, Tensor, Value, WeightStore};

pub use xformer::XfaKind;

use crate::FrontendError;
use crate::builder::{GraphBuilder, const_value};

/// One zoo entry, as `kiln list` shows it.
#[derive(Clone, Copy, Debug)]
pub struct ZooEntry {
    /// the name used on the command line, e.g. `mobilevitv2_050`
    pub name: &'static str,
    /// model family, e.g. `MobileViTv2`
    pub family: &'static str,
    /// input resolution (square)
    pub resolution: usize,
}

/// Options for building a zoo model.
#[derive(Clone, Debug)]
pub struct ZooOptions {
    /// seed of the deterministic weight initialisation
    pub seed: u64,
    /// attention of XFormer-R's transformer layers (ignored by the other
    /// families): XFA-R by default, or the XNorm-style alternative
    pub xformer_attention: XfaKind,
    /// images per call: the input's first dimension (default 1; the CLI's
    /// `--input-shape image=N,...`)
    pub batch: usize,
}

impl Default for ZooOptions {
    fn default() -> ZooOptions {
        ZooOptions {
            seed: 0,
            xformer_attention: XfaKind::default(),
            batch: 1,
        }
    }
}

const MF: &str = "Mobile-Former";
const MV: &str = "MobileViTv2";
const XF: &str = "XFormer-R (reconstruction)";

const fn entry(name: &'static str, family: &'static str, resolution: usize) -> ZooEntry {
    ZooEntry {
        name,
        family,
        resolution,
    }
}

static ENTRIES: [ZooEntry; 15] = [
    entry("mobile_former_508m", MF, 224),
    entry("mobile_former_294m", MF, 224),
    entry("mobile_former_214m", MF, 224),
    entry("mobile_former_151m", MF, 224),
    entry("mobile_former_96m", MF, 224),
    entry("mobile_former_52m", MF, 224),
    entry("mobile_former_26m", MF, 224),
    entry("mobilevitv2_050", MV, 256),
    entry("mobilevitv2_075", MV, 256),
    entry("mobilevitv2_100", MV, 256),
    entry("mobilevitv2_125", MV, 256),
    entry("mobilevitv2_150", MV, 256),
    entry("mobilevitv2_175", MV, 256),
    entry("mobilevitv2_200", MV, 256),
    entry("xformer", XF, 256),
];

/// Every zoo model.
pub fn list() -> &'static [ZooEntry] {
    &ENTRIES
}

/// Builds the graph of a zoo model (no weight values).
pub fn build_graph(name: &str, opts: &ZooOptions) -> Result<Graph, FrontendError> {
    if opts.batch == 0 {
        return Err(FrontendError::Zoo("a batch of 0 images".into()));
    }
    if let Some(cfg) = mobile_former::config(name) {
        mobile_former::build(&cfg, opts.batch)
    } else if let Some(cfg) = mobilevitv2::config(name) {
        mobilevitv2::build(&cfg, opts.batch)
    } else if name == xformer::NAME {
        xformer::build(opts.xformer_attention, opts.batch)
    } else {
        let names: Vec<&str> = ENTRIES.iter().map(|e| e.name).collect();
        Err(FrontendError::Zoo(format!(
            "unknown model `{name}` (known: {})",
            names.join(", ")
        )))
    }
}

/// Builds a zoo model with seeded weights.
pub fn build(name: &str, opts: &ZooOptions) -> Result<Model, FrontendError> {
    let graph = build_graph(name, opts)?;
    let weights = crate::init::seeded_weights(&graph, opts.seed);
    Ok(Model { graph, weights })
}

/// Whether a weight is a learned parameter in the papers' sense: not a
/// BatchNorm running statistic (operands 3 and 4 of `batch_norm`) and not a
/// scalar constant (`@const.*`).
pub fn is_trainable(g: &Graph, w: Value) -> bool {
    kiln_ir::stats::is_parameter(g, w)
}

/// Parameter count as the papers report it: every f32 weight element except
/// BatchNorm running statistics and scalar constants (conv and linear
/// weights and biases, norm γ and β, learned tokens, temperatures); the
/// convention lives in [`kiln_ir::stats::param_count`].
pub fn trainable_params(g: &Graph) -> u64 {
    kiln_ir::stats::param_count(g)
}

/// The one layout change a checkpoint may need: a `[out,in]` Linear stored
/// where the graph has a `[out,in,1,1]` 1×1 conv, or the reverse (cvnets
/// and timm disagree on this for some layers). Anything else is a mismatch.
fn linear_conv_layouts_agree(declared: &[usize], given: &[usize]) -> bool {
    match (declared, given) {
        ([o, i, 1, 1], [o2, i2]) | ([o, i], [o2, i2, 1, 1]) => o == o2 && i == i2,
        _ => false,
    }
}

/// Checks a checkpoint against a zoo graph and returns the store to run
/// with: every declared weight present with its declared type (scalar
/// constants are filled in from their names), no tensor left over. Every
/// missing, extra or mis-shaped tensor is reported together in one error.
/// timm's `num_batches_tracked` counters are ignored, and a `[out,in]` vs
/// `[out,in,1,1]` layout difference is reshaped (see docs/zoo.md).
pub fn bind_weights(g: &Graph, given: WeightStore) -> Result<WeightStore, FrontendError> {
    let mut out = WeightStore::new();
    let mut problems = Vec::new();
    for &id in g.weights() {
        let info = g.value_info(Value::of(id));
        let (name, ty) = (&info.name, &info.ty);
        let t = given.get(name);
        if let (Some(v), None) = (const_value(name), t) {
            let data = vec![v; ty.numel()];
            out.insert(name.clone(), Tensor::from_f32(ty.shape.clone(), data)?);
            continue;
        }
        match t {
            None => problems.push(format!("@{name}: missing (declared {ty})")),
            Some(t) if t.ty() == *ty => {
                out.insert(name.clone(), t.clone());
            }
            Some(t) if t.dtype() == ty.dtype && linear_conv_layouts_agree(&ty.shape, t.shape()) => {
                out.insert(name.clone(), t.reshaped(ty.shape.clone())?);
            }
            Some(t) => problems.push(format!("@{name}: declared {ty}, checkpoint has {}", t.ty())),
        }
    }
    for (name, t) in given.iter() {
        let ignored = name.ends_with("num_batches_tracked");
        if !ignored && g.weight_by_name(name).is_none() {
            problems.push(format!(
                "@{name}: in the checkpoint ({}) but not in the graph",
                t.ty()
            ));
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(kiln_ir::IrError::Weights(problems).into())
    }
}

/// The four dims of an NCHW value, or an error naming the current scope.
pub(crate) fn dims4(b: &GraphBuilder, x: Value) -> Result<[usize; 4], FrontendError> {
    let s = b.shape(x)?;
    s.as_slice().try_into().map_err(|_| {
        FrontendError::Zoo(format!("{}: expected an NCHW value, got {s:?}", b.path("")))
    })
}

/// timm `ConvNormAct` (MobileViTv2 and XFormer-R): `conv` (no bias, "same"
/// padding) → `bn` → optional SiLU, in the current scope.
pub(crate) fn conv_norm_act(
    b: &mut GraphBuilder,
    x: Value,
    out: usize,
    k: usize,
    stride: usize,
    groups: usize,
    act: bool,
) -> Result<Value, FrontendError> {
    let y = b
        .scope("conv")
        .conv2d(x, out, k, stride, k / 2, groups, false)?;
    let y = b.scope("bn").batch_norm(y)?;
    if act { b.silu(y) } else { Ok(y) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_buildable_names_match_the_list() {
        let mut names: Vec<&str> = list().iter().map(|e| e.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), list().len());
        assert!(matches!(
            build_graph("resnet50", &ZooOptions::default()),
            Err(FrontendError::Zoo(m)) if m.contains("unknown model")
        ));
    }

    #[test]
    fn layouts() {
        assert!(linear_conv_layouts_agree(&[8, 4, 1, 1], &[8, 4]));
        assert!(linear_conv_layouts_agree(&[8, 4], &[8, 4, 1, 1]));
        assert!(!linear_conv_layouts_agree(&[8, 4], &[4, 8]));
        assert!(!linear_conv_layouts_agree(&[8, 4, 3, 3], &[8, 36]));
    }
}
