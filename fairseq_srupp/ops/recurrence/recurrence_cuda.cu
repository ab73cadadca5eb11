// Fused CUDA forward and backward of the SRU++ elementwise recurrence (spec §1.4).
//
// One thread per (batch, hidden unit) column walks time. Layout: U is (L, B, d, K) contiguous,
// x / h / grad_h / grad_x are (L, B, d); c0, weight_c, bias, mask_c and the saved cell states are
// fp32; U, x, h and their gradients are T (float, or 16-bit half / bfloat16 storage) with fp32
// arithmetic. The per-step math is recurrence_step.h, shared with the C++ CPU path. The 16-bit
// conversions are written here (PTX cvt for half, round-to-nearest-even bit arithmetic for
// bfloat16) so the source needs no CUDA headers and compiles with bare NVRTC.
// The only dependence between steps is c; the loads of step t+1 do not depend on it, so they are
// issued before step t's arithmetic (a one-step register prefetch) to hide their latency.
// Compiled at run time by NVRTC through CuPy (see cupy_kernel.py); the extern "C" entry points at
// the end instantiate every dtype and k, so a compile check catches errors in all of them.
// The tests also compile this file for the host under cuda_host_shim.h (SRUPP_HOST_SHIM), which
// supplies the CUDA built-ins and the half conversions, and run every thread of a launch in turn.
#include "recurrence_step.h"

namespace srupp {

struct half_t {  // IEEE binary16 storage, as torch.float16
  unsigned short bits;
};
struct bfloat16_t {  // upper half of a binary32, as torch.bfloat16
  unsigned short bits;
};

#ifdef SRUPP_HOST_SHIM
__device__ __forceinline__ float half_bits_to_float(unsigned short bits) { return srupp_shim::half_bits_to_float(bits); }
__device__ __forceinline__ unsigned short float_to_half_bits(float v) { return srupp_shim::float_to_half_bits(v); }
#else
__device__ __forceinline__ float half_bits_to_float(unsigned short bits) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));
  return f;
}
__device__ __forceinline__ unsigned short float_to_half_bits(float v) {
  unsigned short bits;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(v));
  return bits;
}
#endif

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(half_t v) { return half_bits_to_float(v.bits); }
__device__ __forceinline__ float to_float(bfloat16_t v) { return __uint_as_float(((unsigned int)v.bits) << 16); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ half_t from_float<half_t>(float v) {
  half_t h;
  h.bits = float_to_half_bits(v);
  return h;
}
template <> __device__ __forceinline__ bfloat16_t from_float<bfloat16_t>(float v) {
  unsigned int u = __float_as_uint(v);
  bfloat16_t b;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    b.bits = 0x7fc0;  // NaN stays NaN
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    b.bits = (unsigned short)(u >> 16);
  }
  return b;
}

template <typename T, int K>
__device__ __forceinline__ Step<float> load_step(const T* __restrict__ U, const T* __restrict__ x, long long idx) {
  const T* u = U + idx * K;
  Step<float> s;
  s.u0 = to_float(u[0]);
  s.u1 = to_float(u[1]);
  s.u2 = to_float(u[2]);
  s.skip = (K == 3) ? to_float(x[idx]) : to_float(u[3]);
  return s;
}

// The (batch, hidden unit) column this thread walks through time, with that unit's parameters;
// valid is false for the spare threads of the last block.
struct Column {
  bool valid;
  long long col, cols;  // column index in (B, d) order; number of columns B * d
  int b;                // batch row of the column
  Unit<float> unit;
};

__device__ __forceinline__ Column this_threads_column(const float* __restrict__ weight_c,
                                                      const float* __restrict__ bias,
                                                      const float* __restrict__ mask_c, int B, int d) {
  Column c;
  c.col = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  c.cols = (long long)B * d;
  c.valid = c.col < c.cols;
  if (!c.valid) return c;
  c.b = (int)(c.col / d);
  const int j = (int)(c.col % d);
  c.unit = Unit<float>{weight_c[j], weight_c[d + j], bias[j], bias[d + j], (mask_c != nullptr) ? mask_c[c.col] : 1.f};
  return c;
}

template <typename T, int K>
__device__ void forward(const T* __restrict__ U, const T* __restrict__ x, const float* __restrict__ weight_c,
                        const float* __restrict__ bias, const float* __restrict__ c0,
                        const float* __restrict__ mask_c, const bool* __restrict__ mask_pad,
                        T* __restrict__ h, float* __restrict__ c_all, int L, int B, int d) {
  const Column column = this_threads_column(weight_c, bias, mask_c, B, d);
  if (!column.valid) return;
  const long long col = column.col, cols = column.cols;
  const int b = column.b;
  const Unit<float> unit = column.unit;
  float c = c0[col];
  Step<float> next = load_step<T, K>(U, x, col);
  for (int t = 0; t < L; ++t) {
    const long long idx = (long long)t * cols + col;
    const Step<float> cur = next;
    if (t + 1 < L) next = load_step<T, K>(U, x, idx + cols);
    if (mask_pad != nullptr && mask_pad[(long long)t * B + b]) {
      h[idx] = from_float<T>(0.f);
      c_all[idx] = c;
      continue;
    }
    h[idx] = from_float<T>(forward_step(cur, unit, c));
    c_all[idx] = c;
  }
}

// grad_wc and grad_bias are per column, (2, B, d): the caller sums over B.
template <typename T, int K>
__device__ void backward(const T* __restrict__ U, const T* __restrict__ x, const float* __restrict__ weight_c,
                         const float* __restrict__ bias, const float* __restrict__ c0,
                         const float* __restrict__ mask_c, const bool* __restrict__ mask_pad,
                         const float* __restrict__ c_all, const T* __restrict__ grad_h,
                         const float* __restrict__ grad_c_last, T* __restrict__ grad_U, T* __restrict__ grad_x,
                         float* __restrict__ grad_wc, float* __restrict__ grad_bias, float* __restrict__ grad_c0,
                         int L, int B, int d) {
  const Column column = this_threads_column(weight_c, bias, mask_c, B, d);
  if (!column.valid) return;
  const long long col = column.col, cols = column.cols;
  const int b = column.b;
  const Unit<float> unit = column.unit;
  float gc = grad_c_last[col];
  UnitGrad<float> sums{0.f, 0.f, 0.f, 0.f};
  for (int t = L - 1; t >= 0; --t) {
    const long long idx = (long long)t * cols + col;
    T* gu = grad_U + idx * K;
    if (mask_pad != nullptr && mask_pad[(long long)t * B + b]) {
      // c_t = c_{t-1} and h_t = 0: the state gradient passes through untouched.
      for (int q = 0; q < K; ++q) gu[q] = from_float<T>(0.f);
      if (K == 3) grad_x[idx] = from_float<T>(0.f);
      continue;
    }
    const Step<float> s = load_step<T, K>(U, x, idx);
    const float cp = (t > 0) ? c_all[idx - cols] : c0[col];
    const StepGrad<float> g = backward_step(s, unit, cp, c_all[idx], to_float(grad_h[idx]), gc, sums);
    gu[0] = from_float<T>(g.u0);
    gu[1] = from_float<T>(g.u1);
    gu[2] = from_float<T>(g.u2);
    if (K == 3) {
      grad_x[idx] = from_float<T>(g.skip);
    } else {
      gu[3] = from_float<T>(g.skip);
    }
  }
  grad_c0[col] = gc;
  grad_wc[col] = sums.vf;
  grad_wc[cols + col] = sums.vr;
  grad_bias[col] = sums.bf;
  grad_bias[cols + col] = sums.br;
}

}  // namespace srupp

#define SRUPP_ENTRY_POINTS(SUFFIX, T, K)                                                              \
  extern "C" __global__ void srupp_forward_##SUFFIX(                                                 \
      const T* U, const T* x, const float* weight_c, const float* bias, const float* c0,             \
      const float* mask_c, const bool* mask_pad, T* h, float* c_all, int L, int B, int d) {          \
    srupp::forward<T, K>(U, x, weight_c, bias, c0, mask_c, mask_pad, h, c_all, L, B, d);             \
  }                                                                                                  \
  extern "C" __global__ void srupp_backward_##SUFFIX(                                                \
      const T* U, const T* x, const float* weight_c, const float* bias, const float* c0,             \
      const float* mask_c, const bool* mask_pad, const float* c_all, const T* grad_h,                \
      const float* grad_c_last, T* grad_U, T* grad_x, float* grad_wc, float* grad_bias,              \
      float* grad_c0, int L, int B, int d) {                                                         \
    srupp::backward<T, K>(U, x, weight_c, bias, c0, mask_c, mask_pad, c_all, grad_h, grad_c_last,    \
                          grad_U, grad_x, grad_wc, grad_bias, grad_c0, L, B, d);                     \
  }

// Every (dtype, k) variant, as X(suffix, storage type, k); the host shim walks the same list to
// find the entry points by name.
#define SRUPP_FOR_EACH_VARIANT(X)    \
  X(float32_k3, float, 3)            \
  X(float32_k4, float, 4)            \
  X(float16_k3, srupp::half_t, 3)    \
  X(float16_k4, srupp::half_t, 4)    \
  X(bfloat16_k3, srupp::bfloat16_t, 3) \
  X(bfloat16_k4, srupp::bfloat16_t, 4)

SRUPP_FOR_EACH_VARIANT(SRUPP_ENTRY_POINTS)
