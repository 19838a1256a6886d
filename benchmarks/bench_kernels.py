"""Kernel benchmark of BatchAttention (issue 4, item 5) against the card's ceilings and, when
importable, FlashInfer and vLLM's FlashAttention-3 on the same inputs in the same run.

Shapes: bf16, 32 query / 8 KV heads, head_dim 128, page size 16, shuffled page order, K and
V as two `(pages, 16, 8, 128)` tensors. Decode: batch {1, 16, 64, 256} x KV {512, 2048, 8192,
32768}, the skewed batch 1 x 32768 + 63 x 512 and fi-bench's shared-prefix batch (64 requests
whose first 8192 of 8448 keys are the same pages). Causal prefill (query length = KV length):
(batch, len) in {(1, 4096), (1, 16384), (8, 2048), (32, 512)}.

Method (../shared/ANCHORS.md uses the same): each implementation is planned outside the
timed region, captured in a CUDA graph, and each replay is timed with CUDA events right after
an L2 flush (a 256 MiB write); the median of the replays is reported. The implementations of
a case are timed in interleaved rounds (one replay of each per round, their order rotated
every round), so that the card's clock and temperature, which drift over a case (a long
prefill heats the card for the case after it), weigh on all of them alike. Ceilings measured
first on the same card: device-to-device copy bandwidth (bytes read + written) and the bf16
matmul rate (8192^3). Decode reports the fraction of the copy bandwidth its KV bytes
achieve; prefill reports TFLOP/s (4 * sum(q_len * kv_len) / 2 * heads * head_dim).

    python benchmarks/bench_kernels.py --out results.json [--quick] [--no-compare]
                                       [--family auto|sm80|sm90]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fi_backend import _C  # noqa: E402
from fi_backend.attention import BatchAttention, ctas_per_sm  # noqa: E402
from fi_backend.bench.sass import extension_instruction_mix  # noqa: E402
from fi_backend.metadata.block_sparse import BlockSparseKV  # noqa: E402
from fi_backend.metadata.planner import CostModel, Planner, SplitPolicy  # noqa: E402
from fi_backend.variants import AttentionVariant  # noqa: E402

NUM_QO_HEADS, NUM_KV_HEADS, HEAD_DIM, PAGE_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16
DECODE_BATCHES = (1, 16, 64, 256)
DECODE_KV_LENS = (512, 2048, 8192, 32768)
PREFILL_CELLS = ((1, 4096), (1, 16384), (8, 2048), (32, 512))
# KV bytes of this case count every request's read of the shared prefix (mostly L2 hits), so
# its fraction of the copy bandwidth may exceed 1.
SHARED_PREFIX_CASE = "shared prefix 64 x (8192 + 256)"
FLUSH_BYTES = 256 << 20


# ---------------------------------------------------------------------------------------
# Timing


class Timer:
    """Median time (µs) of CUDA-graph replays, each after an L2 flush."""

    def __init__(self, replays: int) -> None:
        self.replays = replays
        self.flush_buffer = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")

    @staticmethod
    def capture(fn) -> torch.cuda.CUDAGraph:
        fn()  # warm-up outside the graph (lazy init, autotuning)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            with torch.cuda.graph(graph, stream=stream):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph.replay()
        torch.cuda.synchronize()
        return graph

    def replay_us(self, graph: torch.cuda.CUDAGraph) -> float:
        """One replay of `graph` after an L2 flush, in µs."""
        self.flush_buffer.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e3

    def time_us(self, fn, replays: int | None = None) -> float:
        graph = self.capture(fn)
        return statistics.median(self.replay_us(graph) for _ in range(replays or self.replays))

    def time_interleaved(self, makers: dict, replays: int, label: str) -> dict[str, float]:
        """Median µs of each implementation, timed in interleaved rounds (module docstring).
        `makers` maps a name to a function that prepares the implementation (planning) and
        returns the callable to time; one that fails is reported and left out."""
        graphs, callables = {}, {}
        for name, make in makers.items():
            try:
                # The callable owns the buffers its graph reads (outputs, plans, workspaces):
                # it is kept alive until the graph's last replay.
                callables[name] = make()
                graphs[name] = self.capture(callables[name])
            except Exception as error:  # noqa: BLE001 - report and go on with the others
                print(f"[bench] {name} failed on {label}: {type(error).__name__}: {error}")
        names = list(graphs)
        times = {name: [] for name in names}
        for round_index in range(replays):
            shift = round_index % max(len(names), 1)
            for name in names[shift:] + names[:shift]:
                times[name].append(self.replay_us(graphs[name]))
        return {name: statistics.median(samples) for name, samples in times.items()}


def copy_bandwidth_gbs(timer: Timer) -> float:
    """Best of a memcpy node and an SM copy kernel over 1 GiB (a graph's memcpy node may run
    on the copy engines, which are slower than the SMs)."""
    src = torch.randn(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    best_us = min(timer.time_us(lambda: dst.copy_(src), replays=20),
                  timer.time_us(lambda: torch.mul(src, 1.0, out=dst), replays=20))
    return 2 * src.numel() * src.element_size() / (best_us * 1e-6) / 1e9


def matmul_tflops(timer: Timer) -> float:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=DTYPE)
    b = torch.randn(n, n, device="cuda", dtype=DTYPE)
    us = timer.time_us(lambda: torch.matmul(a, b), replays=20)
    return 2 * n**3 / (us * 1e-6) / 1e12


# ---------------------------------------------------------------------------------------
# Inputs


def assign_pages(kv_lens, page_order: np.ndarray, shared_prefix_tokens: int = 0):
    """Each request's page ids, in order, drawn from `page_order` (a shuffled pool): the first
    `shared_prefix_tokens // PAGE_SIZE` pages are the same pages for every request (a
    prefix-cached system prompt, read in place by every request), the rest are its own.
    Returns the per-request int32 page arrays."""
    if shared_prefix_tokens % PAGE_SIZE or any(kv < shared_prefix_tokens for kv in kv_lens):
        raise ValueError(f"shared_prefix_tokens {shared_prefix_tokens} must be a multiple of "
                         f"the page size {PAGE_SIZE} and at most every KV length")
    prefix_pages = shared_prefix_tokens // PAGE_SIZE
    prefix = page_order[:prefix_pages]
    used = prefix_pages
    pages = []
    for kv in kv_lens:
        own = -(-int(kv) // PAGE_SIZE) - prefix_pages
        pages.append(np.concatenate([prefix, page_order[used:used + own]]).astype(np.int32))
        used += own
    return pages


KV_LAYOUTS = ("split", "vllm-nhd", "vllm-hnd")


class PagePool:
    """K and V caches, views `(pages, 16, 8, 128)` with random contents; each batch takes a
    random (shuffled) subset of pages, optionally with a prefix of pages shared by every request.

    layout "split": two dense caches (a head's key row: 256 bytes at a 2 KB token stride);
    "vllm-nhd": vLLM 0.26's packed cache in its default physical order (pages, tokens, heads,
    K|V): a head's K and V rows side by side, 512 bytes at a 4 KB token stride; "vllm-hnd": the
    same cache in HND order (pages, heads, tokens, K|V): a head's page is 8 KB in one piece."""

    def __init__(self, num_pages: int, layout: str = "split") -> None:
        shape = (num_pages, PAGE_SIZE, NUM_KV_HEADS, HEAD_DIM)
        if layout == "split":
            self.k = torch.randn(shape, device="cuda", dtype=DTYPE)
            self.v = torch.randn(shape, device="cuda", dtype=DTYPE)
        else:
            packed = (num_pages, PAGE_SIZE, NUM_KV_HEADS, 2 * HEAD_DIM)
            if layout == "vllm-nhd":
                physical = torch.randn(packed, device="cuda", dtype=DTYPE)
            else:
                physical = torch.randn((num_pages, NUM_KV_HEADS, PAGE_SIZE, 2 * HEAD_DIM),
                                       device="cuda", dtype=DTYPE).permute(0, 2, 1, 3)
            self.k, self.v = physical.split(HEAD_DIM, dim=-1)
        self.num_pages = num_pages

    def batch(self, q_lens, kv_lens, seed, shared_prefix_tokens: int = 0):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        kv_lens = np.asarray(kv_lens, dtype=np.int32)
        q_lens = np.asarray(q_lens, dtype=np.int32)
        page_order = torch.randperm(self.num_pages, generator=gen, device="cuda").cpu().numpy()
        pages = assign_pages(kv_lens, page_order, shared_prefix_tokens)
        pages_per_req = np.array([len(p) for p in pages])
        indptr = np.concatenate([[0], np.cumsum(pages_per_req)]).astype(np.int32)
        last_page_len = (kv_lens - (pages_per_req - 1) * PAGE_SIZE).astype(np.int32)
        qo_indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
        block_table = np.zeros((len(kv_lens), int(pages_per_req.max())), dtype=np.int32)
        for b, request_pages in enumerate(pages):
            block_table[b, :len(request_pages)] = request_pages
        return dict(
            q=torch.randn(int(qo_indptr[-1]), NUM_QO_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE),
            kv=BlockSparseKV(indptr=torch.from_numpy(indptr).cuda(),
                             indices=torch.from_numpy(np.concatenate(pages)).cuda(),
                             last_page_len=torch.from_numpy(last_page_len).cuda(),
                             page_size=PAGE_SIZE),
            seq_lens=torch.from_numpy(kv_lens).cuda(), qo_indptr=torch.from_numpy(qo_indptr).cuda(),
            qo_indptr_host=qo_indptr, kv_lens_host=kv_lens,
            block_table=torch.from_numpy(block_table).cuda(),
            max_q=int(q_lens.max()), max_kv=int(kv_lens.max()))


# ---------------------------------------------------------------------------------------
# Implementations: each returns a zero-argument callable that runs the attention once.


def ours(attention: BatchAttention, pool: PagePool, batch, causal: bool):
    variant = AttentionVariant(causal=causal)
    attention.plan(batch["qo_indptr_host"], batch["kv_lens_host"], variant)
    out = torch.empty_like(batch["q"])
    return lambda: attention.run(batch["q"], pool.k, pool.v, batch["kv"], batch["seq_lens"],
                                 batch["qo_indptr"], variant, out=out)


def flashinfer_impl(pool: PagePool, batch, decode: bool, workspace):
    import flashinfer

    kv = batch["kv"]
    if decode:
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD",
                                                                use_tensor_cores=True)
        wrapper.plan(kv.indptr, kv.indices, kv.last_page_len, NUM_QO_HEADS, NUM_KV_HEADS,
                     HEAD_DIM, PAGE_SIZE, q_data_type=DTYPE, kv_data_type=DTYPE)
    else:
        wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", backend="fa2")
        wrapper.plan(batch["qo_indptr"], kv.indptr, kv.indices, kv.last_page_len, NUM_QO_HEADS,
                     NUM_KV_HEADS, HEAD_DIM, PAGE_SIZE, causal=True, q_data_type=DTYPE,
                     kv_data_type=DTYPE)
    return lambda: wrapper.run(batch["q"], (pool.k, pool.v))


def fa3_impl(pool: PagePool, batch, causal: bool):
    from vllm.vllm_flash_attn import flash_attn_varlen_func, get_scheduler_metadata

    num_requests = batch["seq_lens"].shape[0]
    metadata = get_scheduler_metadata(
        num_requests, batch["max_q"], batch["max_kv"], NUM_QO_HEADS, NUM_KV_HEADS, HEAD_DIM,
        cache_seqlens=batch["seq_lens"], qkv_dtype=DTYPE, cu_seqlens_q=batch["qo_indptr"],
        page_size=PAGE_SIZE, causal=causal)
    out = torch.empty_like(batch["q"])
    return lambda: flash_attn_varlen_func(
        batch["q"], pool.k, pool.v, max_seqlen_q=batch["max_q"], cu_seqlens_q=batch["qo_indptr"],
        max_seqlen_k=batch["max_kv"], seqused_k=batch["seq_lens"],
        softmax_scale=1 / math.sqrt(HEAD_DIM), causal=causal, block_table=batch["block_table"],
        out=out, scheduler_metadata=metadata, fa_version=3)


def comparisons(enabled: bool) -> dict:
    found = {}
    if not enabled:
        return found
    try:
        import flashinfer  # noqa: F401
        found["flashinfer"] = True
    except Exception as error:  # noqa: BLE001 - any import failure means "not available"
        print(f"[bench] FlashInfer not available: {error}")
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func  # noqa: F401
        found["fa3"] = True
    except Exception as error:  # noqa: BLE001
        print(f"[bench] vLLM FlashAttention-3 not available: {error}")
    return found


# ---------------------------------------------------------------------------------------


def parse_overrides(cls, overrides: str, option: str):
    """An instance of the dataclass `cls` with 'field=value,...' overrides applied."""
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    values = {}
    for override in filter(None, overrides.split(",")):
        name, _, value = override.partition("=")
        if name not in fields or not value:
            raise SystemExit(f"{option}: {override!r} is not FIELD=VALUE with FIELD one of "
                             f"{', '.join(fields)}")
        values[name] = int(value) if fields[name] in (int, "int") else float(value)
    return cls(**values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results path")
    parser.add_argument("--replays", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="skip KV 32768 decode cells at "
                        "batch >= 64 and the (1, 16384) prefill")
    parser.add_argument("--no-compare", action="store_true", help="time only fi_backend")
    parser.add_argument("--family", choices=("auto", "sm80", "sm90"), default="auto",
                        help="fi_backend kernel family to time: auto (what BatchAttention picks "
                        "on this GPU: sm90 on an H100), the portable sm80 kernels or the "
                        "Hopper sm90a ones (default: auto)")
    parser.add_argument("--kv-layout", choices=KV_LAYOUTS, default="split",
                        help="physical order of the K/V caches (see PagePool); default split")
    parser.add_argument("--cases", default="", help="comma-separated substrings: run only the "
                        "cases whose 'kind case' contains one (e.g. 'prefill 1 x 4096')")
    parser.add_argument("--cost-model", default="", metavar="FIELD=VALUE,...",
                        help="override fields of the planner's CostModel, to calibrate it "
                        "(e.g. 'row_overhead_tokens=256,item_overhead_tokens=32')")
    parser.add_argument("--split-policy", default="", metavar="FIELD=VALUE,...",
                        help="override fields of the planner's SplitPolicy (e.g. "
                        "'overfill_fraction=0.02')")
    args = parser.parse_args()
    cost_model = parse_overrides(CostModel, args.cost_model, "--cost-model")
    split_policy = parse_overrides(SplitPolicy, args.split_policy, "--split-policy")

    torch.manual_seed(0)
    timer = Timer(args.replays)
    props = torch.cuda.get_device_properties(0)
    copy_gbs = copy_bandwidth_gbs(timer)
    mm_tflops = matmul_tflops(timer)
    print(f"{props.name}: {props.multi_processor_count} SMs, copy {copy_gbs:.0f} GB/s, "
          f"bf16 matmul {mm_tflops:.0f} TFLOP/s")

    decode_cells = [(b, kv) for b in DECODE_BATCHES for kv in DECODE_KV_LENS
                    if not (args.quick and b >= 64 and kv == 32768)]
    prefill_cells = [c for c in PREFILL_CELLS if not (args.quick and c == (1, 16384))]
    num_ctas = props.multi_processor_count * ctas_per_sm(DTYPE, HEAD_DIM, family=args.family)
    planner = Planner(max_requests=256, max_batched_tokens=16384, max_model_len=32768,
                      num_qo_heads=NUM_QO_HEADS, num_kv_heads=NUM_KV_HEADS, head_dim=HEAD_DIM,
                      page_size=PAGE_SIZE, num_ctas=num_ctas, device="cuda",
                      cost_model=cost_model, split_policy=split_policy)
    attention = BatchAttention(planner, family=args.family)
    family = attention.kernel_family(DTYPE)
    print(f"fi_backend kernel family: {family} (requested {args.family})")
    others = comparisons(not args.no_compare)
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    kv_token_bytes = 2 * NUM_KV_HEADS * HEAD_DIM * DTYPE.itemsize

    # (kind, name, q_lens, kv_lens, tokens of KV prefix shared by every request)
    cases = [("decode", f"{b} x {kv}", [1] * b, [kv] * b, 0) for b, kv in decode_cells]
    cases.append(("decode", "skewed 1 x 32768 + 63 x 512", [1] * 64, [32768] + [512] * 63, 0))
    # fi-bench's shared-prefix workload: 64 requests, 8192 shared + 256 own tokens each.
    cases.append(("decode", SHARED_PREFIX_CASE, [1] * 64, [8448] * 64, 8192))
    cases += [("prefill", f"{b} x {n}", [n] * b, [n] * b, 0) for b, n in prefill_cells]

    if args.cases:
        wanted = args.cases.split(",")
        cases = [c for c in cases if any(w in f"{c[0]} {c[1]}" for w in wanted)]
    max_pages = max(sum(-(-kv // PAGE_SIZE) for kv in kv_lens) for *_, kv_lens, _ in cases)
    pool = PagePool(max_pages + 64, args.kv_layout)
    results = []
    for seed, (kind, name, q_lens, kv_lens, shared_prefix_tokens) in enumerate(cases):
        batch = pool.batch(q_lens, kv_lens, seed, shared_prefix_tokens)
        decode = kind == "decode"
        replays = max(5, min(args.replays, int(2e5 / max(sum(kv_lens) / 64, 1))))
        impls = {"fi_backend": lambda: ours(attention, pool, batch, causal=True)}
        if "flashinfer" in others:
            impls["flashinfer"] = lambda: flashinfer_impl(pool, batch, decode, workspace)
        if "fa3" in others:
            impls["fa3"] = lambda: fa3_impl(pool, batch, causal=True)
        row = {"kind": kind, "case": name,
               "us": timer.time_interleaved(impls, replays, f"{kind} {name}")}
        if decode:
            row["kv_bytes"] = sum(kv_lens) * kv_token_bytes
            row["frac_copy_bw"] = {k: row["kv_bytes"] / (us * 1e-6) / 1e9 / copy_gbs
                                   for k, us in row["us"].items()}
        else:
            flops = 4 * sum(q * kv for q, kv in zip(q_lens, kv_lens)) / 2 * NUM_QO_HEADS * HEAD_DIM
            row["tflops"] = {k: flops / (us * 1e-6) / 1e12 for k, us in row["us"].items()}
        results.append(row)
        print(format_row(row), flush=True)

    print("\n" + table(results))
    sass = sass_check(family)
    args.out.write_text(json.dumps({
        "device": props.name, "sms": props.multi_processor_count, "num_ctas": num_ctas,
        "kv_layout": args.kv_layout,
        "family": family, "sass": sass, "cost_model": dataclasses.asdict(cost_model),
        "split_policy": dataclasses.asdict(split_policy),
        "copy_gbs": copy_gbs, "matmul_tflops": mm_tflops, "results": results}, indent=1))


def sass_check(family: str) -> dict:
    """The instruction mix of the family's attention kernels (HGMMA must be present in the
    Hopper ones); {"skipped": reason} when cuobjdump cannot be run."""
    kernel = "batch_attention_sm90_kernel" if family == "sm90" else "batch_attention_kernel"
    try:
        mix = extension_instruction_mix(_C.__file__, kernel)
    except RuntimeError as error:
        print(f"SASS check skipped: {error}")
        return {"skipped": str(error)}
    print(f"\nSASS instruction mix of the {family} attention kernels ({len(mix)} instantiations):")
    for name, counts in mix.items():
        print(f"  {name[:72]}: " + ", ".join(f"{op} {n}" for op, n in counts.items()))
    if family == "sm90":
        with_hgmma = sum(1 for counts in mix.values() if counts["HGMMA"] > 0)
        print(f"HGMMA present in {with_hgmma} of {len(mix)} sm90 attention kernels")
    return mix


def format_row(row) -> str:
    metric = row.get("frac_copy_bw") or row.get("tflops")
    unit = "of copy BW" if "frac_copy_bw" in row else "TFLOP/s"
    parts = [f"{k} {us:9.1f} us ({metric[k]:.2f} {unit})" for k, us in row["us"].items()]
    return f"{row['kind']:7s} {row['case']:30s} " + " | ".join(parts)


def table(results) -> str:
    names = sorted({k for r in results for k in r["us"]}, key=lambda k: k != "fi_backend")
    header = "| kind | case | " + " | ".join(f"{n} µs (frac / TFLOP/s)" for n in names)
    header += " | ours / best other |"
    lines = [header, "|" + "---|" * (3 + len(names))]
    for r in results:
        metric = r.get("frac_copy_bw") or r.get("tflops")
        cells = [f"{r['us'][n]:.1f} ({metric[n]:.2f})" if n in r["us"] else "-" for n in names]
        others = [r["us"][n] for n in names if n != "fi_backend" and n in r["us"]]
        ratio = (f"{min(others) / r['us']['fi_backend']:.2f}x"
                 if others and "fi_backend" in r["us"] else "-")
        lines.append(f"| {r['kind']} | {r['case']} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
