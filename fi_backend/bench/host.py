"""What a result was measured on: the GPU, library versions, the fi_backend commit; and which
attention backends can run here at all."""

import importlib.metadata
import importlib.util
import os
import subprocess
from pathlib import Path

OURS = "CUSTOM"  # vLLM 0.26's one slot for an out-of-tree backend; our plugin registers into it
BACKENDS = (OURS, "FLASH_ATTN", "FLASHINFER", "TRITON_ATTN")
BACKEND_LABELS = {OURS: "ours", "FLASH_ATTN": "FLASH_ATTN (FA3)", "FLASHINFER": "FLASHINFER",
                  "TRITON_ATTN": "TRITON_ATTN"}
# The module without which vLLM cannot build the backend.
_BACKEND_MODULES = {OURS: "fi_backend.vllm.plugin", "FLASH_ATTN": "vllm.vllm_flash_attn",
                    "FLASHINFER": "flashinfer", "TRITON_ATTN": "triton"}


def cuda_device_name() -> str | None:
    """Name of GPU 0, or None when torch sees no CUDA device (or torch is missing).

    Asks nvidia-smi for the name when it can: torch.cuda.get_device_name would create a CUDA
    context in this process, which would hold GPU memory for as long as the benchmark runs.
    """
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return torch.cuda.get_device_name(0)


def no_gpu_message(command: str) -> str:
    return (f"fi-bench {command}: no CUDA GPU visible (torch.cuda.is_available() is False); "
            "this benchmark measures GPU kernels and needs one.")


def parse_backends(names_csv: str) -> list[str]:
    names = [n.strip().upper() for n in names_csv.split(",") if n.strip()]
    if names == ["ALL"]:
        return list(BACKENDS)
    names = [OURS if n in ("OURS", "FI_BACKEND") else n for n in names]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise ValueError(f"backend(s) {unknown or names_csv!r} unknown; "
                         f"choose from: all, ours, {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def backend_unavailable_reason(backend: str) -> str | None:
    """Why `backend` cannot run in this Python environment, or None if it can be tried."""
    module = _BACKEND_MODULES[backend]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return f"python module {module} is not importable"
    if backend == OURS:
        plugins = {ep.name for ep in importlib.metadata.entry_points(group="vllm.general_plugins")}
        if "fi_backend" not in plugins:
            return ("fi_backend is not installed as a vLLM plugin (no 'fi_backend' entry point "
                    "in vllm.general_plugins); run `pip install -e .` in the repo")
    return None


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(repo: Path | None = None) -> str | None:
    """The short commit of the checkout fi_backend runs from, with "-dirty" when tracked files
    differ from it: a copied work tree whose .git is older than its files then says so instead
    of naming a commit that was not what ran. Such a copy can name its source commit in the
    environment variable FI_BENCH_COMMIT (set where the tree was copied from, e.g.
    `FI_BENCH_COMMIT=$(git rev-parse --short HEAD)`), which is then recorded as
    "<commit> (FI_BENCH_COMMIT)"."""
    declared = os.environ.get("FI_BENCH_COMMIT", "").strip()
    if declared:
        return f"{declared} (FI_BENCH_COMMIT)"
    repo = repo if repo is not None else Path(__file__).resolve().parent.parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return None
    changes = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}-dirty" if changes else commit


def engine_env(settings: dict) -> dict:
    """Environment of a vLLM engine or server process: offline, and, for --cascade, vLLM's V1
    model runner, the only one that uses cascade attention in vLLM 0.26 (the V2 runner, its
    default for dense models where Triton is installed, never does), and our backend's own
    cascade switch (fi_backend.vllm.builder.CASCADE_ENV, off by default)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if settings.get("cascade_attention", False):
        env["VLLM_USE_V2_MODEL_RUNNER"] = "0"
        env["FI_BACKEND_CASCADE"] = "1"
    return env


def host_info() -> dict:
    return {
        "gpu": cuda_device_name(),
        "vllm": package_version("vllm"),
        "torch": package_version("torch"),
        "flashinfer": package_version("flashinfer-python"),
        "fi_backend_commit": git_commit(),
    }
