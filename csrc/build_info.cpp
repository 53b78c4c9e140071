// Build information exposed as wsss_fast::_cuda_version() -> int
// (1000 * major + 10 * minor of the CUDA toolkit the kernels were compiled with,
// 0 when the extension has no CUDA kernels). Read by wsss_fast.extension_info().
#include <torch/library.h>

#include <cstdint>

namespace wsss_fast {

int64_t cuda_version() {
#ifdef WSSS_FAST_CUDA_VERSION
  return WSSS_FAST_CUDA_VERSION;
#else
  return 0;
#endif
}

TORCH_LIBRARY_FRAGMENT(wsss_fast, m) {
  m.def("_cuda_version() -> int", &cuda_version);
}

}  // namespace wsss_fast
