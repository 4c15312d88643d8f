//! Static tensor types: element type plus a fully known shape.

use std::fmt;

/// Element type of a tensor value.
///
/// kiln computes in `f32`; `i64` exists for the shape and index tensors that
/// ONNX exports carry (and that the importer usually folds away).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// 32-bit IEEE float: every activation and weight.
    F32,
    /// 64-bit signed integer: shapes, indices.
    I64,
}

impl DType {
    /// The name used by the text format (`f32`, `i64`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I64 => "i64",
        }
    }

    /// Parses the text-format name.
    pub fn from_name(s: &str) -> Option<DType> {
        match s {
            "f32" => Some(DType::F32),
            "i64" => Some(DType::I64),
            _ => None,
        }
    }

    /// Size of one element in bytes.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::I64 => 8,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The static type of a value: dtype and shape, every dimension known.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first (row-major / C order). Empty = scalar.
    pub shape: Vec<usize>,
}

impl TensorType {
    /// A tensor type from its parts.
    pub fn new(dtype: DType, shape: impl Into<Vec<usize>>) -> TensorType {
        TensorType {
            dtype,
            shape: shape.into(),
        }
    }

    /// An `f32` tensor type of the given shape.
    pub fn f32(shape: impl Into<Vec<usize>>) -> TensorType {
        TensorType::new(DType::F32, shape)
    }

    /// An `i64` tensor type of the given shape.
    pub fn i64(shape: impl Into<Vec<usize>>) -> TensorType {
        TensorType::new(DType::I64, shape)
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements (1 for a scalar). Saturates instead of wrapping:
    /// a type that [`TensorType::check_size`] refuses — none can be in a
    /// graph — gives `usize::MAX`, never a small count that would
    /// under-allocate.
    pub fn numel(&self) -> usize {
        self.shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX)
    }

    /// Size of the whole tensor in bytes; saturates like [`TensorType::numel`].
    pub fn size_bytes(&self) -> usize {
        self.numel().saturating_mul(self.dtype.size_bytes())
    }

    /// The size in bytes, or why this type cannot exist: every type in a
    /// graph passes this check (the graph builder, the parser, shape
    /// inference and the verifier apply it), so kernels, the memory plan and
    /// the interpreter may compute sizes and offsets of a valid type without
    /// overflow.
    pub fn check_size(&self) -> Result<usize, String> {
        self.shape
            .iter()
            .try_fold(self.dtype.size_bytes(), |a, &d| a.checked_mul(d))
            .filter(|&b| b <= crate::limits::MAX_TYPE_BYTES)
            .ok_or_else(|| {
                format!("type {self} is too large: its size in bytes does not fit in 63 bits")
            })
    }
}

impl fmt::Display for TensorType {
    /// Prints `f32[1,3,224,224]`; a scalar prints as `f32[]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Row-major strides (in elements) of a shape.
pub fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// Numpy/ONNX multidirectional broadcast of two shapes, or `None` when a pair
/// of aligned dimensions differs and neither is 1.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i < rank - a.len() {
            1
        } else {
            a[i - (rank - a.len())]
        };
        let db = if i < rank - b.len() {
            1
        } else {
            b[i - (rank - b.len())]
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_numel() {
        let t = TensorType::f32([1, 3, 224, 224]);
        assert_eq!(t.to_string(), "f32[1,3,224,224]");
        assert_eq!(t.numel(), 3 * 224 * 224);
        assert_eq!(TensorType::i64(Vec::new()).to_string(), "i64[]");
        assert_eq!(TensorType::i64(Vec::new()).numel(), 1);
    }

    #[test]
    fn broadcasting() {
        assert_eq!(broadcast_shapes(&[2, 1, 4], &[3, 1]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast_shapes(&[], &[5]), Some(vec![5]));
        assert_eq!(broadcast_shapes(&[2, 3], &[4, 3]), None);
    }

    #[test]
    fn strides() {
        assert_eq!(strides_of(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(strides_of(&[]), Vec::<usize>::new());
    }
}
