// Schema of IRNet's path affinity (see wsss_fast/ops/path_affinity.py).
//   path_affinity(edge [B,H,W] or [B,1,H,W], radius) -> [B, D, H, W]
//   path_affinity_backward(grad [B,D,H,W], edge, radius) -> grad_edge (edge's shape)
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(wsss_fast, m) {
  m.def("path_affinity(Tensor edge, int radius) -> Tensor");
  m.def("path_affinity_backward(Tensor grad, Tensor edge, int radius) -> Tensor");
}
