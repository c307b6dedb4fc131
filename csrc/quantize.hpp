// Quantisers of NNC (nnc-format §2): the qp -> step mapping, uniform
// reconstruction quantisation (URQ) and dependent quantisation (DQ) with an
// 8-state trellis.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace nnc {

// Step size of qp at qp_density d: (2^d + (qp & (2^d-1))) * 2^(floor(qp/2^d) - d),
// exact in float32. Throws std::invalid_argument for d outside 0..7.
float step_size(int qp, int qp_density);

// Rate-aware DQ runs of at least this many values are searched in two parts
// (quantize(), and the block scans of encode_tensor()).
constexpr size_t kDqSplitPositions = size_t(1) << 18;

// Largest lambda_scale accepted: well beyond useful values, and small enough
// that lambda times the bits of a path stays far inside the double range
// (at 1e308 the trellis' path costs overflowed to infinity). Exported to
// Python as _core.MAX_LAMBDA_SCALE, the options' bound.
constexpr double kMaxLambdaScale = 1e6;

// Reconstruction indices of x (n values) in q_out. URQ with lambda_scale 0:
// round-half-away(float32(float32(1/step) * x)) (quirk Q17). DQ: Viterbi
// search over the 8-state trellis; with lambda_scale 0 the minimum squared
// error admissible path. Throws std::invalid_argument naming max|x| and qp
// when some |x|/step does not fit int32 (or x is not finite). The DQ
// trellis starts in start_state (a block row continuing the scan) and the
// DQ state after the last value is returned (0 without DQ). The rate-aware
// DQ trellis of kDqSplitPositions values or more is searched in two halves,
// on two threads when num_threads > 1 (the same levels either way).
int quantize(const float* x, size_t n, int qp, int qp_density, bool dq,
             double lambda_scale, int32_t* q_out, int start_state = 0,
             int num_threads = 1);

// Where a DQ path through one run of values starts and ends.
struct DqPathEnds {
  int start_state = 0;  // DQ state before the first value
  int end_state = 0;    // DQ state after the last value
};

// DQ quantisation of one run of values, as quantize() with dq, for a run
// searched apart from its neighbours: start_state -1 lets the path start in
// any state at no cost (the state it took is returned), end_state -1 ends it
// in the cheapest state, 0..7 forces that state. Throws like quantize(), and
// std::invalid_argument when no admissible path joins the two given states.
DqPathEnds quantize_dq_run(const float* x, size_t n, int qp, int qp_density,
                           double lambda_scale, int start_state, int end_state,
                           int num_threads, int32_t* q_out);

// The forward pass the rate-aware DQ trellis runs on this CPU: "avx512"
// (x86-64 with AVX-512 and BMI2, unless NNC_DISABLE_AVX512 is set) or
// "portable". Both give the same levels.
const char* dq_trellis_kernel();

// For checking the rate-aware DQ trellis' two forward passes against each
// other: the portable pass (avx512 false) or the AVX-512 one over x from
// start_state (-1: any), lambda_scale > 0. Returns the 8 final path costs
// and the back-pointer rows (3 bytes per value: 3 bits per state, the
// entering edge and the candidate). Throws std::invalid_argument for a bad
// argument, when the AVX-512 pass is asked for and avx512_available() is
// false, and like quantize() when x does not fit qp.
struct DqForwardPass {
  std::vector<double> costs;
  std::vector<uint8_t> back_rows;
};
DqForwardPass dq_forward_pass(const float* x, size_t n, int qp, int qp_density,
                              double lambda_scale, int start_state, bool avx512);

// x_hat = float32(step * float32(q)).
void dequantize(const int32_t* q, size_t n, int qp, int qp_density, float* x_out);

// dequantize() with the step given; returns whether every x_hat is finite
// (x_hat is monotone in q, so the extreme q decide).
bool dequantize_finite(const int32_t* q, size_t n, float step, float* x_out);

}  // namespace nnc
