"""Attention's share of an engine step as vLLM runs it (issue 7): the decode batches and prefill
chunks of fi-bench's e2e workloads, 32 layers in one CUDA graph, ours against vLLM's
FlashAttention-3 call.

Why a second kernel benchmark: bench_kernels.py times one call after an L2 flush, so each cell
carries a graph launch (~10 µs at batch 1) that a model's full graph pays once per step, not
once per layer. Here every layer has its own KV cache in vLLM's packed layout (so nothing stays
in L2 from one layer to the next, as in the model) and the same block table; ours runs
`append_kv` (vLLM's `do_kv_cache_update`) then attention, as the plugin does, and is also timed
without `append_kv`; FA3 is called as vLLM 0.26's FLASH_ATTN backend calls it (scheduler
metadata from `get_scheduler_metadata`; `num_splits` capped at
`flash_attn_max_num_splits_for_cuda_graph` = 32 in steps that fit a full CUDA graph, FA3's own
heuristic in larger ones). vLLM runs prefill chunks between piecewise graphs, not in one graph:
their per-layer times here leave out the host's launches, which a GPU-bound chunk hides.

Floors, measured first on the same card: device-to-device copy bandwidth (bytes read + written,
bench_kernels.copy_bandwidth_gbs) and a read-only stream (`torch.sum` over 1 GiB). The KV floor
of a decode layer is its KV bytes over each; prefill chunks report TFLOP/s (causal FLOPs, the
queries being the last q_len positions of their request).

    python benchmarks/bench_layer.py --out layer.json [--rounds 20] [--no-compare]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_kernels as kernels  # noqa: E402
from bench_kernels import (DTYPE, HEAD_DIM, NUM_KV_HEADS, NUM_QO_HEADS, PAGE_SIZE,  # noqa: E402
                           PagePool, Timer)

from fi_backend import ops  # noqa: E402
from fi_backend.attention import BatchAttention, ctas_per_sm  # noqa: E402
from fi_backend.metadata.planner import Planner  # noqa: E402
from fi_backend.variants import AttentionVariant  # noqa: E402

NUM_LAYERS = 32  # Llama-3-8B
FA3_MAX_SPLITS_IN_CUDA_GRAPH = 32  # vLLM 0.26 flash_attn_max_num_splits_for_cuda_graph
MAX_CUDA_GRAPH_TOKENS = 512  # vLLM 0.26 max_cudagraph_capture_size
MAX_BATCHED_TOKENS = 16384  # vLLM 0.26's chunk on an H100 (max_num_batched_tokens)
# (name, query tokens per request, KV length per request after this step) for fi-bench e2e's
# long (1 x 32768 -> 128), decode (64 x 1024 -> 256) and batch (32 x 4096 -> 128) workloads:
# their decode steps halfway through the outputs, and their prefill chunks of 16384 tokens.
CASES = (("decode: long 1 x 32832", [1], [32832]),
         ("decode: decode 64 x 1152", [1] * 64, [1152] * 64),
         ("decode: batch 32 x 4160", [1] * 32, [4160] * 32),
         ("prefill: long 16384 @ 16384", [16384], [16384]),
         ("prefill: long 16384 @ 32768", [16384], [32768]),
         ("prefill: batch 4 x 4096", [4096] * 4, [4096] * 4),
         ("prefill: decode 16 x 1024", [1024] * 16, [1024] * 16))


def read_bandwidth_gbs(timer: Timer) -> float:
    """Bytes read per second by a reduction over 1 GiB (no writes)."""
    src = torch.randn(1 << 29, device="cuda", dtype=DTYPE)
    total = torch.empty((), device="cuda", dtype=torch.float32)
    us = timer.time_us(lambda: torch.sum(src, dim=0, dtype=torch.float32, out=total), replays=20)
    return src.numel() * src.element_size() / (us * 1e-6) / 1e9


class Step:
    """One batch over NUM_LAYERS caches that share one block table, as a model's layers do;
    `key`, `value` are this step's new tokens (the last q_len positions of each request),
    `slots` where their K/V go."""

    def __init__(self, q_lens: list[int], kv_lens: list[int], seed: int) -> None:
        num_pages = sum(-(-kv // PAGE_SIZE) for kv in kv_lens) + 64
        self.pools = [PagePool(num_pages, "vllm-nhd") for _ in range(NUM_LAYERS)]
        self.batch = self.pools[0].batch(q_lens, kv_lens, seed)
        block_table = self.batch["block_table"].cpu()
        request = torch.cat([torch.full((q,), r) for r, q in enumerate(q_lens)])
        position = torch.cat([torch.arange(kv - q, kv) for q, kv in zip(q_lens, kv_lens)])
        pages = block_table[request, position // PAGE_SIZE].long()
        self.slots = (pages * PAGE_SIZE + position % PAGE_SIZE).cuda()
        self.key = torch.randn(sum(q_lens), NUM_KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
        self.value = torch.randn_like(self.key)
        self.num_tokens = sum(q_lens)
        self.kv_bytes = sum(kv_lens) * 2 * NUM_KV_HEADS * HEAD_DIM * DTYPE.itemsize
        self.flops = 4 * sum(q * (kv - q) + q * (q + 1) / 2 for q, kv in zip(q_lens, kv_lens)
                             ) * NUM_QO_HEADS * HEAD_DIM


def ours_step(attention: BatchAttention, step: Step, with_append: bool):
    batch, variant = step.batch, AttentionVariant(causal=True)
    attention.plan(batch["qo_indptr_host"], batch["kv_lens_host"], variant)
    out = torch.empty_like(batch["q"])

    def run():
        for pool in step.pools:
            if with_append:
                ops.append_kv(step.key, step.value, pool.k, pool.v, step.slots)
            attention.run(batch["q"], pool.k, pool.v, batch["kv"], batch["seq_lens"],
                          batch["qo_indptr"], variant, out=out)
    return run


def fa3_step(step: Step):
    from vllm.vllm_flash_attn import flash_attn_varlen_func, get_scheduler_metadata

    batch = step.batch
    num_splits = (FA3_MAX_SPLITS_IN_CUDA_GRAPH if step.num_tokens <= MAX_CUDA_GRAPH_TOKENS
                  else 0)
    metadata = get_scheduler_metadata(
        len(batch["kv_lens_host"]), batch["max_q"], batch["max_kv"], NUM_QO_HEADS, NUM_KV_HEADS,
        HEAD_DIM, cache_seqlens=batch["seq_lens"], qkv_dtype=DTYPE,
        cu_seqlens_q=batch["qo_indptr"], page_size=PAGE_SIZE, causal=True,
        num_splits=num_splits)
    out = torch.empty_like(batch["q"])

    def run():
        for pool in step.pools:
            flash_attn_varlen_func(
                batch["q"], pool.k, pool.v, max_seqlen_q=batch["max_q"],
                cu_seqlens_q=batch["qo_indptr"], max_seqlen_k=batch["max_kv"],
                seqused_k=batch["seq_lens"], softmax_scale=1 / math.sqrt(HEAD_DIM), causal=True,
                block_table=batch["block_table"], out=out, scheduler_metadata=metadata,
                num_splits=num_splits, fa_version=3)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results path")
    parser.add_argument("--rounds", type=int, default=20,
                        help="interleaved replays of each implementation's graph")
    parser.add_argument("--no-compare", action="store_true", help="time only fi_backend")
    args = parser.parse_args()

    props = torch.cuda.get_device_properties(0)
    timer = Timer(args.rounds)
    copy_gbs, read_gbs = kernels.copy_bandwidth_gbs(timer), read_bandwidth_gbs(timer)
    print(f"{props.name}: copy {copy_gbs:.0f} GB/s (read + write), read {read_gbs:.0f} GB/s")
    planner = Planner(max_requests=256, max_batched_tokens=MAX_BATCHED_TOKENS,
                      max_model_len=40960, num_qo_heads=NUM_QO_HEADS,
                      num_kv_heads=NUM_KV_HEADS, head_dim=HEAD_DIM, page_size=PAGE_SIZE,
                      num_ctas=props.multi_processor_count * ctas_per_sm(DTYPE, HEAD_DIM),
                      device="cuda")
    attention = BatchAttention(planner)
    compare = "fa3" in kernels.comparisons(not args.no_compare)

    rows = []
    for seed, (name, q_lens, kv_lens) in enumerate(CASES):
        step = Step(q_lens, kv_lens, seed)
        impls = {"ours": lambda: ours_step(attention, step, with_append=True),
                 "ours attention only": lambda: ours_step(attention, step, with_append=False)}
        if compare:
            impls["fa3"] = lambda: fa3_step(step)
        step_us = timer.time_interleaved(impls, args.rounds, name)
        layer_us = {impl: us / NUM_LAYERS for impl, us in step_us.items()}
        row = {"case": name, "kv_bytes_per_layer": step.kv_bytes, "flops_per_layer": step.flops,
               "layer_us": layer_us}
        if max(q_lens) == 1:
            row["floor_us"] = {"copy": step.kv_bytes / copy_gbs / 1e3,
                               "read": step.kv_bytes / read_gbs / 1e3}
            summary = (f"floor {row['floor_us']['copy']:.1f} (copy) / "
                       f"{row['floor_us']['read']:.1f} (read) µs")
        else:
            row["tflops"] = {impl: step.flops / (us * 1e-6) / 1e12 for impl, us in layer_us.items()}
            summary = "TFLOP/s " + ", ".join(f"{impl} {t:.0f}" for impl, t in row["tflops"].items())
        rows.append(row)
        print(f"{name:28s} per layer: " + " | ".join(
            f"{impl} {us:.1f} µs" for impl, us in layer_us.items()) + f" | {summary}", flush=True)
        del step
        torch.cuda.empty_cache()

    args.out.write_text(json.dumps({"device": props.name, "family": attention.kernel_family(DTYPE),
                                    "copy_gbs": copy_gbs, "read_gbs": read_gbs,
                                    "num_layers": NUM_LAYERS, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
