// Schema of wsss_fast::gradcampp_weights: Grad-CAM++ channel weights of C target
// classes, fused (Chattopadhay et al., WACV 2018, Eq. 19). Kernels in
// cpu/gradcampp_weights_kernel.cpp and cuda/gradcampp_weights_kernel.cu.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(wsss_fast, m) {
  m.def(
      "gradcampp_weights(Tensor activations, Tensor grads, str variant=\"paper\", "
      "float? eps=None) -> Tensor");
}
