// Construction of the batched CUDA permutohedral lattice (see cuda/permutohedral_cuda.cuh).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include "cuda/permutohedral_cuda.cuh"

namespace wsss_fast {
namespace plc {
namespace {

__global__ void locate_kernel(const float* __restrict__ feat, Geom g, int* __restrict__ rem0,
                              int8_t* __restrict__ rank, float* __restrict__ bary) {
  const int dp1 = g.d + 1;
  for (int64_t px = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; px < g.G;
       px += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = px / g.N, p = px - b * g.N;
    const float* f = feat + b * g.d * g.N + p;
    const int64_t N = g.N;
    int rm[pl::kMaxDim + 1], rk[pl::kMaxDim + 1];
    float w[pl::kMaxDim + 1];
    pl::locate(g.c, [=](int j) { return f[j * N]; }, rm, rk, w);
    for (int i = 0; i < g.d; ++i) {
      rem0[px * g.d + i] = rm[i];
      rank[px * g.d + i] = static_cast<int8_t>(rk[i]);
    }
    for (int r = 0; r < dp1; ++r) bary[px * dp1 + r] = w[r];
  }
}

__global__ void insert_kernel(Geom g, const int* __restrict__ rem0, const int8_t* __restrict__ rank, int* table,
                              int* __restrict__ slot_of) {
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < g.P;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int key[pl::kMaxDim];
    const int64_t img = point_key(g, rem0, rank, q, key);
    uint64_t h = pl::hash_key(key, g.d, static_cast<uint64_t>(img)) & g.mask;
    while (true) {
      int e = table[h];
      if (e < 0) {
        e = atomicCAS(table + h, -1, static_cast<int>(q));
        if (e < 0) break;  // this point represents the new vertex
      }
      if (same_key(g, rem0, rank, e, key, img)) break;
      h = (h + 1) & g.mask;
    }
    // the table has up to 2^32 slots (P < 2^31, load <= 2/3): stored as int, read back unsigned
    slot_of[q] = static_cast<int>(static_cast<uint32_t>(h));
  }
}

// Representatives draw vertex ids; id_of[rep] = id.
__global__ void number_kernel(int64_t P, const int* __restrict__ table, const int* __restrict__ slot_of,
                              int* __restrict__ id_of, int* __restrict__ counter) {
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < P;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (table[static_cast<uint32_t>(slot_of[q])] == static_cast<int>(q)) id_of[q] = atomicAdd(counter, 1);
  }
}

// vid[q] = id of q's representative (written in place: representatives keep their own id,
// the other entries are written only by their own thread).
__global__ void vid_kernel(int64_t P, const int* __restrict__ table, const int* __restrict__ slot_of, int* id_of,
                           int* __restrict__ rep) {
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < P;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int e = table[static_cast<uint32_t>(slot_of[q])];
    const int id = id_of[e];
    if (e == static_cast<int>(q)) {
      rep[id] = e;
    } else {
      id_of[q] = id;
    }
  }
}

__global__ void neighbour_kernel(Geom g, int64_t M, const int* __restrict__ table, const int* __restrict__ rem0,
                                 const int8_t* __restrict__ rank, const int* __restrict__ rep,
                                 const int* __restrict__ vid, int* __restrict__ nbr) {
  const int dp1 = g.d + 1;
  const int64_t total = M * dp1;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int j = static_cast<int>(t / M);
    const int64_t v = t - j * M;
    int key[pl::kMaxDim], n1[pl::kMaxDim], n2[pl::kMaxDim];
    const int64_t img = point_key(g, rem0, rank, rep[v], key);
    for (int i = 0; i < g.d; ++i) {
      n1[i] = key[i] - 1;
      n2[i] = key[i] + 1;
    }
    if (j < g.d) {
      n1[j] = key[j] + g.d;
      n2[j] = key[j] - g.d;
    }
    const int64_t s1 = find_slot(g, table, rem0, rank, n1, img);
    const int64_t s2 = find_slot(g, table, rem0, rank, n2, img);
    nbr[t * 2] = s1 < 0 ? -1 : vid[table[s1]];
    nbr[t * 2 + 1] = s2 < 0 ? -1 : vid[table[s2]];
  }
}

// seg[v] = first position of vertex v in the sorted vertex list; seg[M] = P.
__global__ void seg_kernel(int64_t P, int64_t M, const int* __restrict__ sorted, int* __restrict__ seg) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < P;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (i == 0 || sorted[i] != sorted[i - 1]) seg[sorted[i]] = static_cast<int>(i);
    if (i == 0) seg[M] = static_cast<int>(P);
  }
}

}  // namespace

GpuLattice build_lattice_cuda(const at::Tensor& features) {
  const int64_t B = features.size(0), d = features.size(1), N = features.size(2);
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto iopt = features.options().dtype(at::kInt);
  GpuLattice L;
  L.d = static_cast<int>(d);
  L.B = B;
  L.N = N;
  Geom g;
  g.c = pl::make_consts(L.d);
  g.d = L.d;
  g.N = N;
  g.G = B * N;
  g.P = g.G * (d + 1);
  L.alpha = g.c.alpha;
  uint64_t cap = 1024;
  while (cap < static_cast<uint64_t>(g.P + g.P / 2)) cap <<= 1;
  g.mask = cap - 1;
  L.bary = at::empty({g.P}, features.options());
  if (g.P == 0) {
    L.vid = at::empty({0}, iopt);
    L.nbr = at::empty({d + 1, 0, 2}, iopt);
    L.seg = at::zeros({1}, iopt);
    L.seg_pt = at::empty({0}, iopt);
    return L;
  }
  at::Tensor rem0 = at::empty({g.G * d}, iopt);
  at::Tensor rank = at::empty({g.G * d}, features.options().dtype(at::kChar));
  locate_kernel<<<blocks_for(g.G), kThreads, 0, stream>>>(features.data_ptr<float>(), g, rem0.data_ptr<int>(),
                                                          rank.data_ptr<int8_t>(), L.bary.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor table = at::full({static_cast<int64_t>(cap)}, -1, iopt);
  at::Tensor slot_of = at::empty({g.P}, iopt);
  insert_kernel<<<blocks_for(g.P), kThreads, 0, stream>>>(g, rem0.data_ptr<int>(), rank.data_ptr<int8_t>(),
                                                          table.data_ptr<int>(), slot_of.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor counter = at::zeros({1}, iopt);
  L.vid = at::empty({g.P}, iopt);
  number_kernel<<<blocks_for(g.P), kThreads, 0, stream>>>(g.P, table.data_ptr<int>(), slot_of.data_ptr<int>(),
                                                          L.vid.data_ptr<int>(), counter.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t M = counter.item<int>();
  L.M = M;
  at::Tensor rep = at::empty({M}, iopt);
  vid_kernel<<<blocks_for(g.P), kThreads, 0, stream>>>(g.P, table.data_ptr<int>(), slot_of.data_ptr<int>(),
                                                       L.vid.data_ptr<int>(), rep.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  slot_of.reset();
  L.nbr = at::empty({d + 1, M, 2}, iopt);
  neighbour_kernel<<<blocks_for(M * (d + 1)), kThreads, 0, stream>>>(
      g, M, table.data_ptr<int>(), rem0.data_ptr<int>(), rank.data_ptr<int8_t>(), rep.data_ptr<int>(),
      L.vid.data_ptr<int>(), L.nbr.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  table.reset();
  rem0.reset();
  rank.reset();
  rep.reset();
  // points by (vertex, point): a stable sort keeps point order within each vertex
  auto sorted = at::sort(L.vid, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor& sv = std::get<0>(sorted);
  L.seg_pt = std::get<1>(sorted).to(at::kInt);
  L.seg = at::empty({M + 1}, iopt);
  seg_kernel<<<blocks_for(g.P), kThreads, 0, stream>>>(g.P, M, sv.data_ptr<int>(), L.seg.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return L;
}

}  // namespace plc
}  // namespace wsss_fast
