// Persistent batch attention over a paged KV cache, driven by the plan
// (fi_backend/metadata/plan_layout.py), and the merge of split-KV partial states.
//
// attention kernel: grid = the plan's fixed CTA count; CTA c runs work items
//   cta_work_indptr[c] .. cta_work_indptr[c+1]. An item is (request, KV head, query tile,
//   KV chunk); its rows are the query tile's tokens x the GQA group (token-major), so the
//   group's query heads share every K/V tile that is loaded. Two tile shapes, picked per item:
//     prefill (rows > 16): 4 warps x 32 rows (head_dim 256: 4 x 16 rows, run twice for a
//       128-row item), each warp sweeps the whole KV tile, so no state crosses warps;
//     decode (rows <= 16): 1 x 16 rows, the 4 warps split each KV tile and their softmax
//       states are merged in shared memory at the end (FlashInfer's decode split).
//   K/V tiles stream through a cp.async pipeline of Shape::kStages buffers, K and V in
//   separate groups so that Q K^T starts before V has landed. Softmax is online, in
//   registers (FlashAttention-2, algorithm 1), in base-2 units.
//   An item with partial_slot < 0 covers its rows' whole KV range: it writes the final output
//   (sinks applied) and the LSE. Otherwise it writes the float32 normalized output and the
//   natural-log LSE (no sink) to its partial slot.
// merge kernel: one merge item per split tile; folds its partial slots, each row's slots split
//   over groups of the CTA's threads, and writes the final output, applying sinks.
#pragma once

#include <cstdint>
#include <type_traits>

#include "attention/mma.cuh"
#include "attention/paged_kv.cuh"
#include "attention/params.cuh"
#include "attention/variant.cuh"
#include "attention/work_item.cuh"
#include "common/grid_dependency.cuh"
#include "common/softmax_state.cuh"

namespace fi_kernels {

constexpr int kAttentionThreads = 128;
constexpr int kAttentionWarps = kAttentionThreads / 32;
constexpr int kDecodeMaxRows = 16;
constexpr int kSmemBaseAlignment = 1024;
// -inf as a compile-time float (__int_as_float is not constexpr).
constexpr float kNegInf = -__builtin_huge_valf();

// 2^x in one MUFU instruction (inputs here are <= 0 or -inf; subnormal results flush to 0,
// which is below bf16/fp16 resolution of the normalized output anyway).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Tile shape: NUM_WARPS_Q warps of ROW_BLOCKS x 16 query rows each; each KV tile of TILE_KV
// keys is split over NUM_WARPS_KV warps (warp w: row group w / NUM_WARPS_KV, key slice
// w % NUM_WARPS_KV); STAGES K (and V) tiles are in flight or in use at once. A warp with 2
// row blocks feeds every K/V fragment it loads from shared memory to 2 MMAs, halving the
// ldmatrix traffic per MMA.
template <int HEAD_DIM, int NUM_WARPS_Q, int NUM_WARPS_KV, int TILE_KV, int ROW_BLOCKS,
          int STAGES>
struct TileShape {
  static_assert(NUM_WARPS_Q * NUM_WARPS_KV == kAttentionWarps, "all warps take part");
  static_assert(STAGES >= 2, "the pipeline loads one tile while the previous one is used");
  static constexpr int kHeadDim = HEAD_DIM;
  static constexpr int kWarpsQ = NUM_WARPS_Q;
  static constexpr int kWarpsKv = NUM_WARPS_KV;
  static constexpr int kRowBlocks = ROW_BLOCKS;
  static constexpr int kWarpRows = 16 * ROW_BLOCKS;
  static constexpr int kTileRows = NUM_WARPS_Q * kWarpRows;
  static constexpr int kTileKv = TILE_KV;
  static constexpr int kWarpKv = TILE_KV / NUM_WARPS_KV;  // keys per warp per tile
  static constexpr int kStages = STAGES;
  static_assert(kWarpKv % 16 == 0, "P V consumes keys 16 at a time");
  static_assert(kTileRows <= kMaxTileRows, "a tile is at most a plan tile");
  static_assert(kMaxTileRows % kTileRows == 0, "a plan tile is a whole number of tiles");
};

// Shared memory per block that every sm80+ GPU grants: 99 KB on sm_86 and sm_89 (A10, A40,
// L4, L40, RTX 30xx/40xx; sm_80 grants 163 KB, sm_90 227 KB). The shapes come in two
// footprints: full (3-stage decode pipelines, up to 200 KB at head_dim 256) where the device
// grants it, compact (COMPACT = true, within kCompactSmemBytes) elsewhere.
constexpr int kCompactSmemBytes = 99 * 1024;

// Prefill: 128-row tiles (4 warps x 32 rows, as FlashAttention-2 runs them), so each K/V
// tile loaded serves 32 query tokens of a GQA-4 group. KV tiles of 64 keys at head_dim 64 and
// 128 (Q + 2 stages of K/V: 96 KB at 128). 64-key tiles at head_dim 128 halve the softmax
// and barrier work per key against 32-key ones; they fit the registers (sm_90a: 16 B of
// spill) once the decode tile is out of line, ldmatrix addresses step by XOR, the loader's
// lookahead is two registers and row sums run on the tensor cores. head_dim 256
// keeps one row block per warp (64-row tiles, run twice for a 128-row item): two would need
// 256 accumulator registers; its compact footprint has 2 stages instead of 3 (96 KB).
template <int HEAD_DIM, bool COMPACT>
using PrefillShape = std::conditional_t<
    (HEAD_DIM > 128), TileShape<HEAD_DIM, 4, 1, 32, 1, (COMPACT ? 2 : 3)>,
    TileShape<HEAD_DIM, 4, 1, 64, 2, (HEAD_DIM > 64 ? 2 : 3)>>;
// Decode: memory-bound, so 3 stages (2 tiles in flight while one is used); 2 in the compact
// footprint. At head_dim 256 even two 64-key stages (136 KB) exceed the compact budget, so
// there decode items run through the compact prefill tile (the first of its 4 row groups
// holds the rows).
template <int HEAD_DIM, bool COMPACT>
using DecodeShape =
    std::conditional_t<!COMPACT, TileShape<HEAD_DIM, 1, 4, 64, 1, 3>,
                       std::conditional_t<(HEAD_DIM > 128), PrefillShape<HEAD_DIM, true>,
                                          TileShape<HEAD_DIM, 1, 4, 64, 1, 2>>>;

// Shared memory of one tile shape: the Q tile, then kStages K and kStages V buffers. Both
// shapes use the same dynamic allocation (the larger of the two).
template <typename T, typename Shape>
struct AttentionSmem {
  static constexpr int kQElems = Shape::kTileRows * Shape::kHeadDim;
  static constexpr int kStageElems = Shape::kTileKv * Shape::kHeadDim;
  static constexpr int kBytes =
      static_cast<int>(sizeof(T)) * (kQElems + 2 * Shape::kStages * kStageElems);

  T* q;
  T* k;
  T* v;

  __device__ __forceinline__ explicit AttentionSmem(std::uint8_t* base)
      : q(reinterpret_cast<T*>(base)), k(q + kQElems), v(k + Shape::kStages * kStageElems) {}
  __device__ __forceinline__ T* k_stage(int stage) const { return k + stage * kStageElems; }
  __device__ __forceinline__ T* v_stage(int stage) const { return v + stage * kStageElems; }
  // After the main loop the K/V buffers hold the decode path's per-warp softmax states.
  __device__ __forceinline__ float* scratch() const { return reinterpret_cast<float*>(k); }
};

// Dynamic shared memory of the attention kernel for one (dtype, head_dim, footprint).
template <typename T, int HEAD_DIM, bool COMPACT>
constexpr int attention_smem_bytes() {
  constexpr int prefill = AttentionSmem<T, PrefillShape<HEAD_DIM, COMPACT>>::kBytes;
  constexpr int decode = AttentionSmem<T, DecodeShape<HEAD_DIM, COMPACT>>::kBytes;
  return prefill > decode ? prefill : decode;
}

// Whether a footprint runs every item through one tile shape (compact head_dim 256): its
// kernels with and without prefill tiles would be the same, so only the first is built.
template <int HEAD_DIM, bool COMPACT>
constexpr bool has_one_tile_shape() {
  return std::is_same_v<PrefillShape<HEAD_DIM, COMPACT>, DecodeShape<HEAD_DIM, COMPACT>>;
}

// Whether a (dtype, head_dim) has compact kernels of its own: where the full footprint
// already fits the compact budget (head_dim 64), it serves both.
template <typename T, int HEAD_DIM>
constexpr bool has_compact_kernels() {
  return attention_smem_bytes<T, HEAD_DIM, false>() > kCompactSmemBytes;
}

// Zeroes MMA accumulator fragments [row blocks][n-blocks][4] (registers once unrolled).
template <int ROW_BLOCKS, int N_BLOCKS>
__device__ __forceinline__ void zero_fragments(float (&fragments)[ROW_BLOCKS][N_BLOCKS][4]) {
#pragma unroll
  for (int mb = 0; mb < ROW_BLOCKS; ++mb) {
#pragma unroll
    for (int nb = 0; nb < N_BLOCKS; ++nb) {
#pragma unroll
      for (int e = 0; e < 4; ++e) fragments[mb][nb][e] = 0.f;
    }
  }
}

// Runs rows [row0, row0 + Shape::kTileRows) of one work item with tile shape Shape. All
// threads of the CTA call it.
template <typename T, typename Shape>
__device__ __forceinline__ void attend_tile(const BatchAttentionParams& p,
                                            const AttentionVariant& variant,
                                            const WorkItem& item, int row0,
                                            std::uint8_t* smem_base) {
  constexpr int D = Shape::kHeadDim;
  constexpr int kStages = Shape::kStages;
  constexpr int kTileKv = Shape::kTileKv;
  constexpr int kWarpKv = Shape::kWarpKv;
  constexpr int kBlocksS = kWarpKv / 8;  // n-blocks of S per warp
  constexpr int kBlocksO = D / 8;        // n-blocks of O per warp
  constexpr int kRowBlocks = Shape::kRowBlocks;
  // cp.async groups committed after V_t that may stay in flight while tile t runs: K and V of
  // the kStages - 2 tiles after it (see the pipeline below).
  constexpr int kGroupsAhead = 2 * (kStages - 2);
  using Tile = SwizzledTile<D>;
  using Loader = PagedKvLoader<T, D, kAttentionThreads>;
  const AttentionSmem<T, Shape> smem(smem_base);

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int warp_q = warp / Shape::kWarpsKv;
  const int warp_kv = warp % Shape::kWarpsKv;
  const int warp_row0 = warp_q * Shape::kWarpRows;  // first row of this warp in the tile
  // A warp whose rows all lie past the item's last row skips the math; it still copies its
  // share of every tile and meets every barrier (the branch is warp-uniform).
  const bool warp_has_rows = row0 + warp_row0 < item.rows;

  // Q tile: kTileRows rows, those past item.rows zero-filled.
  {
    const T* q = static_cast<const T*>(p.q);
    for (int idx = threadIdx.x; idx < Shape::kTileRows * Tile::kChunksPerRow;
         idx += kAttentionThreads) {
      const int row = idx / Tile::kChunksPerRow;
      const int chunk = idx % Tile::kChunksPerRow;
      const int item_row = row0 + row;
      const bool valid = item_row < item.rows;
      const T* src = q + item.row_offset(item_row, p.q_stride_token, p.q_stride_head) + chunk * 8;
      mma::cp_async_16(mma::smem_addr(smem.q + Tile::offset(row, chunk)), src, valid);
    }
  }

  Loader loader;
  loader.k_head = reinterpret_cast<const std::uint8_t*>(static_cast<const T*>(p.k) +
                                                        item.kv_head * p.k_stride_head);
  loader.v_head = reinterpret_cast<const std::uint8_t*>(static_cast<const T*>(p.v) +
                                                        item.kv_head * p.v_stride_head);
  loader.k_page_bytes = static_cast<int>(p.k_stride_page * sizeof(T));
  loader.k_token_bytes = static_cast<int>(p.k_stride_token * sizeof(T));
  loader.v_page_bytes = static_cast<int>(p.v_stride_page * sizeof(T));
  loader.v_token_bytes = static_cast<int>(p.v_stride_token * sizeof(T));
  loader.pages = p.kv_indices + item.page_begin;
  loader.page_size = FastDivmod(static_cast<std::uint32_t>(p.page_size));
  loader.kv_hi = item.kv_hi;

  const int num_tiles = (item.kv_hi - item.kv_lo + kTileKv - 1) / kTileKv;
  // Pipeline: groups are committed in the order Q+K_0, V_0, K_1, V_1, ...; tile t lives in
  // stage t % kStages. Empty groups keep the count uniform past the last tile. K and V of a
  // tile are copied together, so one barrier per tile both publishes tile t and frees the
  // stage of tile t - 1 for the copies of tile t + kStages - 1. `ahead` holds the rows of the
  // next tile to copy, looked up one tile early.
  typename Loader::template TileRows<kTileKv> ahead;
  auto look_up = [&](int t) {
    if (t < num_tiles) ahead = loader.template look_up_rows<kTileKv>(item.kv_lo + t * kTileKv);
  };
  // Copies K and V of tile t (its rows in `ahead`) into stage t % kStages as two groups; past
  // the last tile the groups are empty.
  auto copy_tile = [&](int t) {
    if (t < num_tiles) {
      const int tile_lo = item.kv_lo + t * kTileKv;
      loader.template load_tile<kTileKv, false>(tile_lo, ahead, smem.k_stage(t % kStages));
      mma::cp_async_commit();
      loader.template load_tile<kTileKv, true>(tile_lo, ahead, smem.v_stage(t % kStages));
      mma::cp_async_commit();
    } else {
      mma::cp_async_commit();
      mma::cp_async_commit();
    }
  };
#pragma unroll
  for (int t = 0; t < kStages - 1; ++t) {
    look_up(t);
    copy_tile(t);
  }
  look_up(kStages - 1);

  // Per-thread rows: in row block mb of the warp, item rows row_of(mb, 0) and row_of(mb, 1).
  const int g = lane / 4;
  const int quad_lane = lane % 4;
  auto row_of = [&](int mb, int h) { return row0 + warp_row0 + mb * 16 + g + 8 * h; };
  // Absolute position of a row's query. Computed where a tile needs it (masked or
  // transformed tiles) rather than held in registers for the whole loop: the accumulators
  // of a 32-row warp leave no room for per-row constants.
  auto q_pos_of = [&](int row) {
    return item.q_pos_first + (row < item.rows ? item.row_token(row) : 0);
  };

  // Running state in base-2 units: m = max logit, o = unnormalized output, d = row sums of
  // P as an MMA accumulator: P times a column of ones on the tensor cores (as FlashInfer
  // does) instead of 2 * kBlocksS adds per row and tile, so every column of d[mb] holds the
  // whole sum of its row (element 0 for row g, element 2 for row g + 8) over the same
  // T-rounded P that P V multiplies.
  float o[kRowBlocks][kBlocksO][4];
  float m[kRowBlocks][2];
  float d[kRowBlocks][1][4];
  zero_fragments(o);
  zero_fragments(d);
#pragma unroll
  for (int mb = 0; mb < kRowBlocks; ++mb) {
#pragma unroll
    for (int h = 0; h < 2; ++h) m[mb][h] = kNegInf;
  }
  const std::uint32_t ones = mma::pack2<T>(1.f, 1.f);

  // Each lane's ldmatrix addresses at column step 0 (see SwizzledTile::step_columns): its row
  // of the warp's first Q row block, of the warp's first 16 keys in a K stage (x4 matrices:
  // keys 0-7 and 8-15 at steps 2kk and 2kk + 1) and of a V stage (transposed: keys 0-15).
  const int key0 = warp_kv * kWarpKv;  // first key of this warp within a tile
  const std::uint32_t q_lane = mma::smem_addr(smem.q + Tile::offset(warp_row0 + lane % 16,
                                                                    lane / 16));
  const std::uint32_t k_lane_bytes =
      2 * Tile::offset(key0 + (lane / 16) * 8 + lane % 8, (lane / 8) % 2);
  const std::uint32_t v_lane_bytes = 2 * Tile::offset(key0 + lane % 16, lane / 16);

  // Without a logit transform, S stays the raw dot product and the scale to base-2 logits
  // rides in the exponent's FFMA: p = 2^(s * s_to_log2 - max) (FlashAttention-2's trick).
  // With one, S is turned into base-2 logits first and s_to_log2 is 1.
  const bool transforms = variant.transforms_logits();
  const float s_to_log2 = transforms ? 1.f : variant.params.sm_scale * kLog2e;

  for (int t = 0; t < num_tiles; ++t) {
    const int stage = t % kStages;
    const int tile_lo = item.kv_lo + t * kTileKv;
    const int prefetch = t + kStages - 1;

    mma::cp_async_wait<kGroupsAhead>();  // K_t and V_t (and Q) landed
    __syncthreads();                     // ... for every thread; stage (t-1) % kStages is free
    copy_tile(prefetch);
    look_up(prefetch + 1);

    float s[kRowBlocks][kBlocksS][4];
    if (warp_has_rows) {
      // S = Q K^T for the warp's rows x kWarpKv keys.
      const std::uint32_t k_lane = mma::smem_addr(smem.k_stage(stage)) + k_lane_bytes;
      zero_fragments(s);
      // Fully unrolled: ptxas then issues several K ldmatrix loads ahead of their MMAs and
      // gives the first MMAs a zero accumulator instead of zeroing S (as FlashInfer's SASS).
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        std::uint32_t a[kRowBlocks][4];
        const std::uint32_t q_kk = Tile::step_columns(q_lane, kk);
#pragma unroll
        for (int mb = 0; mb < kRowBlocks; ++mb) {
          mma::ldmatrix_x4(a[mb], q_kk + mb * 16 * Tile::kRowBytes);
        }
        const std::uint32_t k_kk = Tile::step_columns(k_lane, kk);
#pragma unroll
        for (int i = 0; i < kBlocksS / 2; ++i) {
          std::uint32_t b[4];
          mma::ldmatrix_x4(b, k_kk + 16 * i * Tile::kRowBytes);
#pragma unroll
          for (int mb = 0; mb < kRowBlocks; ++mb) {
            mma::mma_16816<T>(s[mb][2 * i], a[mb], b[0], b[1]);
            mma::mma_16816<T>(s[mb][2 * i + 1], a[mb], b[2], b[3]);
          }
        }
      }

      // Variant work is taken once per tile, not per element, so that the common path
      // (plain scaled logits, a tile every row sees whole) is straight-line MMA + exp2 code.
      const int warp_key_lo = tile_lo + key0;
      if (transforms) {
#pragma unroll
        for (int mb = 0; mb < kRowBlocks; ++mb) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int row = row_of(mb, h);
            const int q_pos = q_pos_of(row);
            const float slope = row < item.rows ? variant.alibi_slope(item.row_head(row)) : 0.f;
#pragma unroll
            for (int nb = 0; nb < kBlocksS; ++nb) {
#pragma unroll
              for (int e = 2 * h; e < 2 * h + 2; ++e) {
                const int kv_pos = warp_key_lo + nb * 8 + 2 * quad_lane + (e & 1);
                s[mb][nb][e] = variant.logit_log2(s[mb][nb][e], slope, kv_pos - q_pos);
              }
            }
          }
        }
      }
      const bool whole_tile = warp_key_lo + kWarpKv <= item.kv_hi &&
                              variant.sees_whole_tile(item.q_pos_first, item.q_pos_last,
                                                      warp_key_lo, warp_key_lo + kWarpKv);
      if (!whole_tile) {
#pragma unroll
        for (int mb = 0; mb < kRowBlocks; ++mb) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            int first_key, last_key;  // the keys this row sees: [first_key, last_key]
            variant.visible_keys(q_pos_of(row_of(mb, h)), item.kv_hi, first_key, last_key);
#pragma unroll
            for (int nb = 0; nb < kBlocksS; ++nb) {
#pragma unroll
              for (int e = 2 * h; e < 2 * h + 2; ++e) {
                const int kv_pos = warp_key_lo + nb * 8 + 2 * quad_lane + (e & 1);
                s[mb][nb][e] = (kv_pos < first_key || kv_pos > last_key) ? kNegInf : s[mb][nb][e];
              }
            }
          }
        }
      }

      // Online softmax: new row max, rescale the running state, P = 2^(S - max).
#pragma unroll
      for (int mb = 0; mb < kRowBlocks; ++mb) {
        float rescale[2];
        bool max_moved = false;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float row_max = kNegInf;
#pragma unroll
          for (int nb = 0; nb < kBlocksS; ++nb) {
            row_max = fmaxf(row_max, fmaxf(s[mb][nb][2 * h], s[mb][nb][2 * h + 1]));
          }
          row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
          row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));
          // s_to_log2 > 0 keeps the order (and -inf), so this is the max base-2 logit.
          const float m_new = fmaxf(m[mb][h], row_max * s_to_log2);
          // While a row has seen no visible key its max is -inf; subtract 0 instead (P = 0).
          const float base = m_new == kNegInf ? 0.f : m_new;
          rescale[h] = fast_exp2(m[mb][h] - base);
          max_moved |= m_new != m[mb][h];
#pragma unroll
          for (int nb = 0; nb < kBlocksS; ++nb) {
            s[mb][nb][2 * h] = fast_exp2(fmaf(s[mb][nb][2 * h], s_to_log2, -base));
            s[mb][nb][2 * h + 1] = fast_exp2(fmaf(s[mb][nb][2 * h + 1], s_to_log2, -base));
          }
          m[mb][h] = m_new;
        }
        d[mb][0][0] *= rescale[0];
        d[mb][0][1] *= rescale[0];
        d[mb][0][2] *= rescale[1];
        d[mb][0][3] *= rescale[1];
        // Once the running maxima settle (most tiles of a long row) the rescale is exactly 1
        // for every row of the warp; skipping it saves 4 * kBlocksO multiplies a tile. The
        // vote keeps the branch warp-uniform.
        if (__any_sync(0xffffffffu, max_moved)) {
#pragma unroll
          for (int nb = 0; nb < kBlocksO; ++nb) {
            o[mb][nb][0] *= rescale[0];
            o[mb][nb][1] *= rescale[0];
            o[mb][nb][2] *= rescale[1];
            o[mb][nb][3] *= rescale[1];
          }
        }
      }
    }

    if (warp_has_rows) {
      // O += P V over the warp's keys.
      const std::uint32_t v_lane = mma::smem_addr(smem.v_stage(stage)) + v_lane_bytes;
#pragma unroll
      for (int kk = 0; kk < kWarpKv / 16; ++kk) {
        std::uint32_t a[kRowBlocks][4];
#pragma unroll
        for (int mb = 0; mb < kRowBlocks; ++mb) {
          a[mb][0] = mma::pack2<T>(s[mb][2 * kk][0], s[mb][2 * kk][1]);
          a[mb][1] = mma::pack2<T>(s[mb][2 * kk][2], s[mb][2 * kk][3]);
          a[mb][2] = mma::pack2<T>(s[mb][2 * kk + 1][0], s[mb][2 * kk + 1][1]);
          a[mb][3] = mma::pack2<T>(s[mb][2 * kk + 1][2], s[mb][2 * kk + 1][3]);
          mma::mma_16816<T>(d[mb][0], a[mb], ones, ones);
        }
#pragma unroll
        for (int jj = 0; jj < D / 16; ++jj) {
          std::uint32_t b[4];
          mma::ldmatrix_x4_trans(
              b, Tile::step_columns(v_lane, jj) + 16 * kk * Tile::kRowBytes);
#pragma unroll
          for (int mb = 0; mb < kRowBlocks; ++mb) {
            mma::mma_16816<T>(o[mb][2 * jj], a[mb], b[0], b[1]);
            mma::mma_16816<T>(o[mb][2 * jj + 1], a[mb], b[2], b[3]);
          }
        }
      }
    }
  }
  mma::cp_async_wait<0>();
  auto row_sum = [&](int mb, int h) { return d[mb][0][2 * h]; };

  if constexpr (Shape::kWarpsKv == 1) {
    // Each warp owns its rows outright: normalize and store from the fragments.
#pragma unroll
    for (int mb = 0; mb < kRowBlocks; ++mb) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = row_of(mb, h);
        if (row >= item.rows) continue;
        const float inv_d = row_sum(mb, h) > 0.f ? 1.f / row_sum(mb, h) : 0.f;
        const float lse_log2 = row_sum(mb, h) > 0.f ? m[mb][h] + log2f(row_sum(mb, h)) : kNegInf;
        const RowWriter<T, D> writer(p, item, row, lse_log2);
#pragma unroll
        for (int nb = 0; nb < kBlocksO; ++nb) {
          const float pair[2] = {o[mb][nb][2 * h] * inv_d, o[mb][nb][2 * h + 1] * inv_d};
          writer.store(nb * 8 + 2 * quad_lane, pair);
        }
        if (quad_lane == 0) writer.store_lse();
      }
    }
  } else {
    // Warps of one row group saw disjoint keys of the same rows: merge their states through
    // shared memory (the K/V buffers, free once every warp is past the loop).
    constexpr int kRows = Shape::kTileRows;
    static_assert((Shape::kWarpsKv * kRows * (D + 2)) * sizeof(float) <=
                      2 * kStages * AttentionSmem<T, Shape>::kStageElems * sizeof(T),
                  "the per-warp states fit the K/V buffers");
    float* o_acc = smem.scratch();                       // [warps_kv][kRows][D]
    float* row_m = o_acc + Shape::kWarpsKv * kRows * D;  // [warps_kv][kRows]
    float* row_d = row_m + Shape::kWarpsKv * kRows;      // [warps_kv][kRows]
    __syncthreads();
#pragma unroll
    for (int mb = 0; mb < kRowBlocks; ++mb) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = warp_row0 + mb * 16 + g + 8 * h;  // in the tile
        float* dst = o_acc + (warp_kv * kRows + row) * D + 2 * quad_lane;
#pragma unroll
        for (int nb = 0; nb < kBlocksO; ++nb) {
          *reinterpret_cast<float2*>(dst + nb * 8) =
              make_float2(o[mb][nb][2 * h], o[mb][nb][2 * h + 1]);
        }
        if (quad_lane == 0) {
          row_m[warp_kv * kRows + row] = m[mb][h];
          row_d[warp_kv * kRows + row] = row_sum(mb, h);
        }
      }
    }
    __syncthreads();
    constexpr int kCols = 4;
    for (int idx = threadIdx.x; idx < kRows * (D / kCols); idx += kAttentionThreads) {
      const int row = idx / (D / kCols);  // in the tile
      const int col = (idx % (D / kCols)) * kCols;
      if (row0 + row >= item.rows) continue;
      SoftmaxState<kCols> state;
      state.init();
#pragma unroll
      for (int w = 0; w < Shape::kWarpsKv; ++w) {
        const float4 part = *reinterpret_cast<const float4*>(o_acc + (w * kRows + row) * D + col);
        const float part_o[kCols] = {part.x, part.y, part.z, part.w};
        state.merge(part_o, row_m[w * kRows + row], row_d[w * kRows + row]);
      }
      float out[kCols];
      state.normalized_output(out);
      const RowWriter<T, D> writer(p, item, row0 + row, state.lse_log2());
      writer.store(col, out);
      if (col == 0) writer.store_lse();
    }
  }
}

// Runs every row of one work item, Shape::kTileRows rows at a time.
template <typename T, typename Shape>
__device__ __forceinline__ void attend_item(const BatchAttentionParams& p,
                                            const AttentionVariant& variant,
                                            const WorkItem& item, std::uint8_t* smem_base) {
  for (int row0 = 0; row0 < item.rows; row0 += Shape::kTileRows) {
    if (row0 > 0) __syncthreads();  // the next rows overwrite shared memory
    attend_tile<T, Shape>(p, variant, item, row0, smem_base);
  }
}

// An item's decode tiles as a call of its own, for the kernel that also has prefill tiles:
// ptxas then allocates the prefill path's registers without the decode path's live ranges
// inlined beside them (sm_80, head_dim 128, 32-key prefill tiles: 84 B of spill inlined, 16 B
// apart), which made room for 64-key prefill tiles. The call happens between items, where
// little is live, so it costs a few saved registers per decode item.
template <typename T, typename Shape>
__device__ __noinline__ void attend_item_out_of_line(const BatchAttentionParams& p,
                                                     const AttentionVariant& variant,
                                                     const WorkItem& item,
                                                     std::uint8_t* smem_base) {
  attend_item<T, Shape>(p, variant, item, smem_base);
}

// PREFILL_TILES = false compiles the kernel without the prefill tile shape: ptxas then sizes
// registers for the decode tile alone (inlined next to the 32-row prefill accumulators, the
// decode loop spills, costing ~4 % of bandwidth at large decode batches). Such a kernel
// still runs any plan: items of more than kDecodeMaxRows rows go through the decode shape
// kDecodeMaxRows rows at a time (correct, slower), so a CUDA graph captured on a decode batch
// stays valid if it is replayed on a mixed one.
// COMPACT picks the footprint (kCompactSmemBytes above).
template <typename T, int HEAD_DIM, bool PREFILL_TILES, bool COMPACT>
__global__ void __launch_bounds__(kAttentionThreads)
    batch_attention_kernel(const __grid_constant__ BatchAttentionParams p) {
  // Aligned for SwizzledTile::step_columns: every tile starts at a multiple of its row bytes
  // from here (AttentionSmem). One alignment for every instantiation: they share the symbol.
  extern __shared__ __align__(kSmemBaseAlignment) std::uint8_t smem_base[];
  static_assert(kSmemBaseAlignment % SwizzledTile<HEAD_DIM>::kBaseAlignment == 0,
                "the shared-memory base is aligned for step_columns");
  using Prefill = PrefillShape<HEAD_DIM, COMPACT>;
  using Decode = DecodeShape<HEAD_DIM, COMPACT>;
  // Compact head_dim 256 runs decode items through the prefill tile (DecodeShape): the decode
  // branch below is not compiled there.
  constexpr bool kOneTileShape = has_one_tile_shape<HEAD_DIM, COMPACT>();
  // The split merge (launched as a programmatic dependent on sm90+) may be scheduled now: its
  // CTAs take SMs as this kernel's CTAs leave and wait for the kernel to finish.
  allow_dependent_launch();
  const AttentionVariant variant{p.variant};
  const int first = p.plan.cta_work_indptr[blockIdx.x];
  const int last = p.plan.cta_work_indptr[blockIdx.x + 1];
  for (int w = first; w < last; ++w) {
    const WorkItem item = load_work_item(p, variant, w);
    if (kOneTileShape || (PREFILL_TILES && item.rows > kDecodeMaxRows)) {
      attend_item<T, Prefill>(p, variant, item, smem_base);
    } else if constexpr (!kOneTileShape) {
      if constexpr (PREFILL_TILES) {
        attend_item_out_of_line<T, Decode>(p, variant, item, smem_base);
      } else {
        attend_item<T, Decode>(p, variant, item, smem_base);
      }
    }
    __syncthreads();  // the next item overwrites shared memory
  }
}

constexpr int kMergeThreads = 128;
constexpr int kSlotsInFlight = 8;

// Folds the partial slots of each merge item into the final output. A unit of work is one row
// of one merge item, run by the whole CTA: kSlotGroups groups of threads split the row's slots
// (group i takes every kSlotGroups-th slot from the i-th), each thread kCols columns, and the
// groups' states are folded through shared memory. A split decode row has one slot per CTA
// that worked on it (33 at 1 x 32768 on an H100); folding them in one thread took a chain of
// dependent L2 round trips (the merge was 7.8 us of a 71 us decode), in groups it takes one or
// two. The grid strides over (row, merge item), row outermost, so that the rows of a decode
// plan's small items spread over the CTAs, as do the 128 rows of a split prefill tile. The
// grid is fixed while the number of merge items varies.
template <typename T, int HEAD_DIM>
__global__ void __launch_bounds__(kMergeThreads)
    merge_partial_states_kernel(const BatchAttentionParams p) {
  constexpr int kCols = 4;
  constexpr int kColThreads = HEAD_DIM / kCols;  // threads that cover one row
  static_assert(kMergeThreads % kColThreads == 0, "the CTA is a whole number of slot groups");
  constexpr int kSlotGroups = kMergeThreads / kColThreads;
  __shared__ float4 group_o[kSlotGroups][kColThreads];
  __shared__ float group_m[kSlotGroups][kColThreads];
  __shared__ float group_d[kSlotGroups][kColThreads];

  const PlanView& plan = p.plan;
  const int num_merge_items = plan.header[kPlanHeaderNumMergeItems];
  const int num_units = num_merge_items * plan.header[kPlanHeaderMaxMergeRows];
  const int slot_group = threadIdx.x / kColThreads;
  const int col_thread = threadIdx.x % kColThreads;
  const int col = col_thread * kCols;
  for (int unit = blockIdx.x; unit < num_units; unit += gridDim.x) {
    const int mi = unit % num_merge_items;
    const int row = unit / num_merge_items;
    const int request = plan.merge_request[mi];
    WorkItem item;
    item.kv_head = plan.merge_kv_head[mi];
    item.group = p.group_size;
    item.rows = plan.merge_q_len[mi] * static_cast<int>(p.group_size.divisor);
    if (row >= item.rows) continue;  // the same for the whole CTA
    item.q_token0 = p.qo_indptr[request] + plan.merge_q_start[mi];
    item.partial_slot = -1;  // final output
    // The item's own slots, then (cascade plans) the extra range, each at its row offset, as
    // one sequence of num_slots slots.
    const int own_slot_start = plan.merge_slot_start[mi];
    const int own_slots = plan.merge_num_slots[mi];
    const int own_slot_row = plan.merge_slot_row[mi] + row;
    const int extra_slot_start = plan.merge_extra_slot_start[mi];
    const int extra_slot_row = plan.merge_extra_slot_row[mi] + row;
    const int num_slots = own_slots + plan.merge_extra_num_slots[mi];
    // Launched as the attention kernel's programmatic dependent on sm90+ devices, by both
    // families (its launch overlaps that kernel's tail): the plan and the query offsets are
    // older than that kernel and may be read before it finishes, the partial states it writes
    // only after.
    wait_for_kernel_ahead();
    SoftmaxState<kCols> state;
    state.init();
    // kSlotsInFlight independent loads before the (sequential) merges, so that a long split
    // costs a few memory latencies rather than one per slot.
    for (int first = slot_group; first < num_slots; first += kSlotsInFlight * kSlotGroups) {
      float4 part[kSlotsInFlight];
      float lse_log2[kSlotsInFlight];
#pragma unroll
      for (int i = 0; i < kSlotsInFlight; ++i) {
        const int k = first + i * kSlotGroups;
        if (k < num_slots) {
          const bool own = k < own_slots;
          const std::int64_t slot_row =
              own ? static_cast<std::int64_t>(own_slot_start + k) * kMaxTileRows + own_slot_row
                  : static_cast<std::int64_t>(extra_slot_start + k - own_slots) * kMaxTileRows +
                        extra_slot_row;
          part[i] = *reinterpret_cast<const float4*>(p.partial_o + slot_row * HEAD_DIM + col);
          lse_log2[i] = lse_ln_to_log2(p.partial_lse[slot_row]);
        } else {
          lse_log2[i] = kNegInf;  // past the end: an empty state, skipped by merge
        }
      }
#pragma unroll
      for (int i = 0; i < kSlotsInFlight; ++i) {
        const float part_o[kCols] = {part[i].x, part[i].y, part[i].z, part[i].w};
        state.merge_normalized(part_o, lse_log2[i]);
      }
    }
    group_o[slot_group][col_thread] =
        make_float4(state.o_acc[0], state.o_acc[1], state.o_acc[2], state.o_acc[3]);
    group_m[slot_group][col_thread] = state.m;
    group_d[slot_group][col_thread] = state.d;
    __syncthreads();
    if (slot_group == 0) {
#pragma unroll
      for (int g = 1; g < kSlotGroups; ++g) {
        const float4 o = group_o[g][col_thread];
        const float other_o[kCols] = {o.x, o.y, o.z, o.w};
        state.merge(other_o, group_m[g][col_thread], group_d[g][col_thread]);
      }
      float out[kCols];
      state.normalized_output(out);
      const RowWriter<T, HEAD_DIM> writer(p, item, row, state.lse_log2());
      writer.store(col, out);
      if (col == 0) writer.store_lse();
    }
    __syncthreads();  // the next unit overwrites the groups' states
  }
}

}  // namespace fi_kernels
