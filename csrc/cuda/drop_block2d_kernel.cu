// CUDA kernels of drop_block2d (DropBlock, Ghiasi et al., NeurIPS 2018).
//
// mask_kernel: one block per (map, band of TH rows, strip of BW <= 256 columns). Walking
// down the seed rows of the band, the block hashes each seed row once (its strip plus a
// bs - 1 halo) into a bit row (warp ballots into shared memory), every thread tests the
// bs-wide window of its column in the bit row (word operations), and keeps the last seed
// row that hit its column; output row r is dropped iff that row is within the vertical
// window. O(1) state per thread for any block size; hashing overhead ~(1 + bs/TH)(1 + bs/BW).
// It writes the uint8 keep mask and adds the block's kept count to a global int64 with
// one atomic. The seed and p are read from device memory (no host sync).
// apply_kernel: out = in * (mask ? numel / count : 0), 16-byte vectorized for NCHW; the
// same kernel is the backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <climits>

#include "common/accumulate.h"
#include "common/cuda_utils.cuh"
#include "common/drop_block2d_args.h"
#include "common/drop_block2d_common.h"

namespace wsss_fast {
namespace {

using dropblock::Geometry;

std::string_view sv(c10::string_view s) { return std::string_view(s.data(), s.size()); }

// Seeds from the counter-based hash of (seed tensor, map, position).
struct HashSeeds {
  const int64_t* seed;
  const double* p;
  int64_t H, W, bs;
  __device__ void init(int64_t m, int64_t Hs, int64_t Ws) {
    k0 = static_cast<uint32_t>(seed[0]);
    k1 = static_cast<uint32_t>(seed[1]);
    key = dropblock::map_key(static_cast<uint32_t>(m), k0, k1);
    thresh = dropblock::seed_threshold(*p, H, W, bs, Hs, Ws);
    ws = static_cast<uint32_t>(Ws);
  }
  __device__ bool operator()(int64_t a, int64_t b) const {
    return static_cast<uint64_t>(dropblock::pos_hash(static_cast<uint32_t>(a) * ws + static_cast<uint32_t>(b), key)) <
           thresh;
  }
  uint32_t k0, k1, ws;
  dropblock::MapKey key;
  uint64_t thresh;
};

// Seeds from an explicit uint8 grid [M, Hs, Ws].
struct TensorSeeds {
  const uint8_t* seeds;
  __device__ void init(int64_t m, int64_t Hs, int64_t Ws) {
    base = seeds + m * Hs * Ws;
    ws = Ws;
  }
  __device__ bool operator()(int64_t a, int64_t b) const { return base[a * ws + b] != 0; }
  const uint8_t* base;
  int64_t ws;
};

template <typename Seeds>
__global__ void mask_kernel(Seeds src, uint8_t* __restrict__ mask, unsigned long long* __restrict__ count,
                            int64_t H, int64_t W, int64_t Hs, int64_t Ws, int bs, int shift, int TH,
                            int64_t tiles_y, int64_t tiles_x, int nwords) {
  extern __shared__ uint32_t words[];  // 2 x nwords, double-buffered bit rows
  __shared__ unsigned long long warp_kept[32];
  const int BW = blockDim.x;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = (BW + 31) >> 5;
  int64_t t = blockIdx.x;
  const int64_t tx = t % tiles_x;
  t /= tiles_x;
  const int64_t ty = t % tiles_y;
  const int64_t m = t / tiles_y;
  src.init(m, Hs, Ws);

  const int64_t r0 = ty * TH;
  const int64_t r_end = (r0 + TH < H ? r0 + TH : H) - 1;
  const int64_t c0 = tx * BW, c = c0 + tid;
  const int64_t b_start = c0 - bs + 1 + shift;  // seed column of bit 0
  const int nbits = BW + bs - 1;
  const int nchunks = (nbits + 31) >> 5;
  // Window of this thread's column in the bit row: bits [tid, tid + bs - 1].
  const int s_bit = tid, e_bit = tid + bs - 1;
  const int ws_ = s_bit >> 5, we_ = e_bit >> 5;
  const uint32_t lo_mask = ~0u << (s_bit & 31);
  const uint32_t hi_mask = ~0u >> (31 - (e_bit & 31));

  int last = INT_MIN / 2;  // last seed row (relative to r0) whose bit row hit this column
  unsigned int kept = 0;
  uint8_t* mrow = mask + m * H * W;
  const int64_t a_first = r0 - bs + 1 + shift;
  const int64_t a_begin = a_first > 0 ? a_first : 0;
  const int64_t a_stop = r_end + shift;
  int buf = 0;
  for (int64_t a = a_begin; a <= a_stop; ++a) {
    if (a < Hs) {  // block-uniform
      uint32_t* wrow = words + buf * nwords;
      for (int ch = warp; ch < nchunks; ch += nwarps) {
        const int bit = (ch << 5) + lane;
        const int64_t b = b_start + bit;
        const bool v = bit < nbits && b >= 0 && b < Ws && src(a, b);
        const uint32_t bal = __ballot_sync(0xffffffffu, v);
        if (lane == 0) wrow[ch] = bal;
      }
      __syncthreads();
      uint32_t hit;
      if (ws_ == we_) {
        hit = wrow[ws_] & lo_mask & hi_mask;
      } else {
        hit = (wrow[ws_] & lo_mask) | (wrow[we_] & hi_mask);
        for (int w = ws_ + 1; w < we_ && !hit; ++w) hit |= wrow[w];
      }
      if (hit) last = static_cast<int>(a - r0);
      buf ^= 1;
    }
    const int64_t r = a - shift;
    if (r >= r0 && c < W) {
      const uint8_t keep = last < static_cast<int>(a - r0) - bs + 1;
      mrow[r * W + c] = keep;
      kept += keep;
    }
  }
  // Block reduction of the kept count, one atomic per block.
  unsigned long long k = kept;
  for (int off = 16; off > 0; off >>= 1) k += __shfl_down_sync(0xffffffffu, k, off);
  if (lane == 0) warp_kept[warp] = k;
  __syncthreads();
  if (tid == 0) {
    unsigned long long total = 0;
    for (int w = 0; w < nwarps; ++w) total += warp_kept[w];
    atomicAdd(count, total);
  }
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// out = in * (mask ? scale : 0). NCHW: element i has mask index (i / (C HW)) Cm HW + ...;
// vectorized by VEC when HW % VEC == 0 (VEC consecutive elements share n, c).
template <typename scalar_t, int VEC>
__global__ void apply_nchw_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                  const uint8_t* __restrict__ mask, const int64_t* __restrict__ count,
                                  int64_t mask_numel, int64_t nvec, int64_t C, int64_t HW, bool shared) {
  using acc = acc_t<scalar_t>;
  const acc scale = static_cast<acc>(dropblock::keep_scale(mask_numel, *count));
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec; v += stride) {
    const int64_t i = v * VEC;
    const int64_t mi = shared ? (i / (C * HW)) * HW + i % HW : i;
    const Vec<scalar_t, VEC> x = *reinterpret_cast<const Vec<scalar_t, VEC>*>(in + i);
    const Vec<uint8_t, VEC> mk = *reinterpret_cast<const Vec<uint8_t, VEC>*>(mask + mi);
    Vec<scalar_t, VEC> y;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      y.v[j] = static_cast<scalar_t>(static_cast<acc>(x.v[j]) * (mk.v[j] ? scale : acc(0)));
    }
    *reinterpret_cast<Vec<scalar_t, VEC>*>(out + i) = y;
  }
}

// Channels-last elements (n, hw, c): mask index (n Cm + c') HW + hw.
template <typename scalar_t>
__global__ void apply_nhwc_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                  const uint8_t* __restrict__ mask, const int64_t* __restrict__ count,
                                  int64_t mask_numel, int64_t numel, int64_t C, int64_t HW, bool shared) {
  using acc = acc_t<scalar_t>;
  const acc scale = static_cast<acc>(dropblock::keep_scale(mask_numel, *count));
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    const int64_t c = i % C, q = i / C;
    const int64_t n = q / HW, hw = q % HW;
    const int64_t mi = shared ? n * HW + hw : (n * C + c) * HW + hw;
    out[i] = static_cast<scalar_t>(static_cast<acc>(in[i]) * (mask[mi] ? scale : acc(0)));
  }
}

void launch_apply(const at::Tensor& in, at::Tensor& out, const at::Tensor& mask, const at::Tensor& count,
                  at::MemoryFormat fmt) {
  const int64_t numel = in.numel();
  if (numel == 0) return;
  const int64_t C = in.size(1), HW = in.size(2) * in.size(3);
  const bool shared = mask.size(1) == 1 && C != 1;
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t max_blocks = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 16;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "drop_block2d_cuda_apply", [&] {
    const scalar_t* x = in.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const uint8_t* mk = mask.const_data_ptr<uint8_t>();
    const int64_t* cnt = count.const_data_ptr<int64_t>();
    if (fmt == at::MemoryFormat::Contiguous) {
      constexpr int VEC = 16 / sizeof(scalar_t);
      const bool aligned = HW % VEC == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                           reinterpret_cast<uintptr_t>(y) % 16 == 0 && reinterpret_cast<uintptr_t>(mk) % VEC == 0;
      if (aligned) {
        const int64_t nvec = numel / VEC;
        apply_nchw_kernel<scalar_t, VEC><<<blocks_for(nvec, kThreads, max_blocks), kThreads, 0, stream>>>(
            x, y, mk, cnt, mask.numel(), nvec, C, HW, shared);
      } else {
        apply_nchw_kernel<scalar_t, 1><<<blocks_for(numel, kThreads, max_blocks), kThreads, 0, stream>>>(
            x, y, mk, cnt, mask.numel(), numel, C, HW, shared);
      }
    } else {
      apply_nhwc_kernel<scalar_t><<<blocks_for(numel, kThreads, max_blocks), kThreads, 0, stream>>>(
          x, y, mk, cnt, mask.numel(), numel, C, HW, shared);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename Seeds>
void launch_mask(const Seeds& src, const Geometry& g, at::Tensor& mask, at::Tensor& count) {
  const int64_t M = g.N * g.Cm;
  const int BW = static_cast<int>(std::min<int64_t>(256, (g.W + 31) / 32 * 32));
  const int TH = static_cast<int>(std::min<int64_t>(g.H, std::max<int64_t>(64, 2 * g.bs)));
  const int64_t tiles_x = (g.W + BW - 1) / BW, tiles_y = (g.H + TH - 1) / TH;
  const int nwords = static_cast<int>((BW + g.bs - 1 + 31) / 32);
  const size_t smem = 2 * static_cast<size_t>(nwords) * sizeof(uint32_t);
  TORCH_CHECK(smem <= 48 * 1024, "drop_block2d: block_size ", g.bs, " is too large for the CUDA kernel");
  const int64_t blocks = M * tiles_y * tiles_x;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "drop_block2d: input too large, got ", blocks, " tiles");
  mask_kernel<Seeds><<<static_cast<unsigned int>(blocks), BW, smem, at::cuda::getCurrentCUDAStream()>>>(
      src, mask.data_ptr<uint8_t>(), reinterpret_cast<unsigned long long*>(count.data_ptr<int64_t>()), g.H, g.W,
      g.Hs, g.Ws, static_cast<int>(g.bs), static_cast<int>(g.shift), TH, tiles_y, tiles_x, nwords);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> finish(const at::Tensor& x, at::Tensor& mask, at::Tensor& count) {
  const auto fmt = dropblock::out_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(fmt));
  launch_apply(xc, out, mask, count, fmt);
  return {out, mask, count};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> drop_block2d_cuda(const at::Tensor& x, const at::Tensor& seed,
                                                                const at::Tensor& p, int64_t block_size,
                                                                bool shared_mask, c10::string_view gamma_mode) {
  const bool paper = dropblock::is_paper("drop_block2d", sv(gamma_mode));
  const Geometry g = dropblock::make_geometry(x, block_size, shared_mask, paper, "drop_block2d");
  dropblock::check_seed_args(x, seed, p);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor mask = at::empty({g.N, g.Cm, g.H, g.W}, x.options().dtype(at::kByte));
  at::Tensor count = at::zeros({}, x.options().dtype(at::kLong));
  if (x.numel() == 0) return finish(x, mask, count);
  const at::Tensor sd = seed.contiguous();
  const at::Tensor pd = p.reshape({}).to(at::kDouble).contiguous();
  HashSeeds src{};
  src.seed = sd.const_data_ptr<int64_t>();
  src.p = pd.const_data_ptr<double>();
  src.H = g.H;
  src.W = g.W;
  src.bs = g.bs;
  launch_mask(src, g, mask, count);
  return finish(x, mask, count);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> drop_block2d_from_seeds_cuda(const at::Tensor& x,
                                                                           const at::Tensor& seeds,
                                                                           int64_t block_size,
                                                                           c10::string_view gamma_mode) {
  const bool paper = dropblock::is_paper("drop_block2d_from_seeds", sv(gamma_mode));
  const bool shared = seeds.dim() == 4 && seeds.size(1) == 1;
  const Geometry g = dropblock::make_geometry(x, block_size, shared, paper, "drop_block2d_from_seeds");
  dropblock::check_seeds_tensor(x, seeds, g);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor mask = at::empty({g.N, g.Cm, g.H, g.W}, x.options().dtype(at::kByte));
  at::Tensor count = at::zeros({}, x.options().dtype(at::kLong));
  if (x.numel() == 0) return finish(x, mask, count);
  const at::Tensor sb = seeds.ne(0).to(at::kByte).contiguous();
  TensorSeeds src{};
  src.seeds = sb.const_data_ptr<uint8_t>();
  launch_mask(src, g, mask, count);
  return finish(x, mask, count);
}

at::Tensor drop_block2d_backward_cuda(const at::Tensor& grad, const at::Tensor& mask, const at::Tensor& count) {
  dropblock::check_backward_args(grad, mask, count);
  c10::cuda::CUDAGuard guard(grad.device());
  const auto fmt = dropblock::out_format(grad);
  const at::Tensor gc = grad.contiguous(fmt);
  at::Tensor out = at::empty(grad.sizes(), grad.options().memory_format(fmt));
  launch_apply(gc, out, mask.contiguous(), count.reshape({}).contiguous(), fmt);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CUDA, m) {
  m.impl("drop_block2d", &drop_block2d_cuda);
  m.impl("drop_block2d_from_seeds", &drop_block2d_from_seeds_cuda);
  m.impl("drop_block2d_backward", &drop_block2d_backward_cuda);
}

}  // namespace wsss_fast
