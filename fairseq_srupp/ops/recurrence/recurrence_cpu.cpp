// Fused CPU forward and backward of the SRU++ elementwise recurrence (spec §1.4).
//
// Layout: U is (L, B, d, k) contiguous, every other per-position tensor is (L, B, d).
// Work is split into (batch row, chunk of hidden units) tiles; tiles are independent, so
// threads take tiles and walk time with their own running state. Inside a tile the time loop
// is outer and the unit loop inner: memory streams row by row, padding is a per-row branch
// outside the inner loop, and the inner loop is branch-free so the compiler can vectorise it.
// k, padding and dropout are template parameters for the same reason.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

// glibc's vector expf / exp (libmvec) are declared SIMD-callable only under -ffast-math, which we
// do not use: it would let GCC assume no NaN / inf. Declaring them here lets the `omp simd` loops
// call them with IEEE semantics kept (-fno-math-errno is all vectorising a call needs).
#if defined(__GLIBC__) && defined(__x86_64__)
extern "C" __attribute__((__simd__("notinbranch"))) float expf(float) noexcept;
extern "C" __attribute__((__simd__("notinbranch"))) double exp(double) noexcept;
#endif

#include "recurrence_step.h"

namespace {

constexpr int64_t kChunk = 256;  // hidden units per tile

struct Shape {
  int64_t L, B, d;
  int64_t tiles_per_row() const { return (d + kChunk - 1) / kChunk; }
};

template <typename T, int K, bool PAD, bool DROP>
void forward_impl(const T* __restrict__ U, const T* __restrict__ x, const T* __restrict__ weight_c,
                  const T* __restrict__ bias, const T* __restrict__ c0, const T* __restrict__ mask_c,
                  const bool* __restrict__ mask_pad, T* __restrict__ h, T* __restrict__ c_all, Shape s) {
  const int64_t tiles = s.B * s.tiles_per_row();
  at::parallel_for(0, tiles, 1, [&](int64_t tile_begin, int64_t tile_end) {
    std::vector<T> c_buf(kChunk);
    T* __restrict__ c = c_buf.data();
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t b = tile / s.tiles_per_row();
      const int64_t j0 = (tile % s.tiles_per_row()) * kChunk;
      const int64_t n = std::min(kChunk, s.d - j0);
      const T* vf = weight_c + j0;
      const T* vr = weight_c + s.d + j0;
      const T* bf = bias + j0;
      const T* br = bias + s.d + j0;
      const T* m = DROP ? mask_c + b * s.d + j0 : nullptr;
      for (int64_t j = 0; j < n; ++j) c[j] = c0[b * s.d + j0 + j];
      for (int64_t t = 0; t < s.L; ++t) {
        const int64_t row = (t * s.B + b) * s.d + j0;
        T* __restrict__ h_row = h + row;
        T* __restrict__ c_row = c_all + row;
        if (PAD && mask_pad[t * s.B + b]) {
          for (int64_t j = 0; j < n; ++j) {
            h_row[j] = T(0);
            c_row[j] = c[j];
          }
          continue;
        }
        const T* __restrict__ u = U + row * K;
        const T* __restrict__ x_row = (K == 3) ? x + row : nullptr;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          const srupp::Step<T> step{u[j * K], u[j * K + 1], u[j * K + 2], (K == 3) ? x_row[j] : u[j * K + 3]};
          const srupp::Unit<T> unit{vf[j], vr[j], bf[j], br[j], DROP ? m[j] : T(1)};
          T c_j = c[j];
          h_row[j] = srupp::forward_step(step, unit, c_j);
          c_row[j] = c_j;
          c[j] = c_j;
        }
      }
    }
  });
}

// grad_wc and grad_bias are per batch row, (2, B, d): the caller sums over B.
template <typename T, int K, bool PAD, bool DROP>
void backward_impl(const T* __restrict__ U, const T* __restrict__ x, const T* __restrict__ weight_c,
                   const T* __restrict__ bias, const T* __restrict__ c0, const T* __restrict__ mask_c,
                   const bool* __restrict__ mask_pad, const T* __restrict__ c_all,
                   const T* __restrict__ grad_h, const T* __restrict__ grad_c_last,
                   T* __restrict__ grad_U, T* __restrict__ grad_x, T* __restrict__ grad_wc,
                   T* __restrict__ grad_bias, T* __restrict__ grad_c0, Shape s) {
  const int64_t tiles = s.B * s.tiles_per_row();
  const int64_t cols = s.B * s.d;
  at::parallel_for(0, tiles, 1, [&](int64_t tile_begin, int64_t tile_end) {
    std::vector<T> buf(5 * kChunk);
    T* __restrict__ gc = buf.data();
    T* __restrict__ g_vf = gc + kChunk;
    T* __restrict__ g_vr = g_vf + kChunk;
    T* __restrict__ g_bf = g_vr + kChunk;
    T* __restrict__ g_br = g_bf + kChunk;
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t b = tile / s.tiles_per_row();
      const int64_t j0 = (tile % s.tiles_per_row()) * kChunk;
      const int64_t n = std::min(kChunk, s.d - j0);
      const int64_t col0 = b * s.d + j0;
      const T* vf = weight_c + j0;
      const T* vr = weight_c + s.d + j0;
      const T* bf = bias + j0;
      const T* br = bias + s.d + j0;
      const T* m = DROP ? mask_c + col0 : nullptr;
      for (int64_t j = 0; j < n; ++j) {
        gc[j] = grad_c_last[col0 + j];
        g_vf[j] = g_vr[j] = g_bf[j] = g_br[j] = T(0);
      }
      for (int64_t t = s.L - 1; t >= 0; --t) {
        const int64_t row = (t * s.B + b) * s.d + j0;
        T* __restrict__ gu = grad_U + row * K;
        if (PAD && mask_pad[t * s.B + b]) {
          // c_t = c_{t-1} and h_t = 0: the state gradient passes through untouched.
          for (int64_t q = 0; q < n * K; ++q) gu[q] = T(0);
          if (K == 3) {
            for (int64_t j = 0; j < n; ++j) grad_x[row + j] = T(0);
          }
          continue;
        }
        const T* __restrict__ u = U + row * K;
        const T* __restrict__ c_prev = (t > 0) ? c_all + row - cols : c0 + col0;
        const T* __restrict__ c_row = c_all + row;
        const T* __restrict__ gh_row = grad_h + row;
        const T* __restrict__ x_row = (K == 3) ? x + row : nullptr;
        T* __restrict__ gx_row = (K == 3) ? grad_x + row : nullptr;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          const srupp::Step<T> step{u[j * K], u[j * K + 1], u[j * K + 2], (K == 3) ? x_row[j] : u[j * K + 3]};
          const srupp::Unit<T> unit{vf[j], vr[j], bf[j], br[j], DROP ? m[j] : T(1)};
          srupp::UnitGrad<T> sums{g_vf[j], g_vr[j], g_bf[j], g_br[j]};
          T gc_j = gc[j];
          const srupp::StepGrad<T> g = srupp::backward_step(step, unit, c_prev[j], c_row[j], gh_row[j], gc_j, sums);
          gu[j * K] = g.u0;
          gu[j * K + 1] = g.u1;
          gu[j * K + 2] = g.u2;
          if (K == 3) {
            gx_row[j] = g.skip;
          } else {
            gu[j * K + 3] = g.skip;
          }
          g_vf[j] = sums.vf;
          g_vr[j] = sums.vr;
          g_bf[j] = sums.bf;
          g_br[j] = sums.br;
          gc[j] = gc_j;
        }
      }
      for (int64_t j = 0; j < n; ++j) {
        grad_c0[col0 + j] = gc[j];
        grad_wc[col0 + j] = g_vf[j];
        grad_wc[cols + col0 + j] = g_vr[j];
        grad_bias[col0 + j] = g_bf[j];
        grad_bias[cols + col0 + j] = g_br[j];
      }
    }
  });
}

template <typename T>
const T* data_or_null(const std::optional<torch::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->data_ptr<T>() : nullptr;
}

const bool* pad_or_null(const std::optional<torch::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->data_ptr<bool>() : nullptr;
}

// Calls fn.template operator()<K, PAD, DROP>() with the runtime flags turned into template arguments.
template <typename Fn>
void dispatch_variant(int64_t k, bool pad, bool drop, Fn&& fn) {
  TORCH_CHECK(k == 3 || k == 4, "k must be 3 or 4, got ", k);
  if (k == 3) {
    if (pad) {
      drop ? fn.template operator()<3, true, true>() : fn.template operator()<3, true, false>();
    } else {
      drop ? fn.template operator()<3, false, true>() : fn.template operator()<3, false, false>();
    }
  } else {
    if (pad) {
      drop ? fn.template operator()<4, true, true>() : fn.template operator()<4, true, false>();
    } else {
      drop ? fn.template operator()<4, false, true>() : fn.template operator()<4, false, false>();
    }
  }
}

std::vector<torch::Tensor> forward(torch::Tensor U, std::optional<torch::Tensor> x,
                                   torch::Tensor weight_c, torch::Tensor bias, torch::Tensor c0,
                                   std::optional<torch::Tensor> mask_c,
                                   std::optional<torch::Tensor> mask_pad, int64_t k) {
  const Shape s{U.size(0), U.size(1), c0.size(-1)};
  auto h = torch::empty({s.L, s.B, s.d}, U.options());
  auto c_all = torch::empty({s.L, s.B, s.d}, U.options());
  const bool* pad = pad_or_null(mask_pad);
  AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "srupp_recurrence_forward", [&] {
    const scalar_t* m = data_or_null<scalar_t>(mask_c);
    dispatch_variant(k, pad != nullptr, m != nullptr, [&]<int K, bool PAD, bool DROP>() {
      forward_impl<scalar_t, K, PAD, DROP>(U.data_ptr<scalar_t>(), data_or_null<scalar_t>(x),
                                           weight_c.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
                                           c0.data_ptr<scalar_t>(), m, pad, h.data_ptr<scalar_t>(),
                                           c_all.data_ptr<scalar_t>(), s);
    });
  });
  return {h, c_all};
}

std::vector<torch::Tensor> backward(torch::Tensor U, std::optional<torch::Tensor> x,
                                    torch::Tensor weight_c, torch::Tensor bias, torch::Tensor c0,
                                    std::optional<torch::Tensor> mask_c,
                                    std::optional<torch::Tensor> mask_pad, torch::Tensor c_all,
                                    torch::Tensor grad_h, torch::Tensor grad_c_last, int64_t k) {
  const Shape s{U.size(0), U.size(1), c0.size(-1)};
  auto grad_U = torch::empty_like(U);
  auto grad_x = (k == 3) ? torch::empty({s.L, s.B, s.d}, U.options()) : torch::Tensor();
  auto grad_wc = torch::empty({2, s.B, s.d}, U.options());
  auto grad_bias = torch::empty({2, s.B, s.d}, U.options());
  auto grad_c0 = torch::empty({s.B, s.d}, U.options());
  const bool* pad = pad_or_null(mask_pad);
  AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "srupp_recurrence_backward", [&] {
    const scalar_t* m = data_or_null<scalar_t>(mask_c);
    dispatch_variant(k, pad != nullptr, m != nullptr, [&]<int K, bool PAD, bool DROP>() {
      backward_impl<scalar_t, K, PAD, DROP>(
          U.data_ptr<scalar_t>(), data_or_null<scalar_t>(x), weight_c.data_ptr<scalar_t>(),
          bias.data_ptr<scalar_t>(), c0.data_ptr<scalar_t>(), m, pad, c_all.data_ptr<scalar_t>(),
          grad_h.data_ptr<scalar_t>(), grad_c_last.data_ptr<scalar_t>(), grad_U.data_ptr<scalar_t>(),
          (K == 3) ? grad_x.data_ptr<scalar_t>() : nullptr, grad_wc.data_ptr<scalar_t>(),
          grad_bias.data_ptr<scalar_t>(), grad_c0.data_ptr<scalar_t>(), s);
    });
  });
  return {grad_U, grad_x, grad_wc.sum(1).view({2 * s.d}), grad_bias.sum(1).view({2 * s.d}), grad_c0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "SRU++ elementwise recurrence forward (CPU)");
  m.def("backward", &backward, "SRU++ elementwise recurrence backward (CPU)");
}
