// CUDA kernels of IRNet's path affinity: one thread per output (b, k, y, x); the backward
// recomputes the argmax and adds the gradient there with atomics (fp32 accumulation for
// half/bfloat16; the summation order varies between runs, so the last bits may too).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <torch/library.h>

#include "common/accumulate.h"
#include "common/cuda_utils.cuh"
#include "common/irnet_checks.h"
#include "cuda/irnet_paths_cuda.cuh"

namespace wsss_fast {
namespace {

template <typename scalar_t>
__global__ void path_affinity_fwd_kernel(const scalar_t* __restrict__ e, scalar_t* __restrict__ out,
                                         const int* __restrict__ table, int D, int H, int W,
                                         int64_t total) {
  using acc = acc_t<scalar_t>;
  const int* start = table;
  const int* py = table + D + 1;
  const int* px = py + table[D];
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int x = static_cast<int>(i % W);
    int64_t t = i / W;
    const int y = static_cast<int>(t % H);
    t /= H;
    const int k = static_cast<int>(t % D);
    const int64_t b = t / D;
    int64_t arg;
    const acc m = path_max<acc>(e + b * H * W, H, W, y, x, start, py, px, k, &arg);
    out[i] = static_cast<scalar_t>(acc(1) - m);
  }
}

template <typename scalar_t>
__global__ void path_affinity_bwd_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ e,
                                         acc_t<scalar_t>* __restrict__ gedge, const int* __restrict__ table,
                                         int D, int H, int W, int64_t total) {
  using acc = acc_t<scalar_t>;
  const int* start = table;
  const int* py = table + D + 1;
  const int* px = py + table[D];
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc g = static_cast<acc>(grad[i]);
    if (g == acc(0)) continue;
    const int x = static_cast<int>(i % W);
    int64_t t = i / W;
    const int y = static_cast<int>(t % H);
    t /= H;
    const int k = static_cast<int>(t % D);
    const int64_t b = t / D;
    int64_t arg;
    path_max<acc>(e + b * H * W, H, W, y, x, start, py, px, k, &arg);
    if (arg >= 0) atomicAdd(gedge + b * H * W + arg, -g);
  }
}

at::Tensor path_affinity_cuda(const at::Tensor& edge, int64_t radius) {
  check_radius("path_affinity", radius);
  WSSS_CHECK_CUDA("path_affinity", "edge", edge);
  const c10::cuda::CUDAGuard guard(edge.device());
  const at::Tensor e = edge_as_bhw("path_affinity", edge);
  const IrnetPaths P = make_irnet_paths(radius);
  const int64_t B = e.size(0), H = e.size(1), W = e.size(2), D = P.num_offsets();
  at::Tensor out = at::empty({B, D, H, W}, e.options());
  if (out.numel() == 0) return out;
  const at::Tensor table = irnet_path_table_cuda(P, e.device());
  const int64_t total = out.numel();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.scalar_type(), "path_affinity_cuda", [&] {
    path_affinity_fwd_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        e.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), table.data_ptr<int>(), static_cast<int>(D),
        static_cast<int>(H), static_cast<int>(W), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor path_affinity_backward_cuda(const at::Tensor& grad, const at::Tensor& edge, int64_t radius) {
  check_radius("path_affinity_backward", radius);
  WSSS_CHECK_CUDA("path_affinity_backward", "edge", edge);
  WSSS_CHECK_SAME_DEVICE("path_affinity_backward", "grad", grad, "edge", edge);
  const c10::cuda::CUDAGuard guard(edge.device());
  const at::Tensor e = edge_as_bhw("path_affinity_backward", edge);
  const IrnetPaths P = make_irnet_paths(radius);
  const int64_t B = e.size(0), H = e.size(1), W = e.size(2), D = P.num_offsets();
  check_affinity_grad(grad, B, D, H, W);
  const at::Tensor g = grad.to(e.scalar_type()).contiguous();
  const auto acc_type = e.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor gacc = at::zeros({B, H, W}, e.options().dtype(acc_type));
  if (g.numel() > 0) {
    const at::Tensor table = irnet_path_table_cuda(P, e.device());
    const int64_t total = g.numel();
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.scalar_type(), "path_affinity_backward_cuda", [&] {
      path_affinity_bwd_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), e.data_ptr<scalar_t>(), gacc.data_ptr<acc_t<scalar_t>>(),
          table.data_ptr<int>(), static_cast<int>(D), static_cast<int>(H), static_cast<int>(W), total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return gacc.to(e.scalar_type()).view(edge.sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CUDA, m) {
  m.impl("path_affinity", &path_affinity_cuda);
  m.impl("path_affinity_backward", &path_affinity_backward_cuda);
}

}  // namespace wsss_fast
