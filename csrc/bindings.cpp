// Python bindings of the C++ codec core (module flwr_nncodec._core). This file
// only converts types, releases the GIL around the native work and attaches
// docstrings; all coding logic lives in the nnc_core library.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>
#include <sys/mman.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu_features.hpp"
#include "nnc_tables.hpp"
#include "quantize.hpp"
#include "segment.hpp"
#include "tensor_coder.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

template <class T>
using InArray = nb::ndarray<const T, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
template <class T>
using OutArray = nb::ndarray<nb::numpy, T, nb::ndim<1>>;
using OptionalBase = std::optional<InArray<int32_t>>;

// Strict element conversion for list arguments: like the noconvert single
// array arguments, a wrong dtype, rank or layout is a TypeError, never a
// silent copy or cast.
template <class T>
std::vector<InArray<T>> strict_arrays(const std::vector<nb::object>& items,
                                      const char* name, const char* dtype) {
  std::vector<InArray<T>> arrays;
  arrays.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    InArray<T> array;
    if (!nb::try_cast<InArray<T>>(items[i], array, /*convert=*/false)) {
      throw nb::type_error((std::string(name) + "[" + std::to_string(i) +
                            "] must be a C-contiguous 1-D " + dtype + " array")
                               .c_str());
    }
    arrays.push_back(array);
  }
  return arrays;
}

std::optional<std::vector<OptionalBase>> strict_bases(
    const std::optional<std::vector<nb::object>>& items) {
  if (!items) return std::nullopt;
  std::vector<OptionalBase> bases;
  bases.reserve(items->size());
  for (size_t i = 0; i < items->size(); ++i) {
    const nb::object& item = (*items)[i];
    if (item.is_none()) {
      bases.emplace_back();
      continue;
    }
    InArray<int32_t> base;
    if (!nb::try_cast<InArray<int32_t>>(item, base, /*convert=*/false)) {
      throw nb::type_error(("tca_bases[" + std::to_string(i) +
                            "] must be None or a C-contiguous 1-D int32 array")
                               .c_str());
    }
    bases.emplace_back(base);
  }
  return bases;
}

// Buffers for output arrays. From 4 MiB on they are 2 MiB-aligned and
// offered to transparent huge pages, as numpy does with its own arrays:
// filling a 4 MiB array then takes two page faults instead of 1,024.
struct FreeDeleter {
  void operator()(void* p) const noexcept { std::free(p); }
};
template <class T>
using Buffer = std::unique_ptr<T[], FreeDeleter>;

template <class T>
Buffer<T> new_buffer(size_t n) {
  constexpr size_t kHugePageBytes = size_t(1) << 21;
  const size_t num_bytes = std::max<size_t>(n, 1) * sizeof(T);
  void* raw = nullptr;
  if (num_bytes >= 2 * kHugePageBytes) {
    const size_t rounded =
        (num_bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
    raw = std::aligned_alloc(kHugePageBytes, rounded);
#ifdef MADV_HUGEPAGE
    if (raw != nullptr) madvise(raw, rounded, MADV_HUGEPAGE);  // a hint only
#endif
  } else {
    raw = std::malloc(num_bytes);
  }
  if (raw == nullptr) throw std::bad_alloc();
  return Buffer<T>(static_cast<T*>(raw));
}

// Hand a buffer of n values to NumPy without copying it.
template <class T>
OutArray<T> to_numpy(Buffer<T> data, size_t n) {
  T* raw = data.release();
  nb::capsule owner(raw, [](void* p) noexcept { std::free(p); });
  return OutArray<T>(raw, {n}, owner);
}

template <class T>
void check_length(const InArray<T>& array, int64_t expected, const std::string& what) {
  if (int64_t(array.shape(0)) != expected) {
    throw std::invalid_argument(what + " has " + std::to_string(array.shape(0)) +
                                " elements, expected height*width = " +
                                std::to_string(expected));
  }
}

// Entry points cross the boundary as (delta_bits, offset, dq_state) tuples,
// as signed integers so that a negative one gets a ValueError naming it
// rather than nanobind's TypeError.
using EntryPointTuple = std::tuple<int64_t, int64_t, int64_t>;

std::vector<EntryPointTuple> entry_point_tuples(
    const std::vector<nnc::EntryPoint>& in) {
  std::vector<EntryPointTuple> out;
  out.reserve(in.size());
  for (const auto& e : in) {
    out.emplace_back(int64_t(e.delta_bits), int64_t(e.offset), int64_t(e.dq_state));
  }
  return out;
}

// Only the conversions are checked here; the core names values that do not
// fit the stream (offset >= 256, DQ state outside 0..7, bits past the end).
std::vector<nnc::EntryPoint> entry_points_from(const std::vector<EntryPointTuple>& in) {
  std::vector<nnc::EntryPoint> out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    const auto& [delta_bits, offset, dq_state] = in[i];
    const auto fail = [&](const char* field, int64_t value) {
      throw std::invalid_argument("entry point " + std::to_string(i) + ": " + field +
                                  " " + std::to_string(value) +
                                  " is negative or "
                                  "too large");
    };
    if (delta_bits < 0) fail("delta_bits", delta_bits);
    if (offset < 0 || offset > int64_t(UINT32_MAX)) fail("offset", offset);
    if (dq_state < INT_MIN || dq_state > INT_MAX) fail("dq_state", dq_state);
    out.push_back({uint64_t(delta_bits), uint32_t(offset), int(dq_state)});
  }
  return out;
}

struct SpecArgs {
  int64_t height;
  int64_t width;
  int qp_density;
  bool dq;
  bool hdsp_flag_present;
  int64_t codebook_size;
  int64_t codebook_zero_offset;
  int unary_len;
};

nnc::SegmentSpec make_spec(const SpecArgs& args, const OptionalBase& tca_base,
                           const char* operation, int scan_order = 0) {
  nnc::SegmentSpec spec;
  spec.scan_order = scan_order;
  spec.height = args.height;
  spec.width = args.width;
  spec.qp_density = args.qp_density;
  spec.dq = args.dq;
  spec.hdsp_flag_present = args.hdsp_flag_present;
  spec.codebook_size = args.codebook_size;
  spec.codebook_zero_offset = args.codebook_zero_offset;
  spec.unary_len = args.unary_len;
  const int64_t n = nnc::validate_spec(spec, operation);
  if (tca_base) {
    check_length(*tca_base, n, "tca_base");
    spec.tca_base = tca_base->data();
  }
  return spec;
}

std::tuple<nb::bytes, std::vector<EntryPointTuple>> encode_segment_scan(
    InArray<int32_t> q, int64_t height, int64_t width, std::optional<int> qp,
    int qp_density, bool dq, bool hdsp_flag_present, bool row_skipping, bool param_opt,
    OptionalBase tca_base, int64_t codebook_size, int64_t codebook_zero_offset,
    int unary_len, std::optional<InArray<uint8_t>> eco_init_sets,
    int64_t eco_max_positions, bool eco_from_levels, int scan_order, int num_threads) {
  const SpecArgs args{height, width, qp_density, dq, hdsp_flag_present,
                      codebook_size, codebook_zero_offset, unary_len};
  nnc::SegmentSpec spec = make_spec(args, tca_base, "encode_segment", scan_order);
  check_length(q, height * width, "q");
  spec.has_qp = qp.has_value();
  spec.qp = qp.value_or(0);
  spec.row_skipping = row_skipping;
  spec.param_opt = param_opt;
  spec.eco_max_positions = eco_max_positions;
  spec.eco_from_levels = eco_from_levels;
  if (eco_init_sets) {
    spec.forced_init_sets = eco_init_sets->data();
    spec.num_forced_init_sets = eco_init_sets->shape(0);
  }
  std::vector<uint8_t> segment;
  std::vector<nnc::EntryPoint> entry_points;
  {
    nb::gil_scoped_release release;
    segment = nnc::encode_segment(q.data(), spec, &entry_points, num_threads);
  }
  return {nb::bytes(segment.data(), segment.size()), entry_point_tuples(entry_points)};
}

nb::bytes encode_segment(InArray<int32_t> q, int64_t height, int64_t width,
                         std::optional<int> qp, int qp_density, bool dq,
                         bool hdsp_flag_present, bool row_skipping, bool param_opt,
                         OptionalBase tca_base, int64_t codebook_size,
                         int64_t codebook_zero_offset, int unary_len,
                         std::optional<InArray<uint8_t>> eco_init_sets,
                         int64_t eco_max_positions, bool eco_from_levels) {
  return std::get<0>(encode_segment_scan(
      q, height, width, qp, qp_density, dq, hdsp_flag_present, row_skipping, param_opt,
      tca_base, codebook_size, codebook_zero_offset, unary_len, eco_init_sets,
      eco_max_positions, eco_from_levels, 0, 1));
}

nnc::DecodedSegment decode_into(const InArray<uint8_t>& data, const SpecArgs& args,
                                bool has_qp, const OptionalBase& tca_base, int32_t* q,
                                int scan_order = 0,
                                const std::vector<nnc::EntryPoint>& entry_points = {},
                                int num_threads = 1) {
  nnc::SegmentSpec spec = make_spec(args, tca_base, "decode_segment", scan_order);
  spec.has_qp = has_qp;
  spec.entry_points = entry_points.data();
  spec.num_entry_points = entry_points.size();
  nb::gil_scoped_release release;
  return nnc::decode_segment(data.data(), data.shape(0), spec, q, num_threads);
}

std::tuple<OutArray<int32_t>, std::optional<int>, size_t> decode_segment(
    InArray<uint8_t> data, int64_t height, int64_t width, bool has_qp, int qp_density,
    bool dq, bool hdsp_flag_present, OptionalBase tca_base, int64_t codebook_size,
    int64_t codebook_zero_offset, int unary_len, int scan_order,
    std::vector<EntryPointTuple> entry_points, int num_threads) {
  const SpecArgs args{height, width, qp_density, dq, hdsp_flag_present,
                      codebook_size, codebook_zero_offset, unary_len};
  const nnc::SegmentSpec spec = make_spec(args, tca_base, "decode_segment", scan_order);
  nnc::check_decodable_size(spec, data.shape(0));  // before allocating
  const size_t n = size_t(height * width);
  Buffer<int32_t> q = new_buffer<int32_t>(n);
  const nnc::DecodedSegment result =
      decode_into(data, args, has_qp, tca_base, q.get(), scan_order,
                  entry_points_from(entry_points), std::max(1, num_threads));
  std::optional<int> qp;
  if (has_qp) qp = result.qp;
  return {to_numpy(std::move(q), n), qp, result.consumed_bytes};
}

std::vector<int> decode_eco_init_sets(InArray<uint8_t> data, int64_t height,
                                      int64_t width, bool has_qp, int qp_density,
                                      bool dq, bool hdsp_flag_present,
                                      OptionalBase tca_base, int64_t codebook_size,
                                      int64_t codebook_zero_offset, int unary_len,
                                      int scan_order,
                                      std::vector<EntryPointTuple> entry_points) {
  const SpecArgs args{height, width, qp_density, dq, hdsp_flag_present,
                      codebook_size, codebook_zero_offset, unary_len};
  nnc::check_decodable_size(
      make_spec(args, tca_base, "decode_eco_init_sets", scan_order), data.shape(0));
  std::vector<int32_t> q(size_t(height * width));
  const nnc::DecodedSegment result =
      decode_into(data, args, has_qp, tca_base, q.data(), scan_order,
                  entry_points_from(entry_points));
  return std::vector<int>(result.init_sets.begin(), result.init_sets.end());
}

std::vector<int> choose_eco_init_sets(InArray<int32_t> q, int64_t height, int64_t width,
                                      bool dq, bool row_skipping, OptionalBase tca_base,
                                      int64_t codebook_size,
                                      int64_t codebook_zero_offset, int unary_len,
                                      int64_t eco_max_positions, bool eco_from_levels,
                                      int num_threads, int scan_order) {
  const SpecArgs args{height, width, 2, dq, false, codebook_size, codebook_zero_offset,
                      unary_len};
  nnc::SegmentSpec spec = make_spec(args, tca_base, "choose_eco_init_sets", scan_order);
  check_length(q, height * width, "q");
  spec.row_skipping = row_skipping;
  spec.eco_max_positions = eco_max_positions;
  spec.eco_from_levels = eco_from_levels;
  std::vector<uint8_t> sets;
  {
    nb::gil_scoped_release release;
    sets = nnc::choose_init_sets(q.data(), spec, num_threads);
  }
  return std::vector<int>(sets.begin(), sets.end());
}

// The two kernels side by side (checks only): see nnc::eco_init_set_costs
// and nnc::dq_forward_pass.
std::vector<uint64_t> eco_init_set_costs(InArray<int32_t> q, int64_t height,
                                         int64_t width, bool dq, bool row_skipping,
                                         OptionalBase tca_base,
                                         int64_t eco_max_positions, bool avx512) {
  const SpecArgs args{height, width, 2, dq, false, 0, 0, 11};
  nnc::SegmentSpec spec = make_spec(args, tca_base, "eco_init_set_costs");
  check_length(q, height * width, "q");
  spec.row_skipping = row_skipping;
  spec.eco_max_positions = eco_max_positions;
  nb::gil_scoped_release release;
  return nnc::eco_init_set_costs(q.data(), spec, avx512);
}

std::pair<std::vector<double>, nb::bytes> dq_forward_pass(InArray<float> x, int qp,
                                                          int qp_density,
                                                          double lambda_scale,
                                                          int start_state,
                                                          bool avx512) {
  nnc::DqForwardPass pass;
  {
    nb::gil_scoped_release release;
    pass = nnc::dq_forward_pass(x.data(), x.shape(0), qp, qp_density, lambda_scale,
                                start_state, avx512);
  }
  return {pass.costs, nb::bytes(reinterpret_cast<const char*>(pass.back_rows.data()),
                                pass.back_rows.size())};
}

OutArray<int32_t> quantize(InArray<float> x, int qp, int qp_density, bool dq,
                           double lambda_scale) {
  const size_t n = x.shape(0);
  Buffer<int32_t> q = new_buffer<int32_t>(n);
  {
    nb::gil_scoped_release release;
    nnc::quantize(x.data(), n, qp, qp_density, dq, lambda_scale, q.get());
  }
  return to_numpy(std::move(q), n);
}

OutArray<float> dequantize(InArray<int32_t> q, int qp, int qp_density) {
  const size_t n = q.shape(0);
  Buffer<float> x = new_buffer<float>(n);
  {
    nb::gil_scoped_release release;
    nnc::dequantize(q.data(), n, qp, qp_density, x.get());
  }
  return to_numpy(std::move(x), n);
}

// Options shared by the fused encoders.
struct TensorOptions {
  int qp_density;
  bool dq;
  double lambda_scale;
  bool hdsp_flag_present;
  bool row_skipping;
  bool param_opt;
  int unary_len;
  int64_t eco_max_positions;
  bool eco_from_levels;
};

nnc::TensorJob make_job(const InArray<float>& x, int64_t height, int64_t width, int qp,
                        const OptionalBase& tca_base, const TensorOptions& options,
                        const std::string& what, int scan_order = 0) {
  const SpecArgs args{height, width, options.qp_density, options.dq,
                      options.hdsp_flag_present, 0, 0, options.unary_len};
  nnc::TensorJob job;
  job.spec = make_spec(args, tca_base, "encode_tensor", scan_order);
  check_length(x, height * width, what);
  job.spec.has_qp = true;
  job.spec.qp = qp;
  job.spec.row_skipping = options.row_skipping;
  job.spec.param_opt = options.param_opt;
  job.spec.eco_max_positions = options.eco_max_positions;
  job.spec.eco_from_levels = options.eco_from_levels;
  job.x = x.data();
  job.lambda_scale = options.lambda_scale;
  return job;
}

std::tuple<nb::bytes, OutArray<int32_t>> encode_tensor(
    InArray<float> x, int64_t height, int64_t width, int qp, int qp_density, bool dq,
    double lambda_scale, bool hdsp_flag_present, bool row_skipping, bool param_opt,
    OptionalBase tca_base, int unary_len, int64_t eco_max_positions,
    bool eco_from_levels) {
  const TensorOptions options{qp_density,        dq,        lambda_scale,
                              hdsp_flag_present, row_skipping, param_opt,
                              unary_len,         eco_max_positions, eco_from_levels};
  nnc::TensorJob job = make_job(x, height, width, qp, tca_base, options, "x");
  const size_t n = size_t(height * width);
  Buffer<int32_t> q = new_buffer<int32_t>(n);
  job.q_out = q.get();
  {
    nb::gil_scoped_release release;
    nnc::encode_tensor(job);
  }
  return {nb::bytes(job.segment.data(), job.segment.size()), to_numpy(std::move(q), n)};
}

using EncodedTuple =
    std::tuple<nb::bytes, OutArray<int32_t>, std::vector<EntryPointTuple>,
               std::optional<OutArray<float>>>;

std::vector<EncodedTuple> encode_tensors(
    std::vector<nb::object> x_objects, std::vector<std::pair<int64_t, int64_t>> shapes,
    std::vector<int> qps, int qp_density, bool dq, double lambda_scale,
    bool hdsp_flag_present, bool row_skipping, bool param_opt,
    std::optional<std::vector<nb::object>> base_objects, int unary_len,
    int64_t eco_max_positions, bool eco_from_levels, int num_threads,
    std::optional<std::vector<int>> scan_orders, bool reconstruct) {
  const std::vector<InArray<float>> xs =
      strict_arrays<float>(x_objects, "xs", "float32");
  const std::optional<std::vector<OptionalBase>> tca_bases = strict_bases(base_objects);
  const size_t count = xs.size();
  if (shapes.size() != count || qps.size() != count ||
      (tca_bases && tca_bases->size() != count) ||
      (scan_orders && scan_orders->size() != count)) {
    throw std::invalid_argument(
        "encode_tensors: xs, shapes, qps (and tca_bases, scan_orders) need equal "
        "lengths, got " +
        std::to_string(count) + ", " + std::to_string(shapes.size()) + ", " +
        std::to_string(qps.size()) +
        (tca_bases ? ", " + std::to_string(tca_bases->size()) : std::string()) +
        (scan_orders ? ", " + std::to_string(scan_orders->size()) : std::string()));
  }
  const TensorOptions options{qp_density,        dq,        lambda_scale,
                              hdsp_flag_present, row_skipping, param_opt,
                              unary_len,         eco_max_positions, eco_from_levels};
  std::vector<nnc::TensorJob> jobs;
  std::vector<Buffer<int32_t>> q_buffers;
  std::vector<Buffer<float>> recon_buffers(count);
  jobs.reserve(count);
  q_buffers.reserve(count);
  const OptionalBase no_base;
  for (size_t i = 0; i < count; ++i) {
    const auto [height, width] = shapes[i];
    const OptionalBase& base = tca_bases ? (*tca_bases)[i] : no_base;
    jobs.push_back(make_job(xs[i], height, width, qps[i], base, options,
                            "xs[" + std::to_string(i) + "]",
                            scan_orders ? (*scan_orders)[i] : 0));
    q_buffers.push_back(new_buffer<int32_t>(size_t(height * width)));
    jobs.back().q_out = q_buffers.back().get();
    if (reconstruct) {
      recon_buffers[i] = new_buffer<float>(size_t(height * width));
      jobs.back().recon_out = recon_buffers[i].get();
    }
  }
  {
    nb::gil_scoped_release release;
    nnc::encode_tensors(jobs, num_threads);
  }
  std::vector<EncodedTuple> results;
  results.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    const size_t n = size_t(jobs[i].spec.height * jobs[i].spec.width);
    std::optional<OutArray<float>> recon;
    if (reconstruct) recon = to_numpy(std::move(recon_buffers[i]), n);
    results.emplace_back(nb::bytes(jobs[i].segment.data(), jobs[i].segment.size()),
                         to_numpy(std::move(q_buffers[i]), n),
                         entry_point_tuples(jobs[i].entry_points), std::move(recon));
  }
  return results;
}

template <class T>
void check_count(const std::vector<T>& values, size_t count, const char* name) {
  if (values.size() != count) {
    throw std::invalid_argument(std::string("decode_segments: ") + name + " has " +
                                std::to_string(values.size()) + " entries, datas has " +
                                std::to_string(count));
  }
}

using DecodedTuple = std::tuple<OutArray<int32_t>, std::optional<int>, size_t,
                                std::optional<OutArray<float>>>;

std::vector<DecodedTuple> decode_segments(
    std::vector<nb::object> data_objects,
    std::vector<std::pair<int64_t, int64_t>> shapes, std::vector<bool> has_qp,
    std::vector<bool> dq, int qp_density, std::vector<bool> hdsp_flag_present,
    std::optional<std::vector<nb::object>> base_objects,
    std::optional<std::vector<int64_t>> codebook_sizes,
    std::optional<std::vector<int64_t>> codebook_zero_offsets, int unary_len,
    int num_threads, std::optional<std::vector<int>> scan_orders,
    std::optional<std::vector<std::vector<EntryPointTuple>>> entry_points,
    std::optional<int64_t> dequantize_qp_offset) {
  const std::vector<InArray<uint8_t>> datas =
      strict_arrays<uint8_t>(data_objects, "datas", "uint8 (bytes-like)");
  const std::optional<std::vector<OptionalBase>> tca_bases = strict_bases(base_objects);
  const size_t count = datas.size();
  check_count(shapes, count, "shapes");
  check_count(has_qp, count, "has_qp");
  check_count(dq, count, "dq");
  check_count(hdsp_flag_present, count, "hdsp_flag_present");
  if (tca_bases) check_count(*tca_bases, count, "tca_bases");
  if (codebook_sizes) check_count(*codebook_sizes, count, "codebook_sizes");
  if (codebook_zero_offsets) {
    check_count(*codebook_zero_offsets, count, "codebook_zero_offsets");
  }
  if (scan_orders) check_count(*scan_orders, count, "scan_orders");
  if (entry_points) check_count(*entry_points, count, "entry_points");

  std::vector<nnc::SegmentJob> jobs(count);
  std::vector<Buffer<int32_t>> q_buffers;
  std::vector<Buffer<float>> recon_buffers(count);
  q_buffers.reserve(count);
  const OptionalBase no_base;
  for (size_t i = 0; i < count; ++i) {
    const SpecArgs args{shapes[i].first, shapes[i].second, qp_density, dq[i],
                        hdsp_flag_present[i], codebook_sizes ? (*codebook_sizes)[i] : 0,
                        codebook_zero_offsets ? (*codebook_zero_offsets)[i] : 0,
                        unary_len};
    jobs[i].spec = make_spec(args, tca_bases ? (*tca_bases)[i] : no_base,
                             "decode_segments", scan_orders ? (*scan_orders)[i] : 0);
    if (entry_points) jobs[i].entry_points = entry_points_from((*entry_points)[i]);
    jobs[i].spec.has_qp = has_qp[i];
    jobs[i].data = datas[i].data();
    jobs[i].num_bytes = datas[i].shape(0);
    nnc::check_decodable_size(jobs[i].spec, jobs[i].num_bytes);
    const size_t n = size_t(shapes[i].first * shapes[i].second);
    q_buffers.push_back(new_buffer<int32_t>(n));
    jobs[i].q_out = q_buffers.back().get();
    if (dequantize_qp_offset && has_qp[i] && jobs[i].spec.codebook_size == 0) {
      recon_buffers[i] = new_buffer<float>(n);
      jobs[i].recon_out = recon_buffers[i].get();
      jobs[i].qp_offset = *dequantize_qp_offset;
    }
  }
  {
    nb::gil_scoped_release release;
    nnc::decode_segments(jobs, num_threads);
  }
  std::vector<DecodedTuple> results;
  results.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    const size_t n = size_t(jobs[i].spec.height * jobs[i].spec.width);
    std::optional<int> qp;
    if (has_qp[i]) qp = jobs[i].result.qp;
    std::optional<OutArray<float>> recon;
    if (jobs[i].recon_ok) recon = to_numpy(std::move(recon_buffers[i]), n);
    results.emplace_back(to_numpy(std::move(q_buffers[i]), n), qp,
                         jobs[i].result.consumed_bytes, std::move(recon));
  }
  return results;
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

  m.attr("MAX_LAMBDA_SCALE") = nnc::kMaxLambdaScale;

  m.def("step_size", &nnc::step_size, "qp"_a, "qp_density"_a,
        "Step size of qp at qp_density (float32-exact).");

  m.def("quantize", &quantize, "x"_a.noconvert(), "qp"_a, "qp_density"_a, "dq"_a,
        "lambda_scale"_a = 0.0,
        "Quantise float32[n] to int32 reconstruction indices q. URQ rounds "
        "half away from zero; DQ runs the 8-state trellis (q obeys the parity "
        "of its state). lambda_scale 0 minimises squared error only (NNCodec's "
        "choice); > 0 trades bits for error (RDOQ / rate-aware trellis, "
        "lambda' = lambda_scale*ln2/6, DQ *4*0.7, in step^2 units per bit). "
        "Raises ValueError naming max|x| and qp if x/step overflows int32. "
        "Releases the GIL.");

  m.def("avx512_available", &nnc::avx512_available,
        "Whether this build has the AVX-512 kernels and the CPU can run them "
        "(whatever NNC_DISABLE_AVX512 says).");

  m.def("dq_forward_pass", &dq_forward_pass, "x"_a.noconvert(), "qp"_a, "qp_density"_a,
        "lambda_scale"_a, "start_state"_a, "avx512"_a,
        "The rate-aware DQ trellis' forward pass over float32 x with the portable "
        "(avx512=False) or the AVX-512 kernel, for checking one against the "
        "other: (8 final path costs, back-pointer rows, 3 bytes per value). "
        "start_state -1: any. Raises ValueError if the AVX-512 kernel is asked "
        "for and not available.");

  m.def("eco_init_set_costs", &eco_init_set_costs, "q"_a.noconvert(), "height"_a,
        "width"_a, nb::kw_only(), "dq"_a, "row_skipping"_a,
        "tca_base"_a.noconvert() = nb::none(), "eco_max_positions"_a = 65536,
        "avx512"_a,
        "The estimated bits (2^-15 units) of init sets 0..8 per eco-list entry "
        "behind choose_eco_init_sets, flat, from the portable or the AVX-512 "
        "step, for checking one against the other.");

  m.def("dq_trellis_kernel", &nnc::dq_trellis_kernel,
        "The forward pass the rate-aware DQ trellis runs on this CPU: 'avx512' "
        "(AVX-512 and BMI2 present, NNC_DISABLE_AVX512 unset) or 'portable'. "
        "Both choose the same levels.");

  m.def("dequantize", &dequantize, "q"_a.noconvert(), "qp"_a, "qp_density"_a,
        "Reconstruct float32(step * float32(q)). Releases the GIL.");

  m.def("encode_segment", &encode_segment, "q"_a.noconvert(), "height"_a, "width"_a,
        nb::kw_only(), "qp"_a.none(), "qp_density"_a, "dq"_a, "hdsp_flag_present"_a,
        "row_skipping"_a, "param_opt"_a, "tca_base"_a.noconvert() = nb::none(),
        "codebook_size"_a = 0, "codebook_zero_offset"_a = 0, "unary_len"_a = 11,
        "eco_init_sets"_a.noconvert() = nb::none(), "eco_max_positions"_a = 65536,
        "eco_from_levels"_a = false,
        "Code int32 q[height*width] (raster order) into one DeepCABAC segment: "
        "qp offset unless qp is None, HDSP and row-skip flags, eco list, "
        "levels, terminate bin, flush. q holds DQ reconstruction indices or "
        "codebook indices. eco_init_sets (uint8 per eco-list entry) overrides "
        "param_opt. With param_opt the init sets are estimated over the rows "
        "covering the first eco_max_positions positions (block scans: the "
        "first eco_max_positions coded positions; <= 0: all, which "
        "reproduces NNCodec's choice on large tensors too). eco_from_levels: "
        "under DQ estimate from the levels k instead of NNCodec's q (about 1% "
        "smaller, no longer NNCodec's bytes). Releases the GIL; "
        "the segment is copied once into bytes.");

  m.def("encode_segment_scan", &encode_segment_scan, "q"_a.noconvert(), "height"_a,
        "width"_a, nb::kw_only(), "qp"_a.none(), "qp_density"_a, "dq"_a,
        "hdsp_flag_present"_a, "row_skipping"_a, "param_opt"_a,
        "tca_base"_a.noconvert() = nb::none(), "codebook_size"_a = 0,
        "codebook_zero_offset"_a = 0, "unary_len"_a = 11,
        "eco_init_sets"_a.noconvert() = nb::none(), "eco_max_positions"_a = 65536,
        "eco_from_levels"_a = false, "scan_order"_a = 0, "num_threads"_a = 1,
        "encode_segment() in scan order scan_order (0 raster, 1..4 blocks of "
        "4 << scan_order): returns (segment bytes, entry points), each entry "
        "point (delta_bits, offset, dq_state) as the NDU header codes it. "
        "Under DQ, q must follow the trellis in that scan order, where a "
        "skipped row advances the DQ state by width zeros in every block "
        "(quirk Q3): when width % 4 != 0, code encode_tensors' levels with "
        "row_skipping=False, as encode_tensors does. A block scan of 2**16 "
        "values or more codes runs of block rows on up to num_threads threads; "
        "the bytes do not depend on it.");

  m.def("decode_segment", &decode_segment, "data"_a.noconvert(), "height"_a, "width"_a,
        nb::kw_only(), "has_qp"_a, "qp_density"_a, "dq"_a, "hdsp_flag_present"_a,
        "tca_base"_a.noconvert() = nb::none(), "codebook_size"_a = 0,
        "codebook_zero_offset"_a = 0, "unary_len"_a = 11, "scan_order"_a = 0,
        "entry_points"_a = std::vector<EntryPointTuple>(), "num_threads"_a = 1,
        "Decode one segment from a bytes-like object: returns (q int32[n], qp "
        "or None, consumed_bytes). With a block scan, entry_points are the "
        "NDU's (delta_bits, offset, dq_state) and the block rows decode on up "
        "to num_threads threads. Raises ValueError naming the byte offset on "
        "truncated or malformed data and on entry points the stream does not "
        "reach. Releases the GIL; data is read in place.");

  m.def("encode_tensor", &encode_tensor, "x"_a.noconvert(), "height"_a, "width"_a,
        nb::kw_only(), "qp"_a, "qp_density"_a, "dq"_a, "lambda_scale"_a,
        "hdsp_flag_present"_a, "row_skipping"_a, "param_opt"_a,
        "tca_base"_a.noconvert() = nb::none(), "unary_len"_a = 11,
        "eco_max_positions"_a = 65536, "eco_from_levels"_a = false,
        "Quantise float32 x[height*width] and code it in one call: returns "
        "(segment bytes, q int32[n]), as quantize() followed by "
        "encode_segment(). Releases the GIL; x is read in place.");

  m.def("encode_tensors", &encode_tensors, "xs"_a, "shapes"_a, "qps"_a, nb::kw_only(),
        "qp_density"_a, "dq"_a, "lambda_scale"_a, "hdsp_flag_present"_a,
        "row_skipping"_a, "param_opt"_a, "tca_bases"_a = nb::none(), "unary_len"_a = 11,
        "eco_max_positions"_a = 65536, "eco_from_levels"_a = false, "num_threads"_a = 0,
        "scan_orders"_a = nb::none(), "reconstruct"_a = false,
        "encode_tensor() for several tensors on num_threads threads (0: one "
        "per hardware thread). xs: float32 arrays; shapes: (height, width) "
        "pairs; qps: one qp per tensor; tca_bases: None or one int32 array or "
        "None per tensor; scan_orders: None (raster) or one per tensor. "
        "Returns [(segment bytes, q, entry points, x_hat or None)] in input "
        "order; x_hat = dequantize(q, qp), computed by the quantising threads, "
        "when reconstruct is true. Errors name the tensor index. Releases the "
        "GIL while coding.");

  m.def("decode_segments", &decode_segments, "datas"_a, "shapes"_a, nb::kw_only(),
        "has_qp"_a, "dq"_a, "qp_density"_a, "hdsp_flag_present"_a,
        "tca_bases"_a = nb::none(), "codebook_sizes"_a = nb::none(),
        "codebook_zero_offsets"_a = nb::none(), "unary_len"_a = 11, "num_threads"_a = 0,
        "scan_orders"_a = nb::none(), "entry_points"_a = nb::none(),
        "dequantize_qp_offset"_a = nb::none(),
        "decode_segment() for several segments on num_threads threads (0: one "
        "per hardware thread). Per-segment lists: datas (bytes-like), shapes "
        "((height, width)), has_qp, dq, hdsp_flag_present, and optionally "
        "tca_bases, codebook_sizes, codebook_zero_offsets, scan_orders, "
        "entry_points. Returns [(q, qp or None, consumed_bytes, x_hat or "
        "None)] in input order; errors name the segment index. With "
        "dequantize_qp_offset, x_hat = dequantize(q, qp + dequantize_qp_offset) "
        "for segments with a qp and no codebook, computed by the decoding "
        "threads, or None when a step or value is not finite. Releases the "
        "GIL while decoding.");

  m.def("decode_eco_init_sets", &decode_eco_init_sets, "data"_a.noconvert(),
        "height"_a, "width"_a, nb::kw_only(), "has_qp"_a, "qp_density"_a, "dq"_a,
        "hdsp_flag_present"_a, "tca_base"_a.noconvert() = nb::none(),
        "codebook_size"_a = 0, "codebook_zero_offset"_a = 0, "unary_len"_a = 11,
        "scan_order"_a = 0, "entry_points"_a = std::vector<EntryPointTuple>(),
        "Decode one segment and return the init set signalled for each "
        "eco-list entry (diagnostics and tests).");

  m.def("choose_eco_init_sets", &choose_eco_init_sets, "q"_a.noconvert(), "height"_a,
        "width"_a, nb::kw_only(), "dq"_a, "row_skipping"_a,
        "tca_base"_a.noconvert() = nb::none(), "codebook_size"_a = 0,
        "codebook_zero_offset"_a = 0, "unary_len"_a = 11, "eco_max_positions"_a = 65536,
        "eco_from_levels"_a = false, "num_threads"_a = 1, "scan_order"_a = 0,
        "Init set per eco-list entry that param_opt=True would signal for q "
        "in scan_order (num_threads > 1: estimated on two threads from 2^15 "
        "positions, the same choice).");

  m.def("tables", &tables,
        "The constant tables compiled into the core (rLPS, adaptation curve, "
        "init sets, DQ transitions), for checking against nnc-tables.json.");
}
