"""Apply a reconstruction method to a Scan: fill the skipped lines, keep the acquired ones, combine.

The one entry point every caller (CLI, workers, benchmarks) uses. Methods:

- "raki": RAKI as published (Akcakaya et al., MRM 2019), one CNN per coil and real/imaginary
  part, trained on the ACS (`raki.model`, `raki.train`).
- "rraki": residual RAKI (Zhang et al., NeuroImage 2022), a linear kernel plus
  the CNN on its residual, whose prediction is averaged with our GRAPPA's (`grappa_share`
  0.5). The two err differently: on noisy data RAKI-type networks amplify noise less into the
  RSS image's structure but overshoot its noise floor, regularised GRAPPA shrinks towards zero;
  on clean data GRAPPA is hard to beat and the average keeps its accuracy. On the quality grid
  of docs/benchmarks.md (19 cases: shared sets at R = 3-6, noisy phantoms; 1000 iterations) it
  beats our GRAPPA on all 19 (0.66-0.99x its NMSE; the closest, a 64x64 prescan at R = 5
  with 20 ACS lines, since its linear branch learns slower where the ACS underdetermines it,
  `raki.linear_branch.linear_rate_scale`). Choosing the share by held-out ACS error was
  tried and rejected: the ACS is the high-signal centre, so its held-out error misses the
  noise that decides the image on noisy data (it picked share ~1 where 0.5 is best).
- "auto" (the default): per scan, cs or GRAPPA, whichever predicts held-out ACS lines better
  on the central slice (`raki.selection`); the choice, each candidate's held-out error and
  the time it took are in `ReconResult.selection`.
- "grappa": `raki.grappa`; "zerofill": the floor.
- "cs": regularised SENSE with ESPIRiT maps (`raki.espirit`, `raki.sense`): wavelet
  compressed sensing by default (p-shrinkage; the classic L1 as "l1-wavelet"), Tikhonov
  CG-SENSE on request, the weight chosen per slice from the ACS noise level; the image
  brought back to coil k-space through the maps.
- "ssdu": zero-shot self-supervised SSDU (Yaman et al., ICLR 2022; `raki.zero_shot`,
  `raki.unrolled`): a small unrolled network (residual CNN + CG-SENSE with the ESPIRiT maps)
  trained on the scan's own acquired samples, started from cs; opt-in (docs/benchmarks.md,
  "Zero-shot SSDU"). `iterations` caps its epochs.

RAKI and rRAKI run their networks on the lattice of acquired lines only (the ky dilation R of
training becomes dilation 1), so inference computes just the positions that are missing. The
lattice is extended by one line before and two after the k-space with zeros, so that lines near
the ky ends, whose lattice neighbours fall outside, are still predicted; the readout is
zero-padded by 3 points each side ('same' along kx). For "rraki" those predictions that read
padding (`blind_spots`) are replaced by GRAPPA's, whose edge kernels and periodic readout see
real data there, and so are the lines beside the ACS whose nearest acquired lines are ACS
lines (`raki.grappa.closer_than_lattice`), which GRAPPA reads and the networks do not; then no
filled line may be louder than its acquired neighbours (`raki.power_ceiling`). Acquired and ACS
lines are put back as measured. Images are RSS of the
centred orthonormal inverse FFT, on the input's scale.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from raki.coils import CoilCompression
from raki.device import resolve_device
from raki.errors import InvalidScanError
from raki.fft import rss_image
from raki.grappa import (
    DEFAULT_KERNEL_SIZE,
    GrappaKernel,
    closer_than_lattice,
    reconstruct_grappa,
)
from raki.method_names import DEFAULT_METHOD, METHODS, NEURAL_METHODS
from raki.model import (
    KX_MARGIN,
    RECEPTIVE_LATTICE_LINES,
    RakiNetworks,
    ResidualRakiNetworks,
    build_networks,
    from_channels,
    to_channels,
)
from raki.oversampling import restore_readout
from raki.power_ceiling import limit_line_power
from raki.sampling import minimum_acs_lines
from raki.scan import Scan
from raki.selection import CsSettings, select_method
from raki.sense import DEFAULT_REGULARIZER, reconstruct_sense
from raki.sense_operator import DEFAULT_GRID
from raki.train import TrainingConfig, check_trainable, train_scan
from raki.weights import RakiWeights
from raki.zero_shot import ZeroShotConfig, reconstruct_zero_shot

ProgressCallback = Callable[[dict[str, float]], None]

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "MethodChoice",
    "RakiWeights",
    "ReconResult",
    "TrainingConfig",
    "apply_weights",
    "default_method_for",
    "reconstruct",
    "train_scan",
    "zerofill",
]


@dataclass
class ReconResult:
    """A reconstruction: filled k-space, its RSS image on the input's scale, and how it was made."""

    kspace: np.ndarray  # [slice, coil, kx, ky] complex64
    image: np.ndarray  # [slice, kx, ky] float32, RSS of the centred orthonormal inverse FFT
    method: str
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, object] = field(default_factory=dict)
    # With "auto": the method chosen, each candidate's held-out error, the rule, the seconds.
    selection: dict[str, object] | None = None


@dataclass(frozen=True)
class MethodChoice:
    """The method a scan gets when the caller did not choose one, and why if not the default."""

    method: str
    fallback_reason: str | None = None


def default_method_for(scan: Scan) -> MethodChoice:
    """`DEFAULT_METHOD`, or GRAPPA where the networks cannot train but GRAPPA can calibrate.

    The networks need 2R + 1 ACS lines and every R-th line outside the ACS; GRAPPA's two-line
    kernel needs R + 1 ACS lines and takes any gaps (a kernel per source pattern). So fastMRI's
    R = 8 masks with a 4% ACS (14 of 368 lines), and its masks whose rounded spacing makes the
    gaps vary by a line, get GRAPPA. A scan that neither can reconstruct keeps the default,
    whose error then says what is wrong. "auto" makes its own fallbacks (`raki.selection`).
    """
    if DEFAULT_METHOD not in NEURAL_METHODS:
        return MethodChoice(DEFAULT_METHOD)
    try:
        check_trainable(scan)
    except InvalidScanError as error:
        grappa_fits = (
            scan.acceleration >= 2
            and scan.acs is not None
            and scan.acs.lines >= minimum_acs_lines(scan.acceleration, DEFAULT_KERNEL_SIZE[1])
            and scan.matrix[0] >= DEFAULT_KERNEL_SIZE[0]
        )
        if grappa_fits:
            return MethodChoice("grappa", f"{error}; GRAPPA was used instead")
    return MethodChoice(DEFAULT_METHOD)


def zerofill(scan: Scan) -> np.ndarray:
    """k-space with skipped lines left at zero: the floor every method must beat."""
    return (scan.kspace * scan.sampled).astype(np.complex64)


def lattice_offset(scan: Scan) -> int:
    """ky index modulo R of the equispaced acquired lines outside the ACS block."""
    outside = scan.sampled.copy()
    if scan.acs is not None:
        outside[scan.acs.as_slice()] = False
    acquired = np.flatnonzero(outside)
    if acquired.size == 0:
        # Only the ACS was acquired: any phase is as good, the lines are all measured or missing.
        return 0
    return int(acquired[0] % scan.acceleration)


def fill_slice(
    networks: RakiNetworks | ResidualRakiNetworks,
    kspace: np.ndarray,
    acceleration: int,
    offset: int,
    scale: float,
    device: torch.device,
) -> np.ndarray:
    """Predicted k-space [coil, kx, ky] of one slice: every ky line the lattice skips, filled.

    Anchors are lattice lines k = -1 .. K - 1 (K lattice lines inside the k-space); anchor k
    predicts the R - 1 lines after it from lattice lines k, k + 1, k + 2, zero where outside.
    """
    coils, kx, ky = kspace.shape
    inside = np.arange(offset, ky, acceleration)
    anchors = inside.size + 1
    positions = offset + acceleration * np.arange(-1, anchors + RECEPTIVE_LATTICE_LINES - 2)
    lattice = np.zeros((coils, kx + 2 * KX_MARGIN, positions.size), dtype=np.complex64)
    present = (positions >= 0) & (positions < ky)
    lattice[:, KX_MARGIN : KX_MARGIN + kx, present] = kspace[:, :, positions[present]] / scale
    with torch.no_grad():
        output = networks(torch.from_numpy(to_channels(lattice))[None].to(device), 1)
    output = output[0].reshape(2 * coils, acceleration - 1, kx, anchors).cpu().numpy()
    targets = positions[:anchors][None, :] + np.arange(1, acceleration)[:, None]
    valid = (targets >= 0) & (targets < ky)
    filled = np.zeros((2 * coils, kx, ky), dtype=np.float32)
    filled[:, :, targets[valid]] = output.transpose(0, 2, 1, 3)[:, :, valid]
    return from_channels(filled) * np.complex64(scale)


def blind_spots(matrix: tuple[int, int], acceleration: int, offset: int) -> np.ndarray:
    """bool [kx, ky]: samples whose network prediction read zero padding outside the k-space.

    The readout rows within KX_MARGIN of either end, and the lines whose lattice anchor a (the
    acquired line at or before them) lacks a, a + R or a + 2R inside the k-space. Before any
    training, GRAPPA's prediction there brought the rRAKI linear branch from up to 1.43x
    GRAPPA's NMSE to 0.99-1.05x (scripts/bench/linear_start.py, docs/benchmarks.md).
    """
    kx, ky = matrix
    lines = np.arange(ky)
    anchors = offset + acceleration * np.floor_divide(lines - offset, acceleration)
    last_input = anchors + (RECEPTIVE_LATTICE_LINES - 1) * acceleration
    blind_lines = (anchors < 0) | (last_input >= ky)
    rows = np.arange(kx)
    blind_rows = (rows < KX_MARGIN) | (rows >= kx - KX_MARGIN)
    return blind_rows[:, None] | blind_lines[None, :]


def apply_weights(
    scan: Scan, weights: RakiWeights, device: str = "auto", *, limit_power: bool = True
) -> np.ndarray:
    """k-space [slice, coil, kx, ky] with skipped lines predicted by `weights`, acquired kept.

    For rRAKI weights, `limit_power` applies `raki.power_ceiling` to GRAPPA and to the output.
    """
    check_trainable(scan)
    weights.check_compatible(scan, weights.method)
    full_scan = scan
    scan = weights.network_scan(scan)
    torch_device = resolve_device(device)
    offset = lattice_offset(scan)
    filled = np.empty_like(scan.kspace)
    hidden = tuple(weights.hyperparameters.get("hidden", (32, 8)))
    compression = None
    network_kspace = scan.kspace
    if weights.coil_bases is not None:
        compression = CoilCompression(weights.coil_bases, (), 0.0)
        network_kspace = compression.compress(scan.kspace)
    coils = network_kspace.shape[1]
    for index, (state, scale) in enumerate(zip(weights.state_dicts, weights.scales, strict=True)):
        networks = build_networks(weights.method, coils, scan.acceleration, hidden)
        networks.load_state_dict(state)
        networks = networks.to(torch_device).eval()
        predicted = fill_slice(
            networks, network_kspace[index], scan.acceleration, offset, scale, torch_device
        )
        if compression is not None:
            predicted = compression.expand(predicted[None], slices=slice(index, index + 1))[0]
        filled[index] = np.where(scan.sampled, scan.kspace[index], predicted)
    if weights.grappa is not None:
        share = np.float32(weights.hyperparameters.get("grappa_share", 0.5))
        linear = reconstruct_grappa(scan, kernel=weights.grappa, limit_power=limit_power)
        averaged = linear + (1 - share) * (filled - linear)
        # Where the networks saw zero padding, GRAPPA's edge kernels and periodic readout know
        # more, and beside the ACS its kernels read ACS lines closer than the lattice the
        # networks see: there the output is GRAPPA alone.
        blind = blind_spots(scan.matrix, scan.acceleration, offset) | closer_than_lattice(
            scan.sampled, scan.acceleration, weights.grappa.kernel_size[1]
        )
        filled = np.where(blind, linear, averaged).astype(np.complex64)
    if scan is not full_scan:
        filled = restore_readout(full_scan, filled)
    if weights.grappa is not None and limit_power:
        # rRAKI, like our GRAPPA, never leaves a filled line louder than its acquired
        # neighbours (raki.power_ceiling); RAKI as published is left as the paper has it.
        filled = limit_line_power(filled, full_scan.sampled)
    return filled


def reconstruct(
    scan: Scan,
    method: str = DEFAULT_METHOD,
    *,
    device: str = "auto",
    iterations: int | None = None,
    progress: ProgressCallback | None = None,
    weights: RakiWeights | GrappaKernel | None = None,
    config: TrainingConfig | None = None,
    regularizer: str = DEFAULT_REGULARIZER,
    cs_weight: float | None = None,
    cs_grid: str | None = None,
) -> ReconResult:
    """Reconstruct `scan` with `method`; acquired and ACS lines are kept as measured.

    For "raki" and "rraki", `weights` from `train_scan` (or `RakiWeights.load`) are applied
    instead of training, after checking that they fit; for "grappa" a saved GRAPPA kernel may be
    passed the same way. For "cs", `regularizer` is "wavelet", "l1-wavelet" or "tikhonov",
    `cs_weight` (None: automatic) its weight on the k-space's scale, `cs_grid` its image grid
    ("extended" or "measured"; None: extended for cs, tested for auto) and `iterations` caps
    the solver's; "auto" passes them on to cs, in its test as in the reconstruction.
    """
    if method not in METHODS:
        raise InvalidScanError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    start = time.perf_counter()
    if method == "auto":
        if weights is not None:
            raise InvalidScanError(
                "method 'auto' chooses per scan: saved weights need the method they are for"
            )
        cs = CsSettings(regularizer, cs_weight, iterations, cs_grid)
        selection = select_method(scan, cs=cs, device=resolve_device(device))
        result = reconstruct(
            scan,
            selection.method,
            device=device,
            iterations=iterations,
            progress=progress,
            config=config,
            regularizer=regularizer,
            cs_weight=cs_weight,
            cs_grid=selection.cs_grid.grid if selection.cs_grid else cs_grid,
        )
        result.selection = selection.as_dict()
        result.timings["select_s"] = selection.seconds
        result.timings["total_s"] = time.perf_counter() - start
        return result
    timings: dict[str, float] = {}
    details: dict[str, object] = {}
    if method in NEURAL_METHODS:
        check_trainable(scan)
        if weights is None:
            weights = train_scan(
                scan, method, device=device, iterations=iterations, progress=progress, config=config
            )
            timings["train_s"] = weights.train_seconds
        elif not isinstance(weights, RakiWeights):
            raise InvalidScanError(
                f"method {method!r} takes RakiWeights, not {type(weights).__name__}"
            )
        else:
            weights.check_compatible(scan, method)
            timings["train_s"] = 0.0
        applied = time.perf_counter()
        kspace = apply_weights(scan, weights, device)
        timings["apply_s"] = time.perf_counter() - applied
        final_losses = [curve[-1] for curve in weights.loss_curves if curve]
        details = {
            "iterations": weights.hyperparameters.get("iterations"),
            "final_loss": float(np.mean(final_losses)) if final_losses else None,
            "final_losses": final_losses,
            "loss_curve": weights.loss_curves,
            "device": str(resolve_device(device)),
            "hyperparameters": weights.hyperparameters,
            "trained_here": timings["train_s"] > 0,
            "weights_input_sha256": weights.input_sha256,
            "virtual_coils": weights.metadata()["virtual_coils"],
        }
    elif method == "grappa":
        kspace = reconstruct_grappa(scan, kernel=weights)
    elif method == "cs":
        if weights is not None:
            raise InvalidScanError("method 'cs' calibrates its own coil maps: it takes no weights")
        torch_device = resolve_device(device)
        sense = reconstruct_sense(
            scan,
            regularizer,
            weight=cs_weight,
            device=torch_device,
            iterations=iterations,
            grid=cs_grid or DEFAULT_GRID,
        )
        kspace = sense.kspace
        timings["maps_s"] = sense.maps_seconds
        timings["solve_s"] = sense.solve_seconds
        details = {**sense.details(), "device": str(torch_device)}
    elif method == "ssdu":
        if weights is not None:
            raise InvalidScanError("method 'ssdu' trains on the scan itself: it takes no weights")
        torch_device = resolve_device(device)
        epochs = {} if iterations is None else {"max_epochs": int(iterations)}
        learned = reconstruct_zero_shot(scan, ZeroShotConfig(**epochs), device=torch_device)
        kspace = learned.kspace
        timings["maps_s"] = learned.maps_seconds
        timings["train_s"] = learned.train_seconds
        details = {**learned.details(), "device": str(torch_device)}
    else:
        kspace = zerofill(scan)
    timings["total_s"] = time.perf_counter() - start
    image = rss_image(kspace)
    if not np.isfinite(image).all():
        # Never hand on (or write) an image with NaN or infinite pixels: the input was checked
        # finite, so the method failed numerically (or applied damaged weights).
        raise InvalidScanError(f"{method} gave non-finite values on this scan; nothing was written")
    return ReconResult(
        kspace=kspace,
        image=image,
        method=method,
        timings=timings,
        details=details,
    )
