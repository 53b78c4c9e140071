// CUDA kernels of drop_block2d (DropBlock, Ghiasi et al., NeurIPS 2018).
//
// The mask is built in three small kernels, each thread running one bit-word function of
// common/drop_block2d_common.h (the CPU kernel runs the same functions in loops):
//   hash_setup_kernel: the gap table of the seed draw and the round keys of every map;
//   seed_words_kernel: one 32-bit seed word per thread (geometric-gap draws: 1 + its seeds
//                      hashes, about 1.1 per word at DropBlock's gamma), [M, Hs, nsw];
//   row_words_kernel:  one horizontally dilated row word per thread, [M, Hs, nrw];
//   keep_kernel:       one word of the flat 1-bit keep mask per thread (OR of the row words
//                      of its bs seed rows), plus one atomic per block for the kept count.
// The two intermediates (seed and row words) and the mask are 1 bit (1/8 byte) per element
// each; the seed and p are read from device memory (no host sync). Index arithmetic is
// 32-bit when the mask fits.
// apply_kernel: out = in * (keep ? numel / count : 0), 16-byte vectorized for NCHW; the
// same kernel is the backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <cstdlib>

#include "common/accumulate.h"
#include "common/cuda_utils.cuh"
#include "common/drop_block2d_args.h"
#include "common/drop_block2d_common.h"

namespace wsss_fast {
namespace {

using dropblock::Geometry;

// Grid cap of a grid-stride kernel: per_sm blocks on each SM of the current device.
int64_t sm_blocks(int64_t per_sm) {
  return static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * per_sm;
}

// Seeds from the counter-based hash of (seed tensor, map, position): the gap table T and
// the round keys of every map, written by hash_setup_kernel.
struct HashSeeds {
  const uint64_t* T;  // [kGapTable]
  const uint2* keys;  // [M]: (ka, kb)
  uint32_t ws;
  __device__ dropblock::HashSeedFn map(int64_t m) const {
    const uint2 k = keys[m];
    dropblock::HashSeedFn fn;
    fn.key.ka = k.x;
    fn.key.kb = k.y;
    fn.ws = ws;
    fn.T = T;
    return fn;
  }
};

// keys[m] = map_key(m, seed) for m < M; thread 0 also writes the gap table T from *p (read on
// the device: no host sync).
__global__ void hash_setup_kernel(const int64_t* __restrict__ seed, const double* __restrict__ p,
                                  uint64_t* __restrict__ T, uint2* __restrict__ keys, int64_t M, int64_t H,
                                  int64_t W, int64_t bs, int64_t Hs, int64_t Ws) {
  const uint32_t k0 = static_cast<uint32_t>(seed[0]), k1 = static_cast<uint32_t>(seed[1]);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t m = t0; m < M; m += stride) {
    const dropblock::MapKey k = dropblock::map_key(static_cast<uint32_t>(m), k0, k1);
    keys[m] = make_uint2(k.ka, k.kb);
  }
  if (t0 == 0) dropblock::gap_table(dropblock::seed_gamma(*p, H, W, bs, Hs, Ws), T);
}

// Seeds from an explicit uint8 grid [M, Hs, Ws].
struct TensorSeeds {
  const uint8_t* seeds;
  int64_t Hs, Ws;
  __device__ dropblock::ByteSeedFn map(int64_t m) const { return {seeds + m * Hs * Ws, Ws}; }
};

// S[q, k] for seed row q = m Hs + a and seed word k < nsw.
template <typename I, typename Seeds>
__global__ void seed_words_kernel(Seeds src, uint32_t* __restrict__ S, I n, I Hs, I Ws, I nsw) {
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I t = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; t < n; t += stride) {
    const I q = t / nsw, k = t - q * nsw;
    const I m = q / Hs, a = q - m * Hs;
    S[t] = dropblock::seed_word(src.map(m), a, k, Ws);
  }
}

// R[q, j] for seed row q and output word j < nrw.
template <typename I>
__global__ void row_words_kernel(const uint32_t* __restrict__ S, uint32_t* __restrict__ R, I n, I nsw, I nrw,
                                 I bs, I shift, I W) {
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I t = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; t < n; t += stride) {
    const I q = t / nrw, j = t - q * nrw;
    R[t] = dropblock::row_word(S + static_cast<int64_t>(q) * nsw, nsw, j, bs, shift, W);
  }
}

// K[f] for every word f of the flat [M, H, W] keep mask; adds the kept bits to *count.
template <typename I>
__global__ void keep_kernel(const uint32_t* __restrict__ R, uint32_t* __restrict__ K,
                            unsigned long long* __restrict__ count, I nk, I M, I H, I W, I Hs, I bs, I shift) {
  __shared__ unsigned long long warp_kept[32];
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  unsigned long long kept = 0;
  for (I f = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; f < nk; f += stride) {
    const uint32_t w = dropblock::keep_word<I>(R, f, M, H, W, Hs, bs, shift);
    K[f] = w;
    kept += __popc(w);
  }
  // Block reduction of the kept count, one atomic per block.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  for (int off = 16; off > 0; off >>= 1) kept += __shfl_down_sync(0xffffffffu, kept, off);
  if (lane == 0) warp_kept[warp] = kept;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long total = 0;
    for (int w = 0; w < nwarps; ++w) total += warp_kept[w];
    atomicAdd(count, total);
  }
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// out = in * (keep ? scale : 0). NCHW: element i has mask index (i / (C HW)) HW + i % HW
// (shared mask) or i; vectorized by VEC when HW % VEC == 0 (VEC consecutive elements share
// n, c and, as VEC divides 32, one mask word). Each block covers kUnroll * blockDim.x
// consecutive vectors, and each thread issues its kUnroll loads before any store (the
// layout of PyTorch's vectorized elementwise kernels), keeping more bytes in flight.
constexpr int kUnroll = 4;

template <typename scalar_t, int VEC>
__global__ void apply_nchw_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                  const uint32_t* __restrict__ K, const int64_t* __restrict__ count,
                                  int64_t mask_numel, int64_t nvec, int64_t C, int64_t HW, bool shared) {
  using acc = acc_t<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  const acc scale = static_cast<acc>(dropblock::keep_scale(mask_numel, *count));
  const int64_t v0 = static_cast<int64_t>(blockIdx.x) * blockDim.x * kUnroll + threadIdx.x;
  V x[kUnroll];
  uint32_t bits[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t v = v0 + static_cast<int64_t>(u) * blockDim.x;
    if (v < nvec) {
      const int64_t i = v * VEC;
      const int64_t mi = shared ? (i / (C * HW)) * HW + i % HW : i;
      x[u] = *reinterpret_cast<const V*>(in + i);
      bits[u] = __ldg(K + (mi >> 5)) >> (mi & 31);
    }
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t v = v0 + static_cast<int64_t>(u) * blockDim.x;
    if (v < nvec) {
      V y;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        y.v[j] = static_cast<scalar_t>(static_cast<acc>(x[u].v[j]) * (((bits[u] >> j) & 1u) ? scale : acc(0)));
      }
      *reinterpret_cast<V*>(out + v * VEC) = y;
    }
  }
}

// Channels-last elements (n, hw, c): mask index (n Cm + c') HW + hw.
template <typename scalar_t>
__global__ void apply_nhwc_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                  const uint32_t* __restrict__ K, const int64_t* __restrict__ count,
                                  int64_t mask_numel, int64_t numel, int64_t C, int64_t HW, bool shared) {
  using acc = acc_t<scalar_t>;
  const acc scale = static_cast<acc>(dropblock::keep_scale(mask_numel, *count));
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    const int64_t c = i % C, q = i / C;
    const int64_t n = q / HW, hw = q % HW;
    const int64_t mi = shared ? n * HW + hw : (n * C + c) * HW + hw;
    out[i] = static_cast<scalar_t>(static_cast<acc>(in[i]) * (dropblock::keep_bit(K, mi) ? scale : acc(0)));
  }
}

void launch_apply(const at::Tensor& in, at::Tensor& out, const at::Tensor& mask, const at::Tensor& count,
                  bool shared, at::MemoryFormat fmt) {
  const int64_t numel = in.numel();
  if (numel == 0) return;
  const int64_t C = in.size(1), HW = in.size(2) * in.size(3);
  shared = shared && C != 1;
  const int64_t mask_numel = in.size(0) * (shared ? 1 : C) * HW;
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t max_blocks = sm_blocks(16);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "drop_block2d_cuda_apply", [&] {
    const scalar_t* x = in.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const uint32_t* K = dropblock::words(mask);
    const int64_t* cnt = count.const_data_ptr<int64_t>();
    if (fmt == at::MemoryFormat::Contiguous) {
      constexpr int VEC = 16 / sizeof(scalar_t);
      const bool aligned = HW % VEC == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                           reinterpret_cast<uintptr_t>(y) % 16 == 0;
      const int64_t nvec = aligned ? numel / VEC : numel;
      const int64_t blocks = (nvec + kThreads * kUnroll - 1) / (kThreads * kUnroll);
      TORCH_CHECK(blocks < (int64_t(1) << 31), "drop_block2d: input too large, got ", numel, " elements");
      if (aligned) {
        apply_nchw_kernel<scalar_t, VEC><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
            x, y, K, cnt, mask_numel, nvec, C, HW, shared);
      } else {
        apply_nchw_kernel<scalar_t, 1><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
            x, y, K, cnt, mask_numel, nvec, C, HW, shared);
      }
    } else {
      apply_nhwc_kernel<scalar_t><<<blocks_for(numel, kThreads, max_blocks), kThreads, 0, stream>>>(
          x, y, K, cnt, mask_numel, numel, C, HW, shared);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename I, typename Seeds>
void launch_mask_as(const Seeds& src, const Geometry& g, at::Tensor& mask, at::Tensor& count) {
  const int64_t M = g.N * g.Cm, nsw = dropblock::words_for(g.Ws), nrw = dropblock::words_for(g.W);
  const at::TensorOptions opts = mask.options();
  const at::Tensor S = at::empty({M * g.Hs * nsw}, opts);
  const at::Tensor R = at::empty({M * g.Hs * nrw}, opts);
  uint32_t* Sp = dropblock::words(S);
  uint32_t* Rp = dropblock::words(R);
  uint32_t* Kp = dropblock::words(mask);
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t max_blocks = sm_blocks(32);
  const int64_t ns = M * g.Hs * nsw, nr = M * g.Hs * nrw, nk = mask.numel();
  seed_words_kernel<I, Seeds><<<blocks_for(ns, kThreads, max_blocks), kThreads, 0, stream>>>(
      src, Sp, static_cast<I>(ns), static_cast<I>(g.Hs), static_cast<I>(g.Ws), static_cast<I>(nsw));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  row_words_kernel<I><<<blocks_for(nr, kThreads, max_blocks), kThreads, 0, stream>>>(
      Sp, Rp, static_cast<I>(nr), static_cast<I>(nsw), static_cast<I>(nrw), static_cast<I>(g.bs),
      static_cast<I>(g.shift), static_cast<I>(g.W));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  keep_kernel<I><<<blocks_for(nk, kThreads, max_blocks), kThreads, 0, stream>>>(
      Rp, Kp, reinterpret_cast<unsigned long long*>(count.data_ptr<int64_t>()), static_cast<I>(nk),
      static_cast<I>(M), static_cast<I>(g.H), static_cast<I>(g.W), static_cast<I>(g.Hs), static_cast<I>(g.bs),
      static_cast<I>(g.shift));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// 32-bit indices when M H W < 2^30 (every index, plus a grid stride, stays below 2^31);
// WSSS_FAST_DROPBLOCK_INDEX64=1 forces 64-bit indices (the tests compare both).
template <typename Seeds>
void launch_mask(const Seeds& src, const Geometry& g, at::Tensor& mask, at::Tensor& count) {
  const char* force64 = std::getenv("WSSS_FAST_DROPBLOCK_INDEX64");
  const bool index64 = force64 != nullptr && force64[0] == '1';
  if (!index64 && g.N * g.Cm * g.H * g.W < (int64_t(1) << 30)) {
    launch_mask_as<int32_t>(src, g, mask, count);
  } else {
    launch_mask_as<int64_t>(src, g, mask, count);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> finish(const at::Tensor& x, const Geometry& g, at::Tensor& mask,
                                                      at::Tensor& count) {
  const auto fmt = dropblock::out_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(fmt));
  launch_apply(xc, out, mask, count, g.Cm == 1, fmt);
  return {out, mask, count};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> drop_block2d_cuda(const at::Tensor& x, const at::Tensor& seed,
                                                                const at::Tensor& p, int64_t block_size,
                                                                bool shared_mask, c10::string_view gamma_mode) {
  const Geometry g = dropblock::seed_geometry(x, seed, p, block_size, shared_mask, gamma_mode);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor mask = dropblock::new_mask(x, g);
  at::Tensor count = at::zeros({}, x.options().dtype(at::kLong));
  if (x.numel() == 0) return finish(x, g, mask, count);
  const at::Tensor sd = seed.contiguous();
  const at::Tensor pd = p.reshape({}).to(at::kDouble).contiguous();
  const int64_t M = g.N * g.Cm;
  const at::Tensor table = at::empty({dropblock::kGapTable + M}, x.options().dtype(at::kLong));
  uint64_t* T = reinterpret_cast<uint64_t*>(table.data_ptr<int64_t>());
  uint2* keys = reinterpret_cast<uint2*>(T + dropblock::kGapTable);
  const int64_t max_blocks = sm_blocks(4);
  hash_setup_kernel<<<blocks_for(M, kThreads, max_blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      sd.const_data_ptr<int64_t>(), pd.const_data_ptr<double>(), T, keys, M, g.H, g.W, g.bs, g.Hs, g.Ws);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  HashSeeds src{};
  src.T = T;
  src.keys = keys;
  src.ws = static_cast<uint32_t>(g.Ws);
  launch_mask(src, g, mask, count);
  return finish(x, g, mask, count);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> drop_block2d_from_seeds_cuda(const at::Tensor& x,
                                                                           const at::Tensor& seeds,
                                                                           int64_t block_size,
                                                                           c10::string_view gamma_mode) {
  const Geometry g = dropblock::seeds_tensor_geometry(x, seeds, block_size, gamma_mode);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor mask = dropblock::new_mask(x, g);
  at::Tensor count = at::zeros({}, x.options().dtype(at::kLong));
  if (x.numel() == 0) return finish(x, g, mask, count);
  const at::Tensor sb = seeds.ne(0).to(at::kByte).contiguous();
  TensorSeeds src{};
  src.seeds = sb.const_data_ptr<uint8_t>();
  src.Hs = g.Hs;
  src.Ws = g.Ws;
  launch_mask(src, g, mask, count);
  return finish(x, g, mask, count);
}

at::Tensor drop_block2d_backward_cuda(const at::Tensor& grad, const at::Tensor& mask, const at::Tensor& count,
                                      bool shared_mask) {
  dropblock::check_backward_args(grad, mask, count, shared_mask);
  c10::cuda::CUDAGuard guard(grad.device());
  const auto fmt = dropblock::out_format(grad);
  const at::Tensor gc = grad.contiguous(fmt);
  at::Tensor out = at::empty(grad.sizes(), grad.options().memory_format(fmt));
  launch_apply(gc, out, mask.contiguous(), count.reshape({}).contiguous(), shared_mask, fmt);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CUDA, m) {
  m.impl("drop_block2d", &drop_block2d_cuda);
  m.impl("drop_block2d_from_seeds", &drop_block2d_from_seeds_cuda);
  m.impl("drop_block2d_backward", &drop_block2d_backward_cuda);
}

}  // namespace wsss_fast
