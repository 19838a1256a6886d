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

namespace fi_kernels {

template <typename T, int HEAD_DIM, int NUM_THREADS>
struct PagedKvLoader {
  using Tile = SwizzledTile<HEAD_DIM>;
  static constexpr int kChunksPerRow = Tile::kChunksPerRow;
  static constexpr int kRowsPerPass = NUM_THREADS / kChunksPerRow;
  static_assert(NUM_THREADS % kChunksPerRow == 0, "a pass covers whole rows");

  // Row addresses are built in bytes from 32-bit strides (the launcher checks that they fit):
  // page * page stride is one 32 x 32 -> 64-bit multiply-add onto the head's address, and the
  // token offset within a page stays 32-bit.
  const std::uint8_t* k_head;  // k + kv_head * k_stride_head, in bytes
  const std::uint8_t* v_head;
  std::uint32_t k_page_bytes, k_token_bytes;
  std::uint32_t v_page_bytes, v_token_bytes;
  const std::int32_t* pages;  // this request's page ids, in sequence order
  FastDivmod page_size;
  int kv_hi;  // keys at positions >= kv_hi are not loaded (zero-filled)

  // Page ids of this thread's rows of one tile. fetch_pages issues their loads a tile ahead
  // of the cp.async copies that need them, so the page-table lookup (a dependent global load)
  // stays off the critical path.
  template <int TILE_TOKENS>
  struct TilePages {
    static_assert(TILE_TOKENS % kRowsPerPass == 0, "a tile is a whole number of passes");
    static constexpr int kPasses = TILE_TOKENS / kRowsPerPass;
    std::int32_t page[kPasses];
  };

  template <int TILE_TOKENS>
  __device__ __forceinline__ void fetch_pages(int tile_lo, TilePages<TILE_TOKENS>& tile) const {
#pragma unroll
    for (int pass = 0; pass < TilePages<TILE_TOKENS>::kPasses; ++pass) {
      const int pos = tile_lo + threadIdx.x / kChunksPerRow + pass * kRowsPerPass;
      int page_idx = 0, in_page = 0;
      if (pos < kv_hi) page_size.divmod(pos, page_idx, in_page);
      tile.page[pass] = pos < kv_hi ? pages[page_idx] : 0;
    }
  }

  // Issues cp.async copies of keys [tile_lo, tile_lo + TILE_TOKENS) into a swizzled
  // [TILE_TOKENS][HEAD_DIM] tile; IS_V picks V instead of K. Keys at or past kv_hi become 0.
  template <int TILE_TOKENS, bool IS_V>
  __device__ __forceinline__ void load_tile(int tile_lo, const TilePages<TILE_TOKENS>& tile,
                                            T* tile_smem) const {
    const int chunk = threadIdx.x % kChunksPerRow;
    const std::uint8_t* lane_head = (IS_V ? v_head : k_head) + chunk * 16;
    const std::uint32_t page_bytes = IS_V ? v_page_bytes : k_page_bytes;
    const std::uint32_t token_bytes = IS_V ? v_token_bytes : k_token_bytes;
#pragma unroll
    for (int pass = 0; pass < TilePages<TILE_TOKENS>::kPasses; ++pass) {
      const int row = threadIdx.x / kChunksPerRow + pass * kRowsPerPass;
      const int pos = tile_lo + row;
      int page_idx = 0, in_page = 0;
      page_size.divmod(pos, page_idx, in_page);
      const std::uint8_t* src =
          lane_head +
          static_cast<std::uint64_t>(static_cast<std::uint32_t>(tile.page[pass])) * page_bytes +
          static_cast<std::uint32_t>(in_page) * token_bytes;
      mma::cp_async_16(mma::smem_addr(tile_smem + Tile::offset(row, chunk)), src, pos < kv_hi);
    }
  }
};

}  // namespace fi_kernels
