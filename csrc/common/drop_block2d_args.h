// Host-side argument checks and geometry of drop_block2d (CPU and CUDA entry points).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <string_view>

#include "common/checks.h"
#include "common/drop_block2d_common.h"

namespace wsss_fast {
namespace dropblock {

struct Geometry {
  int64_t N, C, Cm, H, W, Hs, Ws, bs, shift;
};

inline bool is_paper(std::string_view op, c10::string_view mode) {
  const std::string_view gamma_mode(mode.data(), mode.size());
  TORCH_CHECK(gamma_mode == "paper" || gamma_mode == "simple", op,
              ": gamma_mode must be \"paper\" or \"simple\", got \"", std::string(gamma_mode), "\"");
  return gamma_mode == "paper";
}

inline Geometry make_geometry(const at::Tensor& x, int64_t block_size, bool shared_mask, bool paper,
                              const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be a 4-D tensor [N, C, H, W], got shape ",
              shape_str(x));
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op,
              ": x must be a floating-point tensor, got dtype ", x.scalar_type());
  Geometry g;
  g.N = x.size(0);
  g.C = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.Cm = shared_mask ? 1 : g.C;
  const int64_t max_bs = std::max<int64_t>(1, std::min(g.H, g.W));
  TORCH_CHECK(block_size >= 1 && block_size <= max_bs, op, ": block_size must be in [1, min(H, W) = ",
              max_bs, "] (the Python wrapper clips it), got ", block_size);
  g.bs = block_size;
  g.Hs = paper ? g.H - g.bs + 1 : g.H;
  g.Ws = paper ? g.W - g.bs + 1 : g.W;
  g.shift = paper ? 0 : (g.bs - 1) / 2;
  TORCH_CHECK(g.Hs * g.Ws < (int64_t(1) << 32) && g.N * g.Cm < (int64_t(1) << 32) && g.H < (int64_t(1) << 30) &&
                  g.W < (int64_t(1) << 30),
              op,
              ": x is too large for the 32-bit seed counter, got shape ", shape_str(x));
  return g;
}

// Output memory format: channels_last when x is channels_last (and not NCHW-contiguous).
inline at::MemoryFormat out_format(const at::Tensor& x) {
  return (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast))
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// The bit-packed keep mask: int32[ceil(N * Cm * H * W / 32)], bit e of the flat index e
// over [N, Cm, H, W] (see drop_block2d_common.h).
inline at::Tensor new_mask(const at::Tensor& x, const Geometry& g) {
  return at::empty({words_for(g.N * g.Cm * g.H * g.W)}, x.options().dtype(at::kInt));
}

// An int32 tensor of bit words (the mask and the kernels' intermediates) as uint32 words.
inline uint32_t* words(const at::Tensor& t) { return reinterpret_cast<uint32_t*>(t.data_ptr<int32_t>()); }

inline void check_backward_args(const at::Tensor& grad, const at::Tensor& mask, const at::Tensor& count,
                                bool shared_mask) {
  constexpr const char* op = "drop_block2d_backward";
  TORCH_CHECK(grad.dim() == 4, op, ": grad must be a 4-D tensor [N, C, H, W], got shape ", shape_str(grad));
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), op,
              ": grad must be a floating-point tensor, got dtype ", grad.scalar_type());
  TORCH_CHECK(mask.scalar_type() == at::kInt, op, ": mask must be the int32 bit mask of the forward, got dtype ",
              mask.scalar_type());
  const int64_t want = words_for(grad.size(0) * (shared_mask ? 1 : grad.size(1)) * grad.size(2) * grad.size(3));
  TORCH_CHECK(mask.dim() == 1 && mask.size(0) == want, op, ": mask must have shape [", want,
              "] (ceil(N * ", shared_mask ? "1" : "C", " * H * W / 32) words) for grad ", shape_str(grad),
              ", got ", shape_str(mask));
  TORCH_CHECK(count.scalar_type() == at::kLong && count.numel() == 1, op,
              ": count must be a one-element int64 tensor, got dtype ", count.scalar_type(), " shape ",
              shape_str(count));
  TORCH_CHECK(grad.device() == mask.device() && grad.device() == count.device(), op,
              ": grad, mask and count must be on the same device, got ", grad.device(), ", ", mask.device(),
              " and ", count.device());
}

inline void check_seed_args(const at::Tensor& x, const at::Tensor& seed, const at::Tensor& p) {
  constexpr const char* op = "drop_block2d";
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() == 2, op,
              ": seed must be an int64 tensor with 2 elements, got dtype ", seed.scalar_type(), " shape ",
              shape_str(seed));
  TORCH_CHECK(p.numel() == 1 && at::isFloatingType(p.scalar_type()), op,
              ": p must be a one-element floating tensor, got dtype ", p.scalar_type(), " shape ", shape_str(p));
  TORCH_CHECK(seed.device() == x.device() && p.device() == x.device(), op,
              ": seed and p must be on x's device ", x.device(), ", got ", seed.device(), " and ", p.device());
}

inline void check_seeds_tensor(const at::Tensor& x, const at::Tensor& seeds, const Geometry& g) {
  TORCH_CHECK(seeds.dim() == 4 && seeds.size(0) == g.N && (seeds.size(1) == 1 || seeds.size(1) == g.C) &&
                  seeds.size(2) == g.Hs && seeds.size(3) == g.Ws,
              "drop_block2d_from_seeds: seeds must have shape [", g.N, ", 1 or ", g.C, ", ", g.Hs, ", ", g.Ws,
              "] for x of shape ", shape_str(x), " and block_size ", g.bs, ", got ", shape_str(seeds));
  TORCH_CHECK(seeds.device() == x.device(), "drop_block2d_from_seeds: seeds must be on x's device ",
              x.device(), ", got ", seeds.device());
}

// Checked geometry of drop_block2d(x, seed, p, block_size, shared_mask, gamma_mode).
inline Geometry seed_geometry(const at::Tensor& x, const at::Tensor& seed, const at::Tensor& p, int64_t block_size,
                              bool shared_mask, c10::string_view gamma_mode) {
  const bool paper = is_paper("drop_block2d", gamma_mode);
  const Geometry g = make_geometry(x, block_size, shared_mask, paper, "drop_block2d");
  check_seed_args(x, seed, p);
  return g;
}

// Checked geometry of drop_block2d_from_seeds(x, seeds, block_size, gamma_mode); the mask is
// shared when seeds has one channel.
inline Geometry seeds_tensor_geometry(const at::Tensor& x, const at::Tensor& seeds, int64_t block_size,
                                      c10::string_view gamma_mode) {
  const bool paper = is_paper("drop_block2d_from_seeds", gamma_mode);
  const bool shared = seeds.dim() == 4 && seeds.size(1) == 1;
  const Geometry g = make_geometry(x, block_size, shared, paper, "drop_block2d_from_seeds");
  check_seeds_tensor(x, seeds, g);
  return g;
}

}  // namespace dropblock
}  // namespace wsss_fast
