#pragma once

#include <gtest/gtest.h>

#include "lowbit/cuda/device.hpp"

// GTEST_SKIP with a message where no CUDA device is present, so CPU-only machines report "skipped".
#define LOWBIT_REQUIRE_CUDA_DEVICE()                                         \
  do {                                                                       \
    if (::lowbit::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"; \
  } while (false)
