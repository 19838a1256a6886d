// Loads tiles of K and V for one (request, KV head) from a paged cache into shared memory.
//
// The cache is read in place through strided views (page, token, head strides in elements;
// the head_dim axis contiguous), which covers vLLM's packed (num_blocks, num_kv_heads,
// block_size, 2 * head_dim) cache in NHD order and the plain 5-d cache alike. The pages of the
// request come from the BSR page table; the page size is a run-time value.
#pragma once

#include <cstdint>

#include "attention/mma.cuh"
#include "common/fast_divmod.cuh"
#include "common/wide_math.cuh"

namespace fi_kernels {

template <typename T, int HEAD_DIM, int NUM_THREADS>
struct PagedKvLoader {
  using Tile = SwizzledTile<HEAD_DIM>;
  static constexpr int kChunksPerRow = Tile::kChunksPerRow;
  // At head_dim >= 128 a thread copies two 16-byte chunks of a row, kChunkStride chunks apart:
  // the swizzle only permutes a chunk's low three bits, so with a stride of 8 or more the
  // second chunk sits a fixed distance after the first in shared memory as in the cache, and
  // one address computation serves both copies (FlashInfer's loader does the same).
  static constexpr int kChunksPerThread = HEAD_DIM >= 128 ? 2 : 1;
  static constexpr int kThreadsPerRow = kChunksPerRow / kChunksPerThread;
  static constexpr int kChunkStride = kThreadsPerRow;
  static_assert(kChunksPerThread == 1 || (kChunkStride % 8 == 0 && Tile::octets_keep_distance()),
                "a thread's chunks keep their distance through the swizzle");
  static constexpr int kRowsPerPass = NUM_THREADS / kThreadsPerRow;
  static_assert(NUM_THREADS % kThreadsPerRow == 0, "a pass covers whole rows");

  // Row addresses are built in bytes from 32-bit strides (the launcher checks that they are
  // below 2^31 bytes): slot * token stride and page * page stride are 32 x 32 -> 64-bit
  // multiply-adds onto the head's address.
  const std::uint8_t* k_head;  // k + kv_head * k_stride_head, in bytes
  const std::uint8_t* v_head;
  int k_page_bytes, k_token_bytes;
  int v_page_bytes, v_token_bytes;
  const std::int32_t* pages;  // this request's page ids, in sequence order
  FastDivmod page_size;
  int kv_hi;  // keys at positions >= kv_hi are not loaded (zero-filled)

  // Each warp copies a fixed set of rows of every tile: kRowsPerWarpPass rows per pass, at
  // rows warp * kRowsPerWarpPass + [0, kRowsPerWarpPass) + pass * kRowsPerPass.
  static constexpr int kRowsPerWarpPass = 32 / kThreadsPerRow;
  static_assert(32 % kThreadsPerRow == 0, "a warp covers whole rows of a pass");

  // Where the keys of one tile live, as looked up a tile ahead of the copies that need them
  // (the page-table read is a dependent global load; this keeps it off the critical path).
  // Lane j of a warp looks up the warp's j-th row of the tile (one division and one page-table
  // load per row, not one per copying lane and pass) and the copying lanes take the values by
  // shuffle: two registers a thread instead of a page id per pass.
  template <int TILE_TOKENS>
  struct TileRows {
    static_assert(TILE_TOKENS % kRowsPerPass == 0, "a tile is a whole number of passes");
    static constexpr int kPasses = TILE_TOKENS / kRowsPerPass;
    static constexpr int kRowsPerWarp = kPasses * kRowsPerWarpPass;
    static_assert(kRowsPerWarp <= 32, "one lane looks up each row of a warp");
    std::int32_t page;  // page id of this lane's row (0 past kv_hi)
    std::int32_t slot;  // its token slot within the page
  };

  template <int TILE_TOKENS>
  __device__ __forceinline__ TileRows<TILE_TOKENS> look_up_rows(int tile_lo) const {
    using Rows = TileRows<TILE_TOKENS>;
    // Lanes past kRowsPerWarp repeat a row, so the warp does not diverge.
    const int j = (threadIdx.x % 32) % Rows::kRowsPerWarp;
    const int row = (threadIdx.x / 32) * kRowsPerWarpPass + j % kRowsPerWarpPass +
                    (j / kRowsPerWarpPass) * kRowsPerPass;
    const int pos = tile_lo + row;
    Rows rows{0, 0};
    if (pos < kv_hi) {
      int page_idx = 0;
      page_size.divmod(pos, page_idx, rows.slot);
      rows.page = pages[page_idx];
    }
    return rows;
  }

  // Issues cp.async copies of keys [tile_lo, tile_lo + TILE_TOKENS) into a swizzled
  // [TILE_TOKENS][HEAD_DIM] tile; IS_V picks V instead of K. Keys at or past kv_hi become 0.
  // All lanes of every warp must call it (it shuffles).
  template <int TILE_TOKENS, bool IS_V>
  __device__ __forceinline__ void load_tile(int tile_lo, const TileRows<TILE_TOKENS>& rows,
                                            T* tile_smem) const {
    const int lane = threadIdx.x % 32;
    const int chunk = threadIdx.x % kThreadsPerRow;  // the first of this thread's chunks
    const auto lane_head = reinterpret_cast<std::int64_t>((IS_V ? v_head : k_head) + chunk * 16);
    const int page_bytes = IS_V ? v_page_bytes : k_page_bytes;
    const int token_bytes = IS_V ? v_token_bytes : k_token_bytes;
#pragma unroll
    for (int pass = 0; pass < TileRows<TILE_TOKENS>::kPasses; ++pass) {
      const int row = threadIdx.x / kThreadsPerRow + pass * kRowsPerPass;
      const int looked_up_by = pass * kRowsPerWarpPass + lane / kThreadsPerRow;
      const int page = __shfl_sync(0xffffffffu, rows.page, looked_up_by);
      const int slot = __shfl_sync(0xffffffffu, rows.slot, looked_up_by);
      // Two 32 x 32 -> 64-bit multiply-adds onto the lane's address (strides < 2^31 bytes).
      const auto* src = reinterpret_cast<const std::uint8_t*>(
          mad_wide(page, page_bytes, mad_wide(slot, token_bytes, lane_head)));
      const std::uint32_t dst = mma::smem_addr(tile_smem + Tile::offset(row, chunk));
      const bool valid = tile_lo + row < kv_hi;
#pragma unroll
      for (int c = 0; c < kChunksPerThread; ++c) {
        mma::cp_async_16(dst + c * kChunkStride * 16, src + c * kChunkStride * 16, valid);
      }
    }
  }
};

}  // namespace fi_kernels
