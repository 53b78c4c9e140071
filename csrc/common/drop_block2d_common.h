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

// Scale applied to kept elements: numel(mask) / count, or 0 when everything is dropped.
WSSS_HD double keep_scale(int64_t numel, int64_t count) {
  return count > 0 ? static_cast<double>(numel) / static_cast<double>(count) : 0.0;
}

}  // namespace dropblock
}  // namespace wsss_fast
