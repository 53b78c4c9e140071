// CPU kernel of dense_crf: pydensecrf's DenseCRF2D inference (Potts Gaussian + bilateral
// kernels, DIAG_KERNEL, NORMALIZE_SYMMETRIC) on two lattices (cpu/permutohedral_cpu.h): the
// Gaussian one, which depends on the pixel grid only, once per batch; the bilateral one per
// image. Per image: features (x/sxy, y/sxy) and (x/sxy, y/sxy, r/srgb,
// g/srgb, b/srgb); norm_k = 1 / sqrt(K_k 1 + 1e-20); Q_0 = softmax(-U); every iteration
//   E = -U + sum_k w_k norm_k K_k (norm_k Q),  Q = softmax(E)
// with pydensecrf's float operations (the Potts message -w (.) subtracted). Q is pixel-major.
// See wsss_fast/ops/dense_crf.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "common/permutohedral_checks.h"
#include "cpu/permutohedral_cpu.h"

namespace wsss_fast {
namespace {

struct CrfArgs {
  float gs, gw, bs, br, bw;
  int64_t iterations;
};

// exp(x) for x <= 0 in float: Cephes' expf (x = n ln 2 + r with ln 2 in two parts, a degree-6
// polynomial in r, 2^n set in the exponent bits), the algorithm of the vectorised exp of Eigen
// that pydensecrf's expAndNormalize runs; four lanes at a time with SSE2. x below -87.3 (exp
// under the smallest normal float) gives that bound's value instead of a denormal.
constexpr float kExpLo = -87.3365447f, kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f,
                kLn2Lo = -2.12194440e-4f;
constexpr float kExpP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                            4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

inline float exp_nonpositive(float x) {
  x = std::max(x, kExpLo);
  const float fx = std::floor(x * kLog2e + 0.5f);
  const float r = (x - fx * kLn2Hi) - fx * kLn2Lo;
  float y = kExpP[0];
  for (int i = 1; i < 6; ++i) y = y * r + kExpP[i];
  y = y * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(fx) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

#if defined(__SSE2__)
inline __m128 exp_nonpositive(__m128 x) {
  x = _mm_max_ps(x, _mm_set1_ps(kExpLo));
  __m128 fx = _mm_add_ps(_mm_mul_ps(x, _mm_set1_ps(kLog2e)), _mm_set1_ps(0.5f));
  const __m128 t = _mm_cvtepi32_ps(_mm_cvttps_epi32(fx));  // truncation; floor for negatives:
  fx = _mm_sub_ps(t, _mm_and_ps(_mm_cmpgt_ps(t, fx), _mm_set1_ps(1.0f)));
  const __m128 r = _mm_sub_ps(_mm_sub_ps(x, _mm_mul_ps(fx, _mm_set1_ps(kLn2Hi))), _mm_mul_ps(fx, _mm_set1_ps(kLn2Lo)));
  __m128 y = _mm_set1_ps(kExpP[0]);
  for (int i = 1; i < 6; ++i) y = _mm_add_ps(_mm_mul_ps(y, r), _mm_set1_ps(kExpP[i]));
  y = _mm_add_ps(_mm_add_ps(_mm_mul_ps(y, _mm_mul_ps(r, r)), r), _mm_set1_ps(1.0f));
  const __m128i bits = _mm_slli_epi32(_mm_add_epi32(_mm_cvttps_epi32(fx), _mm_set1_epi32(127)), 23);
  return _mm_mul_ps(y, _mm_castsi128_ps(bits));
}
#endif

// y[c] = exp(x[c] - mx), c < L.
inline void exp_shifted(const float* x, float mx, float* y, int64_t L) {
  int64_t c = 0;
#if defined(__SSE2__)
  const __m128 m = _mm_set1_ps(mx);
  for (; c + 4 <= L; c += 4) _mm_storeu_ps(y + c, exp_nonpositive(_mm_sub_ps(_mm_loadu_ps(x + c), m)));
#endif
  for (; c < L; ++c) y[c] = exp_nonpositive(x[c] - mx);
}

// q[p, :] = softmax(e[p, :]) as pydensecrf's expAndNormalize: exp(e - max) / sum. LL > 0 fixes
// the label count at compile time (the loops over labels unroll).
template <int LL>
void softmax_rows_impl(const float* e, float* q, int64_t N, int64_t Lr) {
  const int64_t L = LL > 0 ? LL : Lr;
  at::parallel_for(0, N, 2048, [&](int64_t b, int64_t end) {
    for (int64_t p = b; p < end; ++p) {
      const float* __restrict__ x = e + p * L;
      float* __restrict__ y = q + p * L;
      float mx = x[0];
      for (int64_t c = 1; c < L; ++c) mx = std::max(mx, x[c]);
      exp_shifted(x, mx, y, L);
      float s = 0.0f;
      for (int64_t c = 0; c < L; ++c) s += y[c];
      for (int64_t c = 0; c < L; ++c) y[c] = y[c] / s;
    }
  });
}

void softmax_rows(const float* e, float* q, int64_t N, int64_t L) {
  switch (L) {
    case 2: return softmax_rows_impl<2>(e, q, N, L);
    case 21: return softmax_rows_impl<21>(e, q, N, L);
    default: return softmax_rows_impl<0>(e, q, N, L);
  }
}

// The Gaussian kernel depends on the pixel grid only: one lattice and norm for the batch.
struct GaussianKernel {
  pl::CpuLattice lattice;
  std::vector<float> norm;
};

void normalization(const pl::CpuLattice& lat, std::vector<float>& norm) {
  std::vector<float> a, b;
  const std::vector<float> ones(lat.N, 1.0f);
  norm.resize(lat.N);
  pl::lattice_filter<float>(lat, 1, false, a, b, ones.data(), nullptr, norm.data(), nullptr, 0.0f, pl::Emit::kNorm);
}

void crf_image(const GaussianKernel& gk, const float* unary, const uint8_t* img, float* out, int64_t L, int64_t H,
               int64_t W, int64_t channels, int64_t img_plane, const CrfArgs& a) {
  const int64_t N = H * W;
  auto colour = [&](int k, int64_t p) { return img[(channels == 3 ? k : 0) * img_plane + p]; };
  pl::CpuLattice lb;
  pl::build_lattice(lb, 5, N, [&](int j, int64_t p) {
    if (j == 0) return static_cast<float>(p % W) / a.bs;
    if (j == 1) return static_cast<float>(p / W) / a.bs;
    return static_cast<float>(colour(j - 2, p)) / a.br;
  });
  std::vector<float> buf[2][2], nb;  // scratch per kernel (each keeps its lattice's size)
  normalization(lb, nb);
  const pl::CpuLattice* lat[2] = {&gk.lattice, &lb};
  const float* norms[2] = {gk.norm.data(), nb.data()};
  const float w[2] = {a.gw, a.bw};
  std::vector<float> mu(N * L), q(N * L), e(N * L);
  for (int64_t c = 0; c < L; ++c)
    for (int64_t p = 0; p < N; ++p) mu[p * L + c] = -unary[c * N + p];
  softmax_rows(mu.data(), q.data(), N, L);
  for (int64_t it = 0; it < a.iterations; ++it) {
    std::copy(mu.begin(), mu.end(), e.begin());
    for (int k = 0; k < 2; ++k)
      pl::lattice_filter<float>(*lat[k], L, false, buf[k][0], buf[k][1], q.data(), norms[k], e.data(), norms[k], w[k],
                                pl::Emit::kCrf);
    softmax_rows(e.data(), q.data(), N, L);
  }
  for (int64_t c = 0; c < L; ++c)
    for (int64_t p = 0; p < N; ++p) out[c * N + p] = q[p * L + c];
}

at::Tensor dense_crf_cpu(const at::Tensor& unary, const at::Tensor& image, double gaussian_sxy,
                         double gaussian_compat, double bilateral_sxy, double bilateral_srgb, double bilateral_compat,
                         int64_t iterations) {
  const CrfDims g = check_dense_crf_args(unary, image, gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb,
                                         bilateral_compat, iterations);
  WSSS_CHECK_CPU("dense_crf", "unary", unary);
  const at::Tensor u = unary.contiguous();
  const at::Tensor im = image.contiguous();
  at::Tensor out = at::empty_like(u);
  if (out.numel() == 0) return out;
  // pydensecrf takes the widths as C floats
  const CrfArgs a{static_cast<float>(gaussian_sxy), static_cast<float>(gaussian_compat),
                  static_cast<float>(bilateral_sxy), static_cast<float>(bilateral_srgb),
                  static_cast<float>(bilateral_compat), iterations};
  const int64_t N = g.H * g.W;
  const float* up = u.data_ptr<float>();
  const uint8_t* ip = im.data_ptr<uint8_t>();
  float* op = out.data_ptr<float>();
  GaussianKernel gk;
  const int64_t W = g.W;
  pl::build_lattice(gk.lattice, 2, N, [&](int j, int64_t p) {
    return j == 0 ? static_cast<float>(p % W) / a.gs : static_cast<float>(p / W) / a.gs;
  });
  normalization(gk.lattice, gk.norm);
  auto one = [&](int64_t b) {
    crf_image(gk, up + b * g.L * N, ip + b * g.channels * N, op + b * g.L * N, g.L, g.H, g.W, g.channels, N, a);
  };
  if (g.B > 1 && g.B >= at::get_num_threads()) {
    at::parallel_for(0, g.B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) one(b);
    });
  } else {
    for (int64_t b = 0; b < g.B; ++b) one(b);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CPU, m) { m.impl("dense_crf", &dense_crf_cpu); }

}  // namespace wsss_fast
