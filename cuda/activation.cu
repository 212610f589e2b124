// Elementwise activations on the stored blocks of a block-sparse matrix, and
// their gradients: GeLU (tanh approximation, as MegaBlocks) for the plain MLP,
// SiLU(gate) * up for the GLU MLP. Math in f32, one rounding on store.
//
// The block count is read from device memory (`num_blocks`, i.e. the
// topology's offsets[max_block_rows]) so buffers sized for the bound need no
// host round trip: elements past num_blocks * block_elems are not touched.
#include "common.cuh"

namespace {

// The next index of a grid-stride loop over [0, n), or n when the stride
// would reach past it: i + stride is only formed below n, so it never
// overflows i32 even for n close to INT32_MAX.
__device__ __forceinline__ int32_t next_index(int32_t i, int32_t n) {
  const int32_t stride = gridDim.x * blockDim.x;
  return n - i > stride ? i + stride : n;
}

__device__ __forceinline__ float gelu_f(float x) {
  const float k0 = 0.7978845608028654f;  // sqrt(2 / pi)
  const float k1 = 0.044715f;
  const float inner = k0 * (x + k1 * x * x * x);
  return 0.5f * x * (1.0f + tanhf(inner));
}

__device__ __forceinline__ float gelu_grad_f(float x) {
  const float k0 = 0.7978845608028654f;
  const float k1 = 0.044715f;
  const float inner = k0 * (x + k1 * x * x * x);
  const float t = tanhf(inner);
  const float dinner = k0 * (1.0f + 3.0f * k1 * x * x);
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * dinner;
}

__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

// Number of live elements: num_blocks (from device memory) * block_elems,
// capped by the buffer capacity.
__device__ __forceinline__ int32_t live_elems(const int32_t* num_blocks, int32_t block_elems,
                                              int32_t capacity) {
  const int64_t n = (int64_t)max(*num_blocks, 0) * block_elems;
  return (int32_t)min(n, (int64_t)capacity);
}

template <typename T>
__device__ void gelu_impl(const T* __restrict__ x, T* __restrict__ y, const int32_t* num_blocks,
                          int32_t block_elems, int32_t capacity) {
  const int32_t n = live_elems(num_blocks, block_elems, capacity);
  for (int32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i = next_index(i, n)) {
    y[i] = dl::from_f32<T>(gelu_f(dl::to_f32(x[i])));
  }
}

template <typename T>
__device__ void gelu_backward_impl(const T* __restrict__ grad_y, const T* __restrict__ x,
                                   T* __restrict__ grad_x, const int32_t* num_blocks,
                                   int32_t block_elems, int32_t capacity) {
  const int32_t n = live_elems(num_blocks, block_elems, capacity);
  for (int32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i = next_index(i, n)) {
    grad_x[i] = dl::from_f32<T>(dl::to_f32(grad_y[i]) * gelu_grad_f(dl::to_f32(x[i])));
  }
}

template <typename T>
__device__ void silu_mul_impl(const T* __restrict__ gate, const T* __restrict__ up,
                              T* __restrict__ y, const int32_t* num_blocks, int32_t block_elems,
                              int32_t capacity) {
  const int32_t n = live_elems(num_blocks, block_elems, capacity);
  for (int32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i = next_index(i, n)) {
    const float g = dl::to_f32(gate[i]);
    y[i] = dl::from_f32<T>(g * sigmoid_f(g) * dl::to_f32(up[i]));
  }
}

template <typename T>
__device__ void silu_mul_backward_impl(const T* __restrict__ grad_y, const T* __restrict__ gate,
                                       const T* __restrict__ up, T* __restrict__ grad_gate,
                                       T* __restrict__ grad_up, const int32_t* num_blocks,
                                       int32_t block_elems, int32_t capacity) {
  const int32_t n = live_elems(num_blocks, block_elems, capacity);
  for (int32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i = next_index(i, n)) {
    const float dy = dl::to_f32(grad_y[i]);
    const float g = dl::to_f32(gate[i]);
    const float u = dl::to_f32(up[i]);
    const float s = sigmoid_f(g);
    grad_up[i] = dl::from_f32<T>(dy * g * s);
    grad_gate[i] = dl::from_f32<T>(dy * u * s * (1.0f + g * (1.0f - s)));
  }
}

}  // namespace

#define DL_ACTIVATIONS(T, SUFFIX)                                                               \
  DL_EXTERN void dl_gelu_##SUFFIX(const T* x, T* y, const int32_t* num_blocks,                 \
                                  int32_t block_elems, int32_t capacity) {                     \
    gelu_impl<T>(x, y, num_blocks, block_elems, capacity);                                     \
  }                                                                                            \
  DL_EXTERN void dl_gelu_backward_##SUFFIX(const T* grad_y, const T* x, T* grad_x,             \
                                           const int32_t* num_blocks, int32_t block_elems,     \
                                           int32_t capacity) {                                 \
    gelu_backward_impl<T>(grad_y, x, grad_x, num_blocks, block_elems, capacity);               \
  }                                                                                            \
  DL_EXTERN void dl_silu_mul_##SUFFIX(const T* gate, const T* up, T* y,                        \
                                      const int32_t* num_blocks, int32_t block_elems,          \
                                      int32_t capacity) {                                      \
    silu_mul_impl<T>(gate, up, y, num_blocks, block_elems, capacity);                          \
  }                                                                                            \
  DL_EXTERN void dl_silu_mul_backward_##SUFFIX(const T* grad_y, const T* gate, const T* up,    \
                                               T* grad_gate, T* grad_up,                       \
                                               const int32_t* num_blocks, int32_t block_elems, \
                                               int32_t capacity) {                             \
    silu_mul_backward_impl<T>(grad_y, gate, up, grad_gate, grad_up, num_blocks, block_elems,   \
                              capacity);                                                       \
  }

DL_ACTIVATIONS(float, f32)
DL_ACTIVATIONS(__half, f16)
DL_ACTIVATIONS(__nv_bfloat16, bf16)
