"""Online serving: `vllm serve` per backend on localhost, driven by vLLM's own
`vllm bench serve` (random dataset) at a sweep of request rates.

`vllm bench serve` needs a tokenizer to build its random prompts, and the server needs the same
one to count them. We write a synthetic tokenizer next to a copy of the model config: token id
i <-> i written in base 62 with a fixed number of digits (3 for a 128K vocabulary), the text
being the tokens' digits back to back, no special tokens added. Prompts then are exactly the
requested number of random token ids, nothing is downloaded, and every backend gets the same
requests (same --seed). No separator between tokens, because vLLM's server refuses a prompt
longer in characters than max_chars_per_token (its longest vocabulary entry) times the tokens
it may hold before tokenizing it: with separators a prompt near the model length is refused
(HTTP 400).
"""

import json
import os
import shutil
import signal
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .host import backend_unavailable_reason, engine_env
from .progress import ProgressBar
from .workloads import Workload, hf_overrides_for, model_vocab_size

_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
_DIGITS = string.digits + string.ascii_lowercase + string.ascii_uppercase


def token_digits(vocab_size: int) -> int:
    """Base-62 digits per token of the synthetic tokenizer for `vocab_size` ids."""
    digits = 1
    while len(_DIGITS) ** digits < vocab_size:
        digits += 1
    return digits


def token_text(token_id: int, digits: int) -> str:
    """The synthetic tokenizer's text of `token_id`: base 62, zero-padded to `digits`."""
    text = ""
    for _ in range(digits):
        token_id, digit = divmod(token_id, len(_DIGITS))
        text = _DIGITS[digit] + text
    return text


def write_synthetic_tokenizer(folder: Path, vocab_size: int) -> None:
    """tokenizer.json + tokenizer_config.json of the fixed-width tokenizer described above
    (ids 0..2 are <unk>, <s>, </s>)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    digits = token_digits(vocab_size)
    vocab = {token: i for i, token in enumerate(_SPECIAL_TOKENS)}
    vocab.update({token_text(i, digits): i for i in range(len(_SPECIAL_TOKENS), vocab_size)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(f".{{{digits}}}"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", "bos_token": "<s>",
        "eos_token": "</s>", "model_max_length": 1 << 20}, indent=1))


def prepare_served_model(model_name: str, model_dir: Path, work_dir: Path) -> Path:
    """A folder vLLM can serve with dummy weights: the model's config + the synthetic
    tokenizer.

    The tokenizer covers the model's whole vocabulary: a dummy-weight model emits arbitrary
    token ids, and the server answers 400 to a request whose output it cannot detokenize.
    """
    folder = work_dir / "serve-models" / model_name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_dir / "config.json", folder / "config.json")
    write_synthetic_tokenizer(folder, model_vocab_size(model_dir))
    return folder


def num_prompts_for(workload: Workload, requested: int | None) -> int:
    return requested if requested is not None else max(16, 2 * workload.num_requests)


def server_command(served_dir: Path, model_name: str, backend: str, workloads: list[Workload],
                   settings: dict) -> list[str]:
    command = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(served_dir),
               "--served-model-name", model_name, "--host", "127.0.0.1",
               "--port", str(settings["port"]), "--load-format", "dummy",
               "--attention-backend", backend, "--dtype", settings["dtype"],
               "--max-model-len", str(max(w.max_seq_len for w in workloads)),
               "--gpu-memory-utilization", str(settings["gpu_memory_utilization"]),
               "--seed", "0"]
    hf_overrides = hf_overrides_for(served_dir, max(w.max_seq_len for w in workloads))
    if hf_overrides:
        command += ["--hf-overrides", json.dumps(hf_overrides)]
    if settings["enforce_eager"]:
        command.append("--enforce-eager")
    if settings.get("cascade_attention", False):
        command.append("--no-disable-cascade-attn")
    return command


def bench_command(served_dir: Path, model_name: str, workload: Workload, rate: float | None,
                  settings: dict, result_dir: Path, result_name: str) -> list[str]:
    command = [sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve",
               "--backend", "vllm", "--base-url", f"http://127.0.0.1:{settings['port']}",
               # --model is also the name vllm bench serve sends to the server's /tokenize to
               # align its prompts with the server's tokenizer: it must be the served name
               # (with the folder's path the server answers 404, the alignment is skipped and
               # prompts that re-tokenize longer than the model length are refused with 400).
               "--endpoint", "/v1/completions", "--model", model_name,
               "--served-model-name", model_name, "--tokenizer", str(served_dir),
               "--dataset-name", "random", "--random-input-len", str(workload.unique_input_len),
               "--random-output-len", str(workload.output_len),
               "--random-prefix-len", str(workload.shared_prefix_len),
               "--random-range-ratio", "0",
               "--num-prompts", str(num_prompts_for(workload, settings.get("num_prompts"))),
               "--ignore-eos", "--seed", str(settings["seed"]), "--disable-tqdm",
               "--num-warmups", str(min(8, workload.num_requests)),
               "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
               "--save-result", "--result-dir", str(result_dir), "--result-filename", result_name]
    if rate is not None:  # vllm bench serve's default rate is inf: all requests at once
        command += ["--request-rate", str(rate)]
    return command


def parse_bench_result(bench_json: dict, rate: float | None) -> dict:
    """The fields we report from a `vllm bench serve --save-result` JSON."""
    def latency(metric):
        return {"mean": bench_json.get(f"mean_{metric}_ms"),
                "p50": bench_json.get(f"p50_{metric}_ms", bench_json.get(f"median_{metric}_ms")),
                "p99": bench_json.get(f"p99_{metric}_ms")}

    return {"request_rate": rate, "completed": bench_json.get("completed"),
            "failed": bench_json.get("failed"), "duration_s": bench_json.get("duration"),
            "output_tokens_per_s": bench_json.get("output_throughput"),
            "ttft_ms": latency("ttft"), "itl_ms": latency("itl"), "tpot_ms": latency("tpot")}


def _wait_until_healthy(server: subprocess.Popen, port: int, timeout_s: float) -> str | None:
    """None once /health answers 200; otherwise why it never did."""
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        if server.poll() is not None:
            return f"vllm serve exited with status {server.returncode} while starting"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
                if reply.status == 200:
                    return None
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    return f"vllm serve did not become healthy within {timeout_s:.0f} s"


def _stop_group(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGINT the server's process group (ours: started with start_new_session), then kill."""
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue


def _log_failure(log_path: Path) -> str:
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    errors = [ln.strip() for ln in lines if "Error" in ln or "error:" in ln]
    return (errors[-1][-300:] + " " if errors else "") + f"(log: {log_path})"


def run_backend(model_name: str, model_dir: Path, backend: str, workloads: list[Workload],
                settings: dict, out_dir: Path, bar: ProgressBar) -> dict:
    """Serve one (model, backend) and sweep every workload over every rate."""
    rates = settings["rates"]
    run = {"model": model_name, "backend": backend, "status": "ok", "reason": None,
           "server_start_s": None, "workloads": []}
    steps_left = 1 + len(workloads) * len(rates)
    unavailable = backend_unavailable_reason(backend)
    if unavailable:
        bar.advance(f"{model_name}/{backend}: skipped", steps=steps_left)
        return {**run, "status": "skipped", "reason": unavailable}

    work_dir = out_dir / "work"
    served_dir = prepare_served_model(model_name, model_dir, work_dir)
    logs_dir = out_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    server_log_path = logs_dir / f"serve.{model_name}.{backend}.server.log"
    env = engine_env(settings)
    bar.note(f"{model_name}/{backend}: starting vllm serve")
    start_s = time.monotonic()
    with open(server_log_path, "w") as server_log:
        server = subprocess.Popen(server_command(served_dir, model_name, backend, workloads, settings),
                                  stdout=server_log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
        try:
            not_healthy = _wait_until_healthy(server, settings["port"], settings["timeout_s"])
            if not_healthy:
                bar.advance(f"{model_name}/{backend}: server failed", steps=steps_left)
                return {**run, "status": "failed",
                        "reason": f"{not_healthy}: {_log_failure(server_log_path)}"}
            run["server_start_s"] = time.monotonic() - start_s
            steps_left -= 1
            bar.advance(f"{model_name}/{backend}: server up")
            for workload in workloads:
                entry = {"workload": workload.name,
                         "num_prompts": num_prompts_for(workload, settings.get("num_prompts")),
                         "prompt_len": workload.prompt_len,
                         "shared_prefix_len": workload.shared_prefix_len,
                         "output_len": workload.output_len, "rates": []}
                run["workloads"].append(entry)
                for rate in rates:
                    rate_label = "inf" if rate is None else f"{rate:g}"
                    bar.note(f"{model_name}/{backend}: {workload.name} at {rate_label} req/s")
                    stem = f"serve.{model_name}.{backend}.{workload.name}.rate-{rate_label}"
                    bench_log_path = logs_dir / f"{stem}.log"
                    result_path = work_dir / f"{stem}.json"
                    result_path.unlink(missing_ok=True)
                    with open(bench_log_path, "w") as bench_log:
                        subprocess.run(bench_command(served_dir, model_name, workload, rate,
                                                     settings, work_dir, result_path.name),
                                       stdout=bench_log, stderr=subprocess.STDOUT, env=env,
                                       timeout=settings["timeout_s"])
                    steps_left -= 1
                    bar.advance(f"{model_name}/{backend}: {workload.name} at {rate_label} req/s")
                    if not result_path.exists():
                        run["status"] = "failed"
                        run["reason"] = f"vllm bench serve wrote no result: {_log_failure(bench_log_path)}"
                        continue
                    measured = parse_bench_result(json.loads(result_path.read_text()), rate)
                    entry["rates"].append(measured)
                    if measured["failed"]:  # the numbers then cover only the requests that ran
                        run["status"] = "failed"
                        run["reason"] = (f"{measured['failed']} requests failed at "
                                         f"{rate_label} req/s ({workload.name}); "
                                         f"server log: {server_log_path}")
        except subprocess.TimeoutExpired as timeout:
            run["status"], run["reason"] = "failed", f"timed out: {timeout}"
        finally:
            _stop_group(server)
    if steps_left:
        bar.advance(f"{model_name}/{backend}: stopped", steps=steps_left)
    return run
