// Run-time choice of the AVX-512 kernels (cpu_features.hpp).
#include "cpu_features.hpp"

#include <cstdlib>

namespace nnc {

bool use_avx512() {
#if NNC_AVX512
  static const bool use = [] {
    const char* disabled = std::getenv("NNC_DISABLE_AVX512");
    if (disabled != nullptr && disabled[0] != '\0' && disabled[0] != '0') return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("bmi2");
  }();
  return use;
#else
  return false;
#endif
}

}  // namespace nnc
