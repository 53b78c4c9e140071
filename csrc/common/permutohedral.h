// Permutohedral lattice arithmetic shared by the CPU and CUDA kernels of permutohedral_filter
// and dense_crf (Adams, Baek, Davis, "Fast High-Dimensional Filtering Using the Permutohedral
// Lattice", Eurographics 2010), with the float operations in the order of pydensecrf's
// permutohedral.cpp, so that both backends build the same lattice as pydensecrf:
//   elevation   E f with scale factors (d+1) sqrt(2/3) / sqrt((i+1)(i+2)),
//   rounding    to the nearest 0-coloured point (round half to even, as SSE does),
//   simplex     rank of each coordinate's remainder, barycentric weights,
//   vertices    key_i = rem0_i + canonical(r, rank_i), i < d (the last coordinate is implied).
// On CUDA every product and sum is rounded explicitly (no FMA contraction).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define WSSS_PL_HD __host__ __device__ __forceinline__
#else
#define WSSS_PL_HD inline
#endif

namespace wsss_fast {
namespace pl {

constexpr int kMaxDim = 16;  // largest feature dimension d

WSSS_PL_HD float fmul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
WSSS_PL_HD float fadd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
WSSS_PL_HD float fsub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
WSSS_PL_HD float round_even(float v) {
#if defined(__CUDA_ARCH__)
  return rintf(v);
#else
  return std::nearbyint(v);
#endif
}

// Per-dimension constants: scale[i] = float(1 / sqrt((i+2)(i+1)) * float(sqrt(2/3) (d+1))).
struct Consts {
  float scale[kMaxDim];
  float inv_dp1;  // float(1 / (d+1))
  float dp1;      // d + 1
  float alpha;    // 1 / (1 + 2^-d), the slice factor
  int d;
};

inline Consts make_consts(int d) {
  Consts c{};
  c.d = d;
  const float inv_std_dev = static_cast<float>(std::sqrt(2.0 / 3.0) * (d + 1));
  for (int i = 0; i < d; ++i)
    c.scale[i] = static_cast<float>(1.0 / std::sqrt(static_cast<double>((i + 2) * (i + 1))) * inv_std_dev);
  c.inv_dp1 = 1.0f / static_cast<float>(d + 1);
  c.dp1 = static_cast<float>(d + 1);
  c.alpha = 1.0f / (1.0f + std::pow(2.0f, static_cast<float>(-d)));
  return c;
}

// Largest |feature| for which every lattice coordinate stays an exact integer in float
// (|elevated| < 2^23; |elevated_j| <= (d+1)^2 max|f|).
inline double max_abs_feature(int d) { return 8388608.0 / ((d + 1.0) * (d + 1.0)); }

// One point's simplex: rem0[0..d] (the 0-coloured point), rank[0..d] and bary[0..d]
// (barycentric weight of remainder r). f(j) returns feature j of the point.
template <typename F>
WSSS_PL_HD void locate(const Consts& c, F f, int* rem0, int* rank, float* bary) {
  const int d = c.d;
  float elevated[kMaxDim + 1];
  float sm = 0.0f;
  for (int j = d; j > 0; --j) {
    const float cf = fmul(f(j - 1), c.scale[j - 1]);
    elevated[j] = fsub(sm, fmul(static_cast<float>(j), cf));
    sm = fadd(sm, cf);
  }
  elevated[0] = sm;
  float rem0f[kMaxDim + 1];
  float sum = 0.0f;
  for (int i = 0; i <= d; ++i) {
    const float v = round_even(fmul(c.inv_dp1, elevated[i]));
    rem0f[i] = fmul(v, c.dp1);
    sum = fadd(sum, v);
  }
  for (int i = 0; i <= d; ++i) rank[i] = 0;
  for (int i = 0; i < d; ++i) {
    const float di = fsub(elevated[i], rem0f[i]);
    for (int j = i + 1; j <= d; ++j) {
      if (di < fsub(elevated[j], rem0f[j]))
        ++rank[i];
      else
        ++rank[j];
    }
  }
  const int isum = static_cast<int>(sum);
  for (int i = 0; i <= d; ++i) {
    rank[i] += isum;
    if (rank[i] < 0) {
      rank[i] += d + 1;
      rem0f[i] = fadd(rem0f[i], c.dp1);
    } else if (rank[i] > d) {
      rank[i] -= d + 1;
      rem0f[i] = fsub(rem0f[i], c.dp1);
    }
  }
  float b[kMaxDim + 2];
  for (int i = 0; i <= d + 1; ++i) b[i] = 0.0f;
  for (int i = 0; i <= d; ++i) {
    const float v = fmul(fsub(elevated[i], rem0f[i]), c.inv_dp1);
    b[d - rank[i]] = fadd(b[d - rank[i]], v);
    b[d - rank[i] + 1] = fsub(b[d - rank[i] + 1], v);
  }
  b[0] = fadd(b[0], fadd(1.0f, b[d + 1]));
  for (int i = 0; i <= d; ++i) {
    bary[i] = b[i];
    rem0[i] = static_cast<int>(rem0f[i]);
  }
}

// Coordinate i < d of the vertex with remainder r of a simplex (rem0, rank).
WSSS_PL_HD int vertex_coord(int d, int r, const int* rem0, const int* rank, int i) {
  return rem0[i] + (rank[i] <= d - r ? r : r - (d + 1));
}

// Hash of a d-coordinate key (pydensecrf's multiplier), extra = image index.
WSSS_PL_HD uint64_t hash_key(const int* key, int d, uint64_t extra) {
  uint64_t h = extra * 2654435761ULL;
  for (int i = 0; i < d; ++i) {
    h += static_cast<uint64_t>(static_cast<int64_t>(key[i]));
    h *= 1664525ULL;
  }
  return h ^ (h >> 29);
}

}  // namespace pl
}  // namespace wsss_fast
