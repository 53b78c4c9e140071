// CPU kernels of drop_block2d (DropBlock, Ghiasi et al., NeurIPS 2018).
//
// The mask is built with the bit-word functions of common/drop_block2d_common.h, the same
// ones every CUDA thread runs:
// Pass 1 (at::parallel_for over seed rows): the seed words of one seed row (geometric-gap
// draws, about 1.1 hashes per word), then its row words (horizontal dilation by word
// shifts); rows without a seed are zero.
// Pass 2 (parallel over keep words): each 32-bit word of the flat keep mask ORs the row
// words of the bs seed rows of its output rows and counts its kept bits.
// Pass 3 (parallel over elements) writes out = x * (keep ? numel / count : 0), reading x
// and the 1-bit mask once. The backward is pass 3 applied to grad.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <atomic>
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

// A new tensor like t in layout fmt. Large buffers are fresh mmap()ed pages whose 4 KiB
// first-touch faults cost more than the op itself (about 11 ms of ~25 for a 32 MiB output on
// the 2-core development machine); on Linux they are advised to use transparent huge pages,
// as c10's THP_MEM_ALLOC_ENABLE does for every allocation. Only a hint: nothing changes
// where THP is off.
at::Tensor new_output(const at::Tensor& t, at::MemoryFormat fmt) {
  at::Tensor out = at::empty(t.sizes(), t.options().memory_format(fmt));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const size_t nbytes = out.nbytes();
  if (nbytes >= 2 * kHuge) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(out.data_ptr());
    const uintptr_t lo = (p + kHuge - 1) & ~(kHuge - 1), hi = (p + nbytes) & ~(kHuge - 1);
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // failure is harmless
  }
#endif
  return out;
}

// Seed words of seed row a of one map (the per-word function every CUDA thread runs); returns
// the OR of the words. Cloned for AVX2, where GCC vectorizes the byte loop of explicit seeds.
template <typename Seeds>
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("avx2", "default")))
#endif
uint32_t seed_row_words(const Seeds& fn, int64_t a, int64_t Ws, uint32_t* words) {
  uint32_t any = 0;
  for (int64_t k = 0; k < dropblock::words_for(Ws); ++k) {
    words[k] = dropblock::seed_word(fn, a, k, Ws);
    any |= words[k];
  }
  return any;
}

// Builds the keep words K of every map and returns the kept count. seed_row(m, a, words)
// writes the seed words of seed row a of map m and returns whether any bit is set.
template <typename SeedRow>
int64_t build_mask(const Geometry& g, uint32_t* K, const SeedRow& seed_row) {
  const int64_t M = g.N * g.Cm, H = g.H, W = g.W, Hs = g.Hs, Ws = g.Ws, bs = g.bs, shift = g.shift;
  const int64_t nsw = dropblock::words_for(Ws), nrw = dropblock::words_for(W);
  std::vector<uint32_t> R(static_cast<size_t>(M * Hs * nrw));
  uint32_t* Rp = R.data();
  // Pass 1: row words of every seed row.
  at::parallel_for(0, M * Hs, grain_for(Ws), [&](int64_t q0, int64_t q1) {
    std::vector<uint32_t> sw(static_cast<size_t>(nsw));
    for (int64_t q = q0; q < q1; ++q) {
      uint32_t* rrow = Rp + q * nrw;
      if (!seed_row(q / Hs, q % Hs, sw.data())) {
        std::fill(rrow, rrow + nrw, 0u);
        continue;
      }
      for (int64_t j = 0; j < nrw; ++j) rrow[j] = dropblock::row_word(sw.data(), nsw, j, bs, shift, W);
    }
  });
  // Pass 2: keep words and the kept count.
  const int64_t nk = dropblock::words_for(M * H * W);
  std::atomic<int64_t> total{0};
  at::parallel_for(0, nk, grain_for(32 * bs), [&](int64_t f0, int64_t f1) {
    int64_t kept = 0;
    for (int64_t f = f0; f < f1; ++f) {
      const uint32_t w = dropblock::keep_word(Rp, f, M, H, W, Hs, bs, shift);
      K[f] = w;
      kept += __builtin_popcount(w);
    }
    total += kept;
  });
  return total.load();
}

// y[0 .. n) = x * (bit t of w ? scale : 0), n <= 32. The full-word loop has a fixed trip
// count and a constant bit per lane, so it vectorizes (compare, select, multiply).
template <typename scalar_t, typename acc>
inline void apply_word(const scalar_t* x, scalar_t* y, uint32_t w, int64_t n, acc scale) {
  if (n == 32) {
    for (int t = 0; t < 32; ++t) {
      const acc f = (w & (1u << t)) ? scale : acc(0);
      y[t] = static_cast<scalar_t>(static_cast<acc>(x[t]) * f);
    }
    return;
  }
  for (int64_t t = 0; t < n; ++t) {
    const acc f = ((w >> t) & 1u) ? scale : acc(0);
    y[t] = static_cast<scalar_t>(static_cast<acc>(x[t]) * f);
  }
}

// out = in * (keep ? scale : 0); in/out share the layout fmt; K holds the keep bits of the
// flat [N, Cm, H, W] mask.
void apply_mask(const at::Tensor& in, at::Tensor& out, const uint32_t* K, bool shared, int64_t count,
                at::MemoryFormat fmt) {
  const int64_t N = in.size(0), C = in.size(1), HW = in.size(2) * in.size(3);
  const int64_t Cm = shared ? 1 : C;
  const double scale_d = dropblock::keep_scale(N * Cm * HW, count);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "drop_block2d_cpu_apply", [&] {
    using acc = acc_t<scalar_t>;
    const acc scale = static_cast<acc>(scale_d);
    const scalar_t* x = in.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    if (fmt == at::MemoryFormat::Contiguous) {
      at::parallel_for(0, N * C, grain_for(HW), [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t base = (Cm == 1 ? i / C : i) * HW;  // flat mask index of element 0
          const scalar_t* xr = x + i * HW;
          scalar_t* yr = y + i * HW;
          for (int64_t j = 0; j < HW;) {
            const int64_t b = base + j;
            const int64_t n = std::min<int64_t>(32 - (b & 31), HW - j);
            apply_word<scalar_t, acc>(xr + j, yr + j, K[b >> 5] >> (b & 31), n, scale);
            j += n;
          }
        }
      });
    } else {  // channels_last: element (n, hw, c)
      at::parallel_for(0, N * HW, grain_for(C), [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t n = q / HW, hw = q % HW;
          const int64_t base = n * Cm * HW + hw;
          const scalar_t* xr = x + q * C;
          scalar_t* yr = y + q * C;
          for (int64_t c = 0; c < C; ++c) {
            const acc f = dropblock::keep_bit(K, base + (Cm == 1 ? 0 : c * HW)) ? scale : acc(0);
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
  at::Tensor out = new_output(x, fmt);
  at::Tensor cnt = at::full({}, count, x.options().dtype(at::kLong));
  if (x.numel() > 0) apply_mask(xc, out, dropblock::words(mask), g.Cm == 1, count, fmt);
  return {out, mask, cnt};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> drop_block2d_cpu(const at::Tensor& x, const at::Tensor& seed,
                                                               const at::Tensor& p, int64_t block_size,
                                                               bool shared_mask, c10::string_view gamma_mode) {
  const Geometry g = dropblock::seed_geometry(x, seed, p, block_size, shared_mask, gamma_mode);
  at::Tensor mask = dropblock::new_mask(x, g);
  if (x.numel() == 0) return finish(x, g, mask, 0);
  const at::Tensor sd = seed.contiguous();
  const int64_t* s = sd.const_data_ptr<int64_t>();
  const uint32_t k0 = static_cast<uint32_t>(s[0]), k1 = static_cast<uint32_t>(s[1]);
  uint64_t T[dropblock::kGapTable];
  dropblock::gap_table(dropblock::seed_gamma(p.item<double>(), g.H, g.W, g.bs, g.Hs, g.Ws), T);
  const int64_t count = build_mask(g, dropblock::words(mask), [&](int64_t m, int64_t a, uint32_t* words) {
    const dropblock::HashSeedFn fn = dropblock::hash_seed_fn(static_cast<uint32_t>(m), k0, k1, g.Ws, T);
    return fn.possible() && seed_row_words(fn, a, g.Ws, words) != 0;
  });
  return finish(x, g, mask, count);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> drop_block2d_from_seeds_cpu(const at::Tensor& x,
                                                                          const at::Tensor& seeds,
                                                                          int64_t block_size,
                                                                          c10::string_view gamma_mode) {
  const Geometry g = dropblock::seeds_tensor_geometry(x, seeds, block_size, gamma_mode);
  at::Tensor mask = dropblock::new_mask(x, g);
  if (x.numel() == 0) return finish(x, g, mask, 0);
  const at::Tensor sb = seeds.ne(0).to(at::kByte).contiguous();
  const uint8_t* sp = sb.const_data_ptr<uint8_t>();
  const int64_t Hs = g.Hs, Ws = g.Ws;
  const int64_t count = build_mask(g, dropblock::words(mask), [&](int64_t m, int64_t a, uint32_t* words) {
    const dropblock::ByteSeedFn fn{sp + m * Hs * Ws, Ws};
    return seed_row_words(fn, a, Ws, words) != 0;
  });
  return finish(x, g, mask, count);
}

at::Tensor drop_block2d_backward_cpu(const at::Tensor& grad, const at::Tensor& mask, const at::Tensor& count,
                                     bool shared_mask) {
  dropblock::check_backward_args(grad, mask, count, shared_mask);
  const auto fmt = dropblock::out_format(grad);
  const at::Tensor gc = grad.contiguous(fmt);
  at::Tensor out = new_output(grad, fmt);
  const at::Tensor mc = mask.contiguous();
  if (grad.numel() > 0) {
    apply_mask(gc, out, dropblock::words(mc), shared_mask, count.item<int64_t>(), fmt);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CPU, m) {
  m.impl("drop_block2d", &drop_block2d_cpu);
  m.impl("drop_block2d_from_seeds", &drop_block2d_from_seeds_cpu);
  m.impl("drop_block2d_backward", &drop_block2d_backward_cpu);
}

}  // namespace wsss_fast
