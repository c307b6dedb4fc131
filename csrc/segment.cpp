// DeepCABAC segment syntax: qp offset, HDSP and row-skip flags, eco
// (context-initialisation) signalling, level binarisation, termination.
// References: nnc-format §1.8, §3.1-§3.6, quirks Q1-Q9 of §6.1.
#include "segment.hpp"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>

#include "cabac.hpp"
#include "context_layout.hpp"
#include "cpu_features.hpp"
#include "nnc_tables.hpp"
#include "parallel.hpp"

#if NNC_AVX512
#include <immintrin.h>
#endif

namespace nnc {

namespace {

std::string int_str(int64_t v) { return std::to_string(v); }

constexpr int kNumInitSets = 9;
constexpr int kMaxEgPrefixBins = 31;
constexpr uint32_t kInitSetPenalty = 3u << 15;  // 3 bits, in 2^-15 bit units

// Largest magnitude a level may have per sign; unbounded without a codebook.
struct LevelLimits {
  uint64_t max_pos = std::numeric_limits<uint64_t>::max();
  uint64_t max_neg = std::numeric_limits<uint64_t>::max();
  bool sign_coded = true;
};

LevelLimits level_limits(const SegmentSpec& spec) {
  LevelLimits limits;
  if (spec.codebook_size > 0) {
    limits.max_pos = uint64_t(spec.codebook_size - 1 - spec.codebook_zero_offset);
    limits.max_neg = uint64_t(spec.codebook_zero_offset);
    limits.sign_coded = limits.max_pos > 0 && limits.max_neg > 0;
  }
  return limits;
}

bool hdsp_flag_coded(const SegmentSpec& spec) {
  return spec.hdsp_flag_present && spec.width > 1 && spec.height > 1 &&
         spec.codebook_size != 1;
}

bool row_skip_syntax_coded(const SegmentSpec& spec) {
  return spec.width > 1 && spec.height > 1 && spec.codebook_size != 1;
}

// Context choices for the level at one position (§3.2).
struct PositionContexts {
  int sig;
  int sign;
  bool tca_active;
  uint64_t base_abs;
};

inline PositionContexts position_contexts(int64_t prev_level, int state,
                                          const int32_t* tca_base, int64_t pos) {
  const int neighbour = neighbour_class(prev_level);
  const int64_t base = tca_base ? tca_base[pos] : 0;
  if (base != 0) {
    const uint64_t base_abs = uint64_t(base < 0 ? -base : base);
    return {ContextLayout::sig_tca + 2 * state + (base_abs > 1 ? 1 : 0),
            base < 0 ? ContextLayout::sign_tca : ContextLayout::sign_tca + 1, true,
            base_abs};
  }
  return {3 * state + neighbour, ContextLayout::sign + neighbour, false, 0};
}

inline int gt_context(const ContextLayout& layout, const PositionContexts& ctx, int j,
                      bool negative) {
  if (ctx.tca_active) {
    return layout.gt_tca + 2 * j + (ctx.base_abs >= uint64_t(j) ? 0 : 1);
  }
  return ContextLayout::gt + 2 * j + (negative ? 1 : 0);
}

// Binarise one level k (§3.1) into `sink`, which offers bin(ctx, b) and
// bypass_bins(value, count). With kTruncated, the codebook truncations of
// §2.5 step 4 apply: sign inferred when one side of the zero entry is empty,
// gt flags and EG0 prefix stop at the largest magnitude of the level's sign
// (checked against NNCodec's codebook vectors, tests/test_core_vectors.py).
template <bool kTruncated, class Sink>
inline void put_level(Sink& sink, const ContextLayout& layout, int64_t level,
                      const PositionContexts& ctx, const LevelLimits& limits) {
  sink.bin(ctx.sig, level != 0);
  if (level == 0) return;

  const bool negative = level < 0;
  if (!kTruncated || limits.sign_coded) sink.sign_bin(ctx.sign, negative);
  const uint64_t magnitude = uint64_t(negative ? -level : level);
  const uint64_t max_magnitude =
      kTruncated ? (negative ? limits.max_neg : limits.max_pos)
                 : std::numeric_limits<uint64_t>::max();

  // Greater-than flags gt_j = (a > j + 1), stopping after the first 0.
  const int n = layout.n;
  for (int j = 0; j < n; ++j) {
    if (kTruncated && max_magnitude <= uint64_t(j + 1)) return;
    const int greater = magnitude > uint64_t(j + 1);
    sink.bin(gt_context(layout, ctx, j, negative), greater);
    if (!greater) return;
  }

  // Exp-Golomb order 0 remainder: context-coded prefix, bypass suffix.
  const uint64_t remainder = magnitude - uint64_t(n) - 1;
  const uint64_t max_remainder = max_magnitude - uint64_t(n) - 1;
  int prefix_ones = 0;
  while (prefix_ones < kMaxEgPrefixBins) {
    const uint64_t threshold = (uint64_t(2) << prefix_ones) - 1;
    if (kTruncated && max_remainder < threshold) break;
    const int one = remainder >= threshold;
    sink.bin(layout.eg + prefix_ones, one);
    if (!one) break;
    ++prefix_ones;
  }
  if (prefix_ones > 0) {
    const uint64_t suffix = remainder - ((uint64_t(1) << prefix_ones) - 1);
    sink.bypass_bins(uint32_t(suffix), prefix_ones);
  }
}

[[noreturn]] __attribute__((noinline, cold)) void throw_inadmissible(int64_t q,
                                                                   int state,
                                                                   int64_t pos) {
  throw std::invalid_argument(
      "encode_segment: q[" + std::to_string(pos) + "] = " + std::to_string(q) +
      " is not admissible in DQ state " + std::to_string(state) +
      " (even states need even q, odd states odd q or 0)");
}

// Level k that the encoder codes for the stored value at one position.
// DQ: q -> k = (q + sgn(q)*(s&1)) >> 1, rejecting q of the wrong parity.
inline int64_t level_from_value(int32_t value, const SegmentSpec& spec, int state,
                                int64_t pos) {
  if (spec.codebook_size > 0) return int64_t(value) - spec.codebook_zero_offset;
  if (!spec.dq) return value;
  const int64_t q = value;
  const int64_t odd = state & 1;
  const int64_t sgn = (q > 0) - (q < 0);
  const int64_t level = (q + sgn * odd) >> 1;
  const int64_t level_sgn = (level > 0) - (level < 0);
  if (2 * level - odd * level_sgn != q) throw_inadmissible(q, state, pos);
  return level;
}

// Row skip flags of the encoder: a row is skipped iff all its levels are 0.
std::vector<uint8_t> rows_to_skip(const int32_t* q, const SegmentSpec& spec) {
  const int32_t zero_value =
      int32_t(spec.codebook_size > 0 ? spec.codebook_zero_offset : 0);
  std::vector<uint8_t> skip(size_t(spec.height), 0);
  for (int64_t row = 0; row < spec.height; ++row) {
    const int32_t* begin = q + row * spec.width;
    skip[size_t(row)] = std::all_of(begin, begin + spec.width,
                                    [=](int32_t v) { return v == zero_value; });
  }
  return skip;
}

// Walk the levels in scan order (§3.5), skipping flagged rows (Q2, Q3), and
// feed their bins to `sink`; with a block scan, sink.block_row_start(state)
// runs before every block row but the first, and the neighbour resets. With
// feed_values_as_levels the stored values are binarised unchanged, while the
// DQ state still follows the true levels (NNCodec's eco estimation under DQ
// feeds q, §3.4). Stops after the rows covering the first `max_positions`
// positions, skipped rows included, or with a block scan (whose block rows
// are large) after `max_positions` coded positions. `rows` limits the walk
// to some block rows, entered in DQ state rows.start_state. Returns the DQ
// state where the walk stopped (after rows.end when it did not stop early).
struct BlockRowRange {
  int64_t first = 0;
  int64_t end = -1;  // -1: to the last block row
  int start_state = 0;
};

template <bool kTruncated, class Sink>
int put_levels(Sink& sink, const ContextLayout& layout, const int32_t* q,
               const SegmentSpec& spec, const std::vector<uint8_t>& skip_rows,
               bool feed_values_as_levels, int64_t max_positions,
               const BlockRowRange& rows = {}) {
  const LevelLimits limits = level_limits(spec);
  if (spec.width == 0 || spec.height == 0) return rows.start_state;  // no rows
  const ScanGeometry geometry = scan_geometry(spec);
  const int64_t positions_per_block_row = geometry.block_height * spec.width;
  const int64_t end = rows.end < 0 ? geometry.num_block_rows : rows.end;
  int64_t prev_level = 0;
  int state = rows.start_state;
  // Raster: whole rows, skipped ones counted; block scan: coded positions.
  constexpr int64_t kNoLimit = std::numeric_limits<int64_t>::max();
  const int64_t max_walked = geometry.block_scan ? kNoLimit : max_positions;
  const int64_t max_coded = geometry.block_scan ? max_positions : kNoLimit;
  int64_t walked = 0;
  int64_t coded = 0;
  for (int64_t block_row = rows.first;
       block_row < end && walked < max_walked && coded < max_coded;
       ++block_row, walked += positions_per_block_row) {
    if (block_row > 0 && geometry.block_scan) {
      sink.block_row_start(state);
      prev_level = 0;
    }
    walk_block_row(spec, geometry, block_row, skip_rows, state, [&](int64_t pos) {
      if (coded == max_coded) return;
      ++coded;
      const int64_t level = level_from_value(q[pos], spec, state, pos);
      const int64_t fed = feed_values_as_levels ? int64_t(q[pos]) : level;
      const PositionContexts ctx =
          position_contexts(prev_level, state, spec.tca_base, pos);
      put_level<kTruncated>(sink, layout, fed, ctx, limits);
      prev_level = fed;
      if (spec.dq) state = kDqNextState[state][level & 1];
    });
  }
  return state;
}

// Where the encoder was at one block-row boundary (§3.7): the decoder's
// window position, the interval base's bits in that window, the DQ state.
struct RawEntryPoint {
  uint64_t bit_position;
  uint32_t low_window;
  int dq_state;
};

// Sink that codes bins with the arithmetic encoder.
// At a block-row boundary it resets the contexts to their init sets,
// narrows the range to 256 and records the entry point.
struct EncoderSink {
  CabacEncoder& encoder;
  ContextModel* models;
  const std::vector<ContextModel>* initial_models = nullptr;
  std::vector<RawEntryPoint>* entry_points = nullptr;
  void bin(int ctx, int value) { encoder.encode_bin(value, models[ctx]); }
  void sign_bin(int ctx, int value) { encoder.encode_bin<true>(value, models[ctx]); }
  void bypass_bins(uint32_t value, int count) {
    encoder.encode_bypass_bins(value, count);
  }
  void block_row_start(int state) {
    std::copy(initial_models->begin(), initial_models->end(), models);
    encoder.force_range_256();
    entry_points->push_back(
        {encoder.bit_position(), encoder.low_window(), state});
  }
};

// A bin list's marker for a block-row start: the estimators restart.
constexpr uint8_t kRestartEstimators = 2;

// The nine estimators and costs of one context in the eco estimate, padded
// to 16 lanes for the AVX-512 step (the estimators keep int16 values).
struct alignas(64) ContextEstimators {
  int32_t fast[16];
  int32_t slow[16];
  uint64_t costs[16];  // estimated bits, 2^-15 units
};

#if NNC_AVX512
using Lanes16i = int32_t __attribute__((vector_size(64)));

// The nine estimators of one context in lanes 0-8 of AVX-512 registers
// (9-15 padding), with their nine cost sums.
struct NineLanes {
  Lanes16i fast, slow;
  uint64_t sum[kNumInitSets];
};

// What every context shares: the restart estimators, kAdaptationCurve as
// int32 (two registers) and the shifts a_F, a_S per lane.
struct NineLaneConstants {
  Lanes16i fast_start, slow_start, curve_low, curve_high, fast_shift, slow_shift;
};

// One bin (0 or 1, or kRestartEstimators) through the nine estimators: the
// integer steps of InitSetCostSink::step, so the same costs. The nine
// cost-table reads are scalar loads: a gather was the loop's bottleneck.
NNC_TARGET_AVX512 inline __attribute__((always_inline)) void nine_lane_step(
    NineLanes& lanes, int value, const NineLaneConstants& k) {
  if (value == kRestartEstimators) {
    lanes.fast = k.fast_start;
    lanes.slow = k.slow_start;
    return;
  }

  // costs += kBinCostTable[(512 + ((slow + 16 * fast) >> 3)) * 2 + value]
  const Lanes16i index = (512 + ((lanes.slow + 16 * lanes.fast) >> 3)) * 2 + value;
  alignas(64) int32_t lane_index[16];
  __builtin_memcpy(lane_index, &index, 64);
  for (int e = 0; e < kNumInitSets; ++e) lanes.sum[e] += kBinCostTable[lane_index[e]];

  // Bin 0 moves the negated estimators as bin 1 moves them.
  const int32_t flip = value - 1;
  Lanes16i f = (lanes.fast ^ flip) - flip;
  Lanes16i s = (lanes.slow ^ flip) - flip;
  f += __builtin_shuffle(k.curve_low, k.curve_high, (f >> 3) + 16) >> k.fast_shift;
  s += __builtin_shuffle(k.curve_low, k.curve_high, (s >> 7) + 16) >> k.slow_shift;
  lanes.fast = (f ^ flip) - flip;
  lanes.slow = (s ^ flip) - flip;
}

// The bin lists of two contexts (b may be empty) through their estimators,
// interleaved so that the two dependency chains overlap; a and b are
// updated in place.
NNC_TARGET_AVX512 void estimate_two_contexts(const std::vector<uint8_t>& bins_a,
                                             ContextEstimators& a,
                                             const std::vector<uint8_t>& bins_b,
                                             ContextEstimators& b,
                                             const NineLaneConstants& k) {
  const auto load = [](const ContextEstimators& c) NNC_TARGET_AVX512 {
    NineLanes lanes;
    __builtin_memcpy(&lanes.fast, c.fast, 64);
    __builtin_memcpy(&lanes.slow, c.slow, 64);
    std::copy_n(c.costs, kNumInitSets, lanes.sum);
    return lanes;
  };
  const auto store = [](const NineLanes& lanes, ContextEstimators& c)
                         NNC_TARGET_AVX512 {
                           __builtin_memcpy(c.fast, &lanes.fast, 64);
                           __builtin_memcpy(c.slow, &lanes.slow, 64);
                           std::copy_n(lanes.sum, kNumInitSets, c.costs);
                         };
  NineLanes lanes_a = load(a);
  NineLanes lanes_b = load(b);

  const size_t both = std::min(bins_a.size(), bins_b.size());
  for (size_t i = 0; i < both; ++i) {
    nine_lane_step(lanes_a, bins_a[i], k);
    nine_lane_step(lanes_b, bins_b[i], k);
  }
  for (size_t i = both; i < bins_a.size(); ++i) nine_lane_step(lanes_a, bins_a[i], k);
  for (size_t i = both; i < bins_b.size(); ++i) nine_lane_step(lanes_b, bins_b[i], k);

  store(lanes_a, a);
  store(lanes_b, b);
}
#endif

// Sink for the eco estimate (§3.4): it lists every context's bins in
// order; estimate() then runs each list through the context's 9 init sets'
// estimators and adds up their estimated bits. A context's estimators see
// only its own bins, so disjoint groups of contexts can be estimated on
// separate threads, and the nine estimators stay in registers from one bin
// of their context to the next.
struct InitSetCostSink {
  // Shifts (a_F, a_S) of init sets 0..8 as compile-time constants, so that
  // the nine estimators of a context update as independent, unrolled chains
  // (must equal kInitSets: a_F = SH0 + 4, a_S = SH1).
  static constexpr int kFastShift[kNumInitSets] = {5, 5, 5, 4, 6, 6, 6, 7, 7};
  static constexpr int kSlowShift[kNumInitSets] = {4, 4, 4, 5, 6, 6, 6, 5, 5};

  InitSetCostSink(int num_contexts, bool vector_step)
      : contexts(size_t(num_contexts)),
        bins(size_t(num_contexts)),
        vector_step(vector_step) {
    initial = ContextEstimators{};
    for (int e = 0; e < kNumInitSets; ++e) {
      ContextModel model;
      model.init(e);
      initial.fast[e] = model.fast;
      initial.slow[e] = model.slow;
    }
    for (auto& context : contexts) context = initial;
    for (int i = 0; i < 32; ++i) curve[i] = kAdaptationCurve[i];
    for (int lane = 0; lane < 16; ++lane) {
      // Padding lanes shift by 15; the curve's steps are below 2^15, so they
      // stay 0.
      shifts[lane] = lane < kNumInitSets ? kFastShift[lane] : 15;
      shifts[16 + lane] = lane < kNumInitSets ? kSlowShift[lane] : 15;
    }
  }

  template <int e, int kValue>
  static inline void step(ContextEstimators& c) {
    const int16_t* curve = kAdaptationCurve;
    const int fast = c.fast[e];
    const int slow = c.slow[e];
    c.costs[e] += kBinCostTable[(512 + ((slow + 16 * fast) >> 3)) * 2 + kValue];
    if (kValue) {
      c.fast[e] = int16_t(fast + (curve[16 + (fast >> 3)] >> kFastShift[e]));
      c.slow[e] = int16_t(slow + (curve[16 + (slow >> 7)] >> kSlowShift[e]));
    } else {
      c.fast[e] = int16_t(fast - (curve[16 + ((-fast) >> 3)] >> kFastShift[e]));
      c.slow[e] = int16_t(slow - (curve[16 + ((-slow) >> 7)] >> kSlowShift[e]));
    }
  }

  template <int kValue>
  static inline void steps(ContextEstimators& c) {
    step<0, kValue>(c);
    step<1, kValue>(c);
    step<2, kValue>(c);
    step<3, kValue>(c);
    step<4, kValue>(c);
    step<5, kValue>(c);
    step<6, kValue>(c);
    step<7, kValue>(c);
    step<8, kValue>(c);
  }

  void bin(int ctx, int value) {
    bins[size_t(ctx)].push_back(uint8_t(value));
    if (++num_listed == kEstimateEvery) {
      estimate(all_contexts());
      num_listed = 0;
    }
  }

  void sign_bin(int ctx, int value) { bin(ctx, value); }
  void bypass_bins(uint32_t, int) {}

  // Block scans: every block row starts again from the init sets, so the
  // estimators restart too (the costs keep adding up).
  void block_row_start(int) {
    for (auto& list : bins) list.push_back(kRestartEstimators);
  }

  std::vector<int> all_contexts() const {
    std::vector<int> list(contexts.size());
    for (size_t ctx = 0; ctx < list.size(); ++ctx) list[ctx] = int(ctx);
    return list;
  }

  // The contexts in two groups with about equal numbers of listed bins
  // (longest lists first, each to the lighter group).
  std::array<std::vector<int>, 2> balanced_halves() const {
    std::vector<int> order = all_contexts();
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return bins[size_t(a)].size() > bins[size_t(b)].size();
    });
    std::array<std::vector<int>, 2> halves;
    size_t load[2] = {0, 0};
    for (const int ctx : order) {
      const int lighter = load[1] < load[0] ? 1 : 0;
      halves[size_t(lighter)].push_back(ctx);
      load[lighter] += bins[size_t(ctx)].size();
    }
    return halves;
  }

  // Run the listed bins of the contexts in `group` through their estimators
  // and clear those lists. Groups on separate threads must be disjoint.
  void estimate(const std::vector<int>& group) {
#if NNC_AVX512
    if (vector_step) {
      estimate_in_pairs(group);
      return;
    }
#endif
    for (const int ctx : group) {
      std::vector<uint8_t>& list = bins[size_t(ctx)];
      ContextEstimators& c = contexts[size_t(ctx)];
      for (const uint8_t value : list) {
        if (value == kRestartEstimators) {
          std::copy_n(initial.fast, kNumInitSets, c.fast);
          std::copy_n(initial.slow, kNumInitSets, c.slow);
        } else if (value) {
          steps<1>(c);
        } else {
          steps<0>(c);
        }
      }
      list.clear();
    }
  }

#if NNC_AVX512
  // estimate() on the AVX-512 kernel: contexts of similar list lengths in
  // pairs (longest first), each pair's two chains interleaved.
  NNC_TARGET_AVX512 void estimate_in_pairs(const std::vector<int>& group) {
    NineLaneConstants k;
    __builtin_memcpy(&k.fast_start, initial.fast, 64);
    __builtin_memcpy(&k.slow_start, initial.slow, 64);
    __builtin_memcpy(&k.curve_low, curve, 64);
    __builtin_memcpy(&k.curve_high, curve + 16, 64);
    __builtin_memcpy(&k.fast_shift, shifts, 64);
    __builtin_memcpy(&k.slow_shift, shifts + 16, 64);

    std::vector<int> order = group;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return bins[size_t(a)].size() > bins[size_t(b)].size();
    });
    ContextEstimators unused = initial;
    const std::vector<uint8_t> no_bins;
    for (size_t i = 0; i < order.size(); i += 2) {
      ContextEstimators& a = contexts[size_t(order[i])];
      const bool paired = i + 1 < order.size();
      ContextEstimators& b = paired ? contexts[size_t(order[i + 1])] : unused;
      const std::vector<uint8_t>& bins_b =
          paired ? bins[size_t(order[i + 1])] : no_bins;
      estimate_two_contexts(bins[size_t(order[i])], a, bins_b, b, k);
    }
    for (const int ctx : group) bins[size_t(ctx)].clear();
  }
#endif

  // Bins listed between two estimates during the walk: bounds the lists at
  // 1 MiB (the default 2^16 positions list about 2^18 bins).
  static constexpr size_t kEstimateEvery = size_t(1) << 20;

  ContextEstimators initial;  // every context's estimators at init set e
  std::vector<ContextEstimators> contexts;
  std::vector<std::vector<uint8_t>> bins;  // per context, in coding order
  size_t num_listed = 0;
  bool vector_step;  // nine_lane_step (AVX-512) instead of steps<>()
  alignas(64) int32_t curve[32];
  alignas(64) int32_t shifts[32];
};

// put_levels over all positions, with the codebook truncations when the
// spec has a codebook; returns the DQ state after the last block row walked.
template <class Sink>
int put_levels_any(Sink& sink, const ContextLayout& layout, const int32_t* q,
                   const SegmentSpec& spec, const std::vector<uint8_t>& skip_rows,
                   bool feed_values_as_levels, const BlockRowRange& rows = {}) {
  constexpr int64_t kAll = std::numeric_limits<int64_t>::max();
  if (spec.codebook_size > 0) {
    return put_levels<true>(sink, layout, q, spec, skip_rows, feed_values_as_levels,
                            kAll, rows);
  } else {
    return put_levels<false>(sink, layout, q, spec, skip_rows, feed_values_as_levels,
                             kAll, rows);
  }
}

// DQ state in which block row `block_row` starts (0 without DQ).
int dq_state_before(const int32_t* q, const SegmentSpec& spec,
                    const ScanGeometry& geometry, const std::vector<uint8_t>& skip_rows,
                    int64_t block_row) {
  int state = 0;
  if (!spec.dq) return state;
  for (int64_t row = 0; row < block_row; ++row) {
    walk_block_row(spec, geometry, row, skip_rows, state, [&](int64_t pos) {
      state = kDqNextState[state][level_from_value(q[pos], spec, state, pos) & 1];
    });
  }
  return state;
}

// Block scans of at least this many positions code their levels in runs of
// block rows on several threads (encode_segment's num_threads).
constexpr int64_t kParallelLevelPositions = int64_t(1) << 16;

// The eco estimate runs on two threads from this many positions walked.
constexpr int64_t kParallelEcoPositions = int64_t(1) << 15;

// The levels of a block scan in `num_runs` runs of block rows, then the
// terminate bin; returns the finished segment. Run 0 continues `encoder`
// (which has coded the segment up to the levels, range narrowed to 256);
// every other run is coded on its own thread by a fresh encoder at range
// 256, as each block row starts, and the runs' exact codes add up to the
// stream (ExactCodeSum). sink.entry_points receives every block row's entry
// point, as the serial encoder records them. The bytes equal the serial
// encoder's; the error of the first failing run is rethrown.
std::vector<uint8_t> put_levels_in_runs(CabacEncoder& encoder, EncoderSink& sink,
                                        const ContextLayout& layout, const int32_t* q,
                                        const SegmentSpec& spec,
                                        const std::vector<uint8_t>& skip_rows,
                                        int num_runs) {
  const ScanGeometry geometry = scan_geometry(spec);
  const int64_t num_block_rows = geometry.num_block_rows;
  std::vector<int64_t> run_start(size_t(num_runs) + 1);
  for (int r = 0; r <= num_runs; ++r) {
    run_start[size_t(r)] = num_block_rows * r / num_runs;
  }

  // Run 0 continues `encoder`; the others code into their own Run.
  struct Run {
    std::vector<uint8_t> code;
    uint64_t num_bits = 0;
    std::vector<RawEntryPoint> entry_points;
    int start_state = -1;  // DQ state where the run starts (-1: not known yet)
    int end_state = -1;    // and where it ends (-1: the run did not finish)
  };
  std::vector<Run> runs(static_cast<size_t>(num_runs));
  const int64_t positions_per_block_row = geometry.block_height * spec.width;
  const auto code_run = [&](int64_t r) {
    Run& run = runs[size_t(r)];
    if (r == 0) {
      run.start_state = 0;
      run.end_state = put_levels_any(sink, layout, q, spec, skip_rows, false,
                                     BlockRowRange{0, run_start[1], 0});
      return;
    }
    const int64_t first = run_start[size_t(r)];
    if (spec.dq && spec.block_row_start_states != nullptr) {
      const int given = spec.block_row_start_states[first];
      if (given > 7) {
        throw std::invalid_argument("encode_segment: block_row_start_states[" +
                                    int_str(first) + "] = " + int_str(given) +
                                    " is not a DQ state (0..7)");
      }
      run.start_state = given;
    } else {
      run.start_state = dq_state_before(q, spec, geometry, skip_rows, first);
    }
    const BlockRowRange rows{first, run_start[size_t(r) + 1], run.start_state};
    CabacEncoder run_encoder(
        size_t((rows.end - rows.first) * positions_per_block_row / 2 + 64));
    run_encoder.force_range_256();
    std::vector<ContextModel> models = *sink.initial_models;
    EncoderSink run_sink{run_encoder, models.data(), sink.initial_models,
                         &run.entry_points};
    const int end_state =
        put_levels_any(run_sink, layout, q, spec, skip_rows, false, rows);
    if (r + 1 == num_runs) run_encoder.encode_terminate(1);
    run.num_bits = run_encoder.bit_position() + 9;
    run.code = run_encoder.finish_exact();
    run.end_state = end_state;
  };

  // A run must start where the levels before it leave the DQ state. A wrong
  // block_row_start_states entry is named here, also when the run it started
  // failed first on a level of the wrong parity.
  const auto check_joins = [&] {
    for (int r = 1; r < num_runs; ++r) {
      const Run& before = runs[size_t(r) - 1];
      const Run& run = runs[size_t(r)];
      if (before.end_state >= 0 && run.start_state >= 0 &&
          run.start_state != before.end_state) {
        throw std::logic_error(
            "encode_segment: block row " + int_str(run_start[size_t(r)]) +
            " starts in DQ state " + int_str(run.start_state) +
            ", the levels before it end in " + int_str(before.end_state));
      }
    }
  };
  try {
    run_tasks(num_runs, true, code_run);
  } catch (...) {
    check_joins();
    throw;
  }
  check_joins();

  // Add the runs' codes; each run's entry points get the interval base's
  // bits the runs before it left in their window.
  uint64_t num_coded_bits = encoder.bit_position();
  for (int r = 1; r < num_runs; ++r) num_coded_bits += runs[size_t(r)].num_bits - 9;
  ExactCodeSum sum(num_coded_bits + 9);
  const uint64_t run_0_bits = encoder.bit_position() + 9;  // the head and run 0
  sum.add(encoder.finish_exact(), run_0_bits, 0);
  uint64_t run_bit = run_0_bits - 9;
  for (int r = 1; r < num_runs; ++r) {
    const Run& run = runs[size_t(r)];
    const uint32_t base_window = sum.window(run_bit);
    for (const RawEntryPoint& local : run.entry_points) {
      const uint32_t carried =
          local.bit_position < 9 ? (base_window << local.bit_position) & 511u : 0u;
      sink.entry_points->push_back({run_bit + local.bit_position,
                                    (carried + local.low_window) & 511u,
                                    local.dq_state});
    }
    sum.add(run.code, run.num_bits, run_bit);
    run_bit += run.num_bits - 9;
  }
  return std::move(sum).segment(num_coded_bits);
}

std::vector<uint8_t> skip_rows_for(const int32_t* q, const SegmentSpec& spec) {
  if (row_skip_syntax_coded(spec) && spec.row_skipping) return rows_to_skip(q, spec);
  return {};
}

}  // namespace

// Apply the parity-0 DQ transition `count` times. Every cycle of T[.][0]
// has length 1, 2 or 4, so count mod 4 steps suffice.
int advance_dq_state_by_zeros(int state, int64_t count) {
  for (int64_t i = 0; i < (count & 3); ++i) state = kDqNextState[state][0];
  return state;
}

ScanGeometry scan_geometry(const SegmentSpec& spec) {
  ScanGeometry geometry;
  if (spec.scan_order == 0 || spec.width <= 1 || spec.height <= 1) {
    geometry.block_height = 1;
    geometry.block_width = spec.width;
    geometry.num_block_rows = spec.width > 0 ? spec.height : 0;
    return geometry;
  }
  const int64_t block_size = int64_t(4) << spec.scan_order;
  geometry.block_height = block_size;
  geometry.block_width = block_size;
  geometry.num_block_rows = (spec.height + block_size - 1) / block_size;
  geometry.block_scan = true;
  return geometry;
}

int64_t validate_spec(const SegmentSpec& spec, const char* operation) {
  const std::string op(operation);
  if (spec.height < 0 || spec.width < 0) {
    throw std::invalid_argument(op + ": height and width must be >= 0, got " +
                                int_str(spec.height) + " x " + int_str(spec.width));
  }
  const int64_t max_elements = std::numeric_limits<int32_t>::max();
  if (spec.width > 0 && spec.height > max_elements / spec.width) {
    throw std::length_error(op + ": height*width = " + int_str(spec.height) + "*" +
                            int_str(spec.width) + " exceeds " + int_str(max_elements) +
                            " elements");
  }
  if (spec.qp_density < 0 || spec.qp_density > 7) {
    throw std::invalid_argument(op + ": qp_density must be in 0..7, got " +
                                int_str(spec.qp_density));
  }
  if (spec.has_qp) {
    const int half_range = 1 << (5 + spec.qp_density);
    if (spec.qp < -half_range || spec.qp >= half_range) {
      throw std::invalid_argument(op + ": qp " + int_str(spec.qp) +
                                  " does not fit the " +
                                  int_str(6 + spec.qp_density) +
                                  "-bit qp offset (range " + int_str(-half_range) +
                                  ".." + int_str(half_range - 1) + ")");
    }
  }
  if (spec.scan_order < 0 || spec.scan_order > 4) {
    throw std::invalid_argument(op + ": scan_order must be in 0..4, got " +
                                int_str(spec.scan_order));
  }
  if (spec.unary_len < 1 || spec.unary_len > 256) {
    throw std::invalid_argument(op + ": unary_len must be in 1..256, got " +
                                int_str(spec.unary_len));
  }
  if (spec.codebook_size < 0 || spec.codebook_size > max_elements) {
    throw std::invalid_argument(op + ": codebook_size must be in 0.." +
                                int_str(max_elements) + ", got " +
                                int_str(spec.codebook_size));
  }
  if (spec.codebook_size > 0) {
    if (spec.codebook_zero_offset < 0 ||
        spec.codebook_zero_offset >= spec.codebook_size) {
      throw std::invalid_argument(op + ": codebook_zero_offset " +
                                  int_str(spec.codebook_zero_offset) +
                                  " is outside the codebook of size " +
                                  int_str(spec.codebook_size));
    }
    if (spec.dq) {
      throw std::invalid_argument(op + ": codebook mode cannot use dq");
    }
  }
  return spec.height * spec.width;
}

void check_decodable_size(const SegmentSpec& spec, size_t num_bytes) {
  const int64_t num_elements = validate_spec(spec, "decode_segment");
  const uint64_t max_bins = 177 * (8 * uint64_t(num_bytes) + 1);
  const bool rows_skippable = row_skip_syntax_coded(spec);
  const uint64_t units =
      rows_skippable ? uint64_t(spec.height) : uint64_t(num_elements);
  if (spec.codebook_size != 1 && units > max_bins) {
    throw std::length_error(
        "decode_segment: a " + std::to_string(num_bytes) +
        "-byte segment cannot hold " + std::to_string(units) +
        (rows_skippable ? " rows" : " elements") + " (at most " +
        std::to_string(max_bins) + " bins)");
  }
}

std::vector<int> eco_context_list(const SegmentSpec& spec) {
  std::vector<int> list;
  if (spec.codebook_size == 1) return list;

  const ContextLayout layout(spec.unary_len);
  const bool tca = spec.tca_base != nullptr;
  const LevelLimits limits = level_limits(spec);
  const int n = layout.n;
  const auto push_range = [&list](int first, int count) {
    for (int i = 0; i < count; ++i) list.push_back(first + i);
  };

  push_range(ContextLayout::sig, spec.dq ? 24 : 3);
  if (tca) push_range(ContextLayout::sig_tca, spec.dq ? 16 : 2);
  if (limits.sign_coded) {
    push_range(ContextLayout::sign, 3);
    if (tca) push_range(ContextLayout::sign_tca, 2);
  }
  // Codebook: NNCodec's decoder lists the gt pair j (both signs) while
  // j < the larger of the two magnitude limits (one pair more than the bins
  // can reach), the TCA gt pair j while j < that limit - 1, and EG prefix
  // context m while the limit > n + 2^(m+1) - 2 (the level after m+1 prefix
  // ones). Checked live against NNCodec 2.1.3 over codebook sizes 1..40,
  // every zero offset, with and without TCA (tests/test_interop_nncodec.py).
  const uint64_t max_any = std::max(limits.max_pos, limits.max_neg);
  for (int j = 0; j < n; ++j) {
    if (max_any > uint64_t(j)) push_range(ContextLayout::gt + 2 * j, 2);
  }
  if (tca) {
    for (int j = 0; j < n; ++j) {
      if (max_any > uint64_t(j) + 1) push_range(layout.gt_tca + 2 * j, 2);
    }
  }
  for (int m = 0; m < kMaxEgPrefixBins; ++m) {
    if (max_any > uint64_t(n) + (uint64_t(2) << m) - 2) list.push_back(layout.eg + m);
  }
  return list;
}

// The first step of the eco estimate: every context's bins of the prefix
// (SegmentSpec::eco_max_positions), listed in one walk; vector_step: the
// AVX-512 estimate (the same sums). skip_rows: the rows the encoder skips
// (skip_rows_for); `rows` limits the walk to some block rows.
struct EcoListing {
  EcoListing(const int32_t* q, const SegmentSpec& spec,
             const std::vector<uint8_t>& skip_rows, bool vector_step,
             const BlockRowRange& rows = {})
      : sink(ContextLayout(spec.unary_len).count, vector_step) {
    // Estimating over a prefix of the tensor bounds the 9-fold work on
    // large tensors; the init set matters most for the first bins of each
    // context. NNCodec estimates codebook levels without the truncations
    // (§2.5), so the extra gt pair of the eco list sees bins there.
    const int64_t max_positions = spec.eco_max_positions > 0
                                      ? spec.eco_max_positions
                                      : std::numeric_limits<int64_t>::max();
    put_levels<false>(sink, ContextLayout(spec.unary_len), q, spec, skip_rows,
                      spec.dq && !spec.eco_from_levels, max_positions, rows);
    walked = std::min(max_positions, spec.height * spec.width);
  }

  InitSetCostSink sink;
  int64_t walked = 0;
};

namespace {

// The second step: estimated bits of init sets 0..8 for each eco-list
// context, in list order. With threads, two groups of contexts with about
// equal numbers of bins are estimated side by side (the same sums).
std::vector<std::array<uint64_t, kNumInitSets>> init_set_costs(EcoListing& listing,
                                                               const SegmentSpec& spec,
                                                               int num_threads) {
  InitSetCostSink& sink = listing.sink;
  if (num_threads > 1 && listing.walked >= kParallelEcoPositions) {
    const std::array<std::vector<int>, 2> halves = sink.balanced_halves();
    run_tasks(2, true, [&](int64_t task) { sink.estimate(halves[size_t(task)]); });
  } else {
    sink.estimate(sink.all_contexts());
  }

  std::vector<std::array<uint64_t, kNumInitSets>> costs;
  for (const int ctx : eco_context_list(spec)) {
    std::array<uint64_t, kNumInitSets>& entry = costs.emplace_back();
    std::copy_n(sink.contexts[size_t(ctx)].costs, kNumInitSets, entry.begin());
  }
  return costs;
}

// The cheapest init set per eco-list entry, e != 0 paying kInitSetPenalty.
std::vector<uint8_t> cheapest_init_sets(
    const std::vector<std::array<uint64_t, kNumInitSets>>& all_costs) {
  std::vector<uint8_t> init_sets;
  for (const auto& costs : all_costs) {
    int best = 0;
    uint64_t best_cost = costs[0];
    for (int e = 1; e < kNumInitSets; ++e) {
      if (costs[e] + kInitSetPenalty < best_cost) {
        best = e;
        best_cost = costs[e] + kInitSetPenalty;
      }
    }
    init_sets.push_back(uint8_t(best));
  }
  return init_sets;
}

}  // namespace

std::vector<uint8_t> choose_listed_init_sets(EcoListing& listing,
                                             const SegmentSpec& spec, int num_threads) {
  return cheapest_init_sets(init_set_costs(listing, spec, num_threads));
}

namespace {

// choose_init_sets() for the encoder, which has the skipped rows already.
std::vector<uint8_t> choose_init_sets(const int32_t* q, const SegmentSpec& spec,
                                      const std::vector<uint8_t>& skip_rows,
                                      int num_threads) {
  EcoListing listing(q, spec, skip_rows, use_avx512());
  return choose_listed_init_sets(listing, spec, num_threads);
}

}  // namespace

std::vector<uint8_t> choose_init_sets(const int32_t* q, const SegmentSpec& spec,
                                      int num_threads) {
  return choose_init_sets(q, spec, skip_rows_for(q, spec), num_threads);
}

void EcoListingDeleter::operator()(EcoListing* listing) const { delete listing; }

EcoListingPtr list_eco_bins(const int32_t* q, const SegmentSpec& spec,
                            int64_t num_known_block_rows) {
  const ScanGeometry geometry = scan_geometry(spec);
  if (!geometry.block_scan || spec.eco_max_positions <= 0 ||
      num_known_block_rows <= 0 || num_known_block_rows > geometry.num_block_rows) {
    return nullptr;
  }

  // Row-skip flags of the known rows only (a flag depends on its row alone).
  const int64_t num_known_rows =
      std::min(spec.height, num_known_block_rows * geometry.block_height);
  std::vector<uint8_t> skip_rows;
  if (row_skip_syntax_coded(spec) && spec.row_skipping) {
    SegmentSpec known = spec;
    known.height = num_known_rows;
    skip_rows = rows_to_skip(q, known);
    skip_rows.resize(size_t(spec.height), 0);
  }

  // The whole walk's prefix must end within the known block rows.
  int64_t num_coded = 0;
  for (int64_t row = 0; row < num_known_rows; ++row) {
    if (skip_rows.empty() || !skip_rows[size_t(row)]) num_coded += spec.width;
  }
  if (num_coded < spec.eco_max_positions) return nullptr;

  return EcoListingPtr(new EcoListing(q, spec, skip_rows, use_avx512(),
                                      BlockRowRange{0, num_known_block_rows}));
}

std::vector<uint64_t> eco_init_set_costs(const int32_t* q, const SegmentSpec& spec,
                                         bool avx512) {
  if (avx512 && !avx512_available()) {
    throw std::invalid_argument(
        "eco_init_set_costs: the AVX-512 step is not available on this CPU or build");
  }
  std::vector<uint64_t> flat;
  EcoListing listing(q, spec, skip_rows_for(q, spec), avx512);
  for (const auto& costs : init_set_costs(listing, spec, 1)) {
    flat.insert(flat.end(), costs.begin(), costs.end());
  }
  return flat;
}

std::vector<uint8_t> encode_segment(const int32_t* q, const SegmentSpec& spec,
                                    std::vector<EntryPoint>* entry_points_out,
                                    int num_threads) {
  const int64_t num_elements = validate_spec(spec, "encode_segment");
  if (spec.codebook_size > 0) {
    for (int64_t pos = 0; pos < num_elements; ++pos) {
      if (q[pos] < 0 || q[pos] >= spec.codebook_size) {
        throw std::invalid_argument("encode_segment: codebook index q[" + int_str(pos) +
                                    "] = " + int_str(q[pos]) + " is outside 0.." +
                                    int_str(spec.codebook_size - 1));
      }
    }
  }
  const ContextLayout layout(spec.unary_len);
  std::vector<ContextModel> models(size_t(layout.count));
  CabacEncoder encoder(size_t(num_elements / 2 + 64));
  EncoderSink sink{encoder, models.data()};

  // qp offset: two's complement in 6 + qp_density bypass bins (Q9).
  if (spec.has_qp) {
    const int num_bins = 6 + spec.qp_density;
    encoder.encode_bypass_bins(uint32_t(spec.qp) & ((1u << num_bins) - 1), num_bins);
  }
  for (auto& model : models) model.init(0);

  if (hdsp_flag_coded(spec)) encoder.encode_bypass(0);

  // Row skip: enabled flag, then one flag per row on the shared context (Q7).
  std::vector<uint8_t> skip_rows;
  if (row_skip_syntax_coded(spec)) {
    encoder.encode_bypass(spec.row_skipping ? 1 : 0);
    if (spec.row_skipping) {
      skip_rows = rows_to_skip(q, spec);
      for (const uint8_t skipped : skip_rows) sink.bin(layout.row_skip, skipped);
    }
  }

  // Eco signalling: one flag per listed context, then 3 bypass bins of e-1.
  const std::vector<int> list = eco_context_list(spec);
  std::vector<uint8_t> init_sets;
  if (spec.forced_init_sets != nullptr) {
    if (spec.num_forced_init_sets != list.size()) {
      throw std::invalid_argument("encode_segment: eco_init_sets has " +
                                  int_str(int64_t(spec.num_forced_init_sets)) +
                                  " entries, the eco list has " +
                                  int_str(int64_t(list.size())));
    }
    init_sets.assign(spec.forced_init_sets, spec.forced_init_sets + list.size());
    for (const uint8_t e : init_sets) {
      if (e >= kNumInitSets) {
        throw std::invalid_argument("encode_segment: eco init set " + int_str(e) +
                                    " is outside 0..8");
      }
    }
  } else if (spec.param_opt) {
    init_sets = choose_init_sets(q, spec, skip_rows, num_threads);
  } else {
    init_sets.assign(list.size(), 0);
  }
  for (size_t i = 0; i < list.size(); ++i) {
    const int e = init_sets[i];
    sink.bin(layout.eco, e != 0);
    if (e != 0) encoder.encode_bypass_bins(uint32_t(e - 1), 3);
    models[size_t(list[i])].init(e);
  }

  // Block scan with entry points: the range is narrowed before the first
  // level too, and every later block row starts from the initial contexts.
  const ScanGeometry geometry = scan_geometry(spec);
  const bool has_entry_points =
      spec.codebook_size != 1 && geometry.num_entry_points() > 0;
  std::vector<ContextModel> initial_models;
  std::vector<RawEntryPoint> raw_entry_points;
  uint64_t levels_start = 0;
  if (has_entry_points) {
    encoder.force_range_256();
    levels_start = encoder.bit_position();
    initial_models = models;
    raw_entry_points.reserve(size_t(geometry.num_entry_points()));
    sink.initial_models = &initial_models;
    sink.entry_points = &raw_entry_points;
  }

  const int num_runs = int(std::min<int64_t>(
      std::max(num_threads, 1), has_entry_points ? geometry.num_block_rows : 1));
  std::vector<uint8_t> segment;
  if (num_runs > 1 && num_elements >= kParallelLevelPositions) {
    segment = put_levels_in_runs(encoder, sink, layout, q, spec, skip_rows, num_runs);
  } else {
    if (spec.codebook_size != 1) {
      put_levels_any(sink, layout, q, spec, skip_rows, false);
    }
    encoder.encode_terminate(1);
    segment = encoder.finish();
  }
  if (entry_points_out != nullptr) {
    entry_points_out->clear();
    uint64_t previous = levels_start;
    for (const RawEntryPoint& raw : raw_entry_points) {
      // The decoder's offset: the final codeword's 9 bits in the window
      // minus the interval base's (both mod 512; the difference is < 256).
      const uint32_t offset =
          (window_bits(segment, raw.bit_position) - raw.low_window) & 511u;
      if (offset > 255) {
        throw std::logic_error(
            "encode_segment: entry point offset " + int_str(offset) + " at bit " +
            int_str(int64_t(raw.bit_position)) + " is not below 256");
      }
      entry_points_out->push_back(
          {raw.bit_position - previous, offset, raw.dq_state});
      previous = raw.bit_position;
    }
  }
  return segment;
}

namespace {

// Decoder mirror of put_level; returns the level k.
template <bool kTruncated, bool kTca>
inline int64_t get_level(CabacDecoder& decoder, ContextModel* models,
                         const ContextLayout& layout, const PositionContexts& ctx,
                         const LevelLimits& limits) {
  if (!decoder.decode_bin(models[ctx.sig])) return 0;

  bool negative;
  if (!kTruncated || limits.sign_coded) {
    negative = decoder.decode_bin_unpredictable(models[ctx.sign]) != 0;
  } else {
    negative = limits.max_pos == 0;
  }
  const uint64_t max_magnitude =
      kTruncated ? (negative ? limits.max_neg : limits.max_pos)
                 : std::numeric_limits<uint64_t>::max();

  const int n = layout.n;
  for (int j = 0; j < n; ++j) {
    if (kTruncated && max_magnitude <= uint64_t(j + 1)) {
      return negative ? -int64_t(j + 1) : int64_t(j + 1);
    }
    const int gt = kTca ? gt_context(layout, ctx, j, negative)
                        : ContextLayout::gt + 2 * j + (negative ? 1 : 0);
    if (!decoder.decode_bin(models[gt])) {
      return negative ? -int64_t(j + 1) : int64_t(j + 1);
    }
  }

  const uint64_t max_remainder = max_magnitude - uint64_t(n) - 1;
  int prefix_ones = 0;
  while (prefix_ones < kMaxEgPrefixBins) {
    const uint64_t threshold = (uint64_t(2) << prefix_ones) - 1;
    if (kTruncated && max_remainder < threshold) break;
    if (!decoder.decode_bin(models[layout.eg + prefix_ones])) break;
    ++prefix_ones;
  }
  uint64_t remainder = (uint64_t(1) << prefix_ones) - 1;
  if (prefix_ones > 0) remainder += decoder.decode_bypass_bins(prefix_ones);
  const uint64_t magnitude = remainder + uint64_t(n) + 1;
  // int32 holds magnitudes up to 2^31 - 1, and 2^31 for a negative level.
  const uint64_t max_int32_magnitude = uint64_t(1) << 31;
  if (magnitude > max_int32_magnitude - (negative ? 0 : 1) ||
      (kTruncated && magnitude > max_magnitude)) {
    throw std::invalid_argument(
        "decode_segment: level magnitude " + std::to_string(magnitude) +
        " at byte offset " + std::to_string(decoder.num_bits_read() / 8) +
        (kTruncated ? " exceeds the codebook range" : " overflows int32"));
  }
  return negative ? -int64_t(magnitude) : int64_t(magnitude);
}

// Where one block row's decoding starts (§3.7), absolute in the segment.
struct AbsoluteEntryPoint {
  uint64_t position;
  uint32_t offset;
  int dq_state;
};

// Block-row boundary of the decoder: narrow the range to 256 and check that
// the stream arrives where entry point `index` says it does.
void check_entry_point(CabacDecoder& decoder, const AbsoluteEntryPoint& entry,
                       size_t index, int state, bool dq) {
  const bool offset_fits = decoder.force_range_256();
  if (offset_fits && decoder.window_position() == entry.position &&
      decoder.offset() == entry.offset && (!dq || state == entry.dq_state)) {
    return;
  }
  throw std::invalid_argument(
      "decode_segment: entry point " + std::to_string(index) + " says bit " +
      std::to_string(entry.position) + ", offset " + std::to_string(entry.offset) +
      ", DQ state " + std::to_string(entry.dq_state) +
      "; the stream reaches it at bit " +
      std::to_string(decoder.window_position()) + ", offset " +
      std::to_string(decoder.offset()) + ", DQ state " + std::to_string(state));
}

// Decode block rows [first, end) into q_out, starting with `state`; between
// block rows (block scan) the contexts reset to initial_models and the
// entry points are checked, also the one after `end` when there is one.
template <bool kTruncated, bool kTca>
void get_block_rows(CabacDecoder& decoder, ContextModel* models,
                    const std::vector<ContextModel>& initial_models,
                    const ContextLayout& layout, const SegmentSpec& spec,
                    const ScanGeometry& geometry, const std::vector<uint8_t>& skip_rows,
                    const std::vector<AbsoluteEntryPoint>& entries, int64_t first,
                    int64_t end, int state, int32_t* q_out) {
  const LevelLimits limits = level_limits(spec);
  const int32_t zero_value =
      int32_t(spec.codebook_size > 0 ? spec.codebook_zero_offset : 0);
  int64_t prev_level = 0;
  for (int64_t block_row = first; block_row < end; ++block_row) {
    if (geometry.block_scan && block_row > first) {
      check_entry_point(decoder, entries[size_t(block_row - 1)], size_t(block_row - 1),
                        state, spec.dq);
      std::copy(initial_models.begin(), initial_models.end(), models);
      prev_level = 0;
    }
    walk_block_row(spec, geometry, block_row, skip_rows, state, [&](int64_t pos) {
      const PositionContexts ctx =
          position_contexts(prev_level, state, kTca ? spec.tca_base : nullptr, pos);
      const int64_t level =
          get_level<kTruncated, kTca>(decoder, models, layout, ctx, limits);
      int64_t value = level + zero_value;
      if (spec.dq) {
        const int64_t level_sgn = (level > 0) - (level < 0);
        value = 2 * level - (state & 1) * level_sgn;
        if (value > std::numeric_limits<int32_t>::max() ||
            value < std::numeric_limits<int32_t>::min()) {
          throw std::invalid_argument(
              "decode_segment: DQ index " + std::to_string(value) + " at position " +
              std::to_string(pos) + " (byte offset " +
              std::to_string(decoder.num_bits_read() / 8) + ") overflows int32");
        }
        state = kDqNextState[state][level & 1];
      }
      q_out[pos] = int32_t(value);
      prev_level = level;
    });
  }
  if (geometry.block_scan && end < geometry.num_block_rows) {
    check_entry_point(decoder, entries[size_t(end - 1)], size_t(end - 1), state,
                      spec.dq);
  }
}

}  // namespace

namespace {

// The terminate bin and the stop bit after the last level.
void finish_levels(CabacDecoder& decoder, DecodedSegment& result) {
  if (decoder.decode_terminate() != 1) {
    throw std::invalid_argument(
        "decode_segment: terminate bin missing at byte offset " +
        std::to_string(decoder.num_bits_read() / 8));
  }
  result.consumed_bytes = decoder.finish();
}

// Narrow the range before the first level and turn the NDU's entry points
// (deltas) into absolute positions, each checked to lie inside the data.
std::vector<AbsoluteEntryPoint> absolute_entry_points(CabacDecoder& decoder,
                                                      const SegmentSpec& spec,
                                                      const ScanGeometry& geometry,
                                                      size_t num_bytes) {
  const int64_t expected = geometry.num_entry_points();
  if (spec.num_entry_points != size_t(expected) ||
      (expected > 0 && spec.entry_points == nullptr)) {
    throw std::invalid_argument(
        "decode_segment: a block scan of " + std::to_string(geometry.num_block_rows) +
        " block rows needs " + std::to_string(expected) + " entry points, got " +
        std::to_string(spec.entry_points ? spec.num_entry_points : 0));
  }
  if (!decoder.force_range_256()) {
    throw std::invalid_argument(
        "decode_segment: offset " + std::to_string(decoder.offset()) +
        " is not below 256 where the levels start (bit " +
        std::to_string(decoder.window_position()) + ")");
  }
  const uint64_t num_bits = uint64_t(num_bytes) * 8;
  uint64_t position = decoder.window_position();
  std::vector<AbsoluteEntryPoint> entries;
  entries.reserve(size_t(expected));
  for (size_t j = 0; j < spec.num_entry_points; ++j) {
    const EntryPoint& entry = spec.entry_points[j];
    if (entry.delta_bits > num_bits || position + entry.delta_bits + 9 > num_bits) {
      throw std::invalid_argument(
          "decode_segment: entry point " + std::to_string(j) + " (" +
          std::to_string(entry.delta_bits) + " bits after bit " +
          std::to_string(position) + ") lies beyond the " + std::to_string(num_bytes) +
          "-byte segment");
    }
    if (entry.offset > 255 || entry.dq_state < 0 || entry.dq_state > 7 ||
        (!spec.dq && entry.dq_state != 0)) {
      throw std::invalid_argument(
          "decode_segment: entry point " + std::to_string(j) + " has offset " +
          std::to_string(entry.offset) + " and DQ state " +
          std::to_string(entry.dq_state) + " (needs offset < 256, state 0..7, 0 "
          "without DQ)");
    }
    position += entry.delta_bits;
    entries.push_back({position, entry.offset, entry.dq_state});
  }
  return entries;
}

}  // namespace

DecodedSegment decode_segment(const uint8_t* data, size_t num_bytes,
                              const SegmentSpec& spec, int32_t* q_out, int num_threads,
                              const RowsDecoded* rows_decoded) {
  check_decodable_size(spec, num_bytes);
  const ContextLayout layout(spec.unary_len);
  std::vector<ContextModel> models(size_t(layout.count));
  CabacDecoder decoder(data, num_bytes);
  DecodedSegment result;

  if (spec.has_qp) {
    const int num_bins = 6 + spec.qp_density;
    const uint32_t raw = decoder.decode_bypass_bins(num_bins);
    const int32_t sign_bit = int32_t(1u << (num_bins - 1));
    result.qp = int32_t(raw) - ((int32_t(raw) & sign_bit) ? 2 * sign_bit : 0);
  }
  for (auto& model : models) model.init(0);

  if (hdsp_flag_coded(spec) && decoder.decode_bypass() != 0) {
    throw std::invalid_argument(
        "decode_segment: hist_dep_sig_prob_enabled_flag = 1 (HDSP) is not supported");
  }

  std::vector<uint8_t> skip_rows;
  if (row_skip_syntax_coded(spec) && decoder.decode_bypass() != 0) {
    skip_rows.resize(size_t(spec.height));
    for (auto& skipped : skip_rows) {
      skipped = uint8_t(decoder.decode_bin(models[size_t(layout.row_skip)]));
    }
  }

  const std::vector<int> list = eco_context_list(spec);
  result.init_sets.reserve(list.size());
  for (const int ctx : list) {
    int e = 0;
    if (decoder.decode_bin(models[size_t(layout.eco)])) {
      e = 1 + int(decoder.decode_bypass_bins(3));
    }
    models[size_t(ctx)].init(e);
    result.init_sets.push_back(uint8_t(e));
  }

  if (spec.codebook_size == 1) {
    std::fill(q_out, q_out + spec.height * spec.width, 0);
    finish_levels(decoder, result);
    return result;
  }

  // Block scan: the range is narrowed before the first level, and each
  // later block row starts at its entry point.
  const ScanGeometry geometry = scan_geometry(spec);
  std::vector<AbsoluteEntryPoint> entries;
  std::vector<ContextModel> initial_models;
  if (geometry.num_entry_points() > 0) {
    entries = absolute_entry_points(decoder, spec, geometry, num_bytes);
    initial_models = models;
  }
  const int32_t zero_value =
      int32_t(spec.codebook_size > 0 ? spec.codebook_zero_offset : 0);
  for (size_t row = 0; row < skip_rows.size(); ++row) {
    if (!skip_rows[row]) continue;
    int32_t* begin = q_out + int64_t(row) * spec.width;
    std::fill(begin, begin + spec.width, zero_value);
  }

  // Contiguous groups of block rows, one per thread; group 0 continues the
  // prologue's decoder, the others start at their first entry point.
  const int64_t num_groups =
      std::max<int64_t>(1, std::min<int64_t>(num_threads, int64_t(entries.size()) + 1));
  run_tasks(num_groups, true, [&](int64_t group) {
    const int64_t first = geometry.num_block_rows * group / num_groups;
    const int64_t end = geometry.num_block_rows * (group + 1) / num_groups;
    std::optional<CabacDecoder> own_decoder;
    std::vector<ContextModel> own_models;
    CabacDecoder* group_decoder = &decoder;
    ContextModel* group_models = models.data();
    int state = 0;
    if (group > 0) {
      const AbsoluteEntryPoint& entry = entries[size_t(first - 1)];
      own_decoder.emplace(data, num_bytes, entry.position, entry.offset);
      own_models = initial_models;
      group_decoder = &*own_decoder;
      group_models = own_models.data();
      state = entry.dq_state;
    }
    // Instances without TCA skip its per-value context checks.
    const bool tca = spec.tca_base != nullptr;
    const auto decode_rows =
        spec.codebook_size > 0
            ? (tca ? get_block_rows<true, true> : get_block_rows<true, false>)
            : (tca ? get_block_rows<false, true> : get_block_rows<false, false>);
    decode_rows(*group_decoder, group_models, initial_models, layout, spec, geometry,
                skip_rows, entries, first, end, state, q_out);
    if (group == num_groups - 1) finish_levels(*group_decoder, result);
    if (rows_decoded != nullptr) {
      const int64_t row_begin = std::min(spec.height, first * geometry.block_height);
      const int64_t row_end = std::min(spec.height, end * geometry.block_height);
      (*rows_decoded)(row_begin, row_end, result.qp);
    }
  });
  return result;
}

}  // namespace nnc
