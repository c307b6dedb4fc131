// Randomised robustness driver for the segment decoder, meant to run under
// AddressSanitizer / UndefinedBehaviorSanitizer (CMake option
// NNC_NATIVE_TESTS). Decodes random and corrupted segments of random specs
// from exact-size heap buffers, so any read out of bounds is reported, and
// checks that uncorrupted segments round-trip. Some specs are block scans
// (entry points, random or corrupted ones too), decoded on 1-3 threads,
// some through decode_segments with the threads' dequantisation.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <vector>

#include "quantize.hpp"
#include "segment.hpp"
#include "tensor_coder.hpp"

namespace {

nnc::SegmentSpec random_spec(std::mt19937_64& rng, std::vector<int32_t>& base) {
  nnc::SegmentSpec spec;
  const bool large = rng() % 6 == 0;
  spec.height = int64_t(1 + rng() % (large ? 70 : 6));
  spec.width = int64_t(1 + rng() % (large ? 70 : 9));
  if (rng() % 3 == 0) spec.scan_order = int(1 + rng() % 2);  // blocks of 8, 16
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
std::vector<uint8_t> valid_segment(std::mt19937_64& rng, nnc::SegmentSpec& spec,
                                   std::vector<nnc::EntryPoint>& entry_points) {
  std::vector<int32_t> q(size_t(spec.height * spec.width));
  spec.row_skipping = rng() & 1;
  spec.param_opt = rng() & 1;
  std::vector<uint8_t> segment;
  if (spec.dq) {
    std::vector<float> x(q.size());
    for (auto& v : x) v = float(int(rng() % 2001) - 1000) / 100.0f;
    // DQ levels follow the scan order: encode_tensor quantises in it.
    spec.has_qp = true;
    spec.qp = 0;
    nnc::TensorJob job;
    job.x = x.data();
    job.q_out = q.data();
    job.spec = spec;
    job.lambda_scale = (rng() & 1) ? 1.0 : 0.0;
    job.num_threads = int(1 + rng() % 2);
    nnc::encode_tensor(job);
    segment = std::move(job.segment);
    entry_points = std::move(job.entry_points);
  } else {
    for (auto& v : q) {
      v = spec.codebook_size ? int32_t(rng() % uint64_t(spec.codebook_size))
                             : int32_t(rng() % 41) - 20;
    }
    segment = nnc::encode_segment(q.data(), spec, &entry_points);
  }
  spec.entry_points = entry_points.data();
  spec.num_entry_points = entry_points.size();
  std::vector<int32_t> decoded(q.size());
  nnc::decode_segment(segment.data(), segment.size(), spec, decoded.data(),
                      int(1 + rng() % 3));
  if (decoded != q) {
    std::fprintf(stderr, "round trip mismatch\n");
    std::exit(1);
  }
  return segment;
}

// Entry points for a block scan of `spec` (random, or the valid ones
// changed), pointed to by spec.
void set_entry_points(std::mt19937_64& rng, nnc::SegmentSpec& spec,
                      std::vector<nnc::EntryPoint>& entry_points, bool valid) {
  const int64_t count = nnc::scan_geometry(spec).num_entry_points();
  if (!valid) {
    entry_points.resize(size_t(count));
    for (auto& entry : entry_points) {
      entry = {rng() % 200, uint32_t(rng() % 256), int(rng() % 8)};
    }
  } else if (!entry_points.empty() && rng() % 4 == 0) {
    nnc::EntryPoint& entry = entry_points[rng() % entry_points.size()];
    switch (rng() % 3) {
      case 0:
        entry.delta_bits += 1 + rng() % 9;
        break;
      case 1:
        entry.offset = uint32_t(rng() % 256);
        break;
      default:
        entry.dq_state = int(rng() % 8);
    }
  }
  spec.entry_points = entry_points.data();
  spec.num_entry_points = entry_points.size();
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
    std::vector<nnc::EntryPoint> entry_points;
    const bool valid = rng() % 4 == 0;
    if (valid) {
      data = valid_segment(rng, spec, entry_points);
      if (!data.empty() && rng() % 4 != 0) {
        data[rng() % data.size()] ^= uint8_t(1 + rng() % 255);
      }
      if (rng() & 1) data.resize(rng() % (data.size() + 1));
    }
    set_entry_points(rng, spec, entry_points, valid);

    uint8_t* exact = new uint8_t[data.size()];
    std::copy(data.begin(), data.end(), exact);
    const size_t n = size_t(spec.height * spec.width);
    std::vector<int32_t> q(n);
    std::vector<float> recon(n);
    const int num_threads = int(1 + rng() % 3);
    try {
      if (spec.has_qp && spec.codebook_size == 0 && rng() % 2 == 0) {
        std::vector<nnc::SegmentJob> jobs(1);
        jobs[0].data = exact;
        jobs[0].num_bytes = data.size();
        jobs[0].spec = spec;
        jobs[0].entry_points = entry_points;
        jobs[0].q_out = q.data();
        jobs[0].recon_out = recon.data();
        jobs[0].qp_offset = int64_t(rng() % 64) - 32;
        nnc::decode_segments(jobs, num_threads);
      } else {
        nnc::decode_segment(exact, data.size(), spec, q.data(), num_threads);
      }
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
