// Fused and multi-threaded tensor coding (tensor_coder.hpp).
#include "tensor_coder.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <stdexcept>
#include <thread>

#include "quantize.hpp"

namespace nnc {

void encode_tensor(TensorJob& job) {
  const int64_t num_elements = validate_spec(job.spec, "encode_tensor");
  if (!job.spec.has_qp || job.spec.codebook_size != 0) {
    throw std::invalid_argument(
        "encode_tensor: needs a qp and no codebook (code INT and codebook "
        "tensors with encode_segment)");
  }
  quantize(job.x, size_t(num_elements), job.spec.qp, job.spec.qp_density, job.spec.dq,
           job.lambda_scale, job.q_out);
  job.segment = encode_segment(job.q_out, job.spec);
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

void encode_tensors(std::vector<TensorJob>& jobs, int num_threads) {
  run_jobs(jobs, num_threads, [](TensorJob& job) { encode_tensor(job); });
}

void decode_segments(std::vector<SegmentJob>& jobs, int num_threads) {
  run_jobs(jobs, num_threads, [](SegmentJob& job) {
    job.result = decode_segment(job.data, job.num_bytes, job.spec, job.q_out);
  });
}

}  // namespace nnc
