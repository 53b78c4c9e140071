// CUDA kernel of dense_crf: the CPU kernel's mean field (cpu/dense_crf_kernel.cpp) on two
// batched lattices (cuda/permutohedral_cuda.cuh): all B images in one lattice per kernel and
// one launch per step. Q and the energies are pixel-major [B*H*W, L]. See
// wsss_fast/ops/dense_crf.py.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/permutohedral_checks.h"
#include "cuda/permutohedral_cuda.cuh"

namespace wsss_fast {
namespace {

// Gaussian features (x, y) / gs [B, 2, N] and bilateral (x / bs, y / bs, rgb / br) [B, 5, N].
__global__ void crf_features_kernel(const uint8_t* __restrict__ img, int64_t B, int64_t H, int64_t W, int64_t ch,
                                    float gs, float bs, float br, float* __restrict__ fg, float* __restrict__ fb) {
  const int64_t N = H * W, total = B * N;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = t / N, p = t - b * N;
    const float x = static_cast<float>(p % W), y = static_cast<float>(p / W);
    fg[(b * 2 + 0) * N + p] = __fdiv_rn(x, gs);
    fg[(b * 2 + 1) * N + p] = __fdiv_rn(y, gs);
    fb[(b * 5 + 0) * N + p] = __fdiv_rn(x, bs);
    fb[(b * 5 + 1) * N + p] = __fdiv_rn(y, bs);
    for (int k = 0; k < 3; ++k) {
      const float v = static_cast<float>(img[(b * ch + (ch == 3 ? k : 0)) * N + p]);
      fb[(b * 5 + 2 + k) * N + p] = __fdiv_rn(v, br);
    }
  }
}

// q[px, :] = exp(e - max) / sum (pydensecrf's expAndNormalize).
__global__ void softmax_kernel(const float* __restrict__ e, float* __restrict__ q, int64_t G, int64_t L) {
  for (int64_t px = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; px < G;
       px += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float* x = e + px * L;
    float* y = q + px * L;
    float mx = x[0];
    for (int64_t c = 1; c < L; ++c) mx = fmaxf(mx, x[c]);
    float s = 0.0f;
    for (int64_t c = 0; c < L; ++c) {
      const float v = expf(__fsub_rn(x[c], mx));
      y[c] = v;
      s = __fadd_rn(s, v);
    }
    for (int64_t c = 0; c < L; ++c) y[c] = __fdiv_rn(y[c], s);
  }
}

at::Tensor dense_crf_cuda(const at::Tensor& unary, const at::Tensor& image, double gaussian_sxy,
                          double gaussian_compat, double bilateral_sxy, double bilateral_srgb, double bilateral_compat,
                          int64_t iterations) {
  const CrfDims g = check_dense_crf_args(unary, image, gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb,
                                         bilateral_compat, iterations);
  WSSS_CHECK_CUDA("dense_crf", "unary", unary);
  c10::cuda::CUDAGuard guard(unary.device());
  if (unary.numel() == 0) return at::empty_like(unary, at::MemoryFormat::Contiguous);
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t N = g.H * g.W, G = g.B * N, L = g.L;
  const auto fopt = unary.options();
  const at::Tensor im = image.contiguous();
  at::Tensor fg = at::empty({g.B, 2, N}, fopt);
  at::Tensor fb = at::empty({g.B, 5, N}, fopt);
  crf_features_kernel<<<blocks_for(G), kThreads, 0, stream>>>(
      im.data_ptr<uint8_t>(), g.B, g.H, g.W, g.channels, static_cast<float>(gaussian_sxy),
      static_cast<float>(bilateral_sxy), static_cast<float>(bilateral_srgb), fg.data_ptr<float>(),
      fb.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const plc::GpuLattice lat[2] = {plc::build_lattice_cuda(fg), plc::build_lattice_cuda(fb)};
  fg.reset();
  fb.reset();
  const float w[2] = {static_cast<float>(gaussian_compat), static_cast<float>(bilateral_compat)};
  at::Tensor norm = at::empty({2, G}, fopt);
  at::Tensor ones = at::ones({G}, fopt);
  const int64_t mmax = std::max<int64_t>(std::max<int64_t>(lat[0].M, lat[1].M), 1);
  at::Tensor a = at::empty({mmax * L}, fopt);
  at::Tensor b = at::empty({mmax * L}, fopt);
  for (int k = 0; k < 2; ++k)
    plc::lattice_filter_cuda<float, plc::kNorm>(lat[k], 1, false, ones.data_ptr<float>(), nullptr,
                                                norm[k].data_ptr<float>(), nullptr, 0.0f, a.data_ptr<float>(),
                                                b.data_ptr<float>());
  ones.reset();
  const at::Tensor mu = unary.permute({0, 2, 3, 1}).reshape({G, L}).neg().contiguous();
  at::Tensor q = at::empty({G, L}, fopt);
  at::Tensor e = at::empty({G, L}, fopt);
  softmax_kernel<<<blocks_for(G), kThreads, 0, stream>>>(mu.data_ptr<float>(), q.data_ptr<float>(), G, L);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  for (int64_t it = 0; it < iterations; ++it) {
    e.copy_(mu);
    for (int k = 0; k < 2; ++k) {
      const float* nk = norm[k].data_ptr<float>();
      plc::lattice_filter_cuda<float, plc::kCrf>(lat[k], L, false, q.data_ptr<float>(), nk, e.data_ptr<float>(), nk,
                                                 w[k], a.data_ptr<float>(), b.data_ptr<float>());
    }
    softmax_kernel<<<blocks_for(G), kThreads, 0, stream>>>(e.data_ptr<float>(), q.data_ptr<float>(), G, L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return q.view({g.B, g.H, g.W, L}).permute({0, 3, 1, 2}).contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CUDA, m) { m.impl("dense_crf", &dense_crf_cuda); }

}  // namespace wsss_fast
