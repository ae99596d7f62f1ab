"""Files written under a hidden temporary name and renamed when whole, and their leftovers.

A writer that is killed leaves its temporary file behind. The name says which host and process
wrote it, so the next writer of the same file removes the leftovers of processes that are gone
(on this host) and any older than a day (another host's, on a shared folder), never the file a
live writer is still filling.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
import uuid
from pathlib import Path

STALE_AFTER_S = 24 * 3600.0
SUFFIX = ".partial"


def _host_tag() -> str:
    """A short tag for this host (its name hashed: a hostname can say whose workstation it is)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def partial_name(final: Path) -> Path:
    """A hidden name beside `final` that no listing or watcher mistakes for the file itself."""
    return final.with_name(
        f".{final.name}.{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
    )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def is_stale(partial: Path, *, now: float | None = None) -> bool:
    """Whether the writer of `partial` is gone: its process ended here, or it is over a day old."""
    tag = partial.name.removesuffix(SUFFIX).rsplit(".", 1)[-1]
    host, _, rest = tag.partition("-")
    pid_text = rest.partition("-")[0]
    ours = host == _host_tag() and pid_text.isdigit() and int(pid_text) != os.getpid()
    if ours and not _process_alive(int(pid_text)):
        return True
    try:
        age = (now or time.time()) - partial.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_AFTER_S


def remove_stale_partials(final: Path) -> int:
    """Remove the stale temporary files of `final`; returns how many went."""
    removed = 0
    for partial in final.parent.glob(f".{final.name}.*{SUFFIX}"):
        if is_stale(partial):
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
                removed += 1
    return removed
