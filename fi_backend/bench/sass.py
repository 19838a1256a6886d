"""Instruction mix of the compiled attention kernels, from their SASS (issue 5: the Hopper
kernels must issue HGMMA, the warpgroup tensor-core instruction, not HMMA).

`cuobjdump -sass` prints one `Function : <mangled name>` section per kernel; the mix counts
the opcodes of interest in each section."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

OPCODES = ("HGMMA", "HMMA", "LDSM", "LDGSTS", "SYNCS", "MUFU.EX2")
"""Warpgroup MMA (sm90), warp MMA (sm80+), ldmatrix, cp.async, mbarrier ops, exp2."""

_FUNCTION = re.compile(r"Function\s*:\s*(\S+)")
_INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")


def instruction_mix(sass_text: str, name_filter: str = "") -> dict[str, dict[str, int]]:
    """{kernel mangled name: {opcode: count}} for the kernels whose name contains
    name_filter; an opcode counts every instruction that starts with it (HGMMA.64x128x16...)."""
    mix: dict[str, dict[str, int]] = {}
    current = None
    for line in sass_text.splitlines():
        function = _FUNCTION.search(line)
        if function:
            name = function.group(1)
            current = mix.setdefault(name, dict.fromkeys(OPCODES, 0)) if name_filter in name else None
            continue
        if current is None:
            continue
        instruction = _INSTRUCTION.search(line)
        if instruction:
            opcode = instruction.group(1)
            for wanted in OPCODES:
                if opcode == wanted or opcode.startswith(wanted + "."):
                    current[wanted] += 1
    return mix


def find_cuobjdump() -> str | None:
    """cuobjdump from PATH or CUDA_HOME, or None."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidate = Path(home) / "bin" / "cuobjdump"
    return str(candidate) if candidate.exists() else None


def extension_instruction_mix(extension_path: str | Path,
                              name_filter: str = "batch_attention") -> dict[str, dict[str, int]]:
    """The mix of the attention kernels in the built extension; raises RuntimeError when
    cuobjdump is missing or fails (the caller reports the check as skipped)."""
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        raise RuntimeError("cuobjdump not found (PATH, CUDA_HOME/bin)")
    result = subprocess.run([cuobjdump, "-sass", str(extension_path)], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass failed: {result.stderr.strip()[:200]}")
    return instruction_mix(result.stdout, name_filter)
