"""A calibrated GRAPPA kernel for every slice of a protocol: saved, loaded and checked.

`raki.grappa` fits and applies it; this module is what outlives one reconstruction (a file
that later frames of the same protocol reuse).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from raki.errors import FileFormatError, IncompatibleWeightsError, MissingFileError
from raki.scan import Scan

KernelSize = tuple[int, int]

_FORMAT_NAME = "raki-grappa-kernel"
# 2: one kernel per source pattern (ACS-adjacent lines have their own); 1 had lattice kernels only.
_FORMAT_VERSION = 2


@dataclass(frozen=True, eq=False)
class GrappaKernel:
    """Calibrated GRAPPA weights for every slice of a protocol, to save and apply again.

    `weights` is [slice, pattern, coil * readout * lines, coil] complex64, one kernel per source
    pattern in `patterns` [pattern, lines] (ky offsets of the sources from the target, 0 where
    a source is absent: `raki.grappa.source_patterns`); `regularization` holds the lambda each
    slice was fitted with. Apply to scans with the same coils, R, slices and matrix.
    """

    weights: np.ndarray
    patterns: np.ndarray
    acceleration: int
    kernel_size: KernelSize
    regularization: tuple[float, ...]
    num_coils: int
    matrix: tuple[int, int]
    acs_lines: int
    protocol: str = ""

    @property
    def num_slices(self) -> int:
        return int(self.weights.shape[0])

    def check_compatible(self, scan: Scan) -> None:
        """Raise IncompatibleWeightsError saying what differs when this kernel does not fit."""
        problems = []
        if scan.num_coils != self.num_coils:
            problems.append(f"{scan.num_coils} coils, kernel has {self.num_coils}")
        if scan.acceleration != self.acceleration:
            problems.append(f"R={scan.acceleration}, kernel has R={self.acceleration}")
        if scan.num_slices != self.num_slices:
            problems.append(f"{scan.num_slices} slices, kernel has {self.num_slices}")
        if scan.matrix != self.matrix:
            problems.append(
                f"matrix {scan.matrix[0]}x{scan.matrix[1]}, kernel has "
                f"{self.matrix[0]}x{self.matrix[1]}"
            )
        if problems:
            raise IncompatibleWeightsError(
                "GRAPPA kernel does not fit this scan: " + "; ".join(problems)
            )

    def save(self, path: str | Path) -> None:
        """Write the kernel to HDF5, atomically (a temporary file beside it, then a rename)."""
        path = Path(path)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(handle)
        try:
            with h5py.File(temporary, "w") as file:
                file.attrs["format"] = _FORMAT_NAME
                file.attrs["version"] = _FORMAT_VERSION
                file.attrs["acceleration"] = self.acceleration
                file.attrs["kernel_size"] = np.asarray(self.kernel_size, dtype=np.int64)
                file.attrs["num_coils"] = self.num_coils
                file.attrs["matrix"] = np.asarray(self.matrix, dtype=np.int64)
                file.attrs["acs_lines"] = self.acs_lines
                file.attrs["protocol"] = self.protocol
                file.create_dataset("weights", data=self.weights.astype(np.complex64))
                file.create_dataset("patterns", data=np.asarray(self.patterns, dtype=np.int64))
                file.create_dataset(
                    "regularization", data=np.asarray(self.regularization, dtype=np.float64)
                )
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> GrappaKernel:
        """Read a kernel written by `save`; FileFormatError names the file and what is wrong."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(path)
        try:
            with h5py.File(path, "r") as file:
                if file.attrs.get("format") != _FORMAT_NAME:
                    raise FileFormatError(path, "not a GRAPPA kernel file")
                version = int(file.attrs["version"])
                if version < _FORMAT_VERSION:
                    raise FileFormatError(
                        path, f"GRAPPA kernel format {version} is from an older release: fit again"
                    )
                if version != _FORMAT_VERSION:
                    raise FileFormatError(path, f"GRAPPA kernel format version {version} unknown")
                kernel = cls(
                    weights=np.asarray(file["weights"][()], dtype=np.complex64),
                    patterns=np.asarray(file["patterns"][()], dtype=np.int64),
                    acceleration=int(file.attrs["acceleration"]),
                    kernel_size=_as_pair(file.attrs["kernel_size"]),
                    regularization=tuple(float(v) for v in file["regularization"][()]),
                    num_coils=int(file.attrs["num_coils"]),
                    matrix=_as_pair(file.attrs["matrix"]),
                    acs_lines=int(file.attrs["acs_lines"]),
                    protocol=str(file.attrs["protocol"]),
                )
        except FileFormatError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as error:
            raise FileFormatError(
                path, f"unreadable GRAPPA kernel ({type(error).__name__})"
            ) from None
        expected = (
            kernel.patterns.shape[0],
            kernel.num_coils * kernel.kernel_size[0] * kernel.kernel_size[1],
            kernel.num_coils,
        )
        patterns = kernel.patterns
        lines_fit = patterns.ndim == 2 and patterns.shape[1] == kernel.kernel_size[1]
        if not lines_fit or kernel.weights.ndim != 4 or kernel.weights.shape[1:] != expected:
            raise FileFormatError(
                path, f"GRAPPA weights of shape {kernel.weights.shape} are corrupt"
            )
        if len(kernel.regularization) != kernel.num_slices:
            raise FileFormatError(path, "GRAPPA kernel has one lambda per slice missing")
        return kernel


def _as_pair(values: np.ndarray) -> tuple[int, int]:
    first, second = (int(v) for v in np.asarray(values).ravel())
    return first, second
