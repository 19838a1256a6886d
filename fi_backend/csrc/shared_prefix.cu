// Host launchers of kernels/cascade/shared_prefix.cuh.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cascade/shared_prefix.cuh"
#include "common/cuda_check.cuh"
#include "shared_prefix.h"

namespace fi_backend {
namespace {

constexpr int kMeasureThreads = 1024;
constexpr int kCopyThreads = 256;
constexpr std::int64_t kMaxCopyBlocks = 64;

template <typename T>
T* device_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

}  // namespace

void measure_shared_prefix(std::uintptr_t kv_indptr, std::uintptr_t kv_indices,
                           std::uintptr_t seq_lens, std::uintptr_t qo_indptr,
                           std::int64_t num_reqs, std::int64_t page_size,
                           std::uintptr_t shared_pages, std::uintptr_t stream) {
  if (num_reqs < 0 || num_reqs > 0x7fffffff || page_size <= 0) {
    throw std::invalid_argument("measure_shared_prefix: num_reqs must be in [0, 2^31) and "
                                "page_size > 0; got " + std::to_string(num_reqs) + " and " +
                                std::to_string(page_size));
  }
  fi_kernels::SharedPrefixParams p{};
  p.kv_indptr = device_ptr<const std::int32_t>(kv_indptr);
  p.kv_indices = device_ptr<const std::int32_t>(kv_indices);
  p.seq_lens = device_ptr<const std::int32_t>(seq_lens);
  p.qo_indptr = device_ptr<const std::int32_t>(qo_indptr);
  p.num_reqs = static_cast<int>(num_reqs);
  p.page_size = static_cast<int>(page_size);
  p.shared_pages = device_ptr<std::int32_t>(shared_pages);
  fi_kernels::measure_shared_prefix_kernel<kMeasureThreads>
      <<<1, kMeasureThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(p);
  FI_CHECK_LAUNCH("measure_shared_prefix_kernel");
}

void adopt_plan_if_shared(std::uintptr_t shared_pages, std::int64_t required_pages,
                          std::uintptr_t staged_plan, std::uintptr_t live_plan,
                          std::int64_t num_ints, std::uintptr_t stream) {
  if (required_pages <= 0 || required_pages > 0x7fffffff || num_ints <= 0) {
    throw std::invalid_argument("adopt_plan_if_shared: required_pages must be in [1, 2^31) "
                                "and num_ints > 0; got " + std::to_string(required_pages) +
                                " and " + std::to_string(num_ints));
  }
  fi_kernels::AdoptPlanParams p{};
  p.shared_pages = device_ptr<const std::int32_t>(shared_pages);
  p.required_pages = static_cast<int>(required_pages);
  p.staged_plan = device_ptr<const std::int32_t>(staged_plan);
  p.live_plan = device_ptr<std::int32_t>(live_plan);
  p.num_ints = num_ints;
  const std::int64_t blocks =
      std::min<std::int64_t>((num_ints + kCopyThreads - 1) / kCopyThreads, kMaxCopyBlocks);
  fi_kernels::adopt_plan_kernel<<<static_cast<unsigned>(blocks), kCopyThreads, 0,
                                  reinterpret_cast<cudaStream_t>(stream)>>>(p);
  FI_CHECK_LAUNCH("adopt_plan_kernel");
}

}  // namespace fi_backend
