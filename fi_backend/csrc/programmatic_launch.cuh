// Launching a kernel as a programmatic dependent of the kernel ahead of it in the stream
// (kernels/common/grid_dependency.cuh has the device side): shared by the launchers of both
// attention families.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "common/cuda_check.cuh"

namespace fi_backend {

// Launches `kernel` with programmatic stream serialization: it may be scheduled once every CTA
// of the kernel ahead allowed it, and waits for that kernel itself before reading its output.
template <typename Kernel, typename Params>
cudaError_t launch_programmatic_dependent(Kernel* kernel, int grid, int block, int smem_bytes,
                                          cudaStream_t stream, const Params& params) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(grid));
  config.blockDim = dim3(static_cast<unsigned>(block));
  config.dynamicSmemBytes = static_cast<std::size_t>(smem_bytes);
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, params);
}

// Whether the current device schedules programmatic dependents early (sm90 and later). Below
// that the kernels' griddepcontrol calls compile to nothing, so their launches keep plain
// stream order.
inline bool device_has_programmatic_launch() {
  int device = 0;
  FI_CUDA_CHECK(cudaGetDevice(&device));
  int major = 0;
  FI_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return major >= 9;
}

}  // namespace fi_backend
