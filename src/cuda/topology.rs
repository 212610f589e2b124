//! The block-sparse topology on the device, sized by bounds known from shapes.
//!
//! A topology built on the device from the padded bins cannot know its true
//! block count without reading it back to the host. Instead every buffer is
//! sized for the bound `P <= tokens * top_k + experts * (block - 1)` padded
//! rows, and the kernels read the true counts from device memory:
//! `offsets[max_block_rows]` is the true number of blocks, and block rows past
//! the true padded count are empty (their offsets equal the block count).
//! Blocks past the true count are never read or written.

use super::{CudaBackend, DeviceTensor};
use crate::error::{check_i32, product, Error, Result};
use crate::topology::{Topology, DEFAULT_BLOCK_SIZE};

/// Block sizes the CUDA kernels implement.
pub const CUDA_BLOCK_SIZES: &[usize] = &[DEFAULT_BLOCK_SIZE];

/// A BCSR topology on the device, with the transpose metadata. Arrays have the
/// same meaning as in [`Topology`], padded to the capacity `max_blocks`.
#[derive(Debug)]
pub struct DeviceTopology {
    pub(crate) block_size: usize,
    /// Capacity in block rows (dense rows = `max_block_rows * block_size`).
    pub(crate) max_block_rows: usize,
    /// Block columns (dense columns = `block_cols * block_size`).
    pub(crate) block_cols: usize,
    /// Capacity in blocks (`max_block_rows * blocks per block row`).
    pub(crate) max_blocks: usize,
    /// `[max_blocks]`: block row of each stored block.
    pub(crate) row_indices: DeviceTensor<i32>,
    /// `[max_blocks]`: block column of each stored block.
    pub(crate) column_indices: DeviceTensor<i32>,
    /// `[max_block_rows + 1]`: first block of each block row; the last entry
    /// is the true block count, and so are the entries of unused rows.
    pub(crate) offsets: DeviceTensor<i32>,
    /// `[max_blocks]`: in transposed order, the block row of each block.
    pub(crate) column_indices_t: DeviceTensor<i32>,
    /// `[block_cols + 1]`: first block of each block column, transposed order.
    pub(crate) offsets_t: DeviceTensor<i32>,
    /// `[max_blocks]`: in transposed order, the storage index of each block.
    pub(crate) block_offsets_t: DeviceTensor<i32>,
}

/// Checks a block size against the kernels' ([`CUDA_BLOCK_SIZES`]): every
/// CUDA entry point that takes a block size (a layer configuration, a
/// topology, the padded bins) runs this first, so an unsupported size is
/// refused up front with [`Error::UnsupportedBlockSize`], whose message names
/// the sizes to use. A pure function: it needs no device.
pub fn check_block_size(block_size: usize) -> Result<()> {
    if !CUDA_BLOCK_SIZES.contains(&block_size) {
        return Err(Error::UnsupportedBlockSize {
            block_size,
            backend: "the CUDA kernels",
            supported: CUDA_BLOCK_SIZES,
        });
    }
    Ok(())
}

impl DeviceTopology {
    /// Uploads a host topology (capacity = its exact size).
    pub fn from_host(backend: &CudaBackend, topology: &Topology) -> Result<Self> {
        check_block_size(topology.block_size())?;
        let nnz = topology.num_blocks();
        let upload = |v: &[i32]| DeviceTensor::from_host(backend, &[v.len()], v);
        Ok(DeviceTopology {
            block_size: topology.block_size(),
            max_block_rows: topology.block_rows(),
            block_cols: topology.block_cols(),
            max_blocks: nnz,
            row_indices: upload(topology.row_indices())?,
            column_indices: upload(topology.column_indices())?,
            offsets: upload(topology.offsets())?,
            column_indices_t: upload(topology.column_indices_t())?,
            offsets_t: upload(topology.offsets_t())?,
            block_offsets_t: upload(topology.block_offsets_t())?,
        })
    }

    /// Allocates an empty topology of the capacity a dMoE step with these
    /// shapes can need: `P <= tokens * top_k + experts * (block - 1)`.
    pub(crate) fn with_capacity(
        backend: &CudaBackend,
        tokens: usize,
        top_k: usize,
        num_experts: usize,
        ffn_per_expert: usize,
        block_size: usize,
    ) -> Result<Self> {
        check_block_size(block_size)?;
        let max_block_rows =
            max_padded_tokens(tokens, top_k, num_experts, block_size)? / block_size;
        if ffn_per_expert == 0 || !ffn_per_expert.is_multiple_of(block_size) {
            return Err(Error::InvalidConfig(format!(
                "ffn size per expert {ffn_per_expert} must be a positive multiple of the block size {block_size}"
            )));
        }
        let per_row = ffn_per_expert / block_size;
        let block_cols = num_experts * per_row;
        check_i32("experts x ffn", product(&[num_experts, ffn_per_expert]))?;
        let max_blocks = max_block_rows * per_row;
        check_i32(
            "sparse elements",
            product(&[max_blocks, block_size, block_size]),
        )?;
        let zeros = |n: usize| DeviceTensor::<i32>::zeros(backend, &[n]);
        Ok(DeviceTopology {
            block_size,
            max_block_rows,
            block_cols,
            max_blocks,
            row_indices: zeros(max_blocks)?,
            column_indices: zeros(max_blocks)?,
            offsets: zeros(max_block_rows + 1)?,
            column_indices_t: zeros(max_blocks)?,
            offsets_t: zeros(block_cols + 1)?,
            block_offsets_t: zeros(max_blocks)?,
        })
    }

    /// Side of the square blocks.
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    /// Dense row capacity (padded tokens).
    pub fn rows(&self) -> usize {
        self.max_block_rows * self.block_size
    }
    /// Dense columns (`experts * ffn`).
    pub fn cols(&self) -> usize {
        self.block_cols * self.block_size
    }
    /// Capacity in blocks.
    pub fn max_blocks(&self) -> usize {
        self.max_blocks
    }
    /// A one-element view of the true block count (`offsets[max_block_rows]`)
    /// in device memory, for kernels that bound their work by it.
    pub(crate) fn num_blocks_view(&self) -> cudarc::driver::CudaView<'_, i32> {
        self.offsets
            .slice()
            .slice(self.max_block_rows..self.max_block_rows + 1)
    }

    /// Reads the topology back (waits for the stream); for tests and debugging.
    pub fn to_host(&self, backend: &CudaBackend) -> Result<Topology> {
        let offsets = self.offsets.to_host(backend)?;
        let nnz = *offsets.last().unwrap_or(&0);
        let nnz = usize::try_from(nnz)
            .map_err(|_| Error::InvalidTopology(format!("negative block count {nnz}")))?;
        let mut column_indices = self.column_indices.to_host(backend)?;
        column_indices.truncate(nnz);
        // Every used block row holds at least one block, so the first offset
        // equal to the block count marks the end of the used rows.
        let used_rows = offsets
            .iter()
            .position(|&o| o as usize == nnz)
            .unwrap_or(self.max_block_rows);
        Topology::from_bcsr(
            used_rows * self.block_size,
            self.cols(),
            self.block_size,
            offsets[..=used_rows].to_vec(),
            column_indices,
        )
    }
}

/// The padded-token bound `tokens * top_k + experts * (block - 1)`, rounded
/// down to a multiple of the block size, checked against i32 indexing.
///
/// Errors: [`Error::UnsupportedBlockSize`] unless `block_size` is one of
/// [`CUDA_BLOCK_SIZES`], [`Error::IndexOverflow`].
pub fn max_padded_tokens(
    tokens: usize,
    top_k: usize,
    num_experts: usize,
    block_size: usize,
) -> Result<usize> {
    check_block_size(block_size)?;
    let bound = product(&[tokens, top_k]) + product(&[num_experts, block_size - 1]);
    let bound = bound / block_size as u128 * block_size as u128;
    check_i32("padded tokens bound", bound)?;
    Ok(bound as usize)
}
