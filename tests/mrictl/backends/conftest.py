"""The backends the contract suite holds to mrictl.backends.base: one entry each.

A new backend is done when `pytest tests/mrictl/backends` passes with its entry added to
BACKEND_FACTORIES; nothing else in the suite changes. An entry says how to open a fresh, empty
backend, how to corrupt a stored object behind the store's back (the suite checks that reads
notice), and which `mrictl` flags point the CLI at the same backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from mrictl.backends.base import Backend
from mrictl.backends.local import LocalBackend


@dataclass(frozen=True)
class BackendFactory:
    open: Callable[[Path], AbstractContextManager[Backend]]  # a fresh backend in a tmp folder
    corrupt: Callable[[Backend, str], None]  # change an object's bytes, not its recorded SHA-256
    cli_options: Callable[[Backend], list[str]]  # `mrictl ... OPTIONS` that reach this backend


@contextmanager
def make_local(tmp_path: Path) -> Iterator[LocalBackend]:
    yield LocalBackend(tmp_path / "home")


def corrupt_local(backend: LocalBackend, key: str) -> None:
    path = backend.store.path_of(key)
    path.write_bytes(b"bit rot: " + path.read_bytes()[::-1])


def local_cli_options(backend: LocalBackend) -> list[str]:
    return ["--backend", "local", "--home", str(backend.home)]


BACKEND_FACTORIES: dict[str, BackendFactory] = {
    "local": BackendFactory(make_local, corrupt_local, local_cli_options),
}


@pytest.fixture(params=list(BACKEND_FACTORIES))
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def backend_factory(backend_name: str) -> BackendFactory:
    return BACKEND_FACTORIES[backend_name]


@pytest.fixture
def backend(backend_factory: BackendFactory, tmp_path: Path) -> Iterator[Backend]:
    with backend_factory.open(tmp_path) as opened:
        yield opened


@pytest.fixture
def corrupt(backend: Backend, backend_factory: BackendFactory) -> Callable[[str], None]:
    """`corrupt(key)`: the object's bytes change behind the store's back."""
    return partial(backend_factory.corrupt, backend)


@pytest.fixture
def cli_options(backend: Backend, backend_factory: BackendFactory) -> list[str]:
    return backend_factory.cli_options(backend)
