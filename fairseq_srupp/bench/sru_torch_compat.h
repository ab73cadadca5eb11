// Force-included (nvcc -include, through NVCC_PREPEND_FLAGS) when sru==3.0.0.dev6 builds its CUDA kernel:
// sru dispatches on U.type(), a DeprecatedTypeProperties, and torch >= 2.11's AT_DISPATCH macros only
// take a ScalarType. This adds the conversion the older headers had; as a template it loses overload
// resolution to such a function where one still exists, so older torch builds the same as before.
#pragma once
#ifdef TORCH_EXTENSION_NAME  // only inside torch.utils.cpp_extension builds
#include <type_traits>
#include <ATen/core/DeprecatedTypeProperties.h>
namespace detail {
template <typename T, typename std::enable_if<std::is_same<T, at::DeprecatedTypeProperties>::value, int>::type = 0>
inline c10::ScalarType scalar_type(const T& t) {
  return t.scalarType();
}
}  // namespace detail
#endif
