// Shared CUDA helpers: launch geometry and error checks. Kernels launch on
// at::cuda::getCurrentCUDAStream() and check with C10_CUDA_KERNEL_LAUNCH_CHECK().
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>

namespace wsss_fast {

constexpr int kThreads = 256;

inline int64_t blocks_for(int64_t n, int threads = kThreads, int64_t max_blocks = 65535LL * 16) {
  int64_t b = (n + threads - 1) / threads;
  return std::max<int64_t>(1, std::min<int64_t>(b, max_blocks));
}

}  // namespace wsss_fast
