// Block-sparse matrix products on tensor cores (block size 128), in the three
// forms of MegaBlocks / stk:
//   SDD: out blocks = A * op(B)           (sparse output, dense operands)
//   DSD: out = op(S) * B                  (sparse left operand)
//   DDS: out = A * op(S)                  (sparse right operand)
// bf16 and f16 operands, f32 accumulation, output rounded to the operand type.
//
// Every kernel computes one 128x128 output tile per CTA (256 threads, 8 warps
// of 64x32) with one mainloop: a sequence of "segments" (a whole dense K range
// for SDD, one 128x128 sparse block per segment for DSD/DDS), each cut into
// 32-deep K tiles that stream global -> shared through a 4-stage cp.async
// pipeline, then ldmatrix -> mma.sync.m16n8k16.
//
// Shared-memory layouts (16-byte chunks, XOR-swizzled so that both the
// cp.async writes and every 8-lane phase of ldmatrix hit 8 distinct 16-byte
// bank groups):
//   K-major tile  (operand contiguous along K): 128 rows (M or N) x 32 k
//     = 4 chunks per 64-byte row; chunk c of row r lives at r*4 + (c ^ ((r>>1)&3)).
//   MN-major tile (operand contiguous along M or N): 32 rows (k) x 128
//     = 16 chunks per 256-byte row; chunk c of row k at k*16 + (c ^ (k&7)).
// K-major operands are read with ldmatrix, MN-major ones with ldmatrix.trans.
//
// Index arithmetic is i32: every device buffer holds at most i32::MAX elements
// (DeviceTensor refuses larger ones; the wrappers check the output shapes and
// grid), so every in-bounds element offset fits. Offsets of out-of-bounds
// (predicated) elements are never formed: they are replaced by 0 before any
// multiplication.
//
// Dense edges: K (SDD), N (DSD) are multiples of 8, so a 16-byte chunk is
// either fully inside or fully outside; M of DDS is predicated per row.
// Chunks outside are zero-filled (cp.async src-size 0) in BOTH operands, so
// padding contributes exact zeros, and the epilogue stores only inside.
#include "common.cuh"
#include "mma.cuh"

namespace dl {
namespace bs {

constexpr int kBlock = 128;                // sparse block side
constexpr int kBlockElems = kBlock * kBlock;
constexpr int kTileM = 128;                // CTA tile
constexpr int kTileN = 128;
constexpr int kTileK = 32;
constexpr int kStages = 4;
constexpr int kThreads = 256;
constexpr int kWarpM = 64;                 // warp tile: 2 x 4 warps of 64 x 32
constexpr int kWarpN = 32;
constexpr int kMmaM = kWarpM / 16;         // m16 tiles per warp
constexpr int kMmaN = kWarpN / 8;          // n8 tiles per warp
constexpr int kOperandBytes = kTileM * kTileK * 2;      // one operand, one stage
constexpr int kStageBytes = 2 * kOperandBytes;
constexpr int kPipeBytes = kStages * kStageBytes;
constexpr int kOutBytes = kTileM * kTileN * 2;          // epilogue staging
constexpr int kSmemBytes = kPipeBytes > kOutBytes ? kPipeBytes : kOutBytes;

static_assert(kTileM == kTileN && kTileM == kBlock, "one sparse block per output tile");
static_assert((kTileM / kWarpM) * (kTileN / kWarpN) * 32 == kThreads, "8 warps cover the tile");
static_assert(kOperandBytes == 2 * kThreads * 16, "two 16-byte copies per thread and operand");
static_assert(kOutBytes == 8 * kThreads * 16, "eight 16-byte stores per thread");
static_assert(kBlock % kTileK == 0, "whole K tiles per block");
// Must equal SMEM_BYTES in src/cuda/sparse_ops.rs.
static_assert(kSmemBytes == 65536, "dynamic shared memory the wrappers request");

// How an operand is laid out in global memory.
enum class Major {
  K,   // contiguous along K: element (mn, k) at mn * ld + k
  MN,  // contiguous along M (or N): element (mn, k) at k * ld + mn
};

// Byte offset in an operand tile of the 16-byte chunk holding element
// (mn, k); for K-major k is a multiple of 8, for MN-major mn is.
template <Major L>
__device__ __forceinline__ uint32_t chunk_offset(int mn, int k) {
  if constexpr (L == Major::K) {
    return static_cast<uint32_t>((mn * 4 + ((k >> 3) ^ ((mn >> 1) & 3))) * 16);
  } else {
    return static_cast<uint32_t>((k * 16 + ((mn >> 3) ^ (k & 7))) * 16);
  }
}

// Element offset of (mn, k) in global memory.
template <Major L>
__device__ __forceinline__ int global_offset(int mn, int k, int ld) {
  if constexpr (L == Major::K) {
    return mn * ld + k;
  } else {
    return k * ld + mn;
  }
}

// One operand of the product as the mainloop streams it.
template <typename T, Major L>
struct Operand {
  int ld;        // leading dimension in elements
  int mn_valid;  // rows (M or N) of the tile that exist; > 0
};

// Issues this thread's two 16-byte copies of one 128 x 32 operand tile whose
// element (0, 0) is `origin` (a valid element). Elements with mn >= mn_valid
// or k >= k_valid are zero-filled.
template <typename T, Major L>
__device__ __forceinline__ void load_operand(uint32_t tile, const T* origin, Operand<T, L> op,
                                             int k_valid, int tid) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int idx = tid + i * kThreads;
    const int mn = (L == Major::K) ? (idx >> 2) : ((idx & 15) << 3);
    const int k = (L == Major::K) ? ((idx & 3) << 3) : (idx >> 4);
    const bool valid = mn < op.mn_valid && k < k_valid;
    const int off = valid ? global_offset<L>(mn, k, op.ld) : 0;
    mma::cp_async_16(tile + chunk_offset<L>(mn, k), origin + off, valid);
  }
}

// Pointer to element (0, k) of an operand whose element (0, 0) is `base`.
template <typename T, Major L>
__device__ __forceinline__ const T* advance_k(const T* base, int k, int ld) {
  return base + global_offset<L>(0, k, ld);
}

// Loads the A fragment (m16 x k16 at warp row m, depth kk) of one stage.
template <Major L>
__device__ __forceinline__ void load_a_frag(uint32_t (&r)[4], uint32_t tile, int m, int kk,
                                            int lane) {
  if constexpr (L == Major::K) {
    // Matrices: (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15).
    mma::ldmatrix_x4(r, tile + chunk_offset<L>(m + (lane & 15), kk + ((lane >> 4) << 3)));
  } else {
    // Stored rows are k: the same four matrices, each transposed.
    const int j = lane >> 3;
    const int k = kk + (lane & 7) + ((j >> 1) << 3);
    mma::ldmatrix_x4_trans(r, tile + chunk_offset<L>(m + ((j & 1) << 3), k));
  }
}

// Loads the B fragments of two n8 tiles (n16 x k16 at warp column n, depth
// kk): r[0..2) for columns n..n+8, r[2..4) for n+8..n+16.
template <Major L>
__device__ __forceinline__ void load_b_frag(uint32_t (&r)[4], uint32_t tile, int n, int kk,
                                            int lane) {
  const int j = lane >> 3;
  if constexpr (L == Major::K) {
    // Matrices: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
    mma::ldmatrix_x4(r, tile + chunk_offset<L>(n + (lane & 7) + ((j >> 1) << 3),
                                                kk + ((j & 1) << 3)));
  } else {
    const int k = kk + (lane & 7) + ((j & 1) << 3);
    mma::ldmatrix_x4_trans(r, tile + chunk_offset<L>(n + ((j >> 1) << 3), k));
  }
}

// The accumulators of one thread: [m16 tile][n8 tile][fragment element].
struct Acc {
  float v[kMmaM][kMmaN][4];
};

// Where the K segments of a CTA come from. A source provides
//   int segments() const;                    number of segments (>= 0)
//   int segment_k() const;                   K depth of every segment (> 0)
//   void segment(int s, const T*& a, const T*& b) const;
// with a / b the operands' element (0, 0) of segment s (mn = the CTA tile's
// first row / column, k = the segment's first k).

// The mainloop: acc = sum over segments of A_s * B_s (zero when there are no
// segments). Leaves the pipeline drained and every thread past a barrier, so
// the caller may reuse shared memory.
template <typename T, Major LA, Major LB, class Source>
__device__ __forceinline__ void mainloop(const Source& src, Operand<T, LA> opa, Operand<T, LB> opb,
                                         Acc& acc, unsigned char* smem) {
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int warp_m = (warp >> 2) * kWarpM;
  const int warp_n = (warp & 3) * kWarpN;
  const uint32_t smem_base = mma::smem_addr(smem);

#pragma unroll
  for (int i = 0; i < kMmaM; ++i)
#pragma unroll
    for (int j = 0; j < kMmaN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc.v[i][j][e] = 0.0f;

  const int seg_k = src.segment_k();
  const int tiles_per_seg = (seg_k + kTileK - 1) / kTileK;
  const int num_tiles = src.segments() * tiles_per_seg;

  // Producer state: the next tile to load is tile `kt` of segment `seg`.
  int seg = 0;
  int kt = 0;
  const T* a_seg = nullptr;
  const T* b_seg = nullptr;
  if (num_tiles > 0) src.segment(0, a_seg, b_seg);

  auto load_next = [&](int stage) {
    const uint32_t a_tile = smem_base + stage * kStageBytes;
    const int k0 = kt * kTileK;
    const int k_valid = seg_k - k0;
    load_operand<T, LA>(a_tile, advance_k<T, LA>(a_seg, k0, opa.ld), opa, k_valid, tid);
    load_operand<T, LB>(a_tile + kOperandBytes, advance_k<T, LB>(b_seg, k0, opb.ld), opb, k_valid,
                        tid);
    if (++kt == tiles_per_seg) {
      kt = 0;
      ++seg;
      if (seg < src.segments()) src.segment(seg, a_seg, b_seg);
    }
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < num_tiles) load_next(s);
    mma::cp_async_commit();
  }

  int stage = 0;                 // stage holding tile t
  int next_stage = kStages - 1;  // stage that receives tile t + kStages - 1
  for (int t = 0; t < num_tiles; ++t) {
    // Groups committed so far: tiles 0 .. t + kStages - 2; allowing the
    // newest kStages - 2 to be in flight completes tiles 0 .. t.
    mma::cp_async_wait<kStages - 2>();
    // Tile t is visible to all threads, and all threads are done with tile
    // t - 1, whose stage is the one refilled now.
    __syncthreads();
    if (t + kStages - 1 < num_tiles) load_next(next_stage);
    mma::cp_async_commit();

    const uint32_t a_tile = smem_base + stage * kStageBytes;
    const uint32_t b_tile = a_tile + kOperandBytes;
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 16) {
      uint32_t af[kMmaM][4];
      uint32_t bf[kMmaN][2];
#pragma unroll
      for (int i = 0; i < kMmaM; ++i) load_a_frag<LA>(af[i], a_tile, warp_m + i * 16, kk, lane);
#pragma unroll
      for (int j = 0; j < kMmaN; j += 2) {
        uint32_t r[4];
        load_b_frag<LB>(r, b_tile, warp_n + j * 8, kk, lane);
        bf[j][0] = r[0];
        bf[j][1] = r[1];
        bf[j + 1][0] = r[2];
        bf[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < kMmaM; ++i)
#pragma unroll
        for (int j = 0; j < kMmaN; ++j) mma::mma_16816<T>(acc.v[i][j], af[i], bf[j]);
    }
    stage = (stage + 1 == kStages) ? 0 : stage + 1;
    next_stage = (next_stage + 1 == kStages) ? 0 : next_stage + 1;
  }
  mma::cp_async_wait<0>();
  __syncthreads();
}

// Byte offset of the 16-byte chunk (row, c) of the 128 x 128 staging tile
// (256-byte rows, chunk c at c ^ (row & 7)).
__device__ __forceinline__ int out_chunk(int row, int c) { return row * 256 + ((c ^ (row & 7)) << 4); }

// Rounds the accumulators to T and stores the tile at `out` (element (0, 0)
// of the tile, row stride ld): rows < m_valid, columns < n_valid (a multiple
// of 8). Stages through shared memory for 16-byte stores. Must follow
// mainloop (which drains the pipeline).
template <typename T>
__device__ __forceinline__ void store_tile(const Acc& acc, unsigned char* smem, T* out, int ld,
                                           int m_valid, int n_valid) {
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int warp_m = (warp >> 2) * kWarpM;
  const int warp_n = (warp & 3) * kWarpN;
#pragma unroll
  for (int i = 0; i < kMmaM; ++i) {
#pragma unroll
    for (int j = 0; j < kMmaN; ++j) {
      const int row = warp_m + i * 16 + (lane >> 2);
      const int col = warp_n + j * 8 + ((lane & 3) << 1);
      const int in_chunk = (col & 7) * 2;
      *reinterpret_cast<uint32_t*>(smem + out_chunk(row, col >> 3) + in_chunk) =
          mma::pack2<T>(acc.v[i][j][0], acc.v[i][j][1]);
      *reinterpret_cast<uint32_t*>(smem + out_chunk(row + 8, col >> 3) + in_chunk) =
          mma::pack2<T>(acc.v[i][j][2], acc.v[i][j][3]);
    }
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kOutBytes / (kThreads * 16); ++i) {
    const int idx = tid + i * kThreads;
    const int row = idx >> 4;
    const int c = idx & 15;
    if (row < m_valid && (c << 3) < n_valid) {
      *reinterpret_cast<uint4*>(out + row * ld + (c << 3)) =
          *reinterpret_cast<const uint4*>(smem + out_chunk(row, c));
    }
  }
}

// SDD: one dense K segment. A = [rows, k] K-major; B = [cols, k] K-major
// (trans_b) or [k, cols] MN-major.
template <typename T>
struct DenseSource {
  const T* a;
  const T* b;
  int k;
  __device__ __forceinline__ int segments() const { return 1; }
  __device__ __forceinline__ int segment_k() const { return k; }
  __device__ __forceinline__ void segment(int, const T*& sa, const T*& sb) const {
    sa = a;
    sb = b;
  }
};

// DSD / DDS: the blocks of one block row (by_column = false: offsets,
// column_indices, the block is its position) or block column (by_column =
// true: offsets_t, column_indices_t, block_offsets_t) of S. The sparse
// operand is A (DSD) or B (DDS); the dense one starts at `dense` (the CTA's
// first M or N, k = 0) and moves by 128 * (the block's other index) along K.
template <typename T, Major LDense, bool kSparseA, bool kByColumn>
struct SparseSource {
  const T* values;        // the blocks, kBlockElems each
  const T* dense;
  int ld_dense;
  const int* indices;     // column_indices or column_indices_t
  const int* block_ids;   // block_offsets_t (by column only)
  int first;              // position of the first block of the row / column
  int count;              // number of blocks in it
  __device__ __forceinline__ int segments() const { return count; }
  __device__ __forceinline__ int segment_k() const { return kBlock; }
  __device__ __forceinline__ void segment(int s, const T*& a, const T*& b) const {
    const int pos = first + s;
    const int block = kByColumn ? block_ids[pos] : pos;
    const T* sparse = values + block * kBlockElems;
    const T* dense_k = advance_k<T, LDense>(dense, indices[pos] * kBlock, ld_dense);
    a = kSparseA ? sparse : dense_k;
    b = kSparseA ? dense_k : sparse;
  }
};

extern __shared__ __align__(128) unsigned char smem[];

// out block b (b < offsets[max_block_rows], the true block count) = rows of
// block row row_indices[b] of A times op(B) columns of block column
// column_indices[b]. Grid: max_blocks CTAs.
template <typename T, bool kTransB>
__device__ __forceinline__ void sdd(const T* __restrict__ a, const T* __restrict__ b,
                                    T* __restrict__ out, const int32_t* __restrict__ row_indices,
                                    const int32_t* __restrict__ column_indices,
                                    const int32_t* __restrict__ offsets, int32_t max_block_rows,
                                    int32_t k, int32_t cols) {
  const int blk = blockIdx.x;
  if (blk >= offsets[max_block_rows]) return;
  const int r = row_indices[blk];
  const int c = column_indices[blk];
  constexpr Major LB = kTransB ? Major::K : Major::MN;
  const DenseSource<T> src{a + r * kBlock * k, kTransB ? b + c * kBlock * k : b + c * kBlock, k};
  Acc acc;
  mainloop<T, Major::K, LB>(src, Operand<T, Major::K>{k, kBlock},
                            Operand<T, LB>{kTransB ? k : cols, kBlock}, acc, smem);
  store_tile<T>(acc, smem, out + blk * kBlockElems, kBlock, kBlock, kBlock);
}

// DSD: out [P, n] = op(S) [P, Q] * b [Q, n]. CTA x = sparse + n_tile *
// num_sparse covers output block row `sparse` (S's block row, or block
// column when transposed) and columns n_tile * 128 .. . Rows with no block
// are written as zeros.
template <typename T, bool kTrans>
__device__ __forceinline__ void dsd(const T* __restrict__ s, const T* __restrict__ b,
                                    T* __restrict__ out, const int32_t* __restrict__ offsets,
                                    const int32_t* __restrict__ indices,
                                    const int32_t* __restrict__ block_ids, int32_t num_sparse,
                                    int32_t n) {
  const int sparse = blockIdx.x % num_sparse;
  const int n0 = (blockIdx.x / num_sparse) * kTileN;
  const int first = offsets[sparse];
  // S block = [row i][col j]; non-transposed A(m=i, k=j) is K-major,
  // transposed A(m=j, k=i) is MN-major.
  constexpr Major LA = kTrans ? Major::MN : Major::K;
  const SparseSource<T, Major::MN, true, kTrans> src{
      s, b + n0, n, indices, block_ids, first, offsets[sparse + 1] - first};
  Acc acc;
  mainloop<T, LA, Major::MN>(src, Operand<T, LA>{kBlock, kBlock}, Operand<T, Major::MN>{n, n - n0},
                             acc, smem);
  store_tile<T>(acc, smem, out + sparse * kBlock * n + n0, n, kTileM, n - n0);
}

// DDS: out [m, Q] = a [m, P] * op(S) [P, Q]. CTA x = sparse + m_tile *
// num_sparse covers rows m_tile * 128 .. and output block column `sparse`
// (S's block column, or block row when transposed). Columns with no block
// are written as zeros. lda = P.
template <typename T, bool kTrans>
__device__ __forceinline__ void dds(const T* __restrict__ a, const T* __restrict__ s,
                                    T* __restrict__ out, const int32_t* __restrict__ offsets,
                                    const int32_t* __restrict__ indices,
                                    const int32_t* __restrict__ block_ids, int32_t num_sparse,
                                    int32_t m, int32_t lda) {
  const int sparse = blockIdx.x % num_sparse;
  const int m0 = (blockIdx.x / num_sparse) * kTileM;
  const int first = offsets[sparse];
  // S block = [row i][col j]; non-transposed B(k=i, n=j) is MN-major,
  // transposed B(k=j, n=i) is K-major.
  constexpr Major LB = kTrans ? Major::K : Major::MN;
  const SparseSource<T, Major::K, false, !kTrans> src{
      s, a + m0 * lda, lda, indices, block_ids, first, offsets[sparse + 1] - first};
  Acc acc;
  mainloop<T, Major::K, LB>(src, Operand<T, Major::K>{lda, m - m0}, Operand<T, LB>{kBlock, kBlock},
                            acc, smem);
  const int ldo = num_sparse * kBlock;
  store_tile<T>(acc, smem, out + m0 * ldo + sparse * kBlock, ldo, m - m0, kTileN);
}

}  // namespace bs
}  // namespace dl

// Launch contract of every kernel: 256 threads, dl::bs::kSmemBytes (65536)
// bytes of dynamic shared memory (the wrapper raises the function's limit),
// tensors row-major and contiguous, dense K / N multiples of 8, all sizes and
// element counts <= i32::MAX, index arrays of a topology built by the crate.
#define DL_BLOCK_SPARSE_KERNELS(T, SUFFIX)                                                       \
  /* a [rows, k], b [cols, k], out [max_blocks, 128, 128]; grid max_blocks. */                  \
  DL_EXTERN void __launch_bounds__(dl::bs::kThreads, 2)                                          \
      dl_sdd_nt_##SUFFIX(const T* a, const T* b, T* out, const int32_t* row_indices,             \
                         const int32_t* column_indices, const int32_t* offsets,                  \
                         int32_t max_block_rows, int32_t k, int32_t cols) {                      \
    dl::bs::sdd<T, true>(a, b, out, row_indices, column_indices, offsets, max_block_rows, k,     \
                         cols);                                                                  \
  }                                                                                              \
  /* a [rows, k], b [k, cols], out [max_blocks, 128, 128]; grid max_blocks. */                  \
  DL_EXTERN void __launch_bounds__(dl::bs::kThreads, 2)                                          \
      dl_sdd_nn_##SUFFIX(const T* a, const T* b, T* out, const int32_t* row_indices,             \
                         const int32_t* column_indices, const int32_t* offsets,                  \
                         int32_t max_block_rows, int32_t k, int32_t cols) {                      \
    dl::bs::sdd<T, false>(a, b, out, row_indices, column_indices, offsets, max_block_rows, k,    \
                          cols);                                                                 \
  }                                                                                              \
  /* S [rows, cols] * b [cols, n] -> out [rows, n]; grid max_block_rows * ceil(n / 128). */     \
  DL_EXTERN void __launch_bounds__(dl::bs::kThreads, 2)                                          \
      dl_dsd_nn_##SUFFIX(const T* s, const T* b, T* out, const int32_t* offsets,                 \
                         const int32_t* column_indices, int32_t max_block_rows, int32_t n) {     \
    dl::bs::dsd<T, false>(s, b, out, offsets, column_indices, nullptr, max_block_rows, n);       \
  }                                                                                              \
  /* S^T [cols, rows] * b [rows, n] -> out [cols, n]; grid block_cols * ceil(n / 128). */       \
  DL_EXTERN void __launch_bounds__(dl::bs::kThreads, 2)                                          \
      dl_dsd_tn_##SUFFIX(const T* s, const T* b, T* out, const int32_t* offsets_t,               \
                         const int32_t* column_indices_t, const int32_t* block_offsets_t,        \
                         int32_t block_cols, int32_t n) {                                        \
    dl::bs::dsd<T, true>(s, b, out, offsets_t, column_indices_t, block_offsets_t, block_cols,    \
                         n);                                                                     \
  }                                                                                              \
  /* a [m, rows] * S [rows, cols] -> out [m, cols]; grid block_cols * ceil(m / 128). */         \
  DL_EXTERN void __launch_bounds__(dl::bs::kThreads, 2)                                          \
      dl_dds_nn_##SUFFIX(const T* a, const T* s, T* out, const int32_t* offsets_t,               \
                         const int32_t* column_indices_t, const int32_t* block_offsets_t,        \
                         int32_t block_cols, int32_t m, int32_t rows) {                          \
    dl::bs::dds<T, false>(a, s, out, offsets_t, column_indices_t, block_offsets_t, block_cols,   \
                          m, rows);                                                              \
  }                                                                                              \
  /* a [m, cols] * S^T [cols, rows] -> out [m, rows]; grid max_block_rows * ceil(m / 128). */   \
  DL_EXTERN void __launch_bounds__(dl::bs::kThreads, 2)                                          \
      dl_dds_nt_##SUFFIX(const T* a, const T* s, T* out, const int32_t* offsets,                 \
                         const int32_t* column_indices, int32_t max_block_rows, int32_t m,       \
                         int32_t cols) {                                                         \
    dl::bs::dds<T, true>(a, s, out, offsets, column_indices, nullptr, max_block_rows, m, cols);  \
  }

DL_BLOCK_SPARSE_KERNELS(__nv_bfloat16, bf16)
DL_BLOCK_SPARSE_KERNELS(__half, f16)
