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

// random_walk, both backends: the scalar arguments and x [B, C, H, W] floating point.
inline void check_random_walk_args(const at::Tensor& x, int64_t radius, double beta, int64_t steps) {
  const char* op = "random_walk";
  check_radius(op, radius);
  TORCH_CHECK(steps >= 0, op, ": steps must be >= 0, got ", steps);
  TORCH_CHECK(beta > 0, op, ": beta must be > 0, got ", beta);
  WSSS_CHECK_DIM("random_walk", "x", x, 4, "[B, C, H, W]");
  WSSS_CHECK_FLOATING("random_walk", "x", x);
}

// random_walk, both backends: edge as contiguous [B, H, W] matching x [B, C, H, W].
inline at::Tensor random_walk_edge(const at::Tensor& x, const at::Tensor& edge) {
  const char* op = "random_walk";
  const at::Tensor e3 = edge_as_bhw(op, edge);
  TORCH_CHECK(e3.size(0) == x.size(0) && e3.size(1) == x.size(2) && e3.size(2) == x.size(3), op,
              ": edge must have shape [B, H, W] = [", x.size(0), ", ", x.size(2), ", ", x.size(3),
              "] (or [B, 1, H, W]) to match x ", shape_str(x), ", got ", shape_str(edge));
  return e3;
}

// path_affinity_backward: grad must be the forward output's shape [B, D, H, W].
inline void check_affinity_grad(const at::Tensor& grad, int64_t B, int64_t D, int64_t H, int64_t W) {
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == B && grad.size(1) == D && grad.size(2) == H &&
                  grad.size(3) == W,
              "path_affinity_backward: grad must have shape [", B, ", ", D, ", ", H, ", ", W,
              "], got ", shape_str(grad));
}

}  // namespace wsss_fast
