"""Load balance of the planner against a FlashInfer-style split, on the issue's batches.

Both plans are scored by the same cost model (fi_backend/metadata/planner.py): balance =
max CTA cost / mean CTA cost over the fixed grid, and the busiest CTA's cost (the makespan,
what the step waits for), relative to ours.

Baseline ("FlashInfer-style"): the same query tiles; if the tiles already fill the grid no
KV is split, otherwise a binary search finds the smallest uniform chunk length (a multiple of
the page size, at least 128 tokens) for which the number of chunks fits the grid; the items
then go, in batch order, to the least-loaded CTA (what the hardware block scheduler does with
a non-persistent grid).

    python benchmarks/bench_balance.py [--num-ctas 132]
"""

from __future__ import annotations

import argparse
import heapq

import numpy as np

from fi_backend.metadata.plan_layout import tile_tokens
from fi_backend.metadata.planner import CostModel, Planner, cta_costs
from fi_backend.variants import AttentionVariant

NUM_QO_HEADS, NUM_KV_HEADS, HEAD_DIM, PAGE_SIZE = 32, 8, 128, 16
BASELINE_MIN_CHUNK_TOKENS = 128


def issue_batches() -> dict[str, tuple[list[int], list[int]]]:
    rng = np.random.default_rng(0)
    cases = {f"decode {b} x {k}": ([1] * b, [k] * b)
             for b in (1, 16, 64, 256) for k in (512, 2048, 8192, 32768)}
    cases["skewed 1x32768 + 63x512"] = ([1] * 64, [32768] + [512] * 63)
    cases["mixed 4x2048 prefill + 200 dec"] = (
        [2048] * 4 + [1] * 200, [2048] * 4 + rng.integers(1000, 8001, 200).tolist())
    return cases


def tile_kv_lengths(q_lens, kv_lens, group: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, causal KV length) of every query tile of one KV head, in batch order."""
    tokens_per_tile = tile_tokens(group)
    rows, lengths = [], []
    for q_len, kv_len in zip(q_lens, kv_lens):
        for q_start in range(0, q_len, tokens_per_tile):
            q_tile = min(tokens_per_tile, q_len - q_start)
            rows.append(q_tile * group)
            lengths.append(kv_len - q_len + q_start + q_tile)
    return np.array(rows), np.array(lengths)


def flashinfer_style_cta_costs(q_lens, kv_lens, num_ctas: int, cost_model: CostModel
                               ) -> tuple[np.ndarray, int, int]:
    """(cost per CTA, number of items, chunk length) of the baseline split."""
    rows, lengths = tile_kv_lengths(q_lens, kv_lens, NUM_QO_HEADS // NUM_KV_HEADS)
    rows = np.tile(rows, NUM_KV_HEADS)
    lengths = np.tile(lengths, NUM_KV_HEADS)

    def num_chunks(chunk: int) -> np.ndarray:
        return np.maximum(1, -(-lengths // chunk))

    chunk = int(lengths.max())
    if len(lengths) < num_ctas:
        low = max(PAGE_SIZE, BASELINE_MIN_CHUNK_TOKENS) // PAGE_SIZE
        high = -(-chunk // PAGE_SIZE)
        while low < high:
            middle = (low + high) // 2
            if num_chunks(middle * PAGE_SIZE).sum() <= num_ctas:
                high = middle
            else:
                low = middle + 1
        chunk = low * PAGE_SIZE
    counts = num_chunks(chunk)
    item_rows = np.repeat(rows, counts)
    item_tokens = np.concatenate([
        np.minimum(chunk, length - chunk * np.arange(count))
        for length, count in zip(lengths, counts)])
    item_costs = cost_model.item_cost(item_rows, item_tokens)
    loads = [(0.0, cta) for cta in range(num_ctas)]
    costs = np.zeros(num_ctas)
    for cost in item_costs:
        load, cta = heapq.heappop(loads)
        costs[cta] = load + cost
        heapq.heappush(loads, (load + cost, cta))
    return costs, len(item_costs), chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-ctas", type=int, default=132, help="persistent CTAs (H100: 132)")
    args = parser.parse_args()
    planner = Planner(max_requests=256, max_batched_tokens=16384, max_model_len=32768,
                      num_qo_heads=NUM_QO_HEADS, num_kv_heads=NUM_KV_HEADS, head_dim=HEAD_DIM,
                      page_size=PAGE_SIZE, num_ctas=args.num_ctas)
    print(f"{NUM_QO_HEADS} query / {NUM_KV_HEADS} KV heads, page {PAGE_SIZE}, "
          f"{args.num_ctas} CTAs, causal; balance = max / mean CTA cost; makespan relative "
          "to ours")
    header = (f"| {'batch':<32}| ours: balance | items | splits | min chunk "
              f"| FI-style: balance | items | chunk | FI makespan / ours |")
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    # With fewer than num_ctas / target items even equal items leave the balance above the
    # target: the batch has too little KV to split at the split policy's minimum chunk, and
    # those CTAs idle by design. The target is judged where it is reachable.
    target = 1.10
    worst = 0.0
    out_of_reach = []
    for name, (q_lens, kv_lens) in issue_batches().items():
        qo_indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
        plan = planner.plan(qo_indptr, np.asarray(kv_lens, np.int32), AttentionVariant())
        ours = cta_costs(plan, planner.cost_model)
        chunks = plan.section("work_kv_end") - plan.section("work_kv_start")
        split = plan.section("work_partial_slot") >= 0
        min_chunk = int(chunks[split].min()) if split.any() else "-"
        baseline, baseline_items, baseline_chunk = flashinfer_style_cta_costs(
            q_lens, kv_lens, args.num_ctas, planner.cost_model)
        ours_balance = ours.max() / ours.mean()
        if plan.num_work_items * target >= args.num_ctas:
            worst = max(worst, ours_balance)
        else:
            out_of_reach.append(name.strip())
        print(f"| {name:<32}| {ours_balance:13.3f} | {plan.num_work_items:5d} "
              f"| {plan.num_merge_items:6d} | {min_chunk!s:>9} "
              f"| {baseline.max() / baseline.mean():17.3f} | {baseline_items:5d} "
              f"| {baseline_chunk:5d} | {baseline.max() / ours.max():18.2f} |")
    print(f"worst balance of ours: {worst:.3f} (target <= {target:.2f})")
    if out_of_reach:
        print(f"too few items to reach the target (not judged): {', '.join(out_of_reach)}")


if __name__ == "__main__":
    main()
