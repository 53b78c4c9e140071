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

}  // namespace wsss_fast
