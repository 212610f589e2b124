//! A block-sparse matrix on the device: a [`DeviceTopology`] plus its blocks'
//! values, and a view that carries a transpose flag (as on the host).

use std::sync::Arc;

use super::{CudaBackend, DeviceElement, DeviceTensor, DeviceTopology};
use crate::error::{Error, Result};

/// A block-sparse matrix on the device: `max_blocks` blocks of
/// `block_size^2` values, row-major, in the topology's block order. Only the
/// first (true block count) blocks are meaningful.
#[derive(Debug)]
pub struct DeviceBlockSparse<T> {
    pub(crate) topology: Arc<DeviceTopology>,
    pub(crate) data: DeviceTensor<T>,
}

/// A borrowed device block-sparse matrix, possibly transposed.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSparseView<'a, T> {
    /// The stored matrix.
    pub matrix: &'a DeviceBlockSparse<T>,
    /// Whether the op sees the matrix transposed.
    pub transposed: bool,
}

impl<T: DeviceElement> DeviceBlockSparse<T> {
    /// Wraps block values; `data` must hold `max_blocks * block_size^2` values.
    pub fn new(topology: Arc<DeviceTopology>, data: DeviceTensor<T>) -> Result<Self> {
        let want = topology.max_blocks() * topology.block_size() * topology.block_size();
        if data.len() != want {
            return Err(Error::ShapeMismatch {
                op: "DeviceBlockSparse::new",
                message: format!("the topology holds {want} values, found {}", data.len()),
            });
        }
        Ok(DeviceBlockSparse { topology, data })
    }

    /// A matrix on `topology` with every value set to `value` (NaN poisons
    /// outputs in tests).
    pub fn filled(backend: &CudaBackend, topology: Arc<DeviceTopology>, value: T) -> Result<Self> {
        let n = topology.max_blocks() * topology.block_size() * topology.block_size();
        let data = DeviceTensor::filled(backend, &[n], value)?;
        Ok(DeviceBlockSparse { topology, data })
    }

    /// A zero-filled matrix on `topology` (a device memset, no host copy).
    pub fn zeros(backend: &CudaBackend, topology: Arc<DeviceTopology>) -> Result<Self> {
        let n = topology.max_blocks() * topology.block_size() * topology.block_size();
        let data = DeviceTensor::zeros(backend, &[n])?;
        Ok(DeviceBlockSparse { topology, data })
    }

    /// The topology.
    pub fn topology(&self) -> &Arc<DeviceTopology> {
        &self.topology
    }
    /// The block values.
    pub fn data(&self) -> &DeviceTensor<T> {
        &self.data
    }
    /// The block values, mutably.
    pub fn data_mut(&mut self) -> &mut DeviceTensor<T> {
        &mut self.data
    }
    /// The matrix as ops see it, untransposed.
    pub fn view(&self) -> DeviceSparseView<'_, T> {
        DeviceSparseView {
            matrix: self,
            transposed: false,
        }
    }
    /// The matrix transposed (ops walk the transpose metadata).
    pub fn t(&self) -> DeviceSparseView<'_, T> {
        DeviceSparseView {
            matrix: self,
            transposed: true,
        }
    }
}

impl<T: DeviceElement> DeviceSparseView<'_, T> {
    /// Shape as the op sees it (capacity rows for the untransposed matrix).
    pub fn dim(&self) -> (usize, usize) {
        let t = self.matrix.topology();
        if self.transposed {
            (t.cols(), t.rows())
        } else {
            (t.rows(), t.cols())
        }
    }
}
