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
// What keeps those loads in flight, read off the SASS (benchmarks/gpu/sass_prefetch.py): the ring
// holds values as loaded (16-bit ones zero-extended in registers of their own), converted only when
// their step comes; it has one slot more than the steps loaded ahead, and a step refills the slot the
// previous step emptied; a step's body has no branch (padding is selected, the sigmoids use the fast
// reciprocal) and no exit (whole groups of RING steps, then the rest); every refill loads (at either
// end it re-reads the end step), the padding flag too. Each of those, left out, made the compiler
// copy or convert a refill soon after issuing it, and the thread wait there for memory.
// Compiled with SRUPP_STAGE_STEPS > 0, the entry points run the same steps fed through shared memory
// instead (cp.async, a few time steps a stage: "The staged kernels" below).
// Compiled at run time by NVRTC through CuPy (see cupy_kernel.py); the extern "C" entry points at
// the end instantiate every storage-type pair and k, so a compile check catches errors in all.
// The tests also compile this file for the host under cuda_host_shim.h (SRUPP_HOST_SHIM), which
// supplies the CUDA built-ins and the half conversions, and run every thread of a launch in turn.
#include "recurrence_step.h"

#ifndef SRUPP_PREFETCH
#error "compile with -DSRUPP_PREFETCH=<time steps loaded ahead> (cupy_kernel.py passes it)"
#endif
static_assert(SRUPP_PREFETCH >= 1 && SRUPP_PREFETCH <= 16, "SRUPP_PREFETCH must be 1..16");
#ifndef SRUPP_L2_AHEAD
#error "compile with -DSRUPP_L2_AHEAD=<time steps ahead asked of L2, 0: none> (cupy_kernel.py passes it)"
#endif
static_assert(SRUPP_L2_AHEAD >= 0 && SRUPP_L2_AHEAD <= 256, "SRUPP_L2_AHEAD must be 0..256");
#ifndef SRUPP_STAGE_STEPS
#error "compile with -DSRUPP_STAGE_STEPS=<time steps a stage of shared memory holds, 0: the register ring> (cupy_kernel.py passes it)"
#endif
static_assert(SRUPP_STAGE_STEPS == 0 || SRUPP_STAGE_STEPS == 4 || SRUPP_STAGE_STEPS == 8 || SRUPP_STAGE_STEPS == 16,
              "SRUPP_STAGE_STEPS must be 0, 4, 8 or 16");
#if SRUPP_STAGE_STEPS > 0 && !defined(SRUPP_STAGED_THREADS)
#error "compile with -DSRUPP_STAGED_THREADS=<threads per block of the staged kernels> (cupy_kernel.py passes it)"
#endif

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

// The skip term's storage: x's type for k=3, U's for k=4 (U[t, b, j, 3]).
template <typename TU, typename TX, int K>
struct SkipStorage {
  typedef TX type;
};
template <typename TU, typename TX>
struct SkipStorage<TU, TX, 4> {
  typedef TU type;
};

// A 16-bit value as loaded: zero-extended into a 32-bit register of its own. Held as 16-bit values,
// the ring's slots were packed two to a register, and the PRMT that merged each refill into its half
// at the loop's back edge read the loaded register, so the thread waited for the load there, one to
// two steps after issuing it whatever the prefetch depth (benchmarks/gpu/sass_prefetch.py, 2026-11-27).
template <typename T>
struct Wide {
  unsigned int bits;
};
template <typename T>
struct Loaded {  // what the ring holds of a stored T
  typedef Wide<T> type;
};
template <>
struct Loaded<float> {
  typedef float type;
};

__device__ __forceinline__ float load_raw(const float* p) { return *p; }
template <typename T>
__device__ __forceinline__ Wide<T> load_raw(const T* p) {
  return Wide<T>{(unsigned int)p->bits};
}

// One step's inputs as loaded. The ring of steps in flight holds these, not floats: a conversion
// placed at the load waits for the load there, and with it the whole prefetch (the 16-bit kernels
// did, until 2026-11-27: each step then waited a full memory round trip, about 0.7 us on an H100).
template <typename TU, typename TX, int K>
struct RawStep {
  typename Loaded<TU>::type u0, u1, u2;
  typename Loaded<typename SkipStorage<TU, TX, K>::type>::type skip;
};

template <typename TU, typename TX, int K>
__device__ __forceinline__ RawStep<TU, TX, K> load_step(const TU* __restrict__ U, const TX* __restrict__ x,
                                                        long long idx) {
  const TU* u = U + idx * K;
  RawStep<TU, TX, K> s;
  s.u0 = load_raw(u);
  s.u1 = load_raw(u + 1);
  s.u2 = load_raw(u + 2);
  if constexpr (K == 3) {
    s.skip = load_raw(x + idx);
  } else {
    s.skip = load_raw(u + 3);
  }
  return s;
}

// A slot's value as a float in a register of its own. A 16-bit value's conversion makes one; an fp32
// value gets an explicit add of +0 (which the compiler may not drop: it turns -0 into +0), since a
// plain use would keep the slot's register busy until the step's end, and the slot's refill would
// then be loaded elsewhere and copied in, a copy that waits for the load.
#ifdef SRUPP_HOST_SHIM
__device__ __forceinline__ float own_float(float v) { return v + 0.f; }
#else
__device__ __forceinline__ float own_float(float v) { return __fadd_rn(v, 0.f); }
#endif
__device__ __forceinline__ float own_float(Wide<half_t> v) { return half_bits_to_float((unsigned short)v.bits); }
__device__ __forceinline__ float own_float(Wide<bfloat16_t> v) { return __uint_as_float(v.bits << 16); }

template <typename TU, typename TX, int K>
__device__ __forceinline__ Step<float> own_floats(const RawStep<TU, TX, K>& s) {
  return Step<float>{own_float(s.u0), own_float(s.u1), own_float(s.u2), own_float(s.skip)};
}

// What a launch without a padding mask reads as its padding flag, at every step. The flag's load is then
// unconditional: a load guarded by "is there a mask" made the compiler merge its register with the 0 of
// the other case by a copy at the loop's back edge, and the copy waited for the load.
__device__ const unsigned char srupp_no_padding[1] = {0};

// The (batch, hidden unit) column this thread walks through time, with that unit's parameters;
// valid is false for the spare threads of the last block.
struct Column {
  bool valid;
  long long col, cols;              // column index in (B, d) order; number of columns B * d
  const unsigned char* pad_flags;   // this column's padding flag at step 0: mask_pad + b, or srupp_no_padding
  long long pad_stride;             // between two steps' flags: B, or 0 without a mask
  Unit<float> unit;

  __device__ __forceinline__ long long at(int t) const { return (long long)t * cols + col; }
  // The padding flag as stored, zero-extended like Wide; tested where the step uses it.
  __device__ __forceinline__ unsigned int padded(int t) const { return (unsigned int)pad_flags[t * pad_stride]; }
};

__device__ __forceinline__ Column this_threads_column(const float* __restrict__ weight_c,
                                                      const float* __restrict__ bias,
                                                      const float* __restrict__ mask_c,
                                                      const bool* __restrict__ mask_pad, int B, int d) {
  Column c;
  c.col = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  c.cols = (long long)B * d;
  c.valid = c.col < c.cols;
  if (!c.valid) return c;
  const int b = (int)(c.col / d);
  c.pad_flags = mask_pad != nullptr ? reinterpret_cast<const unsigned char*>(mask_pad) + b : srupp_no_padding;
  c.pad_stride = mask_pad != nullptr ? B : 0;
  const int j = (int)(c.col % d);
  c.unit = Unit<float>{weight_c[j], weight_c[d + j], bias[j], bias[d + j], (mask_c != nullptr) ? mask_c[c.col] : 1.f};
  return c;
}

constexpr int PREFETCH = SRUPP_PREFETCH;
// Slots of the ring of loads in flight: one more than the steps loaded ahead. Step t's loads live in slot
// t % RING; step t refills the slot step t - 1 emptied (with step t + PREFETCH), never its own. Refilling
// its own slot, the compiler hoisted the last step's refills above that slot's last reads, loaded them into
// spare registers and copied those into the slot at the loop's back edge, so the copy waited for the
// loads less than a step after issuing them (benchmarks/gpu/sass_prefetch.py).
constexpr int RING = PREFETCH + 1;

// Time steps ahead whose inputs each step asks the L2 cache to fetch (SRUPP_L2_AHEAD, a -D option). The ring's refills (PREFETCH
// steps ahead) then find them there: the compiler still consumes some refills about a step after
// issuing them (benchmarks/gpu/sass_prefetch.py), too soon for a load from memory but not for one
// from L2. A prefetch writes no register, so nothing can wait for it. 0: no prefetch.
constexpr int L2_AHEAD = SRUPP_L2_AHEAD;

// Asks L2 for the line holding p.
template <typename T>
__device__ __forceinline__ void prefetch_l2(const T* p) {
#ifdef SRUPP_HOST_SHIM
  (void)p;
#else
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#endif
}

// A refill's time step kept inside [0, L): the refills past either end re-read the end step.
__device__ __forceinline__ int last_step(int t, int L) { return t < L ? t : L - 1; }
__device__ __forceinline__ int first_step(int t) { return t > 0 ? t : 0; }

// The rest of forward step t once its inputs are floats, for the ring and the staged kernels alike: c is
// c_{t-1} in, c_t out; h_t and c_t are stored. Padding (c_t = c_{t-1}, h_t = 0) by selection, not a
// branch: the steps stay one block of straight-line code that the loads can be scheduled across.
template <typename TX>
__device__ __forceinline__ void finish_forward_step(const Step<float>& in, const Unit<float>& unit, bool pad,
                                                    long long idx, float& c, TX* __restrict__ h,
                                                    float* __restrict__ c_all) {
  float c_next = c;
  const float h_t = forward_step(in, unit, c_next);
  c = pad ? c : c_next;
  h[idx] = from_float<TX>(pad ? 0.f : h_t);
  c_all[idx] = c;
}

// Where a backward walk starts: c_{L-1}, or c0 when there is no step.
__device__ __forceinline__ float last_cell_state(const Column& column, const float* __restrict__ c_all,
                                                 const float* __restrict__ c0, int L) {
  return (L > 0) ? c_all[column.at(L - 1)] : c0[column.col];
}

// Where a backward walk ends: dL/dc0 and the column's parameter sums ((2, B, d) each, summed over B by the caller).
__device__ __forceinline__ void store_column_grads(const Column& column, float gc, const UnitGrad<float>& sums,
                                                   float* __restrict__ grad_c0, float* __restrict__ grad_wc,
                                                   float* __restrict__ grad_bias) {
  const long long col = column.col, cols = column.cols;
  grad_c0[col] = gc;
  grad_wc[col] = sums.vf;
  grad_wc[cols + col] = sums.vr;
  grad_bias[col] = sums.bf;
  grad_bias[cols + col] = sums.br;
}

// The rest of backward step t once its inputs, c_{t-1} (c_prev), c_t (c) and dL/dh_t (gh) are floats:
// gc is dL/dc_t in, dL/dc_{t-1} out; the parameter sums grow by the step's share; grad_U and grad_x of
// step t are stored. Padding by selection, as in forward: c_t = c_{t-1} and h_t = 0, so the state
// gradient passes through untouched and the step's input gradients are 0.
template <typename TU, typename TX, int K>
__device__ __forceinline__ void finish_backward_step(const Step<float>& in, const Unit<float>& unit, float c_prev,
                                                     float c, float gh, bool pad, long long idx, float& gc,
                                                     UnitGrad<float>& sums, TU* __restrict__ grad_U,
                                                     TX* __restrict__ grad_x) {
  float gc_prev = gc;
  UnitGrad<float> step_sums = sums;
  StepGrad<float> g = backward_step(in, unit, c_prev, c, gh, gc_prev, step_sums);
  if (pad) g = StepGrad<float>{0.f, 0.f, 0.f, 0.f};
  gc = pad ? gc : gc_prev;
  sums = pad ? sums : step_sums;
  TU* gu = grad_U + idx * K;
  gu[0] = from_float<TU>(g.u0);
  gu[1] = from_float<TU>(g.u1);
  gu[2] = from_float<TU>(g.u2);
  if (K == 3) {
    grad_x[idx] = from_float<TX>(g.skip);
  } else {
    gu[3] = from_float<TU>(g.skip);
  }
}

// Everything forward step t reads, as stored; none of it depends on the carried cell state.
template <typename TU, typename TX, int K>
struct ForwardLoads {
  RawStep<TU, TX, K> s;
  unsigned int pad;
};

template <typename TU, typename TX, int K>
__device__ __forceinline__ ForwardLoads<TU, TX, K> load_forward(const TU* __restrict__ U, const TX* __restrict__ x,
                                                                const Column& column, int t) {
  return ForwardLoads<TU, TX, K>{load_step<TU, TX, K>(U, x, column.at(t)), column.padded(t)};
}

template <typename TU, typename TX, int K>
__device__ void forward(const TU* __restrict__ U, const TX* __restrict__ x, const float* __restrict__ weight_c,
                        const float* __restrict__ bias, const float* __restrict__ c0,
                        const float* __restrict__ mask_c, const bool* __restrict__ mask_pad,
                        TX* __restrict__ h, float* __restrict__ c_all, int L, int B, int d) {
  const Column column = this_threads_column(weight_c, bias, mask_c, mask_pad, B, d);
  if (!column.valid) return;
  float c = c0[column.col];
  // ahead[t % RING] holds step t. Every refill loads (the last steps re-read step L-1): a conditional
  // one makes the compiler copy the slot's old value around it, and the copy waits for the load.
  ForwardLoads<TU, TX, K> ahead[RING];
#pragma unroll
  for (int i = 0; i < PREFETCH; ++i) {
    if (L > 0) ahead[i] = load_forward<TU, TX, K>(U, x, column, last_step(i, L));
  }
  // Step t, whose loads are in ahead[i] (i = t % RING, a constant once the loops are unrolled).
  auto step = [&](int t, int i) {
    ahead[(i + RING - 1) % RING] = load_forward<TU, TX, K>(U, x, column, last_step(t + PREFETCH, L));
    const Step<float> s = own_floats(ahead[i].s);
    const bool pad = ahead[i].pad != 0u;
    if constexpr (L2_AHEAD > 0) {
      const long long ahead_idx = column.at(last_step(t + L2_AHEAD, L));
      prefetch_l2(U + ahead_idx * K);
      if constexpr (K == 3) prefetch_l2(x + ahead_idx);
    }
    finish_forward_step(s, column.unit, pad, column.at(t), c, h, c_all);
  };
  // Whole groups of RING steps, with no exit inside a group (an exit between steps made the compiler
  // copy each refill into its slot at once), then the last L % RING steps.
  int t0 = 0;
  for (; t0 + RING <= L; t0 += RING) {
#pragma unroll
    for (int i = 0; i < RING; ++i) step(t0 + i, i);
  }
#pragma unroll
  for (int i = 0; i < RING; ++i) {
    if (t0 + i < L) step(t0 + i, i);
  }
}

// Everything backward step t reads, as stored: its inputs, dL/dh_t and c_{t-1}. c_t is the previous
// iteration's c_{t-1} (time runs backwards), so each saved state is read once.
template <typename TU, typename TX, int K>
struct BackwardLoads {
  RawStep<TU, TX, K> s;
  typename Loaded<TX>::type grad_h;
  float c_prev;
  unsigned int pad;
};

template <typename TU, typename TX, int K>
__device__ __forceinline__ BackwardLoads<TU, TX, K> load_backward(
    const TU* __restrict__ U, const TX* __restrict__ x, const float* __restrict__ c0,
    const float* __restrict__ c_all, const TX* __restrict__ grad_h,
    const Column& column, int t) {
  const long long idx = column.at(t);
  return BackwardLoads<TU, TX, K>{load_step<TU, TX, K>(U, x, idx), load_raw(grad_h + idx),
                                  (t > 0) ? c_all[idx - column.cols] : c0[column.col], column.padded(t)};
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
  const Column column = this_threads_column(weight_c, bias, mask_c, mask_pad, B, d);
  if (!column.valid) return;
  float gc = grad_c_last[column.col];
  float c = last_cell_state(column, c_all, c0, L);
  UnitGrad<float> sums{0.f, 0.f, 0.f, 0.f};
  // ahead[n % RING] holds step L - 1 - n, the n-th step walked (always loaded, the first steps
  // re-reading step 0: see forward).
  BackwardLoads<TU, TX, K> ahead[RING];
#pragma unroll
  for (int i = 0; i < PREFETCH; ++i) {
    if (L > 0) ahead[i] = load_backward<TU, TX, K>(U, x, c0, c_all, grad_h, column, first_step(L - 1 - i));
  }
  // Step t, whose loads are in ahead[i]; as in forward, it refills the slot the previous step emptied.
  auto step = [&](int t, int i) {
    ahead[(i + RING - 1) % RING] =
        load_backward<TU, TX, K>(U, x, c0, c_all, grad_h, column, first_step(t - PREFETCH));
    const Step<float> s = own_floats(ahead[i].s);
    const float gh = own_float(ahead[i].grad_h), c_prev = own_float(ahead[i].c_prev);
    const bool pad = ahead[i].pad != 0u;
    if constexpr (L2_AHEAD > 0) {
      const long long ahead_idx = column.at(first_step(t - L2_AHEAD));
      prefetch_l2(U + ahead_idx * K);
      if constexpr (K == 3) prefetch_l2(x + ahead_idx);
      prefetch_l2(grad_h + ahead_idx);
      prefetch_l2(c_all + (ahead_idx >= column.cols ? ahead_idx - column.cols : ahead_idx));
    }
    finish_backward_step<TU, TX, K>(s, column.unit, c_prev, c, gh, pad, column.at(t), gc, sums, grad_U, grad_x);
    c = c_prev;
  };
  int n0 = 0;
  for (; n0 + RING <= L; n0 += RING) {
#pragma unroll
    for (int i = 0; i < RING; ++i) step(L - 1 - (n0 + i), i);
  }
#pragma unroll
  for (int i = 0; i < RING; ++i) {
    if (n0 + i < L) step(L - 1 - (n0 + i), i);
  }
  store_column_grads(column, gc, sums, grad_c0, grad_wc, grad_bias);
}


// ---------------------------------------------------------------------------------------------------
// The staged kernels (SRUPP_STAGE_STEPS > 0): the same steps, fed through shared memory.
//
// Each thread copies its column's inputs of STAGE_STEPS time steps at a time (a stage) from global to
// shared memory with cp.async (sm_80 and later), STAGES - 1 stages ahead of the stage it computes, and
// its steps read them from there. A cp.async writes no register, so nothing the compiler schedules
// can wait for it before cp.async.wait_group, once a stage: the register ring's loads are at the mercy
// of ptxas's scheduling (benchmarks/gpu/sass_prefetch.py), these are not, and how far ahead they run
// does not cost registers. A thread reads only what it copied itself: no barrier between threads (so
// the host shim can still run the threads one after another), and a thread's own copies are visible to
// it once its wait returns.
//
// cp.async copies aligned 4-byte words: a span of values is staged as the words that hold it (a 16-bit
// value can start 2 bytes into a word, a flag byte anywhere) and read back at its byte offset. A word
// a span does not need is copied with source size 0, which reads nothing and writes zeros; a word that
// holds a needed byte lies inside the allocation's page, so reading its other bytes is safe.
// Layout: word w of step s of stage g of this thread at
// buffer[((g * STAGE_STEPS + s) * WORDS + w) * STAGED_THREADS + threadIdx.x], so the threads of a warp
// touch 32 consecutive words (no bank conflicts). STAGED_THREADS * STAGE_STEPS is fixed by the launcher
// (cupy_kernel.STAGED_THREAD_STEPS) so that a block's three stages fit the 48 KB of static shared memory.
constexpr int STAGE_STEPS = SRUPP_STAGE_STEPS;  // 0: the register ring above
constexpr int STAGES = 3;
#if SRUPP_STAGE_STEPS > 0
constexpr int STAGED_THREADS = SRUPP_STAGED_THREADS;
#else
constexpr int STAGED_THREADS = 1;
#endif

// Words a span of N values of T takes when staged: a 16-bit span may start 2 bytes into its first word.
template <typename T, int N>
struct SpanWords {
  static constexpr int value = sizeof(T) == 4 ? N : sizeof(T) == 2 ? (2 * N + 2 + 3) / 4 : 1;
};
static_assert(SpanWords<half_t, 3>::value == 2 && SpanWords<bfloat16_t, 4>::value == 3 &&
                  SpanWords<float, 3>::value == 3 && SpanWords<unsigned char, 1>::value == 1,
              "staged span sizes");

// Copies `bytes` (4 or 0: zeros) of the word at src into shared memory at dst, without waiting.
__device__ __forceinline__ void copy_word_async(unsigned int* dst, const unsigned int* src, int bytes) {
#ifdef SRUPP_HOST_SHIM
  srupp_shim::copy_word_async(dst, src, bytes);
#elif __CUDA_ARCH__ >= 800
  unsigned int shared_address;
  asm("{ .reg .u64 p; cvta.to.shared.u64 p, %1; cvt.u32.u64 %0, p; }" : "=r"(shared_address) : "l"(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(shared_address), "l"(src), "r"(bytes)
               : "memory");
#else
  *dst = bytes == 4 ? *src : 0u;  // before sm_80: a plain copy, which waits for its load
#endif
}

// Closes the group of copies issued since the last one: one stage.
__device__ __forceinline__ void commit_stage() {
#ifdef SRUPP_HOST_SHIM
  srupp_shim::commit_group();
#elif __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// Waits until at most N of this thread's stages are still being copied.
template <int N>
__device__ __forceinline__ void wait_stages() {
#ifdef SRUPP_HOST_SHIM
  srupp_shim::wait_group(N);
#elif __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

__device__ __forceinline__ int byte_in_word(const void* p) {
  return (int)(reinterpret_cast<unsigned long long>(p) & 3ull);
}

// Stages the N values of T at src: its words at first, first + STAGED_THREADS, ...
template <typename T, int N>
__device__ __forceinline__ void stage_span(unsigned int* first, const T* src) {
  const unsigned int* word =
      reinterpret_cast<const unsigned int*>(reinterpret_cast<unsigned long long>(src) & ~3ull);
  const int used = (byte_in_word(src) + N * (int)sizeof(T) + 3) / 4;
#pragma unroll
  for (int i = 0; i < SpanWords<T, N>::value; ++i) {
    copy_word_async(first + i * STAGED_THREADS, word + (i < used ? i : 0), i < used ? 4 : 0);
  }
}

// Value j of a span staged from src, as the register ring holds it (Loaded<T>).
__device__ __forceinline__ float staged_value(const unsigned int* first, const float* src, int j) {
  (void)src;
  return __uint_as_float(first[j * STAGED_THREADS]);
}
template <typename T>
__device__ __forceinline__ Wide<T> staged_value(const unsigned int* first, const T* src, int j) {
  const int at = byte_in_word(src) + 2 * j;
  return Wide<T>{(first[(at >> 2) * STAGED_THREADS] >> ((at & 2) * 8)) & 0xffffu};
}
__device__ __forceinline__ unsigned int staged_flag(const unsigned int* first, const unsigned char* src) {
  return (first[0] >> (byte_in_word(src) * 8)) & 0xffu;
}

// Word offsets within one step's record: U's K values, x (k=3), then the direction's own.
template <typename TU, typename TX, int K>
struct StagedInputs {
  static constexpr int U_WORDS = SpanWords<TU, K>::value;
  static constexpr int SKIP = U_WORDS;  // x's word(s), k=3
  static constexpr int END = U_WORDS + (K == 3 ? SpanWords<TX, 1>::value : 0);
};

template <typename TU, typename TX, int K>
__device__ __forceinline__ void stage_inputs(unsigned int* record, const TU* __restrict__ U,
                                             const TX* __restrict__ x, long long idx) {
  stage_span<TU, K>(record, U + idx * K);
  if constexpr (K == 3) stage_span<TX, 1>(record + StagedInputs<TU, TX, K>::SKIP * STAGED_THREADS, x + idx);
}

template <typename TU, typename TX, int K>
__device__ __forceinline__ Step<float> staged_inputs(const unsigned int* record, const TU* __restrict__ U,
                                                     const TX* __restrict__ x, long long idx) {
  const TU* u = U + idx * K;
  float skip;
  if constexpr (K == 3) {
    skip = own_float(staged_value(record + StagedInputs<TU, TX, K>::SKIP * STAGED_THREADS, x + idx, 0));
  } else {
    skip = own_float(staged_value(record, u, 3));
  }
  return Step<float>{own_float(staged_value(record, u, 0)), own_float(staged_value(record, u, 1)),
                     own_float(staged_value(record, u, 2)), skip};
}

// This thread's record of step s of stage g in a block's buffer of records of WORDS words.
template <int WORDS>
__device__ __forceinline__ unsigned int* staged_record(unsigned int* buffer, int g, int s) {
  return buffer + (g * STAGE_STEPS + s) * WORDS * STAGED_THREADS + threadIdx.x;
}

// The padding flag of step t. A launch without a mask stages nothing (a branch the whole launch takes
// alike) and reads 0: a fifth of the forward's copies saved.
__device__ __forceinline__ void stage_padding(unsigned int* word, const Column& column, int t) {
  if (column.pad_stride != 0) stage_span<unsigned char, 1>(word, column.pad_flags + t * column.pad_stride);
}
__device__ __forceinline__ unsigned int staged_padding(const unsigned int* word, const Column& column, int t) {
  return column.pad_stride != 0 ? staged_flag(word, column.pad_flags + t * column.pad_stride) : 0u;
}

// L > 0 steps in stages: copy_stage(g) stages the steps of stage g, step(g, s) runs step s of stage g.
// Stages 0 .. STAGES - 2 are copied first; before computing stage g the thread copies stage g + STAGES - 1
// into the buffer of the stage it computed last, whose values it has read, then waits for stage g. A stage
// past the end is an empty group (a launch of one step, as in decoding, copies one stage, not three).
// Whole stages run with no exit inside; the last may be partial.
template <typename CopyStage, typename StepFn>
__device__ __forceinline__ void walk_stages(int L, CopyStage& copy_stage, StepFn& step) {
  const int stages = (L + STAGE_STEPS - 1) / STAGE_STEPS;
  auto copy = [&](int g) {
    if (g < stages) copy_stage(g);
    commit_stage();
  };
#pragma unroll
  for (int g = 0; g < STAGES - 1; ++g) copy(g);
  for (int g = 0; g < stages; ++g) {
    copy(g + STAGES - 1);
    wait_stages<STAGES - 1>();
    if ((g + 1) * STAGE_STEPS <= L) {
#pragma unroll
      for (int s = 0; s < STAGE_STEPS; ++s) step(g, s);
    } else {
#pragma unroll
      for (int s = 0; s < STAGE_STEPS; ++s) {
        if (g * STAGE_STEPS + s < L) step(g, s);
      }
    }
  }
  wait_stages<0>();
}

template <typename TU, typename TX, int K>
__device__ void forward_staged(const TU* __restrict__ U, const TX* __restrict__ x, const float* __restrict__ weight_c,
                               const float* __restrict__ bias, const float* __restrict__ c0,
                               const float* __restrict__ mask_c, const bool* __restrict__ mask_pad,
                               TX* __restrict__ h, float* __restrict__ c_all, int L, int B, int d) {
  typedef StagedInputs<TU, TX, K> In;
  constexpr int PAD = In::END, WORDS = In::END + 1;
  __shared__ unsigned int buffer[STAGES * STAGE_STEPS * WORDS * STAGED_THREADS];
  static_assert(sizeof(buffer) <= 48 * 1024, "a block's stages exceed 48 KB of static shared memory");
  const Column column = this_threads_column(weight_c, bias, mask_c, mask_pad, B, d);
  if (!column.valid || L <= 0) return;
  // Stage g % STAGES holds steps g * STAGE_STEPS ...; steps past the end re-read step L - 1.
  auto copy_stage = [&](int g) {
#pragma unroll 1
    for (int s = 0; s < STAGE_STEPS; ++s) {
      const int t = last_step(g * STAGE_STEPS + s, L);
      unsigned int* record = staged_record<WORDS>(buffer, g % STAGES, s);
      stage_inputs<TU, TX, K>(record, U, x, column.at(t));
      stage_padding(record + PAD * STAGED_THREADS, column, t);
    }
  };
  float c = c0[column.col];
  auto step = [&](int g, int s) {
    const int t = g * STAGE_STEPS + s;
    const long long idx = column.at(t);
    const unsigned int* record = staged_record<WORDS>(buffer, g % STAGES, s);
    const Step<float> in = staged_inputs<TU, TX, K>(record, U, x, idx);
    const bool pad = staged_padding(record + PAD * STAGED_THREADS, column, t) != 0u;
    finish_forward_step(in, column.unit, pad, idx, c, h, c_all);
  };
  walk_stages(L, copy_stage, step);
}

template <typename TU, typename TX, int K>
__device__ void backward_staged(const TU* __restrict__ U, const TX* __restrict__ x,
                                const float* __restrict__ weight_c, const float* __restrict__ bias,
                                const float* __restrict__ c0, const float* __restrict__ mask_c,
                                const bool* __restrict__ mask_pad, const float* __restrict__ c_all,
                                const TX* __restrict__ grad_h, const float* __restrict__ grad_c_last,
                                TU* __restrict__ grad_U, TX* __restrict__ grad_x, float* __restrict__ grad_wc,
                                float* __restrict__ grad_bias, float* __restrict__ grad_c0, int L, int B, int d) {
  typedef StagedInputs<TU, TX, K> In;
  constexpr int GRAD_H = In::END, C_PREV = GRAD_H + SpanWords<TX, 1>::value, PAD = C_PREV + 1, WORDS = PAD + 1;
  __shared__ unsigned int buffer[STAGES * STAGE_STEPS * WORDS * STAGED_THREADS];
  static_assert(sizeof(buffer) <= 48 * 1024, "a block's stages exceed 48 KB of static shared memory");
  const Column column = this_threads_column(weight_c, bias, mask_c, mask_pad, B, d);
  if (!column.valid) return;
  const long long col = column.col, cols = column.cols;
  float gc = grad_c_last[col];
  float c = last_cell_state(column, c_all, c0, L);
  UnitGrad<float> sums{0.f, 0.f, 0.f, 0.f};
  // The n-th step walked is step L - 1 - n; stage g % STAGES holds walked steps g * STAGE_STEPS ...;
  // those past the start re-read step 0.
  auto copy_stage = [&](int g) {
#pragma unroll 1
    for (int s = 0; s < STAGE_STEPS; ++s) {
      const int t = first_step(L - 1 - (g * STAGE_STEPS + s));
      const long long idx = column.at(t);
      unsigned int* record = staged_record<WORDS>(buffer, g % STAGES, s);
      stage_inputs<TU, TX, K>(record, U, x, idx);
      stage_span<TX, 1>(record + GRAD_H * STAGED_THREADS, grad_h + idx);
      stage_span<float, 1>(record + C_PREV * STAGED_THREADS, (t > 0) ? c_all + (idx - cols) : c0 + col);
      stage_padding(record + PAD * STAGED_THREADS, column, t);
    }
  };
  auto step = [&](int g, int s) {
    const int t = L - 1 - (g * STAGE_STEPS + s);
    const long long idx = column.at(t);
    const unsigned int* record = staged_record<WORDS>(buffer, g % STAGES, s);
    const Step<float> in = staged_inputs<TU, TX, K>(record, U, x, idx);
    const float gh = own_float(staged_value(record + GRAD_H * STAGED_THREADS, grad_h + idx, 0));
    const float c_prev = staged_value(record + C_PREV * STAGED_THREADS, c0, 0);
    const bool pad = staged_padding(record + PAD * STAGED_THREADS, column, t) != 0u;
    finish_backward_step<TU, TX, K>(in, column.unit, c_prev, c, gh, pad, idx, gc, sums, grad_U, grad_x);
    c = c_prev;
  };
  if (L > 0) walk_stages(L, copy_stage, step);
  store_column_grads(column, gc, sums, grad_c0, grad_wc, grad_bias);
}

// The entry points' bodies: the staged kernels when compiled with SRUPP_STAGE_STEPS > 0, else the ring.
template <typename TU, typename TX, int K, typename... Args>
__device__ __forceinline__ void run_forward(Args... args) {
  if constexpr (STAGE_STEPS > 0) {
    forward_staged<TU, TX, K>(args...);
  } else {
    forward<TU, TX, K>(args...);
  }
}
template <typename TU, typename TX, int K, typename... Args>
__device__ __forceinline__ void run_backward(Args... args) {
  if constexpr (STAGE_STEPS > 0) {
    backward_staged<TU, TX, K>(args...);
  } else {
    backward<TU, TX, K>(args...);
  }
}

}  // namespace srupp

#if SRUPP_STAGE_STEPS > 0
#define SRUPP_LAUNCH_BOUNDS __launch_bounds__(SRUPP_STAGED_THREADS)
#else
#define SRUPP_LAUNCH_BOUNDS
#endif

#define SRUPP_ENTRY_POINTS(SUFFIX, TU, TX, K)                                                          \
  extern "C" __global__ void SRUPP_LAUNCH_BOUNDS srupp_forward_##SUFFIX(                             \
      const TU* U, const TX* x, const float* weight_c, const float* bias, const float* c0,           \
      const float* mask_c, const bool* mask_pad, TX* h, float* c_all, int L, int B, int d) {         \
    srupp::run_forward<TU, TX, K>(U, x, weight_c, bias, c0, mask_c, mask_pad, h, c_all, L, B, d);    \
  }                                                                                                  \
  extern "C" __global__ void SRUPP_LAUNCH_BOUNDS srupp_backward_##SUFFIX(                            \
      const TU* U, const TX* x, const float* weight_c, const float* bias, const float* c0,           \
      const float* mask_c, const bool* mask_pad, const float* c_all, const TX* grad_h,               \
      const float* grad_c_last, TU* grad_U, TX* grad_x, float* grad_wc, float* grad_bias,            \
      float* grad_c0, int L, int B, int d) {                                                         \
    srupp::run_backward<TU, TX, K>(U, x, weight_c, bias, c0, mask_c, mask_pad, c_all, grad_h, grad_c_last, \
                                   grad_U, grad_x, grad_wc, grad_bias, grad_c0, L, B, d);            \
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
