// Warp-level building blocks of the sm80+ attention tiles: cp.async (global -> shared copies
// that bypass registers, zero-filling rows past the end), ldmatrix (shared -> the register
// fragments of mma.sync) and mma.sync m16n8k16 with float accumulators.
//
// Fragment layouts of m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"), for lane l
// with g = l / 4 and t = l % 4:
//   A (16x16, row-major) a0: (g, 2t..2t+1)  a1: (g+8, 2t..)  a2: (g, 2t+8..)  a3: (g+8, 2t+8..)
//   B (16x8,  k x n)     b0: (k 2t..2t+1, n g)               b1: (k 2t+8..2t+9, n g)
//   C (16x8)             c0,c1: (g, 2t..2t+1)                c2,c3: (g+8, 2t..2t+1)
// so a C fragment of S = Q K^T already is the A fragment of P for O += P V (FlashAttention-2,
// section 3.1: P never leaves registers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace fi_kernels {
namespace mma {

__device__ __forceinline__ std::uint32_t smem_addr(const void* ptr) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(ptr));
}

// 16-byte copy; when `valid` is false nothing is read and the 16 bytes become zeros, so rows
// past a sequence's end hold finite values (0 * garbage could be NaN in P V).
__device__ __forceinline__ void cp_async_16(std::uint32_t dst_smem, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst_smem), "l"(src),
               "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most N committed groups of this thread are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], std::uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], std::uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a * b for one m16n8k16 tile; T is __half or __nv_bfloat16.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const std::uint32_t (&a)[4],
                                          std::uint32_t b0, std::uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], const std::uint32_t (&a)[4],
                                                  std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4],
                                                         const std::uint32_t (&a)[4],
                                                         std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to T and packed into one 32-bit register (low half = first).
template <typename T>
__device__ __forceinline__ std::uint32_t pack2(float lo, float hi);

template <>
__device__ __forceinline__ std::uint32_t pack2<__half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const std::uint32_t*>(&h);
}

template <>
__device__ __forceinline__ std::uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const std::uint32_t*>(&h);
}

}  // namespace mma

// A [rows][HEAD_DIM] tile of 16-bit elements in shared memory, stored as 16-byte chunks with
// chunk c of row r at position c ^ (r % 8). The 8 rows that one ldmatrix phase reads at the
// same logical column then hit 8 different 16-byte bank groups instead of one (8-way
// conflict without the XOR, since a row is a multiple of 128 bytes).
template <int HEAD_DIM>
struct SwizzledTile {
  static_assert(HEAD_DIM % 64 == 0, "the XOR swizzle needs at least 8 chunks per row");
  static constexpr int kChunksPerRow = HEAD_DIM / 8;
  static constexpr int kRowBytes = HEAD_DIM * 2;
  // A tile must start at a multiple of this in the shared window for step_columns to hold.
  static constexpr int kBaseAlignment = kRowBytes;

  // Offset in elements of logical chunk `chunk` of row `row`.
  __host__ __device__ __forceinline__ static constexpr int offset(int row, int chunk) {
    return row * HEAD_DIM + ((chunk ^ (row & 7)) << 3);
  }

  // ldmatrix walks a row 16 columns (two chunks) at a time. For a lane that reads chunk
  // 2 * step + first_chunk (first_chunk < 2) of a fixed row, the swizzle makes that step an
  // XOR of the lane's byte address of step 0: one LOP3 per step instead of the multiply, XOR
  // and shift of offset(). Holds where the tile starts at a multiple of kBaseAlignment bytes
  // (checked at compile time below over every row phase, first chunk and step).
  __device__ __forceinline__ static std::uint32_t step_columns(std::uint32_t step0_address,
                                                                int step) {
    return step0_address ^ (static_cast<std::uint32_t>(step) << 5);
  }

  static constexpr bool stepping_matches_offset() {
    for (int row = 0; row < 16; ++row) {
      for (int first_chunk = 0; first_chunk < 2; ++first_chunk) {
        for (int step = 0; step < HEAD_DIM / 16; ++step) {
          const int stepped = (2 * offset(row, first_chunk)) ^ (step << 5);
          if (stepped != 2 * offset(row, 2 * step + first_chunk)) return false;
        }
      }
    }
    return true;
  }
  static_assert(stepping_matches_offset(), "step_columns must equal offset() in bytes");

  // Chunks 8 apart in a row stay 64 elements apart: the XOR only permutes a chunk's low three
  // bits (the paged loader's two-chunk copies rely on it).
  static constexpr bool octets_keep_distance() {
    for (int row = 0; row < 16; ++row) {
      for (int chunk = 0; chunk + 8 < kChunksPerRow; ++chunk) {
        if (offset(row, chunk + 8) != offset(row, chunk) + 64) return false;
      }
    }
    return true;
  }
};

}  // namespace fi_kernels
