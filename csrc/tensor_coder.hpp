// Fused quantise-and-code entry points: one tensor, or several tensors on
// several threads. Each tensor is quantised (URQ / DQ, optionally rate-aware)
// into a caller-provided int32 buffer and then coded into its own segment.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "segment.hpp"

namespace nnc {

struct TensorJob {
  const float* x = nullptr;  // height*width values
  int32_t* q_out = nullptr;  // height*width reconstruction indices (output)
  SegmentSpec spec;          // has_qp must be true; codebook_size must be 0
  double lambda_scale = 0.0;
  int num_threads = 1;  // for the runs of a large trellis or block scan
  std::vector<uint8_t> segment;  // output
  std::vector<EntryPoint> entry_points;  // output (block scan)
  // Optional: height*width values x_hat = dequantize(q, qp) (output),
  // written by the threads that quantise.
  float* recon_out = nullptr;
};

// Quantise job.x with job.spec.qp into job.q_out and code the segment.
// With a block scan each block row is quantised in scan order, its DQ
// trellis starting in the state the previous block row ended in (a large
// rate-aware tensor: two runs of block rows, joined in one admissible path);
// job.num_threads > 1 runs the trellis halves or runs, and the level runs of
// a block scan, in parallel, with the same output. Throws like quantize()
// and encode_segment().
void encode_tensor(TensorJob& job);

// Run encode_tensor on every job, num_threads workers at once (0: one per
// hardware thread, at most one per job); threads left over when there are
// fewer jobs than threads go to the parallel parts of encode_tensor. If
// jobs fail, throws the error of the first failing job, prefixed with its
// index; std::invalid_argument and std::length_error keep their type.
void encode_tensors(std::vector<TensorJob>& jobs, int num_threads);

struct SegmentJob {
  const uint8_t* data = nullptr;
  size_t num_bytes = 0;
  SegmentSpec spec;
  int32_t* q_out = nullptr;  // height*width values (output)
  std::vector<EntryPoint> entry_points;  // block scan: the NDU's entry points
  DecodedSegment result;     // output
  // Optional dequantisation (float segments): recon_out receives
  // height*width values at qp = decoded qp offset + qp_offset, dequantised
  // by the threads that decode the rows. recon_ok (output) says that the
  // step size and every value came out finite; if not, recon_out is unused.
  float* recon_out = nullptr;
  int64_t qp_offset = 0;
  bool recon_ok = false;
};

// decode_segment for every job on num_threads workers, errors as above.
// Threads left over when there are fewer jobs than threads decode the
// block rows of block-scanned segments in parallel.
void decode_segments(std::vector<SegmentJob>& jobs, int num_threads);

}  // namespace nnc
