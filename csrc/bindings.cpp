// Python bindings of the C++ codec core (module flwr_nncodec._core). This file
// only converts types, releases the GIL around the native work and attaches
// docstrings; all coding logic lives in the nnc_core library.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "nnc_tables.hpp"
#include "quantize.hpp"
#include "segment.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

template <class T>
using InArray = nb::ndarray<const T, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
template <class T>
using OutArray = nb::ndarray<nb::numpy, T, nb::ndim<1>>;

// Hand a heap buffer of n values to NumPy without copying it.
template <class T>
OutArray<T> to_numpy(std::unique_ptr<T[]> data, size_t n) {
  T* raw = data.release();
  nb::capsule owner(raw, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  return OutArray<T>(raw, {n}, owner);
}

template <class T>
void check_length(const InArray<T>& array, int64_t expected, const char* what) {
  if (int64_t(array.shape(0)) != expected) {
    throw std::invalid_argument(std::string(what) + " has " +
                                std::to_string(array.shape(0)) +
                                " elements, expected height*width = " +
                                std::to_string(expected));
  }
}

nnc::SegmentSpec make_spec(int64_t height, int64_t width, int qp_density, bool dq,
                           bool hdsp_flag_present,
                           const std::optional<InArray<int32_t>>& tca_base,
                           int64_t codebook_size, int64_t codebook_zero_offset,
                           int unary_len, const char* operation) {
  nnc::SegmentSpec spec;
  spec.height = height;
  spec.width = width;
  spec.qp_density = qp_density;
  spec.dq = dq;
  spec.hdsp_flag_present = hdsp_flag_present;
  spec.codebook_size = codebook_size;
  spec.codebook_zero_offset = codebook_zero_offset;
  spec.unary_len = unary_len;
  const int64_t n = nnc::validate_spec(spec, operation);
  if (tca_base) {
    check_length(*tca_base, n, "tca_base");
    spec.tca_base = tca_base->data();
  }
  return spec;
}

nb::bytes encode_segment(InArray<int32_t> q, int64_t height, int64_t width,
                         std::optional<int> qp, int qp_density, bool dq,
                         bool hdsp_flag_present, bool row_skipping, bool param_opt,
                         std::optional<InArray<int32_t>> tca_base, int64_t codebook_size,
                         int64_t codebook_zero_offset, int unary_len,
                         std::optional<InArray<uint8_t>> eco_init_sets) {
  nnc::SegmentSpec spec = make_spec(height, width, qp_density, dq, hdsp_flag_present,
                                    tca_base, codebook_size, codebook_zero_offset,
                                    unary_len, "encode_segment");
  check_length(q, height * width, "q");
  spec.has_qp = qp.has_value();
  spec.qp = qp.value_or(0);
  spec.row_skipping = row_skipping;
  spec.param_opt = param_opt;
  if (eco_init_sets) {
    spec.forced_init_sets = eco_init_sets->data();
    spec.num_forced_init_sets = eco_init_sets->shape(0);
  }
  std::vector<uint8_t> segment;
  {
    nb::gil_scoped_release release;
    segment = nnc::encode_segment(q.data(), spec);
  }
  return nb::bytes(segment.data(), segment.size());
}

nnc::DecodedSegment decode_into(InArray<uint8_t> data, int64_t height, int64_t width,
                                bool has_qp, int qp_density, bool dq,
                                bool hdsp_flag_present,
                                const std::optional<InArray<int32_t>>& tca_base,
                                int64_t codebook_size, int64_t codebook_zero_offset,
                                int unary_len, int32_t* q) {
  nnc::SegmentSpec spec = make_spec(height, width, qp_density, dq, hdsp_flag_present,
                                    tca_base, codebook_size, codebook_zero_offset,
                                    unary_len, "decode_segment");
  spec.has_qp = has_qp;
  nb::gil_scoped_release release;
  return nnc::decode_segment(data.data(), data.shape(0), spec, q);
}

std::tuple<OutArray<int32_t>, std::optional<int>, size_t> decode_segment(
    InArray<uint8_t> data, int64_t height, int64_t width, bool has_qp, int qp_density,
    bool dq, bool hdsp_flag_present, std::optional<InArray<int32_t>> tca_base,
    int64_t codebook_size, int64_t codebook_zero_offset, int unary_len) {
  nnc::SegmentSpec spec;  // validated again in decode_into
  spec.height = height;
  spec.width = width;
  spec.codebook_size = codebook_size;
  spec.codebook_zero_offset = codebook_zero_offset;
  spec.qp_density = qp_density;
  spec.unary_len = unary_len;
  nnc::validate_spec(spec, "decode_segment");
  const size_t n = size_t(height * width);
  std::unique_ptr<int32_t[]> q(new int32_t[n]);
  const nnc::DecodedSegment result =
      decode_into(data, height, width, has_qp, qp_density, dq, hdsp_flag_present,
                  tca_base, codebook_size, codebook_zero_offset, unary_len, q.get());
  std::optional<int> qp;
  if (has_qp) qp = result.qp;
  return {to_numpy(std::move(q), n), qp, result.consumed_bytes};
}

std::vector<int> decode_eco_init_sets(
    InArray<uint8_t> data, int64_t height, int64_t width, bool has_qp, int qp_density,
    bool dq, bool hdsp_flag_present, std::optional<InArray<int32_t>> tca_base,
    int64_t codebook_size, int64_t codebook_zero_offset, int unary_len) {
  nnc::SegmentSpec spec;
  spec.height = height;
  spec.width = width;
  nnc::validate_spec(spec, "decode_eco_init_sets");
  std::vector<int32_t> q(size_t(height * width));
  const nnc::DecodedSegment result =
      decode_into(data, height, width, has_qp, qp_density, dq, hdsp_flag_present,
                  tca_base, codebook_size, codebook_zero_offset, unary_len, q.data());
  return std::vector<int>(result.init_sets.begin(), result.init_sets.end());
}

OutArray<int32_t> quantize(InArray<float> x, int qp, int qp_density, bool dq,
                           double lambda_scale) {
  const size_t n = x.shape(0);
  std::unique_ptr<int32_t[]> q(new int32_t[n]);
  {
    nb::gil_scoped_release release;
    nnc::quantize(x.data(), n, qp, qp_density, dq, lambda_scale, q.get());
  }
  return to_numpy(std::move(q), n);
}

OutArray<float> dequantize(InArray<int32_t> q, int qp, int qp_density) {
  const size_t n = q.shape(0);
  std::unique_ptr<float[]> x(new float[n]);
  {
    nb::gil_scoped_release release;
    nnc::dequantize(q.data(), n, qp, qp_density, x.get());
  }
  return to_numpy(std::move(x), n);
}

std::vector<int> choose_eco_init_sets(InArray<int32_t> q, int64_t height, int64_t width,
                                      bool dq, bool row_skipping,
                                      std::optional<InArray<int32_t>> tca_base,
                                      int64_t codebook_size, int64_t codebook_zero_offset,
                                      int unary_len) {
  nnc::SegmentSpec spec = make_spec(height, width, 2, dq, false, tca_base, codebook_size,
                                    codebook_zero_offset, unary_len,
                                    "choose_eco_init_sets");
  check_length(q, height * width, "q");
  spec.row_skipping = row_skipping;
  std::vector<uint8_t> sets;
  {
    nb::gil_scoped_release release;
    sets = nnc::choose_init_sets(q.data(), spec);
  }
  return std::vector<int>(sets.begin(), sets.end());
}

nb::dict tables() {
  nb::dict result;
  nb::list rlps, curve, init_sets, dq_next;
  for (const uint8_t v : nnc::kRangeLpsTable) rlps.append(int(v));
  for (const int16_t v : nnc::kAdaptationCurve) curve.append(int(v));
  for (const auto& set : nnc::kInitSets) {
    nb::list row;
    for (const int16_t v : set) row.append(int(v));
    init_sets.append(row);
  }
  for (const auto& row_values : nnc::kDqNextState) {
    dq_next.append(nb::make_tuple(int(row_values[0]), int(row_values[1])));
  }
  result["rlps_table"] = rlps;
  result["adaptation_curve"] = curve;
  result["init_sets"] = init_sets;
  result["dq_state_transition"] = dq_next;
  return result;
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "NNC (ISO/IEC 15938-17) DeepCABAC segment coder and quantisers.";

  m.def("step_size", &nnc::step_size, "qp"_a, "qp_density"_a,
        "Step size of qp at qp_density (float32-exact).");

  m.def("quantize", &quantize, "x"_a.noconvert(), "qp"_a, "qp_density"_a, "dq"_a,
        "lambda_scale"_a = 0.0,
        "Quantise float32[n] to int32 reconstruction indices q (URQ or DQ "
        "trellis). lambda_scale 0 = squared error only. Releases the GIL.");

  m.def("dequantize", &dequantize, "q"_a.noconvert(), "qp"_a, "qp_density"_a,
        "Reconstruct float32(step * float32(q)). Releases the GIL.");

  m.def("encode_segment", &encode_segment, "q"_a.noconvert(), "height"_a, "width"_a, nb::kw_only(),
        "qp"_a.none(), "qp_density"_a, "dq"_a, "hdsp_flag_present"_a, "row_skipping"_a,
        "param_opt"_a, "tca_base"_a.noconvert() = nb::none(), "codebook_size"_a = 0,
        "codebook_zero_offset"_a = 0, "unary_len"_a = 11, "eco_init_sets"_a.noconvert() = nb::none(),
        "Code int32 q[height*width] (raster order) into one DeepCABAC segment "
        "(qp offset unless qp is None, HDSP/row-skip flags, eco list, levels, "
        "terminate, flush). eco_init_sets forces the init set of each eco-list "
        "entry. Releases the GIL; the result is copied once into bytes.");

  m.def("decode_segment", &decode_segment, "data"_a.noconvert(), "height"_a, "width"_a,
        nb::kw_only(), "has_qp"_a, "qp_density"_a, "dq"_a, "hdsp_flag_present"_a,
        "tca_base"_a.noconvert() = nb::none(), "codebook_size"_a = 0, "codebook_zero_offset"_a = 0,
        "unary_len"_a = 11,
        "Decode one segment: returns (q int32[n], qp or None, consumed_bytes). "
        "Raises ValueError naming the byte offset on malformed or truncated "
        "data. Releases the GIL; the data buffer is read in place.");

  m.def("decode_eco_init_sets", &decode_eco_init_sets, "data"_a.noconvert(), "height"_a, "width"_a,
        nb::kw_only(), "has_qp"_a, "qp_density"_a, "dq"_a, "hdsp_flag_present"_a,
        "tca_base"_a.noconvert() = nb::none(), "codebook_size"_a = 0, "codebook_zero_offset"_a = 0,
        "unary_len"_a = 11,
        "Decode one segment and return the init set signalled for each eco-list "
        "entry (diagnostics and tests).");

  m.def("choose_eco_init_sets", &choose_eco_init_sets, "q"_a.noconvert(), "height"_a, "width"_a,
        nb::kw_only(), "dq"_a, "row_skipping"_a, "tca_base"_a.noconvert() = nb::none(),
        "codebook_size"_a = 0, "codebook_zero_offset"_a = 0, "unary_len"_a = 11,
        "Init set per eco-list entry that param_opt=True would signal for q.");

  m.def("tables", &tables,
        "The constant tables compiled into the core (rLPS, adaptation curve, "
        "init sets, DQ transitions), for checking against nnc-tables.json.");
}
