// Small elementwise kernels the layer needs between the big ones: dtype casts
// and in-place accumulation. Grid-stride loops; math in f32.
#include "common.cuh"

namespace {

// The next index of a grid-stride loop over [0, n), or n when the stride
// would reach past it: i + stride is only formed below n, so it never
// overflows i32 even for n close to INT32_MAX.
__device__ __forceinline__ int32_t next_index(int32_t i, int32_t n) {
  const int32_t stride = gridDim.x * blockDim.x;
  return n - i > stride ? i + stride : n;
}

template <typename S, typename D>
__device__ void cast_impl(const S* __restrict__ src, D* __restrict__ dst, int32_t n) {
  for (int32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i = next_index(i, n)) {
    dst[i] = dl::from_f32<D>(dl::to_f32(src[i]));
  }
}

template <typename T>
__device__ void add_assign_impl(T* __restrict__ acc, const T* __restrict__ x, int32_t n) {
  for (int32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i = next_index(i, n)) {
    acc[i] = dl::from_f32<T>(dl::to_f32(acc[i]) + dl::to_f32(x[i]));
  }
}

}  // namespace

#define DL_CASTS(T, SUFFIX)                                                        \
  DL_EXTERN void dl_cast_f32_to_##SUFFIX(const float* src, T* dst, int32_t n) {   \
    cast_impl<float, T>(src, dst, n);                                             \
  }                                                                               \
  DL_EXTERN void dl_cast_##SUFFIX##_to_f32(const T* src, float* dst, int32_t n) { \
    cast_impl<T, float>(src, dst, n);                                             \
  }

#define DL_ADD_ASSIGN(T, SUFFIX)                                          \
  DL_EXTERN void dl_add_assign_##SUFFIX(T* acc, const T* x, int32_t n) { \
    add_assign_impl<T>(acc, x, n);                                       \
  }

// f32 -> f32 is a plain copy, under the one name both directions use.
DL_EXTERN void dl_cast_f32_to_f32(const float* src, float* dst, int32_t n) {
  cast_impl<float, float>(src, dst, n);
}
DL_CASTS(__half, f16)
DL_CASTS(__nv_bfloat16, bf16)
DL_ADD_ASSIGN(float, f32)
DL_ADD_ASSIGN(__half, f16)
DL_ADD_ASSIGN(__nv_bfloat16, bf16)
