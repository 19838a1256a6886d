// Persistent batch attention over a paged KV cache, driven by the plan
// (fi_backend/metadata/plan_layout.py), and the merge of split-KV partial states.
//
// attention kernel: grid = the plan's fixed CTA count; CTA c runs work items
//   cta_work_indptr[c] .. cta_work_indptr[c+1]. An item is (request, KV head, query tile,
//   KV chunk); its rows are the query tile's tokens x the GQA group (token-major), so the
//   group's query heads share every K/V tile that is loaded. Two tile shapes, picked per item:
//     prefill (rows > 16): 4 warps x 16 rows, each warp sweeps the whole KV tile;
//     decode (rows <= 16): 1 x 16 rows, the 4 warps split each KV tile and their softmax
//       states are merged in shared memory at the end (FlashInfer's decode split).
//   K/V tiles stream through a cp.async pipeline of kStages buffers, K and V in separate
//   groups so that Q K^T starts before V has landed. Softmax is online, in registers
//   (FlashAttention-2, algorithm 1), in base-2 units.
//   An item with partial_slot < 0 covers its rows' whole KV range: it writes the final output
//   (sinks applied) and the LSE. Otherwise it writes the float32 normalized output and the
//   natural-log LSE (no sink) to its partial slot.
// merge kernel: one merge item per split tile; folds its consecutive partial slots and writes
//   the final output, applying sinks.
#pragma once

#include <cstdint>
#include <type_traits>

#include "attention/mma.cuh"
#include "attention/paged_kv.cuh"
#include "attention/params.cuh"
#include "attention/variant.cuh"
#include "common/softmax_state.cuh"

namespace fi_kernels {

constexpr int kAttentionThreads = 128;
constexpr int kAttentionWarps = kAttentionThreads / 32;
constexpr int kStages = 3;
constexpr int kStageTokens = 64;  // keys per K (or V) stage buffer
constexpr int kDecodeMaxRows = 16;
// -inf as a compile-time float (__int_as_float is not constexpr).
constexpr float kNegInf = -__builtin_huge_valf();

// Shared memory of the attention kernel: the Q tile, then kStages K and kStages V buffers.
template <typename T, int HEAD_DIM>
struct AttentionSmem {
  static constexpr int kQElems = kMaxTileRows * HEAD_DIM;
  static constexpr int kStageElems = kStageTokens * HEAD_DIM;
  static constexpr int kBytes =
      static_cast<int>(sizeof(T)) * (kQElems + 2 * kStages * kStageElems);

  T* q;
  T* k;
  T* v;

  __device__ __forceinline__ explicit AttentionSmem(std::uint8_t* base)
      : q(reinterpret_cast<T*>(base)), k(q + kQElems), v(k + kStages * kStageElems) {}
  __device__ __forceinline__ T* k_stage(int stage) const { return k + stage * kStageElems; }
  __device__ __forceinline__ T* v_stage(int stage) const { return v + stage * kStageElems; }
  // After the main loop the K/V buffers hold the decode path's per-warp softmax states.
  __device__ __forceinline__ float* scratch() const { return reinterpret_cast<float*>(k); }
};

// Tile shape: NUM_WARPS_Q warps of ROW_BLOCKS x 16 query rows each; each KV tile of TILE_KV
// keys is split over NUM_WARPS_KV warps (warp w: row group w / NUM_WARPS_KV, key slice
// w % NUM_WARPS_KV). A warp with 2 row blocks feeds every K/V fragment it loads from shared
// memory to 2 MMAs, halving the ldmatrix traffic per MMA.
template <int HEAD_DIM, int NUM_WARPS_Q, int NUM_WARPS_KV, int TILE_KV, int ROW_BLOCKS>
struct TileShape {
  static_assert(NUM_WARPS_Q * NUM_WARPS_KV == kAttentionWarps, "all warps take part");
  static constexpr int kHeadDim = HEAD_DIM;
  static constexpr int kWarpsQ = NUM_WARPS_Q;
  static constexpr int kWarpsKv = NUM_WARPS_KV;
  static constexpr int kRowBlocks = ROW_BLOCKS;
  static constexpr int kWarpRows = 16 * ROW_BLOCKS;
  static constexpr int kTileRows = NUM_WARPS_Q * kWarpRows;
  static constexpr int kTileKv = TILE_KV;
  static constexpr int kWarpKv = TILE_KV / NUM_WARPS_KV;  // keys per warp per tile
  static_assert(kWarpKv % 16 == 0, "P V consumes keys 16 at a time");
  static_assert(TILE_KV <= kStageTokens, "a tile fits a stage buffer");
  static_assert(kTileRows <= kMaxTileRows, "a tile fits the Q buffer");
};

// head_dim 256 keeps one row block per warp: two would need 256 accumulator registers.
template <int HEAD_DIM>
using PrefillShape = std::conditional_t<(HEAD_DIM > 128), TileShape<HEAD_DIM, 4, 1, 32, 1>,
                                        TileShape<HEAD_DIM, 2, 2, 64, 2>>;
template <int HEAD_DIM>
using DecodeShape = TileShape<HEAD_DIM, 1, 4, 64, 1>;

// Where a work item reads and writes, with every length clamped by the exact device lengths.
struct WorkItem {
  int kv_head;
  int group;         // query heads per KV head
  int rows;          // query tokens x group
  int q_token0;      // global token index (row of q / o) of the tile's first query
  int q_pos_first;   // absolute positions of the tile's first and last query
  int q_pos_last;
  int kv_lo, kv_hi;  // keys to visit, possibly empty
  int partial_slot;
  int page_begin;    // offset of the request's pages in kv_indices

  __device__ __forceinline__ int row_token(int row) const { return row / group; }
  __device__ __forceinline__ int row_head(int row) const { return kv_head * group + row % group; }
};

__device__ __forceinline__ WorkItem load_work_item(const BatchAttentionParams& p,
                                                   const AttentionVariant& variant, int w) {
  const PlanView& plan = p.plan;
  WorkItem item;
  const int request = plan.work_request[w];
  item.kv_head = plan.work_kv_head[w];
  item.group = p.num_qo_heads / p.num_kv_heads;
  const int q_start = plan.work_q_start[w];
  const int q_len = plan.work_q_len[w];
  item.rows = q_len * item.group;
  item.partial_slot = plan.work_partial_slot[w];
  const int qo_begin = p.qo_indptr[request];
  const int q_len_request = p.qo_indptr[request + 1] - qo_begin;
  const int kv_len = p.seq_lens[request];
  item.q_token0 = qo_begin + q_start;
  item.q_pos_first = kv_len - q_len_request + q_start;
  item.q_pos_last = item.q_pos_first + q_len - 1;
  item.kv_lo = max(plan.work_kv_start[w], 0);
  item.kv_hi = min(plan.work_kv_end[w], kv_len);
  variant.clamp_kv_range(item.q_pos_first, item.q_pos_last, item.kv_lo, item.kv_hi);
  item.kv_hi = max(item.kv_hi, item.kv_lo);
  item.page_begin = p.kv_indptr[request];
  return item;
}

// Writes the result of `N` consecutive columns of one row of a work item (or a merge item):
// final output (sinks applied, LSE optional) when partial_slot < 0, else the partial state.
template <typename T, int HEAD_DIM, int N>
__device__ __forceinline__ void store_row_result(const BatchAttentionParams& p,
                                                 const WorkItem& item, int row, int col,
                                                 float (&o)[N], float lse_log2, bool store_lse) {
  if (item.partial_slot >= 0) {
    float* dst = p.partial_o + (static_cast<std::int64_t>(item.partial_slot) * kMaxTileRows + row) *
                                   HEAD_DIM + col;
#pragma unroll
    for (int i = 0; i < N; i += 2) *reinterpret_cast<float2*>(dst + i) = make_float2(o[i], o[i + 1]);
    if (store_lse) {
      p.partial_lse[item.partial_slot * kMaxTileRows + row] = lse_log2_to_ln(lse_log2);
    }
    return;
  }
  const int head = item.row_head(row);
  const std::int64_t token = item.q_token0 + item.row_token(row);
  float lse_ln = lse_log2_to_ln(lse_log2);
  if (p.variant.sinks != nullptr) {
    // The sink is one more logit in the denominator, with no value (variants.py).
    const float sink = p.variant.sinks[head];
    const float top = fmaxf(lse_ln, sink);
    const float lse_with_sink = top + logf(expf(lse_ln - top) + expf(sink - top));
    const float scale = expf(lse_ln - lse_with_sink);
#pragma unroll
    for (int i = 0; i < N; ++i) o[i] *= scale;
    lse_ln = lse_with_sink;
  }
  T* dst = static_cast<T*>(p.o) + token * p.o_stride_token + head * p.o_stride_head + col;
#pragma unroll
  for (int i = 0; i < N; i += 2) {
    *reinterpret_cast<std::uint32_t*>(dst + i) = mma::pack2<T>(o[i], o[i + 1]);
  }
  if (store_lse && p.lse != nullptr) {
    p.lse[token * p.lse_stride_token + head * p.lse_stride_head] = lse_ln;
  }
}

// Runs one work item with tile shape Shape. All threads of the CTA call it.
template <typename T, typename Shape>
__device__ __forceinline__ void attend_work_item(const BatchAttentionParams& p,
                                                 const AttentionVariant& variant,
                                                 const WorkItem& item,
                                                 const AttentionSmem<T, Shape::kHeadDim>& smem) {
  constexpr int D = Shape::kHeadDim;
  constexpr int kTileKv = Shape::kTileKv;
  constexpr int kWarpKv = Shape::kWarpKv;
  constexpr int kBlocksS = kWarpKv / 8;  // n-blocks of S per warp
  constexpr int kBlocksO = D / 8;        // n-blocks of O per warp
  // cp.async groups committed after K_t (or after V_t) that may stay in flight (see below).
  constexpr int kGroupsAhead = 2 * kStages - 3;
  using Tile = SwizzledTile<D>;
  using Loader = PagedKvLoader<T, D, kAttentionThreads>;

  constexpr int kRowBlocks = Shape::kRowBlocks;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int warp_q = warp / Shape::kWarpsKv;
  const int warp_kv = warp % Shape::kWarpsKv;
  const int warp_row0 = warp_q * Shape::kWarpRows;

  // Q tile: kTileRows rows, those past item.rows zero-filled.
  {
    const T* q = static_cast<const T*>(p.q);
    for (int idx = threadIdx.x; idx < Shape::kTileRows * Tile::kChunksPerRow;
         idx += kAttentionThreads) {
      const int row = idx / Tile::kChunksPerRow;
      const int chunk = idx % Tile::kChunksPerRow;
      const bool valid = row < item.rows;
      const std::int64_t token = item.q_token0 + (valid ? item.row_token(row) : 0);
      const T* src = q + token * p.q_stride_token +
                     static_cast<std::int64_t>(valid ? item.row_head(row) : 0) * p.q_stride_head +
                     chunk * 8;
      mma::cp_async_16(mma::smem_addr(smem.q + Tile::offset(row, chunk)), src, valid);
    }
  }

  Loader loader;
  loader.k_head = static_cast<const T*>(p.k) + item.kv_head * p.k_stride_head;
  loader.v_head = static_cast<const T*>(p.v) + item.kv_head * p.v_stride_head;
  loader.k_stride_page = p.k_stride_page;
  loader.k_stride_token = p.k_stride_token;
  loader.v_stride_page = p.v_stride_page;
  loader.v_stride_token = p.v_stride_token;
  loader.pages = p.kv_indices + item.page_begin;
  loader.page_size = FastDivmod(static_cast<std::uint32_t>(p.page_size));
  loader.kv_hi = item.kv_hi;

  const int num_tiles = (item.kv_hi - item.kv_lo + kTileKv - 1) / kTileKv;
  // Pipeline: groups are committed in the order Q+K_0, V_0, K_1, V_1, ...; tile t lives in
  // stage t % kStages. Empty groups keep the count uniform past the last tile. `ahead` holds
  // the page ids of the next tile to copy, fetched one tile early.
  typename Loader::template TilePages<kTileKv> ahead;
#pragma unroll
  for (int t = 0; t < kStages - 1; ++t) {
    if (t < num_tiles) {
      const int tile_lo = item.kv_lo + t * kTileKv;
      loader.fetch_pages(tile_lo, ahead);
      loader.template load_tile<kTileKv, false>(tile_lo, ahead, smem.k_stage(t));
      mma::cp_async_commit();
      loader.template load_tile<kTileKv, true>(tile_lo, ahead, smem.v_stage(t));
      mma::cp_async_commit();
    } else {
      mma::cp_async_commit();
      mma::cp_async_commit();
    }
  }
  if (kStages - 1 < num_tiles) loader.fetch_pages(item.kv_lo + (kStages - 1) * kTileKv, ahead);

  // Per-thread rows: in row block mb of the warp, rows g and g + 8 (h = 0, 1).
  const int g = lane / 4;
  const int quad_lane = lane % 4;
  int q_pos[kRowBlocks][2];
  int first_key[kRowBlocks][2];  // the keys each row sees: [first_key, last_key]
  int last_key[kRowBlocks][2];
  float slope[kRowBlocks][2];
#pragma unroll
  for (int mb = 0; mb < kRowBlocks; ++mb) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = warp_row0 + mb * 16 + g + 8 * h;
      const bool valid = row < item.rows;
      q_pos[mb][h] = item.q_pos_first + (valid ? item.row_token(row) : 0);
      variant.visible_keys(q_pos[mb][h], item.kv_hi, first_key[mb][h], last_key[mb][h]);
      slope[mb][h] = valid ? variant.alibi_slope(item.row_head(row)) : 0.f;
    }
  }

  float o[kRowBlocks][kBlocksO][4];
  float m[kRowBlocks][2];
  float d[kRowBlocks][2];  // per-thread partial row sums, reduced over the quad at the end
#pragma unroll
  for (int mb = 0; mb < kRowBlocks; ++mb) {
#pragma unroll
    for (int nb = 0; nb < kBlocksO; ++nb) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mb][nb][e] = 0.f;
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      m[mb][h] = kNegInf;
      d[mb][h] = 0.f;
    }
  }

  for (int t = 0; t < num_tiles; ++t) {
    const int stage = t % kStages;
    const int tile_lo = item.kv_lo + t * kTileKv;
    const int prefetch = t + kStages - 1;

    mma::cp_async_wait<kGroupsAhead>();  // K_t (and Q) landed
    __syncthreads();                     // ... for every thread; stage (t-1) % kStages is free
    if (prefetch < num_tiles) {
      loader.template load_tile<kTileKv, false>(item.kv_lo + prefetch * kTileKv, ahead,
                                                smem.k_stage(prefetch % kStages));
    }
    mma::cp_async_commit();

    // S = Q K^T for the warp's rows x kWarpKv keys.
    const T* k_tile = smem.k_stage(stage);
    const int key0 = warp_kv * kWarpKv;  // first key of this warp within the tile
    float s[kRowBlocks][kBlocksS][4];
#pragma unroll
    for (int mb = 0; mb < kRowBlocks; ++mb) {
#pragma unroll
      for (int nb = 0; nb < kBlocksS; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mb][nb][e] = 0.f;
      }
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      std::uint32_t a[kRowBlocks][4];
#pragma unroll
      for (int mb = 0; mb < kRowBlocks; ++mb) {
        mma::ldmatrix_x4(a[mb], mma::smem_addr(smem.q + Tile::offset(
                                                  warp_row0 + mb * 16 + lane % 16,
                                                  2 * kk + lane / 16)));
      }
#pragma unroll
      for (int i = 0; i < kBlocksS / 2; ++i) {
        std::uint32_t b[4];
        const int key = key0 + 16 * i + (lane / 16) * 8 + lane % 8;
        mma::ldmatrix_x4(b, mma::smem_addr(k_tile + Tile::offset(key, 2 * kk + (lane / 8) % 2)));
#pragma unroll
        for (int mb = 0; mb < kRowBlocks; ++mb) {
          mma::mma_16816<T>(s[mb][2 * i], a[mb], b[0], b[1]);
          mma::mma_16816<T>(s[mb][2 * i + 1], a[mb], b[2], b[3]);
        }
      }
    }

    // Logits (base 2) and mask. The run-time variant branches are taken once per tile, not
    // per element, so that each path is straight-line code the compiler can schedule.
    const int warp_key_lo = tile_lo + key0;
    if (variant.transforms_logits()) {
#pragma unroll
      for (int mb = 0; mb < kRowBlocks; ++mb) {
#pragma unroll
        for (int nb = 0; nb < kBlocksS; ++nb) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int kv_pos = warp_key_lo + nb * 8 + 2 * quad_lane + (e & 1);
            s[mb][nb][e] = variant.logit_log2(s[mb][nb][e], slope[mb][e / 2],
                                              kv_pos - q_pos[mb][e / 2]);
          }
        }
      }
    } else {
#pragma unroll
      for (int mb = 0; mb < kRowBlocks; ++mb) {
#pragma unroll
        for (int nb = 0; nb < kBlocksS; ++nb) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mb][nb][e] = variant.scaled_logit_log2(s[mb][nb][e]);
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
        for (int nb = 0; nb < kBlocksS; ++nb) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int kv_pos = warp_key_lo + nb * 8 + 2 * quad_lane + (e & 1);
            const int h = e / 2;
            s[mb][nb][e] = (kv_pos < first_key[mb][h] || kv_pos > last_key[mb][h])
                               ? kNegInf : s[mb][nb][e];
          }
        }
      }
    }

    // Online softmax: new row max, rescale the running state, P = 2^(S - max).
#pragma unroll
    for (int mb = 0; mb < kRowBlocks; ++mb) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float row_max = m[mb][h];
#pragma unroll
        for (int nb = 0; nb < kBlocksS; ++nb) {
          row_max = fmaxf(row_max, fmaxf(s[mb][nb][2 * h], s[mb][nb][2 * h + 1]));
        }
        row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
        row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));
        // While a row has seen no visible key its max is -inf; subtract 0 instead (P = 0).
        const float base = row_max == kNegInf ? 0.f : row_max;
        const float rescale = exp2f(m[mb][h] - base);
        d[mb][h] *= rescale;
#pragma unroll
        for (int nb = 0; nb < kBlocksO; ++nb) {
          o[mb][nb][2 * h] *= rescale;
          o[mb][nb][2 * h + 1] *= rescale;
        }
#pragma unroll
        for (int nb = 0; nb < kBlocksS; ++nb) {
          s[mb][nb][2 * h] = exp2f(s[mb][nb][2 * h] - base);
          s[mb][nb][2 * h + 1] = exp2f(s[mb][nb][2 * h + 1] - base);
          d[mb][h] += s[mb][nb][2 * h] + s[mb][nb][2 * h + 1];
        }
        m[mb][h] = row_max;
      }
    }

    mma::cp_async_wait<kGroupsAhead>();  // V_t landed
    __syncthreads();
    if (prefetch < num_tiles) {
      loader.template load_tile<kTileKv, true>(item.kv_lo + prefetch * kTileKv, ahead,
                                               smem.v_stage(prefetch % kStages));
    }
    mma::cp_async_commit();
    if (prefetch + 1 < num_tiles) loader.fetch_pages(item.kv_lo + (prefetch + 1) * kTileKv, ahead);

    // O += P V over the warp's keys.
    const T* v_tile = smem.v_stage(stage);
#pragma unroll
    for (int kk = 0; kk < kWarpKv / 16; ++kk) {
      std::uint32_t a[kRowBlocks][4];
#pragma unroll
      for (int mb = 0; mb < kRowBlocks; ++mb) {
        a[mb][0] = mma::pack2<T>(s[mb][2 * kk][0], s[mb][2 * kk][1]);
        a[mb][1] = mma::pack2<T>(s[mb][2 * kk][2], s[mb][2 * kk][3]);
        a[mb][2] = mma::pack2<T>(s[mb][2 * kk + 1][0], s[mb][2 * kk + 1][1]);
        a[mb][3] = mma::pack2<T>(s[mb][2 * kk + 1][2], s[mb][2 * kk + 1][3]);
      }
      const int key = key0 + 16 * kk + lane % 16;
#pragma unroll
      for (int jj = 0; jj < D / 16; ++jj) {
        std::uint32_t b[4];
        mma::ldmatrix_x4_trans(b, mma::smem_addr(v_tile + Tile::offset(key, 2 * jj + lane / 16)));
#pragma unroll
        for (int mb = 0; mb < kRowBlocks; ++mb) {
          mma::mma_16816<T>(o[mb][2 * jj], a[mb], b[0], b[1]);
          mma::mma_16816<T>(o[mb][2 * jj + 1], a[mb], b[2], b[3]);
        }
      }
    }
  }
  mma::cp_async_wait<0>();

#pragma unroll
  for (int mb = 0; mb < kRowBlocks; ++mb) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      d[mb][h] += __shfl_xor_sync(0xffffffffu, d[mb][h], 1);
      d[mb][h] += __shfl_xor_sync(0xffffffffu, d[mb][h], 2);
    }
  }

  if constexpr (Shape::kWarpsKv == 1) {
    // Each warp owns its rows outright: normalize and store from the fragments.
#pragma unroll
    for (int mb = 0; mb < kRowBlocks; ++mb) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = warp_row0 + mb * 16 + g + 8 * h;
        if (row >= item.rows) continue;
        const float inv_d = d[mb][h] > 0.f ? 1.f / d[mb][h] : 0.f;
        const float lse_log2 = d[mb][h] > 0.f ? m[mb][h] + log2f(d[mb][h]) : kNegInf;
#pragma unroll
        for (int nb = 0; nb < kBlocksO; ++nb) {
          float pair[2] = {o[mb][nb][2 * h] * inv_d, o[mb][nb][2 * h + 1] * inv_d};
          store_row_result<T, D, 2>(p, item, row, nb * 8 + 2 * quad_lane, pair, lse_log2,
                                    nb == 0 && quad_lane == 0);
        }
      }
    }
  } else {
    // Warps of one row group saw disjoint keys of the same rows: merge their states through
    // shared memory (the K/V buffers, free once every warp is past the loop).
    constexpr int kRows = Shape::kTileRows;
    static_assert((Shape::kWarpsKv * kRows * (D + 2)) * sizeof(float) <=
                      2 * kStages * kStageTokens * D * sizeof(T),
                  "the per-warp states fit the K/V buffers");
    float* o_acc = smem.scratch();                       // [warps_kv][kRows][D]
    float* row_m = o_acc + Shape::kWarpsKv * kRows * D;  // [warps_kv][kRows]
    float* row_d = row_m + Shape::kWarpsKv * kRows;      // [warps_kv][kRows]
    __syncthreads();
#pragma unroll
    for (int mb = 0; mb < kRowBlocks; ++mb) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = warp_row0 + mb * 16 + g + 8 * h;
        float* dst = o_acc + (warp_kv * kRows + row) * D + 2 * quad_lane;
#pragma unroll
        for (int nb = 0; nb < kBlocksO; ++nb) {
          *reinterpret_cast<float2*>(dst + nb * 8) = make_float2(o[mb][nb][2 * h], o[mb][nb][2 * h + 1]);
        }
        if (quad_lane == 0) {
          row_m[warp_kv * kRows + row] = m[mb][h];
          row_d[warp_kv * kRows + row] = d[mb][h];
        }
      }
    }
    __syncthreads();
    constexpr int kCols = 4;
    for (int idx = threadIdx.x; idx < kRows * (D / kCols); idx += kAttentionThreads) {
      const int row = idx / (D / kCols);
      const int col = (idx % (D / kCols)) * kCols;
      if (row >= item.rows) continue;
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
      store_row_result<T, D, kCols>(p, item, row, col, out, state.lse_log2(), col == 0);
    }
  }
}

template <typename T, int HEAD_DIM>
__global__ void __launch_bounds__(kAttentionThreads)
    batch_attention_kernel(const BatchAttentionParams p) {
  extern __shared__ __align__(16) std::uint8_t smem_base[];
  const AttentionSmem<T, HEAD_DIM> smem(smem_base);
  const AttentionVariant variant{p.variant};
  const int first = p.plan.cta_work_indptr[blockIdx.x];
  const int last = p.plan.cta_work_indptr[blockIdx.x + 1];
  for (int w = first; w < last; ++w) {
    const WorkItem item = load_work_item(p, variant, w);
    if (item.rows <= kDecodeMaxRows) {
      attend_work_item<T, DecodeShape<HEAD_DIM>>(p, variant, item, smem);
    } else {
      attend_work_item<T, PrefillShape<HEAD_DIM>>(p, variant, item, smem);
    }
    __syncthreads();  // the next item overwrites shared memory
  }
}

constexpr int kMergeThreads = 128;
constexpr int kSlotsInFlight = 8;

// Folds the partial slots of each merge item into the final output. Grid-stride over the
// plan's merge items, so the grid is fixed while the number of merge items varies.
template <typename T, int HEAD_DIM>
__global__ void __launch_bounds__(kMergeThreads)
    merge_partial_states_kernel(const BatchAttentionParams p) {
  constexpr int kCols = 4;
  const PlanView& plan = p.plan;
  const int num_merge_items = plan.header[kPlanHeaderNumMergeItems];
  const int group = p.num_qo_heads / p.num_kv_heads;
  for (int mi = blockIdx.x; mi < num_merge_items; mi += gridDim.x) {
    const int request = plan.merge_request[mi];
    WorkItem item;
    item.kv_head = plan.merge_kv_head[mi];
    item.group = group;
    item.rows = plan.merge_q_len[mi] * group;
    item.q_token0 = p.qo_indptr[request] + plan.merge_q_start[mi];
    item.partial_slot = -1;  // final output
    const int slot0 = plan.merge_slot_start[mi];
    const int num_slots = plan.merge_num_slots[mi];
    for (int idx = threadIdx.x; idx < item.rows * (HEAD_DIM / kCols); idx += kMergeThreads) {
      const int row = idx / (HEAD_DIM / kCols);
      const int col = (idx % (HEAD_DIM / kCols)) * kCols;
      SoftmaxState<kCols> state;
      state.init();
      // kSlotsInFlight independent loads before the (sequential) merges, so that a long
      // split costs a few memory latencies rather than one per slot.
      for (int first = slot0; first < slot0 + num_slots; first += kSlotsInFlight) {
        float4 part[kSlotsInFlight];
        float lse_log2[kSlotsInFlight];
#pragma unroll
        for (int i = 0; i < kSlotsInFlight; ++i) {
          const int slot = first + i;
          if (slot < slot0 + num_slots) {
            part[i] = *reinterpret_cast<const float4*>(
                p.partial_o + (static_cast<std::int64_t>(slot) * kMaxTileRows + row) * HEAD_DIM +
                col);
            lse_log2[i] = lse_ln_to_log2(p.partial_lse[slot * kMaxTileRows + row]);
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
      float out[kCols];
      state.normalized_output(out);
      store_row_result<T, HEAD_DIM, kCols>(p, item, row, col, out, state.lse_log2(), col == 0);
    }
  }
}

}  // namespace fi_kernels
