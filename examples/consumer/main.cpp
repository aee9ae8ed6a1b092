// Reads one safetensors file through an installed lowbit and prints each tensor with its fp32 sum.
#include <cstdio>

#include "lowbit/io/safetensors.hpp"
#include "lowbit/version.hpp"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s FILE.safetensors\n", argv[0]);
    return 2;
  }
  try {
    const auto file = lowbit::io::SafetensorsFile::open(argv[1]);
    std::printf("lowbit %s: %s holds %zu tensors\n", LOWBIT_VERSION_STRING, argv[1], file.tensors().size());
    for (const auto& name : file.names()) {
      const lowbit::Tensor t = file.tensor(name).to(lowbit::DType::F64);
      double sum = 0;
      for (std::int64_t i = 0; i < t.numel(); ++i) sum += t.data<double>()[i];
      std::printf("  %s %s sum=%.6g\n", name.c_str(), t.shape().to_string().c_str(), sum);
    }
  } catch (const lowbit::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
