// The smallest program that links lowbit into an engine: open a checkpoint, take one tensor as fp32.
//
//     lowbit_embed_example MODEL_DIR_OR_FILE [TENSOR]
#include <cstdio>
#include <exception>

#include "lowbit/io/checkpoint.hpp"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CHECKPOINT [TENSOR]\n", argv[0]);
    return 2;
  }
  try {
    const auto checkpoint = lowbit::io::Checkpoint::open(argv[1]);
    const auto names = checkpoint.names();
    if (names.empty()) return 0;
    const std::string name = argc > 2 ? argv[2] : names.front();
    const lowbit::Tensor weight = checkpoint.tensor(name).to(lowbit::DType::F32);  // a zero-copy view, converted
    double sum = 0;
    const float* w = weight.data<float>();
    for (std::int64_t i = 0; i < weight.numel(); ++i) sum += w[i];
    std::printf("%s: %s, sum %.6g\n", name.c_str(), weight.describe().c_str(), sum);
  } catch (const lowbit::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
