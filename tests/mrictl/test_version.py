"""`mrictl --version` names the git revision: read from .git in a checkout, from the file the
wheel's build wrote when installed, "unknown" when neither says."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

from mrictl import __version__
from mrictl import _build_hook as hook
from mrictl.revision import checkout_commit, git_revision, version_line
from tests.mrictl.cli_helpers import run_cli

REPOSITORY = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def git_head() -> str | None:
    git = shutil.which("git")
    if git is None or not (REPOSITORY / ".git").exists():
        return None
    completed = subprocess.run(
        [git, "-C", str(REPOSITORY), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return completed.stdout.strip() if completed.returncode == 0 else None


def test_version_from_this_checkout_names_its_head():
    head = git_head()
    if head is None:
        pytest.skip("not a git checkout, or no git to compare with")
    outcome = run_cli("--version")
    assert outcome.exit_code == 0 and outcome.stderr == ""
    assert outcome.stdout == f"mrictl {__version__} (git {head[:7]})\n"


def make_git_dir(checkout: Path, head: str, refs: dict[str, str], packed: str = "") -> Path:
    git_dir = checkout / ".git"
    (git_dir / "refs" / "heads").mkdir(parents=True)
    (git_dir / "HEAD").write_text(head + "\n")
    for name, commit in refs.items():
        (git_dir / name).write_text(commit + "\n")
    if packed:
        (git_dir / "packed-refs").write_text(packed)
    return git_dir


def test_a_branch_head_a_packed_ref_and_a_detached_head_are_read(tmp_path):
    loose = tmp_path / "loose"
    make_git_dir(loose, "ref: refs/heads/main", {"refs/heads/main": COMMIT})
    assert checkout_commit(loose) == COMMIT
    packed = tmp_path / "packed"
    listing = f"# pack-refs with: peeled\n{OTHER} refs/heads/other\n{COMMIT} refs/heads/main\n"
    make_git_dir(packed, "ref: refs/heads/main", {}, listing)
    assert checkout_commit(packed) == COMMIT
    detached = tmp_path / "detached"
    make_git_dir(detached, OTHER, {})
    assert checkout_commit(detached) == OTHER
    assert git_revision(detached) == OTHER[:7]


def test_a_worktree_finds_its_branch_in_the_main_repository(tmp_path):
    main = tmp_path / "main"
    git_dir = make_git_dir(main, "ref: refs/heads/main", {"refs/heads/topic": COMMIT})
    worktree_dir = git_dir / "worktrees" / "topic"
    worktree_dir.mkdir(parents=True)
    (worktree_dir / "HEAD").write_text("ref: refs/heads/topic\n")
    (worktree_dir / "commondir").write_text("../..\n")
    checkout = tmp_path / "topic"
    checkout.mkdir()
    (checkout / ".git").write_text(f"gitdir: {worktree_dir}\n")
    assert checkout_commit(checkout) == COMMIT


def test_no_git_a_broken_head_or_an_unborn_branch_give_none(tmp_path):
    assert checkout_commit(tmp_path) is None
    broken = tmp_path / "broken"
    make_git_dir(broken, "not a commit", {})
    assert checkout_commit(broken) is None
    unborn = tmp_path / "unborn"
    make_git_dir(unborn, "ref: refs/heads/main", {})
    assert checkout_commit(unborn) is None


def test_an_installed_wheel_reads_what_its_build_wrote(tmp_path, monkeypatch):
    assert git_revision(tmp_path) is None  # no checkout, no build file: unknown
    assert version_line("0.1.0", None) == "mrictl 0.1.0 (git unknown)"
    written = types.ModuleType("mrictl._build_info")
    exec(hook.build_info_source("abc1234-dirty"), written.__dict__)
    monkeypatch.setitem(sys.modules, "mrictl._build_info", written)
    assert git_revision(tmp_path) == "abc1234-dirty"
    assert version_line("0.1.0", git_revision(tmp_path)) == "mrictl 0.1.0 (git abc1234-dirty)"


def test_the_build_takes_the_revision_from_its_environment_then_from_the_checkout(tmp_path):
    given = {hook.ENVIRONMENT: f"{OTHER}-dirty"}  # as `mrictl image build` passes GIT_REVISION
    assert hook.build_revision(given, tmp_path) == f"{OTHER[:7]}-dirty"
    make_git_dir(tmp_path, "ref: refs/heads/main", {"refs/heads/main": COMMIT})
    assert hook.build_revision({hook.ENVIRONMENT: "unknown"}, tmp_path).startswith(COMMIT[:7])
    assert hook.build_revision({}, tmp_path / "nowhere") is None
    namespace: dict = {}
    exec(hook.build_info_source(None), namespace)
    assert namespace["GIT_REVISION"] is None


@pytest.mark.slow
def test_the_wheel_carries_the_revision_it_was_built_from(tmp_path):
    """A wheel built (as the image's builder stage builds it) from the sources alone."""
    try:
        if int(importlib.metadata.version("setuptools").split(".")[0]) < 68:
            pytest.skip("the venv's setuptools is too old to build without a download")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("no setuptools in the venv")
    sources = tmp_path / "src"
    sources.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "_build_info.py")
    for name in ("mrictl", "raki"):
        shutil.copytree(REPOSITORY / name, sources / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPOSITORY / name, sources / name)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet"]
    completed = subprocess.run(
        [*pip, "--wheel-dir", str(tmp_path / "wheels"), str(sources)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**_environment(), hook.ENVIRONMENT: COMMIT},
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    (wheel,) = (tmp_path / "wheels").glob("mrictl-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        source = archive.read("mrictl/_build_info.py").decode()
    namespace: dict = {}
    exec(source, namespace)
    assert namespace["GIT_REVISION"] == COMMIT[:7]
    assert not (sources / "mrictl" / "_build_info.py").exists()  # the build's, not the tree's


def _environment() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if key != hook.ENVIRONMENT}
