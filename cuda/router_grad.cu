// Router backward and auxiliary router losses.
//
// dl_route_backward_vN: the gradient of the router logits, one warp per token,
// 8 tokens per 256-thread CTA. Lane `l` holds experts `l, l + 32, ...` in
// registers (VPT = values per thread, E <= 32 * VPT), as in routing.cu:
//   dp[e]   = lb_scale * counts[e]                       (load-balancing loss)
//           + sum over slots j with ids[j] == e of g_j   (top-k weights)
//     g_j   = dw_j                                  without renormalisation,
//           = (dw_j - sum_i dw_i * w_i) / S,  S = sum_i p[ids[i]]   with it;
//   dl[e]   = p[e] * (dp[e] - sum_e' p[e'] * dp[e'])     (softmax backward)
//           + z_scale * lse * p[e]                       (z-loss, lse = logsumexp)
// with lb_scale = load_balancing * E / (T * T * k) and z_scale = 2 * z_loss / T
// (computed by the host). Slots are accumulated in slot order, so the result
// is deterministic; expert ids outside [0, E) contribute nothing (the device
// router never writes them). Non-finite logits or probabilities propagate as
// NaN.
//
// Losses, deterministic two-pass reductions (no float atomics):
//   dl_*_loss_partials: warp w of CTA b handles tokens t = 8 b + w, then
//     t += 8 * gridDim.x (in increasing order), adding one per-token value;
//     the CTA writes partials[b] = sum of its 8 warps in warp order.
//   dl_loss_finish: one CTA sums the partials in a fixed order and writes
//     out[0] = scale * total.
// The order depends only on (T, E, gridDim.x), never on scheduling.
#include "common.cuh"

namespace {

constexpr uint32_t kFull = 0xffffffffu;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, d));
  return v;
}

// Butterfly sum: partners add the same two values, so all lanes end bitwise equal.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v = __fadd_rn(v, __shfl_xor_sync(kFull, v, d));
  return v;
}

// logsumexp of row[0..n), computed by the whole warp (all lanes get it).
__device__ __forceinline__ float warp_logsumexp(const float* __restrict__ row, int32_t n) {
  const int32_t lane = threadIdx.x & 31;
  float m = -INFINITY;
  for (int32_t e = lane; e < n; e += 32) m = fmaxf(m, row[e]);
  m = warp_max(m);
  float s = 0.f;
  for (int32_t e = lane; e < n; e += 32) s = __fadd_rn(s, expf(row[e] - m));
  s = warp_sum(s);
  return m + logf(s);
}

template <int VPT>
__device__ __forceinline__ void route_backward_token(
    const float* __restrict__ logits, const float* __restrict__ probs,
    const int32_t* __restrict__ expert_ids, const float* __restrict__ weights,
    const float* __restrict__ grad_weights, const int32_t* __restrict__ counts, int32_t tokens,
    int32_t num_experts, int32_t top_k, int32_t renormalize, float lb_scale, float z_scale,
    float* __restrict__ dlogits) {
  const int32_t lane = threadIdx.x & 31;
  const int32_t t = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (t >= tokens) return;  // uniform per warp
  const float* prow = probs + t * num_experts;
  const int32_t* ids = expert_ids + t * top_k;
  const float* wrow = weights + t * top_k;
  const float* gwrow = grad_weights + t * top_k;

  // The z-loss term needs logsumexp(logits[t]); skip the read when it is off.
  float lse = 0.f;
  if (z_scale != 0.f) {
    float x[VPT];
    float m = -INFINITY;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int32_t e = i * 32 + lane;
      x[i] = e < num_experts ? logits[t * num_experts + e] : -INFINITY;
      m = fmaxf(m, x[i]);
    }
    m = warp_max(m);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      if (i * 32 + lane < num_experts) s = __fadd_rn(s, expf(x[i] - m));
    }
    s = warp_sum(s);
    lse = m + logf(s);
  }

  float p[VPT];
  float dp[VPT];
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int32_t e = i * 32 + lane;
    const bool live = e < num_experts;
    p[i] = live ? prow[e] : 0.f;
    dp[i] = live ? lb_scale * static_cast<float>(counts[e]) : 0.f;
  }

  // Renormalisation: corr = sum_j dw_j * w_j and S = sum_j p[ids[j]].
  float corr = 0.f;
  float sel_sum = 1.f;
  if (renormalize) {
    float c = 0.f;
    float s = 0.f;
    for (int32_t j = lane; j < top_k; j += 32) {
      const int32_t e = ids[j];
      c = __fadd_rn(c, gwrow[j] * wrow[j]);
      if (e >= 0 && e < num_experts) s = __fadd_rn(s, prow[e]);
    }
    corr = warp_sum(c);
    sel_sum = warp_sum(s);
  }

  // Scatter the slot gradients into the owners' registers, 32 slots at a time
  // (loaded in parallel, then broadcast in slot order).
  for (int32_t base = 0; base < top_k; base += 32) {
    const int32_t j = base + lane;
    int32_t e = -1;
    float g = 0.f;
    if (j < top_k) {
      e = ids[j];
      g = renormalize ? __fdiv_rn(gwrow[j] - corr, sel_sum) : gwrow[j];
    }
    const int32_t n = min(32, top_k - base);
    for (int32_t jj = 0; jj < n; ++jj) {
      const int32_t ej = __shfl_sync(kFull, e, jj);
      const float gj = __shfl_sync(kFull, g, jj);
      if (ej >= 0 && ej < num_experts && (ej & 31) == lane) {
        const int32_t slot = ej >> 5;  // < VPT because E <= 32 * VPT
#pragma unroll
        for (int i = 0; i < VPT; ++i) {
          if (i == slot) dp[i] = __fadd_rn(dp[i], gj);
        }
      }
    }
  }

  float dot = 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) dot = __fadd_rn(dot, p[i] * dp[i]);
  dot = warp_sum(dot);
  const float z = z_scale * lse;
  float* drow = dlogits + t * num_experts;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int32_t e = i * 32 + lane;
    if (e < num_experts) drow[e] = p[i] * (dp[i] - dot) + z * p[i];
  }
}

// Writes sum over the CTA's warps (in warp order) of `value` to partials[blockIdx.x].
__device__ __forceinline__ void write_cta_partial(float value, float* __restrict__ partials) {
  __shared__ float warp_values[kWarps];
  if ((threadIdx.x & 31) == 0) warp_values[threadIdx.x >> 5] = value;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s = __fadd_rn(s, warp_values[w]);
    partials[blockIdx.x] = s;
  }
}

}  // namespace

// logits, probs, dlogits: [tokens, num_experts] f32; expert_ids: [tokens, top_k]
// i32; weights, grad_weights: [tokens, top_k] f32; counts: [num_experts] i32
// (the histogram of expert_ids). Requires 1 <= top_k, 1 <= num_experts <= 32 *
// VPT, tokens * num_experts and tokens * top_k <= INT32_MAX. `logits` is only
// read when z_scale != 0. Launch: grid ceil(tokens / 8), block 256, no dynamic
// shared memory.
#define DL_ROUTE_BACKWARD_KERNEL(VPT, MIN_BLOCKS)                                            \
  DL_EXTERN void __launch_bounds__(kThreads, MIN_BLOCKS) dl_route_backward_v##VPT(           \
      const float* __restrict__ logits, const float* __restrict__ probs,                     \
      const int32_t* __restrict__ expert_ids, const float* __restrict__ weights,             \
      const float* __restrict__ grad_weights, const int32_t* __restrict__ counts,            \
      int32_t tokens, int32_t num_experts, int32_t top_k, int32_t renormalize,               \
      float lb_scale, float z_scale, float* __restrict__ dlogits) {                          \
    route_backward_token<VPT>(logits, probs, expert_ids, weights, grad_weights, counts,      \
                              tokens, num_experts, top_k, renormalize, lb_scale, z_scale,    \
                              dlogits);                                                      \
  }

DL_ROUTE_BACKWARD_KERNEL(1, 4)
DL_ROUTE_BACKWARD_KERNEL(2, 4)
DL_ROUTE_BACKWARD_KERNEL(4, 4)
DL_ROUTE_BACKWARD_KERNEL(8, 4)
DL_ROUTE_BACKWARD_KERNEL(16, 2)
DL_ROUTE_BACKWARD_KERNEL(32, 2)

// probs: [tokens, num_experts] f32; counts: [num_experts] i32; partials:
// [gridDim.x] f32. Per token: sum_e probs[t, e] * counts[e]. Requires
// tokens * num_experts and tokens + 8 * gridDim.x <= INT32_MAX. Launch: block
// 256, any grid >= 1.
DL_EXTERN void __launch_bounds__(kThreads)
    dl_load_balancing_loss_partials(const float* __restrict__ probs,
                                    const int32_t* __restrict__ counts, int32_t tokens,
                                    int32_t num_experts, float* __restrict__ partials) {
  const int32_t lane = threadIdx.x & 31;
  float acc = 0.f;
  for (int32_t t = blockIdx.x * kWarps + (threadIdx.x >> 5); t < tokens;
       t += gridDim.x * kWarps) {
    const float* row = probs + t * num_experts;
    float s = 0.f;
    for (int32_t e = lane; e < num_experts; e += 32)
      s = __fadd_rn(s, row[e] * static_cast<float>(counts[e]));
    acc = __fadd_rn(acc, warp_sum(s));
  }
  write_cta_partial(acc, partials);
}

// logits: [tokens, num_experts] f32; partials: [gridDim.x] f32. Per token:
// logsumexp(logits[t])^2. Requires tokens * num_experts and tokens + 8 *
// gridDim.x <= INT32_MAX. Launch: block 256, any grid >= 1.
DL_EXTERN void __launch_bounds__(kThreads)
    dl_router_z_loss_partials(const float* __restrict__ logits, int32_t tokens,
                              int32_t num_experts, float* __restrict__ partials) {
  float acc = 0.f;
  for (int32_t t = blockIdx.x * kWarps + (threadIdx.x >> 5); t < tokens;
       t += gridDim.x * kWarps) {
    const float lse = warp_logsumexp(logits + t * num_experts, num_experts);
    acc = __fadd_rn(acc, lse * lse);
  }
  write_cta_partial(acc, partials);
}

// partials: [n] f32, n >= 1; out: [1] f32 = scale * sum(partials). Launch: one
// CTA of 256 threads. Thread i sums partials[i], partials[i + 256], ... in
// order, then a fixed tree reduction.
DL_EXTERN void __launch_bounds__(kThreads)
    dl_loss_finish(const float* __restrict__ partials, int32_t n, float scale,
                   float* __restrict__ out) {
  __shared__ float sums[kThreads];
  float s = 0.f;
  for (int32_t i = threadIdx.x; i < n; i += kThreads) s = __fadd_rn(s, partials[i]);
  sums[threadIdx.x] = s;
  __syncthreads();
#pragma unroll
  for (int width = kThreads / 2; width > 0; width >>= 1) {
    if (threadIdx.x < width)
      sums[threadIdx.x] = __fadd_rn(sums[threadIdx.x], sums[threadIdx.x + width]);
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = scale * sums[0];
}
