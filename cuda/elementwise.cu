// Small elementwise kernels the layer needs between the big ones: dtype casts,
// in-place accumulation and the non-finite scan (grid-stride loops), and the
// dense maps shared by the baselines and the language model: GeLU,
// SiLU(gate) * up and a + b (one thread per element, or per 16-byte pack when
// the wrapper's `vec` flag says every operand is 16-byte aligned and n a
// whole number of packs). Math in f32, one rounding per stored value.
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

// The first non-finite element of x[0..n): status[slot] (a zeroed 64-bit word
// of the caller's status array) ends as the atomicMax, over the non-finite
// x[i], of key(i) = ((0x7fffffff - i) << 2) | class (class 0 NaN, 1 +inf,
// 2 -inf): the lowest such i whatever the schedule, and never zero because
// i < n <= INT32_MAX. Zero means all finite. A thread's indices increase, so
// its first hit is its largest key: one atomic per thread that finds one.
template <typename T>
__device__ void find_nonfinite_impl(const T* __restrict__ x, int32_t n, int32_t slot,
                                    unsigned long long* __restrict__ status) {
  for (int32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i = next_index(i, n)) {
    const float v = dl::to_f32(x[i]);
    if (!isfinite(v)) {
      const unsigned long long cls = isnan(v) ? 0ull : (v > 0.f ? 1ull : 2ull);
      const unsigned long long flat = 0x7fffffffull - static_cast<unsigned long long>(i);
      atomicMax(status + slot, (flat << 2) | cls);
      return;
    }
  }
}

// GeLU, tanh approximation, in the baselines' rounding.
struct GeluOp {
  __device__ float operator()(float x, float) const {
    const float k0 = 0.7978845608028654f;  // sqrt(2 / pi)
    const float k1 = 0.044715f;
    return 0.5f * x * (1.0f + tanhf(k0 * (x + k1 * x * x * x)));
  }
};

// SiLU(g) * u in one of two roundings: `quotient` is g / (1 + exp(-g)) * u
// (the generate example's dense GLU), else g * sigmoid(g) * u with
// sigmoid(g) = 1 / (1 + exp(-g)) (reference::activation::silu, the baselines).
struct SiluMulOp {
  bool quotient;
  __device__ float operator()(float g, float u) const {
    const float e = 1.0f + expf(-g);
    return quotient ? g / e * u : g * (1.0f / e) * u;
  }
};

struct AddOp {
  __device__ float operator()(float x, float y) const { return x + y; }
};

// out[i] = op(a[i], b[i]) (b unused when null): one thread per pack of P
// elements, packs < n / P; with P > 1 the wrapper checked n % P == 0 and the
// alignment. No __restrict__: `out` may be `a` (in place), each thread reads
// its pack before writing it.
template <typename T, int P, typename Op>
__device__ __forceinline__ void map_impl(const T* a, const T* b, T* out, int32_t n, Op op) {
  const uint32_t pack = blockIdx.x * blockDim.x + threadIdx.x;
  if (pack >= static_cast<uint32_t>(n / P)) return;
  const int32_t i = static_cast<int32_t>(pack) * P;
  float x[P], y[P];
  dl::load_f32<T, P>(a + i, x);
  if (b != nullptr) {
    dl::load_f32<T, P>(b + i, y);
  } else {
#pragma unroll
    for (int k = 0; k < P; ++k) y[k] = 0.0f;
  }
#pragma unroll
  for (int k = 0; k < P; ++k) x[k] = op(x[k], y[k]);
  dl::store_f32<T, P>(out + i, x);
}

template <typename T, typename Op>
__device__ void map(const T* a, const T* b, T* out, int32_t n, int32_t vec, Op op) {
  if (vec) {
    map_impl<T, dl::kPack<T>>(a, b, out, n, op);
  } else {
    map_impl<T, 1>(a, b, out, n, op);
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

#define DL_FIND_NONFINITE(T, SUFFIX)                                                  \
  DL_EXTERN void dl_find_nonfinite_##SUFFIX(const T* x, int32_t n, int32_t slot,       \
                                            unsigned long long* status) {              \
    find_nonfinite_impl<T>(x, n, slot, status);                                        \
  }

#define DL_DENSE(T, SUFFIX)                                                                    \
  DL_EXTERN void dl_dense_gelu_##SUFFIX(const T* x, T* out, int32_t n, int32_t vec) {           \
    map<T>(x, nullptr, out, n, vec, GeluOp{});                                                  \
  }                                                                                             \
  DL_EXTERN void dl_dense_silu_mul_##SUFFIX(const T* gate, const T* up, T* out, int32_t n,      \
                                            int32_t quotient, int32_t vec) {                    \
    map<T>(gate, up, out, n, vec, SiluMulOp{quotient != 0});                                    \
  }                                                                                             \
  DL_EXTERN void dl_add_##SUFFIX(const T* a, const T* b, T* out, int32_t n, int32_t vec) {      \
    map<T>(a, b, out, n, vec, AddOp{});                                                         \
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
DL_FIND_NONFINITE(float, f32)
DL_FIND_NONFINITE(__half, f16)
DL_FIND_NONFINITE(__nv_bfloat16, bf16)
DL_DENSE(float, f32)
DL_DENSE(__half, f16)
DL_DENSE(__nv_bfloat16, bf16)
