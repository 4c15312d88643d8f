//! The model zoo: Mobile-Former, MobileViTv2 and XFormer-R graphs by name.
//!
//! SKELETON: the model-zoo work replaces this file.

use kiln_ir::Model;

use crate::FrontendError;

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
#[derive(Clone, Debug, Default)]
pub struct ZooOptions {
    /// seed of the deterministic weight initialisation
    pub seed: u64,
}

/// Every zoo model.
pub fn list() -> &'static [ZooEntry] {
    &[]
}

/// Builds a zoo model with seeded weights.
pub fn build(name: &str, _opts: &ZooOptions) -> Result<Model, FrontendError> {
    Err(FrontendError::Zoo(format!("unknown model `{name}`")))
}
