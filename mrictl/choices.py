"""Method and device names checked before any work, without importing the science (torch).

A typo must fail at once, not after a file was read or a job waited in the queue; `recon
submit` and `upload` check here, so they start without loading torch.
"""

from __future__ import annotations

from mrictl.errors import ExitCode, MrictlError
from raki.device_names import DEVICES, is_device_name
from raki.method_names import CS_GRIDS, CS_REGULARIZERS, METHODS


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


def check_cs_settings(
    regularizer: str | None, weight: float | None, grid: str | None = None
) -> None:
    """A usage error for a regulariser or grid that does not exist or a negative weight."""
    if regularizer is not None and regularizer not in CS_REGULARIZERS:
        raise MrictlError(
            f"unknown cs regularizer {regularizer!r}; choose one of {', '.join(CS_REGULARIZERS)}",
            ExitCode.USAGE,
        )
    if weight is not None and not weight >= 0:
        raise MrictlError(f"--cs-weight must be >= 0, got {weight}", ExitCode.USAGE)
    if grid is not None and grid not in CS_GRIDS:
        raise MrictlError(
            f"unknown cs grid {grid!r}; choose one of {', '.join(CS_GRIDS)}", ExitCode.USAGE
        )
