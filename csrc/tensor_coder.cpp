// Fused and multi-threaded tensor coding (tensor_coder.hpp).
#include "tensor_coder.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <functional>
#include <future>
#include <stdexcept>
#include <thread>

#include "parallel.hpp"
#include "quantize.hpp"

namespace nnc {

namespace {

// Block rows [first, end) of a block scan, each quantised in scan order:
// gather the row's values, run the quantiser, scatter the indices back to
// raster positions. The DQ path enters block row `first` in start_state (-1:
// any) and leaves the last one in end_state (-1: the cheapest); in between
// each block row continues from the state the previous one ended in. Under
// DQ each block row's start state goes to row_start_states[block_row].
DqPathEnds quantize_block_rows(const TensorJob& job, const ScanGeometry& geometry,
                               int64_t first, int64_t end, int start_state,
                               int end_state, int num_threads,
                               std::vector<uint8_t>& row_start_states) {
  const SegmentSpec& spec = job.spec;
  const float step = step_size(spec.qp, spec.qp_density);
  const size_t max_block_row = size_t(geometry.block_height * spec.width);
  std::vector<float> x_scan(max_block_row);
  std::vector<int32_t> q_scan(max_block_row);
  const std::vector<uint8_t> no_skipped_rows;
  DqPathEnds path{start_state, start_state};
  int state = start_state;
  for (int64_t block_row = first; block_row < end; ++block_row) {
    size_t count = 0;
    int unused_state = 0;
    walk_block_row(spec, geometry, block_row, no_skipped_rows, unused_state,
                   [&](int64_t pos) { x_scan[count++] = job.x[pos]; });
    if (spec.dq) {
      const int row_end_state = block_row + 1 == end ? end_state : -1;
      const DqPathEnds row =
          quantize_dq_run(x_scan.data(), count, spec.qp, spec.qp_density,
                          job.lambda_scale, state, row_end_state, num_threads,
                          q_scan.data());
      if (block_row == first) path.start_state = row.start_state;
      row_start_states[size_t(block_row)] = uint8_t(row.start_state);
      state = row.end_state;
    } else {
      quantize(x_scan.data(), count, spec.qp, spec.qp_density, false, job.lambda_scale,
               q_scan.data());
    }
    count = 0;
    if (job.recon_out == nullptr) {
      walk_block_row(spec, geometry, block_row, no_skipped_rows, unused_state,
                     [&](int64_t pos) { job.q_out[pos] = q_scan[count++]; });
    } else {
      walk_block_row(spec, geometry, block_row, no_skipped_rows, unused_state,
                     [&](int64_t pos) {
                       const int32_t q = q_scan[count++];
                       job.q_out[pos] = q;
                       job.recon_out[pos] = step * static_cast<float>(q);
                     });
    }
  }
  path.end_state = state;
  return path;
}

// Quantise a block scan. A rate-aware DQ tensor of kDqSplitPositions values
// or more (as quantize() splits a raster trellis) is cut into two runs of
// block rows: the second starts in any state, and the last block row of
// the first ends in the state where the second's path starts. The runs go
// on two threads when num_threads > 1; the levels do not depend on that.
// On two threads, the second then calls after_second_run(n) (if given) once
// the first run's block rows [0, n) hold their final levels, n >= 1.
void quantize_in_block_scan(TensorJob& job, const ScanGeometry& geometry,
                            std::vector<uint8_t>& states,
                            const std::function<void(int64_t)>* after_second_run) {
  const int64_t num_elements = job.spec.height * job.spec.width;
  const int64_t num_block_rows = geometry.num_block_rows;
  states.assign(size_t(num_block_rows), 0);
  const bool split = job.spec.dq && job.lambda_scale > 0.0 &&
                     num_elements >= int64_t(kDqSplitPositions) && num_block_rows >= 2;
  if (!split) {
    quantize_block_rows(job, geometry, 0, num_block_rows, 0, -1, job.num_threads,
                        states);
    return;
  }

  // The first run ends where the rows reach half of the tensor (at least one
  // block row each).
  const int64_t half_rows = (job.spec.height + 1) / 2;
  const int64_t middle = std::clamp<int64_t>(
      (half_rows + geometry.block_height - 1) / geometry.block_height, 1,
      num_block_rows - 1);

  if (job.num_threads <= 1) {
    const DqPathEnds second =
        quantize_block_rows(job, geometry, middle, num_block_rows, -1, -1, 1, states);
    quantize_block_rows(job, geometry, 0, middle, 0, second.start_state, 1, states);
    return;
  }

  // The first run waits for the second's start state only before its last
  // block row; the second publishes it after its first block row. The first
  // says when its block rows before that one are final (false: it failed).
  std::promise<int> second_start;
  std::future<int> second_start_ready = second_start.get_future();
  std::promise<bool> lead_rows;
  std::future<bool> lead_rows_final = lead_rows.get_future();
  bool lead_rows_said = false;
  std::exception_ptr second_error;
  std::thread second_thread([&] {
    bool published = false;
    try {
      const DqPathEnds head =
          quantize_block_rows(job, geometry, middle, middle + 1, -1, -1, 1, states);
      second_start.set_value(head.start_state);
      published = true;
      quantize_block_rows(job, geometry, middle + 1, num_block_rows, head.end_state, -1,
                          1, states);
      if (after_second_run != nullptr && middle > 1 && lead_rows_final.get()) {
        (*after_second_run)(middle - 1);
      }
    } catch (...) {
      if (published) {
        second_error = std::current_exception();
      } else {
        second_start.set_exception(std::current_exception());
      }
    }
  });
  try {
    const DqPathEnds lead =
        quantize_block_rows(job, geometry, 0, middle - 1, 0, -1, 1, states);
    lead_rows.set_value(true);
    lead_rows_said = true;
    const int join_state = second_start_ready.get();
    quantize_block_rows(job, geometry, middle - 1, middle, lead.end_state, join_state,
                        1, states);
  } catch (...) {
    if (!lead_rows_said) lead_rows.set_value(false);
    second_thread.join();
    throw;
  }
  second_thread.join();
  if (second_error) std::rethrow_exception(second_error);
}

// job.recon_out from job.q_out, in up to job.num_threads slices.
void dequantize_on_threads(TensorJob& job, int64_t num_elements) {
  constexpr int64_t kMinSlice = int64_t(1) << 17;
  const int64_t num_slices =
      std::clamp<int64_t>(num_elements / kMinSlice, 1, std::max(job.num_threads, 1));
  run_tasks(num_slices, true, [&](int64_t slice) {
    const int64_t begin = num_elements * slice / num_slices;
    const int64_t end = num_elements * (slice + 1) / num_slices;
    dequantize(job.q_out + begin, size_t(end - begin), job.spec.qp, job.spec.qp_density,
               job.recon_out + begin);
  });
}

}  // namespace

void encode_tensor(TensorJob& job) {
  const int64_t num_elements = validate_spec(job.spec, "encode_tensor");
  if (!job.spec.has_qp || job.spec.codebook_size != 0) {
    throw std::invalid_argument(
        "encode_tensor: needs a qp and no codebook (code INT and codebook "
        "tensors with encode_segment)");
  }
  const ScanGeometry geometry = scan_geometry(job.spec);
  // Q3: a skipped row advances the DQ state by `width` zeros in every block,
  // while the trellis walked only the block's width. Both agree when width
  // is a multiple of 4 (the zero transitions have cycles of 1, 2 or 4);
  // otherwise rows are not skipped.
  if (geometry.block_scan && job.spec.dq && job.spec.width % 4 != 0) {
    job.spec.row_skipping = false;
  }
  if (!geometry.block_scan) {
    quantize(job.x, size_t(num_elements), job.spec.qp, job.spec.qp_density,
             job.spec.dq, job.lambda_scale, job.q_out, 0, job.num_threads);
    if (job.recon_out != nullptr) dequantize_on_threads(job, num_elements);
    job.segment =
        encode_segment(job.q_out, job.spec, &job.entry_points, job.num_threads);
    return;
  }
  // On two threads, the second trellis run usually ends first (the first
  // has the larger half and the join): it then lists the bins of the eco
  // estimate, whose prefix lies in the first block rows, while the first
  // run finishes. The estimate itself runs on both threads afterwards.
  EcoListingPtr eco_listing;
  const std::function<void(int64_t)> list_eco = [&](int64_t num_known_block_rows) {
    eco_listing = list_eco_bins(job.q_out, job.spec, num_known_block_rows);
  };
  const bool list_eco_early =
      job.num_threads > 1 && job.spec.param_opt && job.spec.forced_init_sets == nullptr;

  // The block rows' DQ start states, known from the trellis, spare the
  // level runs a walk over the levels before them.
  std::vector<uint8_t> block_row_start_states;
  quantize_in_block_scan(job, geometry, block_row_start_states,
                         list_eco_early ? &list_eco : nullptr);
  SegmentSpec spec = job.spec;
  spec.block_row_start_states = block_row_start_states.data();
  std::vector<uint8_t> init_sets;
  if (eco_listing != nullptr) {
    init_sets = choose_listed_init_sets(*eco_listing, spec, job.num_threads);
    spec.forced_init_sets = init_sets.data();
    spec.num_forced_init_sets = init_sets.size();
  }
  job.segment = encode_segment(job.q_out, spec, &job.entry_points, job.num_threads);
}

namespace {

// Error of one job, kept with its C++ category so it can be rethrown.
struct JobError {
  enum Kind { kNone, kInvalidArgument, kLengthError, kOther };
  Kind kind = kNone;
  std::string message;
};

// Run `work(job)` for every job on a small pool of std::threads.
template <class Job, class Work>
void run_jobs(std::vector<Job>& jobs, int num_threads, Work work_on) {
  if (jobs.empty()) return;
  size_t workers = num_threads > 0 ? size_t(num_threads)
                                   : std::max(1u, std::thread::hardware_concurrency());
  workers = std::min(workers, jobs.size());

  std::vector<JobError> errors(jobs.size());
  std::atomic<size_t> next_job{0};
  const auto work = [&]() {
    for (size_t i = next_job++; i < jobs.size(); i = next_job++) {
      try {
        work_on(jobs[i]);
      } catch (const std::invalid_argument& e) {
        errors[i] = {JobError::kInvalidArgument, e.what()};
      } catch (const std::length_error& e) {
        errors[i] = {JobError::kLengthError, e.what()};
      } catch (const std::exception& e) {
        errors[i] = {JobError::kOther, e.what()};
      }
    }
  };

  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  for (size_t t = 1; t < workers; ++t) threads.emplace_back(work);
  work();
  for (auto& thread : threads) thread.join();

  for (size_t i = 0; i < errors.size(); ++i) {
    if (errors[i].kind == JobError::kNone) continue;
    const std::string message =
        "tensor #" + std::to_string(i) + ": " + errors[i].message;
    if (errors[i].kind == JobError::kInvalidArgument) {
      throw std::invalid_argument(message);
    }
    if (errors[i].kind == JobError::kLengthError) throw std::length_error(message);
    throw std::runtime_error(message);
  }
}

}  // namespace

namespace {

// Threads per job when there are fewer jobs than workers.
int threads_per_job(size_t num_jobs, int num_threads) {
  const size_t workers = num_threads > 0
                             ? size_t(num_threads)
                             : std::max(1u, std::thread::hardware_concurrency());
  return num_jobs == 0 ? 1 : int(std::max<size_t>(1, workers / num_jobs));
}

}  // namespace

void encode_tensors(std::vector<TensorJob>& jobs, int num_threads) {
  const int per_job = threads_per_job(jobs.size(), num_threads);
  run_jobs(jobs, num_threads, [per_job](TensorJob& job) {
    job.num_threads = per_job;
    encode_tensor(job);
  });
}

void decode_segments(std::vector<SegmentJob>& jobs, int num_threads) {
  const int per_job = threads_per_job(jobs.size(), num_threads);
  run_jobs(jobs, num_threads, [per_job](SegmentJob& job) {
    job.spec.entry_points = job.entry_points.data();
    job.spec.num_entry_points = job.entry_points.size();
    if (job.recon_out == nullptr || !job.spec.has_qp) {
      job.result =
          decode_segment(job.data, job.num_bytes, job.spec, job.q_out, per_job);
      return;
    }

    // Dequantise each group of rows on its own thread, right after decoding.
    std::atomic<bool> all_finite{true};
    std::atomic<int64_t> num_rows_done{0};
    const RowsDecoded dequantize_rows = [&](int64_t row_begin, int64_t row_end,
                                            int segment_qp) {
      // |segment_qp| < 2^31: the sum cannot overflow once the offset is
      // bounded; beyond 2^20 the step is not a float32 anyway.
      const int64_t max_qp_magnitude = int64_t(1) << 20;
      const bool offset_fits =
          job.qp_offset >= -max_qp_magnitude && job.qp_offset <= max_qp_magnitude;
      const int64_t qp = offset_fits ? int64_t(segment_qp) + job.qp_offset : 0;
      const float step =
          offset_fits && qp >= -max_qp_magnitude && qp <= max_qp_magnitude
              ? step_size(int(qp), job.spec.qp_density)
              : 0.0f;
      const size_t begin = size_t(row_begin * job.spec.width);
      const size_t count = size_t((row_end - row_begin) * job.spec.width);
      if (!(step > 0.0f && std::isfinite(step)) ||
          !dequantize_finite(job.q_out + begin, count, step, job.recon_out + begin)) {
        all_finite = false;
      }
      num_rows_done += row_end - row_begin;
    };
    job.result = decode_segment(job.data, job.num_bytes, job.spec, job.q_out, per_job,
                                &dequantize_rows);
    job.recon_ok = all_finite && num_rows_done == job.spec.height;
  });
}

}  // namespace nnc
