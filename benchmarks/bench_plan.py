"""Host cost of Planner.plan(): median (and 90th percentile) wall time per call, the copy to
the persistent "device" buffer included (on a CPU-only machine that buffer is a CPU tensor).

Engine: 32 query / 8 KV heads, head_dim 128, page 16, 132 CTAs, max 256 requests and 16384
batched tokens. Targets (issue 3, 2-core CPU): <= 20 us at batch 16, <= 60 us at batch 256.

    python benchmarks/bench_plan.py [--calls 5000] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fi_backend.metadata.planner import Planner
from fi_backend.variants import AttentionVariant


def workloads() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)

    def batch(q_lens, kv_lens):
        return (np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32),
                np.asarray(kv_lens, np.int32))

    cases = {f"decode batch {b}, KV 512..8192": batch([1] * b, rng.integers(512, 8193, b))
             for b in (1, 16, 64, 256)}
    cases["skewed 1x32768 + 63x512"] = batch([1] * 64, [32768] + [512] * 63)
    cases["mixed 4x2048 prefill + 200 dec"] = batch(
        [2048] * 4 + [1] * 200, [2048] * 4 + rng.integers(1000, 8001, 200).tolist())
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="timed calls per batch")
    parser.add_argument("--device", default="cpu", help="where the plan buffer lives")
    args = parser.parse_args()
    planner = Planner(max_requests=256, max_batched_tokens=16384, max_model_len=32768,
                      num_qo_heads=32, num_kv_heads=8, head_dim=128, page_size=16,
                      num_ctas=132, device=args.device)
    variant = AttentionVariant(causal=True)
    print(f"Planner.plan() on {args.device}, median of {args.calls} calls")
    print(f"| {'batch':<32}| items | median us | p90 us |")
    print(f"|{'-' * 33}|-------|-----------|--------|")
    for name, (qo_indptr, kv_lens) in workloads().items():
        for _ in range(100):
            plan = planner.plan(qo_indptr, kv_lens, variant)
        times = np.empty(args.calls)
        for i in range(args.calls):
            start = time.perf_counter()
            planner.plan(qo_indptr, kv_lens, variant)
            times[i] = time.perf_counter() - start
        median, p90 = np.percentile(times, [50, 90]) * 1e6
        print(f"| {name:<32}| {plan.num_work_items:5d} | {median:9.1f} | {p90:6.1f} |")


if __name__ == "__main__":
    main()
