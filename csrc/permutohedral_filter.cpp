// Schema of the permutohedral-lattice Gaussian filter (see wsss_fast/ops/permutohedral_filter.py).
//   permutohedral_filter(values [B,C,H,W] or [B,C,N], features [B,D,H,W] or [B,D,N], transpose)
//     -> values' shape; transpose runs the blur in reverse axis order (the adjoint).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(wsss_fast, m) {
  m.def("permutohedral_filter(Tensor values, Tensor features, bool transpose=False) -> Tensor");
}
