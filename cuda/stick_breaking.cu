// Stick-breaking attention (ModuleFormer / MoLM) over a KV cache, held to the
// CPU reference in src/reference/stick_breaking.rs (src/cuda/stick_breaking.rs
// launches it). For a query at position p and keys j <= p (diagonal
// included), z = q·k / sqrt(d), w_j = sigmoid(z_j) · Π_{j < l <= p}
// (1 − sigmoid(z_l)), out = Σ_j w_j v_j. f32 math in log space
// (log-sigmoid), one rounding per stored value.
//
// One block per (tile of kTileQ query rows, query head, sequence). The keys
// are walked in tiles of kTileK from the tile's last visible key backwards to
// key 0; each query row carries the running Σ log(1 − β) of the keys it has
// passed, so one pass gives every weight as exp(log β + carry) and the
// weighted values accumulate in the reference's order (keys descending).
#include "common.cuh"

namespace {

constexpr int kThreads = 128;
constexpr int kTileQ = 16;
constexpr int kTileK = 32;
constexpr int kMaxHeadDim = 128;
// Output elements (row, column) of the query tile owned by one thread.
constexpr int kPerThread = kTileQ * kMaxHeadDim / kThreads;

__device__ __forceinline__ float log_sigmoid(float x) {
  return fminf(x, 0.0f) - log1pf(expf(-fabsf(x)));
}

// q [batch * tq, hq * d], caches [batch * tmax, hkv * d] (sequence b's keys
// are rows b * tmax + j, j < kv_len), out like q. Query row i of a sequence
// sits at position kv_len - tq + i; query head h reads kv head h % hkv. The
// wrapper checked 1 <= d <= kMaxHeadDim, 1 <= tq <= kv_len <= tmax, hkv | hq.
template <typename T>
__device__ void stick_breaking(const T* __restrict__ q, const T* __restrict__ k_cache,
                               const T* __restrict__ v_cache, T* __restrict__ out, int32_t tq,
                               int32_t tmax, int32_t kv_len, int32_t hq, int32_t hkv, int32_t d,
                               float scale) {
  __shared__ float q_s[kTileQ][kMaxHeadDim];
  __shared__ float k_s[kTileK][kMaxHeadDim + 1];
  __shared__ float v_s[kTileK][kMaxHeadDim];
  __shared__ float log_beta[kTileQ][kTileK + 1];
  __shared__ float log_rest[kTileQ][kTileK + 1];
  __shared__ float carry[kTileQ];

  const int32_t tid = threadIdx.x;
  const int32_t i0 = blockIdx.x * kTileQ;
  const int32_t h = blockIdx.y;
  const int32_t b = blockIdx.z;
  const int32_t rows = min(kTileQ, tq - i0);
  const int32_t first_pos = kv_len - tq + i0;
  const int32_t kv_cols = hkv * d;
  const int32_t q_cols = hq * d;
  const T* k_base = k_cache + static_cast<int64_t>(b) * tmax * kv_cols + (h % hkv) * d;
  const T* v_base = v_cache + static_cast<int64_t>(b) * tmax * kv_cols + (h % hkv) * d;
  const int64_t q_row0 = static_cast<int64_t>(b) * tq + i0;

  for (int32_t e = tid; e < kTileQ * d; e += kThreads) {
    const int32_t r = e / d;
    const int32_t c = e % d;
    q_s[r][c] = r < rows ? dl::to_f32(q[(q_row0 + r) * q_cols + h * d + c]) : 0.0f;
  }
  if (tid < kTileQ) carry[tid] = 0.0f;

  float acc[kPerThread];
#pragma unroll
  for (int t = 0; t < kPerThread; ++t) acc[t] = 0.0f;

  // Keys 0 ..= last are visible to some row of the tile.
  const int32_t last = first_pos + rows - 1;
  const int32_t tiles = last / kTileK + 1;
  for (int32_t kt = tiles - 1; kt >= 0; --kt) {
    const int32_t j0 = kt * kTileK;
    const int32_t n = min(kTileK, last + 1 - j0);
    __syncthreads();  // q_s and carry published; the previous tile's k_s, v_s consumed
    for (int32_t e = tid; e < kTileK * d; e += kThreads) {
      const int32_t j = e / d;
      const int32_t c = e % d;
      const bool in = j < n;
      k_s[j][c] = in ? dl::to_f32(k_base[static_cast<int64_t>(j0 + j) * kv_cols + c]) : 0.0f;
      v_s[j][c] = in ? dl::to_f32(v_base[static_cast<int64_t>(j0 + j) * kv_cols + c]) : 0.0f;
    }
    __syncthreads();
    for (int32_t e = tid; e < kTileQ * kTileK; e += kThreads) {
      const int32_t r = e / kTileK;
      const int32_t j = e % kTileK;
      float lb = -INFINITY;
      float lr = 0.0f;
      if (r < rows && j0 + j <= first_pos + r) {
        float dot = 0.0f;
        for (int32_t c = 0; c < d; ++c) dot = __fadd_rn(dot, __fmul_rn(q_s[r][c], k_s[j][c]));
        const float z = __fmul_rn(dot, scale);
        lb = log_sigmoid(z);
        lr = log_sigmoid(-z);
      }
      log_beta[r][j] = lb;
      log_rest[r][j] = lr;
    }
    __syncthreads();
    // Row r turns its log-weights into weights, keys descending.
    if (tid < kTileQ) {
      float run = carry[tid];
      for (int32_t j = kTileK - 1; j >= 0; --j) {
        const float w = expf(log_beta[tid][j] + run);
        run += log_rest[tid][j];
        log_beta[tid][j] = w;
      }
      carry[tid] = run;
    }
    __syncthreads();
#pragma unroll
    for (int t = 0; t < kPerThread; ++t) {
      const int32_t e = tid + t * kThreads;
      if (e < kTileQ * d) {
        const int32_t r = e / d;
        const int32_t c = e % d;
        float a = acc[t];
        for (int32_t j = kTileK - 1; j >= 0; --j) a = fmaf(log_beta[r][j], v_s[j][c], a);
        acc[t] = a;
      }
    }
  }

#pragma unroll
  for (int t = 0; t < kPerThread; ++t) {
    const int32_t e = tid + t * kThreads;
    if (e < kTileQ * d) {
      const int32_t r = e / d;
      const int32_t c = e % d;
      if (r < rows) out[(q_row0 + r) * q_cols + h * d + c] = dl::from_f32<T>(acc[t]);
    }
  }
}

}  // namespace

#define DL_STICK_BREAKING(T, SUFFIX)                                                       \
  DL_EXTERN void __launch_bounds__(kThreads)                                               \
      dl_stick_breaking_##SUFFIX(const T* q, const T* k_cache, const T* v_cache, T* out,   \
                                 int32_t tq, int32_t tmax, int32_t kv_len, int32_t hq,     \
                                 int32_t hkv, int32_t d, float scale) {                    \
    stick_breaking<T>(q, k_cache, v_cache, out, tq, tmax, kv_len, hq, hkv, d, scale);      \
  }

DL_STICK_BREAKING(float, f32)
DL_STICK_BREAKING(__half, f16)
DL_STICK_BREAKING(__nv_bfloat16, bf16)
