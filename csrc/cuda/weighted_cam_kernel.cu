// CUDA kernels of wsss_fast::weighted_cam (Selvaraju et al., ICCV 2017; Chattopadhay et al.,
// WACV 2018): cam = relu(sum_k w[b, c, k] A[b, k]), then, fused, the bilinear upsampling
// (align_corners=False, ATen's formula) and the per-map min-max normalization.
//  1. wcam_contract_kernel: a block per (b, 32 pixels); its 8 warps split the K channels,
//     4 classes at a time, and reduce in shared memory (fp32 accumulation). The small map
//     cam[b, c, h, w] is the only intermediate.
//  2. wcam_minmax_kernel (normalize only): every output pixel's interpolated value, reduced
//     to the map's min and max with one atomic per block (values are >= 0 after the ReLU, so
//     their bit patterns order like unsigned integers).
//  3. wcam_write_kernel: interpolates again and writes (v - min) / (max - min + 1e-7), cast to
//     the output dtype: the full-size map is written once and never read back.
// Nothing touches the host; everything runs on the current stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <type_traits>

#include "common/accumulate.h"
#include "common/cam_common.h"
#include "common/cuda_utils.cuh"

namespace wsss_fast {
namespace {

constexpr int kCB = 4;       // classes per pass of the contraction
constexpr int kPix = 32;     // pixels per contraction block (one per lane)
constexpr int kSlices = 8;   // K slices per contraction block (one per warp)
constexpr double kNormEps = 1e-7;  // as pytorch-grad-cam's scale_cam_image

template <typename scalar_t>
__global__ void __launch_bounds__(kPix* kSlices)
    wcam_contract_kernel(const scalar_t* __restrict__ A, const scalar_t* __restrict__ W,
                         acc_t<scalar_t>* __restrict__ cam, int64_t C, int64_t K, int64_t HW, int64_t a_sb,
                         int64_t a_sk) {
  using acc = acc_t<scalar_t>;
  __shared__ acc part[kSlices][kCB][kPix + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t b = blockIdx.y;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kPix + tx;
  const bool live = p < HW;
  const scalar_t* a = A + b * a_sb + (live ? p : 0);
  for (int64_t c0 = 0; c0 < C; c0 += kCB) {
    const int nc = static_cast<int>(C - c0 < kCB ? C - c0 : kCB);
    const scalar_t* w = W + (b * C + c0) * K;
    acc s[kCB] = {acc(0), acc(0), acc(0), acc(0)};
    if (live) {
      for (int64_t k = ty; k < K; k += kSlices) {
        const acc av = static_cast<acc>(a[k * a_sk]);
#pragma unroll
        for (int j = 0; j < kCB; ++j) {
          if (j < nc) s[j] += static_cast<acc>(w[j * K + k]) * av;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kCB; ++j) part[ty][j][tx] = s[j];
    __syncthreads();
    if (ty < nc && live) {
      acc t = acc(0);
#pragma unroll
      for (int i = 0; i < kSlices; ++i) t += part[i][ty][tx];
      cam[(b * C + c0 + ty) * HW + p] = t > acc(0) ? t : acc(0);
    }
    __syncthreads();
  }
}

// ATen's upsample_bilinear2d (align_corners=False, output size given): source index
// scale * (dst + 0.5) - 0.5 clamped at 0, with scale = in / out in the accumulation type.
template <typename acc>
struct Bilinear {
  const acc* src;  // [M, h, w]
  int h, w, H, W;
  acc rh, rw;
  __device__ __forceinline__ acc operator()(int64_t m, int y, int x) const {
    const acc* s = src + m * h * w;
    acc hr = rh * (static_cast<acc>(y) + acc(0.5)) - acc(0.5);
    hr = hr < acc(0) ? acc(0) : hr;
    acc wr = rw * (static_cast<acc>(x) + acc(0.5)) - acc(0.5);
    wr = wr < acc(0) ? acc(0) : wr;
    const int h1 = static_cast<int>(hr), w1 = static_cast<int>(wr);
    const int h1p = h1 < h - 1 ? 1 : 0, w1p = w1 < w - 1 ? 1 : 0;
    const acc h1l = hr - static_cast<acc>(h1), w1l = wr - static_cast<acc>(w1);
    const acc h0l = acc(1) - h1l, w0l = acc(1) - w1l;
    const acc* r0 = s + static_cast<int64_t>(h1) * w + w1;
    const acc* r1 = r0 + static_cast<int64_t>(h1p) * w;
    return h0l * (w0l * r0[0] + w1l * r0[w1p]) + h1l * (w0l * r1[0] + w1l * r1[w1p]);
  }
};

template <typename acc>
using bits_t = std::conditional_t<sizeof(acc) == 8, unsigned long long, unsigned int>;

template <typename acc>
__device__ __forceinline__ bits_t<acc> to_bits(acc v) {
  if constexpr (sizeof(acc) == 8) {
    return static_cast<unsigned long long>(__double_as_longlong(v));
  } else {
    return __float_as_uint(v);
  }
}

template <typename acc>
__global__ void wcam_minmax_kernel(Bilinear<acc> f, bits_t<acc>* __restrict__ mn, bits_t<acc>* __restrict__ mx) {
  __shared__ acc s_min[32], s_max[32];
  const int64_t m = blockIdx.y;
  const int64_t n = static_cast<int64_t>(f.H) * f.W;
  acc lo = std::numeric_limits<acc>::infinity(), hi = acc(0);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc v = f(m, static_cast<int>(i / f.W), static_cast<int>(i % f.W));
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  for (int off = 16; off > 0; off >>= 1) {
    const acc l2 = __shfl_xor_sync(0xffffffffu, lo, off), h2 = __shfl_xor_sync(0xffffffffu, hi, off);
    lo = l2 < lo ? l2 : lo;
    hi = h2 > hi ? h2 : hi;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  if (lane == 0) {
    s_min[warp] = lo;
    s_max[warp] = hi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int i = 1; i < nwarps; ++i) {
      lo = s_min[i] < lo ? s_min[i] : lo;
      hi = s_max[i] > hi ? s_max[i] : hi;
    }
    atomicMin(mn + m, to_bits(lo));
    atomicMax(mx + m, to_bits(hi));
  }
}

template <typename acc, typename out_t>
__global__ void wcam_write_kernel(Bilinear<acc> f, const acc* __restrict__ mn, const acc* __restrict__ mx,
                                  out_t* __restrict__ out, bool normalize) {
  const int64_t m = blockIdx.y;
  const int64_t n = static_cast<int64_t>(f.H) * f.W;
  acc lo = acc(0), range = acc(1);
  if (normalize) {  // as the reference: (v - min) / (max - min + eps)
    lo = mn[m];
    range = mx[m] - lo + static_cast<acc>(kNormEps);
  }
  out_t* o = out + m * n;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc v = f(m, static_cast<int>(i / f.W), static_cast<int>(i % f.W));
    o[i] = static_cast<out_t>(normalize ? (v - lo) / range : v);
  }
}

at::Tensor weighted_cam_cuda(const at::Tensor& activations, const at::Tensor& weights,
                             at::OptionalIntArrayRef out_size, bool normalize) {
  check_weighted_cam_args(activations, weights, out_size);
  WSSS_CHECK_CUDA("weighted_cam", "activations", activations);
  const c10::cuda::CUDAGuard guard(activations.device());
  const auto act = with_inner_hw_contiguous(activations);
  const auto w = weights.contiguous();
  const int64_t B = act.size(0), K = act.size(1), h = act.size(2), wd = act.size(3), HW = h * wd, C = w.size(1);
  const auto acc_type = at::toOpMathType(act.scalar_type());
  const int64_t H = out_size.has_value() ? (*out_size)[0] : h, W = out_size.has_value() ? (*out_size)[1] : wd;
  if (B * C == 0 || HW == 0) return at::zeros({B, C, H, W}, act.options());
  auto cam = at::empty({B, C, h, wd}, act.options().dtype(acc_type));
  TORCH_CHECK(B <= 65535 && B * C <= 65535, "weighted_cam: at most 65535 images and 65535 maps on CUDA, got B=", B,
              ", B*C=", B * C);
  TORCH_CHECK(H <= INT32_MAX && W <= INT32_MAX, "weighted_cam: out_size too large, got ", H, " x ", W);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, act.scalar_type(), "weighted_cam_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const dim3 grid(static_cast<unsigned>((HW + kPix - 1) / kPix), static_cast<unsigned>(B));
    wcam_contract_kernel<scalar_t><<<grid, dim3(kPix, kSlices), 0, stream>>>(
        act.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), cam.mutable_data_ptr<acc>(), C, K, HW,
        act.stride(0), act.stride(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (!normalize && !out_size.has_value()) return cam.to(act.scalar_type());

  auto out = at::empty({B, C, H, W}, act.options());
  const int64_t M = B * C, n = H * W;
  const unsigned per_map = static_cast<unsigned>(std::min<int64_t>(
      std::max<int64_t>(1, 4 * at::cuda::getCurrentDeviceProperties()->multiProcessorCount / M),
      (n + kThreads - 1) / kThreads));
  const dim3 grid(per_map, static_cast<unsigned>(M));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, act.scalar_type(), "weighted_cam_cuda_post", [&] {
    using acc = acc_t<scalar_t>;
    // at::upsample_bilinear2d's scales: in / out in the accumulation type (1 for no resize).
    Bilinear<acc> f{cam.const_data_ptr<acc>(), static_cast<int>(h), static_cast<int>(wd), static_cast<int>(H),
                    static_cast<int>(W), static_cast<acc>(h) / static_cast<acc>(H),
                    static_cast<acc>(wd) / static_cast<acc>(W)};
    at::Tensor mn, mx;
    if (normalize) {
      mn = at::full({M}, std::numeric_limits<acc>::infinity(), cam.options());
      mx = at::zeros({M}, cam.options());
      wcam_minmax_kernel<acc><<<grid, kThreads, 0, stream>>>(
          f, reinterpret_cast<bits_t<acc>*>(mn.mutable_data_ptr<acc>()),
          reinterpret_cast<bits_t<acc>*>(mx.mutable_data_ptr<acc>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    wcam_write_kernel<acc, scalar_t><<<grid, kThreads, 0, stream>>>(
        f, normalize ? mn.const_data_ptr<acc>() : nullptr, normalize ? mx.const_data_ptr<acc>() : nullptr,
        out.mutable_data_ptr<scalar_t>(), normalize);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CUDA, m) { m.impl("weighted_cam", &weighted_cam_cuda); }

}  // namespace wsss_fast
