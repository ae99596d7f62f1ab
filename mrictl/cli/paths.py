"""Checks on the files a command is asked to write, before any work is done.

Every writer replaces its target atomically, which makes a target that names the command's
own input dangerous: `recon run scan.h5 --out scan.h5` would succeed and leave the raw k-space
gone. So a command names its inputs, and an output that is one of them, or a folder, is
refused as a usage error before anything is read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from mrictl.errors import ExitCode, MrictlError

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)  # follows links: a link to the input counts
    except OSError:
        return first.resolve() == second.resolve()  # one of them does not exist (yet)


def check_output(out: Path, inputs: Iterable[Path | None], flag: str = "--out") -> None:
    """MrictlError (usage) when `out` is a folder or the same file as one of `inputs`."""
    if out.is_dir():
        raise MrictlError(
            f"{out.name}: is a folder; {flag} names the file to write", ExitCode.USAGE
        )
    for given in inputs:
        if given is not None and _same_file(out, given):
            raise MrictlError(
                f"{out.name}: {flag} is also an input of this command; writing it would "
                "replace that input: choose another file name",
                ExitCode.USAGE,
            )


def check_hdf5_output(out: Path, flag: str = "--out") -> None:
    """MrictlError (usage) unless `out` has an HDF5 suffix: a reconstruction named `.dcm` or
    `.nii` would otherwise be an HDF5 file under a misleading name."""
    if out.suffix.lower() not in HDF5_SUFFIXES:
        raise MrictlError(
            f"{out.name}: {flag} writes an HDF5 file: name it {' or '.join(HDF5_SUFFIXES[:2])} "
            "(DICOM, NIfTI and PNG: `mrictl recon submit`, then `mrictl fetch --format`)",
            ExitCode.USAGE,
        )
