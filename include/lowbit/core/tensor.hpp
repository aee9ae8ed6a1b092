// Tensor: a typed, strided view of up to four dimensions into shared storage on the host or a CUDA device.
//
// Views (slice, select, transpose, reshape of contiguous data) share storage and never copy; contiguous(),
// clone() and to() copy. Strides count elements. Host storage is 64-byte aligned; storage may also be
// borrowed memory or a memory-mapped file (safetensors tensors are zero-copy views of the file).
//
// Packed sub-byte dtypes (U4, I4, U2, U1; see dtype.hpp) keep element strides too, but every view must
// start on a whole byte and the last dimension must stay contiguous; views that break this throw
// Unsupported.
//
// Device tensors are created and copied by lowbit::cuda (include/lowbit/cuda/device.hpp); core code only
// carries them, and element access or conversion of a device tensor throws Unsupported.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "lowbit/core/dtype.hpp"
#include "lowbit/core/error.hpp"
#include "lowbit/core/half.hpp"

namespace lowbit {

inline constexpr int kMaxRank = 4;
inline constexpr std::size_t kHostAlignment = 64;

enum class DeviceKind : std::uint8_t { CPU, CUDA };

struct Device {
  DeviceKind kind = DeviceKind::CPU;
  int index = 0;  // CUDA ordinal; 0 for the host

  static constexpr Device cpu() noexcept { return {}; }
  static constexpr Device cuda(int ordinal = 0) noexcept { return {DeviceKind::CUDA, ordinal}; }
  constexpr bool is_cpu() const noexcept { return kind == DeviceKind::CPU; }
  constexpr bool is_cuda() const noexcept { return kind == DeviceKind::CUDA; }
  friend constexpr bool operator==(const Device&, const Device&) = default;
};
std::string to_string(Device device);  // "cpu", "cuda:1"

// Dimensions (or strides) of rank 0..4. Sizes are int64 and never negative.
class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<std::int64_t> dims);
  explicit Shape(std::span<const std::int64_t> dims);

  int rank() const noexcept { return rank_; }
  std::int64_t operator[](int i) const noexcept { return dims_[static_cast<std::size_t>(i)]; }
  std::int64_t& operator[](int i) noexcept { return dims_[static_cast<std::size_t>(i)]; }
  const std::int64_t* begin() const noexcept { return dims_.data(); }
  const std::int64_t* end() const noexcept { return dims_.data() + rank_; }
  // Product of the sizes; throws Numerical if it overflows int64.
  std::int64_t numel() const;
  std::string to_string() const;  // "[4096, 11008]"
  friend bool operator==(const Shape& a, const Shape& b) noexcept;

 private:
  std::array<std::int64_t, kMaxRank> dims_{};
  int rank_ = 0;
};

// Bytes needed for `numel` elements stored contiguously (packed types round up to a whole byte).
std::size_t storage_bytes(DType dtype, std::int64_t numel);

// A block of memory and what keeps it alive.
class Storage {
 public:
  Storage(void* data, std::size_t nbytes, Device device, std::shared_ptr<const void> owner)
      : data_(data), nbytes_(nbytes), device_(device), owner_(std::move(owner)) {}

  // 64-byte aligned host memory; throws OutOfMemory naming the size. Contents are uninitialised.
  static std::shared_ptr<Storage> allocate_host(std::size_t nbytes);

  std::byte* data() const noexcept { return static_cast<std::byte*>(data_); }
  std::size_t nbytes() const noexcept { return nbytes_; }
  Device device() const noexcept { return device_; }

 private:
  void* data_;
  std::size_t nbytes_;
  Device device_;
  std::shared_ptr<const void> owner_;
};

class Tensor {
 public:
  Tensor() = default;  // undefined: defined() is false

  // Uninitialised / zero-filled host tensors.
  static Tensor empty(const Shape& shape, DType dtype);
  static Tensor zeros(const Shape& shape, DType dtype);
  // A contiguous view of `shape` at `byte_offset` into `storage` (which may be on a device). Throws
  // InvalidArgument if it does not fit inside the storage.
  static Tensor from_storage(std::shared_ptr<Storage> storage, std::size_t byte_offset, const Shape& shape,
                             DType dtype);
  // A contiguous view of memory the caller owns; `keep_alive` (optional) is held as long as any view is.
  static Tensor wrap(void* data, const Shape& shape, DType dtype, std::shared_ptr<const void> keep_alive = {});
  // Host copy of `values` in a tensor of `shape` (numel must match).
  template <typename T>
  static Tensor from_values(std::span<const T> values, const Shape& shape);
  template <typename T>
  static Tensor from_values(std::initializer_list<T> values, const Shape& shape) {
    return from_values(std::span<const T>(values.begin(), values.size()), shape);
  }

  bool defined() const noexcept { return storage_ != nullptr; }
  DType dtype() const noexcept { return dtype_; }
  const Shape& shape() const noexcept { return shape_; }
  const Shape& strides() const noexcept { return strides_; }
  int rank() const noexcept { return shape_.rank(); }
  std::int64_t size(int dim) const;  // dim may be negative, counting from the end
  std::int64_t numel() const { return shape_.numel(); }
  // Bytes the elements occupy when contiguous.
  std::size_t nbytes() const { return storage_bytes(dtype_, numel()); }
  Device device() const noexcept { return storage_ ? storage_->device() : Device::cpu(); }
  bool is_contiguous() const noexcept;
  const std::shared_ptr<Storage>& storage() const noexcept { return storage_; }
  std::size_t byte_offset() const noexcept { return byte_offset_; }

  // Address of element 0. For typed access prefer data<T>(), which checks the dtype and the device.
  void* raw_data() const noexcept { return storage_ ? storage_->data() + byte_offset_ : nullptr; }
  template <typename T>
  T* data() const;

  // Element access on the host for any byte-addressable or packed dtype, converted through double
  // (exact for every dtype but the 64-bit integers above 2^53). Index count must equal rank.
  double get(std::initializer_list<std::int64_t> index) const;
  void set(std::initializer_list<std::int64_t> index, double value);

  // Views.
  Tensor slice(int dim, std::int64_t start, std::int64_t end) const;  // [start, end) along dim
  Tensor select(int dim, std::int64_t index) const;                   // drops dim
  Tensor transpose(int dim0, int dim1) const;
  Tensor reshape(const Shape& shape) const;  // contiguous tensors only; throws ShapeMismatch otherwise

  // Copies.
  Tensor contiguous() const;  // *this when already contiguous
  Tensor clone() const;       // always a new contiguous host tensor
  // Converts every element: floats round to nearest even; float -> integer rounds to nearest even and
  // throws Numerical naming the element if it is NaN/Inf or out of range; integer -> integer is range
  // checked. fp8 types are carried, not converted (Unsupported).
  Tensor to(DType dtype) const;
  // Element-wise copy of `src` (same shape and dtype, any strides) into this tensor's memory.
  void copy_from(const Tensor& src);

  std::string describe() const;  // "bf16[4096, 11008] cpu"

 private:
  Tensor(std::shared_ptr<Storage> storage, std::size_t byte_offset, const Shape& shape, const Shape& strides,
         DType dtype);
  std::int64_t element_offset(std::initializer_list<std::int64_t> index) const;
  void require_host(const char* operation) const;

  std::shared_ptr<Storage> storage_;
  std::size_t byte_offset_ = 0;
  Shape shape_;
  Shape strides_;
  DType dtype_ = DType::F32;
};

// Row-major strides of a contiguous tensor of `shape`.
Shape contiguous_strides(const Shape& shape);

template <typename T>
T* Tensor::data() const {
  LOWBIT_CHECK(dtype_of<T>::value == dtype_, ErrorCode::DTypeMismatch,
               "Tensor::data: tensor is {}, requested {}", describe(), dtype_name(dtype_of<T>::value));
  require_host("Tensor::data");
  return static_cast<T*>(raw_data());
}

template <typename T>
Tensor Tensor::from_values(std::span<const T> values, const Shape& shape) {
  LOWBIT_CHECK(static_cast<std::int64_t>(values.size()) == shape.numel(), ErrorCode::ShapeMismatch,
               "Tensor::from_values: {} values for shape {} ({} elements)", values.size(), shape.to_string(),
               shape.numel());
  Tensor t = empty(shape, dtype_of<T>::value);
  T* out = t.data<T>();
  for (std::size_t i = 0; i < values.size(); ++i) out[i] = values[i];
  return t;
}

}  // namespace lowbit
