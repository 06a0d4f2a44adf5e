"""The machine a result came from: CPU model, vector extensions and core count, for every result file."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The extensions that change which code runs (the fused kernel's paths, oneDNN's) and so the floating-point order.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16")


def cpu(info: Path = Path("/proc/cpuinfo")) -> dict:
    """`{"model": "AMD EPYC ...", "family": "25/17", "flags": ["avx2", "fma"], "cpus": 2}` from /proc/cpuinfo (else
    `platform`). `family` is CPUID's family/model pair: VMs often name only "AMD EPYC", and an AVX2-only EPYC and
    one with AVX-512 (Zen 4, 25/17) differ in it (and in the flags)."""
    model, flags, ids = platform.processor() or platform.machine() or "unknown", set(), {}
    for line in info.read_text().splitlines() if info.exists() else []:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() in ("cpu family", "model"):
            ids.setdefault(key.strip(), value.strip())  # The first CPU's; every vCPU of a VM reports the same.
        elif key.strip() == "flags":
            flags = set(value.split())
    return {"model": model, "family": "/".join(ids[k] for k in ("cpu family", "model") if k in ids) or None,
            "flags": [f for f in VECTOR_FLAGS if f in flags], "cpus": os.cpu_count()}


def cpu_name(info: Path = Path("/proc/cpuinfo")) -> str:
    """One line: `AMD EPYC 7B13 (family 25/1; avx2, fma; 2 CPUs)`."""
    c = cpu(info)
    family = f"family {c['family']}; " if c["family"] else ""
    return f"{c['model']} ({family}{', '.join(c['flags']) or 'no AVX2'}; {c['cpus']} CPUs)"


def write_result(path, module: str, **fields) -> None:
    """A result file: the command that wrote it (`python -m MODULE ARGS`), the CPU, then `fields`."""
    import json
    import sys

    record = {"command": f"python -m {module} " + " ".join(sys.argv[1:]), "cpu": cpu(), "cpu_name": cpu_name(),
              **fields}
    Path(path).write_text(json.dumps(record, indent=2) + "\n")
