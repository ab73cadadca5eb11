// recurrence_cuda.cu built for the host (see cuda_host_shim.h), with one C entry point that runs a
// launch: srupp_host_launch(entry point name, blocks, threads per block, kernel arguments as
// integers, argument count) -> 0, or 1 for an unknown name / argument count. Loaded with ctypes by
// cuda_host.py, which builds one library per prefetch depth (-DSRUPP_PREFETCH); the tests use it
// in place of CuPy's launcher.
#include "cuda_host_shim.h"

#include "recurrence_cuda.cu"

namespace {

template <typename Fn>
void run_grid(long long blocks, long long threads, Fn&& thread_body) {
  blockDim.x = (unsigned int)threads;
  for (long long block = 0; block < blocks; ++block) {
    blockIdx.x = (unsigned int)block;
    for (long long thread = 0; thread < threads; ++thread) {
      threadIdx.x = (unsigned int)thread;
      thread_body();
    }
  }
}

}  // namespace

#define SRUPP_HOST_VARIANT(SUFFIX, TU, TX, K)                                                                  \
  if (std::strcmp(name, "srupp_forward_" #SUFFIX) == 0 && n_args == 12) {                                    \
    run_grid(blocks, threads, [&] {                                                                          \
      srupp_forward_##SUFFIX((const TU*)a[0], (const TX*)a[1], (const float*)a[2], (const float*)a[3],        \
                             (const float*)a[4], (const float*)a[5], (const bool*)a[6], (TX*)a[7], (float*)a[8], \
                             (int)a[9], (int)a[10], (int)a[11]);                                              \
    });                                                                                                      \
    return 0;                                                                                                \
  }                                                                                                          \
  if (std::strcmp(name, "srupp_backward_" #SUFFIX) == 0 && n_args == 18) {                                   \
    run_grid(blocks, threads, [&] {                                                                          \
      srupp_backward_##SUFFIX((const TU*)a[0], (const TX*)a[1], (const float*)a[2], (const float*)a[3],       \
                              (const float*)a[4], (const float*)a[5], (const bool*)a[6], (const float*)a[7],  \
                              (const TX*)a[8], (const float*)a[9], (TU*)a[10], (TX*)a[11], (float*)a[12],     \
                              (float*)a[13], (float*)a[14], (int)a[15], (int)a[16], (int)a[17]);              \
    });                                                                                                      \
    return 0;                                                                                                \
  }

extern "C" int srupp_host_launch(const char* name, long long blocks, long long threads, const long long* a,
                                 int n_args) {
  SRUPP_FOR_EACH_VARIANT(SRUPP_HOST_VARIANT)
  return 1;
}
