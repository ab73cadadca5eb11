// One time step of the SRU++ elementwise recurrence (spec §1.4), forward and backward, for one
// (batch, hidden unit) column. The only copy of this math: recurrence_cpu.cpp (host, SIMD loops)
// and recurrence_cuda.cu (device, one thread per column; NVRTC, or the host shim in the tests)
// both include it, so the CPU tests exercise the arithmetic the GPU runs.
//
// Forward, with u0, u1, u2 = U[t, b, j, 0..2], skip = x[t, b, j] (k=3) or U[t, b, j, 3] (k=4),
// m the dropout mask (1 without dropout) and c the cell state:
//   f = σ(u1 + v_f·c_{t-1} + b_f),  r = σ(u2 + v_r·c_{t-1} + b_r)
//   c_t = u0 + (c_{t-1} − u0)·f,    h_t = skip + (c_t − skip)·m·r
// Padding (c_t = c_{t-1}, h_t = 0) is handled by the callers, which branch on it per row / column.
#ifndef FAIRSEQ_SRUPP_RECURRENCE_STEP_H
#define FAIRSEQ_SRUPP_RECURRENCE_STEP_H

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define SRUPP_HD __host__ __device__ __forceinline__
#else
#include <cmath>
// Forced: GCC otherwise keeps backward_step out of line and the CPU's `omp simd` loop stays scalar
// (measured 5x slower backward).
#if defined(__GNUC__)
#define SRUPP_HD inline __attribute__((always_inline))
#else
#define SRUPP_HD inline
#endif
#endif

namespace srupp {

#if defined(__CUDA_ARCH__)
// The fast intrinsics: the gates tolerate their few-ulp error, and they shorten the per-step chain.
// IEEE division also branches to a slow path for extreme operands, and those branches cut each time
// step into blocks that the compiler cannot move the next steps' loads across.
SRUPP_HD float exp_(float v) { return __expf(v); }
SRUPP_HD double exp_(double v) { return exp(v); }
SRUPP_HD float inverse_(float v) { return __fdividef(1.f, v); }  // 0 for v = inf, as 1/v
SRUPP_HD double inverse_(double v) { return 1.0 / v; }
#else
SRUPP_HD float exp_(float v) { return std::exp(v); }
SRUPP_HD double exp_(double v) { return std::exp(v); }
SRUPP_HD float inverse_(float v) { return 1.f / v; }
SRUPP_HD double inverse_(double v) { return 1.0 / v; }
#endif

template <typename T>
SRUPP_HD T sigmoid(T v) {
  return inverse_(T(1) + exp_(-v));
}

// Per-unit constants of a column: v_f, v_r, b_f, b_r and the dropout mask entry.
template <typename T>
struct Unit {
  T vf, vr, bf, br, m;
};

// The inputs of one step: u0, u1, u2 and the skip term.
template <typename T>
struct Step {
  T u0, u1, u2, skip;
};

// c: c_{t-1} in, c_t out. Returns h_t.
template <typename T>
SRUPP_HD T forward_step(const Step<T>& s, const Unit<T>& p, T& c) {
  const T f = sigmoid(s.u1 + p.vf * c + p.bf);
  const T r = sigmoid(s.u2 + p.vr * c + p.br);
  c = s.u0 + (c - s.u0) * f;
  return s.skip + (c - s.skip) * (p.m * r);
}

// Gradients of one step w.r.t. its inputs; g_u1 / g_u2 are also those of the gates' pre-activations.
template <typename T>
struct StepGrad {
  T u0, u1, u2, skip;
};

// Running sums over time of the parameter gradients of one column.
template <typename T>
struct UnitGrad {
  T vf, vr, bf, br;
};

// Backward of forward_step, given c_{t-1} (cp), c_t (c) and dL/dh_t (gh). gc: dL/dc_t in (from
// later steps), dL/dc_{t-1} out. Adds this step's share to the parameter sums.
template <typename T>
SRUPP_HD StepGrad<T> backward_step(const Step<T>& s, const Unit<T>& p, T cp, T c, T gh, T& gc, UnitGrad<T>& sums) {
  const T f = sigmoid(s.u1 + p.vf * cp + p.bf);
  const T r = sigmoid(s.u2 + p.vr * cp + p.br);
  const T mr = p.m * r;
  const T gc_total = gc + gh * mr;
  // Pre-activation gradients of f and r (= those of u1 and u2). The return comes last: built
  // earlier, GCC's vectoriser stores grad_U's interleaved triples one lane at a time (1.5x slower).
  const T g_pre_f = gc_total * (cp - s.u0) * f * (T(1) - f);
  const T g_pre_r = gh * (c - s.skip) * p.m * r * (T(1) - r);
  sums.vf += g_pre_f * cp;
  sums.vr += g_pre_r * cp;
  sums.bf += g_pre_f;
  sums.br += g_pre_r;
  gc = gc_total * f + g_pre_f * p.vf + g_pre_r * p.vr;
  return StepGrad<T>{gc_total * (T(1) - f), g_pre_f, g_pre_r, gh * (T(1) - mr)};
}

}  // namespace srupp

#endif  // FAIRSEQ_SRUPP_RECURRENCE_STEP_H
