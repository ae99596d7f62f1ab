"""Zero-shot self-supervised training of the unrolled SENSE network on one scan's own lines.

Yaman, Hosseini and Akcakaya, "Zero-Shot Self-Supervised Learning for MRI Reconstruction",
ICLR 2022 (ZS-SSL), on the self-supervision of SSDU (Yaman et al., MRM 84:3172-3191, 2020).
No reference and no other scan: the acquired k-space Omega of a slice is split once into a
validation set Gamma and the rest, and the rest K times into a data-consistency set Theta
and a loss set Lambda (a fraction `loss_fraction` of it). Each epoch takes one Adam step per
split: the network (`raki.unrolled.UnrolledSense`) sees Theta only and is scored on how well
its image, through the maps, predicts the k-space of Lambda (the normalised L1 + L2 loss of
the papers). Gamma is never trained on: the network on Omega minus Gamma predicts it, and
training stops when that prediction has not improved for `patience` epochs (the best epoch's
weights are kept). The image is the network on all of Omega; it goes back to coil k-space
through the maps with the acquired lines kept as measured, as `cs`'s does (`raki.sense`).

Every input image starts from `cs` (L1-wavelet SENSE, `raki.sense`) on the same data set the
network sees (Theta, Omega minus Gamma, Omega), so the network learns a correction of `cs`
rather than an image from scratch: fewer epochs, and the untrained network is already `cs`
pulled towards its data (`start="sense"` starts from Tikhonov CG-SENSE instead).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from raki.errors import InvalidScanError
from raki.espirit import DEFAULT_KERNEL_WIDTH, EspiritMaps
from raki.scan import Scan
from raki.sense import (
    automatic_weight,
    cg_sense,
    l1_wavelet_sense,
    slice_maps,
    weight_on_grid,
)
from raki.sense_operator import SenseOperator, coil_kspace, norm
from raki.unrolled import (
    DEFAULT_BLOCKS,
    DEFAULT_CG_ITERATIONS,
    DEFAULT_FEATURES,
    DEFAULT_UNROLLS,
    UnrolledSense,
)

STARTS = ("cs", "sense")
SPLIT_UNITS = ("lines", "points")
# The k-space centre always stays in the data-consistency set (SSDU keeps a small central
# block there): without it a split can take most of the image's energy out of what the
# network sees, and the loss is then about contrast, not about missing detail.
CENTRE_LINES = 4

ProgressCallback = Callable[[dict[str, float]], None]


@dataclass(frozen=True)
class ZeroShotConfig:
    """The network's size and the self-supervised training's settings."""

    unrolls: int = DEFAULT_UNROLLS
    features: int = DEFAULT_FEATURES
    blocks: int = DEFAULT_BLOCKS
    cg_iterations: int = DEFAULT_CG_ITERATIONS
    splits: int = 6  # K data-consistency / loss splits, each one Adam step per epoch
    loss_fraction: float = 0.4  # of the acquired samples outside the validation set
    validation_fraction: float = 0.2  # of the acquired samples
    # Single samples, as SSDU: with whole lines the loss set's lines are missing lines at twice
    # the acceleration, and on a phantom what the network learnt there made the held-out loss
    # worse from the first epoch (docs/benchmarks.md, "Zero-shot SSDU").
    split_unit: str = "points"
    max_epochs: int = 30
    patience: int = 3
    # 1e-3 overshot on the 8-coil brain (held-out loss 4% up after one epoch, early stop at
    # the untrained network); 3e-4 improved it every epoch.
    learning_rate: float = 3e-4
    start: str = "cs"
    start_iterations: int | None = None  # the start solver's (None: its default)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.start not in STARTS:
            raise InvalidScanError(f"unknown start {self.start!r}; choose one of {STARTS}")
        if self.split_unit not in SPLIT_UNITS:
            raise InvalidScanError(f"unknown split unit {self.split_unit!r}; one of {SPLIT_UNITS}")
        if not (0 < self.loss_fraction < 1 and 0 < self.validation_fraction < 1):
            raise InvalidScanError("the loss and validation fractions must lie in (0, 1)")
        if min(self.unrolls, self.splits, self.max_epochs, self.patience) < 1:
            raise InvalidScanError("unrolls, splits, epochs and patience must be at least 1")


@dataclass(frozen=True)
class SampleSplit:
    """Disjoint masks [kx, ky] of one slice's acquired samples: validation, and K pairs of
    data-consistency and loss masks that together cover the acquired samples outside it."""

    acquired: np.ndarray
    validation: np.ndarray
    consistency: tuple[np.ndarray, ...]
    loss: tuple[np.ndarray, ...]

    @property
    def training(self) -> np.ndarray:
        return self.acquired & ~self.validation


def _centre(matrix: tuple[int, int], unit: str) -> np.ndarray:
    """bool [kx, ky]: the central lines (or the central square of samples) always kept."""
    kx, ky = matrix
    centre = np.zeros(matrix, dtype=bool)
    lines = slice(ky // 2 - CENTRE_LINES // 2, ky // 2 + (CENTRE_LINES + 1) // 2)
    rows = slice(kx // 2 - CENTRE_LINES // 2, kx // 2 + (CENTRE_LINES + 1) // 2)
    centre[slice(None) if unit == "lines" else rows, lines] = True
    return centre


def _pick(candidates: np.ndarray, fraction: float, unit: str, rng: np.random.Generator):
    """bool [kx, ky]: a uniformly random `fraction` of the candidate lines (or samples)."""
    if unit == "lines":
        lines = np.flatnonzero(candidates.any(axis=0))
        chosen = rng.choice(lines, size=round(fraction * lines.size), replace=False)
        picked = np.zeros(candidates.shape[1], dtype=bool)
        picked[chosen] = True
        return candidates & picked[None, :]
    samples = np.flatnonzero(candidates)
    chosen = rng.choice(samples, size=round(fraction * samples.size), replace=False)
    picked = np.zeros(candidates.size, dtype=bool)
    picked[chosen] = True
    return candidates & picked.reshape(candidates.shape)


def split_samples(
    acquired: np.ndarray, config: ZeroShotConfig, rng: np.random.Generator
) -> SampleSplit:
    """The validation set, then K (data-consistency, loss) splits of the rest, from `rng`."""
    acquired = np.array(acquired, dtype=bool)
    movable = acquired & ~_centre(acquired.shape, config.split_unit)
    validation = _pick(movable, config.validation_fraction, config.split_unit, rng)
    losses = tuple(
        _pick(movable & ~validation, config.loss_fraction, config.split_unit, rng)
        for _ in range(config.splits)
    )
    training = acquired & ~validation
    consistency = tuple(training & ~loss for loss in losses)
    return SampleSplit(acquired, validation, consistency, losses)


def kspace_loss(
    operator: SenseOperator, image: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """||y - F S x||_2 / ||y||_2 + ||y - F S x||_1 / ||y||_1 over the samples of `mask`
    (the normalised L1-L2 loss of SSDU)."""
    predicted = operator.predict(image)
    error = (predicted - measured)[:, mask]
    target = measured[:, mask]
    l2 = norm(error) / norm(target).clamp_min(1e-30)
    l1 = error.abs().sum() / target.abs().sum().clamp_min(1e-30)
    return l2 + l1


@dataclass
class SliceTraining:
    """How one slice's network was trained, for ReconResult.details."""

    epochs: int
    best_epoch: int  # 0: the untrained network (the start pulled towards the data) was best
    validation_losses: list[float]
    training_losses: list[float]
    mu: float
    seconds: float


def _operator(maps: torch.Tensor, mask: np.ndarray, device: torch.device) -> SenseOperator:
    """The SENSE operator on the samples of `mask` [kx, ky], measured on the mask's matrix."""
    matrix = (int(mask.shape[-2]), int(mask.shape[-1]))
    return SenseOperator(maps, torch.as_tensor(mask, device=device), matrix)


def _start(
    operator: SenseOperator,
    measured: torch.Tensor,
    config: ZeroShotConfig,
    weights: dict[str, float],
) -> torch.Tensor:
    options = {} if config.start_iterations is None else {"iterations": config.start_iterations}
    if config.start == "cs":
        image, _ = l1_wavelet_sense(operator, measured, weights["wavelet"], **options)
    else:
        image, _ = cg_sense(operator, measured, weights["tikhonov"], **options)
    return image


def train_slice(
    maps: EspiritMaps,
    kspace: np.ndarray,
    acquired: np.ndarray,
    acs: np.ndarray,
    config: ZeroShotConfig,
    device: torch.device,
    progress: ProgressCallback | None = None,
) -> tuple[torch.Tensor, SenseOperator, SliceTraining]:
    """The trained network's image [set, x, y] of one slice (k-space [coil, kx, ky]) on all of
    its acquired samples, the operator on them, and how training went."""
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    split = split_samples(acquired, config, rng)
    maps_tensor = torch.as_tensor(maps.maps.copy(), device=device)  # maps are shared, read-only
    matrix = (int(kspace.shape[-2]), int(kspace.shape[-1]))
    grid = (int(maps.maps.shape[-2]), int(maps.maps.shape[-1]))
    weights = {
        name: weight_on_grid(name, automatic_weight(name, maps, acs, matrix), matrix, grid)
        for name in ("wavelet", "tikhonov")
    }
    raw = torch.as_tensor(np.ascontiguousarray(kspace, dtype=np.complex64), device=device)
    full = _operator(maps_tensor, split.acquired, device)
    full_start = _start(full, raw, config, weights)
    # The networks see images of order one whatever the scanner's scale.
    scale = float(torch.quantile(full_start.abs().flatten().float(), 0.99).clamp_min(1e-30))
    measured = raw / scale
    full_start = full_start / scale
    held_in = _operator(maps_tensor, split.training, device)
    held_in_start = _start(held_in, raw, config, weights) / scale
    validation = torch.as_tensor(split.validation, device=device)
    steps = []
    for consistency, loss in zip(split.consistency, split.loss, strict=True):
        operator = _operator(maps_tensor, consistency, device)
        steps.append(
            (
                operator,
                _start(operator, raw, config, weights) / scale,
                torch.as_tensor(loss, device=device),
            )
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = UnrolledSense(
            maps.sets,
            unrolls=config.unrolls,
            features=config.features,
            blocks=config.blocks,
            cg_iterations=config.cg_iterations,
        ).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)

    def validation_loss() -> float:
        with torch.no_grad():
            image = network(held_in, measured, held_in_start)
            return float(kspace_loss(full, image, measured, validation))

    validation_losses = [validation_loss()]
    training_losses: list[float] = []
    best_state, best_epoch, waited = copy.deepcopy(network.state_dict()), 0, 0
    order = np.random.default_rng(config.seed + 1)
    for epoch in range(1, config.max_epochs + 1):
        total = 0.0
        for index in order.permutation(len(steps)):
            operator, start, loss_mask = steps[index]
            optimizer.zero_grad()
            loss = kspace_loss(full, network(operator, measured, start), measured, loss_mask)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        training_losses.append(total / len(steps))
        validation_losses.append(validation_loss())
        if progress is not None:
            progress(
                {
                    "epoch": epoch,
                    "loss": training_losses[-1],
                    "validation_loss": validation_losses[-1],
                    "seconds": time.perf_counter() - started,
                }
            )
        if validation_losses[-1] < min(validation_losses[:-1]):
            best_state, best_epoch, waited = copy.deepcopy(network.state_dict()), epoch, 0
        else:
            waited += 1
            if waited >= config.patience:
                break
    network.load_state_dict(best_state)
    with torch.no_grad():
        image = network(full, measured, full_start) * scale
    report = SliceTraining(
        epochs=len(training_losses),
        best_epoch=best_epoch,
        validation_losses=validation_losses,
        training_losses=training_losses,
        mu=float(network.mu.detach()),
        seconds=time.perf_counter() - started,
    )
    return image, full, report


@dataclass
class ZeroShotReconstruction:
    """Filled k-space [slice, coil, kx, ky] and, per slice, how its network was trained."""

    kspace: np.ndarray
    config: ZeroShotConfig
    slices: list[SliceTraining] = field(default_factory=list)
    map_sets: list[int] = field(default_factory=list)
    maps_seconds: float = 0.0
    train_seconds: float = 0.0

    def details(self) -> dict[str, object]:
        """Facts for ReconResult.details."""
        return {
            "epochs": [report.epochs for report in self.slices],
            "best_epochs": [report.best_epoch for report in self.slices],
            "validation_losses": [report.validation_losses for report in self.slices],
            "mu": [report.mu for report in self.slices],
            "map_sets": self.map_sets,
            "start": self.config.start,
            "unrolls": self.config.unrolls,
            "features": self.config.features,
            "split_unit": self.config.split_unit,
            "seed": self.config.seed,
        }


def reconstruct_zero_shot(
    scan: Scan,
    config: ZeroShotConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
) -> ZeroShotReconstruction:
    """Every slice of `scan` by its own zero-shot trained network; acquired lines kept."""
    config = config or ZeroShotConfig()
    device = torch.device(device)
    if scan.acs is None or scan.acs.lines < DEFAULT_KERNEL_WIDTH:
        lines = 0 if scan.acs is None else scan.acs.lines
        raise InvalidScanError(
            f"ssdu calibrates ESPIRiT maps on an ACS block of at least {DEFAULT_KERNEL_WIDTH} "
            f"lines; this scan has {lines}"
        )
    acquired = np.broadcast_to(scan.sampled[None, :], scan.matrix)
    acs = scan.acs_kspace()
    result = ZeroShotReconstruction(np.empty_like(scan.kspace), config)
    for index in range(scan.num_slices):
        started = time.perf_counter()
        maps = slice_maps(acs[index], scan.matrix, device=device)
        result.maps_seconds += time.perf_counter() - started
        image, operator, report = train_slice(
            maps, scan.kspace[index], acquired, acs[index], config, device, progress
        )
        measured = torch.as_tensor(scan.kspace[index], device=device)
        result.kspace[index] = coil_kspace(operator, image, measured).cpu().numpy()
        result.train_seconds += report.seconds
        result.slices.append(report)
        result.map_sets.append(maps.sets)
    return result
