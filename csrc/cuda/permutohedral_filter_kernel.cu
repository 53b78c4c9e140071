// CUDA kernel of permutohedral_filter: one lattice for the whole batch
// (cuda/permutohedral_cuda.cuh), values filtered pixel-major. See
// wsss_fast/ops/permutohedral_filter.py.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/permutohedral_checks.h"
#include "cuda/permutohedral_cuda.cuh"

namespace wsss_fast {
namespace {

at::Tensor permutohedral_filter_cuda(const at::Tensor& values, const at::Tensor& features, bool transpose) {
  const FilterDims g = check_permutohedral_args(values, features);
  WSSS_CHECK_CUDA("permutohedral_filter", "values", values);
  c10::cuda::CUDAGuard guard(values.device());
  if (values.numel() == 0) return at::zeros_like(values, at::MemoryFormat::Contiguous);
  const at::Tensor v = values.reshape({g.B, g.C, g.N}).transpose(1, 2).contiguous();  // [B, N, C]
  const at::Tensor f = features.reshape({g.B, g.D, g.N}).to(at::kFloat).contiguous();
  const plc::GpuLattice L = plc::build_lattice_cuda(f);
  at::Tensor out = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "permutohedral_filter_cuda", [&] {
    at::Tensor a = at::empty({std::max<int64_t>(L.M, 1), g.C}, v.options());
    at::Tensor b = at::empty_like(a);
    plc::lattice_filter_cuda<scalar_t, plc::kPlain>(L, g.C, transpose, v.data_ptr<scalar_t>(), nullptr,
                                                    out.data_ptr<scalar_t>(), nullptr, 0.0f, a.data_ptr<scalar_t>(),
                                                    b.data_ptr<scalar_t>());
  });
  return out.transpose(1, 2).contiguous().view(values.sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CUDA, m) { m.impl("permutohedral_filter", &permutohedral_filter_cuda); }

}  // namespace wsss_fast
