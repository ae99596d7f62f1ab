"""Trained RAKI networks with what they were trained on, saved once and applied to later scans.

A file holds, per slice, the fused networks' state dict and the scale the ACS was divided by,
plus metadata: method, R, ACS block, coils, matrix, hyperparameters, loss curves, the sha256 of
the training k-space and the library version. rRAKI weights also carry the GRAPPA kernel whose
prediction they are blended with. Files are written atomically (a temporary file
in the same folder, then os.replace) and read with `torch.load(weights_only=True)`, which
unpickles tensors and plain containers only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from raki import __version__
from raki.errors import FileFormatError, IncompatibleWeightsError
from raki.grappa import GrappaKernel
from raki.io.paths import check_input_file
from raki.oversampling import crop_readout
from raki.scan import Scan

FORMAT = "raki-weights"
# 2: the rRAKI GRAPPA kernel holds one kernel per source pattern (raki.grappa_kernel).
FORMAT_VERSION = 2


def kspace_sha256(kspace: np.ndarray) -> str:
    """Checksum of the k-space bytes (complex64, C order), to tell which data trained a file."""
    data = np.ascontiguousarray(kspace, dtype=np.complex64)
    return hashlib.sha256(data.tobytes()).hexdigest()


@dataclass
class RakiWeights:
    """The networks of every slice of one scan and the facts needed to apply them safely."""

    method: str
    acceleration: int
    num_coils: int
    matrix: tuple[int, int]
    acs_lines: int
    state_dicts: list[dict[str, torch.Tensor]]
    scales: list[float]
    hyperparameters: dict[str, object] = field(default_factory=dict)
    loss_curves: list[list[float]] = field(default_factory=list)
    input_sha256: str = ""
    library_version: str = __version__
    train_seconds: float = 0.0
    grappa: GrappaKernel | None = None
    # SVD coil compression (raki.coils): per-slice bases [slice, physical, virtual] complex64;
    # the networks then read and predict the virtual coils. None: trained on the physical coils.
    coil_bases: np.ndarray | None = None

    @property
    def num_slices(self) -> int:
        return len(self.state_dicts)

    def metadata(self) -> dict[str, object]:
        """Everything but the tensors, for logs, manifests and `--json`."""
        return {
            "method": self.method,
            "acceleration": self.acceleration,
            "num_coils": self.num_coils,
            "matrix": list(self.matrix),
            "num_slices": self.num_slices,
            "acs_lines": self.acs_lines,
            "scales": list(self.scales),
            "hyperparameters": dict(self.hyperparameters),
            "final_losses": [curve[-1] if curve else None for curve in self.loss_curves],
            "input_sha256": self.input_sha256,
            "library_version": self.library_version,
            "train_seconds": self.train_seconds,
            "grappa_kernel_size": list(self.grappa.kernel_size) if self.grappa else None,
            "grappa_regularization": list(self.grappa.regularization) if self.grappa else None,
            "virtual_coils": None if self.coil_bases is None else int(self.coil_bases.shape[2]),
        }

    def check_compatible(self, scan: Scan, method: str) -> None:
        """Raise IncompatibleWeightsError naming the first thing that does not fit `scan`.

        The networks are convolutions, so for `raki` the ky size and the lattice phase may
        differ from the training scan; the method, coils, R, slice count and readout size may
        not. `rraki` weights also hold the GRAPPA kernel of their training scan, whose patterns
        (lines beside the ACS, ky edges) belong to its mask: they need the same matrix too.
        """
        problems = [
            (method != self.method, f"they were trained for {self.method!r}, not {method!r}"),
            (
                scan.num_coils != self.num_coils,
                f"they expect {self.num_coils} coils, the scan has {scan.num_coils}",
            ),
            (
                scan.acceleration != self.acceleration,
                f"they were trained at R={self.acceleration}, the scan has R={scan.acceleration}",
            ),
            (
                scan.num_slices != self.num_slices,
                f"they hold {self.num_slices} slice(s), the scan has {scan.num_slices}",
            ),
            (
                scan.matrix[0] != self.matrix[0],
                f"they were trained on {self.matrix[0]} readout points, the scan has "
                f"{scan.matrix[0]}",
            ),
        ]
        for failed, reason in problems:
            if failed:
                raise IncompatibleWeightsError(f"weights do not fit this scan: {reason}")
        if self.grappa is not None:
            self.grappa.check_compatible(self.network_scan(scan))

    @property
    def readout_oversampling(self) -> float:
        """The readout oversampling removed before training (1.0: the full readout)."""
        return float(self.hyperparameters.get("readout_oversampling") or 1.0)

    def network_scan(self, scan: Scan) -> Scan:
        """`scan` as the networks (and the GRAPPA kernel) saw it: its oversampling removed."""
        return crop_readout(scan, self.readout_oversampling)

    def save(self, path: str | Path) -> Path:
        """Write the weights atomically to `path`; returns the path."""
        path = Path(path)
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **{
                item.name: getattr(self, item.name)
                for item in dataclasses.fields(self)
                if item.name not in ("state_dicts", "matrix", "grappa", "coil_bases")
            },
            "matrix": list(self.matrix),
            "state_dicts": [
                {name: tensor.detach().cpu() for name, tensor in state.items()}
                for state in self.state_dicts
            ],
            "grappa": _grappa_to_payload(self.grappa) if self.grappa is not None else None,
            "coil_bases": None
            if self.coil_bases is None
            else torch.from_numpy(np.ascontiguousarray(self.coil_bases)),
        }
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                torch.save(payload, stream)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> RakiWeights:
        """Read weights written by `save`; FileFormatError if the file is not such a file."""
        path = Path(path)
        check_input_file(path)  # the one rule for missing files, folders and devices
        _check_archive(path)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for corrupt or foreign files
            raise FileFormatError(
                path, f"not a readable weights file ({type(error).__name__})"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise FileFormatError(path, "not a raki weights file")
        version = payload.get("format_version")
        if isinstance(version, int) and version < FORMAT_VERSION:
            raise FileFormatError(
                path, f"weights format {version} is from an older release: train again"
            )
        if version != FORMAT_VERSION:
            raise FileFormatError(
                path, f"weights format version {payload.get('format_version')} is not supported"
            )
        try:
            weights = cls(
                method=str(payload["method"]),
                acceleration=int(payload["acceleration"]),
                num_coils=int(payload["num_coils"]),
                matrix=(int(payload["matrix"][0]), int(payload["matrix"][1])),
                acs_lines=int(payload["acs_lines"]),
                state_dicts=list(payload["state_dicts"]),
                scales=[float(scale) for scale in payload["scales"]],
                hyperparameters=dict(payload["hyperparameters"]),
                loss_curves=[list(curve) for curve in payload["loss_curves"]],
                input_sha256=str(payload["input_sha256"]),
                library_version=str(payload["library_version"]),
                train_seconds=float(payload["train_seconds"]),
                grappa=_grappa_from_payload(payload["grappa"]) if payload["grappa"] else None,
                coil_bases=_bases_from_payload(payload.get("coil_bases")),
            )
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise FileFormatError(path, f"weights file lacks or garbles {error}") from None
        problem = weights.inconsistency()
        if problem:
            raise FileFormatError(path, f"damaged weights file: {problem}")
        return weights

    def inconsistency(self) -> str | None:
        """What does not add up between the networks and what the file says of them (a
        hand-edited or damaged file), or None; applying such weights would fail or give NaN."""
        from raki.model import build_networks

        slices = len(self.state_dicts)
        if slices == 0 or len(self.scales) != slices:
            return f"{slices} slices of networks but {len(self.scales)} scales"
        if self.method not in ("raki", "rraki") or self.acceleration < 2:
            return f"method {self.method!r} at R={self.acceleration}"
        coils = self.num_coils if self.coil_bases is None else int(self.coil_bases.shape[2])
        try:
            hidden = tuple(int(size) for size in self.hyperparameters.get("hidden", (32, 8)))
            expected = build_networks(self.method, coils, self.acceleration, hidden).state_dict()
        except (TypeError, ValueError, RuntimeError) as error:
            return f"networks that cannot be built ({error})"
        for index, state in enumerate(self.state_dicts):
            if not isinstance(state, dict) or set(state) != set(expected):
                return f"slice {index}'s networks are not {self.method}'s layers"
            for name, tensor in state.items():
                if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[name].shape:
                    return f"slice {index}'s {name} has the wrong shape"
                if not torch.isfinite(tensor).all():
                    return f"slice {index}'s {name} holds non-finite values"
        if not all(np.isfinite(self.scales)) or min(self.scales) <= 0:
            return "a slice scale that is not a positive number"
        return None


def _check_archive(path: Path) -> None:
    """FileFormatError when the zip archive that torch.save writes fails its CRC checks: torch
    itself reads a flipped byte in a tensor without noticing, and the image turns to NaN."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except zipfile.BadZipFile:
        return  # not a zip: torch.load below says what it is
    except (OSError, RuntimeError, NotImplementedError) as error:
        raise FileFormatError(path, f"cannot be checked ({type(error).__name__})") from None
    if damaged is not None:
        raise FileFormatError(path, "corrupt weights file: a stored tensor fails its checksum")


def _grappa_to_payload(kernel: GrappaKernel) -> dict[str, object]:
    """A GRAPPA kernel as tensors and plain values, which `torch.load(weights_only=True)` reads."""
    payload: dict[str, object] = {}
    for item in dataclasses.fields(kernel):
        value = getattr(kernel, item.name)
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        elif isinstance(value, tuple):
            value = list(value)
        payload[item.name] = value
    return payload


def _grappa_from_payload(payload: dict[str, object]) -> GrappaKernel:
    values = {}
    for name, value in payload.items():
        if isinstance(value, torch.Tensor):
            value = value.numpy()
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return GrappaKernel(**values)


def _bases_from_payload(value: object) -> np.ndarray | None:
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or value.ndim != 3 or not value.is_complex():
        raise TypeError("coil_bases")
    return value.numpy().astype(np.complex64)
