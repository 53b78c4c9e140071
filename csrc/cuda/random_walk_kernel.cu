// CUDA kernels of IRNet's random walk as a sparse stencil.
//  1. rw_weights_kernel: per pixel j, the (2D + 1) weights A[j+o, j]^beta / sum_i A[i, j]^beta
//     (path maxima recomputed in place, powers and sums in double, stored as float).
//  2. rw_steps_kernel: many steps in ONE cooperative launch. Each block owns 32x4-pixel tiles
//     of CB channels; per step it stages the tile plus halo of x_k in shared memory, computes
//     x_{k+1} for its pixels (fp32 FMAs in chunks of 8 disk points, chunks summed in double),
//     writes it to the other zero-padded global buffer and the grid synchronizes. When every
//     tile has its own resident block, the tile's weights stay in shared memory for all steps.
//     Without cooperative launch support it falls back to one launch per step.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <cooperative_groups.h>
#include <torch/library.h>

#include "common/accumulate.h"
#include "common/cuda_utils.cuh"
#include "common/irnet_checks.h"
#include "cuda/irnet_paths_cuda.cuh"

namespace cg = cooperative_groups;

namespace wsss_fast {
namespace {

constexpr int kTW = 32, kTH = 4, kTileThreads = kTW * kTH, kChunk = 8;

struct RwGeom {
  int B, C, Cp, nCB, H, W, R, Hp, Wp, K, D, tiles_x, tiles_y;
  int64_t n_tiles, plane, HW;
};

__global__ void rw_weights_kernel(const float* __restrict__ e, float* __restrict__ wts,
                                  const int* __restrict__ table, RwGeom g, double beta) {
  const int* start = table;
  const int* py = table + g.D + 1;
  const int* px = py + table[g.D];
  const int64_t total = static_cast<int64_t>(g.B) * g.HW;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / g.HW;
    const int j = static_cast<int>(i % g.HW);
    const int y = j / g.W, x = j % g.W;
    const float* eb = e + b * g.HW;
    float* wb = wts + b * g.K * g.HW + j;
    int64_t arg;
    // pass 0: column sum; pass 1: normalized weights.
    double s = 1.0;
    for (int pass = 0; pass < 2; ++pass) {
      const double inv = 1.0 / s;
      if (pass == 1) wb[0] = static_cast<float>(inv);
      for (int d = 0; d < g.D; ++d) {
        const int dy = py[start[d]], dx = px[start[d]];  // the first path point is the destination
        double wf = 0.0, wr = 0.0;
        if (y + dy < g.H && x + dx >= 0 && x + dx < g.W)
          wf = pow(1.0 - static_cast<double>(path_max<float>(eb, g.H, g.W, y, x, start, py, px, d, &arg)), beta);
        if (y - dy >= 0 && x - dx >= 0 && x - dx < g.W)
          wr = pow(1.0 - static_cast<double>(path_max<float>(eb, g.H, g.W, y - dy, x - dx, start, py, px, d, &arg)),
                   beta);
        if (pass == 0) {
          s += wf + wr;
        } else {
          wb[static_cast<int64_t>(1 + d) * g.HW] = static_cast<float>(wf * inv);
          wb[static_cast<int64_t>(1 + g.D + d) * g.HW] = static_cast<float>(wr * inv);
        }
      }
    }
  }
}

// x0 = x * (1 - e) (or x when mask is false) into the interior of the zero-padded buffer
// [B, Cp, Hp, Wp].
template <typename scalar_t>
__global__ void rw_init_kernel(const scalar_t* __restrict__ x, const float* __restrict__ e,
                               float* __restrict__ buf, RwGeom g, bool mask) {
  const int64_t total = static_cast<int64_t>(g.B) * g.C * g.HW;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int j = static_cast<int>(i % g.HW);
    const int64_t bc = i / g.HW;
    const int64_t b = bc / g.C, c = bc % g.C;
    const int y = j / g.W, xx = j % g.W;
    buf[(b * g.Cp + c) * g.plane + static_cast<int64_t>(y + g.R) * g.Wp + xx + g.R] =
        mask ? static_cast<float>(x[i]) * (1.0f - e[b * g.HW + j]) : static_cast<float>(x[i]);
  }
}

template <typename scalar_t>
__global__ void rw_output_kernel(const float* __restrict__ buf, scalar_t* __restrict__ out, RwGeom g) {
  const int64_t total = static_cast<int64_t>(g.B) * g.C * g.HW;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int j = static_cast<int>(i % g.HW);
    const int64_t bc = i / g.HW;
    const int64_t b = bc / g.C, c = bc % g.C;
    const int y = j / g.W, xx = j % g.W;
    out[i] = static_cast<scalar_t>(
        __ldcg(buf + (b * g.Cp + c) * g.plane + static_cast<int64_t>(y + g.R) * g.Wp + xx + g.R));
  }
}

template <int CB, bool CACHE_W>
__global__ void __launch_bounds__(kTileThreads)
    rw_steps_kernel(const float* __restrict__ wts, float* buf0, float* buf1, const int* __restrict__ stencil,
                    RwGeom g, int nsteps, int64_t step0) {
  extern __shared__ float smem[];
  const int SW = kTW + 2 * g.R, SH = kTH + 2 * g.R, tile_elems = SH * SW;
  int* s_off = reinterpret_cast<int*>(smem);
  float* s_x = smem + g.K;
  float* s_w = s_x + CB * tile_elems;
  const int tid = threadIdx.y * kTW + threadIdx.x;
  for (int k = tid; k < g.K; k += kTileThreads) s_off[k] = stencil[2 * k] * SW + stencil[2 * k + 1];
  const int64_t tiles_per_b = static_cast<int64_t>(g.nCB) * g.tiles_y * g.tiles_x;
  if (CACHE_W) {  // one tile per block (the launch guarantees it)
    const int64_t tile = blockIdx.x;
    const int64_t b = tile / tiles_per_b;
    const int64_t rem = tile % (static_cast<int64_t>(g.tiles_y) * g.tiles_x);
    const int y = static_cast<int>(rem / g.tiles_x) * kTH + threadIdx.y;
    const int x = static_cast<int>(rem % g.tiles_x) * kTW + threadIdx.x;
    const bool inside = y < g.H && x < g.W;
    const float* wp = wts + b * g.K * g.HW + (inside ? static_cast<int64_t>(y) * g.W + x : 0);
    for (int k = 0; k < g.K; ++k) s_w[k * kTileThreads + tid] = inside ? __ldg(wp + k * g.HW) : 0.0f;
  }
  __syncthreads();
  const int center = (threadIdx.y + g.R) * SW + threadIdx.x + g.R;
  for (int s = 0; s < nsteps; ++s) {
    const bool odd = ((step0 + s) & 1) != 0;
    const float* src = odd ? buf1 : buf0;
    float* dst = odd ? buf0 : buf1;
    for (int64_t tile = blockIdx.x; tile < g.n_tiles; tile += gridDim.x) {
      const int64_t b = tile / tiles_per_b;
      const int cb = static_cast<int>((tile / (static_cast<int64_t>(g.tiles_y) * g.tiles_x)) % g.nCB);
      const int64_t rem = tile % (static_cast<int64_t>(g.tiles_y) * g.tiles_x);
      const int ty0 = static_cast<int>(rem / g.tiles_x) * kTH, tx0 = static_cast<int>(rem % g.tiles_x) * kTW;
      const int64_t plane0 = (b * g.Cp + static_cast<int64_t>(cb) * CB) * g.plane;
      // Stage the tile and its halo (padded coordinates) in shared memory. __ldcg: other
      // blocks wrote these values in the previous step, so bypass the (incoherent) L1.
      for (int i = tid; i < tile_elems; i += kTileThreads) {
        const int pr = ty0 + i / SW, pc = tx0 + i % SW;
        const bool ok = pr < g.Hp && pc < g.Wp;
        const int64_t o = plane0 + static_cast<int64_t>(pr) * g.Wp + pc;
#pragma unroll
        for (int ci = 0; ci < CB; ++ci) s_x[ci * tile_elems + i] = ok ? __ldcg(src + o + ci * g.plane) : 0.0f;
      }
      __syncthreads();
      const int y = ty0 + threadIdx.y, x = tx0 + threadIdx.x;
      if (y < g.H && x < g.W) {
        double acc[CB];
#pragma unroll
        for (int ci = 0; ci < CB; ++ci) acc[ci] = 0.0;
        const float* wp = wts + b * g.K * g.HW + static_cast<int64_t>(y) * g.W + x;
        for (int k0 = 0; k0 < g.K; k0 += kChunk) {
          float part[CB];
#pragma unroll
          for (int ci = 0; ci < CB; ++ci) part[ci] = 0.0f;
          const int k1 = min(k0 + kChunk, g.K);
          for (int k = k0; k < k1; ++k) {
            const float w = CACHE_W ? s_w[k * kTileThreads + tid] : __ldg(wp + k * g.HW);
            const int o = center + s_off[k];
#pragma unroll
            for (int ci = 0; ci < CB; ++ci) part[ci] = fmaf(w, s_x[ci * tile_elems + o], part[ci]);
          }
#pragma unroll
          for (int ci = 0; ci < CB; ++ci) acc[ci] += static_cast<double>(part[ci]);
        }
        float* dp = dst + plane0 + static_cast<int64_t>(y + g.R) * g.Wp + x + g.R;
#pragma unroll
        for (int ci = 0; ci < CB; ++ci) dp[ci * g.plane] = static_cast<float>(acc[ci]);
      }
      __syncthreads();
    }
    if (s + 1 < nsteps) cg::this_grid().sync();
  }
}

template <int CB>
void launch_steps(const at::Tensor& wts, at::Tensor& buf0, at::Tensor& buf1, const at::Tensor& stencil,
                  const RwGeom& g, int64_t steps) {
  const auto* props = at::cuda::getCurrentDeviceProperties();
  auto stream = at::cuda::getCurrentCUDAStream();
  const int SW = kTW + 2 * g.R, SH = kTH + 2 * g.R;
  const size_t smem_base = sizeof(float) * (static_cast<size_t>(g.K) + static_cast<size_t>(CB) * SH * SW);
  const size_t smem_cache = smem_base + sizeof(float) * static_cast<size_t>(g.K) * kTileThreads;
  const size_t optin = props->sharedMemPerBlockOptin;
  TORCH_CHECK(smem_base <= optin, "random_walk: radius ", g.R + 1, " needs ", smem_base,
              " bytes of shared memory per block on CUDA, more than the device's ", optin,
              "; use a smaller radius or the CPU");
  const dim3 block(kTW, kTH);
  const float* w = wts.data_ptr<float>();
  float* b0 = buf0.data_ptr<float>();
  float* b1 = buf1.data_ptr<float>();
  const int* st = stencil.data_ptr<int>();
  const bool coop = props->cooperativeLaunch != 0 && steps > 1 && steps <= INT32_MAX;
  if (coop && smem_cache <= optin) {
    auto kernel = rw_steps_kernel<CB, true>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem_cache)));
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kTileThreads, smem_cache));
    if (static_cast<int64_t>(per_sm) * props->multiProcessorCount >= g.n_tiles) {
      int nsteps = static_cast<int>(steps);
      int64_t step0 = 0;
      RwGeom geom = g;
      void* args[] = {(void*)&w, (void*)&b0, (void*)&b1, (void*)&st, (void*)&geom, (void*)&nsteps, (void*)&step0};
      C10_CUDA_CHECK(cudaLaunchCooperativeKernel((const void*)kernel, dim3(static_cast<unsigned>(g.n_tiles)),
                                                 block, args, smem_cache, stream));
      return;
    }
  }
  auto kernel = rw_steps_kernel<CB, false>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem_base)));
  if (coop) {
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kTileThreads, smem_base));
    const int64_t resident = static_cast<int64_t>(per_sm) * props->multiProcessorCount;
    if (resident > 0) {
      const unsigned grid = static_cast<unsigned>(std::min<int64_t>(g.n_tiles, resident));
      int nsteps = static_cast<int>(steps);
      int64_t step0 = 0;
      RwGeom geom = g;
      void* args[] = {(void*)&w, (void*)&b0, (void*)&b1, (void*)&st, (void*)&geom, (void*)&nsteps, (void*)&step0};
      C10_CUDA_CHECK(cudaLaunchCooperativeKernel((const void*)kernel, dim3(grid), block, args, smem_base, stream));
      return;
    }
  }
  // No cooperative launch: one launch per step (no grid synchronization inside).
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(g.n_tiles, 65535LL * 64));
  for (int64_t s = 0; s < steps; ++s) {
    rw_steps_kernel<CB, false><<<grid, block, smem_base, stream>>>(w, b0, b1, st, g, 1, s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

at::Tensor random_walk_cuda(const at::Tensor& x, const at::Tensor& edge, int64_t radius, double beta,
                            int64_t steps, bool mask_edge) {
  const char* op = "random_walk";
  check_random_walk_args(x, radius, beta, steps);
  WSSS_CHECK_CUDA("random_walk", "x", x);
  WSSS_CHECK_SAME_DEVICE("random_walk", "x", x, "edge", edge);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor e3 = random_walk_edge(x, edge);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              op, ": x must be float32, float16 or bfloat16 on CUDA, got ", x.scalar_type());
  if (steps == 0 || x.numel() == 0)
    return mask_edge ? (x * (1 - e3.to(x.scalar_type()).unsqueeze(1))).contiguous()
                     : x.clone(at::MemoryFormat::Contiguous);

  const IrnetPaths P = make_irnet_paths(radius);
  RwGeom g{};
  g.B = static_cast<int>(x.size(0));
  g.C = static_cast<int>(x.size(1));
  g.H = static_cast<int>(x.size(2));
  g.W = static_cast<int>(x.size(3));
  g.D = static_cast<int>(P.num_offsets());
  g.K = 2 * g.D + 1;
  g.R = static_cast<int>(radius) - 1;
  g.Hp = g.H + 2 * g.R;
  g.Wp = g.W + 2 * g.R;
  g.plane = static_cast<int64_t>(g.Hp) * g.Wp;
  g.HW = static_cast<int64_t>(g.H) * g.W;
  const int CB = g.C >= 4 ? 4 : (g.C >= 2 ? 2 : 1);
  g.nCB = (g.C + CB - 1) / CB;
  g.Cp = g.nCB * CB;
  g.tiles_x = (g.W + kTW - 1) / kTW;
  g.tiles_y = (g.H + kTH - 1) / kTH;
  g.n_tiles = static_cast<int64_t>(g.B) * g.nCB * g.tiles_y * g.tiles_x;

  const at::Tensor e = e3.to(at::kFloat).contiguous();
  const at::Tensor xc = x.contiguous();
  const auto fopt = x.options().dtype(at::kFloat);
  at::Tensor wts = at::empty({g.B, g.K, g.H, g.W}, fopt);
  at::Tensor buf0 = at::zeros({g.B, g.Cp, g.Hp, g.Wp}, fopt);
  at::Tensor buf1 = at::zeros({g.B, g.Cp, g.Hp, g.Wp}, fopt);
  // Stencil (dy, dx): the pixel itself, the half disk, its mirror.
  std::vector<int> st_host(2 * static_cast<size_t>(g.K));
  for (int d = 0; d < g.D; ++d) {
    st_host[2 * (1 + d)] = P.dy[d];
    st_host[2 * (1 + d) + 1] = P.dx[d];
    st_host[2 * (1 + g.D + d)] = -P.dy[d];
    st_host[2 * (1 + g.D + d) + 1] = -P.dx[d];
  }
  at::Tensor st_cpu = at::empty({2 * g.K}, at::TensorOptions().dtype(at::kInt));
  std::copy(st_host.begin(), st_host.end(), st_cpu.data_ptr<int>());
  const at::Tensor stencil = st_cpu.to(x.device(), /*non_blocking=*/false);
  const at::Tensor table = irnet_path_table_cuda(P, x.device());

  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t n_pix = static_cast<int64_t>(g.B) * g.HW;
  rw_weights_kernel<<<blocks_for(n_pix, 128), 128, 0, stream>>>(e.data_ptr<float>(), wts.data_ptr<float>(),
                                                                table.data_ptr<int>(), g, beta);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor out = at::empty_like(xc);
  const int64_t n_x = xc.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "random_walk_cuda_init", [&] {
    rw_init_kernel<scalar_t><<<blocks_for(n_x), kThreads, 0, stream>>>(xc.data_ptr<scalar_t>(),
                                                                       e.data_ptr<float>(), buf0.data_ptr<float>(), g,
                                                                       mask_edge);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (CB == 4) {
    launch_steps<4>(wts, buf0, buf1, stencil, g, steps);
  } else if (CB == 2) {
    launch_steps<2>(wts, buf0, buf1, stencil, g, steps);
  } else {
    launch_steps<1>(wts, buf0, buf1, stencil, g, steps);
  }
  const at::Tensor& res = (steps & 1) ? buf1 : buf0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "random_walk_cuda_out", [&] {
    rw_output_kernel<scalar_t><<<blocks_for(n_x), kThreads, 0, stream>>>(res.data_ptr<float>(),
                                                                         out.data_ptr<scalar_t>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CUDA, m) { m.impl("random_walk", &random_walk_cuda); }

}  // namespace wsss_fast
