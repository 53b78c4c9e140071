// CPU kernel of permutohedral_filter: one lattice per image (cpu/permutohedral_cpu.h), values
// filtered pixel-major. Images run in parallel when there are at least as many as threads,
// otherwise each image's lattice work is parallel. See wsss_fast/ops/permutohedral_filter.py.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/permutohedral_checks.h"
#include "cpu/permutohedral_cpu.h"

namespace wsss_fast {
namespace {

template <typename T>
void filter_image(const float* f, const T* in, T* out, int64_t D, int64_t N, int64_t C, bool transpose) {
  pl::CpuLattice L;
  pl::build_lattice(L, static_cast<int>(D), N, [&](int j, int64_t p) { return f[j * N + p]; });
  std::vector<T> a, b;
  pl::lattice_filter<T>(L, C, transpose, a, b, in, nullptr, out, nullptr, T(0), pl::Emit::kPlain);
}

at::Tensor permutohedral_filter_cpu(const at::Tensor& values, const at::Tensor& features, bool transpose) {
  const FilterDims g = check_permutohedral_args(values, features);
  WSSS_CHECK_CPU("permutohedral_filter", "values", values);
  if (values.numel() == 0) return at::zeros_like(values, at::MemoryFormat::Contiguous);
  // pixel-major values [B, N, C]; features [B, D, N] in float32 (the lattice's precision)
  const at::Tensor v = values.reshape({g.B, g.C, g.N}).transpose(1, 2).contiguous();
  const at::Tensor f = features.reshape({g.B, g.D, g.N}).to(at::kFloat).contiguous();
  at::Tensor out = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "permutohedral_filter_cpu", [&] {
    const float* fp = f.data_ptr<float>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    auto one = [&](int64_t b) {
      filter_image<scalar_t>(fp + b * g.D * g.N, vp + b * g.N * g.C, op + b * g.N * g.C, g.D, g.N, g.C,
                             transpose);
    };
    if (g.B > 1 && g.B >= at::get_num_threads()) {
      at::parallel_for(0, g.B, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) one(b);
      });
    } else {
      for (int64_t b = 0; b < g.B; ++b) one(b);
    }
  });
  return out.transpose(1, 2).contiguous().view(values.sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CPU, m) { m.impl("permutohedral_filter", &permutohedral_filter_cpu); }

}  // namespace wsss_fast
