"""Backends behind one interface (base.py): `local` (folder + SQLite) and, later, `aws`."""

from __future__ import annotations

from mrictl.config import Settings
from mrictl.errors import ExitCode, MrictlError


def open_backend(settings: Settings):
    """The backend the settings name, ready to use."""
    if settings.backend == "local":
        from mrictl.backends.local import LocalBackend

        return LocalBackend(settings.home, max_attempts=settings.max_attempts)
    raise MrictlError(
        f"the {settings.backend!r} backend is not available in this version; use --backend local",
        ExitCode.BACKEND,
    )
