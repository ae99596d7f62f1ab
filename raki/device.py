"""Which torch device runs the networks: an explicit choice, never a global."""

from __future__ import annotations

import torch

from raki.errors import RakiError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" is CUDA when a GPU is visible, else CPU; "cuda" without a GPU is an error."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise RakiError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RakiError(f"device {name!r} was asked for but no CUDA GPU is available")
    return torch.device(name)
