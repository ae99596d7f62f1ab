"""One rule for a path given where a scan file is expected, checked before anything reads it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from raki.errors import FileFormatError, MissingFileError, NotAFileError


def check_input_file(path: str | Path) -> Path:
    """`path` as a Path when it names a readable regular file (a link to one counts).

    Missing: MissingFileError ("no such file"); a folder: NotAFileError ("is a folder, not a
    file"); a device, FIFO or socket: NotAFileError ("is not a regular file"), decided from
    `stat` alone, because opening a FIFO blocks and /dev/zero reads without end; a file that
    cannot be opened: FileFormatError ("cannot be read (...)"). Messages name the base name only.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise MissingFileError(path) from None
    except OSError as error:
        raise FileFormatError(path, f"cannot be read ({error.strerror or error})") from None
    if stat.S_ISDIR(mode):
        raise NotAFileError(path, "is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise NotAFileError(path, "is not a regular file")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise FileFormatError(path, "cannot be read (permission denied)") from None
    except OSError as error:
        raise FileFormatError(path, f"cannot be read ({error.strerror or error})") from None
    return path
