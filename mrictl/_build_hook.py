"""The wheel's build step that records the git revision (pyproject: tool.setuptools.cmdclass).

An installed wheel has no .git beside it, so `mrictl --version` reads mrictl/_build_info.py,
written here into the build (never into the source tree; .gitignore names it for safety).
The revision comes from $MRICTL_GIT_REVISION where set (the image's builder stage gets the
checkout without .git: `mrictl image build` passes it), else from the checkout being built.
setuptools loads this file by its path, without the mrictl package: it imports only setuptools
and its sibling revision.py, by path too.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

from setuptools.command.build_py import build_py

BUILD_INFO = "_build_info.py"
ENVIRONMENT = "MRICTL_GIT_REVISION"
_GIVEN = re.compile(r"([0-9a-f]{7,64})(-dirty)?")


def _revision_module():
    spec = importlib.util.spec_from_file_location(
        "_mrictl_revision", Path(__file__).with_name("revision.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dirty(checkout: Path) -> bool:
    """Whether the work tree differs from HEAD (the build is allowed a git process)."""
    git = shutil.which("git")
    if git is None:
        return False
    try:
        completed = subprocess.run(
            [git, "-C", str(checkout), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return completed.returncode == 0 and bool(completed.stdout.strip())


def build_revision(environ: dict[str, str], checkout: Path) -> str | None:
    """`abc1234` (or `abc1234-dirty`) for the wheel being built; None when nothing says."""
    revision = _revision_module()
    given = _GIVEN.fullmatch(environ.get(ENVIRONMENT, "").strip())
    if given:
        return revision.short_revision(given.group(1), dirty=bool(given.group(2)))
    commit = revision.checkout_commit(checkout)
    return revision.short_revision(commit, _dirty(checkout)) if commit else None


def build_info_source(git_revision: str | None) -> str:
    return (
        '"""Written by the wheel\'s build (mrictl/_build_hook.py): the revision it was built '
        'from."""\n\n'
        f"GIT_REVISION: str | None = {git_revision!r}\n"
    )


class BuildPyWithRevision(build_py):
    """build_py, then mrictl/_build_info.py in the build; an editable install reads .git."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        checkout = Path(__file__).resolve().parent.parent
        target = Path(self.build_lib) / "mrictl" / BUILD_INFO
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(build_info_source(build_revision(dict(os.environ), checkout)))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        return [*outputs, str(Path(self.build_lib) / "mrictl" / BUILD_INFO)]
