// 32 x 32 -> 64-bit integer arithmetic for address computations.
#pragma once

#include <cstdint>

namespace fi_kernels {

#if defined(__CUDACC__)
// a * b + c with a 32 x 32 -> 64-bit product: one IMAD.WIDE (C++'s int64 arithmetic on
// sign-extended operands compiles to a full 64-bit multiply, and a pointer plus two such
// products to separate 64-bit adds).
__device__ __forceinline__ std::int64_t mad_wide(int a, int b, std::int64_t c) {
  std::int64_t result;
  asm("mad.wide.s32 %0, %1, %2, %3;" : "=l"(result) : "r"(a), "r"(b), "l"(c));
  return result;
}
#endif

}  // namespace fi_kernels
