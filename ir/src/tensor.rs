//! Tensor values and the shared weight store.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::IrError;
use crate::types::{DType, TensorType};

/// The elements of a tensor, row-major. Shared (`Arc`) so weights and
/// interpreter values clone in O(1).
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// `f32` elements.
    F32(Arc<[f32]>),
    /// `i64` elements.
    I64(Arc<[i64]>),
}

/// A dense tensor value: shape plus row-major data.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    /// An `f32` tensor. Errors when `data.len()` is not the product of `shape`.
    pub fn from_f32(
        shape: impl Into<Vec<usize>>,
        data: impl Into<Arc<[f32]>>,
    ) -> Result<Tensor, IrError> {
        let shape = shape.into();
        let data = data.into();
        check_len(&shape, data.len())?;
        Ok(Tensor {
            shape,
            data: TensorData::F32(data),
        })
    }

    /// An `i64` tensor. Errors when `data.len()` is not the product of `shape`.
    pub fn from_i64(
        shape: impl Into<Vec<usize>>,
        data: impl Into<Arc<[i64]>>,
    ) -> Result<Tensor, IrError> {
        let shape = shape.into();
        let data = data.into();
        check_len(&shape, data.len())?;
        Ok(Tensor {
            shape,
            data: TensorData::I64(data),
        })
    }

    /// A tensor of the given type filled with zeros.
    pub fn zeros(ty: &TensorType) -> Tensor {
        let n = ty.numel();
        let data = match ty.dtype {
            DType::F32 => TensorData::F32(vec![0.0; n].into()),
            DType::I64 => TensorData::I64(vec![0; n].into()),
        };
        Tensor {
            shape: ty.shape.clone(),
            data,
        }
    }

    /// Like [`Tensor::zeros`], but an error instead of an abort when the
    /// type cannot exist or the memory cannot be had: for sizes that come
    /// from a model file or the command line.
    pub fn try_zeros(ty: &TensorType) -> Result<Tensor, IrError> {
        let bytes = ty.check_size().map_err(IrError::Tensor)?;
        let n = ty.numel();
        let oom = |_| IrError::Tensor(format!("cannot allocate {ty} ({bytes} bytes)"));
        let data = match ty.dtype {
            DType::F32 => {
                let mut v: Vec<f32> = Vec::new();
                v.try_reserve_exact(n).map_err(oom)?;
                v.resize(n, 0.0);
                TensorData::F32(v.into())
            }
            DType::I64 => {
                let mut v: Vec<i64> = Vec::new();
                v.try_reserve_exact(n).map_err(oom)?;
                v.resize(n, 0);
                TensorData::I64(v.into())
            }
        };
        Ok(Tensor {
            shape: ty.shape.clone(),
            data,
        })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self.data {
            TensorData::F32(_) => DType::F32,
            TensorData::I64(_) => DType::I64,
        }
    }

    /// The static type (dtype + shape).
    pub fn ty(&self) -> TensorType {
        TensorType::new(self.dtype(), self.shape.clone())
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The raw data.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// The `f32` elements, or `None` for an `i64` tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(d) => Some(d),
            TensorData::I64(_) => None,
        }
    }

    /// The `i64` elements, or `None` for an `f32` tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::I64(d) => Some(d),
            TensorData::F32(_) => None,
        }
    }

    /// Mutable `f32` elements, or `None` for an `i64` tensor. Copies the data
    /// first if it is shared with another tensor (copy-on-write), so a tensor
    /// that owns its data alone is written in place without allocating.
    pub fn as_f32_mut(&mut self) -> Option<&mut [f32]> {
        match &mut self.data {
            TensorData::F32(d) => Some(Arc::make_mut(d)),
            TensorData::I64(_) => None,
        }
    }

    /// Mutable `i64` elements, or `None` for an `f32` tensor (copy-on-write
    /// like [`Tensor::as_f32_mut`]).
    pub fn as_i64_mut(&mut self) -> Option<&mut [i64]> {
        match &mut self.data {
            TensorData::I64(d) => Some(Arc::make_mut(d)),
            TensorData::F32(_) => None,
        }
    }

    /// The same data viewed with another shape of equal element count.
    pub fn reshaped(&self, shape: impl Into<Vec<usize>>) -> Result<Tensor, IrError> {
        let shape = shape.into();
        check_len(&shape, self.numel())?;
        Ok(Tensor {
            shape,
            data: self.data.clone(),
        })
    }
}

fn check_len(shape: &[usize], len: usize) -> Result<(), IrError> {
    let want = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    match want {
        Some(n) if n == len => Ok(()),
        _ => Err(IrError::Tensor(format!(
            "shape {shape:?} needs {} elements, data has {len}",
            want.map_or_else(|| "too many".to_string(), |n| n.to_string())
        ))),
    }
}

/// Named weight values, shared between a graph's consumers.
///
/// Cloning is O(1) (one `Arc`); [`WeightStore::insert`] copies the map only
/// when it is shared (copy-on-write), never the tensor data. Ordered by name
/// so that iteration, printing and files are deterministic.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightStore {
    tensors: Arc<BTreeMap<String, Tensor>>,
}

impl WeightStore {
    /// An empty store.
    pub fn new() -> WeightStore {
        WeightStore::default()
    }

    /// The tensor named `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Adds or replaces a tensor; returns the one it replaced.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) -> Option<Tensor> {
        Arc::make_mut(&mut self.tensors).insert(name.into(), tensor)
    }

    /// Removes a tensor.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        Arc::make_mut(&mut self.tensors).remove(name)
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Tensors in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_checked() {
        assert!(Tensor::from_f32([2, 3], vec![0.0; 6]).is_ok());
        assert!(Tensor::from_f32([2, 3], vec![0.0; 5]).is_err());
        assert!(Tensor::from_i64([usize::MAX, 4], vec![0; 4]).is_err());
    }

    #[test]
    fn mutable_access_is_copy_on_write() {
        let mut a = Tensor::from_f32([2], vec![1.0, 2.0]).unwrap();
        let b = a.clone();
        a.as_f32_mut().unwrap()[0] = 5.0;
        assert_eq!(a.as_f32(), Some(&[5.0, 2.0][..]));
        assert_eq!(b.as_f32(), Some(&[1.0, 2.0][..]));
        assert!(a.as_i64_mut().is_none());
    }

    #[test]
    fn store_is_copy_on_write() {
        let mut a = WeightStore::new();
        a.insert("w", Tensor::from_f32([1], vec![1.0]).unwrap());
        let mut b = a.clone();
        b.insert("w", Tensor::from_f32([1], vec![2.0]).unwrap());
        assert_eq!(a.get("w").unwrap().as_f32(), Some(&[1.0][..]));
        assert_eq!(b.get("w").unwrap().as_f32(), Some(&[2.0][..]));
    }
}
