// IRNet's half-disk search offsets and the path of each offset (host side).
// Shared by the path_affinity and random_walk kernels; mirrors
// wsss_fast/reference/path_affinity.py (_offsets, _paths).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

namespace wsss_fast {

struct IrnetPaths {
  int64_t radius = 0;
  std::vector<int> dy, dx;     // [D] search offsets, IRNet's search order
  std::vector<int> start;      // [D + 1] path k is points start[k] .. start[k+1]-1
  std::vector<int> py, px;     // path points, farthest from the source first
  int64_t num_offsets() const { return static_cast<int64_t>(dy.size()); }
};

inline IrnetPaths make_irnet_paths(int64_t radius) {
  IrnetPaths p;
  p.radius = radius;
  const int r = static_cast<int>(radius);
  for (int x = 1; x < r; ++x) {
    p.dy.push_back(0);
    p.dx.push_back(x);
  }
  for (int y = 1; y < r; ++y) {
    for (int x = -r + 1; x < r; ++x) {
      if (x * x + y * y < r * r) {
        p.dy.push_back(y);
        p.dx.push_back(x);
      }
    }
  }
  p.start.push_back(0);
  for (size_t k = 0; k < p.dy.size(); ++k) {
    const int64_t oy = p.dy[k], ox = p.dx[k];
    const int64_t len_sq = oy * oy + ox * ox;
    std::vector<std::pair<int, int>> pts;
    for (int64_t y = std::min<int64_t>(0, oy); y <= std::max<int64_t>(0, oy); ++y) {
      for (int64_t x = std::min<int64_t>(0, ox); x <= std::max<int64_t>(0, ox); ++x) {
        const int64_t cross = oy * x - ox * y;
        if (cross * cross < len_sq) pts.emplace_back(static_cast<int>(y), static_cast<int>(x));
      }
    }
    std::stable_sort(pts.begin(), pts.end(), [](const auto& a, const auto& b) {
      return -std::abs(a.first) - std::abs(a.second) < -std::abs(b.first) - std::abs(b.second);
    });
    for (const auto& q : pts) {
      p.py.push_back(q.first);
      p.px.push_back(q.second);
    }
    p.start.push_back(static_cast<int>(p.py.size()));
  }
  return p;
}

}  // namespace wsss_fast
