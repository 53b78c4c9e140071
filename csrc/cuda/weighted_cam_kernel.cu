// CUDA kernel of wsss_fast::weighted_cam: one thread per (b, block of 4 classes, pixel);
// it walks the K channels reading A[b, k, p] once (coalesced across pixels) for 4 fp32
// accumulators, then applies the ReLU. Upsampling/normalization: ATen on the same stream
// (common/cam_common.h); nothing touches the host.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/accumulate.h"
#include "common/cam_common.h"
#include "common/cuda_utils.cuh"

namespace wsss_fast {
namespace {

constexpr int kCB = 4;  // classes per thread

template <typename scalar_t>
__global__ void weighted_cam_kernel(const scalar_t* __restrict__ A, const scalar_t* __restrict__ W,
                                    acc_t<scalar_t>* __restrict__ out, int64_t B, int64_t C, int64_t K,
                                    int64_t HW, int64_t a_sb, int64_t a_sk) {
  using acc = acc_t<scalar_t>;
  const int64_t nblk = (C + kCB - 1) / kCB;
  const int64_t total = B * nblk * HW;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = idx % HW;
    const int64_t rest = idx / HW;
    const int64_t c0 = (rest % nblk) * kCB, b = rest / nblk;
    const int nc = static_cast<int>(C - c0 < kCB ? C - c0 : kCB);
    const scalar_t* a = A + b * a_sb + p;
    const scalar_t* w = W + (b * C + c0) * K;
    acc s[kCB] = {acc(0), acc(0), acc(0), acc(0)};
    for (int64_t k = 0; k < K; ++k) {
      const acc av = static_cast<acc>(a[k * a_sk]);
#pragma unroll
      for (int j = 0; j < kCB; ++j) {
        if (j < nc) s[j] += static_cast<acc>(w[j * K + k]) * av;
      }
    }
    acc* o = out + (b * C + c0) * HW + p;
#pragma unroll
    for (int j = 0; j < kCB; ++j) {
      if (j < nc) o[j * HW] = s[j] > acc(0) ? s[j] : acc(0);
    }
  }
}

at::Tensor weighted_cam_cuda(const at::Tensor& activations, const at::Tensor& weights,
                             at::OptionalIntArrayRef out_size, bool normalize) {
  check_weighted_cam_args(activations, weights, out_size);
  WSSS_CHECK_CUDA("weighted_cam", "activations", activations);
  const c10::cuda::CUDAGuard guard(activations.device());
  const auto act = with_inner_hw_contiguous(activations);
  const auto w = weights.contiguous();
  const int64_t B = act.size(0), K = act.size(1), HW = act.size(2) * act.size(3), C = w.size(1);
  const auto acc_type = at::toOpMathType(act.scalar_type());
  auto cam = at::empty({B, C, act.size(2), act.size(3)}, act.options().dtype(acc_type));
  if (cam.numel() > 0) {
    const int64_t total = B * ((C + kCB - 1) / kCB) * HW;
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, act.scalar_type(), "weighted_cam_cuda", [&] {
      weighted_cam_kernel<scalar_t><<<static_cast<unsigned>(blocks_for(total)), kThreads, 0, stream>>>(
          act.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), cam.mutable_data_ptr<acc_t<scalar_t>>(),
          B, C, K, HW, act.stride(0), act.stride(1));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return weighted_cam_post(cam, out_size, normalize, act.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CUDA, m) { m.impl("weighted_cam", &weighted_cam_cuda); }

}  // namespace wsss_fast
