// Normative constant tables of the NNC (ISO/IEC 15938-17) DeepCABAC
// probability model, as NNCodec 2.1.3 uses them (nnc-format §3.3), and the
// dependent-quantisation state machine (§2.3).
#pragma once

#include <cstdint>

namespace nnc {

// rLPS lookup: 8 rows (the 3 range bits below the MSB of the 9-bit range)
// of 32 columns (|P >> 7|, P the combined SBMP probability state).
extern const uint8_t kRangeLpsTable[256];

// Adaptation curve C of the dual-window estimator: the step taken towards
// the coded bin, indexed by 16 + (signed distance >> shift).
extern const int16_t kAdaptationCurve[32];

// The 9 context-initialisation sets e = 0..8, each stored as the standard
// writes it: (SH0, SH1, P0, F0), with a_F = SH0 + 4, a_S = SH1, S0 = P0 - 16*F0.
extern const int16_t kInitSets[9][4];

// DQ state transition: next = kDqNextState[s][k & 1] (8 states).
extern const uint8_t kDqNextState[8][2];

}  // namespace nnc
