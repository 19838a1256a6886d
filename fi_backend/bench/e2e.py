"""Offline end-to-end runs: one fresh Python process per (model, backend) drives vLLM's `LLM`
with dummy weights through every selected workload.

Timing (vLLM 0.26): requests are submitted with RequestOutputKind.DELTA and the engine is
stepped by hand, so every new token is seen once. Each RequestOutput carries `metrics`
(v1.metrics.stats.RequestStateStats, filled when stats logging is on): `last_token_ts` is the
engine-core monotonic timestamp of the step that produced the newest token and
`first_token_latency` is the time from the request's arrival to its first token. Inter-token
latency = differences of consecutive `last_token_ts` of one request (the engine's own clock,
free of our polling jitter; the same quantity vLLM feeds its ITL histogram). Output tokens/s =
all generated tokens / wall time from the first submission to the last token. When `metrics`
is absent the parent's monotonic clock at the step's return stands in for both.

Engine construction (weights, torch.compile, CUDA-graph capture, JIT kernels) is timed as
`engine_init_s`; each workload first runs once with other prompts (`warmup_s`, then the prefix
cache is reset) and only the second run is measured.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from .host import backend_unavailable_reason, engine_env
from .progress import ProgressBar
from .workloads import Workload, hf_overrides_for, model_vocab_size

PROGRESS_MARK = "@@fi-bench-progress "
_WARMUP_SEED_OFFSET = 1_000_003


def latency_summary_ms(values_s) -> dict:
    values_ms = np.asarray(values_s, dtype=np.float64) * 1e3
    if values_ms.size == 0:
        return {"mean": None, "p50": None, "p99": None}
    return {"mean": float(values_ms.mean()), "p50": float(np.percentile(values_ms, 50)),
            "p99": float(np.percentile(values_ms, 99))}


def token_timing_summary(token_events: dict, ttft_s: dict, duration_s: float) -> dict:
    """Metrics of one measured run.

    token_events: request id -> [(timestamp_s, num_new_tokens), ...] in arrival order.
    ttft_s: request id -> time to first token. Several tokens arriving in one output share the
    gap to the previous output evenly (it does not happen without speculative decoding).
    """
    itl_s, tpot_s, num_output_tokens = [], [], 0
    for events in token_events.values():
        num_output_tokens += sum(n for _, n in events)
        for (prev_ts, _), (ts, n_new) in zip(events, events[1:]):
            itl_s.extend([(ts - prev_ts) / n_new] * n_new)
        tokens_after_first = sum(n for _, n in events) - 1
        if tokens_after_first > 0:
            tpot_s.append((events[-1][0] - events[0][0]) / tokens_after_first)
    return {
        "num_requests": len(token_events),
        "output_tokens": num_output_tokens,
        "duration_s": duration_s,
        "output_tokens_per_s": num_output_tokens / duration_s if duration_s > 0 else None,
        "ttft_ms": latency_summary_ms(list(ttft_s.values())),
        "itl_ms": latency_summary_ms(itl_s),
        "tpot_ms": latency_summary_ms(tpot_s),
    }


# ----------------------------------------------------------------------------- worker process

def _emit_progress(event: str) -> None:
    print(PROGRESS_MARK + event, flush=True)


def _run_once(llm, workload: Workload, vocab_size: int, seed: int, output_len: int,
              request_tag: str) -> dict:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    prompts = workload.prompt_token_ids(vocab_size, seed)
    token_events: dict = defaultdict(list)
    ttft_s: dict = {}
    timers_used = set()
    submit_s = time.monotonic()
    for i, token_ids in enumerate(prompts):
        params = SamplingParams(max_tokens=output_len, min_tokens=output_len, ignore_eos=True,
                                temperature=0.0, detokenize=False,
                                output_kind=RequestOutputKind.DELTA)
        engine.add_request(f"{request_tag}-{i}", {"prompt_token_ids": token_ids}, params)
    while engine.has_unfinished_requests():
        for output in engine.step():
            num_new = len(output.outputs[0].token_ids) if output.outputs else 0
            if num_new == 0:
                continue
            now_s = time.monotonic()
            stats = output.metrics
            has_stats = stats is not None and getattr(stats, "last_token_ts", 0.0) > 0.0
            timers_used.add("vllm-request-metrics" if has_stats else "step-return-clock")
            token_events[output.request_id].append(
                (stats.last_token_ts if has_stats else now_s, num_new))
            if output.request_id not in ttft_s:
                ttft_s[output.request_id] = (stats.first_token_latency if has_stats
                                             else now_s - submit_s)
    duration_s = time.monotonic() - submit_s
    result = token_timing_summary(token_events, ttft_s, duration_s)
    result["timer"] = "+".join(sorted(timers_used))
    return result


def _worker_main(spec_path: Path, result_path: Path) -> None:
    """Runs in the fresh child process: build the engine, run the workloads, write JSON."""
    spec = json.loads(spec_path.read_text())
    workloads = [Workload(**w) for w in spec["workloads"]]
    result = {"engine_init_s": None, "workloads": []}

    def save():
        result_path.write_text(json.dumps(result, indent=1))

    save()
    _emit_progress("init")
    init_start_s = time.perf_counter()
    from vllm import LLM

    llm = LLM(model=spec["model_dir"], load_format="dummy", skip_tokenizer_init=True,
              attention_backend=spec["backend"], dtype=spec["dtype"],
              max_model_len=max(w.max_seq_len for w in workloads),
              gpu_memory_utilization=spec["gpu_memory_utilization"],
              enforce_eager=spec["enforce_eager"], hf_overrides=spec["hf_overrides"],
              disable_cascade_attn=not spec.get("cascade_attention", False),
              disable_log_stats=False, seed=0)
    result["engine_init_s"] = time.perf_counter() - init_start_s
    try:
        result["cudagraph_mode"] = str(llm.llm_engine.vllm_config.compilation_config.cudagraph_mode)
    except AttributeError:
        pass
    save()
    _emit_progress("init-done")
    vocab_size = model_vocab_size(Path(spec["model_dir"]))
    for workload in workloads:
        _emit_progress(f"workload {workload.name}")
        warmup_start_s = time.perf_counter()
        _run_once(llm, workload, vocab_size, seed=spec["seed"] + _WARMUP_SEED_OFFSET,
                  output_len=min(workload.output_len, spec["warmup_output_len"]),
                  request_tag=f"warmup-{workload.name}")
        llm.reset_prefix_cache()
        warmup_s = time.perf_counter() - warmup_start_s
        repeats = []
        for repeat in range(spec["repeats"]):
            repeats.append(_run_once(llm, workload, vocab_size, seed=spec["seed"] + repeat,
                                     output_len=workload.output_len,
                                     request_tag=f"{workload.name}-{repeat}"))
            llm.reset_prefix_cache()
        result["workloads"].append(_median_of_repeats(workload, warmup_s, repeats))
        save()
        _emit_progress(f"workload-done {workload.name}")


def _median_of_repeats(workload: Workload, warmup_s: float, repeats: list[dict]) -> dict:
    """One workload's entry: the median over repeats of every scalar metric."""
    def median(get):
        values = [get(r) for r in repeats if get(r) is not None]
        return float(np.median(values)) if values else None

    entry = {"workload": workload.name, "num_requests": workload.num_requests,
             "prompt_len": workload.prompt_len, "shared_prefix_len": workload.shared_prefix_len,
             "output_len": workload.output_len, "warmup_s": warmup_s, "repeats": len(repeats),
             "timer": repeats[0]["timer"]}
    for key in ("output_tokens", "duration_s", "output_tokens_per_s"):
        entry[key] = median(lambda r, k=key: r[k])
    for key in ("ttft_ms", "itl_ms", "tpot_ms"):
        entry[key] = {stat: median(lambda r, k=key, s=stat: r[k][s])
                      for stat in ("mean", "p50", "p99")}
    return entry


# ----------------------------------------------------------------------------- parent side

def _failure_reason(log_path: Path) -> tuple[str, str]:
    """(status, reason) for a worker that exited without finishing, from its log.

    A backend that vLLM itself rejects for this model ("is not valid", an ImportError) is
    `skipped`; anything else is `failed`.
    """
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    error_lines = [ln.strip() for ln in lines
                   if re.search(r"\b\w*(Error|Exception)\b: ", ln) and PROGRESS_MARK not in ln]
    for line in error_lines:
        if "is not valid" in line or "ModuleNotFoundError" in line or "ImportError" in line:
            return "skipped", line[-400:]
    if error_lines:
        return "failed", error_lines[-1][-400:] + f" (log: {log_path})"
    return "failed", f"worker exited without a result (log: {log_path})"


class ChildWatchdog:
    """Kills a child's whole process group (it was started with start_new_session=True, so
    the group is the child and whatever vLLM spawned) after `timeout_s`, and on `stop()`
    reaps any engine process that outlived its parent."""

    def __init__(self, child: subprocess.Popen, timeout_s: float):
        self.child = child
        self.fired = threading.Event()
        self.timer = threading.Timer(timeout_s, self._expire)
        self.timer.daemon = True
        self.timer.start()

    def _expire(self) -> None:
        self.fired.set()
        self._kill_group()

    def _kill_group(self) -> None:
        try:
            os.killpg(self.child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self) -> None:
        self.timer.cancel()
        self._kill_group()


def run_backend(model_name: str, model_dir: Path, backend: str, workloads: list[Workload],
                settings: dict, out_dir: Path, bar: ProgressBar) -> dict:
    """One (model, backend) pair in a fresh process; returns its entry of results `runs`."""
    run = {"model": model_name, "backend": backend, "status": "ok", "reason": None,
           "engine_init_s": None, "workloads": []}
    steps_left = 1 + len(workloads)
    unavailable = backend_unavailable_reason(backend)
    if unavailable:
        bar.advance(f"{model_name}/{backend}: skipped", steps=steps_left)
        return {**run, "status": "skipped", "reason": unavailable}

    work_dir = out_dir / "work"
    work_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{model_name}.{backend}"
    spec_path, result_path = work_dir / f"{stem}.spec.json", work_dir / f"{stem}.result.json"
    log_path = out_dir / "logs" / f"e2e.{stem}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)
    hf_overrides = hf_overrides_for(model_dir, max(w.max_seq_len for w in workloads))
    run["hf_overrides"] = hf_overrides
    spec_path.write_text(json.dumps({**settings, "model_dir": str(model_dir), "backend": backend,
                                     "workloads": [w.__dict__ for w in workloads],
                                     "hf_overrides": hf_overrides}))
    env = engine_env(settings)
    command = [sys.executable, "-m", "fi_backend.bench.e2e", "--worker", str(spec_path),
               str(result_path)]
    bar.note(f"{model_name}/{backend}: starting engine")
    with open(log_path, "w") as log, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True) as child:
        watchdog = ChildWatchdog(child, settings["timeout_s"])
        for line in child.stdout:
            log.write(line)
            if line.startswith(PROGRESS_MARK):
                event = line[len(PROGRESS_MARK):].strip()
                if event == "init-done" or event.startswith("workload-done"):
                    steps_left -= 1
                    bar.advance(f"{model_name}/{backend}: {event}")
                else:
                    bar.note(f"{model_name}/{backend}: {event}")
        child.wait()
        watchdog.stop()
    timed_out = watchdog.fired.is_set()
    if steps_left:  # the worker stopped early: its remaining steps will not come
        bar.advance(f"{model_name}/{backend}: stopped", steps=steps_left)

    worker_result = json.loads(result_path.read_text()) if result_path.exists() else {}
    run["engine_init_s"] = worker_result.get("engine_init_s")
    run["workloads"] = worker_result.get("workloads", [])
    if "cudagraph_mode" in worker_result:
        run["cudagraph_mode"] = worker_result["cudagraph_mode"]
    if timed_out:
        run["status"], run["reason"] = "failed", (
            f"timed out after {settings['timeout_s']} s (log: {log_path})")
    elif child.returncode != 0 or len(run["workloads"]) < len(workloads):
        run["status"], run["reason"] = _failure_reason(log_path)
    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="internal: the per-backend worker of fi-bench e2e")
    parser.add_argument("--worker", nargs=2, metavar=("SPEC_JSON", "RESULT_JSON"), required=True)
    args = parser.parse_args(argv)
    _worker_main(Path(args.worker[0]), Path(args.worker[1]))


if __name__ == "__main__":
    main()
