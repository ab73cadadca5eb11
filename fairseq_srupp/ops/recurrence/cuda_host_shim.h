// Lets recurrence_cuda.cu compile as plain C++ for the host, so the tests run the GPU's own entry
// points on the CPU (cuda_host_shim.cpp runs every thread of a launch grid in turn). It supplies
// what CUDA would: the qualifiers, the thread / block indices as host variables, the bit-cast
// intrinsics, and IEEE half conversions (torch's c10::Half, round to nearest even like PTX's cvt.rn).
#ifndef FAIRSEQ_SRUPP_CUDA_HOST_SHIM_H
#define FAIRSEQ_SRUPP_CUDA_HOST_SHIM_H

#define SRUPP_HOST_SHIM 1

#include <c10/util/Half.h>

#include <cstring>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
// A block's shared memory as one array for all its threads, which run one after another; the staged
// kernels' threads each touch only their own words of it.
#define __shared__ static
#define __launch_bounds__(threads)

struct srupp_dim3 {
  unsigned int x = 0, y = 0, z = 0;
};
// One grid at a time, one thread at a time: plain globals are enough.
inline srupp_dim3 threadIdx, blockIdx, blockDim;

inline float __uint_as_float(unsigned int u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

namespace srupp_shim {
// cp.async as the staged kernels use it, with its asynchrony made visible: a copy lands only when a
// wait_group lets its group complete, so a kernel that reads a stage before waiting for it reads stale words
// here too (the threads run one after another, so one queue serves them all).
struct PendingCopy {
  unsigned int* dst;
  const unsigned int* src;
  int bytes;
};
inline std::vector<std::vector<PendingCopy>> copy_groups(1);  // the last one is still open
inline void copy_word_async(unsigned int* dst, const unsigned int* src, int bytes) {
  copy_groups.back().push_back(PendingCopy{dst, src, bytes});
}
inline void commit_group() { copy_groups.emplace_back(); }
// Lands every committed group but the newest `pending`.
inline void wait_group(int pending) {
  while ((int)copy_groups.size() - 1 > pending) {
    for (const PendingCopy& c : copy_groups.front()) *c.dst = c.bytes == 4 ? *c.src : 0u;
    copy_groups.erase(copy_groups.begin());
  }
}

inline float half_bits_to_float(unsigned short bits) {
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}
inline unsigned short float_to_half_bits(float v) { return c10::Half(v).x; }
}  // namespace srupp_shim

#endif  // FAIRSEQ_SRUPP_CUDA_HOST_SHIM_H
