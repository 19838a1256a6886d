// Host-side vocabulary shared by the launchers and their pybind11 bindings. Torch-free and
// CUDA-free: bindings receive device pointers and streams as integers (DESIGN.md, decision 1).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace fi_backend {

// Element type of a tensor handed to a launcher, named as torch names it
// (str(torch.float16) == "torch.float16" -> "float16").
enum class DType { kFloat16, kBFloat16, kFloat32 };

inline DType parse_dtype(const std::string& name) {
  if (name == "float16") return DType::kFloat16;
  if (name == "bfloat16") return DType::kBFloat16;
  if (name == "float32") return DType::kFloat32;
  // std::invalid_argument reaches Python as ValueError.
  throw std::invalid_argument("dtype '" + name +
                              "' is not supported; supported: float16, bfloat16, float32");
}

inline int dtype_size_bytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

inline bool is_aligned(std::uintptr_t address, std::uintptr_t alignment_bytes) {
  return address % alignment_bytes == 0;
}

}  // namespace fi_backend
