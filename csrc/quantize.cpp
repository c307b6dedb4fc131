// URQ and DQ quantisers (nnc-format §2.1-§2.3).
#include "quantize.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_features.hpp"
#include "nnc_tables.hpp"
#include "parallel.hpp"
#include "rate_model.hpp"

#if NNC_AVX512
#include <immintrin.h>
#endif

namespace nnc {

bool rate_context_matches_init_set_0() {
  static const bool matches = [] {
    ContextModel model;
    model.init(0);
    const RateContext context;
    return model.fast_shift == RateContext::kFastShift &&
           model.slow_shift == RateContext::kSlowShift && model.fast == context.fast &&
           model.slow == context.slow;
  }();
  return matches;
}

namespace {

// A double as %g writes it (std::to_string prints -1e-300 as -0.000000).
std::string number_str(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", value);
  return text;
}

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
    throw std::invalid_argument("quantize: max|x| = " + number_str(max_abs) +
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

inline int64_t dq_level(int64_t q, int quantizer) {
  const int64_t sgn = (q > 0) - (q < 0);
  return (q + sgn * quantizer) >> 1;
}

// floor() without a libm call (|v| < 2^62).
inline int64_t floor_to_int(double v) {
  const int64_t truncated = static_cast<int64_t>(v);
  return truncated - (v < double(truncated) ? 1 : 0);
}

// Candidate j (0..2) of quantiser Q0 (even q) or Q1 (odd q or 0) for
// t = x/step (nnc-format §2.3): Q0 tries the two nearest even indices, then
// 0, and repeats its first candidate when 0 is already one of them (never
// strictly better, so never chosen). Q1 tries the upper nearest odd index
// first: at t = 0 the tie between -1 and +1 goes to +1, as in NNCodec (no
// other equal-error, equal-parity pair exists), then the lower one, then 0.
inline int64_t dq_candidate(double t, int quantizer, int j) {
  // The lower nearest index of the quantiser (t - 0.0 is t, also for -0.0).
  const int64_t low = 2 * floor_to_int((t - double(quantizer)) * 0.5) + quantizer;
  const int64_t even_third = (low != 0 && low != -2) ? 0 : low;
  const int64_t candidates[2][3] = {{low, low + 2, even_third}, {low + 2, low, 0}};
  return candidates[quantizer][j];
}

// b if take_b else a, without a branch: the trellis' choices are data
// dependent and unpredictable.
inline uint32_t pick(bool take_b, uint32_t a, uint32_t b) {
  return a ^ ((a ^ b) & (0u - uint32_t(take_b)));
}

// The candidates of one value for the DQ trellis: per quantiser the three
// of dq_candidate with their squared error and level k, and per (quantiser,
// level parity) the first and the last candidate index with that parity.
// Every parity has one or two candidates (Q0's first two differ in parity;
// Q1's third is even and its first two are never both even), so the
// cheapest of a parity, ties to the earlier, is that of first and last.
struct DqCandidates {
  int64_t q[2][3];
  double error[2][3];
  int64_t level[2][3];
  uint8_t first[2][2];
  uint8_t last[2][2];
};

inline void dq_candidates(double t, DqCandidates& c) {
  const int64_t even_low = 2 * floor_to_int(t * 0.5);
  const int64_t odd_low = 2 * floor_to_int((t - 1.0) * 0.5) + 1;
  c.q[0][0] = even_low;
  c.q[0][1] = even_low + 2;
  c.q[0][2] = (even_low != 0 && even_low != -2) ? 0 : even_low;
  c.q[1][0] = odd_low + 2;
  c.q[1][1] = odd_low;
  c.q[1][2] = 0;
#pragma GCC unroll 2
  for (int quantizer = 0; quantizer < 2; ++quantizer) {
    int parity[3];
#pragma GCC unroll 3
    for (int j = 0; j < 3; ++j) {
      const double err = t - double(c.q[quantizer][j]);
      c.error[quantizer][j] = err * err;
      c.level[quantizer][j] = dq_level(c.q[quantizer][j], quantizer);
      parity[j] = int(c.level[quantizer][j] & 1);
    }
    for (int p = 0; p < 2; ++p) {
      c.first[quantizer][p] = uint8_t(parity[0] == p ? 0 : (parity[1] == p ? 1 : 2));
      c.last[quantizer][p] = uint8_t(parity[2] == p ? 2 : (parity[1] == p ? 1 : 0));
    }
  }
}

// The two (previous state, level parity) edges that enter each DQ state,
// in increasing previous-state order; the inverse of kDqNextState. Both
// previous states of a state share their quantiser.
constexpr int kDqPredState[8][2] = {{0, 4}, {2, 6}, {0, 4}, {2, 6},
                                    {3, 7}, {1, 5}, {3, 7}, {1, 5}};
constexpr int kDqPredParity[8][2] = {{0, 1}, {0, 1}, {1, 0}, {1, 0},
                                     {1, 0}, {1, 0}, {0, 1}, {0, 1}};

// Back pointers of the DQ trellis, 3 bytes per position: for each of the 8
// states, 3 bits (bit 0: which of the state's two entering edges won, bits
// 1-2: the candidate index within the previous state's quantiser).
class TrellisBackPointers {
 public:
  explicit TrellisBackPointers(size_t num_positions) : bytes_(num_positions * 3) {}

  // row: the 8 states' 3-bit entries, state s in bits 3s..3s+2.
  void set_row(size_t position, uint32_t row) {
    uint8_t* out = &bytes_[position * 3];
    out[0] = uint8_t(row);
    out[1] = uint8_t(row >> 8);
    out[2] = uint8_t(row >> 16);
  }

  // kDqPredState[s][0] at bits 3s..3s+2; kDqPredState[s][1] is it + 4.
  // Tracing back shifts a register instead of loading from a table, which
  // takes a load off the chain that runs from one position to the next.
  static constexpr uint32_t kFirstPredStates = [] {
    uint32_t packed = 0;
    for (int s = 0; s < 8; ++s) {
      packed |= uint32_t(kDqPredState[s][0]) << (3 * s);
    }
    return packed;
  }();
  static_assert([] {
    for (int s = 0; s < 8; ++s) {
      if (kDqPredState[s][1] != kDqPredState[s][0] + 4) return false;
    }
    return true;
  }());

  static uint32_t entry(int edge, int candidate, int state) {
    return uint32_t(edge | (candidate << 1)) << (3 * state);
  }

  // The rows, 3 bytes per position.
  const std::vector<uint8_t>& rows() const { return bytes_; }

  // The previous state and candidate index on the path into `state`.
  void get(size_t position, int state, int& prev_state, int& candidate) const {
    const uint8_t* in = &bytes_[position * 3];
    const uint32_t row = uint32_t(in[0]) | (uint32_t(in[1]) << 8) |
                         (uint32_t(in[2]) << 16);
    const int shift = 3 * state;
    const uint32_t bits = (row >> shift) & 7u;
    prev_state = int(((kFirstPredStates >> shift) & 7u) | ((bits & 1u) << 2));
    candidate = int(bits >> 1);
  }

 private:
  std::vector<uint8_t> bytes_;
};

// Path costs before the first value: 0 in start_state (in every state when
// it is -1), infinite elsewhere.
void start_costs(int start_state, double* cost) {
  for (int s = 0; s < 8; ++s) {
    cost[s] = start_state < 0 || s == start_state
                  ? 0.0
                  : std::numeric_limits<double>::infinity();
  }
}

// The cheapest of the 8 final states (ties to the lowest).
int cheapest_state(const double* cost) {
  int state = 0;
  for (int s = 1; s < 8; ++s) {
    if (cost[s] < cost[state]) state = s;
  }
  return state;
}

// Stretches of a rate-aware trellis path that TrellisRates::settle() took
// as settled, with their q already written to q_out: [begin, end) was
// traced back from end_state (the state before position end) and starts in
// start_state (the state before begin). A survivor is unique per position
// and state, so a final path that is in end_state before `end` equals the
// stretch on [begin, end): its traceback can jump to begin.
struct SettledStretch {
  size_t begin;
  size_t end;
  int start_state;
  int end_state;
};

struct SettledPath {
  int32_t* q_out = nullptr;               // where settle() writes the stretches' q
  std::vector<SettledStretch> stretches;  // consecutive, from position 0
};

// Follow the back pointers from `final_state`, writing q for every value
// (skipping, with `settled`, the stretches whose q is already in q_out).
// Returns the state the path starts in (before the first value).
int backtrack_from(const float* x, size_t n, float inverse_step,
                   const TrellisBackPointers& back, int final_state, int32_t* q_out,
                   const SettledPath* settled = nullptr) {
  int state = final_state;
  size_t i = n;
  const auto trace_down_to = [&](size_t stop) {
    for (; i > stop;) {
      --i;
      int prev = 0;
      int candidate = 0;
      back.get(i, state, prev, candidate);
      const double t = double(inverse_step) * double(x[i]);
      q_out[i] = int32_t(dq_candidate(t, prev & 1, candidate));
      state = prev;
    }
  };

  if (settled != nullptr) {
    if (settled->q_out != q_out) {
      throw std::logic_error("backtrack_from: settled q written elsewhere");
    }
    for (size_t k = settled->stretches.size(); k-- > 0;) {
      const SettledStretch& stretch = settled->stretches[k];
      trace_down_to(stretch.end);
      if (state == stretch.end_state) {
        i = stretch.begin;
        state = stretch.start_state;
      }
    }
  }
  trace_down_to(0);
  return state;
}

// Trellis traceback shared by both DQ searches: from end_state, or the
// cheapest final state when it is -1. Returns where the path starts and ends.
DqPathEnds backtrack_trellis(const float* x, size_t n, float inverse_step,
                             const TrellisBackPointers& back, const double* cost,
                             int end_state, int32_t* q_out,
                             const SettledPath* settled = nullptr) {
  DqPathEnds ends;
  ends.end_state = end_state < 0 ? cheapest_state(cost) : end_state;
  if (!(cost[ends.end_state] < std::numeric_limits<double>::infinity())) {
    throw std::invalid_argument("quantize: no admissible DQ path of " +
                                std::to_string(n) + " values ends in state " +
                                std::to_string(end_state));
  }
  ends.start_state =
      backtrack_from(x, n, inverse_step, back, ends.end_state, q_out, settled);
  return ends;
}

// Minimum squared error path through the DQ trellis (lambda_scale 0). Each
// state keeps the cheaper of its two entering edges; an edge (s, parity)
// carries the first nearest candidate of quantiser s&1 with that parity, so
// ties resolve to the lowest previous state, then the first candidate.
// start_state -1: any start state at no cost.
DqPathEnds quantize_dependent(const float* x, size_t n, float inverse_step,
                              int start_state, int end_state, int32_t* q_out) {
  TrellisBackPointers back(n);
  double cost[8];
  start_costs(start_state, cost);

  DqCandidates cand;
  for (size_t i = 0; i < n; ++i) {
    dq_candidates(double(inverse_step) * double(x[i]), cand);

    // Best candidate per (quantiser, parity); ties keep the earlier one.
    double best_error[2][2];
    int best_index[2][2];
#pragma GCC unroll 2
    for (int quantizer = 0; quantizer < 2; ++quantizer) {
#pragma GCC unroll 2
      for (int parity = 0; parity < 2; ++parity) {
        const int first = cand.first[quantizer][parity];
        const int last = cand.last[quantizer][parity];
        const double first_error = cand.error[quantizer][first];
        const double last_error = cand.error[quantizer][last];
        // std::min(a, b) is b < a ? b : a: ties keep the first.
        best_error[quantizer][parity] = std::min(first_error, last_error);
        best_index[quantizer][parity] =
            int(pick(last_error < first_error, uint32_t(first), uint32_t(last)));
      }
    }

    double next_cost[8];
    uint32_t back_row = 0;
#pragma GCC unroll 8
    for (int next = 0; next < 8; ++next) {
      const int s0 = kDqPredState[next][0];
      const int p0 = kDqPredParity[next][0];
      const int s1 = kDqPredState[next][1];
      const int p1 = kDqPredParity[next][1];
      const double via0 = cost[s0] + best_error[s0 & 1][p0];
      const double via1 = cost[s1] + best_error[s1 & 1][p1];
      // Predecessors are listed in increasing state order (s0 < s1).
      const bool second = via1 < via0;
      next_cost[next] = std::min(via0, via1);
      const uint32_t j = pick(second, uint32_t(best_index[s0 & 1][p0]),
                              uint32_t(best_index[s1 & 1][p1]));
      back_row |= TrellisBackPointers::entry(second, int(j), next);
    }
    back.set_row(i, back_row);
    for (int s = 0; s < 8; ++s) cost[s] = next_cost[s];
  }

  return backtrack_trellis(x, n, inverse_step, back, cost, end_state, q_out);
}

// Rate-aware URQ (RDOQ): per value, in scan order, the cheapest of
// {0, r-1, r} with r = round-half-away(t), cost = (|t| - a)^2 + lambda * bits;
// the bit estimates adapt to the levels already chosen.
void quantize_uniform_rdo(const float* x, size_t n, float inverse_step,
                          double lambda_per_bit_unit, int32_t* q_out) {
  LevelRateModel model;
  long long prev_level = 0;
  for (size_t i = 0; i < n; ++i) {
    const float scaled = inverse_step * x[i];
    const long long rounded = static_cast<long long>(std::round(scaled));
    long long chosen = 0;
    if (rounded != 0) {
      const bool negative = rounded < 0;
      const long long magnitude = negative ? -rounded : rounded;
      const double t = std::fabs(double(scaled));
      const uint32_t sig_one = model.sig_cost(0, prev_level, 1);

      long long best = magnitude;
      double err = t - double(magnitude);
      double best_cost = err * err + lambda_per_bit_unit *
          double(sig_one + model.sign_and_magnitude_cost(
                               prev_level, uint64_t(magnitude), negative));
      if (magnitude > 1) {
        err = t - double(magnitude - 1);
        const double cost = err * err + lambda_per_bit_unit *
            double(sig_one + model.sign_and_magnitude_cost(
                                 prev_level, uint64_t(magnitude - 1), negative));
        if (cost < best_cost) {
          best = magnitude - 1;
          best_cost = cost;
        }
      }
      const double zero_cost =
          t * t + lambda_per_bit_unit * double(model.sig_cost(0, prev_level, 0));
      if (zero_cost < best_cost) best = 0;
      chosen = negative ? -best : best;
    }
    q_out[i] = static_cast<int32_t>(chosen);
    model.update(0, prev_level, chosen);
    prev_level = chosen;
  }
}

// lambda times the bits of a RateSnapshot, for the trellis' branch costs.
struct ScaledRates {
  double sig[8][3][2];
  double sign[3][2];
  double magnitude[2][RateSnapshot::kTabulatedMagnitudes + 1];

  void refresh(const RateSnapshot& rates, double lambda_per_bit_unit) {
    for (int s = 0; s < 8; ++s) {
      for (int neighbour = 0; neighbour < 3; ++neighbour) {
        for (int significant = 0; significant < 2; ++significant) {
          sig[s][neighbour][significant] =
              lambda_per_bit_unit * double(rates.sig(s, neighbour, significant));
        }
      }
    }
    for (int neighbour = 0; neighbour < 3; ++neighbour) {
      sign[neighbour][0] = lambda_per_bit_unit * double(rates.sign(neighbour, false));
      sign[neighbour][1] = lambda_per_bit_unit * double(rates.sign(neighbour, true));
    }
    for (int negative = 0; negative < 2; ++negative) {
      for (int a = 0; a <= RateSnapshot::kTabulatedMagnitudes; ++a) {
        magnitude[negative][a] =
            lambda_per_bit_unit * double(rates.magnitude(uint64_t(a), negative != 0));
      }
    }
  }
};

// The rate side of the rate-aware DQ trellis: one shared rate model and its
// lambda-scaled bit tables. Every kSettleEvery positions the survivor path
// of the best state is taken as settled up to kSettleLag positions back,
// and the model is adapted to those levels.
class TrellisRates {
 public:
  // With `settled`, every settle() also writes the settled stretch's q
  // and records it, for the final traceback (backtrack_from).
  explicit TrellisRates(double lambda_per_bit_unit, SettledPath* settled = nullptr)
      : lambda_per_bit_unit_(lambda_per_bit_unit), settled_(settled) {
    rates_.refresh(model_);
    scaled_.refresh(rates_, lambda_per_bit_unit_);
  }
  // rates_ points into model_: a copy would read the original's model.
  TrellisRates(const TrellisRates&) = delete;
  TrellisRates& operator=(const TrellisRates&) = delete;

  // Keep the candidates' levels at position i for settle(), level[3q + j]
  // for candidate j of quantiser q.
  int32_t* recent_levels(size_t i) { return recent_levels_[i % kRecentPositions]; }
  void record(size_t i, const DqCandidates& cand) {
    int32_t* levels = recent_levels(i);
    for (int c = 0; c < 6; ++c) levels[c] = int32_t(cand.level[c / 3][c % 3]);
  }

  // settle() runs after kSettleEvery + kSettleLag positions, then every
  // kSettleEvery; both are multiples of 8, so the rates stay fixed within
  // any 8 positions that start at a multiple of 8.
  static constexpr size_t kSettleEvery = 256;
  static constexpr size_t kSettleLag = 32;
  static_assert(kSettleEvery % 8 == 0 && kSettleLag % 8 == 0);

  // Whether settle() is due after position i.
  bool due(size_t i) const { return i + 1 >= committed_ + kSettleEvery + kSettleLag; }

  // After position i, with the path costs in `cost`: settle the path of the
  // cheapest state and refresh the tables.
  void settle(size_t i, const double* cost, const TrellisBackPointers& back) {
    int state = cheapest_state(cost);
    const size_t span = i + 1 - committed_;
    path_levels_.resize(span);
    path_states_.resize(span);
    for (size_t p = i + 1; p-- > committed_;) {
      int prev = 0;
      int candidate = 0;
      back.get(p, state, prev, candidate);
      path_levels_[p - committed_] =
          recent_levels_[p % kRecentPositions][3 * (prev & 1) + candidate];
      path_states_[p - committed_] = uint8_t(prev);
      state = prev;
    }
    // The model only needs to be close to the final path, so a survivor
    // that has not yet merged with earlier commits is taken as it is.
    const size_t end = i + 1 - kSettleLag;
    for (size_t p = committed_; p < end; ++p) {
      const long long k = path_levels_[p - committed_];
      model_.update(path_states_[p - committed_], committed_prev_level_, k);
      committed_prev_level_ = k;
    }
    if (settled_ != nullptr) {
      // q = 2k - sgn(k) * quantiser, the inverse of dq_candidates' k.
      for (size_t p = committed_; p < end; ++p) {
        const long long k = path_levels_[p - committed_];
        const long long odd = path_states_[p - committed_] & 1;
        settled_->q_out[p] = int32_t(2 * k - odd * ((k > 0) - (k < 0)));
      }
      settled_->stretches.push_back(
          {committed_, end, state, int(path_states_[end - committed_])});
    }
    rates_.refresh(model_);
    scaled_.refresh(rates_, lambda_per_bit_unit_);
    committed_ = end;
  }

  const ScaledRates& scaled() const { return scaled_; }

  // lambda times the bits of the greater-than flags and remainder of |k|.
  double magnitude_cost(uint64_t magnitude, bool negative) const {
    return magnitude <= uint64_t(RateSnapshot::kTabulatedMagnitudes)
               ? scaled_.magnitude[negative][magnitude]
               : lambda_per_bit_unit_ * double(rates_.magnitude(magnitude, negative));
  }

 private:
  // Positions whose candidate levels are kept: settle() looks back at most
  // kSettleEvery + kSettleLag.
  static constexpr size_t kRecentPositions = 512;
  static_assert(kRecentPositions >= kSettleEvery + kSettleLag);

  double lambda_per_bit_unit_;
  SettledPath* settled_;
  LevelRateModel model_;
  RateSnapshot rates_;
  ScaledRates scaled_;
  size_t committed_ = 0;
  long long committed_prev_level_ = 0;
  std::vector<int64_t> path_levels_;
  std::vector<uint8_t> path_states_;
  int32_t recent_levels_[kRecentPositions][6];
};

// Rate-aware DQ trellis, portable form: branch cost = (t - q)^2 + lambda *
// bits, where the bits come from one shared rate model (TrellisRates) with
// the significance context of the branch's own state and survivor
// neighbour.
void forward_dependent_rdo_portable(const float* x, size_t n, float inverse_step,
                                    double lambda_per_bit_unit, int start_state,
                                    TrellisBackPointers& back, double* cost,
                                    SettledPath* settled = nullptr) {
  // Neighbour class (0 zero, 1 negative, 2 positive) of each survivor's
  // last level: all the rates need of it.
  uint8_t prev_class[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  start_costs(start_state, cost);
  TrellisRates rates(lambda_per_bit_unit, settled);

  DqCandidates cand;
  for (size_t i = 0; i < n; ++i) {
    dq_candidates(double(inverse_step) * double(x[i]), cand);
    rates.record(i, cand);
    const ScaledRates& scaled = rates.scaled();

    // State-independent parts of the candidates' costs: per neighbour class
    // the squared error plus lambda times the sign and magnitude bits (none
    // for level 0), and the neighbour class each level leaves behind.
    double level_cost[2][3][3];  // [quantizer][neighbour][candidate]
    uint8_t nonzero[2][3];
    uint8_t level_class[2][3];
#pragma GCC unroll 2
    for (int quantizer = 0; quantizer < 2; ++quantizer) {
#pragma GCC unroll 3
      for (int j = 0; j < 3; ++j) {
        const long long k = cand.level[quantizer][j];
        const bool negative = k < 0;
        nonzero[quantizer][j] = k != 0;
        level_class[quantizer][j] = uint8_t(neighbour_class(k));
        const double magnitude_cost =
            rates.magnitude_cost(uint64_t(negative ? -k : k), negative);
        const double error = cand.error[quantizer][j];
#pragma GCC unroll 3
        for (int neighbour = 0; neighbour < 3; ++neighbour) {
          level_cost[quantizer][neighbour][j] =
              k != 0 ? error + magnitude_cost + scaled.sign[neighbour][negative]
                     : error;
        }
      }
    }

    // Cheapest candidate per (state, level parity): add the significance
    // bin's cost with the state's own context and survivor neighbour; ties
    // keep the earlier candidate.
    double edge_cost[8][2];
    uint8_t edge_index[8][2];
#pragma GCC unroll 8
    for (int s = 0; s < 8; ++s) {
      const int quantizer = s & 1;
      const int neighbour = prev_class[s];
      const double* sig_cost = scaled.sig[s][neighbour];
      const double* state_level_cost = level_cost[quantizer][neighbour];
      double value[3];
#pragma GCC unroll 3
      for (int j = 0; j < 3; ++j) {
        value[j] = state_level_cost[j] + sig_cost[nonzero[quantizer][j]];
      }
#pragma GCC unroll 2
      for (int parity = 0; parity < 2; ++parity) {
        const int first = cand.first[quantizer][parity];
        const int last = cand.last[quantizer][parity];
        edge_cost[s][parity] = std::min(value[first], value[last]);
        edge_index[s][parity] =
            uint8_t(pick(value[last] < value[first], uint32_t(first), uint32_t(last)));
      }
    }

    // Each state keeps the cheaper of its two entering edges.
    double next_cost[8];
    uint8_t next_class[8];
    uint32_t back_row = 0;
#pragma GCC unroll 8
    for (int next = 0; next < 8; ++next) {
      const int s0 = kDqPredState[next][0];
      const int p0 = kDqPredParity[next][0];
      const int s1 = kDqPredState[next][1];
      const int p1 = kDqPredParity[next][1];
      const double via0 = cost[s0] + edge_cost[s0][p0];
      const double via1 = cost[s1] + edge_cost[s1][p1];
      const bool second = via1 < via0;
      const uint32_t j = pick(second, edge_index[s0][p0], edge_index[s1][p1]);
      next_cost[next] = std::min(via0, via1);
      next_class[next] = level_class[s0 & 1][j];
      back_row |= TrellisBackPointers::entry(second, j, next);
    }
    back.set_row(i, back_row);
#pragma GCC unroll 8
    for (int s = 0; s < 8; ++s) {
      cost[s] = next_cost[s];
      prev_class[s] = next_class[s];
    }

    if (rates.due(i)) rates.settle(i, cost, back);
  }
}

#if NNC_AVX512
// Lanes of AVX-512 vectors (GCC vector extensions) for the trellis below.
using Lanes8d = double __attribute__((vector_size(64)));
using Lanes8i = int64_t __attribute__((vector_size(64)));
using Lanes8b = uint8_t __attribute__((vector_size(8)));
using Lanes8f = float __attribute__((vector_size(32)));

constexpr Lanes8i kOddStateLanes = {0, -1, 0, -1, 0, -1, 0, -1};
// Masks from a 2-bit pattern (bit q: quantiser q's case holds) over the
// states, whose quantiser is s & 1.
constexpr Lanes8i kQuantizerMask[4] = {{0, 0, 0, 0, 0, 0, 0, 0},
                                       {-1, 0, -1, 0, -1, 0, -1, 0},
                                       {0, -1, 0, -1, 0, -1, 0, -1},
                                       {-1, -1, -1, -1, -1, -1, -1, -1}};
// Candidate indices (i0 for quantiser 0, i1 for quantiser 1) over the
// states, indexed by 3 * i0 + i1.
constexpr Lanes8i kCandidateIndex[9] = {
    {0, 0, 0, 0, 0, 0, 0, 0}, {0, 1, 0, 1, 0, 1, 0, 1}, {0, 2, 0, 2, 0, 2, 0, 2},
    {1, 0, 1, 0, 1, 0, 1, 0}, {1, 1, 1, 1, 1, 1, 1, 1}, {1, 2, 1, 2, 1, 2, 1, 2},
    {2, 0, 2, 0, 2, 0, 2, 0}, {2, 1, 2, 1, 2, 1, 2, 1}, {2, 2, 2, 2, 2, 2, 2, 2}};
// kDqPredState as lane indices, and the entering edges as indices into the
// 16 lanes of (parity-0 edges, parity-1 edges): state + 8 * parity.
constexpr Lanes8i kPredState0 = {0, 2, 0, 2, 3, 1, 3, 1};
constexpr Lanes8i kPredState1 = {4, 6, 4, 6, 7, 5, 7, 5};
constexpr Lanes8i kPredEdge0 = {0, 2, 8, 10, 11, 9, 3, 1};
constexpr Lanes8i kPredEdge1 = {12, 14, 4, 6, 7, 5, 15, 13};
// 3 * quantiser of each state's predecessors (both share it).
constexpr Lanes8i kPredQuantizer3 = {0, 0, 0, 0, 3, 3, 3, 3};

NNC_TARGET_AVX512 inline Lanes8d broadcast(double v) {
  return Lanes8d{v, v, v, v, v, v, v, v};
}
NNC_TARGET_AVX512 inline Lanes8i broadcast(int64_t v) {
  return Lanes8i{v, v, v, v, v, v, v, v};
}

// a[0], a[1] or a[2] per lane, by the lane's index 0..2.
NNC_TARGET_AVX512 inline Lanes8d select3(Lanes8i index, const Lanes8d* a) {
  return index == 2 ? a[2] : (index == 1 ? a[1] : a[0]);
}

// The candidates of 8 consecutive positions (lanes = positions), as
// dq_candidates() and the portable pass's level costs make them, in the
// form the state step reads per position.
struct CandidateBatch {
  double base[6][8];       // [3q + j]: squared error + lambda * magnitude bits
  int64_t nonzero[3][8];   // [j]: bit q set when quantiser q's level is nonzero
  int64_t negative[3][8];  // [j]: bit q set when it is negative
  int64_t first[2][8];     // [parity]: 3 * first[0][parity] + first[1][parity]
  int64_t last[2][8];      // [parity]: likewise for the last candidates
  int64_t class_bits[8];   // neighbour class of level (q, j) at bits 2(3q + j)
  int32_t level[6][8];     // [3q + j]: the level k
};

// floor() per lane as int64 (|v| < 2^62), as floor_to_int.
NNC_TARGET_AVX512 inline Lanes8i floor_lanes(Lanes8d v) {
  const __m512d floor = _mm512_maskz_roundscale_pd(
      0xff, __m512d(v), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  return __builtin_convertvector(Lanes8d(floor), Lanes8i);
}

// Index per lane of the first candidate (0..2) with level parity p, given
// the three candidates' parities, or of the last one.
NNC_TARGET_AVX512 inline Lanes8i first_with_parity(const Lanes8i* parity, int64_t p) {
  return parity[0] == p
             ? broadcast(int64_t(0))
             : (parity[1] == p ? broadcast(int64_t(1)) : broadcast(int64_t(2)));
}
NNC_TARGET_AVX512 inline Lanes8i last_with_parity(const Lanes8i* parity, int64_t p) {
  return parity[2] == p
             ? broadcast(int64_t(2))
             : (parity[1] == p ? broadcast(int64_t(1)) : broadcast(int64_t(0)));
}

// Fill `batch` for x[0..count), count <= 8 (missing lanes read x = 0).
NNC_TARGET_AVX512 void prepare_candidates(const float* x, size_t count,
                                          float inverse_step, const TrellisRates& rates,
                                          CandidateBatch& batch) {
  Lanes8f x_lanes = {0, 0, 0, 0, 0, 0, 0, 0};
  __builtin_memcpy(&x_lanes, x, count * sizeof(float));
  const Lanes8d t =
      broadcast(double(inverse_step)) * __builtin_convertvector(x_lanes, Lanes8d);

  // The candidate indices q of dq_candidates().
  const Lanes8i even_low = 2 * floor_lanes(t * 0.5);
  const Lanes8i odd_low = 2 * floor_lanes((t - 1.0) * 0.5) + 1;
  const Lanes8i zero = broadcast(int64_t(0));
  Lanes8i q[6];
  q[0] = even_low;
  q[1] = even_low + 2;
  q[2] = (even_low != 0) & (even_low != -2) ? zero : even_low;
  q[3] = odd_low + 2;
  q[4] = odd_low;
  q[5] = zero;

  const double* magnitude_table = &rates.scaled().magnitude[0][0];
  constexpr int64_t kRow = RateSnapshot::kTabulatedMagnitudes + 1;
  Lanes8d small_costs[2][2];  // [negative][magnitudes 0-7, 8-15]
  __builtin_memcpy(small_costs[0], magnitude_table, sizeof(small_costs[0]));
  __builtin_memcpy(small_costs[1], magnitude_table + kRow, sizeof(small_costs[1]));
  Lanes8i class_bits = zero;
  Lanes8i parity[2][3];
#pragma GCC unroll 6
  for (int c = 0; c < 6; ++c) {
    const int quantizer = c / 3;
    const int j = c % 3;
    const Lanes8d error = t - __builtin_convertvector(q[c], Lanes8d);
    const Lanes8i sgn = (q[c] < 0) - (q[c] > 0);  // comparisons give -1
    const Lanes8i level = (q[c] + sgn * quantizer) >> 1;
    const Lanes8i negative = level < 0;
    const Lanes8i magnitude = negative ? -level : level;

    // lambda * magnitude bits: magnitudes below 16 from registers, others
    // gathered from the table (tabulated up to kTabulatedMagnitudes).
    Lanes8d magnitude_cost;
    if (_mm512_cmpge_epi64_mask(__m512i(magnitude), __m512i(broadcast(int64_t(16)))) ==
        0) {
      const Lanes8d plus =
          __builtin_shuffle(small_costs[0][0], small_costs[0][1], magnitude);
      const Lanes8d minus =
          __builtin_shuffle(small_costs[1][0], small_costs[1][1], magnitude);
      magnitude_cost = negative ? minus : plus;
    } else {
      const Lanes8i tabulated = magnitude <= RateSnapshot::kTabulatedMagnitudes;
      const Lanes8i index = tabulated ? (negative & kRow) + magnitude : zero;
      magnitude_cost = Lanes8d(_mm512_mask_i64gather_pd(
          _mm512_setzero_pd(), 0xff, __m512i(index), magnitude_table, 8));
      for (int lane = 0; lane < 8; ++lane) {
        if (!tabulated[lane]) {
          magnitude_cost[lane] =
              rates.magnitude_cost(uint64_t(magnitude[lane]), negative[lane] != 0);
        }
      }
    }
    const Lanes8d squared = error * error;
    const Lanes8d base = level != 0 ? squared + magnitude_cost : squared;

    __builtin_memcpy(batch.base[c], &base, sizeof(base));
    for (int lane = 0; lane < 8; ++lane) batch.level[c][lane] = int32_t(level[lane]);
    const Lanes8i bit = broadcast(int64_t(1) << quantizer);
    Lanes8i nonzero_bits = (level != 0) & bit;
    Lanes8i negative_bits = negative & bit;
    if (quantizer == 1) {
      Lanes8i previous;
      __builtin_memcpy(&previous, batch.nonzero[j], sizeof(previous));
      nonzero_bits |= previous;
      __builtin_memcpy(&previous, batch.negative[j], sizeof(previous));
      negative_bits |= previous;
    }
    __builtin_memcpy(batch.nonzero[j], &nonzero_bits, sizeof(nonzero_bits));
    __builtin_memcpy(batch.negative[j], &negative_bits, sizeof(negative_bits));
    const Lanes8i neighbour = (negative & 1) | ((level > 0) & 2);
    class_bits |= neighbour << (2 * c);
    parity[quantizer][j] = level & 1;
  }
  __builtin_memcpy(batch.class_bits, &class_bits, sizeof(class_bits));
  for (int p = 0; p < 2; ++p) {
    const Lanes8i first =
        3 * first_with_parity(parity[0], p) + first_with_parity(parity[1], p);
    const Lanes8i last =
        3 * last_with_parity(parity[0], p) + last_with_parity(parity[1], p);
    __builtin_memcpy(batch.first[p], &first, sizeof(first));
    __builtin_memcpy(batch.last[p], &last, sizeof(last));
  }
}

// forward_dependent_rdo_portable with the 8 states in the lanes of AVX-512
// vectors: the same double operations in the same order, so the same costs,
// ties, back pointers and levels.
NNC_TARGET_AVX512 void forward_dependent_rdo_avx512(
    const float* x, size_t n, float inverse_step, double lambda_per_bit_unit,
    int start_state, TrellisBackPointers& back, double* cost,
    SettledPath* settled = nullptr) {
  start_costs(start_state, cost);
  TrellisRates rates(lambda_per_bit_unit, settled);
  // Per bin value and neighbour class, lambda times the significance and
  // sign bits of every state; refreshed with the rates.
  Lanes8d sig[2][3];
  Lanes8d sign[2][3];
  const auto load_bit_lanes = [&]() NNC_TARGET_AVX512 {
    const ScaledRates& scaled = rates.scaled();
    for (int neighbour = 0; neighbour < 3; ++neighbour) {
      for (int bin = 0; bin < 2; ++bin) {
        for (int s = 0; s < 8; ++s)
          sig[bin][neighbour][s] = scaled.sig[s][neighbour][bin];
        sign[bin][neighbour] = broadcast(scaled.sign[neighbour][bin]);
      }
    }
  };
  load_bit_lanes();
  Lanes8d path_cost;
  __builtin_memcpy(&path_cost, cost, sizeof(path_cost));
  Lanes8i prev_class = broadcast(int64_t(0));

  CandidateBatch batch;
  for (size_t i = 0; i < n; ++i) {
    // Candidates 8 positions at a time; the rates change only after a
    // position i with i % 8 == 7 (TrellisRates::kSettleEvery).
    const size_t lane = i % 8;
    if (lane == 0) {
      prepare_candidates(x + i, std::min<size_t>(8, n - i), inverse_step, rates, batch);
    }
    int32_t* recent = rates.recent_levels(i);
    for (int c = 0; c < 6; ++c) recent[c] = batch.level[c][lane];
    const int64_t class_bits = batch.class_bits[lane];

    // The candidates' costs in each state, as the portable pass adds them:
    // ((error + magnitude) + sign) + significance.
    const Lanes8d sig_zero = select3(prev_class, sig[0]);
    const Lanes8d sig_one = select3(prev_class, sig[1]);
    const Lanes8d sign_plus = select3(prev_class, sign[0]);
    const Lanes8d sign_minus = select3(prev_class, sign[1]);
    Lanes8d value[3];
#pragma GCC unroll 3
    for (int j = 0; j < 3; ++j) {
      const Lanes8d b = kOddStateLanes ? broadcast(batch.base[3 + j][lane])
                                       : broadcast(batch.base[j][lane]);
      const Lanes8d sign_bits =
          kQuantizerMask[batch.negative[j][lane]] ? sign_minus : sign_plus;
      value[j] = kQuantizerMask[batch.nonzero[j][lane]] ? (b + sign_bits) + sig_one
                                                        : b + sig_zero;
    }

    // Cheapest candidate per (state, parity), ties to the earlier.
    Lanes8d edge[2];
    Lanes8i edge_index[2];
#pragma GCC unroll 2
    for (int parity = 0; parity < 2; ++parity) {
      const Lanes8i first = kCandidateIndex[batch.first[parity][lane]];
      const Lanes8i last = kCandidateIndex[batch.last[parity][lane]];
      const Lanes8d first_value = select3(first, value);
      const Lanes8d last_value = select3(last, value);
      const Lanes8i take_last = last_value < first_value;
      edge[parity] = take_last ? last_value : first_value;
      edge_index[parity] = take_last ? last : first;
    }

    // Each state keeps the cheaper of its two entering edges.
    const Lanes8d via0 = __builtin_shuffle(path_cost, kPredState0) +
                         __builtin_shuffle(edge[0], edge[1], kPredEdge0);
    const Lanes8d via1 = __builtin_shuffle(path_cost, kPredState1) +
                         __builtin_shuffle(edge[0], edge[1], kPredEdge1);
    const Lanes8i second = via1 < via0;
    path_cost = second ? via1 : via0;
    const Lanes8i j = second
                          ? __builtin_shuffle(edge_index[0], edge_index[1], kPredEdge1)
                          : __builtin_shuffle(edge_index[0], edge_index[1], kPredEdge0);
    prev_class = (broadcast(class_bits) >> (2 * (kPredQuantizer3 + j))) & 3;

    // Back pointers: (second | j << 1) per state, 3 bits each.
    const Lanes8b entries = __builtin_convertvector((second & 1) | (j << 1), Lanes8b);
    uint64_t entry_bytes;
    __builtin_memcpy(&entry_bytes, &entries, sizeof(entry_bytes));
    back.set_row(i, uint32_t(_pext_u64(entry_bytes, 0x0707070707070707ull)));

    if (rates.due(i) || i + 1 == n) {
      __builtin_memcpy(cost, &path_cost, sizeof(path_cost));
      if (rates.due(i)) {
        rates.settle(i, cost, back);
        load_bit_lanes();
      }
    }
  }
}
#endif  // NNC_AVX512

// The rate-aware trellis' forward pass over x[0..n): back pointers into
// `back`, the 8 final path costs into `cost`. Runs the AVX-512 pass when
// use_avx512(), else the portable one (the same result).
void forward_dependent_rdo(const float* x, size_t n, float inverse_step,
                           double lambda_per_bit_unit, int start_state,
                           TrellisBackPointers& back, double* cost,
                           SettledPath* settled) {
#if NNC_AVX512
  if (use_avx512()) {
    forward_dependent_rdo_avx512(x, n, inverse_step, lambda_per_bit_unit, start_state,
                                 back, cost, settled);
    return;
  }
#endif
  forward_dependent_rdo_portable(x, n, inverse_step, lambda_per_bit_unit, start_state,
                                 back, cost, settled);
}

// Rate-aware DQ over x[0..n) from start_state. From kDqSplitPositions values
// on, the trellis is cut in two halves searched on two threads (when
// allowed): the second starts in any state at no cost, and the first is
// traced back from the state the second's best path starts in. The levels
// stay one admissible path and do not depend on the thread count.

DqPathEnds quantize_dependent_rdo(const float* x, size_t n, float inverse_step,
                                  double lambda_per_bit_unit, int start_state,
                                  int end_state, int num_threads, int32_t* q_out) {
  double cost[8];
  if (n < kDqSplitPositions) {
    TrellisBackPointers back(n);
    SettledPath settled{q_out, {}};
    forward_dependent_rdo(x, n, inverse_step, lambda_per_bit_unit, start_state, back,
                          cost, &settled);
    return backtrack_trellis(x, n, inverse_step, back, cost, end_state, q_out,
                             &settled);
  }

  // The second half, which starts in any state (so every final state is
  // reachable), is traced back on its own thread; the first waits for the
  // state the second's path starts in.
  const size_t half = n / 2;
  TrellisBackPointers first_back(half);
  SettledPath first_settled{q_out, {}};
  DqPathEnds second;
  run_tasks(2, num_threads > 1, [&](int64_t task) {
    if (task == 0) {
      forward_dependent_rdo(x, half, inverse_step, lambda_per_bit_unit, start_state,
                            first_back, cost, &first_settled);
    } else {
      TrellisBackPointers second_back(n - half);
      SettledPath second_settled{q_out + half, {}};
      double second_cost[8];
      forward_dependent_rdo(x + half, n - half, inverse_step, lambda_per_bit_unit, -1,
                            second_back, second_cost, &second_settled);
      second = backtrack_trellis(x + half, n - half, inverse_step, second_back,
                                 second_cost, end_state, q_out + half, &second_settled);
    }
  });
  const DqPathEnds first = backtrack_trellis(x, half, inverse_step, first_back, cost,
                                             second.start_state, q_out, &first_settled);
  return {first.start_state, second.end_state};
}

// Checks and scaling shared by quantize() and quantize_dq_run(): the inverse
// step of qp, after checking that x fits it.
float checked_inverse_step(const float* x, size_t n, int qp, int qp_density,
                           double lambda_scale) {
  if (!(lambda_scale >= 0.0 && lambda_scale <= kMaxLambdaScale)) {
    throw std::invalid_argument("quantize: lambda_scale must be in 0..1e6, got " +
                                number_str(lambda_scale));
  }
  const float step = step_size(qp, qp_density);
  if (step == 0.0f || !std::isfinite(step)) {
    throw std::invalid_argument("quantize: qp " + std::to_string(qp) +
                                " gives a step of 0 or infinity in float32");
  }
  const float inverse_step = 1.0f / step;
  check_range(x, n, inverse_step, qp);
  return inverse_step;
}

// lambda' of NNCodec's RD cost (nnc-format §2.2/§2.3), per 2^-15 bit.
constexpr double kLn2Over6 = 0.69314718055994530942 / 6.0;

// The DQ trellis' lambda per 2^-15 bit for lambda_scale.
double dq_lambda_per_bit_unit(double lambda_scale) {
  return lambda_scale * 4.0 * kLn2Over6 * 0.7 / 32768.0;
}

DqPathEnds quantize_dq_checked(const float* x, size_t n, float inverse_step,
                               double lambda_scale, int start_state, int end_state,
                               int num_threads, int32_t* q_out) {
  if (n == 0) {
    const int state = start_state >= 0 ? start_state : std::max(end_state, 0);
    if (end_state >= 0 && end_state != state) {
      throw std::invalid_argument("quantize: an empty DQ run cannot go from state " +
                                  std::to_string(start_state) + " to state " +
                                  std::to_string(end_state));
    }
    return {state, state};
  }
  if (lambda_scale > 0.0) {
    return quantize_dependent_rdo(x, n, inverse_step,
                                  dq_lambda_per_bit_unit(lambda_scale), start_state,
                                  end_state, num_threads, q_out);
  }
  return quantize_dependent(x, n, inverse_step, start_state, end_state, q_out);
}

}  // namespace

const char* dq_trellis_kernel() { return use_avx512() ? "avx512" : "portable"; }

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

int quantize(const float* x, size_t n, int qp, int qp_density, bool dq,
             double lambda_scale, int32_t* q_out, int start_state,
             int num_threads) {
  if (start_state < 0 || start_state > 7 || (!dq && start_state != 0)) {
    throw std::invalid_argument("quantize: start_state must be 0..7 (0 without "
                                "dq), got " + std::to_string(start_state));
  }
  const float inverse_step = checked_inverse_step(x, n, qp, qp_density, lambda_scale);
  if (dq) {
    return quantize_dq_checked(x, n, inverse_step, lambda_scale, start_state, -1,
                               num_threads, q_out)
        .end_state;
  }
  if (lambda_scale > 0.0) {
    quantize_uniform_rdo(x, n, inverse_step, lambda_scale * kLn2Over6 / 32768.0, q_out);
  } else {
    quantize_uniform(x, n, inverse_step, q_out);
  }
  return 0;
}

DqPathEnds quantize_dq_run(const float* x, size_t n, int qp, int qp_density,
                           double lambda_scale, int start_state, int end_state,
                           int num_threads, int32_t* q_out) {
  if (start_state < -1 || start_state > 7 || end_state < -1 || end_state > 7) {
    throw std::invalid_argument("quantize_dq_run: start and end states must be "
                                "-1..7, got " + std::to_string(start_state) +
                                " and " + std::to_string(end_state));
  }
  const float inverse_step = checked_inverse_step(x, n, qp, qp_density, lambda_scale);
  return quantize_dq_checked(x, n, inverse_step, lambda_scale, start_state, end_state,
                             num_threads, q_out);
}

DqForwardPass dq_forward_pass(const float* x, size_t n, int qp, int qp_density,
                              double lambda_scale, int start_state, bool avx512) {
  if (start_state < -1 || start_state > 7) {
    throw std::invalid_argument("dq_forward_pass: start_state must be -1..7, got " +
                                std::to_string(start_state));
  }
  if (!(lambda_scale > 0.0)) {
    throw std::invalid_argument("dq_forward_pass: lambda_scale must be > 0, got " +
                                number_str(lambda_scale));
  }
  if (avx512 && !avx512_available()) {
    throw std::invalid_argument(
        "dq_forward_pass: the AVX-512 pass is not available "
        "on this CPU or build");
  }
  const float inverse_step = checked_inverse_step(x, n, qp, qp_density, lambda_scale);
  const double lambda = dq_lambda_per_bit_unit(lambda_scale);
  TrellisBackPointers back(n);
  double cost[8];
#if NNC_AVX512
  if (avx512) {
    forward_dependent_rdo_avx512(x, n, inverse_step, lambda, start_state, back, cost);
    return {std::vector<double>(cost, cost + 8), back.rows()};
  }
#endif
  forward_dependent_rdo_portable(x, n, inverse_step, lambda, start_state, back, cost);
  return {std::vector<double>(cost, cost + 8), back.rows()};
}

void dequantize(const int32_t* q, size_t n, int qp, int qp_density, float* x_out) {
  const float step = step_size(qp, qp_density);
  for (size_t i = 0; i < n; ++i) x_out[i] = step * static_cast<float>(q[i]);
}

bool dequantize_finite(const int32_t* q, size_t n, float step, float* x_out) {
  int32_t q_min = 0;
  int32_t q_max = 0;
  for (size_t i = 0; i < n; ++i) {
    x_out[i] = step * static_cast<float>(q[i]);
    q_min = std::min(q_min, q[i]);
    q_max = std::max(q_max, q[i]);
  }
  return std::isfinite(step * static_cast<float>(q_min)) &&
         std::isfinite(step * static_cast<float>(q_max));
}

}  // namespace nnc
