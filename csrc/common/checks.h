// Shared argument checks for wsss_fast kernels. Every message names the argument,
// what was expected and what was given, e.g.
//   "drop_block2d: x must be a 4-D tensor [N, C, H, W], got shape [3, 4]".
#pragma once

#include <ATen/ATen.h>

#include <sstream>
#include <string>

namespace wsss_fast {

inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

#define WSSS_CHECK_DIM(op, name, t, ndim, layout)                                   \
  TORCH_CHECK((t).dim() == (ndim), op ": " name " must be a " #ndim "-D tensor " \
              layout ", got shape ", ::wsss_fast::shape_str(t))

#define WSSS_CHECK_FLOATING(op, name, t)                                              \
  TORCH_CHECK(at::isFloatingType((t).scalar_type()),                                 \
              op ": " name " must be a floating-point tensor, got dtype ", (t).scalar_type())

#define WSSS_CHECK_DTYPE(op, name, t, dtype)                                          \
  TORCH_CHECK((t).scalar_type() == (dtype), op ": " name " must have dtype ", (dtype), \
              ", got ", (t).scalar_type())

#define WSSS_CHECK_SAME_DEVICE(op, name_a, a, name_b, b)                                \
  TORCH_CHECK((a).device() == (b).device(), op ": " name_a " and " name_b               \
              " must be on the same device, got ", (a).device(), " and ", (b).device())

#define WSSS_CHECK_CPU(op, name, t) \
  TORCH_CHECK((t).device().is_cpu(), op ": " name " must be a CPU tensor, got ", (t).device())

#define WSSS_CHECK_CPU_FLOAT(op, name, t)                                                   \
  TORCH_CHECK((t).scalar_type() == at::kFloat || (t).scalar_type() == at::kDouble,         \
              op ": " name " must be float32 or float64 on CPU, got ", (t).scalar_type())

#define WSSS_CHECK_CUDA(op, name, t) \
  TORCH_CHECK((t).device().is_cuda(), op ": " name " must be a CUDA tensor, got ", (t).device())

}  // namespace wsss_fast
