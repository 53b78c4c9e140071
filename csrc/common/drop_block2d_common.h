// Shared by the CPU and CUDA kernels of drop_block2d (and mirrored bit for bit by
// wsss_fast/reference/drop_block2d.py): the counter-based seed draw and the block geometry.
//
// Randomness: the Python wrapper draws a seed tensor int64[2] (two 32-bit words k0, k1)
// from torch's generator. Every seed position is an independent Bernoulli(gamma) draw,
// sampled word by word (32 seed columns) as geometric gaps: from column offset i of a word,
// one 32-bit hash u of the position says how many positions to skip before the next seed,
// gap d with probability gamma (1 - gamma)^d, or "no seed in the rest of the word" with
// probability (1 - gamma)^rest (inverse CDF on the table T of gap_table). A word costs
// 1 + (its seeds) hashes instead of 32: about 1.1 at DropBlock's gamma of a few 1e-3.
// The hash is a keyed variant of Chris Wellons' "triple32" integer mixer (bias ~0.02),
// keyed per map by two 32-bit round keys derived from (m, k0, k1), of the position
// a * Ws + b where the gap search starts. It is deterministic, and T is computed with the
// same IEEE double operations everywhere, so CPU, CUDA and the reference draw the same
// mask from the same seed tensor.
//
// Geometry: output pixel r (row; columns alike) is dropped iff some seed row a with
// r - bs + 1 + shift <= a <= r + shift, 0 <= a < Hs, is a seed (same for columns), where
//   gamma_mode "paper":  Hs = H - bs + 1, shift = 0            (seed = top-left corner)
//   gamma_mode "simple": Hs = H,          shift = (bs - 1) / 2  (seed drops rows
//                        a - (bs-1)/2 ... a + bs/2, clipped).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define WSSS_HD __host__ __device__ __forceinline__
#else
#define WSSS_HD inline
#endif

namespace wsss_fast {
namespace dropblock {

WSSS_HD uint32_t triple32(uint32_t x) {
  x ^= x >> 17;
  x *= 0xed5ad4bbu;
  x ^= x >> 11;
  x *= 0xac4c1b51u;
  x ^= x >> 15;
  x *= 0x31848babu;
  x ^= x >> 14;
  return x;
}

struct MapKey {
  uint32_t ka, kb;
};

// Round keys of map m (m = n * C + c, or n with a shared mask) for seed words k0, k1.
WSSS_HD MapKey map_key(uint32_t m, uint32_t k0, uint32_t k1) {
  MapKey k;
  k.ka = triple32(triple32(m ^ k0) ^ k1);
  k.kb = triple32(k.ka ^ 0x9e3779b9u);
  return k;
}

// Keyed hash of a seed position inside one map.
WSSS_HD uint32_t pos_hash(uint32_t pos, MapKey k) {
  uint32_t x = pos ^ k.ka;
  x ^= x >> 17;
  x *= 0xed5ad4bbu;
  x ^= k.kb;
  x ^= x >> 11;
  x *= 0xac4c1b51u;
  x ^= x >> 15;
  x *= 0x31848babu;
  x ^= x >> 14;
  return x;
}

// gamma = p * (H * W) / (bs^2 * Hs * Ws) ("paper"; Hs * Ws = H * W for "simple"), in
// exactly this order of double operations (the reference does the same); 0 for p <= 0 or NaN.
WSSS_HD double seed_gamma(double p, int64_t H, int64_t W, int64_t bs, int64_t Hs, int64_t Ws) {
  if (!(p > 0.0)) return 0.0;
  return (p * static_cast<double>(H * W)) / static_cast<double>(bs * bs * Hs * Ws);
}

// a * b rounded once, never fused into a neighbouring add (the table below must come out
// bit-identical on every compiler and device).
WSSS_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  volatile double r = a * b;
  return r;
#endif
}

constexpr int kGapTable = 33;

// Gap table of the seed draw: T[k] = floor(2^32 (1 - (1 - gamma)^k)) for k = 0 .. 32, the
// powers by repeated multiplication (gamma >= 1 gives T[k >= 1] = 2^32: every position is
// a seed). From column offset i of a word with n columns, a hash u gives the next seed at
// i + d for the smallest d with u < T[d + 1], or none when u >= T[n - i]. Nondecreasing.
WSSS_HD void gap_table(double gamma, uint64_t* T) {
  const double q = gamma >= 1.0 ? 0.0 : 1.0 - gamma;
  double qk = 1.0;
  T[0] = 0;
  for (int k = 1; k < kGapTable; ++k) {
    qk = mul_rn(qk, q);
    T[k] = gamma > 0.0 ? static_cast<uint64_t>((1.0 - qk) * 4294967296.0) : 0u;
  }
}

// ----------------------------------------------------------------------------------------
// Bit-packed mask construction, shared by the CPU and CUDA kernels (every thread of the
// CUDA kernels runs one of these per work item; the CPU runs the same functions in loops,
// so the CPU tests check the per-item logic of both).
//
//   seed words S[m, a, k]  (k < nsw = ceil(Ws / 32)): bit i = seed at (a, 32 k + i);
//   row words  R[m, a, j]  (j < nrw = ceil(W / 32)):  bit i = output column c = 32 j + i < W
//                          is hit by a seed of seed row a (horizontal dilation);
//   keep words K[f] of the flat [M, H, W] bit array:  bit i = element 32 f + i is kept, i.e.
//                          no seed row a in the vertical window of its row hits its column.
// The mask saved for the backward is K: int32[ceil(M H W / 32)], bit e of the flat NCHW
// index e over [N, C or 1, H, W].

// Seeds from the counter-based hash of one map, drawn as geometric gaps on the table T
// (gap_table); possible() is false when no seed can be drawn (T[32] = 0).
struct HashSeedFn {
  MapKey key;
  uint32_t ws;
  const uint64_t* T;
  WSSS_HD bool possible() const { return T[kGapTable - 1] > 0; }
  // Seed word k of seed row a: bit i = seed at (a, 32 k + i) for 32 k + i < Ws.
  WSSS_HD uint32_t word(int64_t a, int64_t k, int64_t Ws) const {
    const int64_t b0 = 32 * k;
    const int n = Ws - b0 >= 32 ? 32 : static_cast<int>(Ws - b0);
    const uint32_t base = static_cast<uint32_t>(a) * ws + static_cast<uint32_t>(b0);
    uint32_t w = 0;
    for (int i = 0; i < n;) {
      const uint32_t u = pos_hash(base + static_cast<uint32_t>(i), key);
      const int rest = n - i;
      if (T[rest] <= u) break;  // no seed in columns i .. n - 1
      int lo = 0, hi = rest - 1;  // the smallest gap d < rest with u < T[d + 1]
      while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (u < T[mid + 1]) {
          hi = mid;
        } else {
          lo = mid + 1;
        }
      }
      i += lo;
      w |= 1u << i;
      ++i;
    }
    return w;
  }
};

// The seed draw of map m for seed words k0, k1 on the gap table T.
WSSS_HD HashSeedFn hash_seed_fn(uint32_t m, uint32_t k0, uint32_t k1, int64_t Ws, const uint64_t* T) {
  HashSeedFn fn;
  fn.key = map_key(m, k0, k1);
  fn.ws = static_cast<uint32_t>(Ws);
  fn.T = T;
  return fn;
}

// Seeds from an explicit uint8 grid of one map ([Hs, Ws], nonzero = seed).
struct ByteSeedFn {
  const uint8_t* base;
  int64_t ws;
  WSSS_HD bool possible() const { return true; }
  WSSS_HD uint32_t word(int64_t a, int64_t k, int64_t Ws) const {
    const uint8_t* row = base + a * ws + 32 * k;
    uint32_t w = 0;
    if (Ws - 32 * k >= 32) {  // full word: fixed trip count (unrolled on the GPU, vectorized on the CPU)
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (int i = 0; i < 32; ++i) w |= static_cast<uint32_t>(row[i] != 0) << i;
      return w;
    }
    const int n = static_cast<int>(Ws - 32 * k);
    for (int i = 0; i < n; ++i) w |= static_cast<uint32_t>(row[i] != 0) << i;
    return w;
  }
};

WSSS_HD int64_t words_for(int64_t bits) { return (bits + 31) / 32; }

// Seed word k of seed row a: bit i = seed(a, 32 k + i) for 32 k + i < Ws (0 when no seed is
// possible).
template <typename Seeds>
WSSS_HD uint32_t seed_word(const Seeds& seed, int64_t a, int64_t k, int64_t Ws) {
  return seed.possible() ? seed.word(a, k, Ws) : 0u;
}

// 64 seed bits of one seed row starting at (possibly negative) seed column s; columns
// outside [0, 32 nsw) read as 0 (bits >= Ws are 0 in the words themselves).
WSSS_HD uint64_t seed_bits64(const uint32_t* srow, int64_t nsw, int64_t s) {
  const int64_t q = s >= 0 ? s / 32 : -((31 - s) / 32);  // floor(s / 32)
  const int off = static_cast<int>(s - 32 * q);
  uint32_t w[3];
  for (int t = 0; t < 3; ++t) w[t] = (q + t >= 0 && q + t < nsw) ? srow[q + t] : 0u;
  const uint64_t lo = static_cast<uint64_t>(w[0]) | (static_cast<uint64_t>(w[1]) << 32);
  return off == 0 ? lo : (lo >> off) | (static_cast<uint64_t>(w[2]) << (64 - off));
}

// Row word j of seed row srow (nsw seed words): bit i set iff output column c = 32 j + i < W
// has a seed b in [c - bs + 1 + shift, c + shift].
WSSS_HD uint32_t row_word(const uint32_t* srow, int64_t nsw, int64_t j, int64_t bs, int64_t shift, int64_t W) {
  const int64_t start = 32 * j - bs + 1 + shift;  // seed column of window offset 0 of bit 0
  uint32_t hit = 0;
  for (int64_t t = 0; t < bs; t += 32) {
    const int L = static_cast<int>(bs - t < 32 ? bs - t : 32);
    uint64_t v = seed_bits64(srow, nsw, start + t);
    // Sliding OR: bit i of v becomes OR of bits i .. i + L - 1 (i < 32, so bits < 63 suffice).
    for (int span = 1; span < L;) {
      const int sh = span < L - span ? span : L - span;
      v |= v >> sh;
      span += sh;
    }
    hit |= static_cast<uint32_t>(v);
  }
  const int64_t valid = W - 32 * j;
  return valid >= 32 ? hit : hit & ((1u << valid) - 1u);
}

// 32 bits of a row-word row (nrw words) starting at output column c (0 <= c < W).
WSSS_HD uint32_t row_bits32(const uint32_t* rrow, int64_t nrw, int64_t c) {
  const int64_t q = c / 32;
  const int off = static_cast<int>(c - 32 * q);
  const uint32_t lo = rrow[q];
  if (off == 0) return lo;
  const uint32_t hi = q + 1 < nrw ? rrow[q + 1] : 0u;
  return (lo >> off) | (hi << (32 - off));
}

// Keep word f of the flat [M, H, W] bit array from the row words R ([M, Hs, nrw]). I is
// the index type: int64_t, or int32_t when M H W < 2^30 (cheaper division on GPUs).
template <typename I = int64_t>
WSSS_HD uint32_t keep_word(const uint32_t* R, I f, I M, I H, I W, I Hs, I bs, I shift) {
  const I HW = H * W, total = M * HW, nrw = (W + 31) / 32;
  I e = 32 * f;
  const I e_end = e + 32 < total ? e + 32 : total;
  I m = e / HW;
  const I rem = e - m * HW;
  I r = rem / W, c = rem - r * W;
  uint32_t word = 0;
  int filled = 0;
  while (e < e_end) {
    const I left = e_end - e, in_row = W - c;
    const int len = static_cast<int>(in_row < left ? in_row : left);  // <= 32
    const I a0 = r - bs + 1 + shift, a1 = r + shift;
    const uint32_t* Rm = R + static_cast<int64_t>(m) * Hs * nrw;
    uint32_t hit = 0;
    for (I a = a0 > 0 ? a0 : 0; a <= a1 && a < Hs; ++a) hit |= row_bits32(Rm + a * nrw, nrw, c);
    const uint32_t lenmask = len >= 32 ? ~0u : ((1u << len) - 1u);
    word |= (~hit & lenmask) << filled;
    filled += len;
    e += len;
    c = 0;
    if (++r == H) {
      r = 0;
      ++m;
    }
  }
  return word;
}

// Keep bit of flat mask index i.
WSSS_HD bool keep_bit(const uint32_t* K, int64_t i) { return (K[i >> 5] >> (i & 31)) & 1u; }

// Scale applied to kept elements: numel(mask) / count, or 0 when everything is dropped.
WSSS_HD double keep_scale(int64_t numel, int64_t count) {
  return count > 0 ? static_cast<double>(numel) / static_cast<double>(count) : 0.0;
}

}  // namespace dropblock
}  // namespace wsss_fast
