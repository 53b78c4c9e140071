// CPU kernel of IRNet's random walk as a sparse stencil. The pair weights a_d(j) =
// A[j, j+d]^beta (D half-disk pairs, each stored once) and inv_s(j) = 1 / sum_i A[i, j]^beta
// are computed once per call; every step is x_{k+1}[j] = (x_k[j] + sum_d a_d(j) x_k[j+d] +
// a_d(j-d) x_k[j-d]) inv_s(j) on zero-padded planes (no bounds checks).
// See wsss_fast/ops/random_walk.py for the definition.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "common/irnet_checks.h"
#include "common/irnet_paths.h"
#include "cpu/path_affinity_cpu.h"

namespace wsss_fast {
namespace {

// One output row of one channel (generic path, any T):
//   dst[x] = (src[x] + sum_d a_d[x] src[x + off_d] + a_d[x - off_d] src[x - off_d]) * inv_s[x]
// where a_d are the pair weights A^beta stored once per pair at the pair's first pixel, in
// the padded plane geometry (0 in the halo and for pairs that leave the image). Chunks of 8
// pairs are summed in T, the chunks in double: 256 steps of plain float sums over the disk
// would drift by ~1e-4 relative, chunked ones stay near 1e-5.
template <typename T>
inline void stencil_row(T* __restrict dst, const T* a0, int64_t a_stride, const T* __restrict inv_s,
                        const T* __restrict src, const int64_t* off, int64_t D, int64_t W,
                        double* __restrict acc, T* __restrict part) {
  for (int64_t x = 0; x < W; ++x) acc[x] = static_cast<double>(src[x]);
  for (int64_t d0 = 0; d0 < D; d0 += 8) {
    const int64_t d1 = std::min<int64_t>(d0 + 8, D);
    for (int64_t x = 0; x < W; ++x) part[x] = T(0);
    for (int64_t d = d0; d < d1; ++d) {
      const T* __restrict af = a0 + d * a_stride;
      const T* __restrict ab = af - off[d];
      const T* __restrict sf = src + off[d];
      const T* __restrict sb = src - off[d];
      for (int64_t x = 0; x < W; ++x) part[x] += af[x] * sf[x] + ab[x] * sb[x];
    }
    for (int64_t x = 0; x < W; ++x) acc[x] += static_cast<double>(part[x]);
  }
  for (int64_t x = 0; x < W; ++x) dst[x] = static_cast<T>(acc[x] * static_cast<double>(inv_s[x]));
}

#if defined(__GNUC__)
#define WSSS_RW_VECTOR 1
// Generic 4-float vectors (GCC/Clang extension; SSE on x86-64, NEON on arm64, scalar elsewhere).
typedef float rw_v4f __attribute__((vector_size(16)));
typedef float rw_v4f_u __attribute__((vector_size(16), aligned(4)));  // unaligned loads
typedef double rw_v4d __attribute__((vector_size(32)));
constexpr int64_t kRwBlock = 16;  // pixels per register block (Wq is a multiple)

inline rw_v4f rw_load(const float* p) { return *reinterpret_cast<const rw_v4f_u*>(p); }

// NC channels of one output row at once, kRwBlock pixels per block, accumulators in registers:
// every pair weight is loaded once for all NC channels and no partial sums go through memory.
// The weights are stored once per pair (D planes + 1 / sum, not 2D + 1 normalized planes):
// half the bytes per step, so IRNet's 48 x 48 walk keeps its weights in L2 (the 2D + 1 layout
// streamed ~640 kB per step from L3). Chunks of 8 pairs (16 products) are summed in float,
// the chunks in double; 256-step error stays ~2e-5. Wq % kRwBlock == 0; the padding columns
// have inv_s = 0, so their outputs stay 0.
template <int NC>
inline void stencil_row_f32(float* const* dst, const float* const* src, const float* a0, int64_t a_stride,
                            const float* __restrict inv_s, const int64_t* off, int64_t D, int64_t Wq) {
  constexpr int NV = kRwBlock / 4;  // 4-float vectors per block
  for (int64_t x = 0; x < Wq; x += kRwBlock) {
    rw_v4d acc[NC][NV];
    for (int c = 0; c < NC; ++c)
      for (int v = 0; v < NV; ++v) acc[c][v] = __builtin_convertvector(rw_load(src[c] + x + 4 * v), rw_v4d);
    for (int64_t d0 = 0; d0 < D; d0 += 8) {
      const int64_t d1 = std::min<int64_t>(d0 + 8, D);
      rw_v4f part[NC][NV] = {};
      for (int64_t d = d0; d < d1; ++d) {
        const float* af = a0 + d * a_stride + x;
        const float* ab = af - off[d];
        rw_v4f wf[NV], wb[NV];
        for (int v = 0; v < NV; ++v) {
          wf[v] = rw_load(af + 4 * v);
          wb[v] = rw_load(ab + 4 * v);
        }
        for (int c = 0; c < NC; ++c) {
          const float* sf = src[c] + x + off[d];
          const float* sb = src[c] + x - off[d];
          for (int v = 0; v < NV; ++v) part[c][v] += wf[v] * rw_load(sf + 4 * v) + wb[v] * rw_load(sb + 4 * v);
        }
      }
      for (int c = 0; c < NC; ++c)
        for (int v = 0; v < NV; ++v) acc[c][v] += __builtin_convertvector(part[c][v], rw_v4d);
    }
    for (int v = 0; v < NV; ++v) {
      const rw_v4d is = __builtin_convertvector(rw_load(inv_s + x + 4 * v), rw_v4d);
      for (int c = 0; c < NC; ++c)
        *reinterpret_cast<rw_v4f_u*>(dst[c] + x + 4 * v) = __builtin_convertvector(acc[c][v] * is, rw_v4f);
    }
  }
}
#endif

#if defined(__GNUC__) && defined(__x86_64__)
#define WSSS_RW_AVX2 1
#include <immintrin.h>

inline __m256d rw_lo_pd(__m256 v) __attribute__((target("avx2,fma"), always_inline));
inline __m256d rw_lo_pd(__m256 v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
inline __m256d rw_hi_pd(__m256 v) __attribute__((target("avx2,fma"), always_inline));
inline __m256d rw_hi_pd(__m256 v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }

// stencil_row_f32 with 8-float AVX2 vectors and fused multiply-adds, chosen at run time when
// the CPU has them: half the load and arithmetic instructions of the 4-float version, which
// bound the walk on small maps (IRNet's 48 x 48: every operand is in L1/L2). Same chunking:
// 8 pairs summed in float, the chunks in double.
template <int NC>
__attribute__((target("avx2,fma"))) void stencil_row_avx2(float* const* dst, const float* const* src,
                                                          const float* a0, int64_t a_stride,
                                                          const float* __restrict inv_s, const int64_t* off,
                                                          int64_t D, int64_t Wq) {
  for (int64_t x = 0; x < Wq; x += kRwBlock) {
    __m256d acc[NC][4];
    for (int c = 0; c < NC; ++c) {
      for (int v = 0; v < 2; ++v) {
        const __m256 s = _mm256_loadu_ps(src[c] + x + 8 * v);
        acc[c][2 * v] = rw_lo_pd(s);
        acc[c][2 * v + 1] = rw_hi_pd(s);
      }
    }
    for (int64_t d0 = 0; d0 < D; d0 += 8) {
      const int64_t d1 = std::min<int64_t>(d0 + 8, D);
      __m256 part[NC][2];
      for (int c = 0; c < NC; ++c) part[c][0] = part[c][1] = _mm256_setzero_ps();
      for (int64_t d = d0; d < d1; ++d) {
        const float* af = a0 + d * a_stride + x;
        const float* ab = af - off[d];
        const __m256 wf0 = _mm256_loadu_ps(af), wf1 = _mm256_loadu_ps(af + 8);
        const __m256 wb0 = _mm256_loadu_ps(ab), wb1 = _mm256_loadu_ps(ab + 8);
        for (int c = 0; c < NC; ++c) {
          const float* sf = src[c] + x + off[d];
          const float* sb = src[c] + x - off[d];
          part[c][0] = _mm256_fmadd_ps(wf0, _mm256_loadu_ps(sf), part[c][0]);
          part[c][1] = _mm256_fmadd_ps(wf1, _mm256_loadu_ps(sf + 8), part[c][1]);
          part[c][0] = _mm256_fmadd_ps(wb0, _mm256_loadu_ps(sb), part[c][0]);
          part[c][1] = _mm256_fmadd_ps(wb1, _mm256_loadu_ps(sb + 8), part[c][1]);
        }
      }
      for (int c = 0; c < NC; ++c) {
        for (int v = 0; v < 2; ++v) {
          acc[c][2 * v] = _mm256_add_pd(acc[c][2 * v], rw_lo_pd(part[c][v]));
          acc[c][2 * v + 1] = _mm256_add_pd(acc[c][2 * v + 1], rw_hi_pd(part[c][v]));
        }
      }
    }
    for (int v = 0; v < 2; ++v) {
      const __m256 is = _mm256_loadu_ps(inv_s + x + 8 * v);
      const __m256d lo = rw_lo_pd(is), hi = rw_hi_pd(is);
      for (int c = 0; c < NC; ++c) {
        const __m128 rlo = _mm256_cvtpd_ps(_mm256_mul_pd(acc[c][2 * v], lo));
        const __m128 rhi = _mm256_cvtpd_ps(_mm256_mul_pd(acc[c][2 * v + 1], hi));
        _mm256_storeu_ps(dst[c] + x + 8 * v, _mm256_set_m128(rhi, rlo));
      }
    }
  }
}

inline bool rw_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif


// a^beta; integral beta (IRNet: 10) by repeated squaring, much cheaper than std::pow.
inline double pow_beta(double a, double beta, int64_t ibeta) {
  if (ibeta <= 0) return std::pow(a, beta);
  double r = 1.0, p = a;
  for (int64_t n = ibeta; n; n >>= 1) {
    if (n & 1) r *= p;
    p *= p;
  }
  return r;
}

template <typename T>
void random_walk_impl(const at::Tensor& x0, const at::Tensor& e, at::Tensor& out, const IrnetPaths& P,
                      double beta, int64_t steps) {
  const int64_t B = x0.size(0), C = x0.size(1), H = x0.size(2), W = x0.size(3);
  const int64_t D = P.num_offsets(), HW = H * W;
  // Planes are padded: rows to Wq = W rounded up to 16 (whole register blocks) plus a halo of
  // R = r - 1 on every side. Walk buffers, pair weights and 1 / sum share this geometry, so
  // the stencil needs no bounds checks.
  const int64_t Wq = (W + 15) / 16 * 16;
  const int64_t R = P.radius - 1, Hp = H + 2 * R, Wp = Wq + 2 * R, plane = Hp * Wp;

  // Affinities [B, D, H, W] in double (the walk is sensitive to the weights: 256 steps amplify
  // their rounding). Pair weights a_d(j) = A[j, j + d]^beta at the pair's first pixel j (0
  // where j + d leaves the image), and inv_s(j) = 1 / (1 + sum_d a_d(j) + a_d(j - d)), the
  // column normalization of T. Each pair weight is stored once and read for both directions.
  const at::Tensor e64 = e.to(at::kDouble).contiguous();
  const int64_t ibeta = (beta == std::floor(beta) && beta <= 64) ? static_cast<int64_t>(beta) : 0;
  std::vector<double> aff(static_cast<size_t>(B * D * HW));
  if (D > 0) path_affinity_forward_cpu<double>(e64.data_ptr<double>(), aff.data(), B, H, W, P);
  // aff <- A^beta in place, once per pair (0 where the pair leaves the image).
  at::parallel_for(0, B * D * H, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t d = (r / H) % D, y = r % H, dy = P.dy[d], dx = P.dx[d];
      double* row = aff.data() + r * W;
      for (int64_t x = 0; x < W; ++x)
        row[x] = (y + dy < H && x + dx >= 0 && x + dx < W) ? pow_beta(row[x], beta, ibeta) : 0.0;
    }
  });
  std::vector<T> aw(static_cast<size_t>(B * D * plane), T(0)), inv_s(static_cast<size_t>(B * plane), T(0));
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / H, y = r % H;
      const double* ab = aff.data() + b * D * HW;
      T* awb = aw.data() + b * D * plane + (y + R) * Wp + R;
      for (int64_t x = 0; x < W; ++x) {
        double s = 1.0;
        for (int64_t d = 0; d < D; ++d) {
          const int64_t dy = P.dy[d], dx = P.dx[d];
          const bool back_in = y - dy >= 0 && x - dx >= 0 && x - dx < W;
          const double wf = ab[d * HW + y * W + x];
          const double wb = back_in ? ab[d * HW + (y - dy) * W + (x - dx)] : 0.0;
          awb[d * plane + x] = static_cast<T>(wf);
          s += wf + wb;
        }
        inv_s[b * plane + (y + R) * Wp + R + x] = static_cast<T>(1.0 / s);
      }
    }
  });

  // Stencil offsets of the half-disk pairs in the padded plane.
  std::vector<int64_t> off(static_cast<size_t>(std::max<int64_t>(D, 1)));
  for (int64_t d = 0; d < D; ++d) off[d] = P.dy[d] * Wp + P.dx[d];

  // Zero-padded double buffers [B*C, Hp, Wp]; the halo stays 0.
  std::vector<T> buf0(static_cast<size_t>(B * C * plane), T(0)), buf1(buf0.size(), T(0));
  const T* xs = x0.data_ptr<T>();
  at::parallel_for(0, B * C * H, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t pc = r / H, y = r % H;
      std::copy(xs + r * W, xs + (r + 1) * W, buf0.data() + pc * plane + (y + R) * Wp + R);
    }
  });

  // Work unit: a group of up to NG channels of one image at one row; every weight is read
  // once per group.
  // Pairs of channels, except when single channels give every thread its own plane and
  // pairs do not (IRNet's B = 1, C = 2 on 2 threads): then no thread waits at a per-step
  // barrier.
  const int64_t nthreads = at::get_num_threads();
#ifdef WSSS_RW_VECTOR
  int64_t NG = std::is_same_v<T, float> ? 2 : 1;
  if (B * ((C + 1) / 2) < nthreads && B * C >= nthreads) NG = 1;
#else
  const int64_t NG = 1;
#endif
  const int64_t groups_per_b = (C + NG - 1) / NG, groups = B * groups_per_b;
#ifdef WSSS_RW_AVX2
  // WSSS_FAST_NO_AVX2 (any value) keeps the portable 4-float rows: for tests and comparisons.
  const bool avx2 = rw_has_avx2() && std::getenv("WSSS_FAST_NO_AVX2") == nullptr;
#endif
  auto row = [&](const T* src, T* dst, int64_t grp, int64_t y, double* acc, T* part) {
    const int64_t b = grp / groups_per_b, c0 = (grp % groups_per_b) * NG;
    const int64_t nc = std::min<int64_t>(NG, C - c0);
    const int64_t rowoff = (y + R) * Wp + R;
    const int64_t base = (b * C + c0) * plane + rowoff;
    const T* a0 = aw.data() + b * D * plane + rowoff;
    const T* is = inv_s.data() + b * plane + rowoff;
#ifdef WSSS_RW_VECTOR
    if constexpr (std::is_same_v<T, float>) {
      const float* s2[2] = {src + base, src + base + (nc > 1 ? plane : 0)};
      float* d2[2] = {dst + base, dst + base + (nc > 1 ? plane : 0)};
#ifdef WSSS_RW_AVX2
      if (avx2) {
        if (nc == 2) stencil_row_avx2<2>(d2, s2, a0, plane, is, off.data(), D, Wq);
        else stencil_row_avx2<1>(d2, s2, a0, plane, is, off.data(), D, Wq);
        return;
      }
#endif
      if (nc == 2) stencil_row_f32<2>(d2, s2, a0, plane, is, off.data(), D, Wq);
      else stencil_row_f32<1>(d2, s2, a0, plane, is, off.data(), D, Wq);
      return;
    }
#endif
    for (int64_t c = 0; c < nc; ++c)
      stencil_row<T>(dst + base + c * plane, a0, plane, is, src + base + c * plane, off.data(), D, Wq, acc, part);
  };
  if (groups >= nthreads) {
    // Enough groups: each thread walks whole groups through every step (no barriers).
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> acc(static_cast<size_t>(Wq));
      std::vector<T> part(static_cast<size_t>(Wq));
      for (int64_t grp = begin; grp < end; ++grp) {
        for (int64_t s = 0; s < steps; ++s) {
          const T* src = (s & 1) ? buf1.data() : buf0.data();
          T* dst = (s & 1) ? buf0.data() : buf1.data();
          for (int64_t y = 0; y < H; ++y) row(src, dst, grp, y, acc.data(), part.data());
        }
      }
    });
  } else {
    // Few groups: every step is split over rows, with at least ~2^19 multiply-adds per task,
    // so small maps (IRNet's 48x48 needs ~6.6k per row) stay on one thread instead of
    // paying a barrier per step.
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 19) / std::max<int64_t>((2 * D + 1) * Wq * NG, 1));
    std::vector<double> acc(static_cast<size_t>(Wq));
    std::vector<T> part(static_cast<size_t>(Wq));
    for (int64_t s = 0; s < steps; ++s) {
      const T* src = (s & 1) ? buf1.data() : buf0.data();
      T* dst = (s & 1) ? buf0.data() : buf1.data();
      if (groups * H <= grain) {
        for (int64_t r = 0; r < groups * H; ++r) row(src, dst, r / H, r % H, acc.data(), part.data());
        continue;
      }
      at::parallel_for(0, groups * H, grain, [&](int64_t begin, int64_t end) {
        std::vector<double> acc_t(static_cast<size_t>(Wq));
        std::vector<T> part_t(static_cast<size_t>(Wq));
        for (int64_t r = begin; r < end; ++r) row(src, dst, r / H, r % H, acc_t.data(), part_t.data());
      });
    }
  }

  const T* res = (steps & 1) ? buf1.data() : buf0.data();
  T* o = out.data_ptr<T>();
  at::parallel_for(0, B * C * H, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t pc = r / H, y = r % H;
      const T* s = res + pc * plane + (y + R) * Wp + R;
      std::copy(s, s + W, o + r * W);
    }
  });
}

at::Tensor random_walk_cpu(const at::Tensor& x, const at::Tensor& edge, int64_t radius, double beta,
                           int64_t steps, bool mask_edge) {
  check_random_walk_args(x, radius, beta, steps);
  WSSS_CHECK_SAME_DEVICE("random_walk", "x", x, "edge", edge);
  WSSS_CHECK_CPU("random_walk", "x", x);
  const at::Tensor e3 = random_walk_edge(x, edge);
  WSSS_CHECK_CPU_FLOAT("random_walk", "x", x);
  const at::Tensor e = e3.to(x.scalar_type()).contiguous();
  // IRNet starts from x * (1 - edge); mask_edge false starts from x (a copy: the output never aliases x)
  const at::Tensor x0 = mask_edge ? (x * (1 - e.unsqueeze(1))).contiguous() : x.clone(at::MemoryFormat::Contiguous);
  if (steps == 0 || x0.numel() == 0) return x0;
  at::Tensor out = at::empty_like(x0);
  const IrnetPaths P = make_irnet_paths(radius);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "random_walk_cpu", [&] {
    random_walk_impl<scalar_t>(x0, e, out, P, beta, steps);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CPU, m) { m.impl("random_walk", &random_walk_cpu); }

}  // namespace wsss_fast
