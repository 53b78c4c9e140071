// Schema of wsss_fast::weighted_cam: relu(sum_k w[b,c,k] A[b,k]), optionally bilinearly
// upsampled and min-max normalized per map. Kernels in cpu/weighted_cam_kernel.cpp and
// cuda/weighted_cam_kernel.cu.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(wsss_fast, m) {
  m.def(
      "weighted_cam(Tensor activations, Tensor weights, int[]? out_size=None, "
      "bool normalize=True) -> Tensor");
}
