// Shared helpers for the dropless kernels. Index arithmetic is i32: the Rust
// wrappers check every size against i32::MAX before launching.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define DL_EXTERN extern "C" __global__

namespace dl {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// First e in [0, n) with a[e] > x, or n; `a` non-decreasing.
__device__ __forceinline__ int32_t upper_bound(const int32_t* a, int32_t n, int32_t x) {
  int32_t lo = 0, hi = n;
  while (lo < hi) {
    const int32_t mid = lo + ((hi - lo) >> 1);
    if (a[mid] > x) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// Elements of T in a 16-byte pack.
template <typename T>
constexpr int kPack = 16 / static_cast<int>(sizeof(T));

// Loads P elements at p (one 16-byte access when P > 1) as f32.
template <typename T, int P>
__device__ __forceinline__ void load_f32(const T* p, float (&v)[P]) {
  if constexpr (P == 1) {
    v[0] = dl::to_f32(*p);
  } else {
    static_assert(P * sizeof(T) == 16, "a pack is 16 bytes");
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int k = 0; k < P; ++k) v[k] = dl::to_f32(e[k]);
  }
}

// Rounds P f32 values to T and stores them at p (one 16-byte access when P > 1).
template <typename T, int P>
__device__ __forceinline__ void store_f32(T* p, const float (&v)[P]) {
  if constexpr (P == 1) {
    *p = dl::from_f32<T>(v[0]);
  } else {
    static_assert(P * sizeof(T) == 16, "a pack is 16 bytes");
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int k = 0; k < P; ++k) e[k] = dl::from_f32<T>(v[k]);
    *reinterpret_cast<uint4*>(p) = raw;
  }
}

}  // namespace dl
