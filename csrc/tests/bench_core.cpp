// Native timing driver for the core (CMake option NNC_NATIVE_TESTS): codes a
// 1M-value Gaussian (sigma 0.05, raster 1000 x 1000) and prints thread CPU
// seconds for quantisation, segment encoding and decoding.
//   nnc_bench_core [qp=-32] [dq=1] [lambda_scale=0] [eco_max_positions=65536]
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <vector>

#include "quantize.hpp"
#include "segment.hpp"

namespace {

double thread_cpu_seconds() {
  timespec now;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return double(now.tv_sec) + 1e-9 * double(now.tv_nsec);
}

}  // namespace

int main(int argc, char** argv) {
  const int qp = argc > 1 ? std::atoi(argv[1]) : -32;
  const bool dq = argc > 2 ? std::atoi(argv[2]) != 0 : true;
  const double lambda_scale = argc > 3 ? std::atof(argv[3]) : 0.0;
  const long long eco_max_positions = argc > 4 ? std::atoll(argv[4]) : 65536;

  std::mt19937 rng(0);
  std::normal_distribution<float> gaussian(0.0f, 0.05f);
  std::vector<float> x(1000000);
  for (auto& v : x) v = gaussian(rng);
  std::vector<int32_t> q(x.size());
  std::vector<int32_t> decoded(x.size());

  nnc::SegmentSpec spec;
  spec.height = 1000;
  spec.width = 1000;
  spec.qp = qp;
  spec.dq = dq;
  spec.row_skipping = true;
  spec.param_opt = true;
  spec.eco_max_positions = eco_max_positions;

  const double t0 = thread_cpu_seconds();
  nnc::quantize(x.data(), x.size(), qp, 2, dq, lambda_scale, q.data());
  const double t1 = thread_cpu_seconds();
  const std::vector<uint8_t> segment = nnc::encode_segment(q.data(), spec);
  const double t2 = thread_cpu_seconds();
  nnc::decode_segment(segment.data(), segment.size(), spec, decoded.data());
  const double t3 = thread_cpu_seconds();

  std::printf("qp %d dq %d lambda %.2f: quantize %.4f s, encode %.4f s, "
              "decode %.4f s, %zu bytes, %s\n",
              qp, int(dq), lambda_scale, t1 - t0, t2 - t1, t3 - t2, segment.size(),
              decoded == q ? "round trip ok" : "ROUND TRIP MISMATCH");
  return decoded == q ? 0 : 1;
}
