"""Which torch device runs the networks (an explicit choice, never a global), and what it has."""

from __future__ import annotations

from pathlib import Path

import torch

from raki.device_names import DEVICES, is_device_name
from raki.errors import DeviceUnavailableError


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" is CUDA when a GPU is visible, else CPU; "cuda" without a GPU is an error."""
    if not is_device_name(name):
        raise DeviceUnavailableError(
            f"unknown device {name!r}; choose one of {', '.join(DEVICES)} (or cuda:N)"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device {name!r} was asked for but no CUDA GPU is available; use --device cpu or auto"
        )
    return torch.device(name)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags Linux reports for the first CPU (empty elsewhere)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def has_native_bf16(device: torch.device) -> bool:
    """True where bf16 matrix products run in hardware: a CUDA GPU that supports bf16, or an
    x86 CPU with AVX-512 BF16 or AMX. Elsewhere oneDNN emulates bf16, 5-10x slower than fp32
    on the AVX2 build machine (docs/benchmarks.md)."""
    if device.type == "cuda":
        # Pre-Ampere GPUs emulate bf16; only compute capability 8.0 and later have it in hardware.
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return not cpu_flags().isdisjoint({"avx512_bf16", "amx_bf16"})
    return False
