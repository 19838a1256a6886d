"""Build of `fi_backend._C`: a pybind11 module whose CUDA sources nvcc compiles.

The extension does not link libtorch (DESIGN.md, decision 1): launchers take device pointers,
shapes, strides and the CUDA stream as integers. CUDA sources go through nvcc, the pybind11
glue through the host C++ compiler, and ninja drives both so that `pip install -e .` rebuilds
only what changed.

Environment:
  FI_CUDA_ARCHS   semicolon list of targets, default "80;90a" (sm_80 portable family,
                  sm_90a Hopper family). Example: FI_CUDA_ARCHS="90a" for an H100-only build.
                  The Hopper family's sources (SM90A_ONLY_SOURCES) are compiled for sm_90a
                  alone and only when 90a is listed; without it they are left out and their
                  binding reports "not built".
  CUDA_HOME       CUDA toolkit root; otherwise nvcc is looked up on PATH, then /usr/local/cuda.
  FI_NVCC_THREADS nvcc --threads per compile (default 2).
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "fi_backend" / "csrc"
DEFAULT_ARCHS = "80;90a"
SUPPORTED_ARCHS = ("80", "86", "89", "90", "90a")
# wgmma and setmaxnreg exist only on sm_90a, so these compile for that target alone.
SM90A_ONLY_SOURCES = ("batch_attention_sm90.cu",)
SM90A_GENCODE = "-gencode=arch=compute_90a,code=sm_90a"


def find_cuda_home() -> Path:
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]))
    nvcc_on_path = shutil.which("nvcc")
    if nvcc_on_path:
        candidates.append(Path(nvcc_on_path).resolve().parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        # nvcc on PATH may be a wrapper script outside the toolkit (/usr/local/bin/nvcc that
        # execs the real one), so a root counts only if it also holds the runtime headers.
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists():
            return home
    sys.exit(
        "fi_backend: nvcc (the CUDA compiler) was not found, so the CUDA extension cannot be "
        "built. Install the CUDA toolkit 12.4 or newer (13.0 is what we test) and put nvcc on "
        "PATH or set CUDA_HOME, e.g. `export CUDA_HOME=/usr/local/cuda`."
    )


def cutlass_include_dir() -> Path:
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "fi_backend: the CUTLASS/CuTe headers were not found. They come from the "
            "`nvidia-cutlass` package: `pip install nvidia-cutlass==4.2.0.0` (pip does this "
            "itself unless --no-build-isolation is given)."
        )
    include = Path(list(spec.submodule_search_locations)[0]) / "source" / "include"
    if not (include / "cute" / "tensor.hpp").exists():
        sys.exit(f"fi_backend: nvidia-cutlass is installed but {include} holds no CuTe headers")
    return include


def parse_archs(archs: str) -> list[str]:
    return [a for a in (a.strip() for a in archs.split(";")) if a]


def gencode_flags(archs: str) -> list[str]:
    flags = []
    for arch in parse_archs(archs):
        if arch not in SUPPORTED_ARCHS:
            sys.exit(f"fi_backend: FI_CUDA_ARCHS entry {arch!r} is not supported; "
                     f"supported: {', '.join(SUPPORTED_ARCHS)}")
        # The -gencode form is required for sm_90a: wgmma/setmaxnreg exist only there.
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
    if not flags:
        sys.exit("fi_backend: FI_CUDA_ARCHS is empty; give at least one of "
                 f"{', '.join(SUPPORTED_ARCHS)}")
    return flags


class NinjaCudaBuild(build_ext):
    """Writes a build.ninja for the extension's sources and runs it."""

    def build_extension(self, ext: Extension) -> None:
        import pybind11

        cuda_home = find_cuda_home()
        ninja = shutil.which("ninja")
        if ninja is None:
            sys.exit("fi_backend: ninja was not found; `pip install ninja`")
        build_dir = Path(self.build_temp).resolve() / "fi_backend_C"
        build_dir.mkdir(parents=True, exist_ok=True)
        output = Path(self.get_ext_fullpath(ext.name)).resolve()
        output.parent.mkdir(parents=True, exist_ok=True)

        includes = [ROOT, ROOT / "kernels", cutlass_include_dir(), cuda_home / "include",
                    Path(pybind11.get_include()), Path(sysconfig.get_paths()["include"])]
        include_flags = " ".join(f"-I{p}" for p in includes)
        archs = os.environ.get("FI_CUDA_ARCHS", DEFAULT_ARCHS)
        nvcc_threads = os.environ.get("FI_NVCC_THREADS", "2")
        common_nvcc_flags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-Xcompiler=-fPIC",
                             "-lineinfo", f"--threads={nvcc_threads}", "-DNDEBUG"]
        nvcc_flags = " ".join([*common_nvcc_flags, *gencode_flags(archs)])
        with_sm90a = "90a" in parse_archs(archs)
        cxx_flags = "-O3 -std=c++17 -fPIC -fvisibility=hidden -DNDEBUG"
        if with_sm90a:
            cxx_flags += " -DFI_BACKEND_WITH_SM90"
        lines = [
            "ninja_required_version = 1.3",
            f"nvcc = {cuda_home / 'bin' / 'nvcc'}",
            "cxx = c++",
            f"nvcc_flags = {nvcc_flags} {include_flags}",
            f"cxx_flags = {cxx_flags} {include_flags}",
            f"nvcc_sm90a_flags = {' '.join(common_nvcc_flags)} {SM90A_GENCODE} {include_flags}",
            "rule nvcc",
            "  command = $nvcc $nvcc_flags -MD -MF $out.d -c $in -o $out",
            "  depfile = $out.d",
            "  deps = gcc",
            "rule nvcc_sm90a",
            "  command = $nvcc $nvcc_sm90a_flags -MD -MF $out.d -c $in -o $out",
            "  depfile = $out.d",
            "  deps = gcc",
            "rule cxx",
            "  command = $cxx $cxx_flags -MD -MF $out.d -c $in -o $out",
            "  depfile = $out.d",
            "  deps = gcc",
            "rule link",
            f"  command = $cxx -shared $in -o $out -L{cuda_home / 'lib64'} "
            "-lcudart_static -ldl -lrt -lpthread",
        ]
        objects = []
        for source in sorted(ext.sources):
            source_path = ROOT / source
            if source_path.name in SM90A_ONLY_SOURCES and not with_sm90a:
                continue
            obj = build_dir / (source_path.name + ".o")
            if source_path.name in SM90A_ONLY_SOURCES:
                rule = "nvcc_sm90a"
            else:
                rule = "nvcc" if source_path.suffix == ".cu" else "cxx"
            lines.append(f"build {obj}: {rule} {source_path}")
            objects.append(str(obj))
        lines.append(f"build {output}: link {' '.join(objects)}")
        (build_dir / "build.ninja").write_text("\n".join(lines) + "\n")
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 2))
        subprocess.check_call([ninja, "-C", str(build_dir), "-j", jobs])


sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.c*")
                 if p.suffix in (".cu", ".cpp"))

setup(
    ext_modules=[Extension("fi_backend._C", sources=sources)],
    cmdclass={"build_ext": NinjaCudaBuild},
)
