// CUDA kernel of wsss_fast::gradcampp_weights: one warp per (b, k) channel, looping over
// the C classes. The warp reads sum(A) once, then each class's h*w gradient slice once
// ("paper"; "wsmis" reads it a second time from L1/L2 for its per-channel denominator),
// coalesced across lanes, fp32 accumulation and warp-shuffle reductions.
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

constexpr int kWarpsPerBlock = 8;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <typename scalar_t, bool PAPER>
__global__ void gradcampp_kernel(const scalar_t* __restrict__ A, const scalar_t* __restrict__ G,
                                 scalar_t* __restrict__ out, int64_t B, int64_t C, int64_t K, int64_t HW,
                                 int64_t a_sb, int64_t a_sk, int64_t g_sb, int64_t g_sc, int64_t g_sk,
                                 acc_t<scalar_t> eps) {
  using acc = acc_t<scalar_t>;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= B * K) return;  // whole warps exit together
  const int64_t b = warp / K, k = warp % K;
  const scalar_t* a = A + b * a_sb + k * a_sk;
  acc s = 0;
  if (PAPER) {
    for (int64_t p = lane; p < HW; p += 32) s += static_cast<acc>(a[p]);
    s = warp_sum(s);
  }
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* g = G + b * g_sb + c * g_sc + k * g_sk;
    acc den0 = s;
    if (!PAPER) {
      acc d = 0;
      for (int64_t p = lane; p < HW; p += 32) {
        const acc gv = static_cast<acc>(g[p]);
        d += static_cast<acc>(a[p]) * (gv * gv * gv);
      }
      den0 = warp_sum(d);
    }
    acc w = 0;
    for (int64_t p = lane; p < HW; p += 32) {
      const acc gv = static_cast<acc>(g[p]);
      if (gv > acc(0)) {
        const acc g2 = gv * gv;
        const acc den = PAPER ? (acc(2) * g2 + den0 * (g2 * gv) + eps) : (acc(2) * g2 + den0 + eps);
        w += g2 / den * gv;
      }
    }
    w = warp_sum(w);
    if (lane == 0) out[(b * C + c) * K + k] = static_cast<scalar_t>(w);
  }
}

at::Tensor gradcampp_weights_cuda(const at::Tensor& activations, const at::Tensor& grads,
                                  c10::string_view variant, std::optional<double> eps) {
  const auto args = check_gradcampp_args(activations, grads, variant, eps);
  const bool paper = args.first;
  const double e = args.second;
  WSSS_CHECK_CUDA("gradcampp_weights", "activations", activations);
  const c10::cuda::CUDAGuard guard(activations.device());
  const auto act = with_inner_hw_contiguous(activations);
  const auto g = with_inner_hw_contiguous(grads);
  const int64_t B = g.size(0), C = g.size(1), K = g.size(2), HW = g.size(3) * g.size(4);
  auto out = at::empty({B, C, K}, g.options());
  if (out.numel() == 0) return out;
  if (HW == 0) return out.zero_();
  const int64_t blocks = (B * K + kWarpsPerBlock - 1) / kWarpsPerBlock;
  TORCH_CHECK(blocks < (1LL << 31), "gradcampp_weights: too many channels B*K=", B * K);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, act.scalar_type(), "gradcampp_weights_cuda", [&] {
    using acc = acc_t<scalar_t>;
    auto kernel = paper ? gradcampp_kernel<scalar_t, true> : gradcampp_kernel<scalar_t, false>;
    kernel<<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(
        act.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), B, C, K,
        HW, act.stride(0), act.stride(1), g.stride(0), g.stride(1), g.stride(2), static_cast<acc>(e));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CUDA, m) { m.impl("gradcampp_weights", &gradcampp_weights_cuda); }

}  // namespace wsss_fast
