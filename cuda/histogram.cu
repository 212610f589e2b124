// Expert histogram: tokens_per_expert[e] = #{ i : expert_ids[i] == e }.
// Block-local counts in shared memory, then one global atomicAdd per expert per
// block (integer atomics: the result is exact and order-independent).
#include "common.cuh"

// expert_ids: [n] i32; ids outside [0, num_experts) are not counted (the
// wrappers check ids that come from the host; the router only writes valid ones).
// counts: [num_experts] i32, zeroed by the caller.
// Dynamic shared memory: num_experts * 4 bytes. Grid-stride loop whose step
// never leaves i32 (i + stride is only formed when it stays below n).
DL_EXTERN void dl_histogram(const int32_t* __restrict__ expert_ids, int32_t n,
                            int32_t num_experts, int32_t* __restrict__ counts) {
  extern __shared__ int32_t local[];
  for (int32_t e = threadIdx.x; e < num_experts; e += blockDim.x) local[e] = 0;
  __syncthreads();
  const int32_t stride = gridDim.x * blockDim.x;
  for (int32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i = n - i > stride ? i + stride : n) {
    const int32_t e = expert_ids[i];
    if (e >= 0 && e < num_experts) atomicAdd(&local[e], 1);
  }
  __syncthreads();
  for (int32_t e = threadIdx.x; e < num_experts; e += blockDim.x) {
    if (local[e] != 0) atomicAdd(&counts[e], local[e]);
  }
}
