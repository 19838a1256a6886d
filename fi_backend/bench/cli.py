"""`fi-bench`: one command to measure fi_backend against FlashAttention-3, FlashInfer and
vLLM's Triton backend, from single kernels to a serving engine."""

import argparse
import json
import sys
from pathlib import Path

from .host import BACKENDS, OURS, cuda_device_name, host_info, no_gpu_message, parse_backends
from .progress import ProgressBar
from .workloads import WORKLOADS, parse_models, parse_workloads, shipped_models

H100_COMMANDS = """\
On an H100 host without internet (vLLM, FA3 and FlashInfer from shared/gpu/):
  . shared/gpu/setup.sh shared/gpu          # exports PYTHONPATH to the unpacked bundles
  pip install --no-deps --no-build-isolation -e .   # builds fi_backend._C, registers the plugin
  fi-bench e2e --out bench-out                       # all workloads, ours + 3 backends
  fi-bench e2e --backends FLASH_ATTN --out bench-out # one backend per command also works:
                                                     # runs merge into bench-out/e2e.json
  fi-bench e2e --serve --out bench-out               # online: vllm serve + vllm bench serve
      (the bundles lack vllm serve's web stack: add wheels of uvicorn,
       prometheus-fastapi-instrumentator, model-hosting-container-standards, jmespath,
       supervisor, sse-starlette, httpcore2, truststore)
  fi-bench kernels --out bench-out                   # kernel grid (benchmarks/bench_kernels.py)
Each writes <out>/<kind>.json (schema: fi_backend/bench/report.py), <kind>.md and PNG plots,
and prints the markdown tables. Without a CUDA GPU it says so and exits with status 2."""


def _csv_floats_or_inf(text: str) -> list[float | None]:
    rates = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item.lower() in ("inf", "infinite", "max"):
            rates.append(None)
            continue
        try:
            rate = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"request rate {item!r} is not a number; use e.g. 2,8,32,inf") from None
        if rate <= 0:
            raise argparse.ArgumentTypeError(f"request rate {rate} must be > 0 (or inf)")
        rates.append(rate)
    if not rates:
        raise argparse.ArgumentTypeError("give at least one request rate, e.g. 2,8,32,inf")
    return rates


def _checked(parse):
    """argparse type= adapter: ValueError of our parsers becomes a usage error."""
    def run(text):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    run.__name__ = parse.__name__
    return run


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{value} must be >= 1")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.05 <= value <= 0.98:
        raise ValueError(f"{value} must lie in [0.05, 0.98]")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fi-bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Benchmarks of fi_backend (vLLM attention backend 'CUSTOM', shown as 'ours') against "
            "FLASH_ATTN (FlashAttention-3), FLASHINFER and TRITON_ATTN on the same GPU, in one "
            "run. Subcommands: e2e (vLLM offline, or online with --serve), kernels (single "
            "attention calls), report (redraw tables and plots from a results JSON)."),
        epilog=H100_COMMANDS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{e2e,kernels,report}")

    models = ", ".join(shipped_models()) or "none found"
    workloads = "; ".join(f"{w.name} = {w.summary}" for w in WORKLOADS.values())
    e2e = commands.add_parser(
        "e2e", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=H100_COMMANDS,
        help="end-to-end vLLM runs with dummy-weight models (offline, or --serve)",
        description=(
            "Runs vLLM with each attention backend, each in a fresh process, on dummy-weight "
            "models built from configs shipped in fi_backend/vllm/configs (no download, no "
            "tokenizer: prompts are random token ids, identical for every backend). Every "
            "workload runs once as warm-up (other prompts, --warmup-output-len tokens, prefix cache "
            "reset after it) before the measured run. Reports TTFT, inter-token latency (mean, p50, "
            "p99), output tokens/s, each backend's ratio to ours, and engine init time "
            "(weights, torch.compile, CUDA graphs, JIT) separately. A backend that cannot run "
            "is reported as skipped with the reason."))
    e2e.add_argument("--models", default="llama3_8b", type=_checked(parse_models),
                     help=f"comma list of shipped model configs ({models}), 'all', or folders "
                          "holding a HF config.json (default: %(default)s)")
    e2e.add_argument("--backends", default="all", type=_checked(parse_backends),
                     help=f"comma list from {', '.join(BACKENDS)} ('ours' = {OURS}), or 'all' "
                          "(default: %(default)s)")
    e2e.add_argument("--workloads", default="all", type=_checked(parse_workloads),
                     help=f"comma list or 'all' (default: %(default)s): {workloads}")
    e2e.add_argument("--out", type=Path, default=Path("fi-bench-out"),
                     help="output folder for <kind>.json, <kind>.md, PNG plots and per-backend "
                          "logs (logs/); runs already in its results JSON are kept unless "
                          "measured again (default: %(default)s)")
    e2e.add_argument("--fresh", action="store_true",
                     help="ignore results already in --out instead of merging with them")
    e2e.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"],
                     help="model and attention dtype (default: %(default)s)")
    e2e.add_argument("--repeats", type=_checked(_positive_int), default=1,
                     help="measured runs per workload after the warm-up; each metric is the "
                          "median over them (default: %(default)s)")
    e2e.add_argument("--warmup-output-len", type=_checked(_positive_int), default=16,
                     help="output tokens per request in the warm-up run (default: %(default)s)")
    e2e.add_argument("--gpu-memory-utilization", type=_checked(_fraction), default=0.85,
                     help="fraction of GPU memory vLLM may take, weights + KV cache "
                          "(default: %(default)s)")
    e2e.add_argument("--eager", action="store_true",
                     help="vLLM enforce_eager: no torch.compile and no CUDA graphs (default: "
                          "both on, as vLLM serves)")
    e2e.add_argument("--cascade", action="store_true",
                     help="turn on vLLM's cascade attention (disable_cascade_attn=False) for "
                          "every backend: in a step where all requests share their first pages, "
                          "vLLM asks the backend whether to attend to the shared prefix once for "
                          "the whole batch and to each request's own tokens separately, then "
                          "merge. Ours and FLASH_ATTN accept when it pays off; FLASHINFER and "
                          "TRITON_ATTN decline in vLLM 0.26. Such steps run without full CUDA "
                          "graphs (piecewise only). Also selects vLLM's V1 model runner "
                          "(VLLM_USE_V2_MODEL_RUNNER=0), the only one that cascades. Default: "
                          "off, as in vLLM")
    e2e.add_argument("--seed", type=int, default=0,
                     help="seed of the random prompt token ids (default: %(default)s)")
    e2e.add_argument("--timeout-s", type=_checked(_positive_int), default=1800,
                     help="kill a backend's process (and its engine) after this many seconds "
                          "and report it as failed (default: %(default)s)")
    serve = e2e.add_argument_group(
        "online serving (--serve)",
        "Starts `vllm serve` per backend on localhost and drives it with `vllm bench serve` "
        "(random dataset) at each request rate, with a synthetic tokenizer (one token per "
        "fixed-width base-62 number) written "
        "next to the model config so that no download is needed.")
    serve.add_argument("--serve", action="store_true",
                       help="measure online serving instead of offline LLM runs")
    serve.add_argument("--rates", type=_csv_floats_or_inf, default=[2.0, 8.0, 32.0, None],
                       help="comma list of request rates in requests/s; 'inf' sends all "
                            "requests at once (default: 2,8,32,inf)")
    serve.add_argument("--num-prompts", type=_checked(_positive_int), default=None,
                       help="requests per rate (default: 2 × the workload's request count, "
                            "at least 16)")
    serve.add_argument("--port", type=int, default=18731,
                       help="localhost port of the server (default: %(default)s)")

    kernels = commands.add_parser(
        "kernels", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=H100_COMMANDS,
        help="single attention kernels: ceilings, decode grid, skewed batch, prefill",
        description=(
            "Runs benchmarks/bench_kernels.py (memory-copy and matmul ceilings, decode grid, "
            "skewed batch, causal prefill) for ours, FlashInfer and FA3 on the same "
            "inputs and reports µs, fraction of the card's ceiling and time ÷ ours."))
    kernels.add_argument("--out", type=Path, default=Path("fi-bench-out"),
                         help="output folder for kernels.json, kernels.md, plots "
                              "(default: %(default)s)")
    kernels.add_argument("--fresh", action="store_true",
                         help="ignore results already in --out instead of merging with them")
    kernels.add_argument("--timeout-s", type=_checked(_positive_int), default=1800,
                         help="stop bench_kernels.py after this many seconds (default: "
                              "%(default)s)")
    kernels.add_argument("--quick", action="store_true",
                         help="skip the KV 32768 decode cells at batch >= 64 and the "
                              "(1, 16384) prefill (bench_kernels.py --quick)")
    kernels.add_argument("--replays", type=_checked(_positive_int), default=None,
                         help="CUDA-graph replays per case, median reported (default: "
                              "bench_kernels.py's, 30, fewer for the largest cases)")
    kernels.add_argument("--no-compare", action="store_true",
                         help="time only ours, not FlashInfer / FA3")
    kernels.add_argument("--family", choices=("auto", "sm80", "sm90"), default="auto",
                         help="our kernel family: auto (what the vLLM backend runs on this GPU: "
                              "the Hopper sm90a kernels on an H100, the portable ones "
                              "elsewhere), sm80 or sm90 (default: %(default)s)")

    report = commands.add_parser(
        "report", help="print tables and redraw plots from a results JSON",
        description="Validates a results JSON written by fi-bench, prints its markdown tables "
                    "and writes its PNG plots (no GPU needed).")
    report.add_argument("results", type=Path, help="e2e.json, serve.json or kernels.json")
    report.add_argument("--out", type=Path, default=None,
                        help="folder for the plots (default: the JSON's folder)")
    return parser


def _previous_runs(out_dir: Path, kind: str, fresh: bool) -> list[dict]:
    from . import report

    path = out_dir / f"{kind}.json"
    if fresh or not path.exists():
        return []
    try:
        return report.load_document(path)["runs"]
    except (ValueError, json.JSONDecodeError) as error:
        print(f"fi-bench: not merging with {path} ({error}); it will be overwritten",
              file=sys.stderr)
        return []


def _run_e2e(args) -> int:
    from . import e2e, report, serve

    kind = "serve" if args.serve else "e2e"
    settings = {
        "models": [name for name, _ in args.models],
        "backends": args.backends, "workloads": [w.name for w in args.workloads],
        "dtype": args.dtype, "repeats": args.repeats,
        "warmup_output_len": args.warmup_output_len,
        "gpu_memory_utilization": args.gpu_memory_utilization, "enforce_eager": args.eager,
        "cascade_attention": args.cascade, "seed": args.seed, "timeout_s": args.timeout_s,
    }
    if args.serve:
        settings.update(rates=args.rates, num_prompts=args.num_prompts, port=args.port)
    document = report.new_document(kind, host_info(), settings)
    previous = _previous_runs(args.out, kind, args.fresh)
    steps_per_backend = (1 + len(args.workloads) * len(args.rates) if args.serve
                         else 1 + len(args.workloads))
    bar = ProgressBar(len(args.models) * len(args.backends) * steps_per_backend, f"fi-bench {kind}")
    runs = []
    try:
        for model_name, model_dir in args.models:
            for backend in args.backends:
                run_one = serve.run_backend if args.serve else e2e.run_backend
                runs.append(run_one(model_name, model_dir, backend, args.workloads, settings,
                                    args.out, bar))
                # Saved after every backend, so a run cut short keeps what it measured.
                report.write_document({**document, "runs": report.merge_runs(previous, runs)},
                                      args.out / f"{kind}.json")
    finally:
        bar.close()
    document["runs"] = report.merge_runs(previous, runs)
    written = report.publish(document, args.out, sys.stdout)
    print("\nwritten: " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0 if any(r["status"] == "ok" for r in runs) else 1


def _run_kernels(args) -> int:
    from . import kernels, report

    document = kernels.run(args.out, args.timeout_s, quick=args.quick, replays=args.replays,
                           no_compare=args.no_compare, family=args.family)
    document["runs"] = report.merge_runs(_previous_runs(args.out, "kernels", args.fresh),
                                         document["runs"])
    written = report.publish(document, args.out, sys.stdout)
    print("\nwritten: " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0 if any(r["status"] == "ok" for r in document["runs"]) else 1


def _run_report(args) -> int:
    from . import report

    document = report.load_document(args.results)
    sys.stdout.write(report.markdown(document))
    for path in report.plot(document, args.out or args.results.parent):
        print(f"written: {path}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("e2e", "kernels") and cuda_device_name() is None:
        print(no_gpu_message(args.command), file=sys.stderr)
        return 2
    return {"e2e": _run_e2e, "kernels": _run_kernels, "report": _run_report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
