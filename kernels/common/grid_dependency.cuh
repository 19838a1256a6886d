// Programmatic dependent launch (sm90+): a kernel launched with the programmatic stream
// serialization attribute may be scheduled before the kernel ahead of it in the stream has
// finished, as soon as every CTA of that kernel allowed it; it must wait for that kernel's
// completion (and memory) before reading what that kernel writes. Its launch latency then
// overlaps the tail of the kernel ahead. Both calls are no-ops below sm90 and for kernels
// launched without the attribute.
#pragma once

namespace fi_kernels {

// Called by each CTA of the kernel ahead: dependents may be scheduled once all CTAs called it
// (or exited).
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Called by the dependent kernel before it reads anything the kernel ahead writes: returns
// once that kernel has completed and its writes are visible.
__device__ __forceinline__ void wait_for_kernel_ahead() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

}  // namespace fi_kernels
