// Kernels of the language-model ops around a dMoE layer (src/cuda/lm.rs),
// held to the CPU reference in src/reference/lm.rs and the generate example:
// row gathers and copies, RMSNorm, rotary embedding, KV-cached causal GQA
// attention, elementwise maps and a row argmax. Math in f32, one rounding per
// stored value; where the reference fixes a rounding order (RMSNorm, RoPE) the
// kernels use the _rn intrinsics so nvcc does not contract it into FMAs.
//
// Every kernel takes a `vec` flag: nonzero when the Rust wrapper has checked
// that the rows it walks are whole 16-byte packs (cudarc buffers are 256-byte
// aligned), so 16-byte loads and stores are in bounds and aligned.
#include "common.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Keys scored per chunk of the attention's online softmax: one per thread.
constexpr int kKeyChunk = kThreads;
constexpr int kMaxHeadDim = 256;

using dl::kPack;
using dl::load_f32;
using dl::store_f32;

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

template <typename Op>
__device__ __forceinline__ float warp_reduce(float v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Reduces v over the block (blockDim.x a multiple of 32, at most 32 warps);
// every thread gets the result. Starts with a barrier so `scratch` can be
// reused by consecutive calls.
template <typename Op>
__device__ float block_reduce(float v, float* scratch, Op op) {
  v = warp_reduce(v, op);
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  __syncthreads();
  if ((threadIdx.x & 31) == 0) scratch[warp] = v;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < warps; ++w) r = op(r, scratch[w]);
  return r;
}

// ---------------------------------------------------------------- row copies

// Copies `cols` elements from src to dst (16-byte packs when vec).
template <typename T>
__device__ __forceinline__ void copy_row(T* __restrict__ dst, const T* __restrict__ src, int32_t cols,
                                         bool vec) {
  if (vec) {
    const int32_t packs = cols / kPack<T>;
    const uint4* s = reinterpret_cast<const uint4*>(src);
    uint4* d = reinterpret_cast<uint4*>(dst);
    for (int32_t i = threadIdx.x; i < packs; i += blockDim.x) d[i] = s[i];
  } else {
    for (int32_t i = threadIdx.x; i < cols; i += blockDim.x) dst[i] = src[i];
  }
}

template <typename T>
__device__ __forceinline__ void zero_row(T* __restrict__ dst, int32_t cols) {
  for (int32_t i = threadIdx.x; i < cols; i += blockDim.x) dst[i] = dl::from_f32<T>(0.0f);
}

// One block per output row r < gridDim.x: out[r] = src[ids[r]], or zeros when
// ids[r] is outside 0..src_rows. src is [src_rows, cols], out [gridDim.x, cols].
template <typename T>
__device__ void gather_rows(const T* __restrict__ src, const int32_t* __restrict__ ids,
                            T* __restrict__ out, int32_t src_rows, int32_t cols, int32_t vec) {
  const int32_t r = blockIdx.x;
  const int32_t id = ids[r];
  T* dst = out + r * cols;
  if (id >= 0 && id < src_rows) {
    copy_row(dst, src + id * cols, cols, vec != 0);
  } else {
    zero_row(dst, cols);
  }
}

// One block per row r < gridDim.x = batch * tq of `src` ([batch * tq, cols]):
// copies it to row (r / tq) * tmax + start + r % tq of `cache`
// ([batch * tmax, cols]); the wrapper checked start + tq <= tmax.
template <typename T>
__device__ void write_kv(T* __restrict__ cache, const T* __restrict__ src, int32_t tq, int32_t tmax,
                         int32_t start, int32_t cols, int32_t vec) {
  const int32_t r = blockIdx.x;
  const int32_t dst_row = (r / tq) * tmax + start + r % tq;
  copy_row(cache + dst_row * cols, src + r * cols, cols, vec != 0);
}

// ------------------------------------------------------------------ RMSNorm

// Normalises row `row` of x ([rows, d]) with the lanes [lane, lane + stride,
// ...) of a group of `stride` threads; `reduce` sums over that group.
template <typename T, int P, typename Reduce>
__device__ __forceinline__ void rms_norm_row(const T* __restrict__ x, const T* __restrict__ w,
                                             T* __restrict__ out, int32_t row, int32_t d, float eps,
                                             int32_t lane, int32_t stride, Reduce reduce) {
  const T* xr = x + row * d;
  T* orow = out + row * d;
  const int32_t packs = d / P;
  float sum_sq = 0.0f;
  for (int32_t p = lane; p < packs; p += stride) {
    float v[P];
    load_f32<T, P>(xr + p * P, v);
#pragma unroll
    for (int k = 0; k < P; ++k) sum_sq = fmaf(v[k], v[k], sum_sq);
  }
  sum_sq = reduce(sum_sq);
  // Reference: 1 / sqrt(sum_sq / dim + eps), then (v * scale) * w.
  const float scale =
      __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(sum_sq, static_cast<float>(d)), eps)));
  for (int32_t p = lane; p < packs; p += stride) {
    float v[P], g[P];
    load_f32<T, P>(xr + p * P, v);
    load_f32<T, P>(w + p * P, g);
#pragma unroll
    for (int k = 0; k < P; ++k) v[k] = __fmul_rn(__fmul_rn(v[k], scale), g[k]);
    store_f32<T, P>(orow + p * P, v);
  }
}

// rows_per_block == 1: one block per row. Otherwise one warp per row,
// rows_per_block = blockDim.x / 32 rows per block.
template <typename T, int P>
__device__ void rms_norm_impl(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out,
                              int32_t rows, int32_t d, float eps, int32_t rows_per_block) {
  if (rows_per_block == 1) {
    __shared__ float scratch[32];
    rms_norm_row<T, P>(x, w, out, blockIdx.x, d, eps, threadIdx.x, blockDim.x,
                       [&](float v) { return block_reduce(v, scratch, SumOp{}); });
  } else {
    const int32_t row = blockIdx.x * rows_per_block + (threadIdx.x >> 5);
    if (row >= rows) return;
    rms_norm_row<T, P>(x, w, out, row, d, eps, threadIdx.x & 31, 32,
                       [](float v) { return warp_reduce(v, SumOp{}); });
  }
}

template <typename T>
__device__ void rms_norm(const T* x, const T* w, T* out, int32_t rows, int32_t d, float eps,
                         int32_t rows_per_block, int32_t vec) {
  if (vec) {
    rms_norm_impl<T, kPack<T>>(x, w, out, rows, d, eps, rows_per_block);
  } else {
    rms_norm_impl<T, 1>(x, w, out, rows, d, eps, rows_per_block);
  }
}

// ---------------------------------------------------------------- LayerNorm

// LayerNorm of row `row` of x ([rows, d]) with weight w and bias b ([d]), by
// the lanes [lane, lane + stride, ...) of a group of `stride` threads;
// `reduce` sums over that group. Reference (f32): mean = sum(x) / d, var =
// sum((x - mean)^2) / d (biased), y = (x - mean) * (1 / sqrt(var + eps)) * w
// + b, rounded once.
template <typename T, int P, typename Reduce>
__device__ __forceinline__ void layer_norm_row(const T* __restrict__ x, const T* __restrict__ w,
                                               const T* __restrict__ b, T* __restrict__ out,
                                               int32_t row, int32_t d, float eps, int32_t lane,
                                               int32_t stride, Reduce reduce) {
  const T* xr = x + row * d;
  T* orow = out + row * d;
  const int32_t packs = d / P;
  const float n = static_cast<float>(d);
  float sum = 0.0f;
  for (int32_t p = lane; p < packs; p += stride) {
    float v[P];
    load_f32<T, P>(xr + p * P, v);
#pragma unroll
    for (int k = 0; k < P; ++k) sum = __fadd_rn(sum, v[k]);
  }
  const float mean = __fdiv_rn(reduce(sum), n);
  float sum_sq = 0.0f;
  for (int32_t p = lane; p < packs; p += stride) {
    float v[P];
    load_f32<T, P>(xr + p * P, v);
#pragma unroll
    for (int k = 0; k < P; ++k) {
      const float c = __fsub_rn(v[k], mean);
      sum_sq = __fadd_rn(sum_sq, __fmul_rn(c, c));
    }
  }
  const float var = __fdiv_rn(reduce(sum_sq), n);
  const float inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
  for (int32_t p = lane; p < packs; p += stride) {
    float v[P], g[P], h[P];
    load_f32<T, P>(xr + p * P, v);
    load_f32<T, P>(w + p * P, g);
    load_f32<T, P>(b + p * P, h);
#pragma unroll
    for (int k = 0; k < P; ++k)
      v[k] = __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(v[k], mean), inv), g[k]), h[k]);
    store_f32<T, P>(orow + p * P, v);
  }
}

// rows_per_block == 1: one block per row. Otherwise one warp per row,
// rows_per_block = blockDim.x / 32 rows per block.
template <typename T, int P>
__device__ void layer_norm_impl(const T* __restrict__ x, const T* __restrict__ w,
                                const T* __restrict__ b, T* __restrict__ out, int32_t rows,
                                int32_t d, float eps, int32_t rows_per_block) {
  if (rows_per_block == 1) {
    __shared__ float scratch[32];
    layer_norm_row<T, P>(x, w, b, out, blockIdx.x, d, eps, threadIdx.x, blockDim.x,
                         [&](float v) { return block_reduce(v, scratch, SumOp{}); });
  } else {
    const int32_t row = blockIdx.x * rows_per_block + (threadIdx.x >> 5);
    if (row >= rows) return;
    layer_norm_row<T, P>(x, w, b, out, row, d, eps, threadIdx.x & 31, 32,
                         [](float v) { return warp_reduce(v, SumOp{}); });
  }
}

template <typename T>
__device__ void layer_norm(const T* x, const T* w, const T* b, T* out, int32_t rows, int32_t d,
                           float eps, int32_t rows_per_block, int32_t vec) {
  if (vec) {
    layer_norm_impl<T, kPack<T>>(x, w, b, out, rows, d, eps, rows_per_block);
  } else {
    layer_norm_impl<T, 1>(x, w, b, out, rows, d, eps, rows_per_block);
  }
}

// --------------------------------------------------------------------- RoPE

// One block per row of x ([rows, cols], cols = heads * head_dim), dynamic
// shared memory of head_dim floats (the row's cos and sin tables).
template <typename T, int P>
__device__ void rope_impl(const T* __restrict__ x, const int32_t* __restrict__ positions,
                          T* __restrict__ out, int32_t cols, int32_t head_dim, float theta) {
  extern __shared__ float table[];
  const int32_t half = head_dim / 2;
  float* cos_t = table;
  float* sin_t = table + half;
  const int32_t row = blockIdx.x;
  const float pos = static_cast<float>(positions[row]);
  for (int32_t i = threadIdx.x; i < half; i += blockDim.x) {
    // Reference (f32): inv = 1 / theta.powf(2i / head_dim); angle = pos * inv;
    // sin_cos(angle). pow and sin/cos in f64, rounded once, give the correctly
    // rounded f32 values the host's libm returns (within an ulp). sincospi
    // reduces its argument exactly (no local-memory slow path); angle / pi in
    // f64 is off by far less than an f32 ulp of the result.
    const float e = __fdiv_rn(static_cast<float>(2 * i), static_cast<float>(head_dim));
    const float p = static_cast<float>(pow(static_cast<double>(theta), static_cast<double>(e)));
    const float angle = __fmul_rn(pos, __fdiv_rn(1.0f, p));
    constexpr double kInvPi = 0.318309886183790671537767526745028724;
    double s, c;
    sincospi(static_cast<double>(angle) * kInvPi, &s, &c);
    cos_t[i] = static_cast<float>(c);
    sin_t[i] = static_cast<float>(s);
  }
  __syncthreads();
  const int32_t packs_per_half = half / P;
  const int32_t work = (cols / head_dim) * packs_per_half;
  const T* xr = x + row * cols;
  T* orow = out + row * cols;
  for (int32_t idx = threadIdx.x; idx < work; idx += blockDim.x) {
    const int32_t base = (idx / packs_per_half) * head_dim;
    const int32_t i0 = (idx % packs_per_half) * P;
    float a[P], b[P];
    load_f32<T, P>(xr + base + i0, a);
    load_f32<T, P>(xr + base + half + i0, b);
    float oa[P], ob[P];
#pragma unroll
    for (int k = 0; k < P; ++k) {
      const float c = cos_t[i0 + k];
      const float s = sin_t[i0 + k];
      oa[k] = __fsub_rn(__fmul_rn(a[k], c), __fmul_rn(b[k], s));
      ob[k] = __fadd_rn(__fmul_rn(b[k], c), __fmul_rn(a[k], s));
    }
    store_f32<T, P>(orow + base + i0, oa);
    store_f32<T, P>(orow + base + half + i0, ob);
  }
}

template <typename T>
__device__ void rope(const T* x, const int32_t* positions, T* out, int32_t cols, int32_t head_dim,
                     float theta, int32_t vec) {
  if (vec) {
    rope_impl<T, kPack<T>>(x, positions, out, cols, head_dim, theta);
  } else {
    rope_impl<T, 1>(x, positions, out, cols, head_dim, theta);
  }
}

// ---------------------------------------------------------------- attention

// One block of kThreads per (query row, query head): block id = row * hq + h,
// row = b * tq + i. The query sits at position kv_len - tq + i and sees keys
// 0 ..= that position of sequence b: cache rows b * tmax + j. Online softmax
// over chunks of kKeyChunk keys (one key per thread for the scores); the
// weighted sum of values splits the head into d / P packs and the threads
// into kThreads / (d / P) key groups, combined at the end in group order.
// The dot products follow the reference's sequential f32 order (no FMA), so
// the scores match it exactly; only exp and the sums differ in rounding.
// The wrapper checked 1 <= d <= kMaxHeadDim, d % P == 0, tq <= kv_len <= tmax.
template <typename T, int P>
__device__ void attention_impl(const T* __restrict__ q, const T* __restrict__ k_cache,
                               const T* __restrict__ v_cache, T* __restrict__ out, int32_t tq,
                               int32_t tmax, int32_t kv_len, int32_t hq, int32_t hkv, int32_t d,
                               float scale) {
  __shared__ float q_s[kMaxHeadDim];
  __shared__ float p_s[kKeyChunk];
  __shared__ float partial[kThreads * P];
  __shared__ float scratch[32];

  const int32_t tid = threadIdx.x;
  const int32_t h = blockIdx.x % hq;
  const int32_t row = blockIdx.x / hq;
  const int32_t b = row / tq;
  const int32_t visible = kv_len - tq + row % tq + 1;
  const int32_t kv_cols = hkv * d;
  const int32_t kv_off = (h / (hq / hkv)) * d;
  const T* k_base = k_cache + b * tmax * kv_cols + kv_off;
  const T* v_base = v_cache + b * tmax * kv_cols + kv_off;

  const T* q_row = q + row * hq * d + h * d;
  for (int32_t k = tid; k < d; k += kThreads) q_s[k] = dl::to_f32(q_row[k]);
  __syncthreads();

  const int32_t packs = d / P;
  const int32_t groups = kThreads / packs;
  const int32_t pk = tid % packs;
  const int32_t group = tid / packs;

  float m = -INFINITY;
  float l = 0.0f;
  float acc[P];
#pragma unroll
  for (int k = 0; k < P; ++k) acc[k] = 0.0f;

  for (int32_t c0 = 0; c0 < visible; c0 += kKeyChunk) {
    const int32_t n = min(kKeyChunk, visible - c0);
    float s = -INFINITY;
    if (tid < n) {
      const T* k_row = k_base + (c0 + tid) * kv_cols;
      float dot = 0.0f;
      for (int32_t p = 0; p < packs; ++p) {
        float kv[P];
        load_f32<T, P>(k_row + p * P, kv);
#pragma unroll
        for (int k = 0; k < P; ++k) dot = __fadd_rn(dot, __fmul_rn(q_s[p * P + k], kv[k]));
      }
      // The reference's score, bit for bit: _rn keeps ptxas from fusing the
      // product into the FMA of expf(s - m_new) below.
      s = __fmul_rn(dot, scale);
    }
    const float m_new = fmaxf(m, block_reduce(s, scratch, MaxOp{}));
    const float prob = tid < n ? expf(s - m_new) : 0.0f;
    p_s[tid] = prob;
    // exp(-inf) = 0 on the first chunk (m = -inf, m_new finite).
    const float corr = expf(m - m_new);
    // block_reduce's barriers also publish p_s.
    l = l * corr + block_reduce(prob, scratch, SumOp{});
    m = m_new;
#pragma unroll
    for (int k = 0; k < P; ++k) acc[k] *= corr;
    if (group < groups) {
      for (int32_t j = group; j < n; j += groups) {
        const float pj = p_s[j];
        float vv[P];
        load_f32<T, P>(v_base + (c0 + j) * kv_cols + pk * P, vv);
#pragma unroll
        for (int k = 0; k < P; ++k) acc[k] = fmaf(pj, vv[k], acc[k]);
      }
    }
    __syncthreads();  // p_s is rewritten by the next chunk
  }

  if (group < groups) {
#pragma unroll
    for (int k = 0; k < P; ++k) partial[(group * packs + pk) * P + k] = acc[k];
  }
  __syncthreads();
  if (tid < packs) {
    float o[P];
#pragma unroll
    for (int k = 0; k < P; ++k) {
      float sum = 0.0f;
      for (int32_t g = 0; g < groups; ++g) sum += partial[(g * packs + tid) * P + k];
      o[k] = __fdiv_rn(sum, l);
    }
    store_f32<T, P>(out + row * hq * d + h * d + tid * P, o);
  }
}

template <typename T>
__device__ void attention(const T* q, const T* k_cache, const T* v_cache, T* out, int32_t tq,
                          int32_t tmax, int32_t kv_len, int32_t hq, int32_t hkv, int32_t d,
                          float scale, int32_t vec) {
  if (vec) {
    attention_impl<T, kPack<T>>(q, k_cache, v_cache, out, tq, tmax, kv_len, hq, hkv, d, scale);
  } else {
    attention_impl<T, 1>(q, k_cache, v_cache, out, tq, tmax, kv_len, hq, hkv, d, scale);
  }
}

// -------------------------------------------------------------- elementwise

// Where the second operand of an elementwise op comes from, for flat index i
// of the first ([rows, d] when d matters).
enum class Second { None, Column, Row };

// out[i] = op(a[i], b[index(i)]): one thread per pack of P elements, packs <
// n / P. With P > 1 the wrapper checked n % P == 0 and, for Column and Row,
// d % P == 0 (a pack never straddles two rows).
template <typename T, int P, Second S, typename Op>
__device__ __forceinline__ void map_impl(const T* __restrict__ a, const T* __restrict__ b,
                                         T* __restrict__ out, int32_t n, int32_t d, Op op) {
  const uint32_t pack = blockIdx.x * blockDim.x + threadIdx.x;
  if (pack >= static_cast<uint32_t>(n / P)) return;
  const int32_t i = static_cast<int32_t>(pack) * P;
  float x[P], y[P];
  load_f32<T, P>(a + i, x);
  if constexpr (S == Second::Column) {
    load_f32<T, P>(b + i % d, y);
  } else if constexpr (S == Second::Row) {
    const float g = dl::to_f32(b[i / d]);
#pragma unroll
    for (int k = 0; k < P; ++k) y[k] = g;
  } else {
#pragma unroll
    for (int k = 0; k < P; ++k) y[k] = 0.0f;
  }
#pragma unroll
  for (int k = 0; k < P; ++k) x[k] = op(x[k], y[k]);
  store_f32<T, P>(out + i, x);
}

template <typename T, Second S, typename Op>
__device__ void map(const T* a, const T* b, T* out, int32_t n, int32_t d, int32_t vec, Op op) {
  if (vec) {
    map_impl<T, kPack<T>, S>(a, b, out, n, d, op);
  } else {
    map_impl<T, 1, S>(a, b, out, n, d, op);
  }
}

struct AddOp {
  __device__ float operator()(float x, float y) const { return x + y; }
};

// f32::clamp: NaN stays NaN (fminf / fmaxf would drop it).
struct ClampOp {
  float limit;
  __device__ float operator()(float x, float) const {
    return x < -limit ? -limit : (x > limit ? limit : x);
  }
};

// Qwen2-MoE's shared-expert gate: the sigmoid is rounded to T, then the
// product rounded once (as the generate example does).
template <typename T>
struct SigmoidScaleOp {
  __device__ float operator()(float x, float logit) const {
    const float g = dl::to_f32(dl::from_f32<T>(1.0f / (1.0f + expf(-logit))));
    return g * x;
  }
};

// ------------------------------------------------------------------- argmax

// One block per row of x ([rows, cols], f32): the index of the largest value,
// the lowest index on ties; -1 when the row holds NaN or +/-inf (the CPU
// greedy rejects such rows).
__device__ void argmax_row(const float* __restrict__ x, int32_t* __restrict__ out, int32_t cols,
                           int32_t vec) {
  __shared__ float best_v[kWarps];
  __shared__ int32_t best_i[kWarps];
  const float* xr = x + blockIdx.x * cols;
  float bv = -INFINITY;
  int32_t bi = INT32_MAX;
  bool bad = false;
  auto visit = [&](float v, int32_t i) {
    bad |= !isfinite(v);
    if (v > bv || (v == bv && i < bi)) {
      bv = v;
      bi = i;
    }
  };
  if (vec) {
    const float4* x4 = reinterpret_cast<const float4*>(xr);
    for (int32_t p = threadIdx.x; p < cols / 4; p += blockDim.x) {
      const float4 v = x4[p];
      visit(v.x, 4 * p);
      visit(v.y, 4 * p + 1);
      visit(v.z, 4 * p + 2);
      visit(v.w, 4 * p + 3);
    }
  } else {
    for (int32_t i = threadIdx.x; i < cols; i += blockDim.x) visit(xr[i], i);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int32_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > bv || (ov == bv && oi < bi)) {
      bv = ov;
      bi = oi;
    }
  }
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) {
    best_v[warp] = bv;
    best_i[warp] = bi;
  }
  const bool any_bad = __syncthreads_or(bad);
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) {
      if (best_v[w] > bv || (best_v[w] == bv && best_i[w] < bi)) {
        bv = best_v[w];
        bi = best_i[w];
      }
    }
    out[blockIdx.x] = any_bad ? -1 : bi;
  }
}

}  // namespace

DL_EXTERN void dl_lm_argmax_rows(const float* x, int32_t* out, int32_t cols, int32_t vec) {
  argmax_row(x, out, cols, vec);
}

#define DL_LM(T, SUFFIX)                                                                         \
  DL_EXTERN void dl_lm_gather_rows_##SUFFIX(const T* src, const int32_t* ids, T* out,            \
                                            int32_t src_rows, int32_t cols, int32_t vec) {       \
    gather_rows<T>(src, ids, out, src_rows, cols, vec);                                          \
  }                                                                                              \
  DL_EXTERN void dl_lm_write_kv_##SUFFIX(T* cache, const T* src, int32_t tq, int32_t tmax,       \
                                         int32_t start, int32_t cols, int32_t vec) {             \
    write_kv<T>(cache, src, tq, tmax, start, cols, vec);                                         \
  }                                                                                              \
  DL_EXTERN void dl_lm_rms_norm_##SUFFIX(const T* x, const T* w, T* out, int32_t rows,           \
                                         int32_t d, float eps, int32_t rows_per_block,           \
                                         int32_t vec) {                                          \
    rms_norm<T>(x, w, out, rows, d, eps, rows_per_block, vec);                                   \
  }                                                                                              \
  DL_EXTERN void dl_lm_layer_norm_##SUFFIX(const T* x, const T* w, const T* b, T* out,         \
                                           int32_t rows, int32_t d, float eps,                   \
                                           int32_t rows_per_block, int32_t vec) {                \
    layer_norm<T>(x, w, b, out, rows, d, eps, rows_per_block, vec);                              \
  }                                                                                              \
  DL_EXTERN void dl_lm_rope_##SUFFIX(const T* x, const int32_t* positions, T* out, int32_t cols, \
                                     int32_t head_dim, float theta, int32_t vec) {               \
    rope<T>(x, positions, out, cols, head_dim, theta, vec);                                      \
  }                                                                                              \
  DL_EXTERN void __launch_bounds__(kThreads)                                                     \
      dl_lm_attention_##SUFFIX(const T* q, const T* k_cache, const T* v_cache, T* out,           \
                               int32_t tq, int32_t tmax, int32_t kv_len, int32_t hq,             \
                               int32_t hkv, int32_t d, float scale, int32_t vec) {               \
    attention<T>(q, k_cache, v_cache, out, tq, tmax, kv_len, hq, hkv, d, scale, vec);            \
  }                                                                                              \
  DL_EXTERN void dl_lm_add_bias_##SUFFIX(const T* x, const T* bias, T* out, int32_t n,           \
                                         int32_t d, int32_t vec) {                               \
    map<T, Second::Column>(x, bias, out, n, d, vec, AddOp{});                                    \
  }                                                                                              \
  DL_EXTERN void dl_lm_clamp_##SUFFIX(const T* x, T* out, int32_t n, float limit, int32_t vec) { \
    map<T, Second::None>(x, nullptr, out, n, 1, vec, ClampOp{limit});                            \
  }                                                                                              \
  DL_EXTERN void dl_lm_sigmoid_scale_##SUFFIX(const T* x, const T* logits, T* out, int32_t n,    \
                                              int32_t d, int32_t vec) {                          \
    map<T, Second::Row>(x, logits, out, n, d, vec, SigmoidScaleOp<T>{});                         \
  }

DL_LM(float, f32)
DL_LM(__half, f16)
DL_LM(__nv_bfloat16, bf16)
