// QuantizedTensor: what every method turns a dense weight into.
//
// A method tag (the registry name), the parameters that say how to read the components, the shape and
// dtype of the original weight, and named component tensors (codes, scales, zeros, absmax, ...). Each
// method's header documents its component names, dtypes and shapes; docs/formats.md#lowbit gives the
// on-disk form, a safetensors file holding "<weight name>.<component>" tensors plus one JSON metadata
// entry per weight.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/core/tensor.hpp"

namespace lowbit::quant {

// How components encode W. A method reads the fields its header lists and leaves the others at their
// defaults, so that two QuantizedTensors of one method compare equal exactly when they encode alike.
struct QuantParams {
  int bits = 0;
  // Elements of one row (along k) that share a scale: > 0 a group size (the last group of a row may be
  // shorter where the method allows it), -1 one group per row, 0 one group for the whole tensor.
  std::int64_t group_size = 0;
  std::int64_t block_size = 0;         // bitsandbytes formats: elements per absmax block (flattened W)
  int axis = 1;                        // HQQ: the axis groups run along (0 or 1)
  bool symmetric = false;
  bool double_quant = false;           // bitsandbytes 4-bit: absmax itself quantized to 8 bits
  std::int64_t nested_block_size = 0;  // block size of that second level
  double threshold = 0;                // LLM.int8(): |x| at or above which an input column is an outlier
  std::string variant;                 // method-specific choice: "nf4"/"fp4", "dynamic"/"linear", ...

  friend bool operator==(const QuantParams&, const QuantParams&) = default;
};

class QuantizedTensor {
 public:
  std::string method;    // registry name: "affine", "bnb8", "nf4", "fp4", "hqq", "llm_int8", ...
  Shape shape;           // of the original weight, [n, k] for linear layers
  DType dtype = DType::F32;  // of the original weight
  QuantParams params;
  std::map<std::string, Tensor> components;

  bool has(std::string_view name) const { return components.find(std::string(name)) != components.end(); }
  // Throws InvalidArgument naming the method, the missing component and the ones present.
  const Tensor& component(std::string_view name) const;
  // Bytes of all components: what storing this weight costs, metadata included.
  std::uint64_t storage_bytes() const;
  // storage_bytes() * 8 / number of weights.
  double bits_per_weight() const;
  // Bits of all components as a packed format stores them: storage_bytes() * 8, except that codes kept one
  // per byte ("codes", u8, one per weight, bits < 8: affine until a kernel or a GPTQ/AWQ writer packs
  // them) count `bits` each.
  double packed_bits() const;
  double packed_bits_per_weight() const;  // packed_bits() / number of weights
  // "nf4 [4096, 11008] (bits=4 block_size=64 double_quant) codes:u8[..] absmax:f32[..]"
  std::string describe() const;
};

// Parameters as JSON text and back (our on-disk metadata; unknown keys are an error).
std::string params_to_json(const QuantParams& params);
QuantParams params_from_json(std::string_view json, std::string_view context);

}  // namespace lowbit::quant
