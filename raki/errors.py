"""Exceptions the library raises; the CLI maps them to messages and exit codes."""

from __future__ import annotations

from pathlib import Path


class RakiError(Exception):
    """Base of every error the library raises on purpose (bad input, not bugs)."""


class InvalidScanError(RakiError, ValueError):
    """The k-space, mask or ACS of a scan cannot be reconstructed as given."""


class FileFormatError(RakiError):
    """A file is missing, corrupt, truncated or not in a format we read.

    The message always names the file (by its base name, never the directory, which may
    carry patient names) and says what is wrong, on one line.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        # "." or "..": the folder's own name (still a base name), never an empty one.
        name = self.path.name or self.path.resolve().name or str(self.path)
        super().__init__(f"{name}: {reason}")


class MissingFileError(FileFormatError):
    """The file named does not exist (scripts tell this apart from a file that is bad)."""

    def __init__(self, path: str | Path, reason: str = "no such file") -> None:
        super().__init__(path, reason)


class NotAFileError(FileFormatError):
    """The path names a folder, a device, a FIFO or a socket where a scan file is expected.

    A usage error rather than a bad file: nothing was read (a FIFO would block the reader, a
    device would be read without end), and the fix is to name a file.
    """


class DeviceUnavailableError(RakiError):
    """The compute device asked for is unknown or absent on this machine."""


class IncompatibleWeightsError(RakiError, ValueError):
    """Saved networks or kernels do not fit the scan they are applied to."""
