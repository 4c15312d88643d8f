//! ONNX import and export.
//!
//! SKELETON: the ONNX work replaces this file.

use std::path::Path;

use kiln_ir::Model;

use crate::FrontendError;

/// Options for importing an ONNX file.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// concrete shapes for inputs with symbolic dims, by input name
    pub input_shapes: Vec<(String, Vec<usize>)>,
}

/// Imports an `.onnx` file into a primitive-op model.
pub fn import(path: &Path, _opts: &ImportOptions) -> Result<Model, FrontendError> {
    Err(FrontendError::Onnx(format!(
        "{}: the ONNX importer is not written yet",
        path.display()
    )))
}
