// Host-side CUDA error checking for launchers: every runtime call and every launch is
// checked, and a failure becomes a C++ exception that pybind11 turns into a Python
// RuntimeError carrying the CUDA error name and string. Host code only (not for NVRTC).
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace fi_kernels {

class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline void throw_on_cuda_error(cudaError_t status, const char* what, const char* file,
                                int line) {
  if (status == cudaSuccess) return;
  throw CudaError(std::string(what) + " failed (" + file + ":" + std::to_string(line) +
                  "): " + cudaGetErrorName(status) + ": " + cudaGetErrorString(status));
}

}  // namespace fi_kernels

// FI_CUDA_CHECK(cudaMemsetAsync(...)) throws fi_kernels::CudaError unless cudaSuccess.
#define FI_CUDA_CHECK(expr) ::fi_kernels::throw_on_cuda_error((expr), #expr, __FILE__, __LINE__)

// Call right after a <<<...>>> launch: a bad configuration is reported by cudaGetLastError.
#define FI_CHECK_LAUNCH(kernel_name)                                                  \
  ::fi_kernels::throw_on_cuda_error(cudaGetLastError(), "launch of " kernel_name, __FILE__, \
                                    __LINE__)
