// CPU permutohedral lattice of one image, shared by permutohedral_filter and dense_crf.
//
// build(): every pixel is located in its simplex (common/permutohedral.h, in parallel), its
// d + 1 vertices are inserted into an open-addressing hash table in pixel order (the vertex
// ids are pydensecrf's), the blur neighbours of every vertex are looked up (in parallel), and
// the points of every vertex are listed in point order (CSR), so that a parallel splat is a
// gather whose sums run in pydensecrf's order (one thread scatters in pixel order instead).
// filter(): splat (gather, or scatter on one thread) -> blur along the d + 1 axes (0..d, or d..0 for the transpose)
// -> slice times alpha, every step parallel over vertices or pixels.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/permutohedral.h"

namespace wsss_fast {
namespace pl {

// Open-addressing hash table of d-integer keys -> dense ids in insertion order.
class KeyTable {
 public:
  KeyTable(int d, int64_t expected) : d_(d) {
    size_t cap = 1024;
    while (cap < static_cast<size_t>(2 * expected)) cap <<= 1;
    slots_.assign(cap, -1);
    mask_ = cap - 1;
    keys_.reserve(static_cast<size_t>(expected) * d);
  }
  int64_t size() const { return filled_; }
  const int* key(int64_t id) const { return keys_.data() + id * d_; }

  int32_t find_or_insert(const int* k) {
    if (2 * static_cast<size_t>(filled_ + 1) > slots_.size()) grow();
    size_t h = hash_key(k, d_, 0) & mask_;
    while (true) {
      const int32_t e = slots_[h];
      if (e < 0) {
        keys_.insert(keys_.end(), k, k + d_);
        slots_[h] = static_cast<int32_t>(filled_);
        return static_cast<int32_t>(filled_++);
      }
      if (equal(e, k)) return e;
      h = (h + 1) & mask_;
    }
  }
  // Read-only lookup (safe from several threads once the table is built); -1 if absent.
  int32_t find(const int* k) const {
    size_t h = hash_key(k, d_, 0) & mask_;
    while (true) {
      const int32_t e = slots_[h];
      if (e < 0) return -1;
      if (equal(e, k)) return e;
      h = (h + 1) & mask_;
    }
  }

 private:
  bool equal(int32_t e, const int* k) const {
    const int* s = keys_.data() + static_cast<int64_t>(e) * d_;
    for (int i = 0; i < d_; ++i)
      if (s[i] != k[i]) return false;
    return true;
  }
  void grow() {
    std::vector<int32_t> slots(slots_.size() * 2, -1);
    mask_ = slots.size() - 1;
    for (int64_t e = 0; e < filled_; ++e) {
      size_t h = hash_key(key(e), d_, 0) & mask_;
      while (slots[h] >= 0) h = (h + 1) & mask_;
      slots[h] = static_cast<int32_t>(e);
    }
    slots_.swap(slots);
  }
  int d_;
  int64_t filled_ = 0;
  size_t mask_ = 0;
  std::vector<int32_t> slots_;
  std::vector<int> keys_;
};

struct CpuLattice {
  int d = 0;
  int64_t N = 0, M = 0;
  float alpha = 1.0f;
  std::vector<int32_t> vid;      // [N * (d+1)] vertex id + 1 of point (pixel, remainder)
  std::vector<float> bary;       // [N * (d+1)] barycentric weight of that point
  std::vector<int32_t> nbr;      // [(d+1) * M * 2] ids + 1 of the two neighbours per axis (0: none)
  std::vector<int64_t> seg;      // [M + 1] CSR starts of the points of each vertex
  std::vector<int32_t> seg_pix;  // [N * (d+1)] pixel of each listed point (point order)
  std::vector<float> seg_w;      // [N * (d+1)] its weight
};

// feat(j, p): feature j of pixel p (float).
template <typename F>
void build_lattice(CpuLattice& L, int d, int64_t N, F feat) {
  const Consts c = make_consts(d);
  const int dp1 = d + 1;
  L.d = d;
  L.N = N;
  L.alpha = c.alpha;
  L.vid.assign(N * dp1, 0);
  L.bary.assign(N * dp1, 0.0f);
  std::vector<int> simplex(N * 2 * dp1);  // rem0[0..d], rank[0..d] per pixel
  at::parallel_for(0, N, 2048, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      int* s = simplex.data() + p * 2 * dp1;
      locate(c, [&](int j) { return feat(j, p); }, s, s + dp1, L.bary.data() + p * dp1);
    }
  });
  KeyTable table(d, std::max<int64_t>(N / 4, 16));
  // Neighbouring pixels often share vertices: the previous pixel's vertex of each remainder is
  // checked before the table (same ids, fewer probes).
  std::vector<int> last((d + 1) * d, 0);
  std::vector<int32_t> last_id(d + 1, -1);
  int key[kMaxDim];
  for (int64_t p = 0; p < N; ++p) {
    const int* s = simplex.data() + p * 2 * dp1;
    for (int r = 0; r <= d; ++r) {
      int* lk = last.data() + r * d;
      bool same = last_id[r] >= 0;
      for (int i = 0; i < d; ++i) {
        key[i] = vertex_coord(d, r, s, s + dp1, i);
        same = same && key[i] == lk[i];
      }
      if (!same) {
        last_id[r] = table.find_or_insert(key);
        std::copy(key, key + d, lk);
      }
      L.vid[p * dp1 + r] = last_id[r] + 1;
    }
  }
  std::vector<int>().swap(simplex);
  const int64_t M = table.size();
  L.M = M;
  L.nbr.assign(static_cast<size_t>(dp1) * M * 2, 0);
  at::parallel_for(0, M, 1024, [&](int64_t b, int64_t e) {
    int n1[kMaxDim], n2[kMaxDim];
    for (int64_t v = b; v < e; ++v) {
      const int* k = table.key(v);
      for (int j = 0; j <= d; ++j) {
        for (int i = 0; i < d; ++i) {
          n1[i] = k[i] - 1;
          n2[i] = k[i] + 1;
        }
        if (j < d) {
          n1[j] = k[j] + d;
          n2[j] = k[j] - d;
        }
        int32_t* o = L.nbr.data() + (static_cast<int64_t>(j) * M + v) * 2;
        o[0] = table.find(n1) + 1;
        o[1] = table.find(n2) + 1;
      }
    }
  });
  L.seg.assign(M + 1, 0);
  for (int64_t q = 0; q < N * dp1; ++q) ++L.seg[L.vid[q]];  // vid is id + 1: counts land at id + 1
  for (int64_t v = 0; v < M; ++v) L.seg[v + 1] += L.seg[v];
  std::vector<int64_t> fill(L.seg.begin(), L.seg.end() - 1);
  L.seg_pix.resize(N * dp1);
  L.seg_w.resize(N * dp1);
  for (int64_t q = 0; q < N * dp1; ++q) {
    const int64_t at = fill[L.vid[q] - 1]++;
    L.seg_pix[at] = static_cast<int32_t>(q / dp1);
    L.seg_w[at] = L.bary[q];
  }
}

// What the slice does with the filtered value s of pixel p, channel c:
//   kPlain: out[p, c] = s;  kCrf: out[p, c] += w * (s * out_scale[p]);  kNorm (C = 1):
//   out[p] = 1 / sqrt(s + 1e-20) (pydensecrf's NORMALIZE_SYMMETRIC factor).
enum class Emit { kPlain, kCrf, kNorm };

// Splat, blur and slice of C channels of the pixel-major input in [N, C] (times in_scale[p]
// when given) into out [N, C]. a and b are scratch buffers (resized here). The float
// operations are pydensecrf's: the splat sums w * v per vertex in point order; the blur is
// v + 0.5 (n1 + n2); the slice sums (w * v) * alpha for C <= 2 (its sequential path) and
// (w * alpha) * v otherwise (its SSE path).
template <typename T, int CC>
void lattice_filter_impl(const CpuLattice& L, int64_t Cr, bool transpose, std::vector<T>& a, std::vector<T>& b,
                         const T* in, const float* in_scale, T* out, const float* out_scale, T w, Emit mode) {
  const int64_t C = CC > 0 ? CC : Cr;
  const int d = L.d, dp1 = d + 1;
  const int64_t M = L.M, N = L.N;
  // Row 0 is the absent neighbour (zero); every other row is written before it is read, so
  // buffers reused across calls on the same lattice are not cleared.
  a.resize((M + 1) * C);
  b.resize((M + 1) * C);
  std::fill(a.begin(), a.begin() + C, T(0));
  std::fill(b.begin(), b.begin() + C, T(0));
  const int64_t* seg = L.seg.data();
  const int32_t* seg_pix = L.seg_pix.data();
  const float* seg_w = L.seg_w.data();
  T* const lat_a = a.data();
  // acc[ch] += w * (v[ch] * scale) or w * v[ch]
  auto splat_point = [&](T* __restrict__ acc, int64_t p, T wk) {
    const T* __restrict__ src = in + p * C;
    if (in_scale != nullptr) {
      const T s = static_cast<T>(in_scale[p]);
      for (int64_t ch = 0; ch < C; ++ch) acc[ch] += wk * (src[ch] * s);
    } else {
      for (int64_t ch = 0; ch < C; ++ch) acc[ch] += wk * src[ch];
    }
  };
  if (at::get_num_threads() == 1 || at::in_parallel_region()) {
    // One thread: scatter in pixel order, as pydensecrf (the input is read in order; the
    // vertices of neighbouring pixels mostly coincide). Each vertex sums its points in the
    // same order as the gather below, so both give the same floats.
    std::fill(a.begin() + C, a.end(), T(0));
    const int32_t* vid = L.vid.data();
    const float* bary = L.bary.data();
    for (int64_t p = 0; p < N; ++p)
      for (int r = 0; r < dp1; ++r)
        splat_point(lat_a + static_cast<int64_t>(vid[p * dp1 + r]) * C, p, static_cast<T>(bary[p * dp1 + r]));
  } else {
    // Several threads: gather, every vertex summing its points (listed in point order).
    at::parallel_for(0, M, 64, [&](int64_t vb, int64_t ve) {
      for (int64_t v = vb; v < ve; ++v) {
        T* __restrict__ acc = lat_a + (v + 1) * C;
        for (int64_t ch = 0; ch < C; ++ch) acc[ch] = T(0);
        for (int64_t k = seg[v]; k < seg[v + 1]; ++k) splat_point(acc, seg_pix[k], static_cast<T>(seg_w[k]));
      }
    });
  }
  T* src = a.data();
  T* dst = b.data();
  for (int s = 0; s <= d; ++s) {
    const int j = transpose ? d - s : s;
    const int32_t* nb = L.nbr.data() + static_cast<int64_t>(j) * M * 2;
    at::parallel_for(0, M, 1024, [&](int64_t vb, int64_t ve) {
      for (int64_t v = vb; v < ve; ++v) {
        const T* __restrict__ o = src + (v + 1) * C;
        const T* __restrict__ n1 = src + static_cast<int64_t>(nb[2 * v]) * C;
        const T* __restrict__ n2 = src + static_cast<int64_t>(nb[2 * v + 1]) * C;
        T* __restrict__ r = dst + (v + 1) * C;
        for (int64_t ch = 0; ch < C; ++ch) r[ch] = o[ch] + T(0.5) * (n1[ch] + n2[ch]);
      }
    });
    std::swap(src, dst);
  }
  const T alpha = static_cast<T>(L.alpha);
  const bool seq = C <= 2;
  const T* const lat = src;
  const int32_t* vid = L.vid.data();
  const float* bary = L.bary.data();
  at::parallel_for(0, N, 512, [&](int64_t pb, int64_t pe) {
    T fixed[CC > 0 ? CC : 1];
    std::vector<T> buf(CC > 0 ? 0 : C);
    T* __restrict__ acc = CC > 0 ? fixed : buf.data();
    for (int64_t p = pb; p < pe; ++p) {
      for (int64_t ch = 0; ch < C; ++ch) acc[ch] = T(0);
      for (int r = 0; r < dp1; ++r) {
        const T* __restrict__ val = lat + static_cast<int64_t>(vid[p * dp1 + r]) * C;
        const T wr = static_cast<T>(bary[p * dp1 + r]);
        if (seq) {
          for (int64_t ch = 0; ch < C; ++ch) acc[ch] += wr * val[ch] * alpha;
        } else {
          const T wa = wr * alpha;
          for (int64_t ch = 0; ch < C; ++ch) acc[ch] += wa * val[ch];
        }
      }
      T* __restrict__ o = out + p * C;
      if (mode == Emit::kPlain) {
        for (int64_t ch = 0; ch < C; ++ch) o[ch] = acc[ch];
      } else if (mode == Emit::kCrf) {
        const T sc = static_cast<T>(out_scale[p]);
        for (int64_t ch = 0; ch < C; ++ch) o[ch] += w * (acc[ch] * sc);
      } else {
        o[0] = static_cast<T>(1.0 / std::sqrt(static_cast<double>(acc[0]) + 1e-20));
      }
    }
  });
}

template <typename T>
void lattice_filter(const CpuLattice& L, int64_t C, bool transpose, std::vector<T>& a, std::vector<T>& b, const T* in,
                    const float* in_scale, T* out, const float* out_scale, T w, Emit mode) {
  switch (C) {
    case 1: return lattice_filter_impl<T, 1>(L, C, transpose, a, b, in, in_scale, out, out_scale, w, mode);
    case 2: return lattice_filter_impl<T, 2>(L, C, transpose, a, b, in, in_scale, out, out_scale, w, mode);
    case 3: return lattice_filter_impl<T, 3>(L, C, transpose, a, b, in, in_scale, out, out_scale, w, mode);
    case 4: return lattice_filter_impl<T, 4>(L, C, transpose, a, b, in, in_scale, out, out_scale, w, mode);
    case 21: return lattice_filter_impl<T, 21>(L, C, transpose, a, b, in, in_scale, out, out_scale, w, mode);  // VOC
    default: return lattice_filter_impl<T, 0>(L, C, transpose, a, b, in, in_scale, out, out_scale, w, mode);
  }
}

}  // namespace pl
}  // namespace wsss_fast
