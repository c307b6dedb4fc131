// Run-time choice of the AVX-512 kernels: the rate-aware DQ trellis'
// forward pass (quantize.cpp) and the eco estimate (segment.cpp). Each has
// a portable twin that gives the same result.
//
// NOTE: "the same result" also needs -ffp-contract=off (CMakeLists.txt): a
// fused multiply-add would round the trellis' costs differently.
#pragma once

// The kernels need x86-64 and GCC 10 or later (vector extensions with
// __builtin_shuffle, the target attribute with ISA names); elsewhere only the
// portable code is built. NNC_TARGET_AVX512 adds exactly the ISA extensions
// that use_avx512() checks for, whatever -march the build uses.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 10
#define NNC_AVX512 1
#define NNC_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,bmi2")))
#else
#define NNC_AVX512 0
#define NNC_TARGET_AVX512
#endif

namespace nnc {

// Whether this build has the AVX-512 kernels and the CPU has AVX-512 (F, DQ,
// BW, VL) and BMI2.
bool avx512_available();

// Whether to run them: avx512_available() and NNC_DISABLE_AVX512 unset,
// empty or "0" (any other value disables them). Decided once per process.
bool use_avx512();

}  // namespace nnc
