// Run-time choice of the AVX-512 kernels (cpu_features.hpp).
#include "cpu_features.hpp"

#include <cstdlib>
#include <string_view>

namespace nnc {

bool avx512_available() {
#if NNC_AVX512
  static const bool available = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("bmi2");
  }();
  return available;
#else
  return false;
#endif
}

bool use_avx512() {
  static const bool use = [] {
    const char* setting = std::getenv("NNC_DISABLE_AVX512");
    const std::string_view disabled = setting != nullptr ? setting : "";
    return avx512_available() && (disabled.empty() || disabled == "0");
  }();
  return use;
}

}  // namespace nnc
