// CUDA permutohedral lattice of a whole batch, shared by permutohedral_filter and dense_crf.
//
// build_lattice_cuda(): one lattice for all B images (the hash key includes the image):
//   1. locate_kernel     per pixel: simplex (rem0, rank) and barycentric weights
//                        (common/permutohedral.h, float ops rounded as on the CPU);
//   2. insert_kernel     per point (pixel, remainder): lock-free insertion into an open-addressing
//                        table whose slots hold a representative point (atomicCAS); keys are
//                        recomputed from the representative's simplex, so nothing races;
//   3. number_kernel     representatives draw dense vertex ids (atomicAdd);
//   4. vid_kernel        every point reads its vertex id;
//   5. neighbour_kernel  per vertex and axis, the two blur neighbours (read-only lookups);
//   6. CSR               points sorted stably by vertex: each vertex's splat sums its points in
//                        point order, the CPU kernel's (and pydensecrf's) order, so the result
//                        does not depend on the order in which threads won the table.
// lattice_filter_cuda(): splat (gather per vertex and channel) -> blur along the d + 1 axes ->
//   slice, with the CPU kernel's float operations (explicitly rounded, no FMA contraction).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include <cstdint>

#include "common/cuda_utils.cuh"
#include "common/permutohedral.h"

namespace wsss_fast {
namespace plc {

template <typename T>
__device__ __forceinline__ T rmul(T a, T b);
template <>
__device__ __forceinline__ float rmul<float>(float a, float b) { return __fmul_rn(a, b); }
template <>
__device__ __forceinline__ double rmul<double>(double a, double b) { return __dmul_rn(a, b); }
template <typename T>
__device__ __forceinline__ T radd(T a, T b);
template <>
__device__ __forceinline__ float radd<float>(float a, float b) { return __fadd_rn(a, b); }
template <>
__device__ __forceinline__ double radd<double>(double a, double b) { return __dadd_rn(a, b); }

struct Geom {
  pl::Consts c;
  int d;
  int64_t N;      // pixels per image
  int64_t G;      // B * N pixels
  int64_t P;      // G * (d + 1) points
  uint64_t mask;  // table capacity - 1
};

// Coordinates of point q's vertex and its image; returns the image index.
__device__ __forceinline__ int64_t point_key(const Geom& g, const int* __restrict__ rem0,
                                             const int8_t* __restrict__ rank, int64_t q, int* key) {
  const int dp1 = g.d + 1;
  const int64_t px = q / dp1;
  const int r = static_cast<int>(q - px * dp1);
  const int* rm = rem0 + px * g.d;
  const int8_t* rk = rank + px * g.d;
  for (int i = 0; i < g.d; ++i) key[i] = rm[i] + (rk[i] <= g.d - r ? r : r - dp1);
  return px / g.N;
}

__device__ __forceinline__ bool same_key(const Geom& g, const int* __restrict__ rem0, const int8_t* __restrict__ rank,
                                         int64_t e, const int* key, int64_t img) {
  int other[pl::kMaxDim];
  if (point_key(g, rem0, rank, e, other) != img) return false;
  for (int i = 0; i < g.d; ++i)
    if (other[i] != key[i]) return false;
  return true;
}

// Slot of (img, key); -1 when absent (read-only).
__device__ __forceinline__ int64_t find_slot(const Geom& g, const int* __restrict__ table, const int* __restrict__ rem0,
                                             const int8_t* __restrict__ rank, const int* key, int64_t img) {
  uint64_t h = pl::hash_key(key, g.d, static_cast<uint64_t>(img)) & g.mask;
  while (true) {
    const int e = table[h];
    if (e < 0) return -1;
    if (same_key(g, rem0, rank, e, key, img)) return static_cast<int64_t>(h);
    h = (h + 1) & g.mask;
  }
}

struct GpuLattice {
  int d = 0;
  int64_t B = 0, N = 0, M = 0;
  float alpha = 1.0f;
  at::Tensor vid;     // int32 [P] vertex of each point (pixel * (d+1) + remainder)
  at::Tensor bary;    // float [P]
  at::Tensor nbr;     // int32 [d+1, M, 2] blur neighbours (-1: none)
  at::Tensor seg;     // int32 [M+1] CSR starts
  at::Tensor seg_pt;  // int32 [P] points sorted by (vertex, point)
};

// features: float32 contiguous [B, d, N] on the current device.
GpuLattice build_lattice_cuda(const at::Tensor& features);

template <typename T>
__global__ void splat_kernel(const int* __restrict__ seg, const int* __restrict__ seg_pt,
                             const float* __restrict__ bary, int dp1, int64_t M, int64_t C, T* __restrict__ lat,
                             const T* __restrict__ in, const float* __restrict__ in_scale) {
  const int64_t total = M * C;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t v = t / C, c = t - v * C;
    T acc = T(0);
    for (int k = seg[v]; k < seg[v + 1]; ++k) {
      const int q = seg_pt[k];
      const int64_t px = q / dp1;
      T x = in[px * C + c];
      if (in_scale != nullptr) x = rmul<T>(x, static_cast<T>(in_scale[px]));
      acc = radd<T>(acc, rmul<T>(static_cast<T>(bary[q]), x));
    }
    lat[t] = acc;
  }
}

template <typename T>
__global__ void blur_kernel(const int* __restrict__ nbr, int64_t M, int64_t C, const T* __restrict__ src,
                            T* __restrict__ dst) {
  const int64_t total = M * C;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t v = t / C, c = t - v * C;
    const int n1 = nbr[2 * v], n2 = nbr[2 * v + 1];
    const T a = n1 >= 0 ? src[n1 * C + c] : T(0);
    const T b = n2 >= 0 ? src[n2 * C + c] : T(0);
    dst[t] = radd<T>(src[t], rmul<T>(T(0.5), radd<T>(a, b)));
  }
}

// Slice modes: out[px, c] = s (kPlain); acc[px, c] += w * (s * scale[px]) (kCrf);
// out[px] = 1 / sqrt(s + 1e-20) (kNorm, C = 1).
enum SliceMode { kPlain = 0, kCrf = 1, kNorm = 2 };

template <typename T, int Mode>
__global__ void slice_kernel(const int* __restrict__ vid, const float* __restrict__ bary, int dp1, int64_t G,
                             int64_t C, float alpha, const T* __restrict__ lat, T* __restrict__ out,
                             const float* __restrict__ scale, float w) {
  const int64_t total = G * C;
  const bool seq = C <= 2;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t px = t / C, c = t - px * C;
    T acc = T(0);
    for (int r = 0; r < dp1; ++r) {
      const int64_t q = px * dp1 + r;
      const T val = lat[static_cast<int64_t>(vid[q]) * C + c];
      const T wq = static_cast<T>(bary[q]);
      if (seq)
        acc = radd<T>(acc, rmul<T>(rmul<T>(wq, val), static_cast<T>(alpha)));
      else
        acc = radd<T>(acc, rmul<T>(rmul<T>(wq, static_cast<T>(alpha)), val));
    }
    if (Mode == kPlain) {
      out[t] = acc;
    } else if (Mode == kCrf) {
      out[t] = radd<T>(out[t], rmul<T>(static_cast<T>(w), rmul<T>(acc, static_cast<T>(scale[px]))));
    } else {
      out[t] = static_cast<T>(1.0 / sqrt(static_cast<double>(acc) + 1e-20));
    }
  }
}

// Filter C channels of pixel-major `in` [G, C] (times in_scale[px] when given) into `out`
// [G, C] per Mode. lat_a, lat_b: scratch [M, C] of T.
template <typename T, int Mode>
void lattice_filter_cuda(const GpuLattice& L, int64_t C, bool transpose, const T* in, const float* in_scale,
                         T* out, const float* out_scale, float w, T* lat_a, T* lat_b) {
  auto stream = at::cuda::getCurrentCUDAStream();
  const int dp1 = L.d + 1;
  const int64_t G = L.B * L.N;
  if (L.M > 0) {
    splat_kernel<T><<<blocks_for(L.M * C), kThreads, 0, stream>>>(
        L.seg.data_ptr<int>(), L.seg_pt.data_ptr<int>(), L.bary.data_ptr<float>(), dp1, L.M, C, lat_a, in, in_scale);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  T* src = lat_a;
  T* dst = lat_b;
  for (int s = 0; s <= L.d && L.M > 0; ++s) {
    const int j = transpose ? L.d - s : s;
    blur_kernel<T><<<blocks_for(L.M * C), kThreads, 0, stream>>>(L.nbr.data_ptr<int>() + j * L.M * 2, L.M, C, src,
                                                                 dst);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    T* tmp = src;
    src = dst;
    dst = tmp;
  }
  slice_kernel<T, Mode><<<blocks_for(G * C), kThreads, 0, stream>>>(L.vid.data_ptr<int>(), L.bary.data_ptr<float>(),
                                                                    dp1, G, C, L.alpha, src, out, out_scale, w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace plc
}  // namespace wsss_fast
