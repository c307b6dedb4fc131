// Run-time choice of the AVX-512 kernels: the rate-aware DQ trellis'
// forward pass (quantize.cpp) and the eco estimate (segment.cpp). Each has
// a portable twin that gives the same result.
#pragma once

// The kernels need GCC's vector extensions and x86-64; elsewhere only the
// portable code is built.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define NNC_AVX512 1
#define NNC_TARGET_AVX512 __attribute__((target("arch=x86-64-v4")))
#else
#define NNC_AVX512 0
#define NNC_TARGET_AVX512
#endif

namespace nnc {

// Whether to run the AVX-512 kernels: this build has them, the CPU has
// AVX-512 (F, DQ, BW, VL) and BMI2, and NNC_DISABLE_AVX512 is unset, empty
// or "0". Decided once per process.
bool use_avx512();

}  // namespace nnc
