// The shared-memory ring between the producer warpgroup and the consumer warpgroups of the
// Hopper attention kernel (hopper/batch_attention_sm90.cuh), and the producer's paged gather.
//
// Each stage holds one K tile and one V tile of TILE_KV keys and owns two mbarriers:
//   full[s]   completes when the producer's cp.async copies into stage s have landed; each of
//             the kProducerThreads producer threads arrives once, asynchronously, through
//             cp.async.mbarrier.arrive.noinc (the arrival fires when the thread's copies finish);
//   empty[s]  completes when every consumer thread is done reading stage s (one plain arrive
//             per consumer thread, after its wgmma reading the stage has retired).
// Both sides walk the stages in the same order, so one (stage, phase) counter per side says
// which phase of which barrier to wait on.
//
// Why cp.async and not TMA: a 64- or 128-key tile spans several pages of 16 tokens whose
// addresses come from the page table, and a TMA box cannot gather; 16-byte cp.async copies
// can, writing each chunk straight to its swizzled place in the wgmma layout.
#pragma once

#include <cstdint>

#include <cutlass/arch/barrier.h>

#include "attention/mma.cuh"
#include "attention/paged_kv.cuh"

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
  __device__ __forceinline__ void init(int producer_threads, int consumer_threads) {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      cutlass::arch::ClusterBarrier::init(&full[s], producer_threads);
      cutlass::arch::ClusterBarrier::init(&empty[s], consumer_threads);
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
  __device__ __forceinline__ void consumer_release(const RingPosition<STAGES>& at) {
    cutlass::arch::ClusterBarrier::arrive(&empty[at.stage]);
  }
};

// Waits for every cp.async of this thread, committed to a group or not (the producer never
// commits groups: its copies complete on the ring's mbarriers).
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::); }

// Copies keys [tile_lo, tile_lo + TILE_KV) of one (request, KV head) from the paged cache into
// a K and a V tile of shared memory laid out by SmemLayout (a CuTe layout over (key, dim)),
// with 16-byte cp.async copies by NUM_THREADS threads; keys at or past kv_hi become zeros.
// Thread t copies chunk t % kChunksPerRow (8 elements) of every kRowsPerPass-th key, so each
// key's 16 chunks are read by 16 neighbouring threads (one coalesced 256-byte row at D=128).
template <typename T, int HEAD_DIM, int TILE_KV, int NUM_THREADS>
struct PagedKvGather {
  static constexpr int kChunksPerRow = HEAD_DIM / 8;
  static constexpr int kRowsPerPass = NUM_THREADS / kChunksPerRow;
  static constexpr int kPasses = TILE_KV / kRowsPerPass;
  static_assert(NUM_THREADS % kChunksPerRow == 0 && TILE_KV % kRowsPerPass == 0,
                "the threads cover whole keys and a tile is a whole number of passes");

  const T* k_head;  // k + kv_head * k_stride_head
  const T* v_head;
  std::int64_t k_stride_page, k_stride_token;
  std::int64_t v_stride_page, v_stride_token;
  const std::int32_t* pages;  // this request's page ids, in sequence order
  FastDivmod page_size;
  int kv_hi;

  template <typename SmemTensor>
  __device__ __forceinline__ void load(int thread, int tile_lo, SmemTensor k_tile,
                                       SmemTensor v_tile) const {
    const int chunk = thread % kChunksPerRow;
    const int row0 = thread / kChunksPerRow;
#pragma unroll
    for (int pass = 0; pass < kPasses; ++pass) {
      const int row = row0 + pass * kRowsPerPass;
      const int pos = tile_lo + row;
      const bool valid = pos < kv_hi;
      int page_idx = 0, in_page = 0;
      if (valid) page_size.divmod(pos, page_idx, in_page);
      const std::int64_t page = valid ? pages[page_idx] : 0;
      const T* k_src = k_head + page * k_stride_page + in_page * k_stride_token + chunk * 8;
      const T* v_src = v_head + page * v_stride_page + in_page * v_stride_token + chunk * 8;
      mma::cp_async_16(mma::smem_addr(&k_tile(row, chunk * 8)), k_src, valid);
      mma::cp_async_16(mma::smem_addr(&v_tile(row, chunk * 8)), v_src, valid);
    }
  }
};

}  // namespace hopper
}  // namespace fi_kernels
