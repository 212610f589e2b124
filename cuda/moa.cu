// The one elementwise op of the ModuleFormer MoE routers (src/cuda/moa.rs)
// that the crate's kernels lack: the "mlp" gate's hidden layer, the exact
// (erf) GeLU of an f32 product plus a bias, rounded once to T.
#include "common.cuh"

namespace {

constexpr int kThreads = 256;

// out[i] = gelu_erf(x[i] + bias[i % d]) for i < n (x f32 [n / d, d], bias
// and out T); GeLU(u) = u / 2 * (1 + erf(u / sqrt(2))) in f32.
template <typename T>
__device__ void bias_gelu_erf(const float* __restrict__ x, const T* __restrict__ bias,
                              T* __restrict__ out, int32_t n, int32_t d) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  const float u = x[i] + dl::to_f32(bias[i % d]);
  out[i] = dl::from_f32<T>(0.5f * u * (1.0f + erff(u * 0.70710678118654752f)));
}

}  // namespace

#define DL_MOA(T, SUFFIX)                                                              \
  DL_EXTERN void __launch_bounds__(kThreads)                                           \
      dl_moa_bias_gelu_erf_##SUFFIX(const float* x, const T* bias, T* out, int32_t n,  \
                                    int32_t d) {                                       \
    bias_gelu_erf<T>(x, bias, out, n, d);                                              \
  }

DL_MOA(float, f32)
DL_MOA(__half, f16)
DL_MOA(__nv_bfloat16, bf16)
