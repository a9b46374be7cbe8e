"""Describe the machine a measurement ran on (CPU model, cores, GPU, package versions).

Benchmarks and the model evaluation name the machine honestly in every result file.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "monai", "numpy", "pydicom", "onnxruntime")


def machine_info() -> dict[str, Any]:
    """CPU model, usable cores, GPU (``None`` for a CPU run), Python and package versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 0
    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "cpu": cpu,
        "cores": cores,
        "gpu": _gpu_name(),
        "python": platform.python_version(),
        "packages": packages,
    }


def _gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
