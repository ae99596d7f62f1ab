"""Shared fixtures: the real data folder (optional) and small, seeded phantom files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """../shared/data beside the checkout, or $MRICTL_SHARED_DATA; may not exist."""
    explicit = os.environ.get("MRICTL_SHARED_DATA")
    return Path(explicit) if explicit else (REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    folder = shared_data_dir()
    if not folder.is_dir():
        pytest.skip("real data folder ../shared/data is absent")
    return folder


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own MRICTL_HOME and XDG dirs: nothing touches the user's files."""
    root = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("MRICTL_HOME", str(root / "mrictl"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(root / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(root / "data"))
    monkeypatch.delenv("MRICTL_CONFIG", raising=False)
    monkeypatch.delenv("MRICTL_DEBUG", raising=False)
    return root / "mrictl"


@pytest.fixture(scope="session", autouse=True)
def _stop_session_moto():
    """Stop the session's shared moto server (tests.mrictl.backends.conftest.SessionMoto) when
    the session ends, whichever tests started it (tests/aws uses it too): left to the
    interpreter's exit, its shutdown waits on a server thread that no longer runs, forever."""
    yield
    shared = sys.modules.get("tests.mrictl.backends.conftest")
    if shared is not None:
        shared.SessionMoto.stack.close()
