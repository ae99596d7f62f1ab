"""Print a wheel's requirements, less torch, one a line: what the cpu image installs.

    python cpu_requirements.py dist/mrictl-0.1.0-py3-none-any.whl > requirements-cpu.txt

The list comes from the wheel's own metadata, so it follows pyproject.toml without a copy to
keep in step; optional extras are left out and environment markers are kept for pip to judge.
"""

from __future__ import annotations

import re
import sys
import zipfile
from email.parser import Parser

LEFT_OUT = frozenset({"torch"})  # the preprocess stage never imports it
EXTRA = re.compile(r"\bextra\s*==")


def requirement_name(requirement: str) -> str:
    """The normalised project name a requirement line starts with (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def wheel_requirements(wheel: str) -> list[str]:
    """The wheel's Requires-Dist lines that are not optional extras."""
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(archive.read(metadata).decode("utf-8"))
    required = message.get_all("Requires-Dist") or []
    return [line for line in required if not EXTRA.search(line.partition(";")[2])]


def cpu_requirements(wheel: str) -> list[str]:
    return [line for line in wheel_requirements(wheel) if requirement_name(line) not in LEFT_OUT]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: cpu_requirements.py WHEEL", file=sys.stderr)
        return 2
    for line in cpu_requirements(argv[0]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
