#include "lowbit/core/tensor.hpp"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "lowbit/core/parallel.hpp"

namespace lowbit {

std::string to_string(Device device) {
  return device.is_cpu() ? std::string("cpu") : fmt::format("cuda:{}", device.index);
}

// ---- Shape ------------------------------------------------------------------------------------------------

Shape::Shape(std::initializer_list<std::int64_t> dims) : Shape(std::span<const std::int64_t>(dims.begin(), dims.size())) {}

Shape::Shape(std::span<const std::int64_t> dims) {
  LOWBIT_CHECK(dims.size() <= kMaxRank, ErrorCode::Unsupported, "Shape: rank {} ({}) exceeds the maximum of {}",
               dims.size(), fmt::format("[{}]", fmt::join(dims, ", ")), kMaxRank);
  for (std::size_t i = 0; i < dims.size(); ++i) {
    LOWBIT_CHECK(dims[i] >= 0, ErrorCode::InvalidArgument, "Shape: dimension {} of [{}] is negative", i,
                 fmt::join(dims, ", "));
    dims_[i] = dims[i];
  }
  rank_ = static_cast<int>(dims.size());
}

std::int64_t Shape::numel() const {
  std::int64_t n = 1;
  for (int i = 0; i < rank_; ++i) {
    LOWBIT_CHECK(!__builtin_mul_overflow(n, dims_[static_cast<std::size_t>(i)], &n), ErrorCode::Numerical,
                 "Shape: element count of {} overflows int64", to_string());
  }
  return n;
}

std::string Shape::to_string() const { return fmt::format("[{}]", fmt::join(begin(), end(), ", ")); }

bool operator==(const Shape& a, const Shape& b) noexcept {
  if (a.rank_ != b.rank_) return false;
  for (int i = 0; i < a.rank_; ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides = shape;
  std::int64_t s = 1;
  bool overflow = false;
  for (int i = shape.rank() - 1; i >= 0; --i) {
    strides[i] = overflow ? 0 : s;
    overflow = overflow || __builtin_mul_overflow(s, std::max<std::int64_t>(shape[i], 1), &s);
  }
  // Only an empty tensor (a zero dimension) may have sizes whose product overflows; its strides are moot.
  LOWBIT_CHECK(!overflow || shape.numel() == 0, ErrorCode::Numerical, "Shape: strides of {} overflow int64",
               shape.to_string());
  return strides;
}

std::size_t storage_bytes(DType dtype, std::int64_t numel) {
  LOWBIT_CHECK(numel >= 0, ErrorCode::InvalidArgument, "storage_bytes: negative element count {}", numel);
  const auto n = static_cast<std::uint64_t>(numel);
  if (is_packed(dtype)) {
    const auto per_byte = static_cast<std::uint64_t>(elements_per_byte(dtype));
    return static_cast<std::size_t>((n + per_byte - 1) / per_byte);
  }
  std::uint64_t bytes = 0;
  LOWBIT_CHECK(!__builtin_mul_overflow(n, dtype_size(dtype), &bytes), ErrorCode::Numerical,
               "storage_bytes: {} elements of {} overflow", numel, dtype_name(dtype));
  return static_cast<std::size_t>(bytes);
}

// ---- Storage ----------------------------------------------------------------------------------------------

constexpr std::size_t kHugePage = std::size_t{2} << 20;
constexpr std::size_t kHugePageThreshold = std::size_t{4} << 20;

std::shared_ptr<Storage> Storage::allocate_host(std::size_t nbytes) {
  // Large buffers sit on 2 MiB boundaries and ask for transparent huge pages: a fresh 32 MiB weight then costs
  // 16 page faults instead of 8192, which otherwise dominate writing it (the kernel zeroes each 4 KiB page on
  // first touch). Smaller ones keep the plain alignment.
  const bool huge = nbytes >= kHugePageThreshold;
  const std::size_t align = huge ? kHugePage : kHostAlignment;
  LOWBIT_CHECK(nbytes <= std::numeric_limits<std::size_t>::max() - align, ErrorCode::OutOfMemory,
               "allocate_host: cannot allocate {} bytes", nbytes);
  const std::size_t rounded = (std::max<std::size_t>(nbytes, 1) + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded);
  LOWBIT_CHECK(p != nullptr, ErrorCode::OutOfMemory, "allocate_host: cannot allocate {} bytes", nbytes);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (huge) ::madvise(p, rounded, MADV_HUGEPAGE);  // advice only: no huge pages (THP "never") is fine
#endif
  std::shared_ptr<const void> owner(p, [](const void* q) { std::free(const_cast<void*>(q)); });
  return std::make_shared<Storage>(p, nbytes, Device::cpu(), std::move(owner));
}

// ---- Tensor: construction ---------------------------------------------------------------------------------

Tensor::Tensor(std::shared_ptr<Storage> storage, std::size_t byte_offset, const Shape& shape, const Shape& strides,
               DType dtype)
    : storage_(std::move(storage)), byte_offset_(byte_offset), shape_(shape), strides_(strides), dtype_(dtype) {}

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  return Tensor(Storage::allocate_host(storage_bytes(dtype, shape.numel())), 0, shape, contiguous_strides(shape),
                dtype);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  std::memset(t.raw_data(), 0, t.nbytes());
  return t;
}

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, std::size_t byte_offset, const Shape& shape,
                            DType dtype) {
  LOWBIT_CHECK(storage != nullptr, ErrorCode::InvalidArgument, "Tensor::from_storage: null storage");
  const std::size_t bytes = storage_bytes(dtype, shape.numel());
  LOWBIT_CHECK(byte_offset <= storage->nbytes() && bytes <= storage->nbytes() - byte_offset,
               ErrorCode::InvalidArgument,
               "Tensor::from_storage: {}{} needs {} bytes at offset {}, but the storage holds {} bytes",
               dtype_name(dtype), shape.to_string(), bytes, byte_offset, storage->nbytes());
  return Tensor(std::move(storage), byte_offset, shape, contiguous_strides(shape), dtype);
}

Tensor Tensor::wrap(void* data, const Shape& shape, DType dtype, std::shared_ptr<const void> keep_alive) {
  LOWBIT_CHECK(data != nullptr || shape.numel() == 0, ErrorCode::InvalidArgument, "Tensor::wrap: null data for {}{}",
               dtype_name(dtype), shape.to_string());
  const std::size_t bytes = storage_bytes(dtype, shape.numel());
  return Tensor(std::make_shared<Storage>(data, bytes, Device::cpu(), std::move(keep_alive)), 0, shape,
                contiguous_strides(shape), dtype);
}

// ---- Tensor: queries --------------------------------------------------------------------------------------

std::int64_t Tensor::size(int dim) const {
  const int r = rank();
  LOWBIT_CHECK(dim >= -r && dim < r, ErrorCode::InvalidArgument, "Tensor::size: dim {} is out of range for {}", dim,
               describe());
  return shape_[dim < 0 ? dim + r : dim];
}

bool Tensor::is_contiguous() const noexcept {
  for (int i = 0; i < rank(); ++i) {
    if (shape_[i] == 0) return true;  // nothing to lay out
  }
  std::int64_t expected = 1;
  for (int i = rank() - 1; i >= 0; --i) {
    if (shape_[i] != 1 && strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined tensor";
  return fmt::format("{}{} {}", dtype_name(dtype_), shape_.to_string(), to_string(device()));
}

void Tensor::require_host(const char* operation) const {
  LOWBIT_CHECK(defined(), ErrorCode::InvalidArgument, "{}: the tensor is undefined", operation);
  LOWBIT_CHECK(device().is_cpu(), ErrorCode::Unsupported,
               "{}: tensor {} is on a device; copy it to the host first (lowbit::cuda::to_host)", operation,
               describe());
}

// ---- element access -----------------------------------------------------------------------------------------

namespace {

// Byte-level access to element `e` (an element offset from the tensor's first byte) of any dtype.
struct ElementRef {
  std::byte* base;
  DType dtype;

  long double load(std::int64_t e) const {
    if (is_packed(dtype)) {
      const int bits = dtype_bits(dtype);
      const int per_byte = 8 / bits;
      const auto byte = static_cast<unsigned>(base[e / per_byte]);
      const unsigned code = (byte >> (bits * static_cast<int>(e % per_byte))) & ((1u << bits) - 1u);
      if (dtype == DType::I4) return static_cast<long double>(code >= 8 ? static_cast<int>(code) - 16 : static_cast<int>(code));
      return static_cast<long double>(code);
    }
    const std::byte* p = base + e * static_cast<std::int64_t>(dtype_size(dtype));
    auto read = [p]<typename T>(T) {
      T v;
      std::memcpy(&v, p, sizeof(T));
      return v;
    };
    switch (dtype) {
      case DType::F32: return read(float{});
      case DType::F64: return read(double{});
      case DType::F16: return f16_bits_to_f32(read(std::uint16_t{}));
      case DType::BF16: return bf16_bits_to_f32(read(std::uint16_t{}));
      case DType::I8: return read(std::int8_t{});
      case DType::U8: return read(std::uint8_t{});
      case DType::Bool: return read(std::uint8_t{}) != 0 ? 1.0L : 0.0L;
      case DType::I16: return read(std::int16_t{});
      case DType::U16: return read(std::uint16_t{});
      case DType::I32: return read(std::int32_t{});
      case DType::U32: return read(std::uint32_t{});
      case DType::I64: return static_cast<long double>(read(std::int64_t{}));
      case DType::U64: return static_cast<long double>(read(std::uint64_t{}));
      default: break;
    }
    LOWBIT_THROW(ErrorCode::Unsupported, "tensor: elements of {} cannot be converted (fp8 is carried, not converted)",
                 dtype_name(dtype));
  }

  // Stores `v` converted to dtype; `e` names the element in error messages.
  void store(std::int64_t e, long double v) const {
    if (is_floating(dtype)) {
      std::byte* p = base + e * static_cast<std::int64_t>(dtype_size(dtype));
      switch (dtype) {
        case DType::F32: { const auto f = static_cast<float>(v); std::memcpy(p, &f, 4); return; }
        case DType::F64: { const auto d = static_cast<double>(v); std::memcpy(p, &d, 8); return; }
        case DType::F16: { const auto h = f32_to_f16_bits(round_to_odd_float(v)); std::memcpy(p, &h, 2); return; }
        case DType::BF16: { const auto h = f32_to_bf16_bits(round_to_odd_float(v)); std::memcpy(p, &h, 2); return; }
        default:
          LOWBIT_THROW(ErrorCode::Unsupported, "tensor: cannot convert to {} (fp8 is carried, not converted)",
                       dtype_name(dtype));
      }
    }
    if (dtype == DType::Bool) {
      LOWBIT_CHECK(!std::isnan(v), ErrorCode::Numerical, "tensor: element {} is NaN; cannot convert to bool", e);
      base[e] = static_cast<std::byte>(v != 0 ? 1 : 0);
      return;
    }
    LOWBIT_CHECK(std::isfinite(v), ErrorCode::Numerical, "tensor: element {} is {}; cannot convert to {}", e,
                 static_cast<double>(v), dtype_name(dtype));
    const long double r = std::nearbyint(v);  // default rounding mode: nearest, ties to even
    const auto [lo, hi] = integer_range();
    LOWBIT_CHECK(r >= lo && r <= hi, ErrorCode::Numerical, "tensor: element {} = {} is outside the range of {} [{}, {}]",
                 e, static_cast<double>(v), dtype_name(dtype), static_cast<long long>(lo),
                 static_cast<unsigned long long>(hi));
    if (is_packed(dtype)) {
      const int bits = dtype_bits(dtype);
      const int per_byte = 8 / bits;
      const unsigned mask = (1u << bits) - 1u;
      const unsigned code = static_cast<unsigned>(static_cast<int>(r)) & mask;
      const int shift = bits * static_cast<int>(e % per_byte);
      auto& byte = base[e / per_byte];
      byte = static_cast<std::byte>((static_cast<unsigned>(byte) & ~(mask << shift)) | (code << shift));
      return;
    }
    std::byte* p = base + e * static_cast<std::int64_t>(dtype_size(dtype));
    auto write = [p]<typename T>(T value) { std::memcpy(p, &value, sizeof(T)); };
    switch (dtype) {
      case DType::I8: return write(static_cast<std::int8_t>(r));
      case DType::U8: return write(static_cast<std::uint8_t>(r));
      case DType::I16: return write(static_cast<std::int16_t>(r));
      case DType::U16: return write(static_cast<std::uint16_t>(r));
      case DType::I32: return write(static_cast<std::int32_t>(r));
      case DType::U32: return write(static_cast<std::uint32_t>(r));
      case DType::I64: return write(static_cast<std::int64_t>(r));
      case DType::U64: return write(static_cast<std::uint64_t>(r));
      default: break;
    }
  }

  std::pair<long double, long double> integer_range() const {
    switch (dtype) {
      case DType::I8: return {-128.0L, 127.0L};
      case DType::U8: return {0.0L, 255.0L};
      case DType::I16: return {-32768.0L, 32767.0L};
      case DType::U16: return {0.0L, 65535.0L};
      case DType::I32: return {-2147483648.0L, 2147483647.0L};
      case DType::U32: return {0.0L, 4294967295.0L};
      case DType::I64: return {-9223372036854775808.0L, 9223372036854775807.0L};
      case DType::U64: return {0.0L, 18446744073709551615.0L};
      case DType::U4: return {0.0L, 15.0L};
      case DType::I4: return {-8.0L, 7.0L};
      case DType::U2: return {0.0L, 3.0L};
      case DType::U1: return {0.0L, 1.0L};
      default: return {0.0L, 0.0L};
    }
  }

  // Rounds to float with "round to odd", so that a second rounding to 16 bits is correctly rounded:
  // float keeps 13+ more mantissa bits than fp16/bf16, enough for the sticky bit to decide ties.
  static float round_to_odd_float(long double v) {
    float f = static_cast<float>(v);
    if (std::isnan(v) || std::isinf(v) || static_cast<long double>(f) == v) return f;
    if (std::fabs(static_cast<long double>(f)) > std::fabs(v)) f = std::nextafter(f, 0.0f);  // truncate
    return bits_float(float_bits(f) | 1u);
  }
};

// Element offsets (in elements, from the first element) of every element of `t` in row-major order.
template <typename Fn>
void for_each_offset(const Shape& shape, const Shape& strides, Fn&& fn) {
  const int r = shape.rank();
  std::int64_t index[kMaxRank] = {0, 0, 0, 0};
  const std::int64_t n = shape.numel();
  std::int64_t offset = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    fn(i, offset);
    for (int d = r - 1; d >= 0; --d) {
      if (++index[d] < shape[d]) {
        offset += strides[d];
        break;
      }
      offset -= strides[d] * (shape[d] - 1);
      index[d] = 0;
    }
  }
}

}  // namespace

std::int64_t Tensor::element_offset(std::initializer_list<std::int64_t> index) const {
  LOWBIT_CHECK(static_cast<int>(index.size()) == rank(), ErrorCode::InvalidArgument,
               "Tensor: {} indices for {}", index.size(), describe());
  std::int64_t offset = 0;
  int d = 0;
  for (const std::int64_t i : index) {
    LOWBIT_CHECK(i >= 0 && i < shape_[d], ErrorCode::InvalidArgument, "Tensor: index {} out of range [0, {}) in dim {} of {}",
                 i, shape_[d], d, describe());
    offset += i * strides_[d];
    ++d;
  }
  return offset;
}

double Tensor::get(std::initializer_list<std::int64_t> index) const {
  require_host("Tensor::get");
  return static_cast<double>(ElementRef{static_cast<std::byte*>(raw_data()), dtype_}.load(element_offset(index)));
}

void Tensor::set(std::initializer_list<std::int64_t> index, double value) {
  require_host("Tensor::set");
  ElementRef{static_cast<std::byte*>(raw_data()), dtype_}.store(element_offset(index), value);
}

// ---- views -----------------------------------------------------------------------------------------------

namespace {
int normalize_dim(int dim, int rank, const char* operation, const std::string& what) {
  LOWBIT_CHECK(dim >= -rank && dim < rank, ErrorCode::InvalidArgument, "{}: dim {} is out of range for {}", operation,
               dim, what);
  return dim < 0 ? dim + rank : dim;
}
}  // namespace

Tensor Tensor::slice(int dim, std::int64_t start, std::int64_t end) const {
  LOWBIT_CHECK(defined(), ErrorCode::InvalidArgument, "Tensor::slice: the tensor is undefined");
  const int d = normalize_dim(dim, rank(), "Tensor::slice", describe());
  LOWBIT_CHECK(start >= 0 && start <= end && end <= shape_[d], ErrorCode::InvalidArgument,
               "Tensor::slice: [{}, {}) is not inside [0, {}] of dim {} of {}", start, end, shape_[d], d, describe());
  const std::int64_t elements = start * strides_[d];
  const int per_byte = elements_per_byte(dtype_);
  LOWBIT_CHECK(elements % per_byte == 0, ErrorCode::Unsupported,
               "Tensor::slice: [{}, {}) of dim {} of {} starts inside a byte ({} elements per byte)", start, end, d,
               describe(), per_byte);
  Shape shape = shape_;
  shape[d] = end - start;
  const std::size_t offset =
      byte_offset_ + static_cast<std::size_t>(elements / per_byte) * (is_packed(dtype_) ? 1 : dtype_size(dtype_));
  return Tensor(storage_, offset, shape, strides_, dtype_);
}

Tensor Tensor::select(int dim, std::int64_t index) const {
  LOWBIT_CHECK(defined(), ErrorCode::InvalidArgument, "Tensor::select: the tensor is undefined");
  const int d = normalize_dim(dim, rank(), "Tensor::select", describe());
  LOWBIT_CHECK(index >= 0 && index < shape_[d], ErrorCode::InvalidArgument,
               "Tensor::select: index {} is out of range [0, {}) in dim {} of {}", index, shape_[d], d, describe());
  const Tensor one = slice(d, index, index + 1);
  std::int64_t dims[kMaxRank];
  std::int64_t strides[kMaxRank];
  int r = 0;
  for (int i = 0; i < rank(); ++i) {
    if (i == d) continue;
    dims[r] = shape_[i];
    strides[r] = strides_[i];
    ++r;
  }
  LOWBIT_CHECK(!is_packed(dtype_) || r == 0 || strides[r - 1] == 1 || dims[r - 1] <= 1, ErrorCode::Unsupported,
               "Tensor::select: dim {} of {} would leave a packed tensor whose last dimension is strided; unpack it with "
               "to(u8) first", d, describe());
  return Tensor(one.storage_, one.byte_offset_, Shape(std::span<const std::int64_t>(dims, static_cast<std::size_t>(r))),
                Shape(std::span<const std::int64_t>(strides, static_cast<std::size_t>(r))), dtype_);
}

Tensor Tensor::transpose(int dim0, int dim1) const {
  LOWBIT_CHECK(defined(), ErrorCode::InvalidArgument, "Tensor::transpose: the tensor is undefined");
  const int a = normalize_dim(dim0, rank(), "Tensor::transpose", describe());
  const int b = normalize_dim(dim1, rank(), "Tensor::transpose", describe());
  LOWBIT_CHECK(!is_packed(dtype_) || a == b, ErrorCode::Unsupported,
               "Tensor::transpose: {} is packed ({} elements per byte); unpack it with to(u8) first", describe(),
               elements_per_byte(dtype_));
  Shape shape = shape_;
  Shape strides = strides_;
  std::swap(shape[a], shape[b]);
  std::swap(strides[a], strides[b]);
  return Tensor(storage_, byte_offset_, shape, strides, dtype_);
}

Tensor Tensor::reshape(const Shape& shape) const {
  LOWBIT_CHECK(defined(), ErrorCode::InvalidArgument, "Tensor::reshape: the tensor is undefined");
  LOWBIT_CHECK(shape.numel() == numel(), ErrorCode::ShapeMismatch, "Tensor::reshape: {} has {} elements, {} has {}",
               describe(), numel(), shape.to_string(), shape.numel());
  LOWBIT_CHECK(is_contiguous(), ErrorCode::ShapeMismatch,
               "Tensor::reshape: {} is not contiguous (strides {}); call contiguous() first", describe(),
               strides_.to_string());
  return Tensor(storage_, byte_offset_, shape, contiguous_strides(shape), dtype_);
}

// ---- copies ----------------------------------------------------------------------------------------------

namespace {

// Copies (and converts) every element of src into dst, both host tensors of the same shape.
void copy_elements(const Tensor& src, const Tensor& dst) {
  const std::int64_t n = src.numel();
  if (n == 0) return;
  const ElementRef in{static_cast<std::byte*>(src.raw_data()), src.dtype()};
  const ElementRef out{static_cast<std::byte*>(dst.raw_data()), dst.dtype()};
  const bool same = src.dtype() == dst.dtype();
  const bool flat = src.is_contiguous() && dst.is_contiguous();
  if (same && flat) {
    std::memcpy(dst.raw_data(), src.raw_data(), src.nbytes());
    const std::int64_t used_bits = (n * dtype_bits(src.dtype())) % 8;
    if (used_bits != 0) {  // a packed tail: clear the bits past the last element, as to() leaves them
      auto& last = static_cast<std::byte*>(dst.raw_data())[dst.nbytes() - 1];
      last &= static_cast<std::byte>((1u << used_bits) - 1u);
    }
    return;
  }
  // Fast paths for the conversions models use all the time.
  if (flat && src.dtype() == DType::F32 && (dst.dtype() == DType::F16 || dst.dtype() == DType::BF16)) {
    const float* s = static_cast<const float*>(src.raw_data());
    auto* d = static_cast<std::uint16_t*>(dst.raw_data());
    const bool half = dst.dtype() == DType::F16;
    parallel_for(n, 1 << 16, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t i = b; i < e; ++i) d[i] = half ? f32_to_f16_bits(s[i]) : f32_to_bf16_bits(s[i]);
    });
    return;
  }
  if (flat && dst.dtype() == DType::F32 && (src.dtype() == DType::F16 || src.dtype() == DType::BF16)) {
    const auto* s = static_cast<const std::uint16_t*>(src.raw_data());
    float* d = static_cast<float*>(dst.raw_data());
    const bool half = src.dtype() == DType::F16;
    parallel_for(n, 1 << 16, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t i = b; i < e; ++i) d[i] = half ? f16_bits_to_f32(s[i]) : bf16_bits_to_f32(s[i]);
    });
    return;
  }
  if (same && !is_packed(src.dtype()) && src.rank() > 0 && src.strides()[src.rank() - 1] == 1 &&
      dst.strides()[dst.rank() - 1] == 1) {
    // Row by row memcpy over the outer dimensions.
    const std::int64_t inner = src.shape()[src.rank() - 1];
    const std::size_t row_bytes = static_cast<std::size_t>(inner) * dtype_size(src.dtype());
    Shape outer_shape = src.shape();
    outer_shape[src.rank() - 1] = 1;
    const std::size_t esize = dtype_size(src.dtype());
    std::vector<std::int64_t> src_offsets;
    for_each_offset(outer_shape, src.strides(), [&](std::int64_t, std::int64_t o) { src_offsets.push_back(o); });
    std::size_t row = 0;
    for_each_offset(outer_shape, dst.strides(), [&](std::int64_t, std::int64_t o) {
      std::memcpy(out.base + o * static_cast<std::int64_t>(esize), in.base + src_offsets[row++] * static_cast<std::int64_t>(esize),
                  row_bytes);
    });
    return;
  }
  std::vector<std::int64_t> src_offsets(static_cast<std::size_t>(n));
  for_each_offset(src.shape(), src.strides(), [&](std::int64_t i, std::int64_t o) { src_offsets[static_cast<std::size_t>(i)] = o; });
  if (same && !is_packed(src.dtype())) {
    // Same dtype: move the bytes, so that fp8 and signalling NaNs survive unchanged.
    const auto esize = static_cast<std::int64_t>(dtype_size(src.dtype()));
    for_each_offset(dst.shape(), dst.strides(), [&](std::int64_t i, std::int64_t o) {
      std::memcpy(out.base + o * esize, in.base + src_offsets[static_cast<std::size_t>(i)] * esize,
                  static_cast<std::size_t>(esize));
    });
    return;
  }
  for_each_offset(dst.shape(), dst.strides(), [&](std::int64_t i, std::int64_t o) {
    const std::int64_t so = src_offsets[static_cast<std::size_t>(i)];
    try {
      out.store(o, in.load(so));
    } catch (const Error& e) {
      // Name the element by its row-major index in the source, which the caller can find.
      throw Error(e.code(), fmt::format("converting {} to {}: element {}: {}", src.describe(),
                                        dtype_name(dst.dtype()), i, e.what()));
    }
  });
}

}  // namespace

void Tensor::copy_from(const Tensor& src) {
  require_host("Tensor::copy_from");
  src.require_host("Tensor::copy_from");
  LOWBIT_CHECK(src.shape() == shape_, ErrorCode::ShapeMismatch, "Tensor::copy_from: source {} into {}", src.describe(),
               describe());
  LOWBIT_CHECK(src.dtype() == dtype_, ErrorCode::DTypeMismatch, "Tensor::copy_from: source {} into {}; use to() to convert",
               src.describe(), describe());
  copy_elements(src, *this);
}

Tensor Tensor::contiguous() const {
  if (defined() && is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  require_host("Tensor::clone");
  Tensor out = empty(shape_, dtype_);
  if (is_packed(dtype_)) std::memset(out.raw_data(), 0, out.nbytes());
  copy_elements(*this, out);
  return out;
}

Tensor Tensor::to(DType dtype) const {
  require_host("Tensor::to");
  if (dtype == dtype_) return contiguous();
  Tensor out = empty(shape_, dtype);
  if (is_packed(dtype)) std::memset(out.raw_data(), 0, out.nbytes());
  copy_elements(*this, out);
  return out;
}

}  // namespace lowbit
