// Host hot path of the load-balanced planner (fi_backend/metadata/planner.py holds the
// documentation of the cost model and the split policy; this file implements them).
//
// One call of PlanScheduler::plan
//   1. checks the batch against the engine's capacities (nothing is written before that),
//   2. walks the batch's query tiles once to sum their estimated cost,
//   3. deals whole tiles in KV-locality order (its last sorted_tail_per_cta * num_ctas tiles
//      longest first) to the CTA that frees up first (a list schedule simulated with the cost
//      model) when that keeps every CTA within overfill_fraction of the mean; otherwise
//      walks them as one stream, cutting it into num_ctas consecutive pieces of equal cost
//      (a tile is split into KV chunks only where a CTA boundary falls inside it). Either way
//      it writes work items, CTA ranges, partial slots and merge items into the pinned staging
//      buffer (layout: fi_backend/metadata/plan_layout.py),
//   4. copies the used prefix of every section to the persistent device buffer: memcpy for a
//      CPU "device", cudaMemcpyAsync / cudaMemcpy2DAsync on the caller's stream for CUDA.
// It allocates nothing: every array it touches was sized by the capacities at construction.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace fi_backend {
namespace {

// Mirrors plan_layout.py: header fields and the order of the per-item sections.
constexpr int kHeaderLen = 5;
enum WorkField { kWorkRequest, kWorkKvHead, kWorkQStart, kWorkQLen, kWorkKvStart, kWorkKvEnd,
                 kWorkPartialSlot, kNumWorkFields };
enum MergeField { kMergeRequest, kMergeKvHead, kMergeQStart, kMergeQLen, kMergeSlotStart,
                  kMergeNumSlots, kMergeSlotRow, kMergeExtraSlotStart, kMergeExtraNumSlots,
                  kMergeExtraSlotRow, kNumMergeFields };

struct SchedulerConfig {
  int num_kv_heads;
  int group_size;    // query heads per KV head = rows per query token of a tile
  int tile_tokens;   // query tokens per tile
  int num_ctas;
  int max_requests;
  int max_batched_tokens;
  int max_model_len;
  int kv_len_slack;  // KV length upper bounds exceed the exact lengths by at most this
  int max_work_items;
  int max_merge_items;
  int max_partial_slots;
  // Cost model (planner.py, "Cost model"): cost of an item with R rows and N KV tokens is
  // (N' + item_overhead_tokens) * (kv_load_rows + R') + row_overhead_tokens * R', with N'
  // = N rounded up to kv_tile_tokens and R' = R rounded up to row_granule.
  double kv_load_rows;
  int row_granule;
  int kv_tile_tokens;
  double item_overhead_tokens;
  double row_overhead_tokens;
  // Split policy (planner.py, "Split policy").
  double overfill_fraction;  // a CTA may exceed its target by this instead of a split
  int min_chunk_tokens;      // no chunk cut from a tile is shorter than this ...
  int small_work_chunk_factor;  // ... unless the batch's KV per CTA x this is shorter
  int chunk_align_tokens;    // chunk boundaries sit on multiples of this
  int sorted_tail_per_cta;   // the list schedule's last this x num_ctas tiles: longest first
};

// One entry of the list schedule: query tile `tile` (an index into the tiles of one KV head)
// of `request` on `kv_head`, its estimated cost and its position in KV-locality order.
struct ListedTile {
  double cost;
  int position;
  int request;
  int kv_head;
  int tile;
};

struct RequestShape {
  int q_len;
  int kv_upper;    // planned KV length (upper bound of the exact one)
  int kv_lower;    // smallest exact KV length the upper bound may stand for
};

struct TileGeometry {
  int q_start;
  int q_len;
  int kv_begin;
  int kv_end;
  double cost_per_kv_token;
  double item_overhead;
};

class PlanScheduler {
 public:
  PlanScheduler(const SchedulerConfig& config, std::vector<std::int64_t> section_offsets,
                std::uintptr_t staging_address, std::uintptr_t device_address,
                bool device_is_cuda)
      : config_(config),
        offsets_(std::move(section_offsets)),
        staging_(reinterpret_cast<std::int32_t*>(staging_address)),
        device_(reinterpret_cast<std::int32_t*>(device_address)),
        device_is_cuda_(device_is_cuda),
        cta_free_at_(config.num_ctas),
        item_cta_(config.max_work_items),
        list_(config.max_work_items),
        cta_next_item_(config.num_ctas),
        first_tile_(static_cast<std::size_t>(config.max_requests) + 1),
        tiles_(max_tiles_per_kv_head(config)),
        tile_cost_(tiles_.size()) {
    if (offsets_.size() != 2 + kNumWorkFields + kNumMergeFields) {
      throw py::value_error("PlanScheduler needs " +
                            std::to_string(2 + kNumWorkFields + kNumMergeFields) +
                            " section offsets (header, cta_work_indptr, work and merge fields)");
    }
    if (config_.max_merge_items < config_.num_ctas - 1 ||
        config_.max_partial_slots < 2 * (config_.num_ctas - 1)) {
      throw py::value_error(
          "capacity too small for the split policy: with num_ctas " +
          std::to_string(config_.num_ctas) + " a plan may need up to " +
          std::to_string(config_.num_ctas - 1) + " merge items and " +
          std::to_string(2 * (config_.num_ctas - 1)) + " partial slots; got " +
          std::to_string(config_.max_merge_items) + " and " +
          std::to_string(config_.max_partial_slots) + " (use PlanCapacity.for_engine)");
    }
  }

  ~PlanScheduler() {
    if (copy_done_ != nullptr) cudaEventDestroy(copy_done_);
  }

  PlanScheduler(const PlanScheduler&) = delete;
  PlanScheduler& operator=(const PlanScheduler&) = delete;

  // Returns (num_work_items, num_merge_items, num_partial_slots).
  std::array<int, 3> plan(const std::int32_t* qo_indptr, const std::int32_t* kv_len,
                          int batch_size, bool causal, int window_left, std::uintptr_t stream) {
    causal_ = causal;
    window_left_ = window_left;
    const double total_cost = check_and_sum_cost(qo_indptr, kv_len, batch_size);
    wait_for_previous_copy();
    std::array<int, 3> counts;
    if (!deal_whole_tiles(batch_size, total_cost, counts)) {
      counts = cut_stream(batch_size, total_cost);
    }
    publish(counts, stream);
    return counts;
  }

 private:
  std::int32_t* section(int index) { return staging_ + offsets_[index]; }
  std::int32_t* work_field(int field) { return section(2 + field); }
  std::int32_t* merge_field(int field) { return section(2 + kNumWorkFields + field); }

  RequestShape request_shape(const std::int32_t* qo_indptr, const std::int32_t* kv_len,
                             int b) const {
    const int q_len = qo_indptr[b + 1] - qo_indptr[b];
    const int kv_upper = kv_len[b];
    return RequestShape{q_len, kv_upper, std::max(q_len, kv_upper - config_.kv_len_slack)};
  }

  // KV tokens an item over n keys is charged for: the kernels compute whole KV tiles.
  double charged_kv_tokens(int n) const {
    const int tile = config_.kv_tile_tokens;
    return static_cast<double>((n + tile - 1) / tile * tile);
  }

  // The fixed part of an item's cost, for an item of padded_rows rows (rounded up to
  // row_granule).
  double item_overhead(int padded_rows) const {
    return config_.item_overhead_tokens * (config_.kv_load_rows + padded_rows) +
           config_.row_overhead_tokens * padded_rows;
  }

  // Estimated cost of an item of geometry g over n keys.
  double item_cost(const TileGeometry& g, int n) const {
    return charged_kv_tokens(n) * g.cost_per_kv_token + g.item_overhead;
  }

  int num_tiles(const RequestShape& r) const {
    return (r.q_len + config_.tile_tokens - 1) / config_.tile_tokens;
  }

  // The KV range a tile's rows may see for any exact length in [kv_lower, kv_upper]:
  // causal ends it after the tile's last query (taken at the upper bound), the window starts
  // it at the first query's window (taken at the lower bound, so that no key an exact,
  // shorter sequence needs is trimmed away).
  TileGeometry tile_geometry(const RequestShape& r, int tile) const {
    TileGeometry g;
    g.q_start = tile * config_.tile_tokens;
    g.q_len = std::min(config_.tile_tokens, r.q_len - g.q_start);
    g.kv_end = causal_ ? r.kv_upper - r.q_len + g.q_start + g.q_len : r.kv_upper;
    g.kv_begin = window_left_ >= 0
                     ? std::max(0, r.kv_lower - r.q_len + g.q_start - window_left_)
                     : 0;
    const int rows = g.q_len * config_.group_size;
    const int padded_rows =
        (rows + config_.row_granule - 1) / config_.row_granule * config_.row_granule;
    g.cost_per_kv_token = config_.kv_load_rows + padded_rows;
    g.item_overhead = item_overhead(padded_rows);
    return g;
  }

  [[noreturn]] static void refuse(const std::string& message) { throw py::value_error(message); }

  // Tiles of one KV head that a plan within the capacities can hold (see check_and_sum_cost).
  static std::size_t max_tiles_per_kv_head(const SchedulerConfig& config) {
    const std::int64_t for_tiles = config.max_work_items - (config.num_ctas - 1);
    return static_cast<std::size_t>(std::max<std::int64_t>(1, for_tiles / config.num_kv_heads));
  }

  // Checks every input against the capacities, computes the batch's tiles (tiles_,
  // first_tile_, tile_cost_) and returns the batch's total cost.
  double check_and_sum_cost(const std::int32_t* qo_indptr, const std::int32_t* kv_len,
                            int batch_size) {
    if (batch_size > config_.max_requests) {
      refuse("batch of " + std::to_string(batch_size) + " requests exceeds the planner's " +
             "max_requests " + std::to_string(config_.max_requests));
    }
    if (qo_indptr[0] != 0) {
      refuse("qo_indptr[0] is " + std::to_string(qo_indptr[0]) + "; it must be 0");
    }
    double cost_per_kv_head = 0.0;
    std::int64_t tiles_per_kv_head = 0;
    kv_tokens_per_kv_head_ = 0;
    for (int b = 0; b < batch_size; ++b) {
      const RequestShape r = request_shape(qo_indptr, kv_len, b);
      if (r.q_len < 0) {
        refuse("qo_indptr decreases at request " + std::to_string(b) + " (" +
               std::to_string(qo_indptr[b]) + " -> " + std::to_string(qo_indptr[b + 1]) +
               "); it must be non-decreasing");
      }
      if (qo_indptr[b + 1] > config_.max_batched_tokens) {
        refuse("batch of " + std::to_string(qo_indptr[batch_size]) + " query tokens exceeds " +
               "the planner's max_batched_tokens " + std::to_string(config_.max_batched_tokens));
      }
      if (r.kv_upper < r.q_len || r.kv_upper > config_.max_model_len) {
        refuse("request " + std::to_string(b) + " has kv_len " + std::to_string(r.kv_upper) +
               " and q_len " + std::to_string(r.q_len) +
               "; q_len <= kv_len <= max_model_len " + std::to_string(config_.max_model_len) +
               " is required");
      }
      first_tile_[b] = static_cast<std::int32_t>(tiles_per_kv_head);
      tiles_per_kv_head += num_tiles(r);
    }
    // Splits happen only at CTA boundaries, so num_ctas - 1 more items at most.
    const std::int64_t worst_items =
        tiles_per_kv_head * config_.num_kv_heads + config_.num_ctas - 1;
    if (worst_items > config_.max_work_items) {
      refuse("batch needs up to " + std::to_string(worst_items) + " work items (" +
             std::to_string(tiles_per_kv_head * config_.num_kv_heads) + " tiles + " +
             std::to_string(config_.num_ctas - 1) + " splits); the capacity is " +
             std::to_string(config_.max_work_items));
    }
    // Within the capacity, so tiles_ holds them all (max_tiles_per_kv_head).
    first_tile_[batch_size] = static_cast<std::int32_t>(tiles_per_kv_head);
    for (int b = 0; b < batch_size; ++b) {
      const RequestShape r = request_shape(qo_indptr, kv_len, b);
      for (int i = first_tile_[b]; i < first_tile_[b + 1]; ++i) {
        tiles_[i] = tile_geometry(r, i - first_tile_[b]);
        tile_cost_[i] = item_cost(tiles_[i], tiles_[i].kv_end - tiles_[i].kv_begin);
        kv_tokens_per_kv_head_ += tiles_[i].kv_end - tiles_[i].kv_begin;
        cost_per_kv_head += tile_cost_[i];
      }
    }
    return cost_per_kv_head * config_.num_kv_heads;
  }

  // Calls visit(request, kv_head, tile) for every tile (an index into tiles_ and tile_cost_)
  // in KV-locality order: by request, then KV head (the tiles of one (request, KV head) read
  // the same pages), then query tile from the last one (the longest under causal masking, so
  // that the list schedule below places long tiles first and the short ones fill the gaps).
  template <typename Visit>
  void for_each_tile_in_locality_order(int batch_size, Visit&& visit) const {
    for (int b = 0; b < batch_size; ++b) {
      for (int h = 0; h < config_.num_kv_heads; ++h) {
        for (int i = first_tile_[b + 1] - 1; i >= first_tile_[b]; --i) visit(b, h, i);
      }
    }
  }

  // The list schedule (the FlashInfer paper's priority-queue scheduler, without KV splits):
  // each tile, in locality order, goes whole to the CTA whose estimated load is smallest, i.e.
  // the one the kernel frees first, so CTAs run the tiles in about the order of the list.
  // Concurrent CTAs therefore work on neighbouring tiles that share KV pages: at causal
  // 1 x 16384 the 132 CTAs of the stream cut each walk their own stretch of all 8 KV heads
  // (64 MB of KV, more than the L2), whereas here they share one head's 8 MB. The list's last
  // sorted_tail_per_cta * num_ctas tiles are dealt longest first (LPT order), so the tiles that
  // even out the loads at the end are the shortest of the batch rather than the last
  // (request, KV head)'s long causal tiles: at causal 8 x 2048 on 264 CTAs the plain order
  // leaves the busiest CTA 5.8 % above the mean, the sorted tail 1.3 %; the tail spans a few
  // (request, KV head) pairs, so locality holds. Returns false, having written no work item
  // (only CTA counts, which the stream cut rewrites), when some CTA would exceed the mean cost
  // by more than overfill_fraction (few or long tiles); the stream cut, which splits tiles,
  // is used then.
  bool deal_whole_tiles(int batch_size, double total_cost, std::array<int, 3>& counts) {
    const int num_ctas = config_.num_ctas;
    const double load_limit = (1.0 + config_.overfill_fraction) * total_cost / num_ctas;
    // A tile above the limit fails wherever it goes (one long decode, few long tiles).
    const auto tile_costs_end = tile_cost_.begin() + first_tile_[batch_size];
    if (tile_costs_end != tile_cost_.begin() &&
        *std::max_element(tile_cost_.begin(), tile_costs_end) > load_limit) {
      return false;
    }
    int num_tiles = 0;
    for_each_tile_in_locality_order(batch_size, [&](int b, int h, int tile) {
      list_[num_tiles] = {tile_cost_[tile], num_tiles, b, h, tile};
      ++num_tiles;
    });
    const int tail = std::min(num_tiles, config_.sorted_tail_per_cta * num_ctas);
    // Longest first; equal costs keep their locality order, which makes std::sort
    // deterministic without the buffer std::stable_sort takes.
    std::sort(list_.begin() + (num_tiles - tail), list_.begin() + num_tiles,
              [](const ListedTile& x, const ListedTile& y) {
                return x.cost > y.cost || (x.cost == y.cost && x.position < y.position);
              });

    // Loads in ascending CTA order form a valid min-heap of (load, CTA).
    for (int c = 0; c < num_ctas; ++c) cta_free_at_[c] = {0.0, c};
    std::int32_t* cta_work_indptr = section(1);
    std::fill(cta_work_indptr, cta_work_indptr + num_ctas + 1, 0);
    for (int n = 0; n < num_tiles; ++n) {
      const int cta = cta_free_at_[0].second;
      const double cost = list_[n].cost;
      if (cta_free_at_[0].first + cost > load_limit) return false;
      item_cta_[n] = cta;
      ++cta_work_indptr[cta + 1];
      add_to_least_loaded(cost);
    }

    for (int c = 0; c < num_ctas; ++c) {
      cta_work_indptr[c + 1] += cta_work_indptr[c];
      cta_next_item_[c] = cta_work_indptr[c];
    }
    std::int32_t* work[kNumWorkFields];
    for (int f = 0; f < kNumWorkFields; ++f) work[f] = work_field(f);
    for (int n = 0; n < num_tiles; ++n) {
      const ListedTile& listed = list_[n];
      const TileGeometry& g = tiles_[listed.tile];
      const int i = cta_next_item_[item_cta_[n]]++;
      work[kWorkRequest][i] = listed.request;
      work[kWorkKvHead][i] = listed.kv_head;
      work[kWorkQStart][i] = g.q_start;
      work[kWorkQLen][i] = g.q_len;
      work[kWorkKvStart][i] = g.kv_begin;
      work[kWorkKvEnd][i] = g.kv_end;
      work[kWorkPartialSlot][i] = -1;
    }
    write_header(num_tiles, 0, 0, 0);
    counts = {num_tiles, 0, 0};
    return true;
  }

  // cta_free_at_ is a binary min-heap of (estimated load, CTA), the least loaded CTA at the
  // root (ties: the lower CTA index). Adds `cost` to the root and sifts it down: one pass over
  // log2(num_ctas) levels, where a pop and a push would take two.
  void add_to_least_loaded(double cost) {
    auto& heap = cta_free_at_;
    const int size = static_cast<int>(heap.size());
    const std::pair<double, int> moved{heap[0].first + cost, heap[0].second};
    int at = 0;
    for (int child = 1; child < size; child = 2 * at + 1) {
      if (child + 1 < size && heap[child + 1] < heap[child]) ++child;
      if (!(heap[child] < moved)) break;
      heap[at] = heap[child];
      at = child;
    }
    heap[at] = moved;
  }

  // The shortest chunk the stream cut may cut from a tile in this plan (planner.py, "Split
  // policy"): min_chunk_tokens, or, when the batch's KV tokens per CTA (all KV heads) times
  // small_work_chunk_factor fall below it, that product rounded up to a power of two (at
  // least two alignment units): little work then spreads over more CTAs in shorter chunks.
  int chunk_floor() const {
    const int cap = config_.min_chunk_tokens;
    if (config_.small_work_chunk_factor <= 0) return cap;
    const std::int64_t share =
        kv_tokens_per_kv_head_ * config_.num_kv_heads * config_.small_work_chunk_factor /
        config_.num_ctas;
    std::int64_t floor = 2 * static_cast<std::int64_t>(config_.chunk_align_tokens);
    while (floor < share && floor < cap) floor *= 2;
    return static_cast<int>(std::min<std::int64_t>(floor, cap));
  }

  void write_header(int num_items, int num_merges, int num_slots, int max_merge_rows) {
    std::int32_t* header = section(0);
    header[0] = num_items;
    header[1] = num_merges;
    header[2] = config_.num_ctas;
    header[3] = num_slots;
    header[4] = max_merge_rows;
  }

  std::array<int, 3> cut_stream(int batch_size, double total_cost) {
    const int num_ctas = config_.num_ctas;
    std::int32_t* work[kNumWorkFields];
    for (int f = 0; f < kNumWorkFields; ++f) work[f] = work_field(f);
    std::int32_t* merge[kNumMergeFields];
    for (int f = 0; f < kNumMergeFields; ++f) merge[f] = merge_field(f);
    std::int32_t* cta_work_indptr = section(1);

    // A split adds one item's overhead; budget it (for a decode-sized tile) into the
    // targets of the CTAs still to fill, so that the last CTA does not collect it all.
    const double split_overhead = item_overhead(config_.row_granule);
    const int min_chunk = chunk_floor();
    double unassigned = total_cost;
    int cta = 0;
    double cta_load = 0.0;
    // A CTA's target is its share of what is left, but never below the first CTA's: when
    // earlier CTAs took whole tiles past their share, the later ones are left lighter (some
    // idle) rather than split tiles that would not lower the busiest CTA's cost.
    double mean_target = 0.0;
    auto target_of_current_cta = [&] {
      const int ctas_left = num_ctas - cta;
      return std::max(mean_target, (unassigned + (ctas_left - 1) * split_overhead) / ctas_left);
    };
    mean_target = target_of_current_cta();
    double target = mean_target;
    int num_items = 0, num_merges = 0, num_slots = 0, max_merge_q_len = 0;
    cta_work_indptr[0] = 0;
    auto close_cta = [&] {
      ++cta;
      cta_work_indptr[cta] = num_items;
      cta_load = 0.0;
      target = target_of_current_cta();
    };

    for (int b = 0; b < batch_size; ++b) {
      for (int h = 0; h < config_.num_kv_heads; ++h) {
        for (int tile = first_tile_[b]; tile < first_tile_[b + 1]; ++tile) {
          const TileGeometry& g = tiles_[tile];
          const double w = g.cost_per_kv_token;
          int chunk_begin = g.kv_begin;
          int pieces = 0, slot_start = 0;
          auto emit = [&](int chunk_end, bool last_piece) {
            const int i = num_items++;
            work[kWorkRequest][i] = b;
            work[kWorkKvHead][i] = h;
            work[kWorkQStart][i] = g.q_start;
            work[kWorkQLen][i] = g.q_len;
            work[kWorkKvStart][i] = chunk_begin;
            work[kWorkKvEnd][i] = chunk_end;
            const bool split_tile = !last_piece || pieces > 0;
            if (split_tile && pieces == 0) slot_start = num_slots;
            work[kWorkPartialSlot][i] = split_tile ? num_slots++ : -1;
            ++pieces;
            if (last_piece && pieces > 1) {
              const int m = num_merges++;
              merge[kMergeRequest][m] = b;
              merge[kMergeKvHead][m] = h;
              merge[kMergeQStart][m] = g.q_start;
              merge[kMergeQLen][m] = g.q_len;
              merge[kMergeSlotStart][m] = slot_start;
              merge[kMergeNumSlots][m] = pieces;
              merge[kMergeSlotRow][m] = 0;  // a whole tile, no second range
              merge[kMergeExtraSlotStart][m] = 0;
              merge[kMergeExtraNumSlots][m] = 0;
              merge[kMergeExtraSlotRow][m] = 0;
              max_merge_q_len = std::max(max_merge_q_len, g.q_len);
            }
          };
          const int align = config_.chunk_align_tokens;
          while (true) {
            const int rest = g.kv_end - chunk_begin;
            const double rest_cost = item_cost(g, rest);
            const double room = target - cta_load;
            if (cta == num_ctas - 1 || rest_cost <= room + config_.overfill_fraction * target) {
              emit(g.kv_end, /*last_piece=*/true);
              cta_load += rest_cost;
              unassigned -= rest_cost;
              break;
            }
            // The rest of the tile overfills this CTA: cut a chunk that fills it exactly
            // (ending on a multiple of `align`), unless that chunk or the remainder would be
            // shorter than the minimum chunk.
            const int fill = static_cast<int>(std::max(0.0, (room - g.item_overhead) / w));
            int take = std::min(fill, rest - min_chunk);
            take = (chunk_begin + take) / align * align - chunk_begin;
            if (take < min_chunk && cta_load == 0.0) {
              // A CTA's whole share is below the minimum chunk (little work for many CTAs):
              // an empty CTA takes one minimum chunk, or the whole rest when no minimum chunk
              // would remain, so that tiny work spreads over fewer CTAs instead of all.
              const int min_end = (chunk_begin + min_chunk + align - 1) / align * align;
              take = g.kv_end - min_end >= min_chunk ? min_end - chunk_begin : rest;
            }
            if (take >= rest) {
              emit(g.kv_end, /*last_piece=*/true);
              cta_load += rest_cost;
              unassigned -= rest_cost;
              close_cta();
              break;
            }
            if (take >= min_chunk) {
              const double take_cost = item_cost(g, take);
              emit(chunk_begin + take, /*last_piece=*/false);
              cta_load += take_cost;
              // The remainder carries its own item overhead.
              unassigned -= take_cost - g.item_overhead;
              chunk_begin += take;
              close_cta();
            } else {
              close_cta();
            }
          }
        }
      }
    }
    for (int c = cta + 1; c <= num_ctas; ++c) cta_work_indptr[c] = num_items;
    write_header(num_items, num_merges, num_slots, max_merge_q_len * config_.group_size);
    return {num_items, num_merges, num_slots};
  }

  static void check_cuda(cudaError_t status, const char* what) {
    if (status != cudaSuccess) {
      throw std::runtime_error(std::string("planner: ") + what + " failed: " +
                               cudaGetErrorString(status));
    }
  }

  // The previous plan's async copy reads the staging buffer: wait for it before rewriting.
  void wait_for_previous_copy() {
    if (copy_pending_) {
      check_cuda(cudaEventSynchronize(copy_done_), "cudaEventSynchronize");
      copy_pending_ = false;
    }
  }

  // Copies header + cta_work_indptr and the used prefix of every work and merge section.
  void publish(const std::array<int, 3>& counts, std::uintptr_t stream_handle) {
    const std::size_t head_bytes = (kHeaderLen + config_.num_ctas + 1) * sizeof(std::int32_t);
    const std::size_t work_pitch = config_.max_work_items * sizeof(std::int32_t);
    const std::size_t merge_pitch = config_.max_merge_items * sizeof(std::int32_t);
    const std::size_t work_bytes = counts[0] * sizeof(std::int32_t);
    const std::size_t merge_bytes = counts[1] * sizeof(std::int32_t);
    const std::int64_t work_offset = offsets_[2];
    const std::int64_t merge_offset = offsets_[2 + kNumWorkFields];
    if (!device_is_cuda_) {
      std::memcpy(device_, staging_, head_bytes);
      for (int f = 0; f < kNumWorkFields; ++f) {
        std::memcpy(device_ + offsets_[2 + f], staging_ + offsets_[2 + f], work_bytes);
      }
      for (int f = 0; f < kNumMergeFields; ++f) {
        std::memcpy(device_ + offsets_[2 + kNumWorkFields + f],
                    staging_ + offsets_[2 + kNumWorkFields + f], merge_bytes);
      }
      return;
    }
    auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
    if (copy_done_ == nullptr) {
      check_cuda(cudaEventCreateWithFlags(&copy_done_, cudaEventDisableTiming),
                 "cudaEventCreate");
    }
    check_cuda(cudaMemcpyAsync(device_, staging_, head_bytes, cudaMemcpyHostToDevice, stream),
               "cudaMemcpyAsync");
    // Sections of one kind sit at a fixed pitch (their capacity): one 2D copy each.
    if (work_bytes > 0) {
      check_cuda(cudaMemcpy2DAsync(device_ + work_offset, work_pitch, staging_ + work_offset,
                                   work_pitch, work_bytes, kNumWorkFields,
                                   cudaMemcpyHostToDevice, stream),
                 "cudaMemcpy2DAsync");
    }
    if (merge_bytes > 0) {
      check_cuda(cudaMemcpy2DAsync(device_ + merge_offset, merge_pitch, staging_ + merge_offset,
                                   merge_pitch, merge_bytes, kNumMergeFields,
                                   cudaMemcpyHostToDevice, stream),
                 "cudaMemcpy2DAsync");
    }
    check_cuda(cudaEventRecord(copy_done_, stream), "cudaEventRecord");
    copy_pending_ = true;
  }

  SchedulerConfig config_;
  std::vector<std::int64_t> offsets_;
  std::int32_t* staging_;
  std::int32_t* device_;
  bool device_is_cuda_;
  cudaEvent_t copy_done_ = nullptr;
  bool copy_pending_ = false;
  bool causal_ = true;
  int window_left_ = -1;
  // Scratch of the list schedule, sized at construction: (load, CTA) heap, each listed tile's
  // CTA, the list itself, each CTA's next free item position.
  std::vector<std::pair<double, int>> cta_free_at_;
  std::vector<std::int32_t> item_cta_;
  std::vector<ListedTile> list_;
  std::vector<std::int32_t> cta_next_item_;
  // The batch's query tiles of one KV head (every head has the same), computed once per plan
  // by check_and_sum_cost: request b's are [first_tile_[b], first_tile_[b + 1]).
  std::vector<std::int32_t> first_tile_;
  std::vector<TileGeometry> tiles_;
  std::vector<double> tile_cost_;  // estimated cost of each whole tile
  std::int64_t kv_tokens_per_kv_head_ = 0;  // KV tokens the batch's tiles visit, one KV head
};

using HostIndexArray = py::array_t<std::int32_t, py::array::c_style | py::array::forcecast>;

}  // namespace

void bind_planner(py::module_& m) {
  py::class_<SchedulerConfig>(m, "PlanSchedulerConfig",
                              "Fixed parameters of a PlanScheduler (see planner.py)")
      .def(py::init<>())
      .def_readwrite("num_kv_heads", &SchedulerConfig::num_kv_heads)
      .def_readwrite("group_size", &SchedulerConfig::group_size)
      .def_readwrite("tile_tokens", &SchedulerConfig::tile_tokens)
      .def_readwrite("num_ctas", &SchedulerConfig::num_ctas)
      .def_readwrite("max_requests", &SchedulerConfig::max_requests)
      .def_readwrite("max_batched_tokens", &SchedulerConfig::max_batched_tokens)
      .def_readwrite("max_model_len", &SchedulerConfig::max_model_len)
      .def_readwrite("kv_len_slack", &SchedulerConfig::kv_len_slack)
      .def_readwrite("max_work_items", &SchedulerConfig::max_work_items)
      .def_readwrite("max_merge_items", &SchedulerConfig::max_merge_items)
      .def_readwrite("max_partial_slots", &SchedulerConfig::max_partial_slots)
      .def_readwrite("kv_load_rows", &SchedulerConfig::kv_load_rows)
      .def_readwrite("row_granule", &SchedulerConfig::row_granule)
      .def_readwrite("kv_tile_tokens", &SchedulerConfig::kv_tile_tokens)
      .def_readwrite("item_overhead_tokens", &SchedulerConfig::item_overhead_tokens)
      .def_readwrite("row_overhead_tokens", &SchedulerConfig::row_overhead_tokens)
      .def_readwrite("overfill_fraction", &SchedulerConfig::overfill_fraction)
      .def_readwrite("min_chunk_tokens", &SchedulerConfig::min_chunk_tokens)
      .def_readwrite("small_work_chunk_factor", &SchedulerConfig::small_work_chunk_factor)
      .def_readwrite("chunk_align_tokens", &SchedulerConfig::chunk_align_tokens)
      .def_readwrite("sorted_tail_per_cta", &SchedulerConfig::sorted_tail_per_cta);

  py::class_<PlanScheduler>(m, "PlanScheduler",
                            "Writes plans into a fixed staging buffer and publishes them to a "
                            "fixed device buffer (use fi_backend.metadata.planner.Planner)")
      .def(py::init<const SchedulerConfig&, std::vector<std::int64_t>, std::uintptr_t,
                    std::uintptr_t, bool>(),
           py::arg("config"), py::arg("section_offsets"), py::arg("staging_address"),
           py::arg("device_address"), py::arg("device_is_cuda"))
      .def(
          "plan",
          [](PlanScheduler& self, const HostIndexArray& qo_indptr, const HostIndexArray& kv_len,
             bool causal, int window_left, std::uintptr_t stream) {
            if (qo_indptr.ndim() != 1 || kv_len.ndim() != 1 ||
                qo_indptr.shape(0) != kv_len.shape(0) + 1) {
              throw py::value_error(
                  "qo_indptr must be int32 [batch_size + 1] and kv_len int32 [batch_size]; "
                  "got " + std::to_string(qo_indptr.size()) + " and " +
                  std::to_string(kv_len.size()) + " entries");
            }
            return self.plan(qo_indptr.data(), kv_len.data(),
                             static_cast<int>(kv_len.shape(0)), causal, window_left, stream);
          },
          py::arg("qo_indptr"), py::arg("kv_len"), py::arg("causal"), py::arg("window_left"),
          py::arg("stream"),
          "Plan one batch; returns (num_work_items, num_merge_items, num_partial_slots). "
          "Raises ValueError (writing nothing) when the batch exceeds the capacities.");
}

}  // namespace fi_backend
