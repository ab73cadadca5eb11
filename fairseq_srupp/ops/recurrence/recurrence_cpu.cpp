// Fused CPU forward and backward of the SRU++ elementwise recurrence (spec §1.4).
//
// Layout: U is (L, B, d, k) contiguous, every other per-position tensor is (L, B, d).
// A "column" is one (batch, hidden unit) pair; columns are independent, so threads
// split the B*d columns and each walks time with its own running state. Within a
// thread the time loop is outer and the column loop inner, so memory is streamed
// row by row instead of striding through L rows per column.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

template <typename T>
inline T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}

template <typename T>
void forward_impl(const T* U, const T* x, const T* weight_c, const T* bias, const T* c0,
                  const T* mask_c, const bool* mask_pad, T* h, T* c_all,
                  int64_t L, int64_t B, int64_t d, int64_t k) {
  const int64_t cols = B * d;
  at::parallel_for(0, cols, 64, [&](int64_t begin, int64_t end) {
    std::vector<T> c(c0 + begin, c0 + end);
    for (int64_t t = 0; t < L; ++t) {
      const int64_t row = t * cols;
      for (int64_t col = begin; col < end; ++col) {
        const int64_t idx = row + col;
        const int64_t j = col % d;
        T& c_run = c[col - begin];
        if (mask_pad != nullptr && mask_pad[t * B + col / d]) {
          h[idx] = T(0);
          c_all[idx] = c_run;
          continue;
        }
        const T* u = U + idx * k;
        const T f = sigmoid(u[1] + weight_c[j] * c_run + bias[j]);
        const T r = sigmoid(u[2] + weight_c[d + j] * c_run + bias[d + j]);
        c_run = u[0] + (c_run - u[0]) * f;
        const T s = (k == 3) ? x[idx] : u[3];
        const T m = (mask_c != nullptr) ? mask_c[col] : T(1);
        h[idx] = s + (c_run - s) * m * r;
        c_all[idx] = c_run;
      }
    }
  });
}

// grad_wc and grad_bias are per column, (2, B, d): the caller sums over B.
template <typename T>
void backward_impl(const T* U, const T* x, const T* weight_c, const T* bias, const T* c0,
                   const T* mask_c, const bool* mask_pad, const T* c_all,
                   const T* grad_h, const T* grad_c_last,
                   T* grad_U, T* grad_x, T* grad_wc, T* grad_bias, T* grad_c0,
                   int64_t L, int64_t B, int64_t d, int64_t k) {
  const int64_t cols = B * d;
  at::parallel_for(0, cols, 64, [&](int64_t begin, int64_t end) {
    const int64_t n = end - begin;
    std::vector<T> gc(grad_c_last + begin, grad_c_last + end);
    std::vector<T> g_vf(n, T(0)), g_vr(n, T(0)), g_bf(n, T(0)), g_br(n, T(0));
    for (int64_t t = L - 1; t >= 0; --t) {
      const int64_t row = t * cols;
      for (int64_t col = begin; col < end; ++col) {
        const int64_t idx = row + col;
        const int64_t i = col - begin;
        const int64_t j = col % d;
        T* gu = grad_U + idx * k;
        if (mask_pad != nullptr && mask_pad[t * B + col / d]) {
          // c_t = c_{t-1} and h_t = 0: the state gradient passes through untouched.
          for (int64_t q = 0; q < k; ++q) gu[q] = T(0);
          if (k == 3) grad_x[idx] = T(0);
          continue;
        }
        const T* u = U + idx * k;
        const T c_prev = (t > 0) ? c_all[idx - cols] : c0[col];
        const T vf = weight_c[j], vr = weight_c[d + j];
        const T f = sigmoid(u[1] + vf * c_prev + bias[j]);
        const T r = sigmoid(u[2] + vr * c_prev + bias[d + j]);
        const T c = c_all[idx];
        const T s = (k == 3) ? x[idx] : u[3];
        const T m = (mask_c != nullptr) ? mask_c[col] : T(1);
        const T gh = grad_h[idx];
        const T mr = m * r;
        const T gc_total = gc[i] + gh * mr;
        const T g_pre_f = gc_total * (c_prev - u[0]) * f * (T(1) - f);
        const T g_pre_r = gh * (c - s) * m * r * (T(1) - r);
        gu[0] = gc_total * (T(1) - f);
        gu[1] = g_pre_f;
        gu[2] = g_pre_r;
        const T g_skip = gh * (T(1) - mr);
        if (k == 3) {
          grad_x[idx] = g_skip;
        } else {
          gu[3] = g_skip;
        }
        g_vf[i] += g_pre_f * c_prev;
        g_vr[i] += g_pre_r * c_prev;
        g_bf[i] += g_pre_f;
        g_br[i] += g_pre_r;
        gc[i] = gc_total * f + g_pre_f * vf + g_pre_r * vr;
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      grad_c0[begin + i] = gc[i];
      grad_wc[begin + i] = g_vf[i];
      grad_wc[cols + begin + i] = g_vr[i];
      grad_bias[begin + i] = g_bf[i];
      grad_bias[cols + begin + i] = g_br[i];
    }
  });
}

template <typename T>
const T* data_or_null(const c10::optional<torch::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->data_ptr<T>() : nullptr;
}

const bool* pad_or_null(const c10::optional<torch::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->data_ptr<bool>() : nullptr;
}

std::vector<torch::Tensor> forward(torch::Tensor U, c10::optional<torch::Tensor> x,
                                   torch::Tensor weight_c, torch::Tensor bias, torch::Tensor c0,
                                   c10::optional<torch::Tensor> mask_c,
                                   c10::optional<torch::Tensor> mask_pad, int64_t k) {
  const int64_t L = U.size(0), B = U.size(1), d = c0.size(-1);
  auto h = torch::empty({L, B, d}, U.options());
  auto c_all = torch::empty({L, B, d}, U.options());
  AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "srupp_recurrence_forward", [&] {
    forward_impl<scalar_t>(U.data_ptr<scalar_t>(), data_or_null<scalar_t>(x),
                           weight_c.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
                           c0.data_ptr<scalar_t>(), data_or_null<scalar_t>(mask_c),
                           pad_or_null(mask_pad), h.data_ptr<scalar_t>(),
                           c_all.data_ptr<scalar_t>(), L, B, d, k);
  });
  return {h, c_all};
}

std::vector<torch::Tensor> backward(torch::Tensor U, c10::optional<torch::Tensor> x,
                                    torch::Tensor weight_c, torch::Tensor bias, torch::Tensor c0,
                                    c10::optional<torch::Tensor> mask_c,
                                    c10::optional<torch::Tensor> mask_pad, torch::Tensor c_all,
                                    torch::Tensor grad_h, torch::Tensor grad_c_last, int64_t k) {
  const int64_t L = U.size(0), B = U.size(1), d = c0.size(-1);
  auto grad_U = torch::empty_like(U);
  auto grad_x = (k == 3) ? torch::empty({L, B, d}, U.options()) : torch::Tensor();
  auto grad_wc = torch::empty({2, B, d}, U.options());
  auto grad_bias = torch::empty({2, B, d}, U.options());
  auto grad_c0 = torch::empty({B, d}, U.options());
  AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "srupp_recurrence_backward", [&] {
    backward_impl<scalar_t>(
        U.data_ptr<scalar_t>(), data_or_null<scalar_t>(x), weight_c.data_ptr<scalar_t>(),
        bias.data_ptr<scalar_t>(), c0.data_ptr<scalar_t>(), data_or_null<scalar_t>(mask_c),
        pad_or_null(mask_pad), c_all.data_ptr<scalar_t>(), grad_h.data_ptr<scalar_t>(),
        grad_c_last.data_ptr<scalar_t>(), grad_U.data_ptr<scalar_t>(),
        (k == 3) ? grad_x.data_ptr<scalar_t>() : nullptr, grad_wc.data_ptr<scalar_t>(),
        grad_bias.data_ptr<scalar_t>(), grad_c0.data_ptr<scalar_t>(), L, B, d, k);
  });
  return {grad_U, grad_x, grad_wc.sum(1).view({2 * d}), grad_bias.sum(1).view({2 * d}), grad_c0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "SRU++ elementwise recurrence forward (CPU)");
  m.def("backward", &backward, "SRU++ elementwise recurrence backward (CPU)");
}
