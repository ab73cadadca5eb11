// Dropout on the CPU with a counter-based generator: out = in * keep / (1 - p).
//
// Element i (in the tensor's contiguous order) takes the 16-bit uniform i % 8 of Philox4x32-10 at
// counter (i / 8, 0, 0, 0) under the 64-bit key `seed` (word (i % 8) / 2, low half for even i) and
// is kept iff it is >= `threshold` (= round(p * 2^16)). 16 bits halve the generator's work; p is
// resolved to 1/65536 (flash-attention resolves it to 1/255) and the scale uses the resolved p.
// The mask is a pure function of (seed, i), so the backward regenerates it instead of storing it,
// threads split the tensor anywhere without changing a draw, and reference.py computes the same
// bits in PyTorch. Philox's 32x32->64 multiplies are lane-wise, so the block loops vectorise.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace {

constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
constexpr int64_t kLanes = 16;                  // counters per block: one AVX-512 vector of words
constexpr int64_t kWords = 4 * kLanes;          // 32-bit words per block
constexpr int64_t kBlock = 2 * kWords;          // elements per block
constexpr int64_t kGrain = 64 * kBlock;         // elements per parallel task

// The random words of counters first .. first + kLanes - 1 in element order: words[4 * lane + w]
// is word w of counter first + lane.
__attribute__((always_inline)) inline void philox_block(uint64_t first, uint64_t seed, uint32_t words[kWords]) {
  uint32_t x0[kLanes], x1[kLanes], x2[kLanes], x3[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) {
    const uint64_t counter = first + (uint64_t)l;
    x0[l] = (uint32_t)counter;
    x1[l] = (uint32_t)(counter >> 32);
    x2[l] = 0;
    x3[l] = 0;
  }
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int round = 0; round < 10; ++round) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) {
      const uint64_t p0 = (uint64_t)kMul0 * x0[l];
      const uint64_t p1 = (uint64_t)kMul1 * x2[l];
      const uint32_t y0 = (uint32_t)(p1 >> 32) ^ x1[l] ^ k0;
      const uint32_t y2 = (uint32_t)(p0 >> 32) ^ x3[l] ^ k1;
      x1[l] = (uint32_t)p1;
      x3[l] = (uint32_t)p0;
      x0[l] = y0;
      x2[l] = y2;
    }
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  for (int64_t l = 0; l < kLanes; ++l) {
    words[4 * l] = x0[l];
    words[4 * l + 1] = x1[l];
    words[4 * l + 2] = x2[l];
    words[4 * l + 3] = x3[l];
  }
}

template <typename T>
void apply_mask(const T* __restrict__ in, T* __restrict__ out, int64_t n, uint64_t seed, uint16_t threshold,
                double scale) {
  using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const acc_t keep_scale = static_cast<acc_t>(scale);
  at::parallel_for(0, (n + kBlock - 1) / kBlock, kGrain / kBlock, [&](int64_t block_begin, int64_t block_end) {
    uint32_t words[kWords];
    uint16_t uniforms[kBlock];
    for (int64_t block = block_begin; block < block_end; ++block) {
      philox_block((uint64_t)block * kLanes, seed, words);
      for (int64_t w = 0; w < kWords; ++w) {
        uniforms[2 * w] = (uint16_t)words[w];
        uniforms[2 * w + 1] = (uint16_t)(words[w] >> 16);
      }
      const int64_t base = block * kBlock;
      if (base + kBlock <= n) {  // a whole block: a fixed trip count vectorises without masking
        for (int64_t e = 0; e < kBlock; ++e) {
          const acc_t kept = keep_scale * static_cast<acc_t>(uniforms[e] >= threshold);
          out[base + e] = static_cast<T>(static_cast<acc_t>(in[base + e]) * kept);
        }
      } else {
        for (int64_t e = 0; e < n - base; ++e) {
          const acc_t kept = keep_scale * static_cast<acc_t>(uniforms[e] >= threshold);
          out[base + e] = static_cast<T>(static_cast<acc_t>(in[base + e]) * kept);
        }
      }
    }
  });
}

// in (any shape), threshold = round(p * 2^16) in [0, 2^16), scale = 1 / (1 - threshold / 2^16).
torch::Tensor dropout_apply(const torch::Tensor& in, int64_t seed, int64_t threshold, double scale) {
  TORCH_CHECK(in.device().is_cpu(), "dropout_apply takes CPU tensors");
  TORCH_CHECK(threshold >= 0 && threshold < (int64_t(1) << 16), "threshold must be in [0, 2^16)");
  const torch::Tensor input = in.contiguous();
  torch::Tensor out = torch::empty_like(input);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dropout_apply", [&] {
    apply_mask<scalar_t>(input.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), input.numel(), (uint64_t)seed,
                         (uint16_t)threshold, scale);
  });
  return out;
}

// The raw words, for the known-answer and parity tests: (n_counters, 4) int64 in [0, 2^32).
torch::Tensor philox_words(int64_t first, int64_t n_counters, int64_t seed) {
  torch::Tensor out = torch::empty({n_counters, 4}, torch::kInt64);
  int64_t* o = out.data_ptr<int64_t>();
  uint32_t words[kWords];
  for (int64_t c = 0; c < n_counters; c += kLanes) {
    philox_block((uint64_t)(first + c), (uint64_t)seed, words);
    for (int64_t e = 0; e < std::min(kWords, 4 * (n_counters - c)); ++e) o[c * 4 + e] = words[e];
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dropout_apply", &dropout_apply, "in * keep(seed, i) * scale (CPU, Philox4x32-10 mask)");
  m.def("philox_words", &philox_words, "Philox4x32-10 words of counters first.. under key seed");
}
