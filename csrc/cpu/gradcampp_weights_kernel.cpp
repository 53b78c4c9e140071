// CPU kernel of wsss_fast::gradcampp_weights: at::parallel_for over (b, k) channels; for
// every channel sum(A) is read once and each class's h*w gradient slice is read once
// ("paper") or twice from L1 ("wsmis": its denominator needs sum(A * g^3) first).
// Accumulation in fp32 (fp64 for double inputs).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/accumulate.h"
#include "common/cam_common.h"

namespace wsss_fast {
namespace {

template <typename scalar_t>
void gradcampp_cpu_impl(const at::Tensor& act, const at::Tensor& grads, at::Tensor& out, bool paper,
                        double eps_d) {
  using acc = acc_t<scalar_t>;
  const int64_t B = grads.size(0), C = grads.size(1), K = grads.size(2);
  const int64_t HW = grads.size(3) * grads.size(4);
  const int64_t a_sb = act.stride(0), a_sk = act.stride(1);
  const int64_t g_sb = grads.stride(0), g_sc = grads.stride(1), g_sk = grads.stride(2);
  const scalar_t* A = act.const_data_ptr<scalar_t>();
  const scalar_t* G = grads.const_data_ptr<scalar_t>();
  scalar_t* O = out.mutable_data_ptr<scalar_t>();
  const acc eps = static_cast<acc>(eps_d);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, HW * C));
  at::parallel_for(0, B * K, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / K, k = i % K;
      const scalar_t* a = A + b * a_sb + k * a_sk;
      acc s = 0;
      if (paper) {
#pragma omp simd reduction(+ : s)
        for (int64_t p = 0; p < HW; ++p) s += static_cast<acc>(a[p]);
      }
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* g = G + b * g_sb + c * g_sc + k * g_sk;
        acc d = 0;
        if (!paper) {
#pragma omp simd reduction(+ : d)
          for (int64_t p = 0; p < HW; ++p) {
            const acc gv = static_cast<acc>(g[p]);
            d += static_cast<acc>(a[p]) * (gv * gv * gv);
          }
        }
        // Branch-free so that it vectorizes: terms with g <= 0 contribute exactly 0 (their
        // denominator is replaced by 1 so a vanishing one cannot produce 0 * inf).
        acc w = 0;
#pragma omp simd reduction(+ : w)
        for (int64_t p = 0; p < HW; ++p) {
          const acc gv = static_cast<acc>(g[p]);
          const bool pos = gv > acc(0);
          const acc g2 = gv * gv;
          const acc den = paper ? (acc(2) * g2 + s * (g2 * gv) + eps) : (acc(2) * g2 + d + eps);
          w += g2 / (pos ? den : acc(1)) * (pos ? gv : acc(0));
        }
        O[(b * C + c) * K + k] = static_cast<scalar_t>(w);
      }
    }
  });
}

at::Tensor gradcampp_weights_cpu(const at::Tensor& activations, const at::Tensor& grads,
                                 c10::string_view variant, std::optional<double> eps) {
  const auto [paper, e] = check_gradcampp_args(activations, grads, variant, eps);
  WSSS_CHECK_CPU("gradcampp_weights", "activations", activations);
  const auto act = with_inner_hw_contiguous(activations);
  const auto g = with_inner_hw_contiguous(grads);
  auto out = at::empty({g.size(0), g.size(1), g.size(2)}, g.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, act.scalar_type(), "gradcampp_weights_cpu",
                                  [&] { gradcampp_cpu_impl<scalar_t>(act, g, out, paper, e); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CPU, m) { m.impl("gradcampp_weights", &gradcampp_weights_cpu); }

}  // namespace wsss_fast
