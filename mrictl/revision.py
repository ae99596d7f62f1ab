"""The git revision this mrictl was built from, for `mrictl --version` and bug reports.

From a checkout it is read at run time from .git (HEAD and the ref it names: two small files,
no git process, so `--version` stays instant); an installed wheel carries it in
mrictl/_build_info.py, which its build wrote (mrictl/_build_hook.py). Neither: None.
"""

from __future__ import annotations

import re
from pathlib import Path

SHORT = 7  # as `git rev-parse --short` writes it on a small repository
_COMMIT = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")  # SHA-1, or SHA-256 repositories
CHECKOUT = Path(__file__).resolve().parent.parent


def short_revision(commit: str, dirty: bool = False) -> str:
    return commit[:SHORT] + ("-dirty" if dirty else "")


def _git_dir(checkout: Path) -> Path | None:
    dot_git = checkout / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():  # a worktree or a submodule: "gitdir: PATH"
        text = dot_git.read_text(encoding="utf-8").strip()
        if text.startswith("gitdir:"):
            return (checkout / text.removeprefix("gitdir:").strip()).resolve()
    return None


def _ref_commit(common_dir: Path, ref: str) -> str | None:
    loose = common_dir / ref
    if loose.is_file():
        return loose.read_text(encoding="utf-8").strip()
    packed = common_dir / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(encoding="utf-8").splitlines():
            commit, _, name = line.partition(" ")
            if name == ref:
                return commit
    return None


def checkout_commit(checkout: Path = CHECKOUT) -> str | None:
    """HEAD's full commit of the git checkout at `checkout`; None where there is none."""
    try:
        git_dir = _git_dir(checkout)
        if git_dir is None:
            return None
        head = (git_dir / "HEAD").read_text(encoding="utf-8").strip()
        if head.startswith("ref:"):
            common = git_dir
            if (git_dir / "commondir").is_file():  # a worktree keeps its refs in the main .git
                common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
            ref = head.removeprefix("ref:").strip()
            head = _ref_commit(git_dir, ref) or _ref_commit(common, ref) or ""
    except (OSError, UnicodeDecodeError):
        return None
    return head if _COMMIT.fullmatch(head) else None


def git_revision(checkout: Path = CHECKOUT) -> str | None:
    """`abc1234` from the checkout, else what the wheel's build recorded, else None."""
    commit = checkout_commit(checkout)
    if commit is not None:
        return short_revision(commit)
    try:
        from mrictl._build_info import GIT_REVISION  # written by the build; absent in a checkout
    except ImportError:
        return None
    return GIT_REVISION


def version_line(version: str, revision: str | None) -> str:
    return f"mrictl {version} (git {revision or 'unknown'})"
