"""The one table of exit codes, and the error type that carries one.

Scripts rely on these numbers: they are documented in docs/exit-codes.md and never reused.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # a bug: please report it (the message says where the log is)
    USAGE = 2  # bad flags or arguments (typer/click's own code)
    BAD_INPUT = 3  # a file or scan that cannot be read or reconstructed as given
    NOT_FOUND = 4  # no such job, scan, file or weights
    JOB_FAILED = 5  # the job ran and failed, or was dead-lettered or cancelled
    CONFLICT = 6  # the request does not fit the current state (e.g. cancel a finished job)
    BACKEND = 7  # the backend (store, queue, cloud) is unreachable or misconfigured
    TIMEOUT = 8  # --wait / watch gave up before the job finished
    DELIVERY = 9  # the DICOM node (PACS) did not answer, or did not accept every instance
    CHECK_FAILED = 10  # `mrictl doctor` found a failing check (each is a line with a hint)
    INTERRUPTED = 130  # Ctrl-C


class MrictlError(Exception):
    """A user-facing failure: one line of message, one exit code. Never a traceback."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.BAD_INPUT) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = ExitCode(exit_code)

    def __str__(self) -> str:
        return self.message
