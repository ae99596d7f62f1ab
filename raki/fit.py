"""Adam on one slice's ACS pair: the training loop, its loss and the levers inside the loop.

The loss is the paper's: for each network the L2 norm (not squared) of its error over all its
outputs and positions, summed over the networks, so each network's gradient depends on its own
term only. Inside the loop live the levers that change how much work an iteration does or how
many iterations run: ACS readout patches (minibatches), the cosine learning-rate schedule,
bf16 autocast, early stopping on held-out ACS positions, and denormal flushing on the CPU.
`raki.train` builds the networks and the pairs and calls `fit_networks`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from raki.model import KX_MARGIN, RakiNetworks, ResidualRakiNetworks

LR_SCHEDULES = ("constant", "cosine")
# Readout rows per ACS patch when training on minibatches (`batch_fraction` < 1).
PATCH_ROWS = 16
DEFAULT_ITERATIONS = 1000
REPORT_EVERY = 10

ProgressCallback = Callable[[dict[str, float]], None]
# Called every REPORT_EVERY iterations with the iterations done and the networks (benchmarks
# use it to score the image along the way); its own time is the caller's business.
Observer = Callable[[int, torch.nn.Module], None]


def network_error_norms(error: torch.Tensor, num_networks: int) -> torch.Tensor:
    """Sum over networks of the L2 norm of each network's error (all its outputs, positions).

    `error` is [batch, networks x outputs, kx, ky]; a batch (ACS patches) counts as positions.
    """
    return grouped_error_norms(error, num_networks, 1)[0]


def grouped_error_norms(error: torch.Tensor, num_networks: int, groups: int) -> torch.Tensor:
    """`network_error_norms` summed within `groups` consecutive blocks of networks ([groups]):
    the slices of a merged module (`raki.model.merge_slices`), each its own loss curve."""
    per_network = error.transpose(0, 1).reshape(num_networks, -1)
    return torch.linalg.vector_norm(per_network, dim=1).reshape(groups, -1).sum(dim=1)


def readout_patches(
    inputs: torch.Tensor, targets: torch.Tensor, rows: int = PATCH_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ACS pair cut along the readout into patches of `rows` target rows: batches of both.

    Patch p covers target rows [p rows, (p + 1) rows) and the input rows its receptive field
    needs (6 more); the last patch is moved back to end at the last row, so every row is
    covered and none is padded.
    """
    total = targets.shape[-2]
    rows = min(rows, total)
    starts = list(range(0, total - rows + 1, rows))
    if starts[-1] + rows < total:
        starts.append(total - rows)
    patch_inputs = torch.cat([inputs[..., s : s + rows + 2 * KX_MARGIN, :] for s in starts])
    patch_targets = torch.cat([targets[..., s : s + rows, :] for s in starts])
    return patch_inputs, patch_targets


def _loss(
    networks: RakiNetworks | ResidualRakiNetworks,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    acceleration: int,
    linear_weight: float,
    groups: int = 1,
) -> torch.Tensor:
    """The loss of each of `groups` blocks of networks ([groups]); training minimises the sum."""
    if isinstance(networks, ResidualRakiNetworks):
        count = networks.cnn.num_networks
        linear, total = networks.forward_parts(inputs, acceleration)
        return grouped_error_norms(total - targets, count, groups) + (
            linear_weight * grouped_error_norms(linear - targets, count, groups)
        )
    count = networks.num_networks
    return grouped_error_norms(networks(inputs, acceleration) - targets, count, groups)


def _split_loss(
    networks: RakiNetworks | ResidualRakiNetworks,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    acceleration: int,
    linear_weight: float,
    holdout: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_loss` on the ky training positions outside `holdout`, and on those inside it."""
    if isinstance(networks, ResidualRakiNetworks):
        count = networks.cnn.num_networks
        linear, total = networks.forward_parts(inputs, acceleration)
        errors = [(total - targets, 1.0), (linear - targets, linear_weight)]
    else:
        count = networks.num_networks
        errors = [(networks(inputs, acceleration) - targets, 1.0)]
    fitted = sum(w * network_error_norms(e[..., ~holdout], count) for e, w in errors)
    held = sum(w * network_error_norms(e[..., holdout].detach(), count) for e, w in errors)
    return fitted, held


def holdout_positions(positions: int, fraction: float, device: torch.device) -> torch.Tensor:
    """Every k-th ky training position, k = round(1 / fraction), kept out of the fit."""
    step = max(2, round(1.0 / fraction))
    mask = torch.zeros(positions, dtype=torch.bool, device=device)
    mask[step // 2 :: step] = True
    return mask


def _parameter_groups(
    networks: RakiNetworks | ResidualRakiNetworks, linear_rate_scale: float, learning_rate: float
) -> list[dict[str, object]]:
    """Adam's parameter groups: rRAKI's linear branch at its own rate, the CNN at the base rate."""
    if not isinstance(networks, ResidualRakiNetworks) or linear_rate_scale == 1.0:
        return [{"params": list(networks.parameters()), "lr": learning_rate}]
    return [
        {"params": [networks.linear.weight], "lr": learning_rate * linear_rate_scale},
        {"params": list(networks.cnn.parameters()), "lr": learning_rate},
    ]


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """Flush denormal floats to zero on the CPU while training, then back to torch's default.

    Adam's second moments of rarely active ReLU units decay into the denormal range, which x86
    CPUs compute about 10-100x slower: a 6-coil phantom trained in 29 s instead of 2.5 s.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def fit_networks(
    networks: RakiNetworks | ResidualRakiNetworks,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    acceleration: int,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    learning_rate: float = 3e-3,
    linear_weight: float = 0.0,
    linear_rate_scale: float = 1.0,
    progress: ProgressCallback | None = None,
    slice_index: int = 0,
    precision: str = "fp32",
    early_stop_patience: int | None = None,
    holdout_fraction: float = 0.15,
    lr_schedule: str = "constant",
    batch_fraction: float = 1.0,
    seed: int = 0,
    observer: Observer | None = None,
    group_curves: list[list[float]] | None = None,
) -> list[float]:
    """Adam on the ACS pair; returns the loss of every iteration.

    With `group_curves` (one empty list per slice of a merged module), each slice's own loss of
    every iteration is appended to its list as well.

    Losses stay on the device and are read back every REPORT_EVERY iterations only, so that a
    GPU never waits for the host inside the loop. With `early_stop_patience`, every k-th ky
    training position (`holdout_fraction`) is kept out of the fit; its error, computed in the
    same forward pass, is read at each report, and training stops once it has not improved by
    0.1% for that many reports; the networks are then set to the best weights seen. (Reading
    it is a host sync every REPORT_EVERY iterations, the price of deciding to stop.)
    With `batch_fraction` < 1 each iteration sees that share of the readout patches
    (`readout_patches`), drawn from a generator seeded with `seed`; the loss is scaled by
    sqrt(1 / share) so that its curve stays comparable with full-batch training.
    rRAKI's linear branch learns at `linear_rate_scale` x `learning_rate`
    (`raki.linear_branch.linear_rate_scale`).
    """
    optimizer = torch.optim.Adam(_parameter_groups(networks, linear_rate_scale, learning_rate))
    scheduler = None
    if lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations)
    elif lr_schedule != "constant":
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}")
    draw, loss_scale = None, 1.0
    if batch_fraction < 1.0:
        inputs, targets = readout_patches(inputs, targets)
        count = max(1, round(batch_fraction * inputs.shape[0]))
        loss_scale = (inputs.shape[0] / count) ** 0.5
        sampler = torch.Generator().manual_seed(seed)

        def draw() -> torch.Tensor:
            return torch.randperm(inputs.shape[0], generator=sampler)[:count].to(inputs.device)

    groups = 1 if group_curves is None else len(group_curves)
    if groups > 1 and early_stop_patience is not None:
        raise ValueError("early stopping watches one module: it takes no per-slice curves")
    losses = torch.empty(iterations, groups, device=inputs.device)
    held = torch.empty(iterations, device=inputs.device)
    holdout = None
    if early_stop_patience is not None:
        holdout = holdout_positions(targets.shape[-1], holdout_fraction, inputs.device)
    best, best_state, stale = float("inf"), None, 0
    curve: list[float] = []
    with denormals_flushed():
        for iteration in range(iterations):
            optimizer.zero_grad(set_to_none=True)
            batch_inputs, batch_targets = inputs, targets
            if draw is not None:
                chosen = draw()
                batch_inputs, batch_targets = inputs[chosen], targets[chosen]
            with torch.autocast(
                inputs.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"
            ):
                if holdout is None:
                    per_group = _loss(
                        networks, batch_inputs, batch_targets, acceleration, linear_weight, groups
                    )
                    loss = per_group.sum()
                else:
                    loss, held[iteration] = _split_loss(
                        networks, batch_inputs, batch_targets, acceleration, linear_weight, holdout
                    )
                    per_group = loss[None]
            if holdout is not None and iteration % REPORT_EVERY == 0:
                # held[iteration] belongs to the weights before this step: keep them if best.
                value = float(held[iteration])
                if value < best * (1 - 1e-3):
                    best, stale = value, 0
                    best_state = {k: v.detach().clone() for k, v in networks.state_dict().items()}
                else:
                    stale += 1
                    if stale >= early_stop_patience:
                        break
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses[iteration] = per_group.detach() * loss_scale
            done = iteration + 1
            if done % REPORT_EVERY == 0 or done == iterations:
                rows = losses[len(curve) : done]
                if group_curves is not None:
                    for group, values in zip(group_curves, rows.T.tolist(), strict=True):
                        group.extend(values)
                curve.extend(rows.sum(dim=1).tolist())
                if progress is not None:
                    report = {"slice": slice_index, "iteration": done, "iterations": iterations}
                    progress({**report, "loss": curve[-1]})
                if observer is not None:
                    observer(done, networks)
    if best_state is not None:
        networks.load_state_dict(best_state)
    return curve
