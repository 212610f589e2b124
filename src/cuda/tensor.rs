//! Typed device tensors: a shape, a dtype (the element type) and a buffer.

use cudarc::driver::{CudaSlice, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
use ndarray::{Array2, ArrayView2};

use super::CudaBackend;
use crate::dtype::{DType, Element};
use crate::error::{check_i32, product, Error, Result};

/// An element type that lives on the device.
pub trait DeviceElement: DeviceRepr + ValidAsZeroBits + Copy + Default + Unpin + 'static {
    /// Name used to pick a kernel instantiation (`f32`, `f16`, `bf16`, `i32`).
    const SUFFIX: &'static str;
}

impl DeviceElement for f32 {
    const SUFFIX: &'static str = "f32";
}
impl DeviceElement for half::f16 {
    const SUFFIX: &'static str = "f16";
}
impl DeviceElement for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}
impl DeviceElement for i32 {
    const SUFFIX: &'static str = "i32";
}

/// A row-major tensor on the device. Its element count fits i32 indexing.
#[derive(Debug)]
pub struct DeviceTensor<T> {
    data: CudaSlice<T>,
    shape: Vec<usize>,
}

fn checked_len(shape: &[usize]) -> Result<usize> {
    let n = product(shape);
    check_i32("tensor elements", n)?;
    Ok(n as usize)
}

impl<T: DeviceElement> DeviceTensor<T> {
    /// Copies `data` (row-major, `shape`) to the device.
    pub fn from_host(backend: &CudaBackend, shape: &[usize], data: &[T]) -> Result<Self> {
        let n = checked_len(shape)?;
        if data.len() != n {
            return Err(Error::ShapeMismatch {
                op: "DeviceTensor::from_host",
                message: format!("shape {shape:?} holds {n} elements, found {}", data.len()),
            });
        }
        let data = backend.stream().clone_htod(data)?;
        Ok(DeviceTensor {
            data,
            shape: shape.to_vec(),
        })
    }

    /// Copies a 2-D array to the device.
    pub fn from_array(backend: &CudaBackend, array: ArrayView2<T>) -> Result<Self> {
        let (r, c) = array.dim();
        let host: Vec<T> = array.iter().copied().collect();
        Self::from_host(backend, &[r, c], &host)
    }

    /// A zero-filled tensor.
    pub fn zeros(backend: &CudaBackend, shape: &[usize]) -> Result<Self> {
        let n = checked_len(shape)?;
        let data = backend.stream().alloc_zeros::<T>(n.max(1))?;
        Ok(DeviceTensor {
            data,
            shape: shape.to_vec(),
        })
    }

    /// A device-to-device copy (stream-ordered, no host round trip).
    pub fn try_clone(&self, backend: &CudaBackend) -> Result<Self> {
        Ok(DeviceTensor {
            data: backend.stream().clone_dtod(&self.data)?,
            shape: self.shape.clone(),
        })
    }

    /// A tensor filled with `value` (e.g. NaN, to poison outputs in tests).
    pub fn filled(backend: &CudaBackend, shape: &[usize], value: T) -> Result<Self> {
        let n = checked_len(shape)?;
        Self::from_host(backend, shape, &vec![value; n])
    }

    /// Copies the tensor back to the host (waits for the stream).
    pub fn to_host(&self, backend: &CudaBackend) -> Result<Vec<T>> {
        let mut v = backend.stream().clone_dtoh(&self.data)?;
        v.truncate(self.len());
        Ok(v)
    }

    /// Copies a 2-D tensor back into an array.
    pub fn to_array2(&self, backend: &CudaBackend) -> Result<Array2<T>> {
        let [r, c] = self.shape[..] else {
            return Err(Error::ShapeMismatch {
                op: "DeviceTensor::to_array2",
                message: format!("expected a 2-D tensor, found shape {:?}", self.shape),
            });
        };
        Array2::from_shape_vec((r, c), self.to_host(backend)?).map_err(|e| Error::ShapeMismatch {
            op: "DeviceTensor::to_array2",
            message: e.to_string(),
        })
    }

    /// The same buffer under another shape with the same element count (no
    /// copy). Returns [`Error::ShapeMismatch`] when the counts differ.
    pub fn reshape(self, shape: &[usize]) -> Result<Self> {
        if product(shape) != product(&self.shape) {
            return Err(Error::ShapeMismatch {
                op: "DeviceTensor::reshape",
                message: format!(
                    "shape {shape:?} does not hold the {} elements of shape {:?}",
                    self.len(),
                    self.shape
                ),
            });
        }
        Ok(DeviceTensor {
            data: self.data,
            shape: shape.to_vec(),
        })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The device buffer (at least one element long, even when empty).
    pub fn slice(&self) -> &CudaSlice<T> {
        &self.data
    }
    /// The device buffer, mutably.
    pub fn slice_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.data
    }
}

impl DeviceTensor<i32> {
    /// A tensor of `shape` with every element -1, set on the device by a
    /// stream-ordered memset (no host buffer, no host synchronisation): the
    /// "absent" marker of index arrays.
    pub fn minus_ones(backend: &CudaBackend, shape: &[usize]) -> Result<Self> {
        let mut t = Self::zeros(backend, shape)?;
        let stream = backend.stream();
        backend.context().bind_to_thread()?;
        let bytes = t.data.num_bytes();
        {
            let (ptr, _record) = t.data.device_ptr_mut(stream);
            // SAFETY: `ptr` is the start of `t.data`, a live allocation of
            // `bytes` bytes made on `stream`, and the memset is ordered on
            // that same stream after the allocation's zero fill. All bytes
            // 0xFF is the i32 value -1, a valid i32.
            unsafe {
                cudarc::driver::result::memset_d8_async(ptr, 0xFF, bytes, stream.cu_stream())
            }?;
        }
        Ok(t)
    }
}

impl<T: DeviceElement + Element> DeviceTensor<T> {
    /// The dtype of a floating-point tensor.
    pub fn dtype(&self) -> DType {
        T::DTYPE
    }
}
