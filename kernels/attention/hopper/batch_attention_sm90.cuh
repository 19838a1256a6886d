// Persistent batch attention for Hopper (sm90a): warp-specialized, wgmma, driven by the same
// plan as the portable family (kernels/attention/batch_attention.cuh). Work items, their
// length clamping and the row results (final output with sinks, or partial state for the
// split-KV merge) come from attention/work_item.cuh, so both families execute one plan
// semantics; the merge of partial slots is the portable family's merge kernel.
//
// CTA = 1 producer warpgroup + kConsumerWarpgroups consumer warpgroups of 64 rows each.
//   producer:  gathers the K and V tiles of every work item of the CTA, in order, from the
//              paged cache into a kStages-deep shared-memory ring (hopper/kv_pipeline.cuh),
//              holding only a few registers (setmaxnreg) so that the consumers get the rest;
//   consumer c: rows [64c, 64c + 64) of the current item. It loads its Q rows (swizzled for
//              wgmma), then per KV tile: S = Q K^T (wgmma, both operands in shared memory),
//              masking and online softmax in registers (base 2, FlashAttention-2 algorithm 1),
//              O += P V (wgmma with P from registers and V read MN-major from the same tile
//              K-major loads wrote), and finally writes its rows through RowWriter. The
//              softmax of tile t runs while the tensor cores do P_{t-1} V_{t-1} (see consume).
// Every consumer walks every KV tile of every item (the ring needs all of them to release
// each stage), but a warpgroup with no rows in the item (a decode item of <= 64 rows leaves
// the second one idle) skips the math.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <cute/tensor.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/numeric_types.h>

#include "attention/batch_attention.cuh"  // kNegInf, fast_exp2, the merge kernel
#include "attention/hopper/kv_pipeline.cuh"
#include "attention/params.cuh"
#include "attention/variant.cuh"
#include "attention/work_item.cuh"
#include "common/softmax_state.cuh"

namespace fi_kernels {
namespace hopper {

constexpr int kWarpgroupThreads = 128;
constexpr int kWarpgroupRows = 64;  // M of one wgmma
constexpr int kConsumerWarpgroups = kMaxTileRows / kWarpgroupRows;
constexpr int kSm90Threads = kWarpgroupThreads * (1 + kConsumerWarpgroups);
static_assert(kMaxTileRows % kWarpgroupRows == 0, "a plan tile is whole warpgroup tiles");

// Register split after setmaxnreg: the producer only computes addresses; the consumers hold
// the O and S accumulators. 128 * (producer + kConsumerWarpgroups * consumer) registers must
// fit the 64K-register file; both are multiples of 8.
template <int PRODUCER, int CONSUMER>
struct RegisterSplit {
  static constexpr int kProducer = PRODUCER;
  static constexpr int kConsumer = CONSUMER;
  static_assert(kWarpgroupThreads * (PRODUCER + kConsumerWarpgroups * CONSUMER) <= 65536,
                "the register split fits the SM");
};

// CuTe's names for the CUDA element types.
template <typename T>
using CuteElement = std::conditional_t<std::is_same_v<T, __half>, cutlass::half_t,
                                       cutlass::bfloat16_t>;

// Shapes, shared-memory layouts and wgmma tilings for one (dtype, head_dim).
template <typename T, int HEAD_DIM>
struct Sm90Config {
  using Element = CuteElement<T>;
  static constexpr int kHeadDim = HEAD_DIM;
  // Keys per KV tile: 128 keeps the S = Q K^T wgmma wide (N = 128); at head_dim 256 the O
  // accumulator takes 128 registers, so the tile halves to keep S small.
  static constexpr int kTileKv = HEAD_DIM <= 128 ? 128 : 64;
  // As many stages as shared memory holds (227 KB): decode is memory-bound and wants tiles in
  // flight while one is used. Q + stages x (K + V): 64: 16 + 4 x 32 KB, 128: 32 + 3 x 64 KB,
  // 256: 64 + 2 x 64 KB.
  static constexpr int kStages = HEAD_DIM == 64 ? 4 : (HEAD_DIM == 128 ? 3 : 2);
  // head_dim 256 consumers (128 O registers) need 232 to stay spill-free; the producer then
  // keeps some hoisted shared-memory offsets in local memory, off the math path. Below that,
  // 56 lets the producer keep them all in registers.
  using Registers =
      std::conditional_t<(HEAD_DIM > 128), RegisterSplit<40, 232>, RegisterSplit<56, 224>>;

  // K-major (head_dim contiguous) 128-byte-swizzled layouts, the GMMA canonical form.
  using SmemLayoutQ = decltype(cute::tile_to_shape(
      cute::GMMA::Layout_K_SW128_Atom<Element>{},
      cute::Shape<cute::Int<kWarpgroupRows>, cute::Int<HEAD_DIM>>{}));
  using SmemLayoutKv = decltype(cute::tile_to_shape(
      cute::GMMA::Layout_K_SW128_Atom<Element>{},
      cute::Shape<cute::Int<kTileKv>, cute::Int<HEAD_DIM>, cute::Int<kStages>>{}));
  // The V tiles seen as (dim, key, stage): the B operand of O += P V, MN-major. Same bytes
  // as SmemLayoutKv, transposed view.
  using SmemLayoutVt = decltype(cute::composition(
      SmemLayoutKv{},
      cute::make_layout(
          cute::Shape<cute::Int<HEAD_DIM>, cute::Int<kTileKv>, cute::Int<kStages>>{},
          cute::Stride<cute::Int<kTileKv>, cute::_1, cute::Int<kTileKv * HEAD_DIM>>{})));

  // One warpgroup per MMA: each consumer warpgroup runs its own 64 rows.
  using TiledMmaQk = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float,
                                 cute::Shape<cute::Int<kWarpgroupRows>, cute::Int<kTileKv>,
                                             cute::Int<HEAD_DIM>>>()));
  using TiledMmaPv = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, float,
                                 cute::Shape<cute::Int<kWarpgroupRows>, cute::Int<HEAD_DIM>,
                                             cute::Int<kTileKv>>,
                                 cute::GMMA::Major::K, cute::GMMA::Major::MN>()));

  struct SharedStorage {
    alignas(1024) Element q[kConsumerWarpgroups][cute::cosize_v<SmemLayoutQ>];
    alignas(1024) Element k[cute::cosize_v<SmemLayoutKv>];
    alignas(1024) Element v[cute::cosize_v<SmemLayoutKv>];
    alignas(8) KvRingBarriers<kStages> ring;
  };
  static constexpr int kSmemBytes = static_cast<int>(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "fits the SM's shared memory");
};

// Issues C (+)= A B on one warpgroup as one wgmma batch (all k-blocks) and returns without
// waiting; ZERO_INIT overwrites C instead of accumulating. The caller waits with
// warpgroup_wait<N> and then fences the operands it touches next (wait_gemm_operand).
template <bool ZERO_INIT, typename TiledMma, typename FragA, typename FragB, typename FragC>
__device__ __forceinline__ void issue_gemm(TiledMma& tiled_mma, FragA& a, const FragB& b,
                                           FragC& c) {
  // A is either wgmma shared-memory descriptors or a register fragment (P).
  constexpr bool kARegisters =
      !std::is_same_v<typename FragA::iterator, cute::GMMA::DescriptorIterator>;
  if constexpr (kARegisters) cute::warpgroup_fence_operand(a);
  cute::warpgroup_fence_operand(c);
  cute::warpgroup_arrive();
  tiled_mma.accumulate_ = ZERO_INIT ? cute::GMMA::ScaleOut::Zero : cute::GMMA::ScaleOut::One;
#pragma unroll
  for (int kb = 0; kb < cute::size<2>(a); ++kb) {
    cute::gemm(tiled_mma, a(cute::_, cute::_, kb), b(cute::_, cute::_, kb), c);
    tiled_mma.accumulate_ = cute::GMMA::ScaleOut::One;
  }
  cute::warpgroup_commit_batch();
}

// The same value, marked warp-uniform for the compiler (a shuffle from lane 0): wgmma
// descriptors derived from it are then computed in uniform registers, instead of per thread
// and moved over with an R2UR before every wgmma.
__device__ __forceinline__ int warp_uniform(int value) {
  return __shfl_sync(0xffffffffu, value, 0);
}

// Keeps the compiler from moving register reads or writes of a wgmma operand across the
// wgmma.wait that retires it (the wait itself names no registers).
template <typename Frag>
__device__ __forceinline__ void fence_gemm_operand(Frag& frag) {
  cute::warpgroup_fence_operand(frag);
}

// The CTA's KV tiles in the order the ring carries them (every tile of every work item, empty
// items skipped), so that the producer can look one tile ahead across item boundaries.
template <typename Gather, int TILE_KV>
struct KvTileCursor {
  int w;        // current work item
  int last;     // one past the CTA's last work item
  int tile_lo;  // first key of the current tile
  typename Gather::Source source;

  __device__ __forceinline__ KvTileCursor(int first, int last_item)
      : w(first - 1), last(last_item), tile_lo(0) {
    source.kv_hi = 0;  // with tile_lo + TILE_KV >= kv_hi, next() starts with item `first`
  }

  // Moves to the next tile; false once the CTA's items are exhausted. Calls
  // on_item(const WorkItem&) for each item it enters, empty ones included.
  template <typename OnItem>
  __device__ __forceinline__ bool next(const BatchAttentionParams& p,
                                       const AttentionVariant& variant, const Gather& gather,
                                       OnItem&& on_item) {
    tile_lo += TILE_KV;
    while (tile_lo >= source.kv_hi) {
      if (++w >= last) return false;
      const WorkItem item = load_work_item(p, variant, w);
      on_item(item);
      source = gather.source(p, item.kv_head, item.page_begin, item.kv_hi);
      tile_lo = item.kv_lo;
    }
    return true;
  }
};

// Pulls the query rows of a work item into L2 (prefetch only: nothing reaches the SM), so that
// the consumers' Q load at the start of the item hits L2 instead of DRAM. The producer issues
// it when its cursor enters the item, a tile or more (the ring's depth) before the consumers
// get there. A row not 128-byte aligned may leave its last line unfetched; that costs only time.
template <typename T, int HEAD_DIM>
__device__ __forceinline__ void prefetch_q_rows_to_l2(const BatchAttentionParams& p,
                                                      const WorkItem& item, int thread) {
  constexpr int kLineBytes = 128;
  constexpr int kRowBytes = HEAD_DIM * static_cast<int>(sizeof(T));
  constexpr int kLinesPerRow = (kRowBytes + kLineBytes - 1) / kLineBytes;
  const char* q = static_cast<const char*>(p.q);
  for (int idx = thread; idx < item.rows * kLinesPerRow; idx += kWarpgroupThreads) {
    const int row = idx / kLinesPerRow;
    const char* line = q + item.row_offset(row, p.q_stride_token, p.q_stride_head) * sizeof(T) +
                       (idx % kLinesPerRow) * kLineBytes;
    asm volatile("prefetch.global.L2 [%0];" ::"l"(line));
  }
}

// Producer warpgroup: streams the K/V tiles of the CTA's work items into the ring. The work
// item and page-table loads of tile t + 1 are issued before waiting for tile t's stage, so
// neither sits between a released stage and its copies.
template <typename T, typename Config>
__device__ __forceinline__ void produce_kv(const BatchAttentionParams& p,
                                           const AttentionVariant& variant,
                                           typename Config::SharedStorage& smem, int first,
                                           int last) {
  using namespace cute;
  using SharedStorage = typename Config::SharedStorage;
  constexpr int kTileKv = Config::kTileKv;
  using Gather = PagedKvGather<T, typename Config::SmemLayoutKv, Config::kHeadDim, kTileKv,
                               Config::kStages, kWarpgroupThreads>;
  constexpr int kVMinusK =
      static_cast<int>(offsetof(SharedStorage, v) - offsetof(SharedStorage, k));
  Tensor k_tiles = make_tensor(make_smem_ptr(smem.k), typename Config::SmemLayoutKv{});
  const int thread = threadIdx.x % kWarpgroupThreads;
  const Gather gather(p, k_tiles, thread);
  const auto prefetch_q = [&](const WorkItem& item) {
    prefetch_q_rows_to_l2<T, Config::kHeadDim>(p, item, thread);
  };

  KvTileCursor<Gather, kTileKv> cursor(first, last);
  bool more = cursor.next(p, variant, gather, prefetch_q);
  typename Gather::TileLookup lookup{};
  if (more) lookup = gather.look_up(cursor.source, cursor.tile_lo);
  // Launched as a programmatic dependent of the kernel ahead (append_kv, which writes this
  // step's K/V rows): the plan, the page table and Q are older than that kernel, the cache
  // rows it writes are read only past this wait (common/grid_dependency.cuh).
  wait_for_kernel_ahead();
  RingPosition<Config::kStages> at;
  while (more) {
    const typename Gather::Source source = cursor.source;
    const int tile_lo = cursor.tile_lo;
    const typename Gather::TileLookup current = lookup;
    more = cursor.next(p, variant, gather, prefetch_q);
    if (more) lookup = gather.look_up(cursor.source, cursor.tile_lo);
    smem.ring.producer_acquire(at);
    gather.template load<kVMinusK>(source, tile_lo, current, at.stage);
    smem.ring.producer_commit(at);
    at.advance();
  }
  // Exit only once this thread's last copies have landed.
  cp_async_wait_all();
}

// Reduces N values (N a power of two) pairwise in place: log2(N) dependent steps instead of the
// N - 1 of a running accumulator. Compile-time recursion, so that every step unrolls and the
// values stay in registers.
template <int WIDTH, int N, typename Op>
__device__ __forceinline__ float tree_reduce_step(float (&v)[N], Op op) {
#pragma unroll
  for (int i = 0; i < WIDTH; ++i) v[i] = op(v[i], v[i + WIDTH]);
  if constexpr (WIDTH == 1) {
    return v[0];
  } else {
    return tree_reduce_step<WIDTH / 2>(v, op);
  }
}

template <int N, typename Op>
__device__ __forceinline__ float tree_reduce(float (&v)[N], Op op) {
  static_assert(N >= 2 && (N & (N - 1)) == 0, "a tree over a power of two");
  return tree_reduce_step<N / 2>(v, op);
}

// The online-softmax state of this thread's two rows of a work item (wgmma accumulator layout,
// see consume) in base-2 units: m = max logit, d = this thread's part of the row sum (the quad
// sharing the row adds its parts at the end).
struct ThreadRows {
  int q_pos[2];
  int first_key[2], last_key[2];  // visible keys: [first_key, last_key]
  float slope[2];
  float m[2], d[2];

  __device__ __forceinline__ void init(const AttentionVariant& variant, const WorkItem& item,
                                       int row0) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row0 + 8 * h;
      const bool valid = row < item.rows;
      int token = 0, head = 0;
      if (valid) item.row_position(row, token, head);
      q_pos[h] = item.q_pos_first + token;
      variant.visible_keys(q_pos[h], item.kv_hi, first_key[h], last_key[h]);
      slope[h] = valid ? variant.alibi_slope(head) : 0.f;
      m[h] = kNegInf;
      d[h] = 0.f;
    }
  }

  // Calls visit(x, h, kv_pos) for every element x of S, a tile's dot products in the wgmma
  // accumulator layout: element e + 2 h + 4 j is row half h, key tile_lo + 8 j + 2 quad_lane + e.
  template <int TILE_KV, typename FragS, typename Visit>
  __device__ __forceinline__ static void for_each_logit(FragS& s, int tile_lo, int quad_lane,
                                                        Visit&& visit) {
#pragma unroll
    for (int j = 0; j < TILE_KV / 8; ++j) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          visit(s(e + 2 * h + 4 * j), h, tile_lo + 8 * j + 2 * quad_lane + e);
        }
      }
    }
  }

  // Turns S (dot products of the tile starting at key tile_lo, in the layout for_each_logit
  // describes) into unnormalized probabilities 2^(logit - m) in place, updates m and d, and
  // returns in `rescale` the factor for the output accumulated so far. Without a logit
  // transform S stays the raw dot product and the scale to base-2 logits rides in the
  // exponent's FFMA (s_to_log2); with one, S becomes base-2 logits first.
  // whole_tile: every row sees every key of the tile (see visible_tile), so no mask is applied.
  // This runs between the S = Q K^T wait and the next wgmma issue, i.e. on the critical path of
  // the ping-pong: row maxima and sums are trees (log2 depth) rather than one dependent chain.
  template <int TILE_KV, typename FragS>
  __device__ __forceinline__ void softmax(FragS& s, int tile_lo, const AttentionVariant& variant,
                                          bool whole_tile, bool transforms, float s_to_log2,
                                          int quad_lane, float (&rescale)[2]) {
    constexpr int kBlocks = TILE_KV / 8;
    if (transforms) {
      for_each_logit<TILE_KV>(s, tile_lo, quad_lane, [&](float& x, int h, int kv_pos) {
        x = variant.logit_log2(x, slope[h], kv_pos - q_pos[h]);
      });
    }
    // Masks are taken per tile, not per element, so that the common tile (every row sees
    // every key) is straight-line exp2 code.
    if (!whole_tile) {
      for_each_logit<TILE_KV>(s, tile_lo, quad_lane, [&](float& x, int h, int kv_pos) {
        x = (kv_pos < first_key[h] || kv_pos > last_key[h]) ? kNegInf : x;
      });
    }
    float row_max[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float block_max[kBlocks];
#pragma unroll
      for (int j = 0; j < kBlocks; ++j) {
        block_max[j] = fmaxf(s(2 * h + 4 * j), s(1 + 2 * h + 4 * j));
      }
      row_max[h] = tree_reduce(block_max, [](float a, float b) { return fmaxf(a, b); });
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_max[h] = fmaxf(row_max[h], __shfl_xor_sync(0xffffffffu, row_max[h], 1));
      row_max[h] = fmaxf(row_max[h], __shfl_xor_sync(0xffffffffu, row_max[h], 2));
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // s_to_log2 > 0 keeps the order (and -inf), so this is the max base-2 logit.
      const float m_new = fmaxf(m[h], row_max[h] * s_to_log2);
      // While a row has seen no visible key its max is -inf; subtract 0 instead (P = 0).
      const float base = m_new == kNegInf ? 0.f : m_new;
      rescale[h] = fast_exp2(m[h] - base);
      float block_sum[kBlocks];
#pragma unroll
      for (int j = 0; j < kBlocks; ++j) {
        float& x0 = s(2 * h + 4 * j);
        float& x1 = s(1 + 2 * h + 4 * j);
        x0 = fast_exp2(fmaf(x0, s_to_log2, -base));
        x1 = fast_exp2(fmaf(x1, s_to_log2, -base));
        block_sum[j] = x0 + x1;
      }
      d[h] = fmaf(d[h], rescale[h], tree_reduce(block_sum, [](float a, float b) { return a + b; }));
      m[h] = m_new;
    }
  }

  // Whether every row sees every key of the tile [tile_lo, tile_lo + TILE_KV) of `item`.
  template <int TILE_KV>
  __device__ __forceinline__ static bool visible_tile(const AttentionVariant& variant,
                                                      const WorkItem& item, int tile_lo) {
    return tile_lo + TILE_KV <= item.kv_hi &&
           variant.sees_whole_tile(item.q_pos_first, item.q_pos_last, tile_lo, tile_lo + TILE_KV);
  }
};

// Transposes a 4 x 4 matrix of 32-bit values held by the four lanes of a quad, row r in lane
// r: afterwards lane q holds column q (its v[r] is lane r's former v[q]). Two butterfly
// stages over lane bits 0 and 1, two shuffles each.
__device__ __forceinline__ void transpose_quad(std::uint32_t (&v)[4], int quad_lane) {
#pragma unroll
  for (int bit = 1; bit <= 2; bit *= 2) {
    const bool upper = (quad_lane & bit) != 0;
#pragma unroll
    for (int k0 = 0; k0 < 4; ++k0) {
      if (k0 & bit) continue;
      const int k1 = k0 ^ bit;
      const std::uint32_t received = __shfl_xor_sync(0xffffffffu, upper ? v[k0] : v[k1], bit);
      v[k0] = upper ? received : v[k0];
      v[k1] = upper ? v[k1] : received;
    }
  }
}

// Writes row half h of this thread's O accumulator (wgmma layout, see consume) as a final
// output row. The quad's four lanes hold 2 of each O block's 8 consecutive columns; over 4
// blocks at a time, a quad transpose gives each lane one block's 8 columns, written with one
// 16-byte store instead of four 4-byte ones (Nsight Compute: the 4-byte stores were ~8 % of
// the consumers' samples at causal 8 x 2048). Needs BatchAttentionParams::o_rows_16b_aligned;
// every lane of the warp must call it (shuffles), rows past item.rows store nothing.
template <typename T, int D, typename FragO>
__device__ __forceinline__ void store_final_row_16b(const BatchAttentionParams& p,
                                                    const WorkItem& item, int row,
                                                    float lse_log2, const FragO& o_acc, int h,
                                                    float inv_d, int quad_lane) {
  constexpr int kBlocksO = D / 8;
  static_assert(kBlocksO % 4 == 0, "whole groups of four O blocks");
  const bool valid = row < item.rows;
  const RowWriter<T, D> writer(p, item, valid ? row : 0, lse_log2);
  const float scale = inv_d * writer.scale;
#pragma unroll
  for (int j0 = 0; j0 < kBlocksO; j0 += 4) {
    std::uint32_t pairs[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      pairs[k] = mma::pack2<T>(o_acc(2 * h + 4 * (j0 + k)) * scale,
                               o_acc(1 + 2 * h + 4 * (j0 + k)) * scale);
    }
    transpose_quad(pairs, quad_lane);
    if (valid) {
      *reinterpret_cast<uint4*>(writer.out_row + 8 * (j0 + quad_lane)) =
          make_uint4(pairs[0], pairs[1], pairs[2], pairs[3]);
    }
  }
  if (valid && quad_lane == 0) writer.store_lse();
}

// Ping-pong of the two consumer warpgroups (FlashAttention-3 section 3.1): while both have rows
// in an item they take turns issuing their wgmma batches, so that one warpgroup's softmax runs
// while the other's products hold the tensor cores. Warpgroup w waits for its turn on named
// barrier kFirstBarrier + w (256 threads: its own 128 waiting, the other's 128 arriving) and
// hands the turn over once its batch is issued. In an item of n > 0 KV tiles each warpgroup
// issues n + 1 batches (S_t with P_{t-1} V_{t-1} per tile, then the last P V).
// The turns run on from item to item: warpgroup 1's hand-over after its last batch grants
// warpgroup 0 the first turn of the next item in which both take turns, so that warpgroup 0
// issues that item's first S while warpgroup 1 still waits for its last P V and writes its
// rows (were the grant given at the next item's start, the tensor cores would idle through
// warpgroup 1's epilogue at every item boundary). Warpgroup 1 grants the very first turn when
// it enters the CTA's first such item, and warpgroup 0 takes the grant left pending after the
// last one (finish), so that each barrier sees as many arrivals as waits.
struct GemmTurns {
  static constexpr int kFirstBarrier = kConsumerWarpgroups;  // after the per-warpgroup Q ones
  static constexpr int kThreads = 2 * kWarpgroupThreads;
  static_assert(kConsumerWarpgroups == 2, "turns alternate between two warpgroups");
  int wg;
  bool active = false;   // both warpgroups take turns in the current item (same in both)
  bool started = false;  // a turn for warpgroup 0 has been granted: one is pending between items

  // both_have_rows and num_tiles are the same in both warpgroups.
  __device__ __forceinline__ void begin_item(bool both_have_rows, int num_tiles) {
    active = both_have_rows && num_tiles > 0;
    if (active && !started) {
      if (wg == 1) cutlass::arch::NamedBarrier::arrive(kThreads, kFirstBarrier + 0);
      started = true;
    }
  }
  __device__ __forceinline__ void wait() const {
    if (active) cutlass::arch::NamedBarrier::sync(kThreads, kFirstBarrier + wg);
  }
  __device__ __forceinline__ void hand_over() const {
    if (active) cutlass::arch::NamedBarrier::arrive(kThreads, kFirstBarrier + 1 - wg);
  }
  __device__ __forceinline__ void finish() const {
    if (started && wg == 0) cutlass::arch::NamedBarrier::sync(kThreads, kFirstBarrier + 0);
  }
};

// Consumer warpgroup `wg`: rows [64 wg, 64 wg + 64) of each of the CTA's work items.
// Per KV tile t (intra-warpgroup overlap, FlashAttention-3 section 3.2): issue S_t = Q K_t^T
// and O += P_{t-1} V_{t-1} back to back (in this warpgroup's turn, see GemmTurns), run the
// softmax of S_t while the tensor cores still work on P_{t-1} V_{t-1}, then rescale O and turn
// S_t into P_t once that product retired. Tile t-1's stage is released after its P V retired.
template <typename T, typename Config>
__device__ __forceinline__ void consume(const BatchAttentionParams& p,
                                       const AttentionVariant& variant,
                                       typename Config::SharedStorage& smem, int wg, int first,
                                       int last) {
  using namespace cute;
  constexpr int D = Config::kHeadDim;
  constexpr int kTileKv = Config::kTileKv;
  constexpr int kChunksPerRow = D / 8;
  constexpr int kBlocksO = D / 8;
  using Element = typename Config::Element;

  const int thread = threadIdx.x % kWarpgroupThreads;  // in the warpgroup
  const int lane = thread % 32;
  const int quad_lane = lane % 4;
  // wgmma accumulator layout (PTX ISA, "wgmma 64xNx16 D fragment"): this thread holds rows
  // 16 * warp + lane / 4 + 8 * h (h = 0, 1) and columns 8 * j + 2 * (lane % 4) + e (e = 0, 1)
  // at flat register index e + 2 * h + 4 * j.
  const int thread_row0 = wg * kWarpgroupRows + 16 * (thread / 32) + lane / 4;  // in the item
  // Named barrier of this warpgroup (NamedBarrier numbers them past CUTLASS's reserved ids).
  const int barrier_id = wg;

  Tensor q_tile = make_tensor(make_smem_ptr(smem.q[wg]), typename Config::SmemLayoutQ{});
  Tensor k_tiles = make_tensor(make_smem_ptr(smem.k), typename Config::SmemLayoutKv{});
  Tensor vt_tiles = make_tensor(make_smem_ptr(smem.v), typename Config::SmemLayoutVt{});

  typename Config::TiledMmaQk mma_qk;
  typename Config::TiledMmaPv mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(thread);
  auto thr_pv = mma_pv.get_thread_slice(thread);
  Tensor frag_q = thr_qk.partition_fragment_A(q_tile);    // descriptors (V, M, K)
  Tensor frag_k = thr_qk.partition_fragment_B(k_tiles);   // (V, N, K, stage)
  Tensor frag_vt = thr_pv.partition_fragment_B(vt_tiles);  // (V, N, K, stage)
  Tensor s_acc = partition_fragment_C(mma_qk, Shape<Int<kWarpgroupRows>, Int<kTileKv>>{});
  Tensor o_acc = partition_fragment_C(mma_pv, Shape<Int<kWarpgroupRows>, Int<D>>{});
  // P as the A operand of O += P V. Its register order equals S's (flat index e + 2 h + 4 j
  // with key 8 j + 2 (lane % 4) + e), so P is S converted in place, a pair at a time.
  Tensor p_frag =
      make_tensor<Element>(partition_shape_A(mma_pv, Shape<Int<kWarpgroupRows>, Int<kTileKv>>{}));
  Tensor p_pairs = recast<std::uint32_t>(p_frag);  // (e = 0, e = 1) element pairs
  static_assert(size(s_acc) == kTileKv / 2 && size(o_acc) == D / 2 &&
                    size(p_frag) == size(s_acc) && size(p_pairs) * 2 == size(p_frag),
                "accumulator fragments as described above");

  const bool transforms = variant.transforms_logits();
  const float s_to_log2 = transforms ? 1.f : variant.params.sm_scale * kLog2e;

  // Issues (and commits as one cp.async group) the copies of this warpgroup's Q rows of `it`
  // into its Q tile; rows past it.rows become zeros. The caller has made sure that no wgmma
  // still reads the tile.
  const auto issue_q_load = [&](const WorkItem& it) {
    const T* q = static_cast<const T*>(p.q);
    for (int idx = thread; idx < kWarpgroupRows * kChunksPerRow; idx += kWarpgroupThreads) {
      const int row = idx / kChunksPerRow;
      const int chunk = idx % kChunksPerRow;
      const int item_row = wg * kWarpgroupRows + row;
      const bool valid = item_row < it.rows;
      const T* src = q + it.row_offset(item_row, p.q_stride_token, p.q_stride_head) + chunk * 8;
      mma::cp_async_16(mma::smem_addr(&q_tile(row, chunk * 8)), src, valid);
    }
    mma::cp_async_commit();
  };

  RingPosition<Config::kStages> at;
  GemmTurns turns{wg};
  // Whether this warpgroup's Q rows of item w were already issued, during the last tile of
  // item w - 1 (see below).
  bool q_issued = false;
  // Each item is loaded one item ahead (for its Q copies, see q_prefetch_tile) and kept, so
  // that its chain of dependent metadata loads never sits between two items.
  WorkItem next{};
  if (first < last) next = load_work_item(p, variant, first);
  for (int w = first; w < last; ++w) {
    const WorkItem item = next;
    const bool has_rows = wg * kWarpgroupRows < item.rows;
    // (Without a next item this reloads item w, unused: loading it unconditionally keeps the
    // copies' operands free of the has_next select.)
    const bool has_next = w + 1 < last;
    next = load_work_item(p, variant, has_next ? w + 1 : w);

    if (has_rows) {
      if (!q_issued) {
        // The barrier keeps the copies from overwriting Q while a slower warp's wgmma of the
        // previous item could still read it.
        cutlass::arch::NamedBarrier::sync(kWarpgroupThreads, barrier_id);
        issue_q_load(item);
      }
      mma::cp_async_wait<0>();
      cutlass::arch::fence_view_async_shared();  // ordinary-proxy writes, wgmma reads
      cutlass::arch::NamedBarrier::sync(kWarpgroupThreads, barrier_id);
    }
    q_issued = false;

    ThreadRows rows;
    rows.init(variant, item, thread_row0);
    clear(o_acc);

    const int num_tiles = (item.kv_hi - item.kv_lo + kTileKv - 1) / kTileKv;
    // The tile after whose S the next item's Q rows load; -1: none (no next item, or no rows
    // of this warpgroup in it).
    const int q_prefetch_tile =
        has_next && wg * kWarpgroupRows < next.rows ? num_tiles - 1 : -1;
    turns.begin_item(item.rows > kWarpgroupRows, num_tiles);
    RingPosition<Config::kStages> previous = at;  // the stage of tile t - 1
    for (int t = 0; t < num_tiles; ++t) {
      const int tile_lo = item.kv_lo + t * kTileKv;
      // Decided before the waits below, off the softmax's critical path; the empty asm keeps
      // the compiler from sinking it back next to its use.
      int whole_tile = ThreadRows::visible_tile<kTileKv>(variant, item, tile_lo);
      asm volatile("" : "+r"(whole_tile));
      smem.ring.consumer_wait(at);
      if (has_rows) {
        turns.wait();
        issue_gemm<true>(mma_qk, frag_q, frag_k(_, _, _, warp_uniform(at.stage)), s_acc);
        // Each path issues and waits in one branch: ptxas serializes every wgmma when it
        // cannot match an issue with its wait.
        if (t > 0) {
          issue_gemm<false>(mma_pv, p_frag, frag_vt(_, _, _, warp_uniform(previous.stage)), o_acc);
          turns.hand_over();
          warpgroup_wait<1>();  // S_t is ready; P_{t-1} V_{t-1} may still run
        } else {
          turns.hand_over();
          warpgroup_wait<0>();
        }
        fence_gemm_operand(s_acc);
        float rescale[2];
        rows.softmax<kTileKv>(s_acc, tile_lo, variant, whole_tile != 0, transforms, s_to_log2,
                              quad_lane, rescale);
        // Pins the softmax before the wait below; without it the compiler hoists the wait
        // (it sees no dependence) and the overlap is gone.
        fence_gemm_operand(s_acc);
        // After the item's last S = Q K^T, this warpgroup's Q tile is free: the next item's Q
        // rows load while P_{t-1} V_{t-1} and P_t V_t run, instead of stalling the next item's
        // start. The barrier waits for every warp's part of that last S to have retired.
        if (t == q_prefetch_tile) {
          cutlass::arch::NamedBarrier::sync(kWarpgroupThreads, barrier_id);
          issue_q_load(next);
          q_issued = true;
        }
        warpgroup_wait<0>();
        fence_gemm_operand(o_acc);
        fence_gemm_operand(p_frag);
        // Once a row's maximum has settled (most tiles of a long row) its factor is exactly 1;
        // the warp skips the multiplies when that holds for all of its rows.
        if (__any_sync(0xffffffffu, rescale[0] != 1.f || rescale[1] != 1.f)) {
#pragma unroll
          for (int j = 0; j < kBlocksO; ++j) {
#pragma unroll
            for (int i = 0; i < 4; ++i) o_acc(i + 4 * j) *= rescale[i / 2];
          }
        }
        // Two elements per conversion (one F2FP each), in P's register order.
#pragma unroll
        for (int i = 0; i < size(p_pairs); ++i) {
          p_pairs(i) = mma::pack2<T>(s_acc(2 * i), s_acc(2 * i + 1));
        }
      }
      if (t > 0) smem.ring.consumer_release(previous);
      previous = at;
      at.advance();
    }
    if (num_tiles > 0) {
      if (has_rows) {
        turns.wait();
        issue_gemm<false>(mma_pv, p_frag, frag_vt(_, _, _, warp_uniform(previous.stage)), o_acc);
        turns.hand_over();
        warpgroup_wait<0>();
        fence_gemm_operand(o_acc);
        fence_gemm_operand(p_frag);
      }
      smem.ring.consumer_release(previous);
    }

    if (has_rows) {
      // Final rows go out 16 bytes per store where o allows it (see store_final_row_16b);
      // partial states (float32) and other o layouts take the RowWriter's pair stores.
      const bool wide_stores = item.partial_slot < 0 && p.o_rows_16b_aligned != 0;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float d = rows.d[h];
        d += __shfl_xor_sync(0xffffffffu, d, 1);
        d += __shfl_xor_sync(0xffffffffu, d, 2);
        const int row = thread_row0 + 8 * h;
        const float inv_d = d > 0.f ? 1.f / d : 0.f;
        const float lse_log2 = d > 0.f ? rows.m[h] + log2f(d) : kNegInf;
        if (wide_stores) {
          // Every lane takes part in the quad's shuffles, its row valid or not.
          store_final_row_16b<T, D>(p, item, row, lse_log2, o_acc, h, inv_d, quad_lane);
          continue;
        }
        if (row >= item.rows) continue;
        const RowWriter<T, D> writer(p, item, row, lse_log2);
#pragma unroll
        for (int j = 0; j < kBlocksO; ++j) {
          const float pair[2] = {o_acc(2 * h + 4 * j) * inv_d, o_acc(1 + 2 * h + 4 * j) * inv_d};
          writer.store(8 * j + 2 * quad_lane, pair);
        }
        if (quad_lane == 0) writer.store_lse();
      }
    }
  }
  turns.finish();
}

template <typename T, int HEAD_DIM>
__global__ void __launch_bounds__(kSm90Threads, 1)
    batch_attention_sm90_kernel(const __grid_constant__ BatchAttentionParams p) {
  using Config = Sm90Config<T, HEAD_DIM>;
  extern __shared__ __align__(1024) std::uint8_t smem_base[];
  auto& smem = *reinterpret_cast<typename Config::SharedStorage*>(smem_base);
  if (threadIdx.x == 0) {
    smem.ring.init(kWarpgroupThreads, kConsumerWarpgroups * kWarpgroupThreads / 32);
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();
  // The plan merge (merge_partial_states_kernel) may be scheduled now: its CTAs take SMs as
  // this kernel's CTAs leave and wait for the kernel to finish (common/grid_dependency.cuh).
  allow_dependent_launch();

  const AttentionVariant variant{p.variant};
  const int warpgroup = warp_uniform(threadIdx.x / kWarpgroupThreads);
  // Each role reads the CTA's work range itself, after setmaxnreg: a value live across the
  // register split ends up in local memory.
  const int* work_indptr = p.plan.cta_work_indptr + blockIdx.x;
  if (warpgroup == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Config::Registers::kProducer>();
    produce_kv<T, Config>(p, variant, smem, work_indptr[0], work_indptr[1]);
  } else {
    cutlass::arch::warpgroup_reg_alloc<Config::Registers::kConsumer>();
    consume<T, Config>(p, variant, smem, warpgroup - 1, work_indptr[0], work_indptr[1]);
  }
}

}  // namespace hopper
}  // namespace fi_kernels
