// Device-side table of IRNet's paths, cached per (radius, device), and the path max
// shared by the path_affinity and random_walk CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <mutex>
#include <utility>

#include "common/irnet_paths.h"

namespace wsss_fast {

// int32 table on the device: start[D + 1], then py[n], then px[n] (n = start[D]).
// Built once per (radius, device) and kept for the life of the process (never freed, so
// no destructor runs after the CUDA context is gone). Build it outside CUDA graph capture.
inline at::Tensor irnet_path_table_cuda(const IrnetPaths& P, const at::Device& device) {
  static std::mutex mutex;
  static auto* cache = new std::map<std::pair<int64_t, int>, at::Tensor>();
  const auto key = std::make_pair(P.radius, static_cast<int>(device.index()));
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache->find(key);
  if (it != cache->end()) return it->second;
  std::vector<int> host(P.start);
  host.insert(host.end(), P.py.begin(), P.py.end());
  host.insert(host.end(), P.px.begin(), P.px.end());
  at::Tensor cpu = at::empty({static_cast<int64_t>(host.size())}, at::TensorOptions().dtype(at::kInt));
  std::copy(host.begin(), host.end(), cpu.data_ptr<int>());
  at::Tensor dev = cpu.to(device);
  cache->emplace(key, dev);
  return dev;
}

// Max of e over path k from (y, x), pixels outside the image counting as 1; *arg gets the
// first path point (in IRNet's path order) attaining it, or -1 when that one is outside.
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t path_max(const scalar_t* __restrict__ e, int H, int W, int y, int x,
                                          const int* __restrict__ start, const int* __restrict__ py,
                                          const int* __restrict__ px, int k, int64_t* arg) {
  acc_t m = acc_t(0);
  int64_t a = -1;
  const int j1 = start[k + 1];
  for (int j = start[k]; j < j1; ++j) {
    const int yy = y + py[j], xx = x + px[j];
    const bool in = yy >= 0 && yy < H && xx >= 0 && xx < W;
    const acc_t v = in ? static_cast<acc_t>(e[static_cast<int64_t>(yy) * W + xx]) : acc_t(1);
    if (j == start[k] || v > m) {
      m = v;
      a = in ? static_cast<int64_t>(yy) * W + xx : -1;
    }
  }
  *arg = a;
  return m;
}

}  // namespace wsss_fast
