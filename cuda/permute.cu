// Permutation kernels of the dMoE layer: the stable sort of assignments by
// expert, the (padded) cumulative bins, the inverse map from assignments to
// padded rows, and the padded gather / scatter with their weight gradient.
// Everything is deterministic: integer counting and fixed-order f32 sums, no
// float atomics.
#include "common.cuh"

namespace {

constexpr uint32_t kFull = 0xffffffffu;

// Stable counting sort. A chunk of kSortChunk assignments belongs to one CTA
// of kSortWarps warps; warp w owns the contiguous kSortWarpChunk entries
// starting at chunk_start + w * kSortWarpChunk and walks them 32 at a time.
// Keep kSortChunk in sync with SORT_CHUNK in src/cuda/permute.rs.
constexpr int kSortWarps = 8;
constexpr int kSortThreads = kSortWarps * 32;
constexpr int kSortRounds = 16;
constexpr int kSortWarpChunk = 32 * kSortRounds;
constexpr int kSortChunk = kSortWarps * kSortWarpChunk;  // 4096

constexpr int kScanThreads = 1024;
constexpr int kScanItems = 4;

constexpr int kRowsPerCta = 8;  // warp-per-row kernels: 256 threads

// Sort bucket of an expert id: ids outside [0, E) go to the last bucket E.
__device__ __forceinline__ int32_t bucket(int32_t id, int32_t num_experts) {
  return (id >= 0 && id < num_experts) ? id : num_experts;
}

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

template <typename T, int V>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& x) {
  *reinterpret_cast<Pack<T, V>*>(p) = x;
}

// Walks the warp's entries of the sort chunk: calls f(i, bucket, peers) for
// every round, i >= n marking an absent entry (bucket E + 1, matched only
// with other absent entries).
template <typename F>
__device__ __forceinline__ void for_warp_entries(const int32_t* __restrict__ ids, int32_t n,
                                                 int32_t num_experts, F f) {
  const int32_t lane = threadIdx.x & 31;
  const int32_t base = blockIdx.x * kSortChunk + (threadIdx.x >> 5) * kSortWarpChunk;
  for (int r = 0; r < kSortRounds; ++r) {
    const int32_t i = base + r * 32 + lane;
    const int32_t b = i < n ? bucket(ids[i], num_experts) : num_experts + 1;
    const uint32_t peers = __match_any_sync(kFull, b);
    f(i, b, peers);
  }
}

template <typename T, int V>
__device__ __forceinline__ void gather_row(const T* __restrict__ x, const int32_t* __restrict__ indices,
                                           const int32_t* __restrict__ bins,
                                           const int32_t* __restrict__ padded_bins,
                                           const float* __restrict__ weights, int32_t tokens,
                                           int32_t hidden, int32_t top_k, int32_t num_experts,
                                           int32_t out_rows, T* __restrict__ out) {
  const int32_t lane = threadIdx.x & 31;
  const int32_t r = blockIdx.x * kRowsPerCta + (threadIdx.x >> 5);
  if (r >= out_rows) return;  // uniform per warp
  int32_t src = -1;
  float w = 1.f;
  if (r < __ldg(&padded_bins[num_experts - 1])) {
    const int32_t e = dl::upper_bound(padded_bins, num_experts, r);
    if (e < num_experts) {
      const int32_t pstart = e > 0 ? __ldg(&padded_bins[e - 1]) : 0;
      const int32_t bstart = e > 0 ? __ldg(&bins[e - 1]) : 0;
      const int32_t i = bstart + (r - pstart);
      if (i >= 0 && i < __ldg(&bins[e])) {
        const int32_t a = __ldg(&indices[i]);
        if (a >= 0 && a < tokens * top_k) {
          src = a / top_k;
          if (weights != nullptr) w = __ldg(&weights[a]);
        }
      }
    }
  }
  T* orow = out + r * hidden;
  if (src < 0) {
    Pack<T, V> z;
#pragma unroll
    for (int q = 0; q < V; ++q) z.v[q] = dl::from_f32<T>(0.f);
    for (int32_t c = lane * V; c < hidden; c += 32 * V) store_pack<T, V>(orow + c, z);
    return;
  }
  const T* xrow = x + src * hidden;
  for (int32_t c = lane * V; c < hidden; c += 32 * V) {
    Pack<T, V> p = load_pack<T, V>(xrow + c);
    if (weights != nullptr) {
#pragma unroll
      for (int q = 0; q < V; ++q) p.v[q] = dl::from_f32<T>(__fmul_rn(dl::to_f32(p.v[q]), w));
    }
    store_pack<T, V>(orow + c, p);
  }
}

template <typename T, int V>
__device__ __forceinline__ void scatter_token(const T* __restrict__ y, int32_t y_rows,
                                              const int32_t* __restrict__ positions,
                                              const float* __restrict__ weights, int32_t tokens,
                                              int32_t hidden, int32_t top_k, T* __restrict__ out) {
  const int32_t lane = threadIdx.x & 31;
  const int32_t t = blockIdx.x * kRowsPerCta + (threadIdx.x >> 5);
  if (t >= tokens) return;
  const int32_t* pos = positions + t * top_k;
  const float* wt = weights != nullptr ? weights + t * top_k : nullptr;
  for (int32_t c = lane * V; c < hidden; c += 32 * V) {
    float acc[V];
#pragma unroll
    for (int q = 0; q < V; ++q) acc[q] = 0.f;
    for (int32_t j = 0; j < top_k; ++j) {
      const int32_t row = __ldg(&pos[j]);
      if (row < 0 || row >= y_rows) continue;  // -1: the assignment is in no bin
      const float w = wt != nullptr ? __ldg(&wt[j]) : 1.f;
      const Pack<T, V> p = load_pack<T, V>(y + row * hidden + c);
#pragma unroll
      for (int q = 0; q < V; ++q) acc[q] = __fadd_rn(acc[q], __fmul_rn(w, dl::to_f32(p.v[q])));
    }
    Pack<T, V> o;
#pragma unroll
    for (int q = 0; q < V; ++q) o.v[q] = dl::from_f32<T>(acc[q]);
    store_pack<T, V>(out + t * hidden + c, o);
  }
}

template <typename T, int V>
__device__ __forceinline__ void weight_grad_slot(const T* __restrict__ grad_out,
                                                 const T* __restrict__ y, int32_t y_rows,
                                                 const int32_t* __restrict__ positions,
                                                 int32_t tokens, int32_t hidden, int32_t top_k,
                                                 float* __restrict__ dw) {
  const int32_t lane = threadIdx.x & 31;
  const int32_t a = blockIdx.x * kRowsPerCta + (threadIdx.x >> 5);
  if (a >= tokens * top_k) return;
  const int32_t t = a / top_k;
  const int32_t row = __ldg(&positions[a]);
  float acc = 0.f;
  if (row >= 0 && row < y_rows) {
    const T* g = grad_out + t * hidden;
    const T* yr = y + row * hidden;
    for (int32_t c = lane * V; c < hidden; c += 32 * V) {
      const Pack<T, V> pg = load_pack<T, V>(g + c);
      const Pack<T, V> py = load_pack<T, V>(yr + c);
#pragma unroll
      for (int q = 0; q < V; ++q) acc = fmaf(dl::to_f32(pg.v[q]), dl::to_f32(py.v[q]), acc);
    }
  }
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) acc += __shfl_xor_sync(kFull, acc, d);
  if (lane == 0) dw[a] = acc;
}

}  // namespace

// Sort pass 1: counts[b * num_chunks + chunk] = entries of bucket b (0..E,
// E = out-of-range ids) in chunk `chunk`. Grid num_chunks = ceil(n / 4096),
// block 256, dynamic shared memory (E + 1) * 4 bytes. Requires n + 4096 <=
// INT32_MAX and (E + 1) * num_chunks <= INT32_MAX.
DL_EXTERN void __launch_bounds__(kSortThreads)
    dl_sort_count(const int32_t* __restrict__ expert_ids, int32_t n, int32_t num_experts,
                  int32_t num_chunks, int32_t* __restrict__ counts) {
  extern __shared__ int32_t hist[];
  const int32_t buckets = num_experts + 1;
  for (int32_t b = threadIdx.x; b < buckets; b += blockDim.x) hist[b] = 0;
  __syncthreads();
  const int32_t lane = threadIdx.x & 31;
  for_warp_entries(expert_ids, n, num_experts, [&](int32_t, int32_t b, uint32_t peers) {
    if (b < buckets && lane == __ffs(peers) - 1) atomicAdd(&hist[b], __popc(peers));
  });
  __syncthreads();
  for (int32_t b = threadIdx.x; b < buckets; b += blockDim.x) {
    counts[b * num_chunks + blockIdx.x] = hist[b];
  }
}

// Sort pass 3: `offsets` is the exclusive scan of pass 1's counts (bucket-major),
// i.e. where chunk `chunk`'s first entry of bucket b goes. Each warp ranks its
// entries stably (match_any + popc of the lower lanes) and writes
// indices[pos] = assignment, bin_ids[pos] = expert (-1 for out-of-range ids,
// which sort last). Grid num_chunks, block 256, dynamic shared memory
// 8 * (E + 1) * 4 bytes.
DL_EXTERN void __launch_bounds__(kSortThreads)
    dl_sort_scatter(const int32_t* __restrict__ expert_ids, int32_t n, int32_t num_experts,
                    int32_t num_chunks, const int32_t* __restrict__ offsets,
                    int32_t* __restrict__ indices, int32_t* __restrict__ bin_ids) {
  extern __shared__ int32_t warp_hist[];  // [kSortWarps][E + 1]
  const int32_t buckets = num_experts + 1;
  for (int32_t x = threadIdx.x; x < kSortWarps * buckets; x += blockDim.x) warp_hist[x] = 0;
  __syncthreads();
  const int32_t lane = threadIdx.x & 31;
  int32_t* h = warp_hist + (threadIdx.x >> 5) * buckets;
  for_warp_entries(expert_ids, n, num_experts, [&](int32_t, int32_t b, uint32_t peers) {
    if (b < buckets && lane == __ffs(peers) - 1) h[b] += __popc(peers);
    __syncwarp();
  });
  __syncthreads();
  // Per-warp counts -> each warp's first output position per bucket.
  for (int32_t b = threadIdx.x; b < buckets; b += blockDim.x) {
    int32_t run = offsets[b * num_chunks + blockIdx.x];
    for (int w = 0; w < kSortWarps; ++w) {
      const int32_t c = warp_hist[w * buckets + b];
      warp_hist[w * buckets + b] = run;
      run += c;
    }
  }
  __syncthreads();
  const uint32_t lower = (1u << lane) - 1u;
  for_warp_entries(expert_ids, n, num_experts, [&](int32_t i, int32_t b, uint32_t peers) {
    const bool valid = b < buckets;
    const int32_t pos = valid ? h[b] + __popc(peers & lower) : 0;
    __syncwarp();
    if (valid && lane == __ffs(peers) - 1) h[b] += __popc(peers);
    __syncwarp();
    if (valid) {
      indices[pos] = i;
      bin_ids[pos] = b < num_experts ? b : -1;
    }
  });
}

// Single-CTA scan: out[i] = sum over j < i (exclusive) or j <= i (inclusive) of
// round_up(in[j], round_to). Integer sums wrap (unsigned arithmetic), never UB.
// Grid 1, block 1024, no dynamic shared memory. Requires n + 4096 <= INT32_MAX
// and round_to >= 1.
DL_EXTERN void __launch_bounds__(kScanThreads)
    dl_scan_i32(const int32_t* __restrict__ in, int32_t n, int32_t round_to, int32_t exclusive,
                int32_t* __restrict__ out) {
  __shared__ uint32_t warp_totals[kScanThreads / 32];
  const int32_t lane = threadIdx.x & 31;
  const int32_t warp = threadIdx.x >> 5;
  const uint32_t r = static_cast<uint32_t>(round_to);
  uint32_t carry = 0;
  for (int32_t tile = 0; tile < n; tile += kScanThreads * kScanItems) {
    const int32_t first = tile + threadIdx.x * kScanItems;
    uint32_t x[kScanItems];
    uint32_t local = 0;
#pragma unroll
    for (int q = 0; q < kScanItems; ++q) {
      const uint32_t v = first + q < n ? static_cast<uint32_t>(in[first + q]) : 0u;
      x[q] = r == 1u ? v : (v + r - 1u) / r * r;
      local += x[q];
    }
    uint32_t incl = local;  // inclusive scan of `local` across the warp
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const uint32_t o = __shfl_up_sync(kFull, incl, d);
      if (lane >= d) incl += o;
    }
    if (lane == 31) warp_totals[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      uint32_t wt = warp_totals[lane];
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const uint32_t o = __shfl_up_sync(kFull, wt, d);
        if (lane >= d) wt += o;
      }
      warp_totals[lane] = wt;  // inclusive over warps
    }
    __syncthreads();
    uint32_t run = carry + (warp > 0 ? warp_totals[warp - 1] : 0u) + (incl - local);
#pragma unroll
    for (int q = 0; q < kScanItems; ++q) {
      if (exclusive) {
        if (first + q < n) out[first + q] = static_cast<int32_t>(run);
        run += x[q];
      } else {
        run += x[q];
        if (first + q < n) out[first + q] = static_cast<int32_t>(run);
      }
    }
    carry += warp_totals[kScanThreads / 32 - 1];
    __syncthreads();  // warp_totals is rewritten by the next tile
  }
}

// Inverse map: positions[indices[i]] = padded row of sorted entry i, i.e.
// padded_start(e) + i - bin_start(e) for the expert e whose bin holds i.
// Grid ceil(n / 256), block 256, dynamic shared memory 2 * E * 4 bytes.
// The caller fills positions with -1 first: entries no bin holds (i past
// bins[E-1], i.e. out-of-range expert ids, which sort last) and out-of-range
// assignments are skipped, so their positions stay -1 and the scatter and
// the weight gradient below skip them.
DL_EXTERN void __launch_bounds__(256)
    dl_padded_positions(const int32_t* __restrict__ indices, const int32_t* __restrict__ bins,
                        const int32_t* __restrict__ padded_bins, int32_t n, int32_t num_experts,
                        int32_t* __restrict__ positions) {
  extern __shared__ int32_t sbins[];  // [bins | padded_bins]
  int32_t* spad = sbins + num_experts;
  for (int32_t e = threadIdx.x; e < num_experts; e += blockDim.x) {
    sbins[e] = bins[e];
    spad[e] = padded_bins[e];
  }
  __syncthreads();
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int32_t e = dl::upper_bound(sbins, num_experts, i);
  if (e >= num_experts) return;
  const int32_t a = indices[i];
  if (a < 0 || a >= n) return;
  const int32_t bstart = e > 0 ? sbins[e - 1] : 0;
  const int32_t pstart = e > 0 ? spad[e - 1] : 0;
  positions[a] = pstart + (i - bstart);
}

// Padded gather, one warp per output row r (8 rows per 256-thread CTA, grid
// ceil(out_rows / 8)): row r of expert e holds sorted entry
// bin_start(e) + r - padded_start(e) when that is inside the bin, scaled by
// weights[a] when weights != nullptr; every other row (padding inside a
// group, rows past padded_bins[E-1]) is zero. V = elements per access
// (16 bytes when hidden % V == 0, else 1).
#define DL_GATHER_KERNEL(NAME, T, V)                                                         \
  DL_EXTERN void __launch_bounds__(256)                                                      \
      NAME(const T* __restrict__ x, const int32_t* __restrict__ indices,                     \
           const int32_t* __restrict__ bins, const int32_t* __restrict__ padded_bins,        \
           const float* __restrict__ weights, int32_t tokens, int32_t hidden, int32_t top_k, \
           int32_t num_experts, int32_t out_rows, T* __restrict__ out) {                     \
    gather_row<T, V>(x, indices, bins, padded_bins, weights, tokens, hidden, top_k,          \
                     num_experts, out_rows, out);                                            \
  }

// Padded scatter, one warp per token t (grid ceil(tokens / 8), block 256):
// out[t] = sum over j in slot order of w[t, j] * y[positions[t * k + j]]
// (w = 1 when weights == nullptr), f32 accumulation, one rounding; slots
// whose position is negative (in no bin) contribute nothing.
#define DL_SCATTER_KERNEL(NAME, T, V)                                                      \
  DL_EXTERN void __launch_bounds__(256)                                                    \
      NAME(const T* __restrict__ y, int32_t y_rows, const int32_t* __restrict__ positions, \
           const float* __restrict__ weights, int32_t tokens, int32_t hidden,              \
           int32_t top_k, T* __restrict__ out) {                                           \
    scatter_token<T, V>(y, y_rows, positions, weights, tokens, hidden, top_k, out);        \
  }

// Weight gradient, one warp per assignment a = t * k + j (grid
// ceil(tokens * k / 8), block 256): dw[a] = <grad_out[t], y[positions[a]]>, f32;
// 0 when positions[a] is negative (in no bin).
#define DL_WEIGHT_GRAD_KERNEL(NAME, T, V)                                              \
  DL_EXTERN void __launch_bounds__(256)                                                \
      NAME(const T* __restrict__ grad_out, const T* __restrict__ y, int32_t y_rows,    \
           const int32_t* __restrict__ positions, int32_t tokens, int32_t hidden,      \
           int32_t top_k, float* __restrict__ dw) {                                    \
    weight_grad_slot<T, V>(grad_out, y, y_rows, positions, tokens, hidden, top_k, dw); \
  }

#define DL_PERMUTE_DTYPE(SUFFIX, T)                                              \
  DL_GATHER_KERNEL(dl_padded_gather_##SUFFIX##_vec, T, 16 / sizeof(T))           \
  DL_GATHER_KERNEL(dl_padded_gather_##SUFFIX##_scalar, T, 1)                     \
  DL_SCATTER_KERNEL(dl_padded_scatter_##SUFFIX##_vec, T, 16 / sizeof(T))         \
  DL_SCATTER_KERNEL(dl_padded_scatter_##SUFFIX##_scalar, T, 1)                   \
  DL_WEIGHT_GRAD_KERNEL(dl_padded_weight_grad_##SUFFIX##_vec, T, 16 / sizeof(T)) \
  DL_WEIGHT_GRAD_KERNEL(dl_padded_weight_grad_##SUFFIX##_scalar, T, 1)

DL_PERMUTE_DTYPE(f32, float)
DL_PERMUTE_DTYPE(f16, __half)
DL_PERMUTE_DTYPE(bf16, __nv_bfloat16)
