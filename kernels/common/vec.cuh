// Register vectors filled by one 16-byte global access, and their conversion to float.
//
// Memory-bound kernels reach full bandwidth only with 128-bit loads/stores (LDG.128/STG.128),
// so a thread moves 16 bytes at a time: 8 fp16/bf16 or 4 fp32 elements. Arithmetic is done
// in float registers; the storage type only matters at the load and the store.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace fi_kernels {

constexpr int kVecBytes = 16;

// Elements of T that one 16-byte access moves.
template <typename T>
constexpr int kElemsPerVec = kVecBytes / static_cast<int>(sizeof(T));

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// N elements of T held in registers, moved as whole 16-byte words. The address given to
// load/store must be 16-byte aligned (callers check pointers and strides on the host).
template <typename T, int N>
struct alignas(kVecBytes) Vec {
  static_assert(sizeof(T) * N % kVecBytes == 0, "a Vec is a whole number of 16-byte words");
  static constexpr int kWords = static_cast<int>(sizeof(T)) * N / kVecBytes;

  T elems[N];

  __device__ __forceinline__ void load(const T* src) {
    const uint4* src_words = reinterpret_cast<const uint4*>(src);
    uint4* dst_words = reinterpret_cast<uint4*>(elems);
#pragma unroll
    for (int w = 0; w < kWords; ++w) dst_words[w] = src_words[w];
  }

  __device__ __forceinline__ void store(T* dst) const {
    const uint4* src_words = reinterpret_cast<const uint4*>(elems);
    uint4* dst_words = reinterpret_cast<uint4*>(dst);
#pragma unroll
    for (int w = 0; w < kWords; ++w) dst_words[w] = src_words[w];
  }

  __device__ __forceinline__ void to_float(float (&dst)[N]) const {
#pragma unroll
    for (int i = 0; i < N; ++i) dst[i] = fi_kernels::to_float(elems[i]);
  }

  __device__ __forceinline__ void from_float(const float (&src)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) elems[i] = fi_kernels::from_float<T>(src[i]);
  }
};

// Loads N consecutive elements of T (16-byte aligned) into float registers.
template <typename T, int N>
__device__ __forceinline__ void load_as_float(const T* src, float (&dst)[N]) {
  Vec<T, N> vec;
  vec.load(src);
  vec.to_float(dst);
}

// Rounds N float registers to T and stores them to 16-byte aligned memory.
template <typename T, int N>
__device__ __forceinline__ void store_from_float(const float (&src)[N], T* dst) {
  Vec<T, N> vec;
  vec.from_float(src);
  vec.store(dst);
}

}  // namespace fi_kernels
