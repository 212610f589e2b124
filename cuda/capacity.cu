// Kernels of the capacity-factor MoE baseline: its dispatch into
// [experts, capacity, hidden] slots, its combine, and its dropped fraction.
// Math in f32, one rounding on store; grid-stride loops (the wrappers check
// that n + gridDim.x * blockDim.x fits i32). No float atomics: every output
// element is written by one thread in a fixed order (deterministic).
#include "common.cuh"

namespace {

// One thread per (sorted assignment p, column c). The sorted assignment p is
// a = indices[p] routed to e = bin_ids[p]; its rank within expert e is
// p - bins[e - 1] (token order: the sort is stable). With `compact` its row is
// p (every assignment kept, rows in sorted order); otherwise it is
// e * capacity + rank when rank < capacity, else the assignment is dropped
// (row -1). Column 0 records the row in slot_of[a]; the row receives token
// a / top_k of x. Out-of-range device values are skipped.
template <typename T>
__device__ void dispatch_impl(const T* __restrict__ x, const int32_t* __restrict__ indices,
                              const int32_t* __restrict__ bin_ids,
                              const int32_t* __restrict__ bins, int32_t n, int32_t top_k,
                              int32_t hidden, int32_t num_experts, int32_t capacity,
                              int32_t compact, int32_t* __restrict__ slot_of,
                              T* __restrict__ slots) {
  const int32_t total = n * hidden;
  for (int32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += gridDim.x * blockDim.x) {
    const int32_t p = i / hidden;
    const int32_t c = i - p * hidden;
    const int32_t a = indices[p];
    const int32_t e = bin_ids[p];
    if (a < 0 || a >= n || e < 0 || e >= num_experts) continue;
    int32_t row = p;
    if (!compact) {
      const int32_t rank = p - (e > 0 ? bins[e - 1] : 0);
      row = (rank >= 0 && rank < capacity) ? e * capacity + rank : -1;
    }
    if (c == 0) slot_of[a] = row;
    if (row >= 0) slots[row * hidden + c] = x[(a / top_k) * hidden + c];
  }
}

// One thread per (token t, column c): out[t, c] = sum over j = 0..top_k, in
// slot order, of weights[t, j] * y[slot_of[t * top_k + j], c] for the slots in
// [0, rows) (dropped assignments, -1, add nothing), in f32, rounded once.
template <typename T>
__device__ void combine_impl(const T* __restrict__ y, int32_t rows,
                             const int32_t* __restrict__ slot_of,
                             const float* __restrict__ weights, int32_t tokens, int32_t top_k,
                             int32_t hidden, T* __restrict__ out) {
  const int32_t total = tokens * hidden;
  for (int32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += gridDim.x * blockDim.x) {
    const int32_t t = i / hidden;
    const int32_t c = i - t * hidden;
    float acc = 0.0f;
    for (int32_t j = 0; j < top_k; ++j) {
      const int32_t s = slot_of[t * top_k + j];
      if (s >= 0 && s < rows) {
        // Product, then sum, each rounded (no FMA contraction): the CPU
        // reference's `acc += w * v`.
        acc = __fadd_rn(acc, __fmul_rn(weights[t * top_k + j], dl::to_f32(y[s * hidden + c])));
      }
    }
    out[i] = dl::from_f32<T>(acc);
  }
}

}  // namespace

// dropped[0] = sum over experts of max(counts[e] - capacity, 0) / n, summed in
// i64 (exact, order-independent). One CTA of 256 threads.
DL_EXTERN void dl_capacity_dropped(const int32_t* __restrict__ counts, int32_t num_experts,
                                   int32_t capacity, int32_t n, float* __restrict__ dropped) {
  __shared__ long long partial[256];
  long long sum = 0;
  for (int32_t e = threadIdx.x; e < num_experts; e += blockDim.x) {
    sum += max(counts[e] - capacity, 0);
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int32_t s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) dropped[0] = (float)((double)partial[0] / (double)n);
}

#define DL_CAPACITY(T, SUFFIX)                                                                 \
  DL_EXTERN void dl_capacity_dispatch_##SUFFIX(                                                 \
      const T* x, const int32_t* indices, const int32_t* bin_ids, const int32_t* bins,          \
      int32_t n, int32_t top_k, int32_t hidden, int32_t num_experts, int32_t capacity,          \
      int32_t compact, int32_t* slot_of, T* slots) {                                            \
    dispatch_impl<T>(x, indices, bin_ids, bins, n, top_k, hidden, num_experts, capacity,        \
                     compact, slot_of, slots);                                                  \
  }                                                                                             \
  DL_EXTERN void dl_capacity_combine_##SUFFIX(const T* y, int32_t rows, const int32_t* slot_of, \
                                              const float* weights, int32_t tokens,             \
                                              int32_t top_k, int32_t hidden, T* out) {          \
    combine_impl<T>(y, rows, slot_of, weights, tokens, top_k, hidden, out);                     \
  }

DL_CAPACITY(float, f32)
DL_CAPACITY(__half, f16)
DL_CAPACITY(__nv_bfloat16, bf16)
