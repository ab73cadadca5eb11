// Fused CUDA forward and backward of the SRU++ elementwise recurrence (spec §1.4).
//
// One thread per (batch, hidden unit) column walks time. Layout: U is (L, B, d, K) contiguous,
// x / h / grad_h / grad_x are (L, B, d); c0, weight_c, bias, mask_c and the saved cell states are
// fp32, and so is the arithmetic. Storage types: U and grad_U are TU, x, h, grad_h and grad_x are
// TX (float, or 16-bit half / bfloat16). TU may be 16-bit while TX is float: that is autocast's
// case (a bf16 / fp16 linear output U next to the fp32 residual stream x), read as it is instead
// of through an fp32 copy of U. k=4 has no x, and its h is stored in U's type (TX = TU).
// The per-step math is recurrence_step.h, shared with the C++ CPU path. The 16-bit
// conversions are written here (PTX cvt for half, round-to-nearest-even bit arithmetic for
// bfloat16) so the source needs no CUDA headers and compiles with bare NVRTC.
// The only dependence between steps is c, and per step it is a short chain of a few FMAs and two
// sigmoids: the step is bound by the latency of its loads unless they were issued earlier. None
// of the loads depends on c, so each thread keeps the loads of the next SRUPP_PREFETCH steps in
// flight in registers (a ring of that many slots, indexed by compile-time constants once the
// inner loop is unrolled), forward and backward. SRUPP_PREFETCH is a -D option (cupy_kernel.py).
// Compiled at run time by NVRTC through CuPy (see cupy_kernel.py); the extern "C" entry points at
// the end instantiate every storage-type pair and k, so a compile check catches errors in all.
// The tests also compile this file for the host under cuda_host_shim.h (SRUPP_HOST_SHIM), which
// supplies the CUDA built-ins and the half conversions, and run every thread of a launch in turn.
#include "recurrence_step.h"

#ifndef SRUPP_PREFETCH
#error "compile with -DSRUPP_PREFETCH=<time steps loaded ahead> (cupy_kernel.py passes it)"
#endif
static_assert(SRUPP_PREFETCH >= 1 && SRUPP_PREFETCH <= 16, "SRUPP_PREFETCH must be 1..16");

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

template <typename TU, typename TX, int K>
__device__ __forceinline__ Step<float> load_step(const TU* __restrict__ U, const TX* __restrict__ x, long long idx) {
  const TU* u = U + idx * K;
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
  int b, B;             // batch row of the column; batch size
  Unit<float> unit;

  __device__ __forceinline__ long long at(int t) const { return (long long)t * cols + col; }
  __device__ __forceinline__ bool padded(const bool* __restrict__ mask_pad, int t) const {
    return mask_pad != nullptr && mask_pad[(long long)t * B + b];
  }
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
  c.B = B;
  const int j = (int)(c.col % d);
  c.unit = Unit<float>{weight_c[j], weight_c[d + j], bias[j], bias[d + j], (mask_c != nullptr) ? mask_c[c.col] : 1.f};
  return c;
}

constexpr int PREFETCH = SRUPP_PREFETCH;

// Everything forward step t reads; none of it depends on the carried cell state.
struct ForwardLoads {
  Step<float> s;
  bool pad;
};

template <typename TU, typename TX, int K>
__device__ __forceinline__ ForwardLoads load_forward(const TU* __restrict__ U, const TX* __restrict__ x,
                                                     const bool* __restrict__ mask_pad, const Column& column,
                                                     int t) {
  return ForwardLoads{load_step<TU, TX, K>(U, x, column.at(t)), column.padded(mask_pad, t)};
}

template <typename TU, typename TX, int K>
__device__ void forward(const TU* __restrict__ U, const TX* __restrict__ x, const float* __restrict__ weight_c,
                        const float* __restrict__ bias, const float* __restrict__ c0,
                        const float* __restrict__ mask_c, const bool* __restrict__ mask_pad,
                        TX* __restrict__ h, float* __restrict__ c_all, int L, int B, int d) {
  const Column column = this_threads_column(weight_c, bias, mask_c, B, d);
  if (!column.valid) return;
  float c = c0[column.col];
  // ahead[i] holds step t0 + i; once used it is refilled with step t0 + i + PREFETCH.
  ForwardLoads ahead[PREFETCH];
#pragma unroll
  for (int i = 0; i < PREFETCH; ++i) {
    if (i < L) ahead[i] = load_forward<TU, TX, K>(U, x, mask_pad, column, i);
  }
  for (int t0 = 0; t0 < L; t0 += PREFETCH) {
#pragma unroll
    for (int i = 0; i < PREFETCH; ++i) {
      const int t = t0 + i;
      if (t >= L) break;
      const ForwardLoads cur = ahead[i];
      if (t + PREFETCH < L) ahead[i] = load_forward<TU, TX, K>(U, x, mask_pad, column, t + PREFETCH);
      const long long idx = column.at(t);
      // padding: c_t = c_{t-1}, h_t = 0
      h[idx] = from_float<TX>(cur.pad ? 0.f : forward_step(cur.s, column.unit, c));
      c_all[idx] = c;
    }
  }
}

// Everything backward step t reads: its inputs, dL/dh_t and c_{t-1}. c_t is the previous
// iteration's c_{t-1} (time runs backwards), so each saved state is read once.
struct BackwardLoads {
  Step<float> s;
  float grad_h, c_prev;
  bool pad;
};

template <typename TU, typename TX, int K>
__device__ __forceinline__ BackwardLoads load_backward(const TU* __restrict__ U, const TX* __restrict__ x,
                                                       const float* __restrict__ c0, const bool* __restrict__ mask_pad,
                                                       const float* __restrict__ c_all,
                                                       const TX* __restrict__ grad_h, const Column& column, int t) {
  const long long idx = column.at(t);
  return BackwardLoads{load_step<TU, TX, K>(U, x, idx), to_float(grad_h[idx]),
                       (t > 0) ? c_all[idx - column.cols] : c0[column.col], column.padded(mask_pad, t)};
}

// grad_wc and grad_bias are per column, (2, B, d): the caller sums over B.
template <typename TU, typename TX, int K>
__device__ void backward(const TU* __restrict__ U, const TX* __restrict__ x, const float* __restrict__ weight_c,
                         const float* __restrict__ bias, const float* __restrict__ c0,
                         const float* __restrict__ mask_c, const bool* __restrict__ mask_pad,
                         const float* __restrict__ c_all, const TX* __restrict__ grad_h,
                         const float* __restrict__ grad_c_last, TU* __restrict__ grad_U, TX* __restrict__ grad_x,
                         float* __restrict__ grad_wc, float* __restrict__ grad_bias, float* __restrict__ grad_c0,
                         int L, int B, int d) {
  const Column column = this_threads_column(weight_c, bias, mask_c, B, d);
  if (!column.valid) return;
  const long long col = column.col, cols = column.cols;
  float gc = grad_c_last[col];
  float c = (L > 0) ? c_all[column.at(L - 1)] : c0[col];
  UnitGrad<float> sums{0.f, 0.f, 0.f, 0.f};
  // ahead[i] holds step L - 1 - (n0 + i); once used it is refilled with the step PREFETCH earlier.
  BackwardLoads ahead[PREFETCH];
#pragma unroll
  for (int i = 0; i < PREFETCH; ++i) {
    if (i < L) ahead[i] = load_backward<TU, TX, K>(U, x, c0, mask_pad, c_all, grad_h, column, L - 1 - i);
  }
  for (int n0 = 0; n0 < L; n0 += PREFETCH) {
#pragma unroll
    for (int i = 0; i < PREFETCH; ++i) {
      const int t = L - 1 - (n0 + i);
      if (t < 0) break;
      const BackwardLoads cur = ahead[i];
      if (t - PREFETCH >= 0) ahead[i] = load_backward<TU, TX, K>(U, x, c0, mask_pad, c_all, grad_h, column, t - PREFETCH);
      const long long idx = column.at(t);
      TU* gu = grad_U + idx * K;
      if (cur.pad) {
        // c_t = c_{t-1} and h_t = 0: the state gradient passes through untouched.
        for (int q = 0; q < K; ++q) gu[q] = from_float<TU>(0.f);
        if (K == 3) grad_x[idx] = from_float<TX>(0.f);
      } else {
        const StepGrad<float> g = backward_step(cur.s, column.unit, cur.c_prev, c, cur.grad_h, gc, sums);
        gu[0] = from_float<TU>(g.u0);
        gu[1] = from_float<TU>(g.u1);
        gu[2] = from_float<TU>(g.u2);
        if (K == 3) {
          grad_x[idx] = from_float<TX>(g.skip);
        } else {
          gu[3] = from_float<TU>(g.skip);
        }
      }
      c = cur.c_prev;
    }
  }
  grad_c0[col] = gc;
  grad_wc[col] = sums.vf;
  grad_wc[cols + col] = sums.vr;
  grad_bias[col] = sums.bf;
  grad_bias[cols + col] = sums.br;
}

}  // namespace srupp

#define SRUPP_ENTRY_POINTS(SUFFIX, TU, TX, K)                                                          \
  extern "C" __global__ void srupp_forward_##SUFFIX(                                                 \
      const TU* U, const TX* x, const float* weight_c, const float* bias, const float* c0,           \
      const float* mask_c, const bool* mask_pad, TX* h, float* c_all, int L, int B, int d) {         \
    srupp::forward<TU, TX, K>(U, x, weight_c, bias, c0, mask_c, mask_pad, h, c_all, L, B, d);        \
  }                                                                                                  \
  extern "C" __global__ void srupp_backward_##SUFFIX(                                                \
      const TU* U, const TX* x, const float* weight_c, const float* bias, const float* c0,           \
      const float* mask_c, const bool* mask_pad, const float* c_all, const TX* grad_h,               \
      const float* grad_c_last, TU* grad_U, TX* grad_x, float* grad_wc, float* grad_bias,            \
      float* grad_c0, int L, int B, int d) {                                                         \
    srupp::backward<TU, TX, K>(U, x, weight_c, bias, c0, mask_c, mask_pad, c_all, grad_h, grad_c_last, \
                               grad_U, grad_x, grad_wc, grad_bias, grad_c0, L, B, d);                \
  }

// Every variant, as X(suffix, U's storage type, x's and h's storage type, k); suffix: U's dtype,
// then x's when it differs, then k (cupy_kernel.kernel_name). The host shim walks the same list
// to find the entry points by name.
#define SRUPP_FOR_EACH_VARIANT(X)                                    \
  X(float32_k3, float, float, 3)                                     \
  X(float32_k4, float, float, 4)                                     \
  X(float16_k3, srupp::half_t, srupp::half_t, 3)                     \
  X(float16_k4, srupp::half_t, srupp::half_t, 4)                     \
  X(bfloat16_k3, srupp::bfloat16_t, srupp::bfloat16_t, 3)            \
  X(bfloat16_k4, srupp::bfloat16_t, srupp::bfloat16_t, 4)            \
  X(float16_float32_k3, srupp::half_t, float, 3)                     \
  X(bfloat16_float32_k3, srupp::bfloat16_t, float, 3)

SRUPP_FOR_EACH_VARIANT(SRUPP_ENTRY_POINTS)
