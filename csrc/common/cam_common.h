// Shared argument checks and ATen post-processing of the CAM ops (gradcampp_weights,
// weighted_cam); used by both the CPU and the CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "common/checks.h"

namespace wsss_fast {

// Whether the trailing [h, w] dims are laid out contiguously (leading dims may be strided).
inline bool inner_hw_contiguous(const at::Tensor& t) {
  const int64_t d = t.dim();
  const int64_t h = t.size(d - 2), w = t.size(d - 1);
  return (w <= 1 || t.stride(d - 1) == 1) && (h <= 1 || t.stride(d - 2) == w);
}

inline at::Tensor with_inner_hw_contiguous(const at::Tensor& t) {
  return inner_hw_contiguous(t) ? t : t.contiguous();
}

// Returns (paper?, eps) and checks the arguments of gradcampp_weights.
inline std::pair<bool, double> check_gradcampp_args(const at::Tensor& activations, const at::Tensor& grads,
                                                     c10::string_view variant, std::optional<double> eps) {
  WSSS_CHECK_DIM("gradcampp_weights", "activations", activations, 4, "[B, K, h, w]");
  WSSS_CHECK_DIM("gradcampp_weights", "grads", grads, 5, "[B, C, K, h, w]");
  WSSS_CHECK_FLOATING("gradcampp_weights", "activations", activations);
  WSSS_CHECK_DTYPE("gradcampp_weights", "grads", grads, activations.scalar_type());
  WSSS_CHECK_SAME_DEVICE("gradcampp_weights", "activations", activations, "grads", grads);
  TORCH_CHECK(grads.size(0) == activations.size(0) && grads.size(2) == activations.size(1) &&
                  grads.size(3) == activations.size(2) && grads.size(4) == activations.size(3),
              "gradcampp_weights: grads must have shape [B, C, K, h, w] matching activations ",
              shape_str(activations), ", got ", shape_str(grads));
  const bool paper = variant == "paper";
  TORCH_CHECK(paper || variant == "wsmis", "gradcampp_weights: variant must be 'paper' or 'wsmis', got '",
              std::string(variant), "'");
  const double e = eps.has_value() ? *eps : (paper ? 1e-6 : 1e-8);
  TORCH_CHECK(e >= 0.0, "gradcampp_weights: eps must be >= 0, got ", e);
  return {paper, e};
}

inline void check_weighted_cam_args(const at::Tensor& activations, const at::Tensor& weights,
                                    at::OptionalIntArrayRef out_size) {
  WSSS_CHECK_DIM("weighted_cam", "activations", activations, 4, "[B, K, h, w]");
  WSSS_CHECK_DIM("weighted_cam", "weights", weights, 3, "[B, C, K]");
  WSSS_CHECK_FLOATING("weighted_cam", "activations", activations);
  WSSS_CHECK_DTYPE("weighted_cam", "weights", weights, activations.scalar_type());
  WSSS_CHECK_SAME_DEVICE("weighted_cam", "activations", activations, "weights", weights);
  TORCH_CHECK(weights.size(0) == activations.size(0) && weights.size(2) == activations.size(1),
              "weighted_cam: weights must have shape [B, C, K] matching activations ", shape_str(activations),
              ", got ", shape_str(weights));
  if (out_size.has_value()) {
    TORCH_CHECK(out_size->size() == 2 && (*out_size)[0] > 0 && (*out_size)[1] > 0,
                "weighted_cam: out_size must be two positive ints (H, W), got ", *out_size);
    TORCH_CHECK(activations.size(2) > 0 && activations.size(3) > 0,
                "weighted_cam: cannot upsample empty maps of shape ", shape_str(activations));
  }
}

// cam: [B, C, h, w] in the accumulation dtype. Upsampling and normalization stay on cam's
// device (ATen kernels); the result is cast to out_dtype.
inline at::Tensor weighted_cam_post(at::Tensor cam, at::OptionalIntArrayRef out_size, bool normalize,
                                    at::ScalarType out_dtype) {
  if (out_size.has_value()) {
    if (cam.numel() == 0) {  // upsample_bilinear2d rejects empty batches/channels
      return at::zeros({cam.size(0), cam.size(1), (*out_size)[0], (*out_size)[1]}, cam.options().dtype(out_dtype));
    }
    cam = at::upsample_bilinear2d(cam, *out_size, /*align_corners=*/false);
  }
  if (normalize && cam.numel() > 0) {
    const auto mn = cam.amin({2, 3}, /*keepdim=*/true);
    const auto range = cam.amax({2, 3}, /*keepdim=*/true).sub_(mn).add_(1e-7);
    cam.sub_(mn).div_(range);
  }
  return cam.scalar_type() == out_dtype ? cam : cam.to(out_dtype);
}

}  // namespace wsss_fast
