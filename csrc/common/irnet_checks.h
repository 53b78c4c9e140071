// Argument checks shared by the path_affinity and random_walk kernels (CPU and CUDA).
#pragma once

#include <ATen/ATen.h>

#include "common/checks.h"

namespace wsss_fast {

// edge [B, H, W] or [B, 1, H, W] -> contiguous [B, H, W] view/copy.
inline at::Tensor edge_as_bhw(const char* op, const at::Tensor& edge) {
  TORCH_CHECK(at::isFloatingType(edge.scalar_type()), op,
              ": edge must be a floating-point tensor, got dtype ", edge.scalar_type());
  TORCH_CHECK(edge.dim() == 3 || (edge.dim() == 4 && edge.size(1) == 1), op,
              ": edge must have shape [B, H, W] or [B, 1, H, W], got ", shape_str(edge));
  at::Tensor e = edge.dim() == 4 ? edge.select(1, 0) : edge;
  return e.contiguous();
}

inline void check_radius(const char* op, int64_t radius) {
  TORCH_CHECK(radius >= 1, op, ": radius must be >= 1, got ", radius);
  TORCH_CHECK(radius <= 1024, op, ": radius must be <= 1024, got ", radius);
}

// path_affinity_backward: grad must be the forward output's shape [B, D, H, W].
inline void check_affinity_grad(const at::Tensor& grad, int64_t B, int64_t D, int64_t H, int64_t W) {
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == B && grad.size(1) == D && grad.size(2) == H &&
                  grad.size(3) == W,
              "path_affinity_backward: grad must have shape [", B, ", ", D, ", ", H, ", ", W,
              "], got ", shape_str(grad));
}

}  // namespace wsss_fast
