"""Worker processes on this machine: generic, so they live in mrictl.backends.processes."""

from __future__ import annotations

from mrictl.backends.processes import (
    THREAD_VARIABLES,
    LocalWorkerProcesses,
    available_cores,
    worker_command,
    worker_environment,
)

__all__ = [
    "THREAD_VARIABLES",
    "LocalWorkerProcesses",
    "available_cores",
    "worker_command",
    "worker_environment",
]
