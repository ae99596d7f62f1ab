"""The compute device names `raki.device.resolve_device` understands, checked without torch."""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")


def is_device_name(name: str) -> bool:
    """ "auto", "cpu", "cuda" or "cuda:N": what `resolve_device` understands."""
    return name in DEVICES or (name.startswith("cuda:") and name[5:].isdigit())
