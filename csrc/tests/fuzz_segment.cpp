// Randomised robustness driver for the segment decoder, meant to run under
// AddressSanitizer / UndefinedBehaviorSanitizer (CMake option
// NNC_NATIVE_TESTS). Decodes random and corrupted segments of random specs
// from exact-size heap buffers, so any read out of bounds is reported, and
// checks that uncorrupted segments round-trip.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <vector>

#include "quantize.hpp"
#include "segment.hpp"

namespace {

nnc::SegmentSpec random_spec(std::mt19937_64& rng, std::vector<int32_t>& base) {
  nnc::SegmentSpec spec;
  spec.height = int64_t(1 + rng() % 6);
  spec.width = int64_t(1 + rng() % 9);
  spec.has_qp = rng() & 1;
  spec.qp_density = int(rng() % 4);
  spec.dq = rng() & 1;
  spec.hdsp_flag_present = rng() & 1;
  spec.unary_len = int(1 + rng() % 12);
  base.resize(size_t(spec.height * spec.width));
  for (auto& b : base) b = int32_t(rng() % 7) - 3;
  if (rng() % 3 == 0) spec.tca_base = base.data();
  if (!spec.dq && rng() % 3 == 0) {
    spec.codebook_size = int64_t(1 + rng() % 40);
    spec.codebook_zero_offset = int64_t(rng() % uint64_t(spec.codebook_size));
  }
  return spec;
}

// A valid segment for random levels of `spec`; checks its round trip.
std::vector<uint8_t> valid_segment(std::mt19937_64& rng, nnc::SegmentSpec& spec) {
  std::vector<int32_t> q(size_t(spec.height * spec.width));
  if (spec.dq) {
    std::vector<float> x(q.size());
    for (auto& v : x) v = float(int(rng() % 2001) - 1000) / 100.0f;
    nnc::quantize(x.data(), x.size(), 0, spec.qp_density, true, (rng() & 1) ? 1.0 : 0.0,
                  q.data());
  } else {
    for (auto& v : q) {
      v = spec.codebook_size ? int32_t(rng() % uint64_t(spec.codebook_size))
                             : int32_t(rng() % 41) - 20;
    }
  }
  spec.row_skipping = rng() & 1;
  spec.param_opt = rng() & 1;
  std::vector<uint8_t> segment = nnc::encode_segment(q.data(), spec);
  std::vector<int32_t> decoded(q.size());
  nnc::decode_segment(segment.data(), segment.size(), spec, decoded.data());
  if (decoded != q) {
    std::fprintf(stderr, "round trip mismatch\n");
    std::exit(1);
  }
  return segment;
}

}  // namespace

int main(int argc, char** argv) {
  const long iterations = argc > 1 ? std::atol(argv[1]) : 200000;
  std::mt19937_64 rng(argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1);
  long decoded_ok = 0;
  long rejected = 0;
  for (long iter = 0; iter < iterations; ++iter) {
    std::vector<int32_t> base;
    nnc::SegmentSpec spec = random_spec(rng, base);
    std::vector<uint8_t> data(rng() % 40);
    for (auto& byte : data) byte = uint8_t(rng());
    if (rng() % 4 == 0) {
      data = valid_segment(rng, spec);
      if (!data.empty()) data[rng() % data.size()] ^= uint8_t(1 + rng() % 255);
      if (rng() & 1) data.resize(rng() % (data.size() + 1));
    }

    uint8_t* exact = new uint8_t[data.size()];
    std::copy(data.begin(), data.end(), exact);
    std::vector<int32_t> q(size_t(spec.height * spec.width));
    try {
      nnc::decode_segment(exact, data.size(), spec, q.data());
      ++decoded_ok;
    } catch (const std::invalid_argument&) {
      ++rejected;
    } catch (const std::length_error&) {
      ++rejected;
    }
    delete[] exact;
  }
  std::printf("decoded %ld, rejected %ld\n", decoded_ok, rejected);
  return 0;
}
