// Context index layout of one DeepCABAC context set (nnc-format §3.2):
// 90 + 4n models for n greater-than flags.
#pragma once

namespace nnc {

struct ContextLayout {
  explicit ContextLayout(int n)
      : n(n), gt_tca(53 + 2 * n), eg(53 + 4 * n), eco(53 + 4 * n + 34),
        row_skip(53 + 4 * n + 36), count(90 + 4 * n) {}
  static constexpr int sig = 0;        // 3*s + neighbour class, s = DQ state
  static constexpr int sig_tca = 24;   // 24 + 2*s + (|base| > 1)
  static constexpr int sign = 48;      // 48 + neighbour class
  static constexpr int sign_tca = 51;  // 51 (base < 0) or 52 (base > 0)
  static constexpr int gt = 53;        // 53 + 2*j + (level < 0)
  int n;         // greater-than flags
  int gt_tca;    // gt_tca + 2*j + (|base| >= j ? 0 : 1)
  int eg;        // eg + m: Exp-Golomb prefix bin m (31 contexts)
  int eco;       // eco flags
  int row_skip;  // row skip flags
  int count;
};

// Neighbour class of the previous coded level: 0 zero, 1 negative, 2 positive.
inline int neighbour_class(long long prev_level) {
  return prev_level == 0 ? 0 : (prev_level < 0 ? 1 : 2);
}

}  // namespace nnc
