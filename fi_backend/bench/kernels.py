"""`fi-bench kernels`: runs benchmarks/bench_kernels.py (the kernel engineers' benchmark) in a
child process and turns its JSON into fi-bench results rows, one per (case, backend).

bench_kernels.py names implementations fi_backend / fa3 / flashinfer (/ triton); here they
become the vLLM backend names used everywhere else in fi-bench. A comparison it could not
import is `skipped`, one that raised on a case is `failed`, with the line it printed as reason.
"""

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from . import report
from .host import OURS, host_info
from .progress import ProgressBar

BENCH_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_kernels.py"
IMPL_TO_BACKEND = {"fi_backend": OURS, "fa3": "FLASH_ATTN", "flashinfer": "FLASHINFER",
                   "triton": "TRITON_ATTN"}
# bench_kernels.py's "<Name> not available" lines, by implementation.
_UNAVAILABLE_NAMES = {"flashinfer": "flashinfer", "flashattention-3": "fa3", "triton": "triton"}
_EXPECTED_IMPLS = ("fi_backend", "fa3", "flashinfer")
_NUM_CASES_FULL = 16 + 2 + 4  # decode grid, skewed and shared-prefix batches, prefill cells


def bench_command(out_json: Path, quick: bool, replays: int | None, no_compare: bool,
                  family: str = "auto") -> list[str]:
    command = [sys.executable, str(BENCH_SCRIPT), "--out", str(out_json), "--family", family]
    if quick:
        command.append("--quick")
    if replays is not None:
        command += ["--replays", str(replays)]
    if no_compare:
        command.append("--no-compare")
    return command


def _problems_from_log(log_text: str) -> tuple[dict, dict]:
    """(impl -> why it is unavailable, (impl, kind, case) -> why it failed) from the log."""
    unavailable, failed = {}, {}
    for line in log_text.splitlines():
        match = re.match(r"\[bench\] (.+?) not available: (.*)", line)
        if match:
            name = match.group(1).lower()
            impl = next((v for k, v in _UNAVAILABLE_NAMES.items() if k in name), name)
            unavailable[impl] = f"not importable: {match.group(2).strip()}"
            continue
        match = re.match(r"\[bench\] (\S+) failed on (\S+) (.+?): (.*)", line)
        if match:
            failed[(match.group(1), match.group(2), match.group(3))] = match.group(4).strip()
    return unavailable, failed


def runs_from_bench_json(bench: dict, log_text: str = "", expected_impls=_EXPECTED_IMPLS,
                         no_compare: bool = False) -> list[dict]:
    """fi-bench kernels runs from bench_kernels.py's JSON (its `results` rows)."""
    unavailable, failed = _problems_from_log(log_text)
    impls = list(dict.fromkeys([*(["fi_backend"] if no_compare else expected_impls),
                                *(k for row in bench["results"] for k in row["us"])]))
    runs = []
    for row in bench["results"]:
        fraction = row.get("frac_copy_bw")
        tflops = row.get("tflops") or {}
        for impl in impls:
            run = {"group": row["kind"], "case": row["case"],
                   "backend": IMPL_TO_BACKEND.get(impl, impl), "status": "ok", "reason": None,
                   "time_us": row["us"].get(impl), "fraction_of_ceiling": None, "params": {}}
            if run["time_us"] is None:
                if impl in unavailable:
                    run.update(status="skipped", reason=unavailable[impl])
                else:
                    run.update(status="failed", reason=failed.get(
                        (impl, row["kind"], row["case"]), "bench_kernels.py reported no time"))
            elif fraction is not None:
                run["fraction_of_ceiling"] = fraction.get(impl)  # of copy bandwidth
            elif impl in tflops:
                run["params"]["tflops"] = tflops[impl]
                if bench.get("matmul_tflops"):
                    run["fraction_of_ceiling"] = tflops[impl] / bench["matmul_tflops"]
            runs.append(run)
    return runs


def run(out_dir: Path, timeout_s: int, quick: bool = False, replays: int | None = None,
        no_compare: bool = False, family: str = "auto") -> dict:
    """Runs bench_kernels.py once; returns the fi-bench results document (not yet written)."""
    if not BENCH_SCRIPT.is_file():
        raise FileNotFoundError(f"fi-bench kernels runs {BENCH_SCRIPT}, which is missing: it "
                                "ships with the repository checkout, not with a wheel")
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "logs" / "kernels.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    bar = ProgressBar(_NUM_CASES_FULL - (4 if quick else 0), "fi-bench kernels")
    with tempfile.TemporaryDirectory() as scratch, open(log_path, "w") as log:
        bench_json = Path(scratch) / "bench_kernels.json"
        child = subprocess.Popen(bench_command(bench_json, quick, replays, no_compare, family),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in child.stdout:
                log.write(line)
                if line.startswith(("decode ", "prefill ")):
                    bar.advance(" ".join(line.split()[:4]))
            child.wait(timeout=timeout_s)
        finally:
            if child.poll() is None:
                child.kill()
            bar.close()
        if child.returncode != 0 or not bench_json.exists():
            raise RuntimeError(f"bench_kernels.py exited with status {child.returncode} and "
                               f"no results; see {log_path}")
        bench = json.loads(bench_json.read_text())
    settings = {"quick": quick, "replays": replays, "no_compare": no_compare,
                "family": bench.get("family", family), "bench_script": str(BENCH_SCRIPT)}
    document = report.new_document("kernels", host_info(), settings)
    document["ceilings"] = {"copy_gbs": bench.get("copy_gbs"),
                            "matmul_tflops": bench.get("matmul_tflops"),
                            "device": bench.get("device"), "sms": bench.get("sms")}
    document["runs"] = runs_from_bench_json(bench, log_path.read_text(), no_compare=no_compare)
    return document
