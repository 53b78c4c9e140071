// CPU forward of IRNet's path affinity, shared by path_affinity and random_walk.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/irnet_paths.h"

namespace wsss_fast {

// out[b, k, y, x] = 1 - max over path k of e[b, y + qy, x + qx] (1 outside the image).
// e: [B, H, W] contiguous; out: [B, D, H, W] contiguous. Work is split over (b, k, y) rows;
// within a row the pixels whose destination is inside the image (so is the whole path)
// run as a branch-free, vectorizable max over shifted rows.
template <typename scalar_t>
void path_affinity_forward_cpu(const scalar_t* e, scalar_t* out, int64_t B, int64_t H, int64_t W,
                               const IrnetPaths& P) {
  const int64_t D = P.num_offsets();
  const int64_t rows = B * D * H;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(W * 8, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t y = r % H;
      const int64_t k = (r / H) % D;
      const int64_t b = r / (H * D);
      const scalar_t* eb = e + b * H * W;
      scalar_t* o = out + r * W;
      const int dy = P.dy[k], dx = P.dx[k];
      int64_t x0 = std::max<int64_t>(0, -dx), x1 = std::min<int64_t>(W, W - dx);
      if (y + dy >= H || x1 <= x0) x0 = x1 = 0;  // no pixel of this row has its path inside
      int64_t xi = x0;  // interior pixels before xi are done
#if defined(__GNUC__)
      if constexpr (std::is_same_v<scalar_t, float>) {
        // Max in registers, 4 pixels at a time; one store per pixel.
        typedef float v4f __attribute__((vector_size(16)));
        typedef float v4f_u __attribute__((vector_size(16), aligned(4)));
        const int64_t xe = x0 + (x1 - x0) / 4 * 4;
        const int j0 = P.start[k], j1 = P.start[k + 1];
        const v4f one = {1.f, 1.f, 1.f, 1.f};
        for (int64_t x = x0; x < xe; x += 4) {
          v4f m = *reinterpret_cast<const v4f_u*>(eb + (y + P.py[j0]) * W + P.px[j0] + x);
          for (int j = j0 + 1; j < j1; ++j) {
            const v4f v = *reinterpret_cast<const v4f_u*>(eb + (y + P.py[j]) * W + P.px[j] + x);
            m = v > m ? v : m;
          }
          *reinterpret_cast<v4f_u*>(o + x) = one - m;
        }
        xi = xe;  // the rest of the interior goes through the generic loops below
      }
#endif
      if (x1 > xi) {
        const scalar_t* first = eb + (y + P.py[P.start[k]]) * W + P.px[P.start[k]];
        for (int64_t x = xi; x < x1; ++x) o[x] = first[x];
        for (int j = P.start[k] + 1; j < P.start[k + 1]; ++j) {
          const scalar_t* src = eb + (y + P.py[j]) * W + P.px[j];
          for (int64_t x = xi; x < x1; ++x) o[x] = src[x] > o[x] ? src[x] : o[x];
        }
        for (int64_t x = xi; x < x1; ++x) o[x] = scalar_t(1) - o[x];
      }
      for (int64_t x = 0; x < W; ++x) {
        if (x >= x0 && x < x1) {
          x = x1 - 1;
          continue;
        }
        // The destination is outside: literal max with the edge map padded by 1.
        scalar_t m = scalar_t(0);
        bool first = true;
        for (int j = P.start[k]; j < P.start[k + 1]; ++j) {
          const int64_t yy = y + P.py[j], xx = x + P.px[j];
          const bool in = yy >= 0 && yy < H && xx >= 0 && xx < W;
          const scalar_t v = in ? eb[yy * W + xx] : scalar_t(1);
          if (first || v > m) m = v;
          first = false;
        }
        o[x] = scalar_t(1) - m;
      }
    }
  });
}

}  // namespace wsss_fast
