// Schema of the dense CRF's mean-field inference (see wsss_fast/ops/dense_crf.py).
//   dense_crf(unary [B,L,H,W] float32, image [B,3,H,W] or [B,1,H,W] uint8, gaussian_sxy,
//             gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat, iterations)
//     -> Q [B,L,H,W] float32 (marginals after `iterations` mean-field steps)
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(wsss_fast, m) {
  m.def(
      "dense_crf(Tensor unary, Tensor image, float gaussian_sxy, float gaussian_compat, "
      "float bilateral_sxy, float bilateral_srgb, float bilateral_compat, int iterations) -> Tensor");
}
