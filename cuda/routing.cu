// Fused router: softmax over all experts (f32, max-subtracted), top-k of the
// probabilities in descending order (ties to the lower expert id), optional
// renormalisation of the k weights.
//
// One warp per token, 8 tokens per 256-thread CTA. Lane `l` holds experts
// `l, l + 32, l + 64, ...` in registers (VPT = values per thread, a template
// parameter: E <= 32 * VPT). Each of the k rounds is one warp arg-max made of
// two redux instructions (max of the probability's bits, then min expert id
// among the lanes holding that maximum), so every lane agrees on the winner.
//
// A logit of -inf masks its expert ("never route here"): probability 0 and
// never chosen. Rows holding NaN or +inf, and rows with fewer than k experts
// above -inf, are flagged: probs and weights are written as NaN, expert ids
// as 0..k-1 (always in range), and the row is recorded in `status`, a zeroed
// 64-bit word, through an order-independent atomicMax on
//   key = ((0x7fffffff - flat) << 2) | class,
// class 0 NaN / 1 +inf at flat = t * E + e (the row's first such logit),
// class 2 too few routable experts at flat = t * E + routable (< k <= E).
// The key is nonzero because flat < T * E <= 0x7fffffff; the lowest flat
// wins, i.e. the first flagged token. Zero means every token was routed.
#include "common.cuh"

namespace {

constexpr uint32_t kFull = 0xffffffffu;
constexpr int32_t kNoExpert = 0x7fffffff;
constexpr int kRouteThreads = 256;

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

template <int VPT>
__device__ __forceinline__ void route_token(const float* __restrict__ logits, int32_t tokens,
                                            int32_t num_experts, int32_t top_k,
                                            int32_t renormalize, float* __restrict__ probs,
                                            int32_t* __restrict__ expert_ids,
                                            float* __restrict__ weights,
                                            unsigned long long* __restrict__ status) {
  const int32_t lane = threadIdx.x & 31;
  const int32_t t = blockIdx.x * (kRouteThreads / 32) + (threadIdx.x >> 5);
  if (t >= tokens) return;  // uniform per warp
  const float* row = logits + t * num_experts;
  float* prow = probs + t * num_experts;
  int32_t* ids = expert_ids + t * top_k;
  float* wrow = weights + t * top_k;

  float v[VPT];
  uint32_t exists = 0;  // bit i: expert i * 32 + lane exists
  uint32_t live = 0;    // ... and is routable (above -inf) and not chosen yet
  int32_t first_bad = kNoExpert;
  int32_t bad_class = 0;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int32_t e = i * 32 + lane;
    v[i] = -INFINITY;
    if (e < num_experts) {
      v[i] = row[e];
      exists |= 1u << i;
      if (isnan(v[i]) || v[i] == INFINITY) {
        if (first_bad == kNoExpert) {
          first_bad = e;
          bad_class = isnan(v[i]) ? 0 : 1;
        }
      } else if (v[i] != -INFINITY) {
        live |= 1u << i;
      }
    }
  }

  const int32_t bad = __reduce_min_sync(kFull, first_bad);
  const int32_t routable =
      static_cast<int32_t>(__reduce_add_sync(kFull, static_cast<uint32_t>(__popc(live))));
  if (bad != kNoExpert || routable < top_k) {
    const int32_t cls = bad != kNoExpert ? __shfl_sync(kFull, bad_class, bad & 31) : 2;
    if (lane == 0) {
      const int32_t col = bad != kNoExpert ? bad : routable;
      const uint32_t flat = static_cast<uint32_t>(t * num_experts + col);
      const unsigned long long key =
          (static_cast<unsigned long long>(0x7fffffffu - flat) << 2) |
          static_cast<unsigned long long>(cls);
      atomicMax(status, key);
    }
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      if ((exists >> i) & 1u) prow[i * 32 + lane] = NAN;
    }
    for (int32_t j = lane; j < top_k; j += 32) {
      ids[j] = j;
      wrow[j] = NAN;
    }
    return;
  }

  float m = v[0];
#pragma unroll
  for (int i = 1; i < VPT; ++i) m = fmaxf(m, v[i]);
  m = warp_max(m);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    v[i] = ((live >> i) & 1u) ? expf(v[i] - m) : 0.f;  // masked: exactly 0
    s = __fadd_rn(s, v[i]);
  }
  s = warp_sum(s);  // >= 1: the maximum (a routable expert) contributes exp(0)
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    v[i] = __fdiv_rn(v[i], s);
    if ((exists >> i) & 1u) prow[i * 32 + lane] = v[i];
  }

  // Probabilities lie in [0, 1], where the float bit pattern is monotone; the
  // key of a live expert is bits + 1 >= 1, of a masked, chosen or absent one
  // 0, so only routable experts are chosen (k of them exist).
  float mine = 0.f;  // weight of slot `lane` (slots >= 32 go straight to memory)
  float sel_sum = 0.f;
  for (int32_t r = 0; r < top_k; ++r) {
    uint32_t best_key = 0;
    int32_t best_e = kNoExpert;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const uint32_t key = ((live >> i) & 1u) ? __float_as_uint(v[i]) + 1u : 0u;
      if (key > best_key) {
        best_key = key;
        best_e = i * 32 + lane;
      }
    }
    const uint32_t win_key = __reduce_max_sync(kFull, best_key);
    const int32_t win_e = __reduce_min_sync(kFull, best_key == win_key ? best_e : kNoExpert);
    const float p = __uint_as_float(win_key - 1u);
    if (lane == (win_e & 31)) live &= ~(1u << (win_e >> 5));
    if (lane == (r & 31)) {
      ids[r] = win_e;
      if (r < 32) {
        mine = p;
      } else {
        wrow[r] = p;
      }
    }
    sel_sum = __fadd_rn(sel_sum, p);
  }
  if (lane < top_k) wrow[lane] = renormalize ? __fdiv_rn(mine, sel_sum) : mine;
  if (renormalize) {
    // Slots >= 32 were written above by this same lane (r & 31 == lane).
    for (int32_t j = lane + 32; j < top_k; j += 32) wrow[j] = __fdiv_rn(wrow[j], sel_sum);
  }
}

}  // namespace

// logits: [tokens, num_experts] f32; probs: [tokens, num_experts] f32;
// expert_ids: [tokens, top_k] i32; weights: [tokens, top_k] f32;
// status: one zeroed 8-byte word (see above). Requires 1 <= top_k <=
// num_experts <= 32 * VPT and tokens * num_experts <= INT32_MAX.
// Launch: grid ceil(tokens / 8), block 256, no shared memory. MIN_BLOCKS only
// steers ptxas' register allocation (it spilled VPT = 8 without it).
#define DL_ROUTE_KERNEL(VPT, MIN_BLOCKS)                                                     \
  DL_EXTERN void __launch_bounds__(kRouteThreads, MIN_BLOCKS)                                \
      dl_route_v##VPT(const float* __restrict__ logits, int32_t tokens, int32_t num_experts, \
                      int32_t top_k, int32_t renormalize, float* __restrict__ probs,         \
                      int32_t* __restrict__ expert_ids, float* __restrict__ weights,         \
                      unsigned long long* __restrict__ status) {                             \
    route_token<VPT>(logits, tokens, num_experts, top_k, renormalize, probs, expert_ids,     \
                     weights, status);                                                       \
  }

DL_ROUTE_KERNEL(1, 4)
DL_ROUTE_KERNEL(2, 4)
DL_ROUTE_KERNEL(4, 4)
DL_ROUTE_KERNEL(8, 4)
DL_ROUTE_KERNEL(16, 4)
DL_ROUTE_KERNEL(32, 1)
