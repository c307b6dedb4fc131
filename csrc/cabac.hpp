// Binary arithmetic coder of NNC's DeepCABAC: the HEVC engine (9-bit range,
// context-coded, bypass and terminate bins) driven by NNC's dual-window
// probability estimator ("SBMP", nnc-format §3.3 and §3.6).
//
// NOTE: encoder and decoder must see the same sequence of contexts; the
// binarisation in segment.cpp is written once for both directions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "nnc_tables.hpp"

namespace nnc {

// One adaptive binary model: fast and slow estimators on a common scale,
// combined as P = slow + 16 * fast (P > 0: bin value 1 is more probable).
// NOTE: int16_t estimators (|F| <= 123, |S| <= 1923 for every reachable
// state) also keep their stores from aliasing the coders' uint32_t registers.
// The shifts sit between the estimators so that the compiler updates them
// with two scalar stores rather than one (slower) two-lane vector store.
struct ContextModel {
  int16_t fast = 0;
  uint8_t fast_shift = 5;
  uint8_t slow_shift = 4;
  int16_t slow = 0;
  uint8_t init_set = 0;
  int8_t probability_high = 0;  // probability() >> 7, kept by init and update

  // Load init set e (0..8): shifts and initial estimators.
  void init(int e) {
    const int16_t* set = kInitSets[e];
    fast_shift = static_cast<uint8_t>(set[0] + 4);
    slow_shift = static_cast<uint8_t>(set[1]);
    fast = set[3];
    slow = static_cast<int16_t>(set[2] - 16 * set[3]);
    init_set = static_cast<uint8_t>(e);
    probability_high = static_cast<int8_t>(probability() >> 7);
  }

  int probability() const { return slow + 16 * fast; }

  int mps() const { return probability_high >= 0 ? 1 : 0; }

  // rLPS for a 9-bit range. The arithmetic shift comes before abs (quirk Q1).
  uint32_t range_lps(uint32_t range) const {
    const int column = std::abs(int(probability_high));
    return kRangeLpsTable[((range >> 5) & 7) * 32 + column];
  }

  // Move both estimators towards the coded bin along the adaptation curve.
  // (A branch-free form is slower: runs of predictable bins, as in large
  // magnitudes, then wait on a longer chain; likewise for decode_bin.)
  void update(int bin) {
    const int16_t* curve = kAdaptationCurve;
    if (bin) {
      fast = static_cast<int16_t>(fast + (curve[16 + (fast >> 3)] >> fast_shift));
      slow = static_cast<int16_t>(slow + (curve[16 + (slow >> 7)] >> slow_shift));
    } else {
      fast = static_cast<int16_t>(fast - (curve[16 + ((-fast) >> 3)] >> fast_shift));
      slow = static_cast<int16_t>(slow - (curve[16 + ((-slow) >> 7)] >> slow_shift));
    }
    probability_high = static_cast<int8_t>(probability() >> 7);
  }

  // update() without a branch on the bin (which must be 0 or 1), for bins
  // near probability 1/2 (signs), where a branch would be mispredicted half
  // the time: bin 0 moves the negated estimators as bin 1 moves them, then
  // negates back.
  void update_unpredictable(int bin) {
    const int16_t* curve = kAdaptationCurve;
    const int flip = bin - 1;  // 0 for bin 1, -1 for bin 0
    int fast_up = (fast ^ flip) - flip;
    int slow_up = (slow ^ flip) - flip;
    fast_up += curve[16 + (fast_up >> 3)] >> fast_shift;
    slow_up += curve[16 + (slow_up >> 7)] >> slow_shift;
    fast = static_cast<int16_t>((fast_up ^ flip) - flip);
    slow = static_cast<int16_t>((slow_up ^ flip) - flip);
    probability_high = static_cast<int8_t>(probability() >> 7);
  }
};

// Estimated cost of coding `bin` with a model in state P, in 2^-15 bit units
// (encoder decisions only: eco choice and rate-aware quantisation).
extern const uint32_t* const kBinCostTable;  // 2 * 1024 entries

inline uint32_t bin_cost(const ContextModel& model, int bin) {
  // |P| < 4096 for every reachable state, so the index stays in 0..1023.
  return kBinCostTable[(512 + (model.probability() >> 3)) * 2 + bin];
}

// HEVC-style arithmetic encoder: `low` register with carry propagation via
// one buffered byte and a count of pending 0xFF bytes.
class CabacEncoder {
 public:
  explicit CabacEncoder(size_t reserve_bytes = 0) { out_.reserve(reserve_bytes); }

  // Branch-free on the bin: LPS adds the MPS range to low and keeps rLPS;
  // either way renormalise until range >= 256 (MPS: at most 1 bit). With
  // kUnpredictable the model moves without a branch on the bin too
  // (ContextModel::update_unpredictable: bins near probability 1/2, signs).
  template <bool kUnpredictable = false>
  __attribute__((always_inline)) void encode_bin(int bin, ContextModel& model) {
    const uint32_t lps = model.range_lps(range_);
    const uint32_t mps_range = range_ - lps;
    const uint32_t lps_mask = 0u - uint32_t(bin != model.mps());
    low_ += mps_range & lps_mask;
    const uint32_t new_range = mps_range ^ ((mps_range ^ lps) & lps_mask);
    const int shift = __builtin_clz(new_range) - 23;
    low_ <<= shift;
    range_ = new_range << shift;
    bits_left_ -= shift;
    if constexpr (kUnpredictable) {
      model.update_unpredictable(bin);
    } else {
      model.update(bin);
    }
    if (bits_left_ < 12) write_out();
  }

  void encode_bypass(int bin) {
    low_ <<= 1;
    if (bin) low_ += range_;
    bits_left_ -= 1;
    if (bits_left_ < 12) write_out();
  }

  // num_bins bypass bins holding `value`, MSB first (num_bins <= 32).
  void encode_bypass_bins(uint32_t value, int num_bins) {
    while (num_bins > 8) {
      num_bins -= 8;
      encode_bypass_chunk((value >> num_bins) & 0xff, 8);
    }
    if (num_bins > 0) encode_bypass_chunk(value & ((1u << num_bins) - 1), num_bins);
  }

  void encode_terminate(int bin) {
    range_ -= 2;
    if (bin) {
      low_ += range_;
      low_ <<= 7;
      range_ = 2 << 7;
      bits_left_ -= 7;
    } else if (range_ < 256) {
      low_ <<= 1;
      range_ <<= 1;
      bits_left_ -= 1;
    }
    if (bits_left_ < 12) write_out();
  }

  // Flush the registers, write the stop bit 1 and zero-pad to a byte boundary.
  // Call once, after encode_terminate(1). Returns the segment.
  std::vector<uint8_t> finish();

  // The exact interval base coded so far, carries resolved, without the stop
  // bit: bit_position() + 9 bits, most significant first, zero-padded to
  // whole bytes. Arithmetic coding is linear in the base, so the codes of an
  // encoder started at range 256 add into a longer stream (ExactCodeSum).
  // Call once; the encoder is spent afterwards.
  std::vector<uint8_t> finish_exact();

  size_t num_bytes_so_far() const { return out_.size(); }

  // Entry points (block scans, nnc-format §3.7). force_range_256() narrows
  // the interval without flushing; bit_position() is the start of the
  // decoder's 9-bit window at this point, counted from the segment start;
  // low_window() the interval base's 9 bits in that window. The decoder's
  // offset there is (segment bits [pos, pos + 9) - low_window) mod 512.
  void force_range_256() { range_ = 256; }
  uint64_t bit_position() const {
    return 8 * (uint64_t(out_.size()) + uint64_t(num_buffered_bytes_)) +
           uint64_t(23 - bits_left_);
  }
  uint32_t low_window() const { return low_ & 511u; }

 private:
  void encode_bypass_chunk(uint32_t value, int num_bins) {
    low_ = (low_ << num_bins) + range_ * value;
    bits_left_ -= num_bins;
    if (bits_left_ < 12) write_out();
  }

  void write_out();

  // Write the buffered byte and the pending 0xFF bytes with the carry out of
  // low_ added, and clear the carry from low_ (finish, finish_exact).
  void resolve_carry();

  std::vector<uint8_t> out_;
  // bits_left_ sits between low_ and range_, which shift together, so that
  // the compiler updates them with scalar stores rather than one two-lane
  // vector store (slower on the coder's critical path).
  uint32_t low_ = 0;
  int bits_left_ = 23;
  uint32_t range_ = 510;
  uint32_t buffered_byte_ = 0xff;
  int num_buffered_bytes_ = 0;
};

// The 9 bits of `bytes` at [bit, bit + 9), most significant first, as the
// decoder's offset window sees them; bits past the end read as 0.
uint32_t window_bits(const std::vector<uint8_t>& bytes, uint64_t bit);

// Joins the exact codes (CabacEncoder::finish_exact) of encoders that coded
// consecutive runs of one segment, each after the first started fresh at
// range 256 where the previous one stopped: the segment's interval base is
// the sum of the codes, each shifted to its start. Bit b of the sum stands
// for the coder's bit position b: code k, started at bit position p_k, adds
// in at bit p_k.
class ExactCodeSum {
 public:
  explicit ExactCodeSum(uint64_t num_bits) : bytes_(size_t((num_bits + 7) / 8), 0) {}

  // The 9 bits of the sum at [bit, bit + 9): the interval base's low bits
  // at that bit position, once every code that starts before it is added.
  uint32_t window(uint64_t bit) const { return window_bits(bytes_, bit); }

  // Add code (num_bits bits, most significant first) at `bit`.
  void add(const std::vector<uint8_t>& code, uint64_t num_bits, uint64_t bit);

  // The segment: the sum's bits [0, num_coded_bits + 1), the stop bit 1,
  // zero padding (CabacEncoder::finish()); num_coded_bits is the final
  // bit position.
  std::vector<uint8_t> segment(uint64_t num_coded_bits) &&;

 private:
  std::vector<uint8_t> bytes_;
  size_t nonzero_end_ = 0;  // bytes_ is zero from here on
};

// Arithmetic decoder. The 9-bit offset register of the spec is kept scaled
// in 64 bits: value = offset * 2^shift + the next `shift` bits of the segment
// (0..54 bits of look-ahead), so comparing offset with range is comparing
// value with range << shift, and moving n bits into the offset is
// shift -= n. When shift drops below 0, six bytes are loaded at once, so
// the refill branch is taken once per 48 bits rather than once per byte.
// Consuming a bit past the end of the data throws std::length_error naming
// the byte offset; the decoder never reads the input out of bounds (bytes
// past the end load as 0).
class CabacDecoder {
 public:
  CabacDecoder(const uint8_t* data, size_t num_bytes)
      : data_(data), num_bytes_(num_bytes) {
    load_byte();
    load_byte();
    shift_ = 7;  // 16 bits loaded, the first 9 form the offset
    if (past_end_) check_not_past_end();
    refill();
  }

  // Decoder started at an entry point (nnc-format §3.7): range 256, the
  // 9-bit offset `offset` (< 256), its window starting at bit
  // `window_position` of the segment. Throws std::length_error when the
  // window lies beyond the data.
  CabacDecoder(const uint8_t* data, size_t num_bytes, uint64_t window_position,
               uint32_t offset)
      : data_(data), num_bytes_(num_bytes), range_(256) {
    const uint64_t next_bit = window_position + 9;
    if (next_bit > uint64_t(num_bytes) * 8) {
      throw std::length_error("decode_segment: entry point at bit " +
                              std::to_string(window_position) + " lies beyond the " +
                              std::to_string(num_bytes) + "-byte segment");
    }
    pos_ = size_t(next_bit / 8);
    const int bits_in_byte = 8 - int(next_bit % 8);  // 1..8 look-ahead bits
    load_byte();
    value_ = (uint64_t(offset) << bits_in_byte) |
             (value_ & ((uint64_t(1) << bits_in_byte) - 1));
    shift_ = bits_in_byte;
    if (past_end_) check_not_past_end();
    refill();
  }

  // Block-row boundary (§3.5): narrow the range to 256. Returns false when
  // the offset does not fit below 256 (the stream is corrupt).
  bool force_range_256() {
    range_ = 256;
    return value_ < (uint64_t(256) << shift_);
  }

  // Start of the 9-bit offset window in the segment, and the offset itself.
  uint64_t window_position() const { return num_bits_read() - 9; }
  uint32_t offset() const { return uint32_t(value_ >> shift_); }

  __attribute__((always_inline)) int decode_bin(ContextModel& model) {
    const uint32_t lps = model.range_lps(range_);
    range_ -= lps;
    const uint64_t scaled_range = uint64_t(range_) << shift_;
    int bin;
    if (value_ >= scaled_range) {
      bin = 1 - model.mps();
      value_ -= scaled_range;
      const int renorm = __builtin_clz(lps) - 23;
      range_ = lps << renorm;
      consume(renorm);
    } else {
      bin = model.mps();
      if (range_ < 256) {
        range_ <<= 1;
        consume(1);
      }
    }
    model.update(bin);
    return bin;
  }

  // decode_bin() without a branch on the bin (signs, see
  // ContextModel::update_unpredictable).
  __attribute__((always_inline)) int decode_bin_unpredictable(ContextModel& model) {
    const uint32_t lps = model.range_lps(range_);
    const uint32_t mps_range = range_ - lps;
    const uint64_t scaled_range = uint64_t(mps_range) << shift_;
    const uint32_t is_lps = value_ >= scaled_range ? 1u : 0u;
    const uint32_t lps_mask = 0u - is_lps;
    value_ -= scaled_range & (uint64_t(0) - is_lps);
    const uint32_t new_range = mps_range ^ ((mps_range ^ lps) & lps_mask);
    const int renorm = __builtin_clz(new_range) - 23;
    range_ = new_range << renorm;
    consume(renorm);
    const int bin = model.mps() ^ int(is_lps);
    model.update_unpredictable(bin);
    return bin;
  }

  int decode_bypass() {
    consume(1);
    const uint64_t scaled_range = uint64_t(range_) << shift_;
    if (value_ >= scaled_range) {
      value_ -= scaled_range;
      return 1;
    }
    return 0;
  }

  // num_bins bypass bins, MSB first (num_bins <= 32).
  uint32_t decode_bypass_bins(int num_bins) {
    uint32_t value = 0;
    for (int i = 0; i < num_bins; ++i) value = (value << 1) | decode_bypass();
    return value;
  }

  int decode_terminate() {
    range_ -= 2;
    if (value_ >= (uint64_t(range_) << shift_)) return 1;
    if (range_ < 256) {
      range_ <<= 1;
      consume(1);
    }
    return 0;
  }

  // After a terminate bin 1: check that the last bit read is the stop bit 1
  // and that zero bits pad to the byte boundary. Returns the segment length
  // in bytes (up to and including the byte holding the stop bit).
  size_t finish();

  // Bits moved into the offset register so far.
  uint64_t num_bits_read() const { return uint64_t(pos_) * 8 - uint64_t(shift_); }

 private:
  // Move n <= 8 look-ahead bits into the offset, refilling if needed.
  __attribute__((always_inline)) void consume(int n) {
    shift_ -= n;
    if (shift_ < 0) refill();
    if (past_end_) check_not_past_end();
  }

  // Load whole bytes while they fit. The register holds at most 10 + shift
  // significant bits (9 for the offset, one more between a bypass bin's
  // consume and its comparison), so shift stays <= 54: from shift -8..-1
  // that is six bytes, read as one big-endian word while eight bytes remain
  // in the data.
  void refill() {
    if (shift_ < 0 && pos_ + 8 <= num_bytes_) {
      uint64_t word;
      std::memcpy(&word, data_ + pos_, sizeof(word));
      word = __builtin_bswap64(word);
      value_ = (value_ << 48) | (word >> 16);
      pos_ += 6;
      shift_ += 48;
      return;
    }
    while (shift_ + 8 <= 54) {
      load_byte();
      shift_ += 8;
    }
  }

  void load_byte() {
    uint64_t byte = 0;
    if (pos_ < num_bytes_) {
      byte = data_[pos_];
    } else {
      past_end_ = true;
    }
    pos_ += 1;
    value_ = (value_ << 8) | byte;
  }

  void check_not_past_end() const;

  const uint8_t* data_;
  size_t num_bytes_;
  size_t pos_ = 0;  // bytes loaded into value_ (may exceed num_bytes_)
  uint64_t value_ = 0;
  int shift_ = 0;
  bool past_end_ = false;
  uint32_t range_ = 510;
};

}  // namespace nnc
