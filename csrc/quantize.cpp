// URQ and DQ quantisers (nnc-format §2.1-§2.3).
#include "quantize.hpp"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "nnc_tables.hpp"

namespace nnc {

namespace {

// Largest |x|/step accepted: the DQ trellis looks two steps beyond |x|/step.
constexpr double kMaxScaledMagnitude = 2147483647.0 - 4.0;

void check_range(const float* x, size_t n, float inverse_step, int qp) {
  float max_abs = 0.0f;
  bool finite = true;
  for (size_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    finite = finite && std::isfinite(a);
    max_abs = a > max_abs ? a : max_abs;
  }
  if (!finite) {
    throw std::invalid_argument("quantize: input contains NaN or infinity (qp " +
                                std::to_string(qp) + ")");
  }
  if (double(max_abs) * double(inverse_step) > kMaxScaledMagnitude) {
    throw std::invalid_argument("quantize: max|x| = " + std::to_string(max_abs) +
                                " divided by the step of qp " + std::to_string(qp) +
                                " does not fit int32; use a larger qp");
  }
}

void quantize_uniform(const float* x, size_t n, float inverse_step, int32_t* q_out) {
  for (size_t i = 0; i < n; ++i) {
    const float scaled = inverse_step * x[i];
    q_out[i] = static_cast<int32_t>(std::round(scaled));
  }
}

// Candidates of one value for the DQ trellis (nnc-format §2.3): per
// quantiser (Q0: even q, Q1: odd q or 0) the two nearest indices around
// t = x/step, plus 0, with their squared error and the parity of their level.
struct DqCandidates {
  int64_t q[2][3];
  double error[2][3];
  uint8_t parity[2][3];
  int count[2];
};

inline int64_t dq_level(int64_t q, int quantizer) {
  const int64_t sgn = (q > 0) - (q < 0);
  return (q + sgn * quantizer) >> 1;
}

inline void dq_candidates(double t, DqCandidates& c) {
  const int64_t even_low = 2 * int64_t(std::floor(t * 0.5));
  const int64_t odd_low = 2 * int64_t(std::floor((t - 1.0) * 0.5)) + 1;
  c.q[0][0] = even_low;
  c.q[0][1] = even_low + 2;
  c.count[0] = 2;
  if (even_low != 0 && even_low != -2) c.q[0][c.count[0]++] = 0;
  c.q[1][0] = odd_low;
  c.q[1][1] = odd_low + 2;
  c.q[1][2] = 0;
  c.count[1] = 3;
  for (int quantizer = 0; quantizer < 2; ++quantizer) {
    for (int j = 0; j < c.count[quantizer]; ++j) {
      const double err = t - double(c.q[quantizer][j]);
      c.error[quantizer][j] = err * err;
      c.parity[quantizer][j] = uint8_t(dq_level(c.q[quantizer][j], quantizer) & 1);
    }
  }
}

// Minimum squared error path through the DQ trellis (lambda_scale 0).
void quantize_dependent(const float* x, size_t n, float inverse_step, int32_t* q_out) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  // Back pointer per (position, state): previous state (3 bits) and the
  // candidate index (2 bits) that led there.
  std::vector<uint8_t> back(n * 8);
  double cost[8];
  for (double& c : cost) c = kInf;
  cost[0] = 0.0;

  DqCandidates cand;
  for (size_t i = 0; i < n; ++i) {
    dq_candidates(double(inverse_step) * double(x[i]), cand);
    double next_cost[8] = {kInf, kInf, kInf, kInf, kInf, kInf, kInf, kInf};
    uint8_t* back_row = &back[i * 8];
    for (int s = 0; s < 8; ++s) {
      const int quantizer = s & 1;
      for (int j = 0; j < cand.count[quantizer]; ++j) {
        const double total = cost[s] + cand.error[quantizer][j];
        const int next = kDqNextState[s][cand.parity[quantizer][j]];
        if (total < next_cost[next]) {
          next_cost[next] = total;
          back_row[next] = uint8_t(s | (j << 3));
        }
      }
    }
    for (int s = 0; s < 8; ++s) cost[s] = next_cost[s];
  }

  // Backtrack from the cheapest final state.
  int state = 0;
  for (int s = 1; s < 8; ++s) {
    if (cost[s] < cost[state]) state = s;
  }
  for (size_t i = n; i-- > 0;) {
    const uint8_t pointer = back[i * 8 + size_t(state)];
    const int prev = pointer & 7;
    dq_candidates(double(inverse_step) * double(x[i]), cand);
    q_out[i] = int32_t(cand.q[prev & 1][pointer >> 3]);
    state = prev;
  }
}

}  // namespace

float step_size(int qp, int qp_density) {
  if (qp_density < 0 || qp_density > 7) {
    throw std::invalid_argument("step_size: qp_density must be in 0..7, got " +
                                std::to_string(qp_density));
  }
  const int k = 1 << qp_density;
  const int mantissa = k + (qp & (k - 1));
  const int exponent = (qp >> qp_density) - qp_density;
  return static_cast<float>(std::ldexp(double(mantissa), exponent));
}

void quantize(const float* x, size_t n, int qp, int qp_density, bool dq,
              double lambda_scale, int32_t* q_out) {
  if (!(lambda_scale >= 0.0)) {
    throw std::invalid_argument("quantize: lambda_scale must be >= 0, got " +
                                std::to_string(lambda_scale));
  }
  const float step = step_size(qp, qp_density);
  if (step == 0.0f || !std::isfinite(step)) {
    throw std::invalid_argument("quantize: qp " + std::to_string(qp) +
                                " gives a step of 0 or infinity in float32");
  }
  const float inverse_step = 1.0f / step;
  check_range(x, n, inverse_step, qp);
  if (dq) {
    quantize_dependent(x, n, inverse_step, q_out);
  } else {
    quantize_uniform(x, n, inverse_step, q_out);
  }
}

void dequantize(const int32_t* q, size_t n, int qp, int qp_density, float* x_out) {
  const float step = step_size(qp, qp_density);
  for (size_t i = 0; i < n; ++i) x_out[i] = step * static_cast<float>(q[i]);
}

}  // namespace nnc
