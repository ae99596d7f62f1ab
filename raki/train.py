"""Fitting the RAKI networks of each slice on its ACS block (Akcakaya et al., MRM 2019).

Training data come from the fully sampled calibration block alone: on the ACS every line is
known, so the kernels (dilated by R along ky) see acquired-like lines k, k + R, k + 2R and learn
the R - 1 lines after k, at every ky shift and every readout position where the receptive field
fits inside the block (no padding enters training).

The ACS is divided by its largest magnitude before training. The networks are positively
homogeneous (no biases, ReLU), so this changes nothing in what they can represent; it only keeps
the numbers near 1 for float32 and for Adam's epsilon. The loss (`raki.fit`) is the paper's:
for each network the L2 norm (not squared) of its error over all its outputs and positions,
summed over the networks. Each network's gradient depends on its own term only, so the fused
module trains as the separate networks would. Adam removes a constant gradient scale, but the
norm and the squared norm differ in how the step size evolves as the error falls: on the
8-coil brain at R=4 the norm gave NMSE 0.0087 against 0.0090 for the sum of squares.

Residual RAKI (Zhang et al., NeuroImage 2022) adds a linear kernel over the same receptive field;
it starts at a complex, GRAPPA-damped least-squares solution (`raki.linear_branch`) and is
trained jointly with the CNN
on the loss  ||total error|| + linear_weight ||linear error||. rRAKI weights also hold our GRAPPA
kernel (`raki.grappa.fit_grappa`), whose prediction `raki.methods` averages with the networks'.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from raki.coils import fit_compression
from raki.device import has_native_bf16, resolve_device
from raki.errors import InvalidScanError
from raki.fit import (
    DEFAULT_ITERATIONS,
    LR_SCHEDULES,
    REPORT_EVERY,
    Observer,
    ProgressCallback,
    fit_networks,
    holdout_positions,
    network_error_norms,
    readout_patches,
)
from raki.grappa import DEFAULT_KERNEL_SIZE, automatic_lambda, fit_grappa
from raki.linear_branch import fit_linear_kernel, linear_rate_scale
from raki.method_names import NEURAL_METHODS
from raki.model import (
    HIDDEN_CHANNELS,
    KX_MARGIN,
    RECEPTIVE_KX,
    RECEPTIVE_LATTICE_LINES,
    RakiNetworks,
    ResidualRakiNetworks,
    build_networks,
    merge_slices,
    split_slices,
    to_channels,
)
from raki.network_start import NETWORK_STARTS, embed_linear_start, grappa_kernel_for_layer1
from raki.oversampling import (
    OUTER_SIGNAL_RATIO,
    crop_readout,
    outer_band_signal_ratio,
    resolve_oversampling,
)
from raki.runtime import tune_process
from raki.scan import Scan
from raki.weights import RakiWeights, kspace_sha256

__all__ = [  # the loop's names stay importable from here, where callers first met them
    "DEFAULT_ITERATIONS",
    "REPORT_EVERY",
    "Observer",
    "ProgressCallback",
    "TrainingConfig",
    "fit_networks",
    "holdout_positions",
    "network_error_norms",
    "readout_patches",
    "train_scan",
    "train_slice",
    "train_slices_together",
    "training_pair",
]

PRECISIONS = ("auto", "fp32", "bf16")
MAX_GPU_SLICE_BATCH = 16


@dataclass(frozen=True)
class TrainingConfig:
    """Hyperparameters; the defaults are the paper's (Adam, lr 3e-3, 1000 iterations)."""

    iterations: int = DEFAULT_ITERATIONS
    learning_rate: float = 3e-3
    hidden: tuple[int, int] = HIDDEN_CHANNELS
    # rRAKI: weight of the linear branch's own error in the loss (Zhang et al. 2022). 0 measured
    # best on the noisy 8-coil brain (NMSE 0.0094 against 0.0120 with 1) and equal elsewhere.
    linear_weight: float = 0.0
    # Tikhonov weight, relative to s_max^2, of the complex least-squares fit that starts
    # rRAKI's linear branch (raki.linear_branch) and RAKI's "grappa" start; None: our GRAPPA's
    # automatic lambda for each slice's ACS (raki.grappa.automatic_lambda).
    linear_regularization: float | None = None
    # RAKI: "random" (the paper) or "grappa": the networks start as a GRAPPA kernel carried by
    # ReLU pairs (raki.network_start). rRAKI's linear branch always starts as GRAPPA.
    network_start: str = "random"
    # rRAKI: the linear branch's learning rate as a fraction of `learning_rate`; None: 1, or
    # 0.1 where the ACS gives fewer equations than the branch has weights
    # (raki.linear_branch.linear_rate_scale).
    linear_rate_scale: float | None = None
    # rRAKI: share of our GRAPPA (raki.grappa, its own kernel and lambda) in the output; the
    # rest is the rRAKI networks' prediction. With 0.5 the default beats GRAPPA on 18 of the
    # 19 quality-grid cases (see `raki.methods`).
    grappa_share: float = 0.5
    # SVD coil compression before training (raki.coils): the fraction of the ACS energy the
    # virtual coils keep; None trains on the physical coils, as the paper does.
    coil_energy: float | None = None
    # "bf16" runs the networks under torch.autocast in bfloat16 (the loss and Adam stay fp32):
    # it pays where the hardware has bf16 matrix units (GPUs; CPUs with AVX-512 BF16 or AMX).
    # "auto": bf16 for "rraki" on such hardware (1.2-1.9x faster training, NMSE within 2.6%
    # of fp32 on seven cases), else fp32; plain RAKI lost up to 10% in bf16 on high-SNR
    # data, so it stays fp32 (docs/benchmarks.md).
    precision: str = "auto"
    # Stop once the error on held-out ACS positions has not improved for this many reports
    # (REPORT_EVERY iterations each) and keep the best weights; None trains all iterations.
    early_stop_patience: int | None = None
    # Start each slice from the previous slice's trained weights (neighbouring slices see
    # similar coil maps); pays only with early stopping, which then stops sooner.
    warm_start: bool = False
    # "cosine" anneals the learning rate to zero over `iterations` (Loshchilov and Hutter,
    # 2017): with fewer iterations and a higher rate it can reach the same image sooner.
    lr_schedule: str = "constant"
    # Fraction of the ACS readout patches (PATCH_ROWS rows each) drawn at random for each
    # iteration; 1.0 uses the whole ACS every iteration, as the paper does.
    batch_fraction: float = 1.0
    # Readout oversampling removed before training and applying (raki.oversampling); 1.0
    # keeps the full readout. None: for "rraki" the factor the file's header declares
    # (fastMRI: 2), as scanners do before reconstructing; for "raki" (as published) none. On a
    # 2x-oversampled phantom it halved the time and gave rraki 10% less NMSE in the recon FOV,
    # but cost plain RAKI 9-10% (docs/benchmarks.md).
    readout_oversampling: float | None = None
    # Slices whose networks train together in one merged module (raki.model.merge_slices);
    # None: 1 on the CPU, up to MAX_GPU_SLICE_BATCH on a GPU. The same weights either way.
    slices_per_batch: int | None = None
    seed: int = 0

    @classmethod
    def faithful(cls) -> TrainingConfig:
        """RAKI as published: fp32, 1000 iterations, physical coils, no GRAPPA average."""
        return cls(
            iterations=DEFAULT_ITERATIONS,
            grappa_share=0.0,
            coil_energy=None,
            precision="fp32",
            early_stop_patience=None,
            readout_oversampling=1.0,
        )

    def validate(self) -> None:
        """Raise InvalidScanError (one line) for a value training cannot use, before any work."""
        problems = [
            (
                not (isinstance(self.iterations, int) and self.iterations >= 1),
                f"iterations must be an integer >= 1, got {self.iterations!r}",
            ),
            (
                not 0.0 < self.learning_rate <= 1.0,
                f"learning_rate must lie in (0, 1], got {self.learning_rate}",
            ),
            (
                not 0.0 <= self.grappa_share <= 1.0,
                f"grappa_share must lie in [0, 1], got {self.grappa_share}",
            ),
            (
                self.precision not in PRECISIONS,
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
            ),
            (
                self.lr_schedule not in LR_SCHEDULES,
                f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}",
            ),
            (
                not 0.0 < self.batch_fraction <= 1.0,
                f"batch_fraction must lie in (0, 1], got {self.batch_fraction}",
            ),
            (
                self.coil_energy is not None and not 0.0 < self.coil_energy <= 1.0,
                f"coil_energy must lie in (0, 1], got {self.coil_energy}",
            ),
            (
                self.readout_oversampling is not None and self.readout_oversampling < 1.0,
                f"readout_oversampling must be >= 1, got {self.readout_oversampling}",
            ),
            (
                self.early_stop_patience is not None and self.early_stop_patience < 1,
                f"early_stop_patience must be >= 1, got {self.early_stop_patience}",
            ),
            (
                self.linear_regularization is not None and not self.linear_regularization >= 0,
                f"linear_regularization must be >= 0, got {self.linear_regularization}",
            ),
            (
                self.network_start not in NETWORK_STARTS,
                f"network_start must be one of {', '.join(NETWORK_STARTS)}, "
                f"got {self.network_start!r}",
            ),
            (
                self.linear_rate_scale is not None and not 0.0 < self.linear_rate_scale <= 1.0,
                f"linear_rate_scale must lie in (0, 1], got {self.linear_rate_scale}",
            ),
            (
                self.slices_per_batch is not None and self.slices_per_batch < 1,
                f"slices_per_batch must be >= 1, got {self.slices_per_batch}",
            ),
            (
                self.warm_start and self.coil_energy is not None,
                "warm_start needs the physical coils: each slice's compressed coil basis differs",
            ),
        ]
        for failed, reason in problems:
            if failed:
                raise InvalidScanError(reason)

    def as_dict(self) -> dict[str, object]:
        values = asdict(self)
        values["hidden"] = list(self.hidden)
        values["loss"] = "sum over networks of the L2 norm of the error"
        return values


def minimum_acs_lines(acceleration: int) -> int:
    """ACS lines one ky training position needs: 3 lattice lines span 2R + 1 lines."""
    return (RECEPTIVE_LATTICE_LINES - 1) * acceleration + 1


def check_trainable(scan: Scan) -> None:
    """Raise InvalidScanError unless RAKI can be trained on and applied to `scan`."""
    if scan.is_fully_sampled or scan.acceleration < 2:
        raise InvalidScanError(
            "the scan is fully sampled (R=1): undersample it first, RAKI fills skipped lines"
        )
    if scan.acs is None:
        raise InvalidScanError("the scan has no ACS block to train the networks on")
    if not scan.is_equispaced:
        raise InvalidScanError(
            "RAKI needs equispaced sampling outside the ACS "
            f"(every R-th line, R={scan.acceleration})"
        )
    needed = minimum_acs_lines(scan.acceleration)
    if scan.acs.lines < needed:
        raise InvalidScanError(
            f"ACS of {scan.acs.lines} lines is too small for RAKI at R={scan.acceleration}: "
            f"its kernels span {needed} lines (2R + 1), so at least {needed} are needed"
        )
    if scan.matrix[0] < RECEPTIVE_KX:
        raise InvalidScanError(
            f"{scan.matrix[0]} readout points are too few for RAKI's {RECEPTIVE_KX}-point kernels"
        )


def acs_scale(acs: np.ndarray) -> float:
    """The ACS's largest magnitude, what the k-space is divided by for training (1 if all zero)."""
    peak = float(np.abs(acs).max())
    return peak if peak > 0 else 1.0


def training_pair(
    acs_channels: torch.Tensor, acceleration: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [1, 2Nc, kx, L] and targets [1, 2Nc (R-1), kx - 6, L - 2R] from the ACS channels.

    Output (x, y) of the dilated networks sees ACS lines y, y + R, y + 2R around readout x + 3
    and must predict lines y + 1 .. y + R - 1 there.
    """
    channels, kx, lines = acs_channels.shape
    positions = lines - (RECEPTIVE_LATTICE_LINES - 1) * acceleration
    targets = torch.stack(
        [
            acs_channels[:, KX_MARGIN : kx - KX_MARGIN, offset : offset + positions]
            for offset in range(1, acceleration)
        ],
        dim=1,
    )
    return acs_channels[None], targets.reshape(1, channels * (acceleration - 1), kx - 6, positions)


def _start_networks(
    acs: np.ndarray,
    acceleration: int,
    method: str,
    config: TrainingConfig,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> tuple[RakiNetworks | ResidualRakiNetworks, float, torch.Tensor, torch.Tensor]:
    """One slice's starting networks (on the CPU), ACS scale and training pair."""
    scale = acs_scale(acs)
    channels = torch.from_numpy(to_channels(acs / scale))
    inputs, targets = training_pair(channels, acceleration)
    generator = torch.Generator().manual_seed(config.seed)
    networks = build_networks(method, acs.shape[0], acceleration, config.hidden, generator)
    if initial_state is not None:
        networks.load_state_dict(initial_state)
    grappa_start = config.network_start == "grappa" and initial_state is None
    if isinstance(networks, ResidualRakiNetworks) or grappa_start:
        regularization = config.linear_regularization
        if regularization is None:
            kernel_size = (min(DEFAULT_KERNEL_SIZE[0], acs.shape[1]), DEFAULT_KERNEL_SIZE[1])
            regularization = automatic_lambda(acs, acceleration, kernel_size=kernel_size)
        if isinstance(networks, ResidualRakiNetworks):
            with torch.no_grad():
                networks.linear.weight.copy_(
                    fit_linear_kernel(inputs, acceleration, regularization)
                )
        else:
            embed_linear_start(
                networks, grappa_kernel_for_layer1(inputs, acceleration, regularization)
            )
    return networks, scale, inputs, targets


def _fit(
    networks: RakiNetworks | ResidualRakiNetworks,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    acceleration: int,
    config: TrainingConfig,
    progress: ProgressCallback | None,
    slice_index: int,
    observer: Observer | None,
    group_curves: list[list[float]] | None = None,
) -> list[float]:
    return fit_networks(
        networks,
        inputs,
        targets,
        acceleration,
        iterations=config.iterations,
        learning_rate=config.learning_rate,
        linear_weight=config.linear_weight,
        linear_rate_scale=config.linear_rate_scale or 1.0,
        progress=progress,
        slice_index=slice_index,
        precision=config.precision,
        early_stop_patience=config.early_stop_patience,
        lr_schedule=config.lr_schedule,
        batch_fraction=config.batch_fraction,
        seed=config.seed,
        observer=observer,
        group_curves=group_curves,
    )


def train_slice(
    acs: np.ndarray,
    acceleration: int,
    method: str,
    config: TrainingConfig,
    device: torch.device,
    *,
    progress: ProgressCallback | None = None,
    slice_index: int = 0,
    initial_state: dict[str, torch.Tensor] | None = None,
    observer: Observer | None = None,
) -> tuple[RakiNetworks | ResidualRakiNetworks, float, list[float]]:
    """Networks fitted to one slice's ACS [coil, kx, L]; also the ACS scale and the loss curve.

    `initial_state` (a neighbouring slice's trained weights) replaces the random start.
    """
    networks, scale, inputs, targets = _start_networks(
        acs, acceleration, method, config, initial_state
    )
    networks = networks.to(device)
    inputs, targets = inputs.to(device), targets.to(device)
    curve = _fit(networks, inputs, targets, acceleration, config, progress, slice_index, observer)
    return networks, scale, curve


def train_slices_together(
    acs: np.ndarray,
    acceleration: int,
    method: str,
    config: TrainingConfig,
    device: torch.device,
    *,
    progress: ProgressCallback | None = None,
    first_slice: int = 0,
) -> tuple[list[dict[str, torch.Tensor]], list[float], list[list[float]]]:
    """Several slices' networks [slice, coil, kx, L] trained in one merged module.

    The same weights as `train_slice` on each slice (`raki.model.merge_slices`), in one pass per
    iteration: what fills a GPU. Returns per-slice state dicts (on the CPU), scales, and each
    slice's own loss curve (its networks' part of the merged loss, what `train_slice` records).
    """
    started = [_start_networks(one, acceleration, method, config) for one in acs]
    merged = merge_slices([networks for networks, *_ in started]).to(device)
    inputs = torch.cat([pair_inputs for *_, pair_inputs, _ in started], dim=1).to(device)
    targets = torch.cat([pair_targets for *_, pair_targets in started], dim=1).to(device)
    curves: list[list[float]] = [[] for _ in started]
    _fit(merged, inputs, targets, acceleration, config, progress, first_slice, None, curves)
    states = [{k: v.cpu() for k, v in state.items()} for state in split_slices(merged)]
    return states, [scale for _, scale, *_ in started], curves


def slices_per_batch(config: TrainingConfig, device: torch.device, num_slices: int) -> int:
    """How many slices train together: the configured count, else all (<= 16) on a GPU only.

    On the CPU one slice already keeps the matrix units busy; merging gains nothing there.
    """
    if config.slices_per_batch is not None:
        return max(1, min(config.slices_per_batch, num_slices))
    if config.warm_start or config.early_stop_patience is not None:
        return 1
    return min(num_slices, MAX_GPU_SLICE_BATCH) if device.type == "cuda" else 1


def resolve_precision(precision: str, method: str, device: torch.device) -> str:
    """The precision training runs in: `precision`, or for "auto" bf16 where it keeps the image
    and the hardware computes it (rRAKI on native bf16), else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if method == "rraki" and has_native_bf16(device) else "fp32"


def resolve_linear_rate_scale(acs: np.ndarray, acceleration: int) -> float:
    """`raki.linear_branch.linear_rate_scale` for ACS [slice, coil, kx, L] as trained."""
    _, coils, readout, lines = acs.shape
    ky_positions = lines - (RECEPTIVE_LATTICE_LINES - 1) * acceleration
    return linear_rate_scale(2 * coils, readout - 2 * KX_MARGIN, ky_positions)


def readout_factor(scan: Scan, method: str, requested: float | None) -> float:
    """The readout oversampling to remove: `requested`, else the file's for rraki (unless its
    outer band holds anatomy: `raki.oversampling.outer_band_signal_ratio`), else none."""
    if requested is None and method == "raki":
        return 1.0
    factor = resolve_oversampling(scan, requested)
    declared_but_full = (
        requested is None
        and factor > 1.0
        and outer_band_signal_ratio(scan, factor) > OUTER_SIGNAL_RATIO
    )
    # Predicted lines would lose what lies in the outer band: keep the full readout there.
    return 1.0 if declared_but_full else factor


def train_scan(
    scan: Scan,
    method: str = "raki",
    *,
    device: str = "auto",
    iterations: int | None = None,
    progress: ProgressCallback | None = None,
    config: TrainingConfig | None = None,
    observer: Observer | None = None,
) -> RakiWeights:
    """Train every slice's networks on its ACS; the weights can be saved and applied later.

    `observer` sees the networks of slices trained one at a time (benchmarks score them).
    """
    if method not in NEURAL_METHODS:
        raise InvalidScanError(
            f"method {method!r} has no networks to train; choose one of {', '.join(NEURAL_METHODS)}"
        )
    check_trainable(scan)
    config = config or TrainingConfig()
    config.validate()
    if iterations is not None:
        if iterations < 1:
            raise InvalidScanError(f"iterations must be >= 1, got {iterations}")
        config = TrainingConfig(**{**asdict(config), "iterations": iterations})
    torch_device = resolve_device(device)
    if torch_device.type == "cpu":
        tune_process()
    config = replace(config, precision=resolve_precision(config.precision, method, torch_device))
    start = time.perf_counter()
    full_scan = scan
    oversampling = readout_factor(scan, method, config.readout_oversampling)
    scan = crop_readout(scan, oversampling)
    state_dicts, scales, curves = [], [], []
    acs = scan.acs_kspace()
    compression = None
    if config.coil_energy is not None:
        compression = fit_compression(acs, config.coil_energy)
        acs = compression.compress(acs)
    if config.linear_rate_scale is None and method == "rraki":
        rate_scale = resolve_linear_rate_scale(acs, scan.acceleration)
        config = replace(config, linear_rate_scale=rate_scale)
    batch = slices_per_batch(config, torch_device, scan.num_slices)
    if batch > 1 and (config.warm_start or config.early_stop_patience is not None):
        raise InvalidScanError(
            "slices trained together cannot warm-start from each other or stop early: "
            "set slices_per_batch to 1 for warm_start or early stopping"
        )
    for first in range(0, scan.num_slices, batch):
        if batch > 1:
            states, chunk_scales, chunk_curves = train_slices_together(
                acs[first : first + batch],
                scan.acceleration,
                method,
                config,
                torch_device,
                progress=progress,
                first_slice=first,
            )
            state_dicts.extend(states)
            scales.extend(chunk_scales)
            curves.extend(chunk_curves)
            continue
        networks, scale, curve = train_slice(
            acs[first],
            scan.acceleration,
            method,
            config,
            torch_device,
            progress=progress,
            slice_index=first,
            initial_state=state_dicts[-1] if config.warm_start and state_dicts else None,
            observer=observer,
        )
        state_dicts.append({k: v.detach().cpu() for k, v in networks.state_dict().items()})
        scales.append(scale)
        curves.append(curve)
    grappa_kernel = fit_grappa(scan) if method == "rraki" and config.grappa_share > 0 else None
    hyperparameters = {**config.as_dict(), "device": str(torch_device)}
    hyperparameters["readout_oversampling"] = oversampling
    hyperparameters["trained_readout"] = scan.matrix[0]
    hyperparameters["slices_per_batch"] = batch
    return RakiWeights(
        method=method,
        acceleration=scan.acceleration,
        num_coils=scan.num_coils,
        matrix=full_scan.matrix,
        acs_lines=scan.acs.lines if scan.acs is not None else 0,
        state_dicts=state_dicts,
        scales=scales,
        hyperparameters=hyperparameters,
        loss_curves=curves,
        input_sha256=kspace_sha256(full_scan.kspace),
        train_seconds=time.perf_counter() - start,
        grappa=grappa_kernel,
        coil_bases=None if compression is None else compression.bases,
    )
