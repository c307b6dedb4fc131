// Driver for the parallel block-scan encoder, meant to run under
// AddressSanitizer / UndefinedBehaviorSanitizer or ThreadSanitizer (CMake
// option NNC_NATIVE_TESTS). For random float matrices in block scans it
// checks that the trellis runs and the level runs give the same segment and
// entry points on 1, 2, 3 and 5 threads, and that the segment decodes back.
// Under DQ, level runs given wrong block-row start states must name them.
//   nnc_encode_runs_check [trials=40] [seed=1]
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "segment.hpp"
#include "tensor_coder.hpp"

namespace {

bool same_entry_points(const std::vector<nnc::EntryPoint>& a,
                       const std::vector<nnc::EntryPoint>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].delta_bits != b[i].delta_bits || a[i].offset != b[i].offset ||
        a[i].dq_state != b[i].dq_state) {
      return false;
    }
  }
  return true;
}

// Whether encode_segment on 2 threads, given these block-row start
// states, refuses with an error whose message contains `expected`.
bool refuses_start_states(const std::vector<int32_t>& q, nnc::SegmentSpec spec,
                          const std::vector<uint8_t>& states, const char* expected) {
  spec.block_row_start_states = states.data();
  try {
    nnc::encode_segment(q.data(), spec, nullptr, 2);
  } catch (const std::logic_error& error) {
    return std::string(error.what()).find(expected) != std::string::npos;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  const int num_trials = argc > 1 ? std::atoi(argv[1]) : 40;
  std::mt19937 rng(argc > 2 ? unsigned(std::atoi(argv[2])) : 1u);
  int num_failures = 0;

  for (int trial = 0; trial < num_trials; ++trial) {
    // 8,000..250,000 values: both sides of the 2^16 and 2^18 thresholds.
    // Every fifth trial is a rate-aware DQ tensor of 2^18 values or more
    // with leading zero rows: the trellis runs in two halves and the second
    // thread lists the eco bins early, or (many zero rows) cannot.
    const bool split = trial % 5 == 4;
    nnc::SegmentSpec spec;
    spec.height = split ? 520 + rng() % 200 : 50 + rng() % 450;
    spec.width = split ? 512 + rng() % 64 : 160 + rng() % 400;
    spec.scan_order = 1 + int(rng() % 4);
    spec.dq = split || trial % 2 == 0;
    spec.row_skipping = true;
    spec.param_opt = true;
    spec.qp = -32;
    const size_t n = size_t(spec.height * spec.width);
    std::vector<float> x(n);
    std::normal_distribution<float> gaussian(0.0f, 0.02f * float(1 + trial % 5));
    for (auto& value : x) value = gaussian(rng);
    for (int64_t row = trial % 7; row < spec.height; row += 7) {
      std::fill_n(x.begin() + row * spec.width, spec.width, 0.0f);  // skipped rows
    }
    if (split) {
      const int64_t leading_zero_rows = int64_t(rng() % 400);
      std::fill_n(x.begin(), leading_zero_rows * spec.width, 0.0f);
    }

    // Serial reference: quantise in scan order and code on one thread.
    std::vector<int32_t> q(n);
    nnc::TensorJob job;
    job.x = x.data();
    job.q_out = q.data();
    job.spec = spec;
    job.lambda_scale = trial % 3 == 0 && !split ? 0.0 : 0.5;
    job.num_threads = 1;
    nnc::encode_tensor(job);

    for (const int num_threads : {2, 3, 5}) {
      std::vector<int32_t> q_threads(n);
      nnc::TensorJob threaded = job;
      threaded.q_out = q_threads.data();
      threaded.num_threads = num_threads;
      nnc::encode_tensor(threaded);
      if (q_threads != q || threaded.segment != job.segment ||
          !same_entry_points(threaded.entry_points, job.entry_points)) {
        std::printf("trial %d: %lld x %lld scan_order %d dq %d, %d threads: "
                    "output differs from one thread\n",
                    trial, (long long)spec.height, (long long)spec.width,
                    spec.scan_order, int(spec.dq), num_threads);
        ++num_failures;
      }
    }

    // Wrong start states for every block row but the first: the level runs
    // must name the block row whose run does not start where the one
    // before it ended (also when a level of the wrong parity fails first).
    const nnc::ScanGeometry geometry = nnc::scan_geometry(job.spec);
    if (job.spec.dq && n >= (size_t(1) << 16) && geometry.num_block_rows >= 2) {
      std::vector<uint8_t> wrong(size_t(geometry.num_block_rows), 0);
      for (size_t row = 1; row < wrong.size(); ++row) {
        wrong[row] = uint8_t((job.entry_points[row - 1].dq_state + 1) % 8);
      }
      if (!refuses_start_states(q, job.spec, wrong, "starts in DQ state")) {
        std::printf("trial %d: wrong block-row start states were not named\n", trial);
        ++num_failures;
      }
      std::fill(wrong.begin() + 1, wrong.end(), uint8_t(9));
      if (!refuses_start_states(q, job.spec, wrong, "is not a DQ state")) {
        std::printf("trial %d: start state 9 was not refused\n", trial);
        ++num_failures;
      }
    }

    std::vector<int32_t> decoded(n);
    nnc::SegmentSpec decode_spec = job.spec;
    decode_spec.entry_points = job.entry_points.data();
    decode_spec.num_entry_points = job.entry_points.size();
    nnc::decode_segment(job.segment.data(), job.segment.size(), decode_spec,
                        decoded.data(), 3);
    if (decoded != q) {
      std::printf("trial %d: the segment does not decode to q\n", trial);
      ++num_failures;
    }
  }

  std::printf("%d trials, %d failures\n", num_trials, num_failures);
  return num_failures == 0 ? 0 : 1;
}
