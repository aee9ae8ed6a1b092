// Links lowbit::cuda from plain C++: reports the CUDA devices (0 on a machine without a GPU).
#include <cstdio>

#include "lowbit/cuda/device.hpp"

int main() {
  const int n = lowbit::cuda::device_count();
  std::printf("CUDA devices: %d\n", n);
  for (int i = 0; i < n; ++i) std::printf("  %d: %s\n", i, lowbit::cuda::describe_device(i).c_str());
  return 0;
}
