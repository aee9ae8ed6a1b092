// libFuzzer target for the safetensors reader: any input must either parse into a header whose tensors all
// lie inside the input, or throw lowbit::Error. A crash, a sanitizer report, another exception type or a
// header that breaks its own invariants is a bug.
//
//     cmake -S . -B /tmp/lowbit-fuzz -DLOWBIT_FUZZ=ON -DLOWBIT_SANITIZE=ON -DLOWBIT_CUDA=OFF \
//           -DCMAKE_CXX_COMPILER=clang++ && cmake --build /tmp/lowbit-fuzz --target safetensors_fuzz
//     /tmp/lowbit-fuzz/bin/safetensors_fuzz -dict=tests/fuzz/safetensors.dict -max_total_time=60 \
//           tests/fuzz/corpus/safetensors
#include <cstddef>
#include <cstdint>
#include <memory>

#include "lowbit/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  lowbit::io::SafetensorsHeader header;
  try {
    header = lowbit::io::parse_safetensors(file, "fuzz.safetensors");
  } catch (const lowbit::Error&) {
    return 0;  // rejected, as most inputs should be
  }
  if (header.data_offset != 8 + header.header_bytes || header.data_offset > size) __builtin_trap();
  // The zero-copy path of SafetensorsFile::tensor(): a view of the data section per tensor.
  auto storage = std::make_shared<lowbit::Storage>(const_cast<std::byte*>(file.data()) + header.data_offset,
                                                   size - header.data_offset, lowbit::Device::cpu(), nullptr);
  std::uint64_t expected_begin = 0;
  unsigned sum = 0;
  for (const lowbit::io::TensorInfo& t : header.tensors) {
    // Sorted, contiguous, inside the file, and sized as declared.
    if (t.begin != expected_begin || t.end < t.begin || t.end > size - header.data_offset) __builtin_trap();
    if (lowbit::storage_bytes(t.dtype, t.shape.numel()) != t.nbytes()) __builtin_trap();
    expected_begin = t.end;
    const lowbit::Tensor view =
        lowbit::Tensor::from_storage(storage, static_cast<std::size_t>(t.begin), t.shape, t.dtype);
    const auto* bytes = static_cast<const unsigned char*>(view.raw_data());
    for (std::size_t i = 0; i < view.nbytes(); ++i) sum += bytes[i];  // ASan checks every byte is in the input
  }
  if (expected_begin != size - header.data_offset) __builtin_trap();
  volatile unsigned sink = sum;
  (void)sink;
  return 0;
}
