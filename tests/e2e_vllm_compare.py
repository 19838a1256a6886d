"""GPU end-to-end check: vLLM on fi_backend gives the same results as on FLASH_ATTN, and
the same at tensor parallel 2 as at 1.

Not a pytest module (pytest collects test_*.py only): a script for a CUDA host with vLLM
0.26 and fi_backend installed (../shared/gpu/README.md brings vLLM to a host without
internet). It prints one summary line per comparison and exits 1 if any check fails
(`--out FILE` also writes the figures as JSON).

    python tests/e2e_vllm_compare.py                        # every config, ours vs FLASH_ATTN
    python tests/e2e_vllm_compare.py --configs llama3_8b    # one config
    python tests/e2e_vllm_compare.py --candidates TRITON_ATTN,CUSTOM
                    # also two stock backends against each other: what "agree" means in bf16
    python tests/e2e_vllm_compare.py --configs llama3_8b --tp-check   # 2 GPUs: ours TP 2 vs 1

Each engine runs in a fresh process (one LLM per process, so GPU memory is returned in
between; NVLink multicast is kept off in every child: NCCL_NVLS_ENABLE=0,
TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1) on identical weights and prompts:
- the model: a shipped config (fi_backend/vllm/configs), `skip_tokenizer_init`, bfloat16,
  full CUDA graphs (`cudagraph_mode="FULL"`: decode, prefill and mixed batches up to the
  capture size replay graphs), NCCL all-reduce (`disable_custom_all_reduce`);
- the weights, drawn at unit-variance scale, seeded per parameter name
  (random_checkpoint.initial_value): linear weights and embeddings N(0, 1/fan_in), norms the
  identity, biases N(0, 0.1). Attention scores and logits then have unit scale and every
  layer moves the logits (vLLM's own dummy weights, uniform in +-1e-3, leave every layer's
  output far below bf16 resolution of the residual stream: attention would not influence
  the logits at all). Two sources:
  `--weights redraw` (default for backend comparisons): `load_format="dummy"`, then each
  parameter is redrawn inside the worker, under vLLM's names (fused qkv_proj, gate_up_proj).
  A worker holds only its TP shard, so this is right at TP 1 only.
  `--weights checkpoint` (always with --tp-check): random_checkpoint.py writes a Hugging Face
  checkpoint once (full, unsharded tensors under Hugging Face names, drawn on the GPU in a
  child process), and every engine loads it with `load_format="safetensors"`: vLLM's loader
  shards it, so TP 1 and TP 2 run the same network. `--num-layers` shortens the model
  (--tp-check: 8 layers, 5.6 GB for Llama-3-8B);
- the prompts: 64 token-id prompts of 16..1024 tokens (seeded), longer than the sliding
  windows below, so windows really cut.

Checks (backend comparison: each candidate vs the baseline; --tp-check: TP --tp-size vs TP 1,
both on --tp-backend, default CUSTOM = fi_backend):
1. prompt logprobs (teacher-forced, every prompt position): max and mean |difference|
   within a bf16 tolerance. Why this tolerance: both backends accumulate in float32 and
   round the attention output to bf16 (relative step 2^-8), so they differ by about one bf16
   ulp in a fraction of elements per layer; these differences propagate through the layers
   of a random network into the logits. The default bounds (max 0.25, mean 0.02 nats) are
   about 3x what FLASH_ATTN vs TRITON_ATTN (two correct kernels) show on these models; a real
   error (a wrong mask, window, scale or page) moves logprobs by whole nats. Tensor
   parallelism changes the same roundings elsewhere (partial o_proj/down_proj sums are
   all-reduced in bf16), so the same bounds apply.
2. greedy continuations of the 64 prompts, first 32 tokens, for >= 95 % of the prompts:
   equal, or equal up to a near tie: they first differ where both runs rank both tokens
   in their top 5 within `--tie-tol` nats (default 0.125 = 4 bf16 ulps of a top logit in
   [4, 8)); later tokens are not compared, their contexts differ. Exact equality is reported
   too and can be required (`--exact-greedy`), but with random weights it measures bf16
   rounding, not attention: a random network's logits over a 128k vocabulary have top-2 gaps
   of a few ulps. Measured on an H100 (Llama-3-8B shape, all 32 layers, `--weights redraw`,
   this script's other defaults): FLASH_ATTN vs TRITON_ATTN, two correct kernels, gave
   equal 32-token continuations for 13 of 64 prompts, and at 43 of the 51 first divergences
   both tokens were top-2 in both backends within 1-3 ulps (0.016-0.094 nats); the other 8
   had a third token between them (a 3-way tie, why the top 5 are kept). fi_backend vs
   FLASH_ATTN with the top 5: Llama 15/64 equal and all 49 divergences near ties
   (<= 0.0625 nats), Mistral (window 256) 18/64 equal and all 46 divergences near ties
   (<= 0.094 nats); Gemma-2 64/64 equal. Again on an H100 with the Hopper kernels
   (commit 51ab48e): exactly equal / up to a near tie, logprob max|d| / mean|d|: Llama
   10/64 / 64/64, 0.073 / 0.014; Mistral 11/64 / 64/64, 0.091 / 0.014; Gemma-2 63/64 /
   64/64, 0.100 / 0.018; Qwen2.5 21/64 / 64/64, 0.067 / 0.012; --tp-check (4 layers)
   TP 2 vs TP 1 21/64 / 64/64, 0.051 / 0.010.

Configs: llama3_8b (Llama-3-8B shape), mistral_7b_swa (Mistral-7B shape, sliding window
overridden to 256 so 1024-token prompts exceed it), gemma2_9b_softcap (Gemma-2-9B shape:
head_dim 256, logit soft-cap 50, alternating sliding window 256 / global layers),
qwen2_5_7b (Qwen2.5-7B shape: GQA 7, qkv bias).
Not covered: sinks (no sink model loads from a config with dummy weights here).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from random_checkpoint import Family, family_of, initial_value, name_seed

TESTS_DIR = Path(__file__).resolve().parent
CONFIG_DIR = TESTS_DIR.parent / "fi_backend" / "vllm" / "configs"
TOP_K = 5
"""Logprobs kept per generated token: enough to see 3-way and 4-way near ties."""
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                 "NVSHMEM_DISABLE_NVLS": "1"}
"""Set in every child process: NVLink multicast stays off on the lent multi-GPU hosts."""
TP_CHECK_NUM_LAYERS = 8
"""--tp-check's default depth: an 8-layer Llama-3-8B is 5.6 GB of bf16, written once and
loaded by each engine in seconds."""


@dataclass(frozen=True)
class ModelCase:
    config: str                       # folder under fi_backend/vllm/configs
    hf_overrides: dict = field(default_factory=dict)


CASES = {
    "llama3_8b": ModelCase("llama3_8b"),
    "mistral_7b_swa": ModelCase("mistral_7b", {"sliding_window": 256}),
    "gemma2_9b_softcap": ModelCase("gemma2_9b", {"sliding_window": 256}),
    "qwen2_5_7b": ModelCase("qwen2_5_7b"),
}
DEFAULT_CASES = ("llama3_8b", "mistral_7b_swa", "gemma2_9b_softcap")


@dataclass(frozen=True)
class Job:
    case: str
    backend: str
    model_dir: str                    # a shipped config (dummy weights) or a checkpoint
    load_format: str                  # "dummy": redraw in the workers; "safetensors"
    hf_overrides: dict
    tensor_parallel_size: int
    num_prompts: int
    min_prompt_len: int
    max_prompt_len: int
    gen_tokens: int
    max_model_len: int
    compile: bool
    seed: int
    residual_scale: float
    dtype: str
    out_path: str


def redraw_weights(model, family: Family, residual_scale: float, seed: int) -> int:
    """Unit-scale weights, a function of (seed, parameter name, shape) only, drawn as
    random_checkpoint.initial_value says. Runs in each vLLM worker (LLM.apply_model), on
    that worker's shard: only meaningful at TP 1. Returns the number of parameters redrawn."""
    import torch

    count = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.is_floating_point():
                continue
            init = initial_value(name, tuple(param.shape), family, residual_scale)
            if init.kind == "fill":
                param.fill_(init.value)
            else:
                generator = torch.Generator(device=param.device)
                generator.manual_seed(name_seed(name, seed))
                param.normal_(0.0, init.value, generator=generator)
            count += 1
    return count


def make_prompts(job: Job, vocab_size: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(job.seed)
    lengths = rng.integers(job.min_prompt_len, job.max_prompt_len + 1, size=job.num_prompts)
    return [rng.integers(100, vocab_size - 100, size=int(n)).tolist() for n in lengths]


def run_job(job: Job) -> None:
    """One backend, one model: write prompt logprobs and greedy tokens to job.out_path."""
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # LLM.apply_model ships a function
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    config = json.loads((Path(job.model_dir) / "config.json").read_text())
    compilation = {"cudagraph_mode": "FULL"}
    if not job.compile:
        compilation["mode"] = 0  # no torch.compile: graphs only, faster start
    llm = LLM(model=job.model_dir, load_format=job.load_format, skip_tokenizer_init=True,
              dtype=job.dtype, attention_backend=job.backend, hf_overrides=job.hf_overrides,
              tensor_parallel_size=job.tensor_parallel_size,
              disable_custom_all_reduce=True,  # NCCL only: one all-reduce path fewer to trust
              max_model_len=job.max_model_len, seed=job.seed, gpu_memory_utilization=0.85,
              compilation_config=compilation)
    if job.load_format == "dummy":
        import cloudpickle

        import random_checkpoint

        # The workers need not find tests/ on their path: ship the module's code along.
        cloudpickle.register_pickle_by_value(random_checkpoint)
        family = family_of(config)
        llm.apply_model(lambda model: redraw_weights(model, family, job.residual_scale,
                                                     job.seed))

    prompts = make_prompts(job, config["vocab_size"])
    inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    scored = llm.generate(inputs, SamplingParams(max_tokens=1, prompt_logprobs=0,
                                                 detokenize=False), use_tqdm=False)
    prompt_logprobs = [[position[token].logprob
                        for position, token in zip(out.prompt_logprobs[1:], prompt[1:])]
                       for out, prompt in zip(scored, prompts)]
    greedy = llm.generate(inputs, SamplingParams(temperature=0.0, max_tokens=job.gen_tokens,
                                                 ignore_eos=True, detokenize=False,
                                                 logprobs=TOP_K), use_tqdm=False)
    vllm_config = llm.llm_engine.vllm_config
    partial_path = Path(job.out_path + ".partial")
    partial_path.write_text(json.dumps({
        "setup": f"backend {vllm_config.attention_config.backend.name}, cudagraph_mode "
                 f"{vllm_config.compilation_config.cudagraph_mode.name}, tp "
                 f"{vllm_config.parallel_config.tensor_parallel_size}, "
                 f"{config['num_hidden_layers']} layers, weights {job.load_format}",
        "prompt_logprobs": prompt_logprobs,
        "greedy": [list(out.outputs[0].token_ids) for out in greedy],
        # per generated position: the top-k tokens and their logprobs (JSON keys are text)
        "greedy_topk": [[{str(t): lp.logprob for t, lp in position.items()}
                         for position in out.outputs[0].logprobs] for out in greedy]}))
    partial_path.rename(job.out_path)  # all results or none: the parent may kill a hung exit


def child_env() -> dict:
    return {**os.environ, **MULTICAST_OFF}


EXIT_GRACE_S = 60
"""How long a job may take to exit after writing its results before it is killed."""


def run_child(command: list[str], log_path: Path, timeout_s: float,
              done_path: Path | None = None) -> int | None:
    """Run command in its own process group (vLLM's TP workers included) with output to
    log_path; returns its exit status, or None if it was killed: after timeout_s, or
    EXIT_GRACE_S after done_path appeared (an engine that hangs at shutdown)."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                 env=child_env(), start_new_session=True)
        deadline = start + timeout_s
        while (status := child.poll()) is None:
            now = time.perf_counter()
            if done_path is not None and done_path.exists():
                deadline = min(deadline, now + EXIT_GRACE_S)
                done_path = None
            if now >= deadline:
                kill_group(child)
                return None
            time.sleep(0.5)
        return status


def kill_group(child: subprocess.Popen) -> None:
    os.killpg(child.pid, signal.SIGTERM)
    try:
        child.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def log_tail(log_path: Path, lines: int = 25) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def progress(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def run_in_subprocess(job: Job, timeout_s: float) -> dict:
    """job in a fresh process (one LLM per process, so GPU memory is returned in between);
    raises RuntimeError with the log's tail if it produced no results."""
    label = f"{job.case}: {job.backend} tp{job.tensor_parallel_size}"
    log_path = Path(job.out_path).with_suffix(".log")
    Path(job.out_path).unlink(missing_ok=True)  # a result from an earlier run in --save-dir
    progress(f"{label}: starting (log {log_path})")
    start = time.perf_counter()
    status = run_child([sys.executable, __file__, "--job", json.dumps(asdict(job))],
                       log_path, timeout_s, done_path=Path(job.out_path))
    elapsed = time.perf_counter() - start
    if not Path(job.out_path).exists():
        why = f"exit {status}" if status is not None else f"killed after {timeout_s:.0f} s"
        raise RuntimeError(f"{label} failed ({why}):\n{log_tail(log_path)}")
    if status != 0:  # results are complete (written last, atomically); the exit was not
        progress(f"{label}: results written, but the process "
                 f"{'did not exit and was killed' if status is None else f'exited {status}'}")
    progress(f"{label}: done in {elapsed:.0f} s")
    return json.loads(Path(job.out_path).read_text())


def write_checkpoint_in_subprocess(case: str, overrides: dict, out_dir: Path,
                                   log_path: Path, args) -> None:
    """random_checkpoint.py in its own process (drawing on the GPU), so this process never
    holds a CUDA context while the engines start."""
    progress(f"{case}: writing a random checkpoint to {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    timeout_s = args.job_timeout
    start = time.perf_counter()
    status = run_child([sys.executable, str(TESTS_DIR / "random_checkpoint.py"),
                        str(CONFIG_DIR / CASES[case].config), str(out_dir),
                        "--overrides", json.dumps(overrides), "--seed", str(args.seed),
                        "--residual-scale", str(args.residual_scale), "--dtype", args.dtype,
                        "--device", "cuda"], log_path, timeout_s)
    if status != 0:
        why = f"exit {status}" if status is not None else f"killed after {timeout_s:.0f} s"
        raise RuntimeError(f"{case}: writing the checkpoint failed ({why}):\n"
                           f"{log_tail(log_path)}")
    progress(f"{case}: checkpoint ready in {time.perf_counter() - start:.0f} s "
             f"({log_tail(log_path, 1)})")


def compare(case: str, baseline_name: str, candidate_name: str, baseline: dict,
            candidate: dict, args) -> dict:
    """Both checks of candidate against baseline; prints the summary line, returns the
    figures (with "passed")."""
    diffs = [abs(a - b)
             for lp_a, lp_b in zip(baseline["prompt_logprobs"], candidate["prompt_logprobs"])
             for a, b in zip(lp_a, lp_b)]
    max_diff, mean_diff = max(diffs), sum(diffs) / len(diffs)
    num_prompts = len(baseline["greedy"])
    verdicts = [greedy_verdict(prompt, baseline, candidate, args)
                for prompt in range(num_prompts)]
    exact, near_tie = verdicts.count("exact"), verdicts.count("near_tie")
    exact_fraction = exact / num_prompts
    consistent_fraction = (exact + near_tie) / num_prompts
    logprobs_ok = max_diff <= args.max_logprob_diff and mean_diff <= args.mean_logprob_diff
    greedy_ok = (exact_fraction if args.exact_greedy else consistent_fraction) >= \
        args.min_greedy_agreement
    passed = logprobs_ok and greedy_ok
    print(f"{case}: {candidate_name} vs {baseline_name} ({candidate['setup']}) | prompt "
          f"logprobs over {len(diffs)} tokens: max|d| {max_diff:.4f} (tol "
          f"{args.max_logprob_diff}), mean|d| {mean_diff:.5f} (tol {args.mean_logprob_diff}) "
          f"| greedy first {args.gen_tokens} "
          f"tokens: equal {exact}/{num_prompts} = {100 * exact_fraction:.1f}%, equal up to a "
          f"near tie (<= {args.tie_tol} nats) {exact + near_tie}/{num_prompts} = "
          f"{100 * consistent_fraction:.1f}% (need {100 * args.min_greedy_agreement:.0f}% "
          f"{'equal' if args.exact_greedy else 'up to near ties'}) | "
          f"{'PASS' if passed else 'FAIL'}", flush=True)
    return {"case": case, "baseline": baseline_name, "candidate": candidate_name,
            "setup": candidate["setup"], "logprob_tokens": len(diffs),
            "max_logprob_diff": max_diff, "mean_logprob_diff": mean_diff,
            "num_prompts": num_prompts, "greedy_equal": exact, "greedy_near_tie": near_tie,
            "greedy_diverged": num_prompts - exact - near_tie, "passed": passed}


def greedy_verdict(prompt: int, baseline: dict, candidate: dict, args) -> str:
    """"exact": the first gen_tokens tokens are equal. "near_tie": they first differ where
    each backend ranked both tokens in its top-k within tie_tol nats of each other (a bf16
    rounding decided the argmax; afterwards the contexts differ, so later tokens are not
    compared). "diverged": anything else."""
    a_tokens = baseline["greedy"][prompt][:args.gen_tokens]
    b_tokens = candidate["greedy"][prompt][:args.gen_tokens]
    if a_tokens == b_tokens:
        return "exact"
    i = next(i for i, (a, b) in enumerate(zip(a_tokens, b_tokens)) if a != b)
    a, b = str(a_tokens[i]), str(b_tokens[i])
    for top_k in (baseline["greedy_topk"][prompt][i], candidate["greedy_topk"][prompt][i]):
        if a not in top_k or b not in top_k or abs(top_k[a] - top_k[b]) > args.tie_tol:
            return "diverged"
    return "near_tie"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(DEFAULT_CASES),
                        help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--baseline", default="FLASH_ATTN")
    parser.add_argument("--candidates", default="CUSTOM",
                        help="comma list of backends compared with the baseline; CUSTOM is "
                             "fi_backend")
    parser.add_argument("--tp-check", action="store_true",
                        help="instead: --tp-backend at tensor parallel --tp-size vs 1, on a "
                             "random checkpoint")
    parser.add_argument("--tp-size", type=int, default=2)
    parser.add_argument("--tp-backend", default="CUSTOM")
    parser.add_argument("--weights", choices=("redraw", "checkpoint"),
                        help="redraw: dummy weights redrawn in the workers (TP 1 only; the "
                             "default for backend comparisons); checkpoint: a random "
                             "checkpoint written once (always with --tp-check)")
    parser.add_argument("--num-layers", type=int,
                        help="override num_hidden_layers (default: the config's; "
                             f"{TP_CHECK_NUM_LAYERS} with --tp-check)")
    parser.add_argument("--checkpoint-dir",
                        help="keep random checkpoints here (reused when unchanged); default "
                             "a temporary folder")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--min-prompt-len", type=int, default=16)
    parser.add_argument("--max-prompt-len", type=int, default=1024)
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-logprob-diff", type=float, default=0.25)
    parser.add_argument("--mean-logprob-diff", type=float, default=0.02)
    parser.add_argument("--min-greedy-agreement", type=float, default=0.95)
    parser.add_argument("--tie-tol", type=float, default=0.125,
                        help="largest logprob gap (nats) of a near tie, see greedy_verdict; "
                             "default 4 bf16 ulps of a top logit in [4, 8)")
    parser.add_argument("--save-dir", help="keep each run's JSON results and logs here")
    parser.add_argument("--out", help="write a JSON summary of all comparisons here")
    parser.add_argument("--job-timeout", type=float, default=480,
                        help="seconds one engine process (or the checkpoint writer) may run")
    parser.add_argument("--exact-greedy", action="store_true",
                        help="require exactly equal continuations (not up to near ties)")
    parser.add_argument("--compile", action="store_true",
                        help="also torch.compile the model (slower start)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--residual-scale", type=float, default=1.0,
                        help="scale of each residual branch's output in the weights")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        return args
    unknown = [c for c in args.configs.split(",") if c and c not in CASES]
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {', '.join(CASES)}")
    if args.tp_check:
        if args.weights == "redraw":
            parser.error("--tp-check needs --weights checkpoint: redrawn dummy weights "
                         "differ per TP shard")
        if args.tp_size < 2:
            parser.error(f"--tp-size {args.tp_size}: compare a TP size of 2 or more with 1")
        args.weights = "checkpoint"
        if args.num_layers is None:
            args.num_layers = TP_CHECK_NUM_LAYERS
    args.weights = args.weights or "redraw"
    if args.num_layers is not None and args.num_layers < 1:
        parser.error(f"--num-layers {args.num_layers}: need at least 1")
    return args


def comparisons_for_case(case: str, args, runs_dir: Path, temporary: Path) -> list[dict]:
    """Run the engines for one config and compare; a failed run is a failed comparison.
    Results and logs go to runs_dir; checkpoints (GBs) to --checkpoint-dir or temporary."""
    overrides = dict(CASES[case].hf_overrides)
    if args.num_layers is not None:
        overrides["num_hidden_layers"] = args.num_layers
    checkpoint_error = None
    if args.weights == "checkpoint":
        checkpoint = Path(args.checkpoint_dir or temporary) / f"{case}-checkpoint"
        try:
            write_checkpoint_in_subprocess(case, overrides, checkpoint,
                                           runs_dir / f"{case}-checkpoint.log", args)
        except RuntimeError as error:
            checkpoint_error = str(error)
        model_dir, load_format, overrides = str(checkpoint), "safetensors", {}
    else:
        model_dir, load_format = str(CONFIG_DIR / CASES[case].config), "dummy"

    def run(backend: str, tp: int) -> dict:
        return run_in_subprocess(Job(
            case=case, backend=backend, model_dir=model_dir, load_format=load_format,
            hf_overrides=overrides, tensor_parallel_size=tp, num_prompts=args.num_prompts,
            min_prompt_len=args.min_prompt_len, max_prompt_len=args.max_prompt_len,
            gen_tokens=args.gen_tokens, max_model_len=args.max_model_len,
            compile=args.compile, seed=args.seed, residual_scale=args.residual_scale,
            dtype=args.dtype, out_path=str(runs_dir / f"{case}-{backend}-tp{tp}.json")),
            args.job_timeout)

    if args.tp_check:
        baseline_run = (f"{args.tp_backend} tp1", args.tp_backend, 1)
        candidate_runs = [(f"{args.tp_backend} tp{args.tp_size}", args.tp_backend,
                           args.tp_size)]
    else:
        baseline_run = (args.baseline, args.baseline, 1)
        candidate_runs = [(c, c, 1) for c in args.candidates.split(",") if c]
    baseline_name = baseline_run[0]

    def failed(candidate_name: str, error: str) -> dict:
        print(f"{case}: {candidate_name} vs {baseline_name} | FAIL | {error}", flush=True)
        return {"case": case, "baseline": baseline_name, "candidate": candidate_name,
                "passed": False, "error": error}

    if checkpoint_error:
        return [failed(name, checkpoint_error) for name, _, _ in candidate_runs]
    try:
        baseline = run(*baseline_run[1:])
    except RuntimeError as error:
        return [failed(name, f"baseline: {error}") for name, _, _ in candidate_runs]
    results = []
    for name, backend, tp in candidate_runs:
        try:
            candidate = run(backend, tp)
        except RuntimeError as error:
            results.append(failed(name, str(error)))
            continue
        results.append(compare(case, baseline_name, name, baseline, candidate, args))
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.job:
        run_job(Job(**json.loads(args.job)))
        return 0

    cases = [c for c in args.configs.split(",") if c]
    start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="e2e_vllm_compare-") as temporary:
        runs_dir = Path(args.save_dir or temporary)
        runs_dir.mkdir(parents=True, exist_ok=True)
        for case in cases:
            results += comparisons_for_case(case, args, runs_dir, Path(temporary))
            shutil.rmtree(Path(temporary) / f"{case}-checkpoint", ignore_errors=True)
    passed = bool(results) and all(r["passed"] for r in results)
    elapsed = time.perf_counter() - start
    progress(f"{sum(r['passed'] for r in results)}/{len(results)} comparisons passed in "
             f"{elapsed:.0f} s | {'PASS' if passed else 'FAIL'}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "mode": "tp-check" if args.tp_check else "backends", "passed": passed,
            "elapsed_s": round(elapsed, 1), "args": vars(args), "results": results},
            indent=1))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
