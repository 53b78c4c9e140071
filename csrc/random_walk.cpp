// Schema of IRNet's sparse random walk (see wsss_fast/ops/random_walk.py).
//   random_walk(x [B,C,H,W], edge [B,H,W] or [B,1,H,W], radius, beta, steps) -> [B,C,H,W]
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(wsss_fast, m) {
  m.def("random_walk(Tensor x, Tensor edge, int radius, float beta, int steps, bool mask_edge=True) -> Tensor");
}
