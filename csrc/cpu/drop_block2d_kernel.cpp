// CPU kernels of drop_block2d (DropBlock, Ghiasi et al., NeurIPS 2018).
//
// Pass 1 (at::parallel_for over maps) builds the uint8 keep mask of each map from its
// seeds in O(H * W + Hs * Ws) with a streaming separable window: for each seed row the
// horizontal "some seed in the window" bits are found with a running "last seed column",
// and each column keeps the last seed row that hit it, so a pixel is dropped iff that row
// lies in its vertical window. It counts kept pixels. x is not touched.
// Pass 2 (parallel over elements) writes out = x * (keep ? numel / count : 0), reading x
// and the 1-byte mask once. The backward is pass 2 applied to grad.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

#include "common/accumulate.h"
#include "common/drop_block2d_args.h"
#include "common/drop_block2d_common.h"

namespace wsss_fast {
namespace {

using dropblock::Geometry;

// Elements per parallel task: small inputs run inline instead of waking the thread pool.
constexpr int64_t kGrainElems = 32768;

int64_t grain_for(int64_t elems_per_item) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, elems_per_item));
}

std::string_view sv(c10::string_view s) { return std::string_view(s.data(), s.size()); }

// Seed bits of one seed row (positions base .. base + Ws - 1 of a map); returns whether any
// is set. Cloned for AVX2 (8 hashes per instruction) with a generic fallback.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("avx2", "default")))
#endif
bool fill_hash_row(uint32_t base, int64_t Ws, uint32_t ka, uint32_t kb, uint64_t thresh, uint8_t* row) {
  const dropblock::MapKey key{ka, kb};
  if (thresh >= 4294967296ull) {
    std::fill(row, row + Ws, uint8_t(1));
    return Ws > 0;
  }
  const uint32_t t = static_cast<uint32_t>(thresh);
  uint8_t any = 0;
  for (int64_t b = 0; b < Ws; ++b) {
    const uint8_t v = dropblock::pos_hash(base + static_cast<uint32_t>(b), key) < t;
    row[b] = v;
    any |= v;
  }
  return any != 0;
}

// One output row of the keep mask: kept iff the last seed row hitting the column is < lo.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("avx2", "default")))
#endif
int64_t emit_row(const int32_t* last, int32_t lo, uint8_t* orow, int64_t W) {
  int32_t k = 0;
  for (int64_t c = 0; c < W; ++c) {
    const uint8_t keep = last[c] < lo;
    orow[c] = keep;
    k += keep;
  }
  return k;
}

// Builds the keep mask of every map. fill_row(m, a, row) writes the Ws seed bits of seed
// row a of map m into row and returns whether any is set. Returns the total kept count.
template <typename FillRow>
int64_t build_mask(const Geometry& g, uint8_t* mask, const FillRow& fill_row) {
  const int64_t M = g.N * g.Cm, H = g.H, W = g.W, Hs = g.Hs, Ws = g.Ws, bs = g.bs, shift = g.shift;
  std::atomic<int64_t> total{0};
  at::parallel_for(0, M, grain_for(H * W), [&](int64_t m0, int64_t m1) {
    std::vector<uint8_t> row(static_cast<size_t>(std::max<int64_t>(Ws, 1)));
    std::vector<int32_t> last(static_cast<size_t>(W));
    int64_t kept = 0;
    for (int64_t m = m0; m < m1; ++m) {
      std::fill(last.begin(), last.end(), std::numeric_limits<int32_t>::min() / 2);
      uint8_t* out = mask + m * H * W;
      int64_t next_a = 0;
      for (int64_t r = 0; r < H; ++r) {
        const int64_t a_max = std::min(r + shift, Hs - 1);
        for (; next_a <= a_max; ++next_a) {
          if (!fill_row(m, next_a, row.data())) continue;
          // Horizontal: column c is hit iff a seed b in [c - bs + 1 + shift, c + shift].
          int64_t last_b = std::numeric_limits<int64_t>::min() / 2;
          int64_t b = 0;
          for (int64_t c = 0; c < W; ++c) {
            const int64_t b_max = std::min(c + shift, Ws - 1);
            for (; b <= b_max; ++b) {
              if (row[b]) last_b = b;
            }
            if (last_b >= c - bs + 1 + shift) last[c] = static_cast<int32_t>(next_a);
          }
        }
        // Vertical: dropped iff the last hitting seed row is >= r - bs + 1 + shift.
        kept += emit_row(last.data(), static_cast<int32_t>(r - bs + 1 + shift), out + r * W, W);
      }
    }
    total += kept;
  });
  return total.load();
}

// out = in * (mask ? scale : 0); in/out share the layout fmt, mask is [N, Cm, H, W].
void apply_mask(const at::Tensor& in, at::Tensor& out, const at::Tensor& mask, int64_t count,
                at::MemoryFormat fmt) {
  const int64_t N = in.size(0), C = in.size(1), HW = in.size(2) * in.size(3);
  const int64_t Cm = mask.size(1);
  const double scale_d = dropblock::keep_scale(mask.numel(), count);
  const uint8_t* mk = mask.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "drop_block2d_cpu_apply", [&] {
    using acc = acc_t<scalar_t>;
    const acc scale = static_cast<acc>(scale_d);
    const scalar_t* x = in.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    if (fmt == at::MemoryFormat::Contiguous) {
      at::parallel_for(0, N * C, grain_for(HW), [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const uint8_t* mrow = mk + (Cm == 1 ? i / C : i) * HW;
          const scalar_t* xr = x + i * HW;
          scalar_t* yr = y + i * HW;
          for (int64_t j = 0; j < HW; ++j) {
            const acc f = mrow[j] ? scale : acc(0);
            yr[j] = static_cast<scalar_t>(static_cast<acc>(xr[j]) * f);
          }
        }
      });
    } else {  // channels_last: element (n, hw, c)
      at::parallel_for(0, N * HW, grain_for(C), [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t n = q / HW, hw = q % HW;
          const uint8_t* mp = mk + n * Cm * HW + hw;
          const scalar_t* xr = x + q * C;
          scalar_t* yr = y + q * C;
          for (int64_t c = 0; c < C; ++c) {
            const acc f = mp[Cm == 1 ? 0 : c * HW] ? scale : acc(0);
            yr[c] = static_cast<scalar_t>(static_cast<acc>(xr[c]) * f);
          }
        }
      });
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> finish(const at::Tensor& x, const Geometry& g,
                                                      at::Tensor& mask, int64_t count) {
  const auto fmt = dropblock::out_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(fmt));
  at::Tensor cnt = at::full({}, count, x.options().dtype(at::kLong));
  if (x.numel() > 0) apply_mask(xc, out, mask, count, fmt);
  return {out, mask, cnt};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> drop_block2d_cpu(const at::Tensor& x, const at::Tensor& seed,
                                                               const at::Tensor& p, int64_t block_size,
                                                               bool shared_mask, c10::string_view gamma_mode) {
  const bool paper = dropblock::is_paper("drop_block2d", sv(gamma_mode));
  const Geometry g = dropblock::make_geometry(x, block_size, shared_mask, paper, "drop_block2d");
  dropblock::check_seed_args(x, seed, p);
  at::Tensor mask = at::empty({g.N, g.Cm, g.H, g.W}, x.options().dtype(at::kByte));
  if (x.numel() == 0) return finish(x, g, mask, 0);
  const at::Tensor sd = seed.contiguous();
  const int64_t* s = sd.const_data_ptr<int64_t>();
  const uint32_t k0 = static_cast<uint32_t>(s[0]), k1 = static_cast<uint32_t>(s[1]);
  const uint64_t thresh =
      dropblock::seed_threshold(p.item<double>(), g.H, g.W, g.bs, g.Hs, g.Ws);
  const int64_t Ws = g.Ws;
  const int64_t count = build_mask(g, mask.data_ptr<uint8_t>(), [&](int64_t m, int64_t a, uint8_t* row) {
    if (thresh == 0) return false;
    const dropblock::MapKey key = dropblock::map_key(static_cast<uint32_t>(m), k0, k1);
    return fill_hash_row(static_cast<uint32_t>(a * Ws), Ws, key.ka, key.kb, thresh, row);
  });
  return finish(x, g, mask, count);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> drop_block2d_from_seeds_cpu(const at::Tensor& x,
                                                                          const at::Tensor& seeds,
                                                                          int64_t block_size,
                                                                          c10::string_view gamma_mode) {
  const bool paper = dropblock::is_paper("drop_block2d_from_seeds", sv(gamma_mode));
  const bool shared = seeds.dim() == 4 && seeds.size(1) == 1;
  const Geometry g = dropblock::make_geometry(x, block_size, shared, paper, "drop_block2d_from_seeds");
  dropblock::check_seeds_tensor(x, seeds, g);
  at::Tensor mask = at::empty({g.N, g.Cm, g.H, g.W}, x.options().dtype(at::kByte));
  if (x.numel() == 0) return finish(x, g, mask, 0);
  const at::Tensor sb = seeds.ne(0).to(at::kByte).contiguous();
  const uint8_t* sp = sb.const_data_ptr<uint8_t>();
  const int64_t Hs = g.Hs, Ws = g.Ws;
  const int64_t count = build_mask(g, mask.data_ptr<uint8_t>(), [&](int64_t m, int64_t a, uint8_t* row) {
    const uint8_t* src = sp + (m * Hs + a) * Ws;
    uint8_t any = 0;
    for (int64_t b = 0; b < Ws; ++b) {
      row[b] = src[b];
      any |= src[b];
    }
    return any != 0;
  });
  return finish(x, g, mask, count);
}

at::Tensor drop_block2d_backward_cpu(const at::Tensor& grad, const at::Tensor& mask, const at::Tensor& count) {
  dropblock::check_backward_args(grad, mask, count);
  const auto fmt = dropblock::out_format(grad);
  const at::Tensor gc = grad.contiguous(fmt);
  at::Tensor out = at::empty(grad.sizes(), grad.options().memory_format(fmt));
  if (grad.numel() > 0) apply_mask(gc, out, mask.contiguous(), count.item<int64_t>(), fmt);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CPU, m) {
  m.impl("drop_block2d", &drop_block2d_cpu);
  m.impl("drop_block2d_from_seeds", &drop_block2d_from_seeds_cpu);
  m.impl("drop_block2d_backward", &drop_block2d_backward_cpu);
}

}  // namespace wsss_fast
