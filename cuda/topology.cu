// Device construction of the block-diagonal dMoE topology from the padded
// bins, into buffers sized for a capacity of max_block_rows block rows (see
// src/cuda/topology.rs). Equal to Topology::from_tokens_per_expert on the
// used part; offsets of unused block rows, and offsets[max_block_rows], hold
// the true block count; blocks past it are not written.
#include "common.cuh"

// padded_bins: [E] inclusive cumsum of the padded token counts (multiples of
// block_size). per_row = ffn_per_expert / block_size blocks per block row.
// Outputs: row_indices, column_indices, column_indices_t, block_offsets_t
// [max_block_rows * per_row]; offsets [max_block_rows + 1]; offsets_t
// [E * per_row + 1]. Block (r, c) of expert e is storage block r * per_row + c,
// column e * per_row + c; in transposed order it sits at
// first_row(e) * per_row + c * rows(e) + (r - first_row(e)).
// Grid ceil(max(max_block_rows * per_row, E * per_row + 1, max_block_rows + 1) / 256),
// block 256, dynamic shared memory E * 4 bytes. Every write is bounds-checked,
// so inconsistent padded bins give a wrong topology but no out-of-bounds access.
DL_EXTERN void __launch_bounds__(256)
    dl_build_topology(const int32_t* __restrict__ padded_bins, int32_t num_experts,
                      int32_t block_size, int32_t per_row, int32_t max_block_rows,
                      int32_t* __restrict__ row_indices, int32_t* __restrict__ column_indices,
                      int32_t* __restrict__ offsets, int32_t* __restrict__ column_indices_t,
                      int32_t* __restrict__ offsets_t, int32_t* __restrict__ block_offsets_t) {
  extern __shared__ int32_t rows_end[];  // [E]: cumulative block rows, clamped to capacity
  for (int32_t e = threadIdx.x; e < num_experts; e += blockDim.x) {
    const int32_t rows = padded_bins[e] / block_size;
    rows_end[e] = min(max(rows, 0), max_block_rows);
  }
  __syncthreads();
  const int32_t used_rows = rows_end[num_experts - 1];
  const int32_t nnz = used_rows * per_row;
  const int32_t max_blocks = max_block_rows * per_row;
  const int32_t block_cols = num_experts * per_row;
  const int32_t g = blockIdx.x * blockDim.x + threadIdx.x;

  if (g < max_blocks) {
    const int32_t r = g / per_row;
    const int32_t c = g - r * per_row;
    if (r < used_rows) {
      const int32_t e = dl::upper_bound(rows_end, num_experts, r);
      if (e < num_experts) {
        const int32_t first = e > 0 ? rows_end[e - 1] : 0;
        const int32_t rows = rows_end[e] - first;
        row_indices[g] = r;
        column_indices[g] = e * per_row + c;
        const int32_t s = first * per_row + c * rows + (r - first);
        if (s >= 0 && s < max_blocks) {
          column_indices_t[s] = r;
          block_offsets_t[s] = g;
        }
      }
    }
  }
  if (g <= max_block_rows) offsets[g] = min(g, used_rows) * per_row;
  if (g < block_cols) {
    const int32_t e = g / per_row;
    const int32_t c = g - e * per_row;
    const int32_t first = e > 0 ? rows_end[e - 1] : 0;
    offsets_t[g] = first * per_row + c * (rows_end[e] - first);
  } else if (g == block_cols) {
    offsets_t[g] = nnz;
  }
}
