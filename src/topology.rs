//! The block-sparse layout of a dMoE layer: a block-diagonal BCSR topology with
//! the transpose metadata of MegaBlocks' `stk.Matrix`.
//!
//! Rows are tokens sorted by expert, each expert's group padded to the block
//! size; columns are the experts' concatenated FFN units. Block row `r` of
//! expert `e` holds the column blocks `e * ffn / b .. (e + 1) * ffn / b`.
//! Blocks are stored contiguously in row-major block order, each block
//! `block_size x block_size` row-major.

use crate::error::{check_i32, product, Error, Result};

/// Block sizes the CPU reference implements.
pub const CPU_BLOCK_SIZES: &[usize] = &[16, 32, 64, 128];
/// The default block size, and the one the CUDA kernels implement.
pub const DEFAULT_BLOCK_SIZE: usize = 128;

/// A BCSR block-sparse topology with its transpose metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    block_size: usize,
    /// Dense rows (padded tokens): `block_rows * block_size`.
    rows: usize,
    /// Dense columns: `num_experts * ffn_per_expert`.
    cols: usize,
    /// Block row of each stored block.
    row_indices: Vec<i32>,
    /// Block column of each stored block.
    column_indices: Vec<i32>,
    /// Per block row, the index of its first stored block; `block_rows + 1` long.
    offsets: Vec<i32>,
    /// In transposed (column-major) order, the block row of each block.
    column_indices_t: Vec<i32>,
    /// Per block column, the index of its first block in transposed order.
    offsets_t: Vec<i32>,
    /// In transposed order, the storage index of each block.
    block_offsets_t: Vec<i32>,
}

impl Topology {
    /// Builds the block-diagonal topology of a dMoE layer from the number of
    /// tokens routed to each expert. Each count is rounded up to `block_size`;
    /// an expert with no tokens owns no block rows.
    pub fn from_tokens_per_expert(
        tokens_per_expert: &[usize],
        ffn_per_expert: usize,
        block_size: usize,
    ) -> Result<Self> {
        if !CPU_BLOCK_SIZES.contains(&block_size) {
            return Err(Error::UnsupportedBlockSize {
                block_size,
                backend: "the topology",
                supported: CPU_BLOCK_SIZES,
            });
        }
        let num_experts = tokens_per_expert.len();
        if num_experts == 0 {
            return Err(Error::Empty {
                op: "Topology::from_tokens_per_expert",
                what: "the number of experts",
            });
        }
        if ffn_per_expert == 0 || !ffn_per_expert.is_multiple_of(block_size) {
            return Err(Error::InvalidConfig(format!(
                "ffn size per expert {ffn_per_expert} must be a positive multiple of the block size {block_size}"
            )));
        }
        let blocks_per_expert_row = ffn_per_expert / block_size;
        let rows_per_expert: Vec<usize> = tokens_per_expert
            .iter()
            .map(|&t| t.div_ceil(block_size))
            .collect();
        let block_rows: usize = rows_per_expert.iter().sum();
        let block_cols = num_experts * blocks_per_expert_row;
        let nnz = block_rows as u128 * blocks_per_expert_row as u128;
        check_i32("padded tokens", product(&[block_rows, block_size]))?;
        check_i32("experts x ffn", product(&[num_experts, ffn_per_expert]))?;
        check_i32("sparse elements", nnz * (block_size * block_size) as u128)?;

        let nnz = nnz as usize;
        let mut row_indices = Vec::with_capacity(nnz);
        let mut column_indices = Vec::with_capacity(nnz);
        let mut offsets = Vec::with_capacity(block_rows + 1);
        // Storage index of the first block of each expert, and its first block row.
        let mut expert_first_block = Vec::with_capacity(num_experts);
        let mut expert_first_row = Vec::with_capacity(num_experts);
        let mut row = 0usize;
        for (e, &n_rows) in rows_per_expert.iter().enumerate() {
            expert_first_block.push(row_indices.len());
            expert_first_row.push(row);
            for _ in 0..n_rows {
                offsets.push(row_indices.len() as i32);
                for c in 0..blocks_per_expert_row {
                    row_indices.push(row as i32);
                    column_indices.push((e * blocks_per_expert_row + c) as i32);
                }
                row += 1;
            }
        }
        offsets.push(row_indices.len() as i32);

        let mut column_indices_t = Vec::with_capacity(nnz);
        let mut offsets_t = Vec::with_capacity(block_cols + 1);
        let mut block_offsets_t = Vec::with_capacity(nnz);
        for e in 0..num_experts {
            for c in 0..blocks_per_expert_row {
                offsets_t.push(column_indices_t.len() as i32);
                for r in 0..rows_per_expert[e] {
                    column_indices_t.push((expert_first_row[e] + r) as i32);
                    block_offsets_t
                        .push((expert_first_block[e] + r * blocks_per_expert_row + c) as i32);
                }
            }
        }
        offsets_t.push(column_indices_t.len() as i32);

        Ok(Topology {
            block_size,
            rows: block_rows * block_size,
            cols: num_experts * ffn_per_expert,
            row_indices,
            column_indices,
            offsets,
            column_indices_t,
            offsets_t,
            block_offsets_t,
        })
    }

    /// Builds a topology from raw BCSR arrays (e.g. read back from the device)
    /// and checks that they are consistent; the transpose metadata is derived.
    pub fn from_bcsr(
        rows: usize,
        cols: usize,
        block_size: usize,
        offsets: Vec<i32>,
        column_indices: Vec<i32>,
    ) -> Result<Self> {
        if !CPU_BLOCK_SIZES.contains(&block_size) {
            return Err(Error::UnsupportedBlockSize {
                block_size,
                backend: "the topology",
                supported: CPU_BLOCK_SIZES,
            });
        }
        if !rows.is_multiple_of(block_size) || !cols.is_multiple_of(block_size) {
            return Err(Error::InvalidTopology(format!(
                "shape [{rows}, {cols}] is not a multiple of the block size {block_size}"
            )));
        }
        check_i32("padded tokens", rows as u128)?;
        check_i32("columns", cols as u128)?;
        let (block_rows, block_cols) = (rows / block_size, cols / block_size);
        if offsets.len() != block_rows + 1 || offsets.first() != Some(&0) {
            return Err(Error::InvalidTopology(format!(
                "offsets must hold {} entries starting at 0, found {}",
                block_rows + 1,
                offsets.len()
            )));
        }
        if offsets.windows(2).any(|w| w[1] < w[0])
            || offsets[block_rows] as usize != column_indices.len()
        {
            return Err(Error::InvalidTopology(
                "offsets must be non-decreasing and end at the number of blocks".into(),
            ));
        }
        check_i32(
            "sparse elements",
            product(&[column_indices.len(), block_size, block_size]),
        )?;
        let mut row_indices = Vec::with_capacity(column_indices.len());
        for r in 0..block_rows {
            let row = &column_indices[offsets[r] as usize..offsets[r + 1] as usize];
            if row.windows(2).any(|w| w[1] <= w[0]) {
                return Err(Error::InvalidTopology(format!(
                    "column indices of block row {r} must be strictly increasing"
                )));
            }
            if let Some(&c) = row.iter().find(|&&c| c < 0 || c as usize >= block_cols) {
                return Err(Error::InvalidTopology(format!(
                    "block column {c} in block row {r} is outside 0..{block_cols}"
                )));
            }
            row_indices.extend(std::iter::repeat_n(r as i32, row.len()));
        }
        // Transpose: stable counting sort of the blocks by column.
        let mut counts = vec![0i32; block_cols + 1];
        for &c in &column_indices {
            counts[c as usize + 1] += 1;
        }
        for c in 0..block_cols {
            counts[c + 1] += counts[c];
        }
        let offsets_t = counts.clone();
        let mut next = counts;
        let mut column_indices_t = vec![0i32; column_indices.len()];
        let mut block_offsets_t = vec![0i32; column_indices.len()];
        for (b, (&r, &c)) in row_indices.iter().zip(&column_indices).enumerate() {
            let slot = next[c as usize] as usize;
            next[c as usize] += 1;
            column_indices_t[slot] = r;
            block_offsets_t[slot] = b as i32;
        }
        Ok(Topology {
            block_size,
            rows,
            cols,
            row_indices,
            column_indices,
            offsets,
            column_indices_t,
            offsets_t,
            block_offsets_t,
        })
    }

    /// Side of the square blocks.
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    /// Dense row count (padded tokens).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Dense column count (`experts * ffn`).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Number of block rows.
    pub fn block_rows(&self) -> usize {
        self.rows / self.block_size
    }
    /// Number of block columns.
    pub fn block_cols(&self) -> usize {
        self.cols / self.block_size
    }
    /// Number of stored blocks.
    pub fn num_blocks(&self) -> usize {
        self.column_indices.len()
    }
    /// Number of stored elements (`num_blocks * block_size^2`).
    pub fn num_elements(&self) -> usize {
        self.num_blocks() * self.block_size * self.block_size
    }
    /// Block row of each stored block.
    pub fn row_indices(&self) -> &[i32] {
        &self.row_indices
    }
    /// Block column of each stored block.
    pub fn column_indices(&self) -> &[i32] {
        &self.column_indices
    }
    /// Per block row, the first stored block (`block_rows + 1` entries).
    pub fn offsets(&self) -> &[i32] {
        &self.offsets
    }
    /// In transposed order, the block row of each block.
    pub fn column_indices_t(&self) -> &[i32] {
        &self.column_indices_t
    }
    /// Per block column, the first block in transposed order (`block_cols + 1` entries).
    pub fn offsets_t(&self) -> &[i32] {
        &self.offsets_t
    }
    /// In transposed order, the storage index of each block.
    pub fn block_offsets_t(&self) -> &[i32] {
        &self.block_offsets_t
    }
    /// Storage index of block (block_row, block_col), if it is stored.
    pub fn block_at(&self, block_row: usize, block_col: usize) -> Option<usize> {
        let (lo, hi) = (
            self.offsets[block_row] as usize,
            self.offsets[block_row + 1] as usize,
        );
        self.column_indices[lo..hi]
            .binary_search(&(block_col as i32))
            .ok()
            .map(|i| lo + i)
    }
}
