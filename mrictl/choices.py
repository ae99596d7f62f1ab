"""Method and device names checked before any work, without importing the science (torch).

A typo must fail at once, not after a file was read or a job waited in the queue; `recon
submit` and `upload` check here, so they start without loading torch.
"""

from __future__ import annotations

from mrictl.errors import ExitCode, MrictlError
from raki.device_names import DEVICES, is_device_name
from raki.method_names import METHODS


def check_method_and_device(
    method: str | None, device: str, methods: tuple[str, ...] = METHODS
) -> None:
    """A usage error for a method or device name that does not exist, checked before any file
    is read (a typo must not cost a training run), whichever method runs."""
    if method is not None and method not in methods:
        raise MrictlError(
            f"unknown method {method!r}; choose one of {', '.join(methods)}", ExitCode.USAGE
        )
    if not is_device_name(device):
        raise MrictlError(
            f"unknown device {device!r}; choose one of {', '.join(DEVICES)} (or cuda:N)",
            ExitCode.USAGE,
        )
