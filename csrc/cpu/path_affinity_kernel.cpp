// CPU kernels of IRNet's path affinity: forward (1 - max of the edge map over each path)
// and backward (gradient to the path point that attains the max; on ties the first point
// in IRNet's path order, i.e. the one farthest from the source). See
// wsss_fast/ops/path_affinity.py for the definition.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/irnet_checks.h"
#include "common/irnet_paths.h"
#include "cpu/path_affinity_cpu.h"

namespace wsss_fast {
namespace {

// First path point (in path order) attaining the max; points outside the image count as 1.
template <typename scalar_t>
inline void path_argmax(const scalar_t* e, int64_t H, int64_t W, int64_t y, int64_t x,
                        const IrnetPaths& P, int64_t k, int64_t* arg_y, int64_t* arg_x,
                        bool* inside, scalar_t* best) {
  scalar_t m = scalar_t(0);
  bool first = true;
  for (int j = P.start[k]; j < P.start[k + 1]; ++j) {
    const int64_t yy = y + P.py[j], xx = x + P.px[j];
    const bool in = yy >= 0 && yy < H && xx >= 0 && xx < W;
    const scalar_t v = in ? e[yy * W + xx] : scalar_t(1);
    if (first || v > m) {
      m = v;
      first = false;
      *arg_y = yy;
      *arg_x = xx;
      *inside = in;
    }
  }
  *best = m;
}

#if defined(__GNUC__)
// Generic 4-lane vectors (GCC/Clang extension): SSE on x86-64, NEON on arm64.
typedef float pa_v4f __attribute__((vector_size(16)));
typedef float pa_v4f_u __attribute__((vector_size(16), aligned(4)));
typedef int32_t pa_v4i __attribute__((vector_size(16)));
typedef int32_t pa_v4i_u __attribute__((vector_size(16), aligned(4)));

// Pixels [x0, x0 + 4n) of one interior row (b, k, y): argmax over the path in registers
// (first point on ties, as path_argmax) into abuf, then, per path point, one masked
// read-modify-write pass over the row; no branches on the data. Passes go point by point
// (not block by block) so that no load partially overlaps a store still in flight
// (neighbouring path points are one column apart). Returns the first pixel not handled.
inline int64_t backward_row_f32(const float* e, float* g, const float* go, int32_t* abuf, int64_t W,
                                int64_t y, int64_t x0, int64_t x1, const IrnetPaths& P, int64_t k) {
  const int j0 = P.start[k], j1 = P.start[k + 1];
  const int64_t xe = x0 + (x1 - x0) / 4 * 4;
  for (int64_t x = x0; x < xe; x += 4) {
    pa_v4f m = *reinterpret_cast<const pa_v4f_u*>(e + (y + P.py[j0]) * W + P.px[j0] + x);
    pa_v4i a = {0, 0, 0, 0};
    for (int j = j0 + 1; j < j1; ++j) {
      const pa_v4f v = *reinterpret_cast<const pa_v4f_u*>(e + (y + P.py[j]) * W + P.px[j] + x);
      const pa_v4i gt = v > m;
      m = gt ? v : m;
      a = gt ? pa_v4i{j - j0, j - j0, j - j0, j - j0} : a;
    }
    *reinterpret_cast<pa_v4i_u*>(abuf + x) = a;
  }
  const pa_v4f zero = {0.f, 0.f, 0.f, 0.f};
  for (int j = j0; j < j1; ++j) {
    float* row = g + (y + P.py[j]) * W + P.px[j];
    const pa_v4i jv = {j - j0, j - j0, j - j0, j - j0};
    for (int64_t x = x0; x < xe; x += 4) {
      pa_v4f_u* d = reinterpret_cast<pa_v4f_u*>(row + x);
      const pa_v4i hit = *reinterpret_cast<const pa_v4i_u*>(abuf + x) == jv;
      *d = *d - (hit ? *reinterpret_cast<const pa_v4f_u*>(go + x) : zero);
    }
  }
  return xe;
}
#endif

template <typename scalar_t>
void backward_impl(const scalar_t* grad, const scalar_t* edge, scalar_t* gedge, int64_t B,
                   int64_t H, int64_t W, const IrnetPaths& P) {
  // Path index of the argmax, as wide as scalar_t so that compare-and-select vectorizes.
  using arg_t = std::conditional_t<sizeof(scalar_t) == 8, int64_t, int32_t>;
  const int64_t D = P.num_offsets();
  const int64_t HW = H * W;
  // Source rows [s*hs, (s+1)*hs) write to edge rows [s*hs, (s+1)*hs + r - 1): stripes of the
  // same parity never overlap when hs >= r - 1, so each phase runs them in parallel, and the
  // result does not depend on the number of threads.
  const int64_t hs = std::max<int64_t>(P.radius - 1, 8);
  const int64_t stripes = (H + hs - 1) / hs;
  for (int64_t phase = 0; phase < 2; ++phase) {
    const int64_t per_b = (stripes - phase + 1) / 2;
    const int64_t n_tasks = B * per_b;
    if (n_tasks <= 0) continue;
    at::parallel_for(0, n_tasks, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> m(W);
      std::vector<arg_t> arg(W);
      std::vector<int32_t> abuf(W);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / per_b;
        const int64_t s = (t % per_b) * 2 + phase;
        const scalar_t* e = edge + b * HW;
        scalar_t* g = gedge + b * HW;
        // A pixel whose path leaves the image has its destination outside (the path lies in
        // the bounding box of source and destination), and the destination is the first path
        // point, worth 1. With every edge value <= 1 it keeps the max, so such pixels send no
        // gradient and the literal per-pixel search below can be skipped.
        bool all_le1 = true;
        for (int64_t i = 0; i < HW; ++i) all_le1 &= e[i] <= scalar_t(1);  // NaN: false
        const int64_t y_end = std::min(H, (s + 1) * hs);
        for (int64_t k = 0; k < D; ++k) {
          const int dy = P.dy[k], dx = P.dx[k];
          for (int64_t y = s * hs; y < y_end; ++y) {
            const scalar_t* go = grad + ((b * D + k) * H + y) * W;
            int64_t x0 = std::max<int64_t>(0, -dx), x1 = std::min<int64_t>(W, W - dx);
            if (y + dy >= H || x1 <= x0) x0 = x1 = 0;
            if (x1 > x0) {
              // Interior: vectorizable argmax (first point on ties), then one masked,
              // vectorizable pass per path point instead of a scalar scatter.
              const int j0 = P.start[k], j1 = P.start[k + 1];
#if defined(__GNUC__)
              if constexpr (std::is_same_v<scalar_t, float>) {
                const int64_t xv = backward_row_f32(e, g, go, abuf.data(), W, y, x0, x1, P, k);
                for (int64_t x = xv; x < x1; ++x) {
                  int64_t ay = 0, ax = 0;
                  bool in = false;
                  scalar_t best;
                  path_argmax(e, H, W, y, x, P, k, &ay, &ax, &in, &best);
                  g[ay * W + ax] -= go[x];
                }
              } else
#endif
              {
              scalar_t* __restrict mm = m.data();
              arg_t* __restrict aa = arg.data();
              {
                const scalar_t* __restrict first = e + (y + P.py[j0]) * W + P.px[j0];
                for (int64_t x = x0; x < x1; ++x) {
                  mm[x] = first[x];
                  aa[x] = 0;
                }
              }
              for (int j = j0 + 1; j < j1; ++j) {
                const scalar_t* __restrict src = e + (y + P.py[j]) * W + P.px[j];
                const arg_t jj = static_cast<arg_t>(j - j0);
                for (int64_t x = x0; x < x1; ++x) {
                  const bool gt = src[x] > mm[x];
                  mm[x] = gt ? src[x] : mm[x];
                  aa[x] = gt ? jj : aa[x];
                }
              }
              const scalar_t* __restrict gg = go;
              for (int j = j0; j < j1; ++j) {
                scalar_t* __restrict dst = g + (y + P.py[j]) * W + P.px[j];
                const arg_t jj = static_cast<arg_t>(j - j0);
                for (int64_t x = x0; x < x1; ++x) dst[x] -= aa[x] == jj ? gg[x] : scalar_t(0);
              }
              }
            }
            if (all_le1) continue;
            for (int64_t x = 0; x < W; ++x) {
              if (x >= x0 && x < x1) {
                x = x1 - 1;
                continue;
              }
              int64_t ay = 0, ax = 0;
              bool in = false;
              scalar_t best;
              path_argmax(e, H, W, y, x, P, k, &ay, &ax, &in, &best);
              if (in) g[ay * W + ax] -= go[x];
            }
          }
        }
      }
    });
  }
}

at::Tensor path_affinity_cpu(const at::Tensor& edge, int64_t radius) {
  check_radius("path_affinity", radius);
  WSSS_CHECK_CPU("path_affinity", "edge", edge);
  const at::Tensor e = edge_as_bhw("path_affinity", edge);
  WSSS_CHECK_CPU_FLOAT("path_affinity", "edge", e);
  const IrnetPaths P = make_irnet_paths(radius);
  const int64_t B = e.size(0), H = e.size(1), W = e.size(2), D = P.num_offsets();
  at::Tensor out = at::empty({B, D, H, W}, e.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(e.scalar_type(), "path_affinity_cpu", [&] {
    path_affinity_forward_cpu<scalar_t>(e.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), B, H, W, P);
  });
  return out;
}

at::Tensor path_affinity_backward_cpu(const at::Tensor& grad, const at::Tensor& edge, int64_t radius) {
  check_radius("path_affinity_backward", radius);
  WSSS_CHECK_CPU("path_affinity_backward", "edge", edge);
  WSSS_CHECK_SAME_DEVICE("path_affinity_backward", "grad", grad, "edge", edge);
  const at::Tensor e = edge_as_bhw("path_affinity_backward", edge);
  WSSS_CHECK_CPU_FLOAT("path_affinity_backward", "edge", e);
  const IrnetPaths P = make_irnet_paths(radius);
  const int64_t B = e.size(0), H = e.size(1), W = e.size(2), D = P.num_offsets();
  check_affinity_grad(grad, B, D, H, W);
  const at::Tensor g = grad.to(e.scalar_type()).contiguous();
  at::Tensor gedge = at::zeros({B, H, W}, e.options());
  if (g.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(e.scalar_type(), "path_affinity_backward_cpu", [&] {
      backward_impl<scalar_t>(g.data_ptr<scalar_t>(), e.data_ptr<scalar_t>(),
                              gedge.data_ptr<scalar_t>(), B, H, W, P);
    });
  }
  return gedge.view(edge.sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CPU, m) {
  m.impl("path_affinity", &path_affinity_cpu);
  m.impl("path_affinity_backward", &path_affinity_backward_cpu);
}

}  // namespace wsss_fast
