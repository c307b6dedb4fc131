// Bit estimates for rate-aware quantisation: a private copy of the context
// models of one tensor (all at init set 0), fed with the levels chosen so far
// the way the encoder will code them (nnc-format §3.1-§3.3). Encoder only;
// TCA contexts and row skipping are not modelled.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "cabac.hpp"
#include "context_layout.hpp"

namespace nnc {

// A context of the rate model: ContextModel's two estimators at init set 0,
// whose window shifts (a_F = SH0 + 4 = 5, a_S = SH1 = 4) are compile-time
// constants here. The same integer steps, so the same states and bit
// estimates, with shorter dependency chains: the trellis' settle updates
// these models back to back (about 4 bins per level).
struct RateContext {
  static constexpr int kFastShift = 5;
  static constexpr int kSlowShift = 4;
  int16_t fast = 0;
  int16_t slow = 0;

  int probability() const { return slow + 16 * fast; }

  // ContextModel::update with the constant shifts.
  void update(int bin) {
    const int16_t* curve = kAdaptationCurve;
    if (bin) {
      fast = static_cast<int16_t>(fast + (curve[16 + (fast >> 3)] >> kFastShift));
      slow = static_cast<int16_t>(slow + (curve[16 + (slow >> 7)] >> kSlowShift));
    } else {
      fast = static_cast<int16_t>(fast - (curve[16 + ((-fast) >> 3)] >> kFastShift));
      slow = static_cast<int16_t>(slow - (curve[16 + ((-slow) >> 7)] >> kSlowShift));
    }
  }

  // ContextModel::update_unpredictable with the constant shifts (bin 0 or 1).
  void update_unpredictable(int bin) {
    const int16_t* curve = kAdaptationCurve;
    const int flip = bin - 1;  // 0 for bin 1, -1 for bin 0
    int fast_up = (fast ^ flip) - flip;
    int slow_up = (slow ^ flip) - flip;
    fast_up += curve[16 + (fast_up >> 3)] >> kFastShift;
    slow_up += curve[16 + (slow_up >> 7)] >> kSlowShift;
    fast = static_cast<int16_t>((fast_up ^ flip) - flip);
    slow = static_cast<int16_t>((slow_up ^ flip) - flip);
  }
};

// bin_cost() of a rate-model context.
inline uint32_t bin_cost(const RateContext& model, int bin) {
  return kBinCostTable[(512 + (model.probability() >> 3)) * 2 + bin];
}

// Whether RateContext matches ContextModel at init set 0 (the shifts and
// the zero initial estimators); checked by LevelRateModel's constructor.
bool rate_context_matches_init_set_0();

class LevelRateModel {
 public:
  explicit LevelRateModel(int unary_len = 11)
      : layout_(unary_len), models_(size_t(layout_.count)) {
    if (!rate_context_matches_init_set_0()) {
      throw std::logic_error("LevelRateModel: RateContext differs from init set 0");
    }
  }

  // Bits (2^-15 units) of the significance bin at DQ state s.
  uint32_t sig_cost(int state, long long prev_level, int significant) const {
    const int ctx = 3 * state + neighbour_class(prev_level);
    return bin_cost(models_[size_t(ctx)], significant);
  }

  // Bits of the sign bin of a nonzero level.
  uint32_t sign_cost(long long prev_level, bool negative) const {
    return bin_cost(models_[size_t(ContextLayout::sign + neighbour_class(prev_level))],
                    negative);
  }

  // Bits of the sign and magnitude bins of a level with |k| = magnitude >= 1.
  uint32_t sign_and_magnitude_cost(long long prev_level, uint64_t magnitude,
                                   bool negative) const {
    uint32_t bits = bin_cost(
        models_[size_t(ContextLayout::sign + neighbour_class(prev_level))], negative);
    return bits + magnitude_cost(magnitude, negative);
  }

  // Bits of the greater-than flags and the Exp-Golomb remainder.
  uint32_t magnitude_cost(uint64_t magnitude, bool negative) const {
    uint32_t bits = 0;
    const int n = layout_.n;
    for (int j = 0; j < n; ++j) {
      const int greater = magnitude > uint64_t(j + 1);
      bits += gt_cost(j, negative, greater);
      if (!greater) return bits;
    }
    return bits + remainder_cost(magnitude - uint64_t(n) - 1);
  }

  // Bits of greater-than flag j (0..unary_len-1) of a level of that sign.
  uint32_t gt_cost(int j, bool negative, int greater) const {
    return bin_cost(models_[size_t(ContextLayout::gt + 2 * j + negative)], greater);
  }

  // Bits of the Exp-Golomb remainder |k| - unary_len - 1 of a level.
  uint32_t remainder_cost(uint64_t remainder) const {
    uint32_t bits = 0;
    int prefix_ones = 0;
    while (prefix_ones < 31) {
      const int one = remainder >= (uint64_t(2) << prefix_ones) - 1;
      bits += bin_cost(models_[size_t(layout_.eg + prefix_ones)], one);
      if (!one) break;
      ++prefix_ones;
    }
    return bits + uint32_t(prefix_ones) * 32768u;  // bypass suffix: 1 bit each
  }

  int unary_len() const { return layout_.n; }

  // Total bits of level k at DQ state s after prev_level.
  uint32_t level_cost(int state, long long prev_level, long long level) const {
    if (level == 0) return sig_cost(state, prev_level, 0);
    const bool negative = level < 0;
    const uint64_t magnitude = uint64_t(negative ? -level : level);
    return sig_cost(state, prev_level, 1) +
           sign_and_magnitude_cost(prev_level, magnitude, negative);
  }

  // Adapt the models to level k as the encoder will code it.
  __attribute__((always_inline)) void update(int state, long long prev_level,
                                             long long level) {
    const int neighbour = neighbour_class(prev_level);
    models_[size_t(3 * state + neighbour)].update(level != 0);
    if (level == 0) return;
    const bool negative = level < 0;
    models_[size_t(ContextLayout::sign + neighbour)].update_unpredictable(negative);
    const uint64_t magnitude = uint64_t(negative ? -level : level);
    const int n = layout_.n;
    for (int j = 0; j < n; ++j) {
      const int greater = magnitude > uint64_t(j + 1);
      models_[size_t(ContextLayout::gt + 2 * j + negative)].update(greater);
      if (!greater) return;
    }
    const uint64_t remainder = magnitude - uint64_t(n) - 1;
    for (int m = 0; m < 31; ++m) {
      const int one = remainder >= (uint64_t(2) << m) - 1;
      models_[size_t(layout_.eg + m)].update(one);
      if (!one) return;
    }
  }

 private:
  ContextLayout layout_;
  std::vector<RateContext> models_;
};

// Frozen bit tables of a LevelRateModel, for the DQ trellis which evaluates
// many branches between two model updates.
class RateSnapshot {
 public:
  static constexpr int kTabulatedMagnitudes = 64;

  void refresh(const LevelRateModel& model) {
    model_ = &model;
    for (int state = 0; state < 8; ++state) {
      for (int neighbour = 0; neighbour < 3; ++neighbour) {
        const long long prev = neighbour == 0 ? 0 : (neighbour == 1 ? -1 : 1);
        sig_bits_[state][neighbour][0] = model.sig_cost(state, prev, 0);
        sig_bits_[state][neighbour][1] = model.sig_cost(state, prev, 1);
      }
    }
    for (int neighbour = 0; neighbour < 3; ++neighbour) {
      const long long prev = neighbour == 0 ? 0 : (neighbour == 1 ? -1 : 1);
      sign_bits_[neighbour][0] = model.sign_cost(prev, false);
      sign_bits_[neighbour][1] = model.sign_cost(prev, true);
    }
    // magnitude_cost() for a = 1..64, sharing the greater-than flags that
    // all magnitudes above j + 1 code as 1 and the remainders of both signs.
    const int n = model.unary_len();
    uint32_t remainder_bits[kTabulatedMagnitudes] = {};
    for (int a = n + 1; a <= kTabulatedMagnitudes; ++a) {
      remainder_bits[a - n - 1] = model.remainder_cost(uint64_t(a - n - 1));
    }
    for (int negative = 0; negative < 2; ++negative) {
      uint32_t ones_bits = 0;  // gt flags 0..a-2, all 1
      for (int a = 1; a <= kTabulatedMagnitudes; ++a) {
        if (a <= n) {
          magnitude_bits_[negative][a] = ones_bits + model.gt_cost(a - 1, negative, 0);
          ones_bits += model.gt_cost(a - 1, negative, 1);
        } else {
          magnitude_bits_[negative][a] = ones_bits + remainder_bits[a - n - 1];
        }
      }
    }
  }

  uint32_t sig(int state, int neighbour, int significant) const {
    return sig_bits_[state][neighbour][significant];
  }

  // Bits of the significance bin at (state, neighbour): [0] for level 0,
  // [1] for a nonzero level.
  const uint32_t* sig_pair(int state, int neighbour) const {
    return sig_bits_[state][neighbour];
  }

  uint32_t sign(int neighbour, bool negative) const {
    return sign_bits_[neighbour][negative ? 1 : 0];
  }

  // Bits of the greater-than flags and remainder of |k| = a (0 for a = 0).
  uint32_t magnitude(uint64_t a, bool negative) const {
    if (a <= uint64_t(kTabulatedMagnitudes)) {
      return magnitude_bits_[negative ? 1 : 0][a];
    }
    return model_->magnitude_cost(a, negative);
  }

 private:
  const LevelRateModel* model_ = nullptr;
  uint32_t sig_bits_[8][3][2] = {};
  uint32_t sign_bits_[3][2] = {};
  uint32_t magnitude_bits_[2][kTabulatedMagnitudes + 1] = {};
};

}  // namespace nnc
