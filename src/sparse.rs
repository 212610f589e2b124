//! A block-sparse matrix on the host: a [`Topology`] plus its blocks' values,
//! and a view that carries a transpose flag (as `stk.Matrix` does).

use std::sync::Arc;

use ndarray::{Array2, ArrayView2};

use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::topology::Topology;

/// A block-sparse matrix: the topology's blocks, each `block_size^2` values
/// row-major, stored in the topology's row-major block order.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSparse<T> {
    topology: Arc<Topology>,
    data: Vec<T>,
}

/// A borrowed block-sparse matrix, possibly transposed. Ops take this whole.
#[derive(Debug, Clone, Copy)]
pub struct SparseView<'a, T> {
    /// The stored matrix.
    pub matrix: &'a BlockSparse<T>,
    /// Whether the op sees the matrix transposed.
    pub transposed: bool,
}

impl<T: Element> BlockSparse<T> {
    /// Wraps block values; `data` must hold `topology.num_elements()` values.
    pub fn new(topology: Arc<Topology>, data: Vec<T>) -> Result<Self> {
        if data.len() != topology.num_elements() {
            return Err(Error::ShapeMismatch {
                op: "BlockSparse::new",
                message: format!(
                    "the topology stores {} blocks ({} values), found {} values",
                    topology.num_blocks(),
                    topology.num_elements(),
                    data.len()
                ),
            });
        }
        Ok(BlockSparse { topology, data })
    }

    /// Takes the topology's blocks out of a dense `[rows, cols]` matrix.
    pub fn from_dense(topology: Arc<Topology>, dense: ArrayView2<T>) -> Result<Self> {
        if dense.dim() != (topology.rows(), topology.cols()) {
            return Err(Error::ShapeMismatch {
                op: "BlockSparse::from_dense",
                message: format!(
                    "the topology is [{}, {}], the dense matrix is {:?}",
                    topology.rows(),
                    topology.cols(),
                    dense.dim()
                ),
            });
        }
        let bs = topology.block_size();
        let mut data = Vec::with_capacity(topology.num_elements());
        for (&r, &c) in topology.row_indices().iter().zip(topology.column_indices()) {
            let (r0, c0) = (r as usize * bs, c as usize * bs);
            for i in 0..bs {
                data.extend((0..bs).map(|j| dense[[r0 + i, c0 + j]]));
            }
        }
        Ok(BlockSparse { topology, data })
    }

    /// The dense `[rows, cols]` matrix, zero outside the topology's blocks.
    pub fn to_dense(&self) -> Array2<T> {
        let t = &self.topology;
        let bs = t.block_size();
        let mut dense = Array2::from_elem((t.rows(), t.cols()), T::from_f32(0.0));
        for (b, (&r, &c)) in t.row_indices().iter().zip(t.column_indices()).enumerate() {
            let block = self.block(b);
            let (r0, c0) = (r as usize * bs, c as usize * bs);
            for i in 0..bs {
                for j in 0..bs {
                    dense[[r0 + i, c0 + j]] = block[i * bs + j];
                }
            }
        }
        dense
    }

    /// The topology.
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topology
    }
    /// All block values.
    pub fn data(&self) -> &[T] {
        &self.data
    }
    /// All block values, mutably (for elementwise ops on the blocks).
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
    /// Consumes the matrix, returning its values.
    pub fn into_data(self) -> Vec<T> {
        self.data
    }
    /// The values of stored block `b`, row-major.
    pub fn block(&self, b: usize) -> &[T] {
        let n = self.topology.block_size() * self.topology.block_size();
        &self.data[b * n..(b + 1) * n]
    }
    /// The matrix as the ops see it, untransposed.
    pub fn view(&self) -> SparseView<'_, T> {
        SparseView {
            matrix: self,
            transposed: false,
        }
    }
    /// The matrix transposed (no data moves: ops walk the transpose metadata).
    pub fn t(&self) -> SparseView<'_, T> {
        SparseView {
            matrix: self,
            transposed: true,
        }
    }
}

impl<T: Element> SparseView<'_, T> {
    /// Shape as the op sees it: `[rows, cols]`, swapped when transposed.
    pub fn dim(&self) -> (usize, usize) {
        let t = self.matrix.topology();
        if self.transposed {
            (t.cols(), t.rows())
        } else {
            (t.rows(), t.cols())
        }
    }
}
