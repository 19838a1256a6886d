// From a run-time (dtype, head_dim) to the ahead-of-time kernel instantiations: the one
// place that lists them, shared by every attention launcher (portable and Hopper).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "launch_common.h"

namespace fi_backend {

template <typename T>
struct ElementTag {
  using type = T;
};

template <int HEAD_DIM>
using HeadDimTag = std::integral_constant<int, HEAD_DIM>;

// Returns fn(ElementTag<T>{}, HeadDimTag<D>{}) for T in {__half, __nv_bfloat16} and D in
// {64, 128, 256}; anything else throws std::invalid_argument (ValueError in Python), prefixed
// by `what`, naming the value and the supported set.
template <typename Fn>
decltype(auto) dispatch_dtype_head_dim(DType dtype, int head_dim, const char* what, Fn&& fn) {
  auto with_head_dim = [&](auto element) -> decltype(auto) {
    switch (head_dim) {
      case 64:
        return fn(element, HeadDimTag<64>{});
      case 128:
        return fn(element, HeadDimTag<128>{});
      case 256:
        return fn(element, HeadDimTag<256>{});
      default:
        throw std::invalid_argument(std::string(what) + ": head_dim " +
                                    std::to_string(head_dim) +
                                    " is not supported; supported: 64, 128, 256");
    }
  };
  switch (dtype) {
    case DType::kFloat16:
      return with_head_dim(ElementTag<__half>{});
    case DType::kBFloat16:
      return with_head_dim(ElementTag<__nv_bfloat16>{});
    default:
      throw std::invalid_argument(std::string(what) +
                                  ": dtype is not supported; supported: float16, bfloat16");
  }
}

}  // namespace fi_backend
