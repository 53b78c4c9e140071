// CPU kernel of wsss_fast::weighted_cam: at::parallel_for over (b, block of 4 classes);
// every activation row A[b, k, :] is read once per block and accumulated into 4 fp32 maps
// (vectorizable axpy), then ReLU. Upsampling/normalization: ATen, see common/cam_common.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/accumulate.h"
#include "common/cam_common.h"

namespace wsss_fast {
namespace {

constexpr int64_t kClassBlock = 4;

template <typename scalar_t>
void weighted_cam_cpu_impl(const at::Tensor& act, const at::Tensor& w, at::Tensor& out) {
  using acc = acc_t<scalar_t>;
  const int64_t B = act.size(0), K = act.size(1), HW = act.size(2) * act.size(3);
  const int64_t C = w.size(1);
  const int64_t a_sb = act.stride(0), a_sk = act.stride(1);
  const int64_t nblk = (C + kClassBlock - 1) / kClassBlock;
  const scalar_t* A = act.const_data_ptr<scalar_t>();
  const scalar_t* W = w.const_data_ptr<scalar_t>();
  acc* O = out.mutable_data_ptr<acc>();
  at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> row;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / nblk, c0 = (i % nblk) * kClassBlock;
      const int64_t nc = std::min(kClassBlock, C - c0);
      acc* o = O + (b * C + c0) * HW;
      std::fill(o, o + nc * HW, acc(0));
      if (!std::is_same<scalar_t, acc>::value) row.resize(HW);
      for (int64_t k = 0; k < K; ++k) {
        const scalar_t* a_raw = A + b * a_sb + k * a_sk;
        const acc* a;
        if constexpr (std::is_same<scalar_t, acc>::value) {
          a = a_raw;
        } else {
          for (int64_t p = 0; p < HW; ++p) row[p] = static_cast<acc>(a_raw[p]);
          a = row.data();
        }
        for (int64_t j = 0; j < nc; ++j) {
          const acc wk = static_cast<acc>(W[(b * C + c0 + j) * K + k]);
          if (wk == acc(0)) continue;
          acc* oj = o + j * HW;
          for (int64_t p = 0; p < HW; ++p) oj[p] += wk * a[p];
        }
      }
      for (int64_t p = 0; p < nc * HW; ++p) o[p] = o[p] > acc(0) ? o[p] : acc(0);
    }
  });
}

at::Tensor weighted_cam_cpu(const at::Tensor& activations, const at::Tensor& weights,
                            at::OptionalIntArrayRef out_size, bool normalize) {
  check_weighted_cam_args(activations, weights, out_size);
  WSSS_CHECK_CPU("weighted_cam", "activations", activations);
  const auto act = with_inner_hw_contiguous(activations);
  const auto w = weights.contiguous();
  const auto acc_type = at::toOpMathType(act.scalar_type());
  auto cam = at::empty({act.size(0), w.size(1), act.size(2), act.size(3)}, act.options().dtype(acc_type));
  if (cam.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, act.scalar_type(), "weighted_cam_cpu",
                                    [&] { weighted_cam_cpu_impl<scalar_t>(act, w, cam); });
  }
  return weighted_cam_post(cam, out_size, normalize, act.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CPU, m) { m.impl("weighted_cam", &weighted_cam_cpu); }

}  // namespace wsss_fast
