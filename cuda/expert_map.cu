// The one kernel of the MoE map / reduce (src/cuda/expert_map.rs) that the
// permute and block-sparse kernels do not already provide: dense padded rows
// in expert order ([rows, width], expert e's rows at its padded bin) laid out
// as the blocks of a dMoE topology whose block rows of expert e hold its
// per_row = ceil(width / bs) block columns e * per_row .. (e + 1) * per_row,
// the columns past width zero. The DSD product of that matrix with the
// stacked expert weights [experts * per_row * bs, out] (zero rows past each
// expert's width) is then each row times its own expert's weights.
#include "common.cuh"

namespace {

constexpr int kThreads = 256;

// One CTA per stored block b < gridDim.x = max_blocks: block b (block row
// row_indices[b], block column column_indices[b]) gets the bs x bs tile of
// `dense` at rows row * bs.., columns (column % per_row) * bs..; blocks past
// the true count offsets[max_block_rows] are zeroed, and so are the tile's
// columns past width. The wrapper checked dense is [max_block_rows * bs,
// width] with width <= per_row * bs, and data holds max_blocks blocks.
template <typename T>
__device__ void rows_to_blocks(const T* __restrict__ dense, const int32_t* __restrict__ row_indices,
                               const int32_t* __restrict__ column_indices,
                               const int32_t* __restrict__ offsets, T* __restrict__ data,
                               int32_t max_block_rows, int32_t per_row, int32_t bs,
                               int32_t width) {
  const int32_t b = blockIdx.x;
  const int32_t nnz = offsets[max_block_rows];
  T* out = data + static_cast<int64_t>(b) * bs * bs;
  const int32_t n = bs * bs;
  if (b >= nnz) {
    for (int32_t e = threadIdx.x; e < n; e += kThreads) out[e] = dl::from_f32<T>(0.0f);
    return;
  }
  const int64_t row0 = static_cast<int64_t>(row_indices[b]) * bs;
  const int32_t col0 = (column_indices[b] % per_row) * bs;
  for (int32_t e = threadIdx.x; e < n; e += kThreads) {
    const int32_t i = e / bs;
    const int32_t j = e % bs;
    const int32_t col = col0 + j;
    out[e] = col < width ? dense[(row0 + i) * width + col] : dl::from_f32<T>(0.0f);
  }
}

}  // namespace

#define DL_EXPERT_MAP(T, SUFFIX)                                                                 \
  DL_EXTERN void __launch_bounds__(kThreads)                                                     \
      dl_rows_to_blocks_##SUFFIX(const T* dense, const int32_t* row_indices,                     \
                                 const int32_t* column_indices, const int32_t* offsets, T* data, \
                                 int32_t max_block_rows, int32_t per_row, int32_t bs,            \
                                 int32_t width) {                                                \
    rows_to_blocks<T>(dense, row_indices, column_indices, offsets, data, max_block_rows,         \
                      per_row, bs, width);                                                       \
  }

DL_EXPERT_MAP(float, f32)
DL_EXPERT_MAP(__half, f16)
DL_EXPERT_MAP(__nv_bfloat16, bf16)
