//! Constant tensors seen during import — initialisers, `Constant` nodes and
//! everything folded from them — with the handful of generic operations the
//! folder needs on them.
//!
//! kiln's IR holds only `f32` and `i64`; shape arithmetic in ONNX exports
//! also passes through `bool` (Equal → Where) and narrower integers. A
//! constant therefore keeps one of three payloads: every float type widens
//! or narrows to `f32`, every integer type to `i64`, and `bool` stays `bool`
//! (it can never become a runtime value).

use kiln_ir::{Tensor, TensorData};

use super::external::{ExternalData, is_external};
use super::proto::TensorProto;
use super::proto::tensor_proto::DataType;

/// The elements of a constant, row-major.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Data {
    /// every float type (float, double, float16, bfloat16)
    F32(Vec<f32>),
    /// every integer type
    I64(Vec<i64>),
    /// bool
    Bool(Vec<bool>),
}

/// The element kind of a constant (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    F32,
    I64,
    Bool,
}

/// A statically known tensor.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Const {
    pub shape: Vec<usize>,
    pub data: Data,
}

/// Why a tensor proto could not become a constant.
#[derive(Debug)]
pub(crate) enum TensorError {
    /// malformed: wrong length, negative dims, ...
    Bad(String),
    /// a well-formed tensor of an element type kiln has no use for
    DType(String),
}

impl Const {
    pub fn f32(shape: Vec<usize>, v: Vec<f32>) -> Const {
        Const {
            shape,
            data: Data::F32(v),
        }
    }

    pub fn i64(shape: Vec<usize>, v: Vec<i64>) -> Const {
        Const {
            shape,
            data: Data::I64(v),
        }
    }

    pub fn bool(shape: Vec<usize>, v: Vec<bool>) -> Const {
        Const {
            shape,
            data: Data::Bool(v),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn kind(&self) -> Kind {
        match self.data {
            Data::F32(_) => Kind::F32,
            Data::I64(_) => Kind::I64,
            Data::Bool(_) => Kind::Bool,
        }
    }

    /// The constant as a kiln tensor; `bool` has no kiln counterpart.
    pub fn to_tensor(&self) -> Option<Tensor> {
        match &self.data {
            Data::F32(v) => Tensor::from_f32(self.shape.clone(), v.clone()).ok(),
            Data::I64(v) => Tensor::from_i64(self.shape.clone(), v.clone()).ok(),
            Data::Bool(_) => None,
        }
    }

    pub fn from_tensor(t: &Tensor) -> Const {
        let data = match t.data() {
            TensorData::F32(v) => Data::F32(v.to_vec()),
            TensorData::I64(v) => Data::I64(v.to_vec()),
        };
        Const {
            shape: t.shape().to_vec(),
            data,
        }
    }

    /// The elements as integers (shape vectors, axes, indices). Floats are
    /// refused: an ONNX input that must be integral is never a float.
    pub fn ints(&self) -> Result<Vec<i64>, String> {
        match &self.data {
            Data::I64(v) => Ok(v.clone()),
            Data::Bool(v) => Ok(v.iter().map(|&b| b as i64).collect()),
            Data::F32(_) => Err("expected an integer tensor, got a float one".into()),
        }
    }

    /// The elements as floats (clip bounds, pad values).
    pub fn floats(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
            Data::Bool(v) => v.iter().map(|&b| b as i32 as f32).collect(),
        }
    }

    /// The single element as a float (a scalar or a one-element tensor).
    pub fn scalar_f32(&self) -> Result<f32, String> {
        match self.floats().as_slice() {
            [x] => Ok(*x),
            v => Err(format!("expected one element, got {}", v.len())),
        }
    }

    /// The single element as an integer.
    pub fn scalar_i64(&self) -> Result<i64, String> {
        match self.ints()?.as_slice() {
            [x] => Ok(*x),
            v => Err(format!("expected one element, got {}", v.len())),
        }
    }

    pub fn bools(&self) -> Vec<bool> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| x != 0.0).collect(),
            Data::I64(v) => v.iter().map(|&x| x != 0).collect(),
            Data::Bool(v) => v.clone(),
        }
    }

    /// The same elements with another shape.
    pub fn reshaped(&self, shape: Vec<usize>) -> Result<Const, String> {
        if shape.iter().product::<usize>() != self.numel() {
            return Err(format!(
                "cannot reshape {:?} to {shape:?}: element counts differ",
                self.shape
            ));
        }
        Ok(Const {
            shape,
            data: self.data.clone(),
        })
    }

    /// A new constant whose element `i` is element `idx[i]` of this one.
    pub fn take(&self, idx: &[usize], shape: Vec<usize>) -> Const {
        let data = match &self.data {
            Data::F32(v) => Data::F32(idx.iter().map(|&i| v[i]).collect()),
            Data::I64(v) => Data::I64(idx.iter().map(|&i| v[i]).collect()),
            Data::Bool(v) => Data::Bool(idx.iter().map(|&i| v[i]).collect()),
        };
        Const { shape, data }
    }

    /// Converts the elements to another kind (ONNX Cast semantics: float to
    /// integer truncates toward zero, non-zero is `true`).
    pub fn cast(&self, to: Kind) -> Const {
        let data = match (to, &self.data) {
            (Kind::F32, _) => Data::F32(self.floats()),
            (Kind::I64, Data::F32(v)) => Data::I64(v.iter().map(|&x| x as i64).collect()),
            (Kind::I64, Data::I64(v)) => Data::I64(v.clone()),
            (Kind::I64, Data::Bool(v)) => Data::I64(v.iter().map(|&b| b as i64).collect()),
            (Kind::Bool, _) => Data::Bool(self.bools()),
        };
        Const {
            shape: self.shape.clone(),
            data,
        }
    }

    /// Concatenates along `axis`; every operand has this constant's kind.
    pub fn concat(parts: &[Const], axis: usize) -> Result<Const, String> {
        let first = parts.first().ok_or("concat of nothing")?;
        let kind = first.kind();
        let rank = first.shape.len();
        if axis >= rank {
            return Err(format!("axis {axis} out of range for rank {rank}"));
        }
        let mut shape = first.shape.clone();
        shape[axis] = 0;
        for p in parts {
            if p.kind() != kind
                || p.shape.len() != rank
                || (0..rank).any(|i| i != axis && p.shape[i] != first.shape[i])
            {
                return Err(format!(
                    "concat operands {:?} and {:?} differ outside axis {axis}",
                    first.shape, p.shape
                ));
            }
            shape[axis] += p.shape[axis];
        }
        let outer: usize = shape[..axis].iter().product();
        let inner: usize = shape[axis + 1..].iter().product();
        let mut out_idx: Vec<(usize, usize)> = Vec::with_capacity(shape.iter().product());
        for o in 0..outer {
            for (pi, p) in parts.iter().enumerate() {
                let chunk = p.shape[axis] * inner;
                for k in 0..chunk {
                    out_idx.push((pi, o * chunk + k));
                }
            }
        }
        let data = match kind {
            Kind::F32 => Data::F32(
                out_idx
                    .iter()
                    .map(|&(p, i)| match &parts[p].data {
                        Data::F32(v) => v[i],
                        _ => unreachable!("kinds checked above"),
                    })
                    .collect(),
            ),
            Kind::I64 => Data::I64(
                out_idx
                    .iter()
                    .map(|&(p, i)| match &parts[p].data {
                        Data::I64(v) => v[i],
                        _ => unreachable!("kinds checked above"),
                    })
                    .collect(),
            ),
            Kind::Bool => Data::Bool(
                out_idx
                    .iter()
                    .map(|&(p, i)| match &parts[p].data {
                        Data::Bool(v) => v[i],
                        _ => unreachable!("kinds checked above"),
                    })
                    .collect(),
            ),
        };
        Ok(Const { shape, data })
    }
}

/// The most elements a constant may have: folding must not turn a small
/// file into an unbounded allocation (`ConstantOfShape([1e9, 1e9])`).
pub(crate) const MAX_ELEMENTS: usize = 1 << 28;

/// Checks that a constant of `shape` stays within [`MAX_ELEMENTS`].
pub(crate) fn check_size(shape: &[usize]) -> Result<(), String> {
    match shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) {
        Some(n) if n <= MAX_ELEMENTS => Ok(()),
        _ => Err(format!(
            "a constant of shape {shape:?} would exceed {MAX_ELEMENTS} elements"
        )),
    }
}

/// Visits every multi-index of `shape` in row-major order and collects
/// `f(index)`; the building block of every movement op on constants.
pub(crate) fn index_map(shape: &[usize], mut f: impl FnMut(&[usize]) -> usize) -> Vec<usize> {
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        out.push(f(&idx));
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// Flat index into a tensor of shape `src` (right-aligned and broadcast
/// against the output index `out`).
pub(crate) fn broadcast_index(src: &[usize], out: &[usize]) -> usize {
    let off = out.len() - src.len();
    let mut flat = 0;
    for (i, &d) in src.iter().enumerate() {
        let x = if d == 1 { 0 } else { out[off + i] };
        flat = flat * d + x;
    }
    flat
}

/// A constant from a tensor proto held entirely in the model (no external
/// data: see [`from_proto_in`]).
pub(crate) fn from_proto(t: &TensorProto) -> Result<Const, TensorError> {
    from_proto_in(t, None)
}

/// A constant from a tensor proto whose bytes may live in a side file,
/// resolved by `ext` (the model file's folder). Without `ext` (a model
/// decoded from memory) external data is an error.
pub(crate) fn from_proto_in(
    t: &TensorProto,
    ext: Option<&ExternalData>,
) -> Result<Const, TensorError> {
    let name = t.name.as_deref().unwrap_or("");
    let bad = |m: String| TensorError::Bad(format!("tensor '{name}': {m}"));
    let region = if is_external(t) {
        let ext = ext.ok_or_else(|| {
            bad(
                "stored as external data, which kiln reads only beside a model file \
                 (import the file by its path, or save the model with its weights inside)"
                    .into(),
            )
        })?;
        Some(ext.region(t).map_err(bad)?)
    } else {
        None
    };
    if t.segment.is_some() {
        return Err(bad("segmented tensors are not supported".into()));
    }
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        shape.push(usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}")))?);
    }
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= (1usize << 40))
        .ok_or_else(|| bad(format!("dimensions {shape:?} are too large")))?;
    let raw = match &region {
        Some(r) => Some(r.bytes()),
        None => t.raw_data.as_deref(),
    };
    let dt = t.data_type.unwrap_or(0);
    let dtype = DataType::try_from(dt).map_err(|_| bad(format!("unknown data type {dt}")))?;
    let check = |len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(bad(format!(
                "has {len} elements, its dimensions {shape:?} need {n}"
            )))
        }
    };
    let raw_elems = |size: usize| -> Result<Vec<&[u8]>, TensorError> {
        let r = raw.unwrap_or(&[]);
        if r.len() != n * size {
            return Err(bad(format!(
                "raw data has {} bytes, its dimensions {shape:?} need {}",
                r.len(),
                n * size
            )));
        }
        Ok(r.chunks_exact(size).collect())
    };
    let data = match dtype {
        DataType::Float => match raw {
            Some(_) => Data::F32(
                raw_elems(4)?
                    .iter()
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            None => {
                check(t.float_data.len())?;
                Data::F32(t.float_data.clone())
            }
        },
        DataType::Double => match raw {
            Some(_) => Data::F32(
                raw_elems(8)?
                    .iter()
                    .map(|b| {
                        f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                    })
                    .collect(),
            ),
            None => {
                check(t.double_data.len())?;
                Data::F32(t.double_data.iter().map(|&x| x as f32).collect())
            }
        },
        DataType::Float16 | DataType::Bfloat16 => {
            let bits: Vec<u16> = match raw {
                Some(_) => raw_elems(2)?
                    .iter()
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect(),
                None => {
                    check(t.int32_data.len())?;
                    t.int32_data.iter().map(|&x| x as u16).collect()
                }
            };
            let conv = if dtype == DataType::Float16 {
                f16_to_f32
            } else {
                |b: u16| f32::from_bits((b as u32) << 16)
            };
            Data::F32(bits.into_iter().map(conv).collect())
        }
        DataType::Int64 => match raw {
            Some(_) => Data::I64(
                raw_elems(8)?
                    .iter()
                    .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                    .collect(),
            ),
            None => {
                check(t.int64_data.len())?;
                Data::I64(t.int64_data.clone())
            }
        },
        DataType::Int32
        | DataType::Int16
        | DataType::Int8
        | DataType::Uint16
        | DataType::Uint8
        | DataType::Bool => {
            let v: Vec<i64> = match raw {
                Some(_) => {
                    let size = match dtype {
                        DataType::Int32 => 4,
                        DataType::Int16 | DataType::Uint16 => 2,
                        _ => 1,
                    };
                    raw_elems(size)?
                        .iter()
                        .map(|b| match dtype {
                            DataType::Int32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
                            DataType::Int16 => i16::from_le_bytes([b[0], b[1]]) as i64,
                            DataType::Uint16 => u16::from_le_bytes([b[0], b[1]]) as i64,
                            DataType::Int8 => b[0] as i8 as i64,
                            _ => b[0] as i64,
                        })
                        .collect()
                }
                None => {
                    check(t.int32_data.len())?;
                    t.int32_data.iter().map(|&x| x as i64).collect()
                }
            };
            if dtype == DataType::Bool {
                Data::Bool(v.into_iter().map(|x| x != 0).collect())
            } else {
                Data::I64(v)
            }
        }
        DataType::Uint32 | DataType::Uint64 => {
            let v: Vec<i64> = match raw {
                Some(_) if dtype == DataType::Uint32 => raw_elems(4)?
                    .iter()
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                    .collect(),
                Some(_) => raw_elems(8)?
                    .iter()
                    .map(|b| {
                        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as i64
                    })
                    .collect(),
                None => {
                    check(t.uint64_data.len())?;
                    t.uint64_data.iter().map(|&x| x as i64).collect()
                }
            };
            Data::I64(v)
        }
        other => return Err(TensorError::DType(other.as_str_name().to_string())),
    };
    Ok(Const { shape, data })
}

/// IEEE half precision to single (exact: every half is a single).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // subnormal half: normalise into a single's exponent range
            let mut e = 127 - 15 + 1;
            let mut m = m;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats_convert_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
    }

    #[test]
    fn concat_interleaves_outer_blocks() {
        let a = Const::i64(vec![2, 1], vec![1, 2]);
        let b = Const::i64(vec![2, 2], vec![3, 4, 5, 6]);
        let c = Const::concat(&[a, b], 1).unwrap();
        assert_eq!(c, Const::i64(vec![2, 3], vec![1, 3, 4, 2, 5, 6]));
    }

    #[test]
    fn raw_data_length_is_checked() {
        let t = TensorProto {
            dims: vec![3],
            data_type: Some(DataType::Float as i32),
            raw_data: Some(vec![0; 8]),
            ..Default::default()
        };
        assert!(matches!(from_proto(&t), Err(TensorError::Bad(_))));
    }
}
