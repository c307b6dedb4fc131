// Out-of-line parts of the arithmetic coder (cabac.hpp).
#include "cabac.hpp"

#include <algorithm>
#include <array>
#include <cmath>

namespace nnc {

namespace {

// Estimated bits of a bin, in 2^-15 bit units, indexed by 512 + (P >> 3).
// The LPS probability falls geometrically with |P| like the rLPS table does:
// p_LPS = 0.5 * r^(|P_mid| / 128), P_mid the centre of the 8-wide bucket and
// r = 0.87315 fitted to NNCodec's eco choices (all 2790 signalled contexts
// of the URQ conformance vectors agree; r in 0.8731..0.8732 all do).
std::array<uint32_t, 2 * 1024> make_bin_cost_table() {
  std::array<uint32_t, 2 * 1024> table{};
  const double ratio = 0.87315;
  for (int index = 0; index < 1024; ++index) {
    const int p_mid = (index - 512) * 8 + 4;
    const int mps = p_mid >= 0 ? 1 : 0;
    const double p_lps = 0.5 * std::pow(ratio, std::abs(p_mid) / 128.0);
    const double bits_lps = -std::log2(p_lps);
    const double bits_mps = -std::log2(1.0 - p_lps);
    table[index * 2 + mps] = static_cast<uint32_t>(std::lround(bits_mps * 32768.0));
    table[index * 2 + 1 - mps] = static_cast<uint32_t>(std::lround(bits_lps * 32768.0));
  }
  return table;
}

const std::array<uint32_t, 2 * 1024> kBinCostStorage = make_bin_cost_table();

}  // namespace

const uint32_t* const kBinCostTable = kBinCostStorage.data();

void CabacEncoder::write_out() {
  const uint32_t lead_byte = low_ >> (24 - bits_left_);
  bits_left_ += 8;
  low_ &= 0xffffffffu >> bits_left_;
  if (lead_byte == 0xff) {
    num_buffered_bytes_ += 1;
    return;
  }
  if (num_buffered_bytes_ > 0) {
    const uint32_t carry = lead_byte >> 8;
    out_.push_back(static_cast<uint8_t>(buffered_byte_ + carry));
    const uint8_t pending = static_cast<uint8_t>(0xff + carry);
    for (; num_buffered_bytes_ > 1; --num_buffered_bytes_) out_.push_back(pending);
  } else {
    num_buffered_bytes_ = 1;
  }
  buffered_byte_ = lead_byte & 0xff;
}

void CabacEncoder::resolve_carry() {
  const int num_low_bits = 32 - bits_left_;
  if ((low_ >> num_low_bits) != 0) {
    out_.push_back(static_cast<uint8_t>(buffered_byte_ + 1));
    for (; num_buffered_bytes_ > 1; --num_buffered_bytes_) out_.push_back(0x00);
    low_ &= (1u << num_low_bits) - 1;
  } else {
    if (num_buffered_bytes_ > 0) out_.push_back(static_cast<uint8_t>(buffered_byte_));
    for (; num_buffered_bytes_ > 1; --num_buffered_bytes_) out_.push_back(0xff);
  }
  num_buffered_bytes_ = 0;
}

std::vector<uint8_t> CabacEncoder::finish() {
  resolve_carry();

  // Remaining low bits, then the stop bit 1, then zeros to the byte boundary.
  const int num_tail_bits = 24 - bits_left_;
  uint64_t tail = ((uint64_t(low_) >> 8) << 1) | 1u;
  int num_bits = num_tail_bits + 1;
  const int pad_bits = (8 - num_bits % 8) % 8;
  tail <<= pad_bits;
  num_bits += pad_bits;
  for (int shift = num_bits - 8; shift >= 0; shift -= 8) {
    out_.push_back(static_cast<uint8_t>((tail >> shift) & 0xff));
  }
  return std::move(out_);
}

std::vector<uint8_t> CabacEncoder::finish_exact() {
  resolve_carry();

  // Then all num_low_bits (9..20) bits of low, left-aligned in whole bytes.
  const int num_low_bits = 32 - bits_left_;
  const int pad_bits = (8 - num_low_bits % 8) % 8;
  const uint32_t tail = low_ << pad_bits;
  for (int shift = num_low_bits + pad_bits - 8; shift >= 0; shift -= 8) {
    out_.push_back(static_cast<uint8_t>((tail >> shift) & 0xff));
  }
  return std::move(out_);
}

uint32_t window_bits(const std::vector<uint8_t>& bytes, uint64_t bit) {
  uint32_t bits = 0;
  for (uint64_t b = bit; b < bit + 9; ++b) {
    const size_t byte = size_t(b / 8);
    const uint32_t value =
        byte < bytes.size() ? (bytes[byte] >> (7 - b % 8)) & 1u : 0u;
    bits = (bits << 1) | value;
  }
  return bits;
}

void ExactCodeSum::add(const std::vector<uint8_t>& code, uint64_t num_bits,
                       uint64_t bit) {
  if (num_bits == 0) return;
  const size_t first_byte = size_t(bit / 8);
  const int shift = int(bit % 8);
  const size_t num_code_bytes = size_t((num_bits + 7) / 8);
  const size_t num_bytes = size_t((uint64_t(shift) + num_bits + 7) / 8);
  if (first_byte + num_bytes > bytes_.size() || num_code_bytes > code.size()) {
    throw std::logic_error("ExactCodeSum::add: a code of " + std::to_string(num_bits) +
                           " bits at bit " + std::to_string(bit) +
                           " does not fit the sum");
  }

  // Byte j of the code shifted right by `shift`.
  const auto shifted = [&](size_t j) {
    const uint32_t high = j < num_code_bytes ? uint32_t(code[j]) >> shift : 0u;
    const bool spill = shift > 0 && j >= 1 && j - 1 < num_code_bytes;
    const uint32_t low = spill ? (uint32_t(code[j - 1]) << (8 - shift)) & 0xffu : 0u;
    return high | low;
  };

  // Where the sum is still zero (from nonzero_end_ on) adding is copying:
  // no byte sum exceeds 255, so no carry arises there. Below it, add from
  // the last byte up with the carry running towards the segment start.
  const size_t copy_from = std::clamp(nonzero_end_, first_byte, first_byte + num_bytes);
  const size_t copy_begin = copy_from - first_byte;
  const size_t inner_begin = std::max<size_t>(copy_begin, 1);
  const size_t inner_end = std::max(inner_begin, std::min(num_bytes, num_code_bytes));
  uint8_t* out = bytes_.data() + first_byte;
  for (size_t j = copy_begin; j < inner_begin; ++j) out[j] = uint8_t(shifted(j));
  for (size_t j = inner_begin; j < inner_end; ++j) {  // both code bytes exist
    out[j] = uint8_t((uint32_t(code[j]) >> shift) |
                     ((uint32_t(code[j - 1]) << (8 - shift)) & 0xffu));
  }
  for (size_t j = inner_end; j < num_bytes; ++j) out[j] = uint8_t(shifted(j));
  uint32_t carry = 0;
  for (size_t j = copy_from - first_byte; j-- > 0;) {
    const uint32_t sum = uint32_t(bytes_[first_byte + j]) + shifted(j) + carry;
    bytes_[first_byte + j] = uint8_t(sum & 0xff);
    carry = sum >> 8;
  }
  nonzero_end_ = std::max(nonzero_end_, first_byte + num_bytes);
  for (size_t j = first_byte; carry != 0 && j-- > 0;) {
    const uint32_t sum = uint32_t(bytes_[j]) + carry;
    bytes_[j] = uint8_t(sum & 0xff);
    carry = sum >> 8;
  }
  if (carry != 0) {
    throw std::logic_error("ExactCodeSum::add: carry out of the segment start");
  }
}

std::vector<uint8_t> ExactCodeSum::segment(uint64_t num_coded_bits) && {
  const uint64_t stop_bit = num_coded_bits + 1;
  const size_t num_bytes = size_t(stop_bit / 8 + 1);
  if (num_bytes > bytes_.size()) {
    throw std::logic_error("ExactCodeSum::segment: the sum is shorter than the "
                           "segment");
  }
  bytes_.resize(num_bytes);
  const int used_bits = int(stop_bit % 8);  // bits of the last byte before the stop bit
  bytes_.back() = uint8_t((bytes_.back() & (0xff00u >> used_bits)) |
                          (0x80u >> used_bits));
  return std::move(bytes_);
}

void CabacDecoder::check_not_past_end() const {
  if (num_bits_read() > uint64_t(num_bytes_) * 8) {
    throw std::length_error(
        "decode_segment: data ends early: needed bit " +
        std::to_string(num_bits_read() - 1) + " (byte offset " +
        std::to_string((num_bits_read() - 1) / 8) + ") of a " +
        std::to_string(num_bytes_) + "-byte segment");
  }
}

size_t CabacDecoder::finish() {
  // The stop bit is the last bit moved into the offset register. Check the
  // raw bit: the register itself has had ranges subtracted from it.
  const uint64_t bits_read = num_bits_read();
  const uint64_t last_bit = bits_read - 1;  // bits_read >= 9 after construction
  if (((data_[last_bit / 8] >> (7 - last_bit % 8)) & 1u) == 0) {
    throw std::invalid_argument(
        "decode_segment: bad stop bit: bit " + std::to_string(last_bit) +
        " (byte offset " + std::to_string(last_bit / 8) + ") is 0, expected 1");
  }

  // The padding is the rest of the stop bit's byte: the first
  // (-bits_read) mod 8 look-ahead bits.
  const int num_padding_bits = int((8 - bits_read % 8) % 8);
  const uint64_t padding =
      (value_ >> (shift_ - num_padding_bits)) & ((uint64_t(1) << num_padding_bits) - 1);
  if (padding != 0) {
    throw std::invalid_argument(
        "decode_segment: bad alignment after the stop bit at byte offset " +
        std::to_string(last_bit / 8) + ": padding bits are not zero");
  }
  return static_cast<size_t>((bits_read + 7) / 8);
}

}  // namespace nnc
