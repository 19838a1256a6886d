// Division by a run-time divisor that stays fixed for a whole launch (page size, GQA group),
// done with one multiply-high instead of the ~20-instruction integer division sequence.
#pragma once

#include <cstdint>

// The divisor is prepared on the host (launch parameters) or on the device; host-only
// translation units (the pybind11 bindings) see the struct without its device method.
#if defined(__CUDACC__)
#define FI_HOST_DEVICE __host__ __device__
#else
#define FI_HOST_DEVICE
#endif

namespace fi_kernels {

// n / d and n % d for a run-time divisor d >= 1 and 0 <= n < 2^31, by one multiply-high:
// with l = ceil(log2 d) and m = floor(2^32 (2^l - d) / d) + 1, n / d = (umulhi(n, m) + n) >> l
// (Granlund & Montgomery 1994, section 4).
struct FastDivmod {
  std::uint32_t divisor;
  std::uint32_t multiplier;
  std::uint32_t shift;

  FI_HOST_DEVICE explicit FastDivmod(std::uint32_t d = 1) : divisor(d) {
    shift = 0;
    while ((1u << shift) < d) ++shift;
    const std::uint64_t two_pow_l = std::uint64_t{1} << shift;
    multiplier = static_cast<std::uint32_t>(((two_pow_l - d) << 32) / d + 1);
  }

#if defined(__CUDACC__)
  __device__ __forceinline__ void divmod(int n, int& quotient, int& remainder) const {
    // hi < n < 2^31, so hi + n cannot carry out of 32 bits.
    const std::uint32_t hi = __umulhi(static_cast<std::uint32_t>(n), multiplier);
    quotient = static_cast<int>((hi + static_cast<std::uint32_t>(n)) >> shift);
    remainder = n - quotient * static_cast<int>(divisor);
  }
#endif
};

}  // namespace fi_kernels
