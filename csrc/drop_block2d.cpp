// Schemas of the fused DropBlock op (Ghiasi et al., NeurIPS 2018).
//
// drop_block2d(x, seed, p, block_size, shared_mask, gamma_mode) -> (out, mask, count)
//   x      [N, C, H, W] floating; seed int64[2] (two 32-bit key words, on x's device);
//   p      0-dim floating tensor on x's device (drop probability; read on device);
//   block_size in [1, min(H, W)] (the Python wrapper clips); gamma_mode "paper"|"simple".
//   out    [N, C, H, W] = x * mask * numel(mask) / count (zeros when count == 0),
//          channels_last when x is channels_last (and not NCHW-contiguous), else contiguous;
//   mask   int32 [ceil(N * (C or 1) * H * W / 32)]: bit e (word e / 32, bit e % 32) is 1 iff
//          element e of the flat [N, C or 1, H, W] mask is kept; count int64 0-dim (kept).
// drop_block2d_from_seeds(x, seeds, block_size, gamma_mode) -> (out, mask, count)
//   the same with an explicit seed grid seeds [N, C or 1, Hs, Ws] (nonzero = seed).
// drop_block2d_backward(grad, mask, count, shared_mask) -> grad * keep * N (C or 1) H W / count.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(wsss_fast, m) {
  m.def(
      "drop_block2d(Tensor x, Tensor seed, Tensor p, int block_size, bool shared_mask, "
      "str gamma_mode) -> (Tensor, Tensor, Tensor)");
  m.def(
      "drop_block2d_from_seeds(Tensor x, Tensor seeds, int block_size, str gamma_mode) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("drop_block2d_backward(Tensor grad, Tensor mask, Tensor count, bool shared_mask) -> Tensor");
}
