"""One reconstruction of one scan, as `recon run` and the recon worker both perform it.

Prepares the scan (a fully sampled input is undersampled retrospectively and becomes its own
reference), reconstructs, scores against the reference when there is one, and writes the
fastMRI-style output. Nothing here knows about queues or the terminal.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mrictl.choices import check_cs_settings, check_method_and_device
from mrictl.errors import ExitCode, MrictlError
from raki.device import resolve_device
from raki.errors import InvalidScanError
from raki.fft import rss_image
from raki.io import read_scan
from raki.io.image_hdf5 import write_reconstruction
from raki.methods import (
    DEFAULT_METHOD,
    MethodChoice,
    ProgressCallback,
    ReconResult,
    default_method_for,
    reconstruct,
)
from raki.metrics import evaluate
from raki.scan import Scan, check_measured
from raki.train import TrainingConfig


@dataclass(frozen=True)
class ReconOptions:
    method: str | None = None  # None: the weights' method, else the library's default
    acceleration: int | None = None
    acs_lines: int | None = None
    device: str = "auto"
    iterations: int | None = None
    weights: Path | None = None
    # Methods also run and scored beside `method` when a reference is known (report, demo).
    compare: tuple[str, ...] = ()
    # TrainingConfig fields to change (`training_config`); "faithful": True starts from
    # the paper's configuration.
    training: dict[str, Any] = field(default_factory=dict)
    # How "cs" runs, alone or chosen by "auto": "wavelet" (the default),
    # "l1-wavelet" or "tikhonov"; its weight on the
    # k-space's scale (None: chosen per slice from the ACS noise level).
    cs_regularizer: str | None = None
    cs_weight: float | None = None
    # cs's image grid (raki.method_names.CS_GRIDS): None lets cs use "extended" (a scanner's
    # window of the spectrum) and auto test both on held-out lines.
    cs_grid: str | None = None

    def __post_init__(self) -> None:
        check_method_and_device(self.method, self.device)
        check_cs_settings(self.cs_regularizer, self.cs_weight, self.cs_grid)
        resolve_device(self.device)  # "cuda" without a GPU is refused for every method
        cs_given = any(
            value is not None for value in (self.cs_regularizer, self.cs_weight, self.cs_grid)
        )
        if cs_given and (self.method not in (None, "cs", "auto") or self.weights is not None):
            raise MrictlError(
                "--cs-regularizer, --cs-weight and --cs-grid apply to cs and auto only; "
                "leave them out",
                ExitCode.USAGE,
            )
        if self.weights is not None and (self.iterations is not None or self.training):
            raise MrictlError(
                "--weights applies saved networks: training flags (--iterations, "
                "--learning-rate, --faithful, ...) do not apply to them; leave them out",
                ExitCode.USAGE,
            )

    def training_config(self) -> TrainingConfig:
        return training_config(self.training)

    def method_settings(self) -> dict[str, Any]:
        """`raki.methods.reconstruct`'s keyword arguments for cs (the library's defaults when
        not given)."""
        settings: dict[str, Any] = {"cs_weight": self.cs_weight, "cs_grid": self.cs_grid}
        if self.cs_regularizer is not None:
            settings["regularizer"] = self.cs_regularizer
        return settings


def training_config(overrides: dict[str, Any]) -> TrainingConfig:
    """The library's TrainingConfig (or the paper's, with "faithful") with `overrides` set."""
    fields = dict(overrides)
    base = TrainingConfig.faithful() if fields.pop("faithful", False) else TrainingConfig()
    unknown = set(fields) - set(asdict(base))
    if unknown:
        raise MrictlError(
            f"unknown training settings: {', '.join(sorted(unknown))}", ExitCode.USAGE
        )
    config = replace(base, **fields)
    try:
        config.validate()
    except InvalidScanError as error:
        raise MrictlError(str(error), ExitCode.USAGE) from None
    except TypeError:
        message = "training settings have values of the wrong type"
        raise MrictlError(message, ExitCode.USAGE) from None
    return config


@dataclass
class Reconstruction:
    scan: Scan  # the (possibly retrospectively undersampled) input that was reconstructed
    result: ReconResult
    reference: np.ndarray | None
    metrics: dict[str, float] | None
    comparison: dict[str, dict[str, float]] = field(default_factory=dict)
    compared_images: dict[str, np.ndarray] = field(default_factory=dict)
    # Why the default method could not run and another did (raki.methods.default_method_for).
    fallback: str | None = None

    def attrs(self) -> dict[str, Any]:
        """What the output file and job record say about how the image was made.

        `selection` is what "auto" chose and why (`raki.selection.MethodSelection.as_dict`);
        `cs` how cs ran when it made the image (regulariser, weight rule, weights per slice,
        image grid).
        """
        details = self.result.details
        cs = None
        if self.result.method == "cs":
            cs = {
                key: details.get(key) for key in ("regularizer", "weight_rule", "weights", "grid")
            }
        return {
            "method": self.result.method,
            "acceleration": self.scan.acceleration,
            "acs_lines": self.scan.acs.lines if self.scan.acs is not None else 0,
            "coils": self.scan.num_coils,
            "matrix": list(self.scan.matrix),
            "timings": self.result.timings,
            "metrics": self.metrics,
            "comparison": self.comparison or None,
            "fallback": self.fallback,
            "selection": self.result.selection,
            "cs": cs,
        }


def prepare_scan(
    scan: Scan, acceleration: int | None, acs_lines: int | None
) -> tuple[Scan, np.ndarray | None]:
    """The scan to reconstruct and, for a fully sampled input, its reference RSS image.

    A zero-padded input (one block of lines, zeros either side) is fully sampled as far as it
    was acquired: its padding counts as measured zeros. All-zero k-space is refused
    (InvalidScanError): it would reconstruct as a blank image that looks like a result.
    """
    check_measured(scan)
    if scan.is_zero_padded:
        scan = scan.padding_as_measured()
    if scan.is_fully_sampled:
        if acceleration is None or acceleration < 2:
            raise MrictlError(
                "the input is fully sampled: give --accel R (and --acs N) to undersample it "
                "retrospectively and use it as its own reference",
                ExitCode.BAD_INPUT,
            )
        reference = rss_image(scan.kspace)
        return scan.undersampled(acceleration, 24 if acs_lines is None else acs_lines), reference
    if acceleration is not None and acceleration != scan.acceleration:
        raise MrictlError(
            f"the input is already undersampled at R={scan.acceleration}; "
            "--accel only applies to fully sampled inputs",
            ExitCode.BAD_INPUT,
        )
    acquired_acs = scan.acs.lines if scan.acs is not None else 0
    if acs_lines is not None and acs_lines != acquired_acs:
        raise MrictlError(
            f"the input is already undersampled with {acquired_acs} ACS lines; "
            "--acs only applies with --accel to fully sampled inputs",
            ExitCode.BAD_INPUT,
        )
    return scan, None


def reference_image_of(path: Path, scan: Scan) -> np.ndarray:
    """The RSS image of a fully sampled reference file that matches `scan`."""
    reference = read_scan(path)
    if reference.is_zero_padded:
        reference = reference.padding_as_measured()
    if not reference.is_fully_sampled:
        raise MrictlError(f"{path.name}: the reference must be fully sampled", ExitCode.BAD_INPUT)
    if reference.kspace.shape != scan.kspace.shape:
        raise MrictlError(
            f"{path.name}: reference shape {reference.kspace.shape} does not match the input "
            f"{scan.kspace.shape}",
            ExitCode.BAD_INPUT,
        )
    return rss_image(reference.kspace)


def run_reconstruction(
    scan: Scan,
    options: ReconOptions,
    *,
    reference: np.ndarray | None = None,
    progress: ProgressCallback | None = None,
) -> Reconstruction:
    """Reconstruct `scan` (undersampling it first if fully sampled) and score it if possible."""
    prepared, own_reference = prepare_scan(scan, options.acceleration, options.acs_lines)
    reference = own_reference if reference is None else reference
    extra: dict[str, Any] = {}
    choice = MethodChoice(options.method or DEFAULT_METHOD)
    if options.weights is not None:
        from raki.weights import RakiWeights

        extra["weights"] = RakiWeights.load(options.weights)
        choice = MethodChoice(options.method or extra["weights"].method)
        if choice.method != extra["weights"].method:
            raise MrictlError(
                f"{options.weights.name} holds {extra['weights'].method} networks: apply them "
                f"with --method {extra['weights'].method} (or leave --method out)",
                ExitCode.USAGE,
            )
    elif options.method is None:
        choice = default_method_for(prepared)
    method = choice.method
    start = time.perf_counter()
    result = reconstruct(
        prepared,
        method,
        device=options.device,
        iterations=options.iterations,
        progress=progress,
        config=options.training_config(),
        **options.method_settings(),
        **extra,
    )
    result.timings.setdefault("total_s", time.perf_counter() - start)
    metrics = evaluate(reference, result.image) if reference is not None else None
    done = Reconstruction(prepared, result, reference, metrics, fallback=choice.fallback_reason)
    if reference is not None:
        for other in options.compare:
            if other != result.method:
                compare_with(done, other, options)
    return done


def compare_with(done: Reconstruction, method: str, options: ReconOptions) -> None:
    """Reconstruct the same input with another method and score it beside the main result."""
    start = time.perf_counter()
    other = reconstruct(
        done.scan,
        method,
        device=options.device,
        iterations=options.iterations,
        config=options.training_config(),
        **options.method_settings(),
    )
    seconds = time.perf_counter() - start
    done.comparison[method] = {**evaluate(done.reference, other.image), "time_s": seconds}
    done.compared_images[method] = other.image


def reconstruct_file(
    source: Path,
    out: Path,
    options: ReconOptions,
    *,
    reference_path: Path | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """`mrictl recon run`: read, reconstruct, write the reconstruction HDF5, return a summary."""
    scan = read_scan(source)
    reference = reference_image_of(reference_path, scan) if reference_path else None
    done = run_reconstruction(scan, options, reference=reference, progress=progress)
    written = write_reconstruction(out, done.result.image, done.attrs())
    return {"input": source.name, "output": str(written), **done.attrs()}
