// One tensor's DeepCABAC segment (nnc-format §1.8, §3): everything an NDU
// carries after its header's byte_alignment. Knows nothing about NNR units.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace nnc {

// One CABAC entry point of a block scan (nnc-format §3.7), as the NDU header
// codes it: the start of the decoder's 9-bit offset window, in bits after
// the previous entry (entry 0: after the start of the levels), the offset
// value there (< 256, range forced to 256) and the DQ state (0 without DQ).
struct EntryPoint {
  uint64_t delta_bits = 0;
  uint32_t offset = 0;
  int dq_state = 0;
};

// How one segment is laid out. Fields marked "encoder" are ignored by the
// decoder; all others must match between encoder and decoder.
struct SegmentSpec {
  int64_t height = 1;  // shape[0]
  int64_t width = 1;   // product of shape[1:]
  bool has_qp = true;  // FLOAT payload: qp offset bins present (INT: absent)
  int qp = 0;          // encoder: the qp offset to write
  int qp_density = 2;  // 0..7; the qp offset takes 6 + qp_density bypass bins
  bool dq = false;     // dependent quantisation (q are reconstruction indices)
  bool hdsp_flag_present = false;  // parent_node_id_present_flag of the NDU
  bool row_skipping = false;       // encoder: row_skip_enabled_flag value
  bool param_opt = false;          // encoder: choose context init sets (eco)
  const int32_t* tca_base = nullptr;  // TCA base q, height*width, or null
  int64_t codebook_size = 0;          // 0: no codebook
  int64_t codebook_zero_offset = 0;   // codebook index coded as level 0
  int unary_len = 11;                 // n greater-than flags (1..256)
  // encoder: explicit init set per eco-list entry (length must match the
  // list), overriding param_opt; null to let param_opt decide.
  const uint8_t* forced_init_sets = nullptr;
  size_t num_forced_init_sets = 0;
  // encoder: the eco choice estimates bits over the rows covering the first
  // eco_max_positions positions (<= 0: the whole tensor, as NNCodec does);
  // in a block scan over the first eco_max_positions coded positions.
  int64_t eco_max_positions = int64_t(1) << 16;
  // encoder: under DQ, estimate the eco choice from the coded levels k
  // instead of NNCodec's q (its quirk, §3.4). About 1% smaller DQ segments,
  // but the choice (and so the bytes) no longer match NNCodec's.
  bool eco_from_levels = false;
  // 0: raster scan; 1..4: blocks of 4 << scan_order rows and columns, each
  // block row after the first starting at an entry point (§3.5, §3.7).
  // Raster applies whenever width or height is 1, as in NNCodec.
  int scan_order = 0;
  // encoder, block scans under DQ: the DQ state in which each block row
  // starts (num_block_rows entries), when the caller has it from the
  // trellis; the level runs then start there instead of walking the levels
  // before them. It must be the state those levels lead to. Null: walk.
  const uint8_t* block_row_start_states = nullptr;
  // decoder: the NDU's entry points; exactly num_block_rows - 1 when the
  // block scan applies (ignored otherwise).
  const EntryPoint* entry_points = nullptr;
  size_t num_entry_points = 0;
};

// Block rows of the scan: the block scan's when it applies, else one per
// matrix row (raster). Entry points: num_block_rows - 1 with a block scan.
struct ScanGeometry {
  int64_t block_height = 1;
  int64_t block_width = 1;
  int64_t num_block_rows = 0;
  bool block_scan = false;
  int64_t num_entry_points() const { return block_scan ? num_block_rows - 1 : 0; }
};
ScanGeometry scan_geometry(const SegmentSpec& spec);

// Visit the positions (raster indices) of block row `block_row` in scan
// order, calling visit(pos) for every coded position. A row flagged in
// skip_rows skips its segment of each block and advances the DQ `state` by
// `width` zeros per segment, however wide the block (quirk Q3).
int advance_dq_state_by_zeros(int state, int64_t count);
template <class Visit>
inline void walk_block_row(const SegmentSpec& spec, const ScanGeometry& geometry,
                           int64_t block_row, const std::vector<uint8_t>& skip_rows,
                           int& state, Visit&& visit) {
  const int64_t row_begin = block_row * geometry.block_height;
  const int64_t row_end = std::min(spec.height, row_begin + geometry.block_height);
  for (int64_t col_begin = 0; col_begin < spec.width;
       col_begin += geometry.block_width) {
    const int64_t col_end = std::min(spec.width, col_begin + geometry.block_width);
    for (int64_t row = row_begin; row < row_end; ++row) {
      if (!skip_rows.empty() && skip_rows[size_t(row)]) {
        if (spec.dq) state = advance_dq_state_by_zeros(state, spec.width);
        continue;
      }
      const int64_t offset = row * spec.width;
      for (int64_t pos = offset + col_begin; pos < offset + col_end; ++pos) visit(pos);
    }
  }
}

// Number of elements height*width; throws std::length_error on overflow or
// when it exceeds the int32 range, std::invalid_argument on a bad spec.
int64_t validate_spec(const SegmentSpec& spec, const char* operation);

// Reject, before any allocation, a shape that num_bytes cannot describe:
// every bin costs more than 1/177 bit (rLPS >= 2 at range <= 510), so a
// segment holds at most 177*(8*num_bytes + 1) bins, and each element (or,
// with row-skip syntax, each row) needs one. Throws std::length_error.
void check_decodable_size(const SegmentSpec& spec, size_t num_bytes);

// Contexts signalled by the eco list, in coding order.
std::vector<int> eco_context_list(const SegmentSpec& spec);

// Init set per eco-list entry that the encoder would choose for q
// (param_opt=True): estimated bits of all 9 sets, 3-bit penalty for e != 0.
// With num_threads > 1 and a large prefix, the estimate runs on two
// threads (the same choice).
std::vector<uint8_t> choose_init_sets(const int32_t* q, const SegmentSpec& spec,
                                      int num_threads = 1);

// choose_init_sets() in two steps, for a block-scan encoder that knows the
// levels of the first block rows before the others: list_eco_bins() walks
// the levels of block rows [0, num_known_block_rows) only (with their
// row-skip flags) and returns null unless the estimate's prefix (the first
// eco_max_positions coded positions) ends within them; then
// choose_listed_init_sets() estimates on up to num_threads threads. The
// result is choose_init_sets()'s.
struct EcoListing;
struct EcoListingDeleter {
  void operator()(EcoListing* listing) const;
};
using EcoListingPtr = std::unique_ptr<EcoListing, EcoListingDeleter>;
EcoListingPtr list_eco_bins(const int32_t* q, const SegmentSpec& spec,
                            int64_t num_known_block_rows);
std::vector<uint8_t> choose_listed_init_sets(EcoListing& listing,
                                             const SegmentSpec& spec, int num_threads);

// The estimated bits (2^-15 units) behind that choice: 9 per eco-list
// entry, init sets 0..8, from the portable step or (avx512) the AVX-512
// one, for checking the two against each other. Throws
// std::invalid_argument when avx512 is asked for and avx512_available() is
// false.
std::vector<uint64_t> eco_init_set_costs(const int32_t* q, const SegmentSpec& spec,
                                         bool avx512);

// Code q (height*width int32 in raster order) into a complete segment, with
// the terminate bin and the flush. Throws std::invalid_argument when q does
// not fit the spec (DQ parity, codebook range).
// With a block scan, entry_points_out (if given) receives the entry points,
// and the levels of large tensors are coded in runs of block rows on up to
// num_threads threads (the same bytes on any number).
std::vector<uint8_t> encode_segment(
    const int32_t* q, const SegmentSpec& spec,
    std::vector<EntryPoint>* entry_points_out = nullptr, int num_threads = 1);

struct DecodedSegment {
  int qp = 0;                 // decoded qp offset (0 without has_qp)
  size_t consumed_bytes = 0;  // up to and including the stop-bit byte
  std::vector<uint8_t> init_sets;  // signalled init set per eco-list entry
};

// Inverse of encode_segment; q_out receives height*width values. Throws
// std::length_error / std::invalid_argument naming the byte offset when the
// data ends early, a value overflows int32, termination is malformed or an
// entry point does not match the stream. With a block scan the block rows
// are decoded from their entry points on up to num_threads threads.
//
// rows_decoded, when given, is called once per group of block rows, on the
// thread that decoded it, as soon as matrix rows [row_begin, row_end) of
// q_out hold their final values; segment_qp is the decoded qp offset.
using RowsDecoded =
    std::function<void(int64_t row_begin, int64_t row_end, int segment_qp)>;
DecodedSegment decode_segment(const uint8_t* data, size_t num_bytes,
                              const SegmentSpec& spec, int32_t* q_out,
                              int num_threads = 1,
                              const RowsDecoded* rows_decoded = nullptr);

}  // namespace nnc
