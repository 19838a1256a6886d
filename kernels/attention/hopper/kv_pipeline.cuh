// The shared-memory ring between the producer warpgroup and the consumer warpgroups of the
// Hopper attention kernel (hopper/batch_attention_sm90.cuh), and the producer's paged gather.
//
// Each stage holds one K tile and one V tile of TILE_KV keys and owns two mbarriers:
//   full[s]   completes when the producer's cp.async copies into stage s have landed; each of
//             the kProducerThreads producer threads arrives once, asynchronously, through
//             cp.async.mbarrier.arrive.noinc (the arrival fires when the thread's copies finish);
//   empty[s]  completes when every consumer warp is done reading stage s (one plain arrive
//             per consumer warp, by lane 0 after the warp's wgmma reading the stage retired:
//             the wgmma wait is warp-collective, so lane 0 past it speaks for its warp).
// Both sides walk the stages in the same order, so one (stage, phase) counter per side says
// which phase of which barrier to wait on.
//
// Why cp.async and not TMA: a 64- or 128-key tile spans several pages of 16 tokens whose
// addresses come from the page table, and a TMA box cannot gather; 16-byte cp.async copies
// can, writing each chunk straight to its swizzled place in the wgmma layout.
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "attention/mma.cuh"
#include "attention/paged_kv.cuh"
#include "attention/params.cuh"
#include "common/wide_math.cuh"

namespace fi_kernels {
namespace hopper {

// Position in the ring: the stage to use next and the parity of its current phase.
template <int STAGES>
struct RingPosition {
  int stage = 0;
  std::uint32_t phase = 0;

  __device__ __forceinline__ void advance() {
    if (++stage == STAGES) {
      stage = 0;
      phase ^= 1u;
    }
  }
};

template <int STAGES>
struct KvRingBarriers {
  std::uint64_t full[STAGES];
  std::uint64_t empty[STAGES];

  // One thread initializes; the caller makes the init visible (fence + __syncthreads).
  __device__ __forceinline__ void init(int producer_threads, int consumer_warps) {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      cutlass::arch::ClusterBarrier::init(&full[s], producer_threads);
      cutlass::arch::ClusterBarrier::init(&empty[s], consumer_warps);
    }
  }

  // Producer: waits until the consumers released the stage's previous contents. A fresh
  // barrier counts as released: waiting on the parity before phase 0 returns at once.
  __device__ __forceinline__ void producer_acquire(const RingPosition<STAGES>& at) {
    cutlass::arch::ClusterBarrier::wait(&empty[at.stage], at.phase ^ 1u);
  }
  // Producer: the stage is full once this thread's cp.async copies issued so far land.
  __device__ __forceinline__ void producer_commit(const RingPosition<STAGES>& at) {
    cutlass::arch::cpasync_barrier_arrive_noinc(&full[at.stage]);
  }
  // Consumer: waits for the stage's tiles. The copies wrote shared memory through the
  // generic proxy and wgmma reads it through the async proxy, hence the proxy fence.
  __device__ __forceinline__ void consumer_wait(const RingPosition<STAGES>& at) {
    cutlass::arch::ClusterBarrier::wait(&full[at.stage], at.phase);
    cutlass::arch::fence_view_async_shared();
  }
  // Called by every lane of a consumer warp, converged.
  __device__ __forceinline__ void consumer_release(const RingPosition<STAGES>& at) {
    if (threadIdx.x % 32 == 0) cutlass::arch::ClusterBarrier::arrive(&empty[at.stage]);
  }
};

// Waits for every cp.async of this thread, committed to a group or not (the producer never
// commits groups: its copies complete on the ring's mbarriers).
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::); }

// 16-byte cp.async whose source is ignored and whose destination becomes zeros when
// `zero_fill` is set; the predicate form needs no source-size register per copy.
__device__ __forceinline__ void cp_async_16_or_zero(std::uint32_t dst_smem, const void* src,
                                                    bool zero_fill) {
  asm volatile(
      "{\n"
      ".reg .pred ignore_src;\n"
      "setp.ne.b32 ignore_src, %2, 0;\n"
      "cp.async.cg.shared.global [%0], [%1], 16, ignore_src;\n"
      "}\n" ::"r"(dst_smem),
      "l"(src), "r"(static_cast<int>(zero_fill)));
}

// Byte offset of element (key, dim, stage) in a ring laid out by SmemLayout, a CuTe swizzled
// shared-memory layout: CuTe applies the swizzle to the byte address of the element, and the
// ring starts 1024-byte aligned (see the static_assert in PagedKvGather).
template <typename T, typename SmemLayout>
constexpr int swizzled_byte_offset(int key, int dim, int stage) {
  const SmemLayout layout{};
  const int linear = static_cast<int>(sizeof(T)) *
                     static_cast<int>(cute::get_nonswizzle_portion(layout)(key, dim, stage));
  return static_cast<int>(cute::get_swizzle_portion(layout)(linear));
}

// The ring's unswizzled byte offsets, tabulated per mode: a CuTe layout is a sum of one term
// per mode, so the compile-time checks below apply only the swizzle per element (evaluating
// the layout per element exceeds the compiler's constexpr budget).
template <typename T, typename SmemLayout, int KEYS, int HEAD_DIM, int STAGES>
struct RingModeBytes {
  int key[KEYS] = {};
  int chunk[HEAD_DIM / 8] = {};  // per 8 dims
  int stage[STAGES] = {};

  constexpr RingModeBytes() {
    const auto linear = cute::get_nonswizzle_portion(SmemLayout{});
    constexpr int kBytes = static_cast<int>(sizeof(T));
    for (int k = 0; k < KEYS; ++k) key[k] = kBytes * linear(k, 0, 0);
    for (int c = 0; c < HEAD_DIM / 8; ++c) chunk[c] = kBytes * linear(0, 8 * c, 0);
    for (int s = 0; s < STAGES; ++s) stage[s] = kBytes * linear(0, 0, s);
  }
};

// The offsets the producer hoists out of its loops are sound only if moving a chunk by 8 keys
// or by one stage moves it by a constant number of bytes (the 128-byte swizzle permutes the
// chunks inside each 1024-byte block of 8 keys and nothing else). Checked at compile time for
// every (key, chunk, stage) of the ring.
template <typename T, typename SmemLayout, int KEYS, int HEAD_DIM, int STAGES>
constexpr bool blocks_of_8_keys_shift_uniformly() {
  const RingModeBytes<T, SmemLayout, KEYS, HEAD_DIM, STAGES> bytes;
  const auto swizzle = cute::get_swizzle_portion(SmemLayout{});
  const int block_step = static_cast<int>(swizzle(bytes.key[8]));
  const int stage_step = static_cast<int>(swizzle(bytes.stage[STAGES > 1 ? 1 : 0]));
  for (int stage = 0; stage < STAGES; ++stage) {
    for (int key = 0; key < KEYS; ++key) {
      for (int c = 0; c < HEAD_DIM / 8; ++c) {
        const int expected = static_cast<int>(swizzle(bytes.key[key % 8] + bytes.chunk[c])) +
                             key / 8 * block_step + stage * stage_step;
        const int actual =
            static_cast<int>(swizzle(bytes.key[key] + bytes.chunk[c] + bytes.stage[stage]));
        if (actual != expected) return false;
      }
    }
  }
  return true;
}

// A lane that copies the chunk at `dim` of a key and the one HALF_DIMS further (the second
// half of the row) finds the second chunk's shared-memory place at a constant distance, for
// every (key, chunk of the first half, stage): then one hoisted address serves both.
template <typename T, typename SmemLayout, int KEYS, int HEAD_DIM, int STAGES, int HALF_DIMS>
constexpr bool second_half_shifts_uniformly() {
  const RingModeBytes<T, SmemLayout, KEYS, HEAD_DIM, STAGES> bytes;
  const auto swizzle = cute::get_swizzle_portion(SmemLayout{});
  const int shift = static_cast<int>(swizzle(bytes.chunk[HALF_DIMS / 8]));
  for (int stage = 0; stage < STAGES; ++stage) {
    for (int key = 0; key < KEYS; ++key) {
      const int row = bytes.key[key] + bytes.stage[stage];
      for (int c = 0; c < HALF_DIMS / 8; ++c) {
        const int first = static_cast<int>(swizzle(row + bytes.chunk[c]));
        const int second = static_cast<int>(swizzle(row + bytes.chunk[c + HALF_DIMS / 8]));
        if (second != first + shift) return false;
      }
    }
  }
  return true;
}

// Copies keys [tile_lo, tile_lo + TILE_KV) of one (request, KV head) from the paged cache into
// a K and a V tile of one ring stage (the ring laid out by SmemLayout over (key, dim, stage)),
// with 16-byte cp.async copies by NUM_THREADS threads; keys at or past kv_hi become zeros.
//
// Warp w copies the kKeysPerWarp contiguous keys from w * kKeysPerWarp, kKeysPerPass keys per
// pass (one coalesced row of HEAD_DIM * 2 bytes per kLanesPerKey lanes). Rows of 256 bytes or
// more are copied two chunks per lane, one in each half of the row: the second chunk's source
// and destination are the first's plus constants, immediate offsets of the same copy
// instruction, so a pass's address arithmetic (a page-offset shuffle, a 64-bit add each for K
// and V) serves twice the bytes (Nsight Compute, causal prefill 8 x 2048 at one chunk per
// lane: the producer issued ~15 % of the kernel's instructions, 2 IADD3 per copy).
// Everything that does not depend on the tile is computed once per kernel (the shared-memory
// addresses of a thread's chunks: within a stage they repeat every 8 keys up to a constant) or
// once per work item (the head's base pointers with the thread's chunk folded in). Per tile,
// each lane looks up the page of one key of its warp (look_up, issued a tile ahead) and turns
// it into the key's byte offset in the cache; per pass the copying lanes fetch that offset
// from the lane with two 32-bit shuffles, and it serves K and V alike: K and V share their
// page and token strides (the launcher checks; vLLM's caches are one tensor), so the copies'
// addresses are two adds.
template <typename T, typename SmemLayout, int HEAD_DIM, int TILE_KV, int STAGES, int NUM_THREADS>
struct PagedKvGather {
  static constexpr std::int64_t kElementBytes = sizeof(T);
  static constexpr int kChunksPerRow = HEAD_DIM / 8;
  // The two halves of a 128-byte-swizzled row of 256 bytes or more lie in different swizzle
  // atoms, at a constant distance (second_half_shifts_uniformly); a 128-byte row's halves
  // share one atom and would swap places with the swizzle.
  static constexpr int kChunksPerLane = HEAD_DIM * sizeof(T) >= 256 ? 2 : 1;
  static constexpr int kLanesPerKey = kChunksPerRow / kChunksPerLane;
  static constexpr int kHalfDims = HEAD_DIM / 2;
  static constexpr int kWarps = NUM_THREADS / 32;
  static constexpr int kKeysPerWarp = TILE_KV / kWarps;
  static constexpr int kKeysPerPass = 32 / kLanesPerKey;
  static constexpr int kPasses = kKeysPerWarp / kKeysPerPass;
  // Passes whose keys sit at different positions within a block of 8 keys, i.e. different
  // swizzle patterns: one hoisted shared-memory address each.
  static constexpr int kPhases = kKeysPerPass >= 8 ? 1 : 8 / kKeysPerPass;
  static constexpr int kBlockBytes = swizzled_byte_offset<T, SmemLayout>(8, 0, 0);
  static constexpr int kStageBytes = swizzled_byte_offset<T, SmemLayout>(0, 0, 1);
  static_assert(32 % kLanesPerKey == 0 && kKeysPerWarp % kKeysPerPass == 0 &&
                    kKeysPerWarp % 8 == 0 && kKeysPerWarp <= 32 && kPasses % kPhases == 0 &&
                    kPhases * kKeysPerPass % 8 == 0,
                "a warp copies whole keys, at most one per lane, in whole blocks of 8 keys");
  // A pass's lookup lane is lane `pass` of the copying lane's segment of kLanesPerKey lanes
  // (see look_up), so a segment must have a lane per pass.
  static_assert(kPasses <= kLanesPerKey, "one lookup lane per pass in each lane segment");
  static_assert(blocks_of_8_keys_shift_uniformly<T, SmemLayout, TILE_KV, HEAD_DIM, STAGES>(),
                "the ring layout moves a chunk by constants per 8 keys and per stage");
  static_assert(kChunksPerLane == 1 ||
                    second_half_shifts_uniformly<T, SmemLayout, TILE_KV, HEAD_DIM, STAGES,
                                                 kHalfDims>(),
                "a row's second half lies at a constant distance from its first");
  // Shared-memory distance from a chunk to its second-half partner (0: one chunk per lane).
  static constexpr int kSecondHalfSmemBytes =
      kChunksPerLane == 2 ? swizzled_byte_offset<T, SmemLayout>(0, kHalfDims, 0) : 0;
  static constexpr int kSecondHalfGlobalBytes = kHalfDims * static_cast<int>(sizeof(T));
  static_assert(decltype(cute::get_swizzle_portion(SmemLayout{}))::num_bits +
                        decltype(cute::get_swizzle_portion(SmemLayout{}))::num_base +
                        decltype(cute::get_swizzle_portion(SmemLayout{}))::num_shft <=
                    10,
                "the swizzle only touches address bits below the ring's 1024-byte alignment");

  // Where one work item's K and V rows come from.
  struct Source {
    const char* k;  // k + kv_head * k_stride_head + this thread's chunk, in bytes
    const char* v;
    const std::int32_t* pages;  // this request's page ids, in sequence order
    int kv_hi;
  };
  // One key of the tile per lane: the page holding it and its slot in the page (0 when the key
  // is past kv_hi or the lane looks up no key).
  struct TileLookup {
    int page;
    int slot;
  };
  // The byte offset of a lane's key from the head's base pointers, split for 32-bit shuffles.
  union RowOffset {
    std::int64_t bytes;
    int halves[2];
  };

  std::uint32_t smem_k[kPhases];  // stage 0 address of this thread's chunk in pass `phase`
  int chunk_bytes;                // this thread's chunk within a key, in bytes
  int copy_key;                   // the key (within the tile) this thread copies in pass 0
  int lookup_key;                 // the key (within the tile) this lane looks up; -1: none
  int page_bytes, slot_bytes;  // of K and of V
  FastDivmod page_size;

  // k_ring: the K ring (V's follows at v_minus_k bytes, see load); strides in bytes must fit
  // int32 (the launcher checks).
  template <typename KRing>
  __device__ __forceinline__ PagedKvGather(const BatchAttentionParams& p, KRing k_ring,
                                           int thread) {
    const int warp = thread / 32;
    const int lane = thread % 32;
    const int segment = lane / kLanesPerKey;  // key of the lane within a pass
    const int chunk = lane % kLanesPerKey;     // its (first) chunk of the key
    copy_key = warp * kKeysPerWarp + segment;
    // Lane `pass` of segment s looks up the key that segment s copies in that pass.
    lookup_key = chunk < kPasses ? warp * kKeysPerWarp + chunk * kKeysPerPass + segment : -1;
    chunk_bytes = chunk * 16;
#pragma unroll
    for (int phase = 0; phase < kPhases; ++phase) {
      smem_k[phase] =
          mma::smem_addr(&k_ring(copy_key + phase * kKeysPerPass, chunk * 8, 0));
    }
    page_bytes = static_cast<int>(p.k_stride_page * kElementBytes);
    slot_bytes = static_cast<int>(p.k_stride_token * kElementBytes);
    page_size = FastDivmod(static_cast<std::uint32_t>(p.page_size));
  }

  __device__ __forceinline__ Source source(const BatchAttentionParams& p, int kv_head,
                                           int page_begin, int kv_hi) const {
    Source s;
    s.k = static_cast<const char*>(p.k) + kv_head * p.k_stride_head * kElementBytes + chunk_bytes;
    s.v = static_cast<const char*>(p.v) + kv_head * p.v_stride_head * kElementBytes + chunk_bytes;
    s.pages = p.kv_indices + page_begin;
    s.kv_hi = kv_hi;
    return s;
  }

  // Issues the page-table load for this lane's key of the tile at tile_lo; the result is first
  // read by load(), so its latency hides behind whatever the producer does in between.
  __device__ __forceinline__ TileLookup look_up(const Source& s, int tile_lo) const {
    TileLookup lookup{0, 0};
    const int key = tile_lo + lookup_key;
    if (lookup_key >= 0 && key < s.kv_hi) {
      int page_idx;
      page_size.divmod(key, page_idx, lookup.slot);
      lookup.page = s.pages[page_idx];
    }
    return lookup;
  }

  // Issues the copies of the tile at tile_lo into ring stage `stage`; v_minus_k is the byte
  // distance from the K ring to the V ring.
  template <int V_MINUS_K>
  __device__ __forceinline__ void load(const Source& s, int tile_lo, const TileLookup& lookup,
                                       int stage) const {
    const std::uint32_t stage_offset = static_cast<std::uint32_t>(stage * kStageBytes);
    // Pass `pass` copies key copy_key + pass * kKeysPerPass, which exists iff that is < keys_left.
    const int keys_left = s.kv_hi - tile_lo - copy_key;
    RowOffset looked_up;
    looked_up.bytes = mad_wide(lookup.page, page_bytes, mad_wide(lookup.slot, slot_bytes, 0));
#pragma unroll
    for (int pass = 0; pass < kPasses; ++pass) {
      RowOffset row;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        row.halves[half] = __shfl_sync(0xffffffffu, looked_up.halves[half], pass, kLanesPerKey);
      }
      const char* k_src = s.k + row.bytes;
      const char* v_src = s.v + row.bytes;
      const std::uint32_t k_dst = smem_k[pass % kPhases] + stage_offset +
                                  (pass / kPhases) * (kPhases * kKeysPerPass / 8) * kBlockBytes;
      const bool past_end = pass * kKeysPerPass >= keys_left;
      cp_async_16_or_zero(k_dst, k_src, past_end);
      cp_async_16_or_zero(k_dst + V_MINUS_K, v_src, past_end);
      if constexpr (kChunksPerLane == 2) {
        cp_async_16_or_zero(k_dst + kSecondHalfSmemBytes, k_src + kSecondHalfGlobalBytes,
                            past_end);
        cp_async_16_or_zero(k_dst + kSecondHalfSmemBytes + V_MINUS_K,
                            v_src + kSecondHalfGlobalBytes, past_end);
      }
    }
  }
};

}  // namespace hopper
}  // namespace fi_kernels
