// Argument checks of permutohedral_filter and dense_crf, shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "common/checks.h"
#include "common/permutohedral.h"

namespace wsss_fast {

// values [B, C, *S] and features [B, D, *S] with S = (H, W) or (N,); returns (B, C, D, N).
struct FilterDims {
  int64_t B, C, D, N;
};

inline FilterDims check_permutohedral_args(const at::Tensor& values, const at::Tensor& features) {
  const char* op = "permutohedral_filter";
  TORCH_CHECK(values.dim() == 3 || values.dim() == 4, op,
              ": values must be a 3-D [B, C, N] or 4-D [B, C, H, W] tensor, got shape ", shape_str(values));
  TORCH_CHECK(features.dim() == values.dim(), op, ": features must have values' layout ([B, D, N] or [B, D, H, W]), ",
              "got values ", shape_str(values), " and features ", shape_str(features));
  TORCH_CHECK(features.size(0) == values.size(0) && features.sizes().slice(2) == values.sizes().slice(2), op,
              ": features ", shape_str(features), " must match values ", shape_str(values),
              " in the batch and spatial sizes");
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble, op,
              ": values must be float32 or float64, got ", values.scalar_type());
  TORCH_CHECK(features.scalar_type() == at::kFloat || features.scalar_type() == at::kDouble, op,
              ": features must be float32 or float64, got ", features.scalar_type());
  WSSS_CHECK_SAME_DEVICE("permutohedral_filter", "values", values, "features", features);
  const int64_t D = features.size(1);
  TORCH_CHECK(D >= 1 && D <= pl::kMaxDim, op, ": features must have 1 to ", pl::kMaxDim, " channels, got ", D);
  const int64_t B = values.size(0), C = values.size(1);
  const int64_t N = values.dim() == 4 ? values.size(2) * values.size(3) : values.size(2);
  TORCH_CHECK(B * N * (D + 1) < std::numeric_limits<int32_t>::max(), op,
              ": B * N * (D + 1) must be < 2^31, got ", B * N * (D + 1));
  if (features.numel() > 0) {
    const double lim = pl::max_abs_feature(static_cast<int>(D));
    const double mx = features.abs().max().item<double>();
    TORCH_CHECK(std::isfinite(mx), op, ": features must be finite");
    TORCH_CHECK(mx <= lim, op, ": |features| must be <= ", lim, " for D = ", D,
                " (the lattice coordinates must stay exact in float32), got ", mx);
  }
  return {B, C, D, N};
}

struct CrfDims {
  int64_t B, L, H, W, channels;
};

inline CrfDims check_dense_crf_args(const at::Tensor& unary, const at::Tensor& image, double gaussian_sxy,
                                    double gaussian_compat, double bilateral_sxy, double bilateral_srgb,
                                    double bilateral_compat, int64_t iterations) {
  const char* op = "dense_crf";
  WSSS_CHECK_DIM("dense_crf", "unary", unary, 4, "[B, L, H, W]");
  WSSS_CHECK_DIM("dense_crf", "image", image, 4, "[B, 3, H, W] or [B, 1, H, W]");
  WSSS_CHECK_DTYPE("dense_crf", "unary", unary, at::kFloat);
  WSSS_CHECK_DTYPE("dense_crf", "image", image, at::kByte);
  WSSS_CHECK_SAME_DEVICE("dense_crf", "unary", unary, "image", image);
  const int64_t B = unary.size(0), L = unary.size(1), H = unary.size(2), W = unary.size(3);
  TORCH_CHECK(L >= 2, op, ": unary must have at least 2 labels, got shape ", shape_str(unary));
  TORCH_CHECK(image.size(1) == 1 || image.size(1) == 3, op, ": image must have 1 or 3 channels, got shape ",
              shape_str(image));
  TORCH_CHECK(image.size(0) == B && image.size(2) == H && image.size(3) == W, op, ": image ", shape_str(image),
              " must match unary ", shape_str(unary), " in B, H and W");
  TORCH_CHECK(gaussian_sxy > 0 && bilateral_sxy > 0 && bilateral_srgb > 0, op,
              ": gaussian_sxy, bilateral_sxy and bilateral_srgb must be > 0, got ", gaussian_sxy, ", ",
              bilateral_sxy, ", ", bilateral_srgb);
  TORCH_CHECK(std::isfinite(gaussian_sxy) && std::isfinite(bilateral_sxy) && std::isfinite(bilateral_srgb) &&
                  std::isfinite(gaussian_compat) && std::isfinite(bilateral_compat),
              op, ": widths and compatibilities must be finite");
  TORCH_CHECK(iterations >= 0, op, ": iterations must be >= 0, got ", iterations);
  const double side = static_cast<double>(std::max<int64_t>(H, W));
  TORCH_CHECK(side / gaussian_sxy <= pl::max_abs_feature(2) && side / bilateral_sxy <= pl::max_abs_feature(5) &&
                  255.0 / bilateral_srgb <= pl::max_abs_feature(5),
              op, ": the widths are too small for an exact float32 lattice (max(H, W) / sxy and 255 / srgb must "
              "stay below ", pl::max_abs_feature(5), ")");
  TORCH_CHECK(B * H * W * 6 < std::numeric_limits<int32_t>::max(), op, ": B * H * W * 6 must be < 2^31");
  return {B, L, H, W, image.size(1)};
}

}  // namespace wsss_fast
