// Accumulation type: half and bfloat16 inputs are accumulated in fp32.
#pragma once

#include <ATen/OpMathType.h>

namespace wsss_fast {
template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;
}  // namespace wsss_fast
