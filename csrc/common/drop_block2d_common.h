// Shared by the CPU and CUDA kernels of drop_block2d (and mirrored bit for bit by
// wsss_fast/reference/drop_block2d.py): the counter-based seed hash, the Bernoulli
// threshold and the block geometry.
//
// Randomness: the Python wrapper draws a seed tensor int64[2] (two 32-bit words k0, k1)
// from torch's generator. Every seed position (map m, seed row a, seed column b) is a
// Bernoulli(gamma) draw: hash(pos = a * Ws + b; map key) < floor(gamma * 2^32). The hash
// is a keyed variant of Chris Wellons' "triple32" integer mixer (bias ~0.02), keyed per
// map by two 32-bit round keys derived from (m, k0, k1). It is deterministic, so CPU,
// CUDA and the reference draw the same mask from the same seed tensor.
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

// floor(gamma * 2^32) clamped to [0, 2^32]; a position is a seed iff hash < threshold.
// gamma = p * (H * W) / (bs^2 * Hs * Ws) ("paper"; Hs * Ws = H * W for "simple"), in
// exactly this order of double operations (the reference does the same).
WSSS_HD uint64_t seed_threshold(double p, int64_t H, int64_t W, int64_t bs, int64_t Hs,
                                int64_t Ws) {
  if (!(p > 0.0)) return 0;  // also NaN
  const double gamma = (p * static_cast<double>(H * W)) / static_cast<double>(bs * bs * Hs * Ws);
  if (gamma >= 1.0) return 4294967296ull;
  return static_cast<uint64_t>(gamma * 4294967296.0);
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

// Seeds from the counter-based hash of one map: seed iff pos_hash(a * Ws + b) < thresh.
// thresh is in [0, 2^32], so the draw compares in 32 bits, hash <= last = thresh - 1, once
// possible() (thresh > 0) holds; seed_word checks possible() first. (A 64-bit compare, or
// folding `any` into every draw, keeps GCC from vectorizing the CPU loop: 2.4x slower.)
struct HashSeedFn {
  MapKey key;
  uint32_t ws;
  uint32_t last;
  bool any;
  WSSS_HD bool possible() const { return any; }
  WSSS_HD bool operator()(int64_t a, int64_t b) const {  // requires possible()
    return pos_hash(static_cast<uint32_t>(a) * ws + static_cast<uint32_t>(b), key) <= last;
  }
};

// The seed draw of map m for seed words k0, k1 and threshold thresh (seed_threshold).
WSSS_HD HashSeedFn hash_seed_fn(uint32_t m, uint32_t k0, uint32_t k1, int64_t Ws, uint64_t thresh) {
  HashSeedFn fn;
  fn.key = map_key(m, k0, k1);
  fn.ws = static_cast<uint32_t>(Ws);
  fn.last = thresh > 0 ? static_cast<uint32_t>(thresh - 1) : 0u;
  fn.any = thresh > 0;
  return fn;
}

// Seeds from an explicit uint8 grid of one map ([Hs, Ws], nonzero = seed).
struct ByteSeedFn {
  const uint8_t* base;
  int64_t ws;
  WSSS_HD bool possible() const { return true; }
  WSSS_HD bool operator()(int64_t a, int64_t b) const { return base[a * ws + b] != 0; }
};

WSSS_HD int64_t words_for(int64_t bits) { return (bits + 31) / 32; }

// Seed word k of seed row a: bit i = seed(a, 32 k + i) for 32 k + i < Ws.
template <typename Seeds>
WSSS_HD uint32_t seed_word(const Seeds& seed, int64_t a, int64_t k, int64_t Ws) {
  const int64_t b0 = 32 * k;
  uint32_t w = 0;
  if (!seed.possible()) return 0;
  if (Ws - b0 >= 32) {  // full word: fixed trip count, unrolled on the GPU
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int i = 0; i < 32; ++i) w |= static_cast<uint32_t>(seed(a, b0 + i)) << i;
    return w;
  }
  const int n = static_cast<int>(Ws - b0);
  for (int i = 0; i < n; ++i) w |= static_cast<uint32_t>(seed(a, b0 + i)) << i;
  return w;
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
