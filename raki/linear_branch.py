"""Where residual RAKI's linear branch starts: a GRAPPA kernel inside the networks' field.

The branch is a real 7 x 3 convolution over lattice lines y, y + R, y + 2R (the CNN's receptive
field) predicting lines y + 1 .. y + R - 1. It starts as GRAPPA would: a complex-linear kernel
(k-space relations between coils are complex-linear; a real kernel has twice the freedom) over
the two lines around the gap, y and y + R, fitted by Tikhonov least squares at every ACS
position where those two lines fit (R more positions than three lines allow), damped with our
GRAPPA's automatic lambda. The third line's weights start at zero; training moves all of them.

Measured (docs/benchmarks.md, `scripts/bench/linear_start.py`): started from a real least-squares
fit over all three lines, the branch alone was 1.1-6.6x GRAPPA's image NMSE before training,
and the default method lost to GRAPPA by 2-117% on five of the quality grid's 19 cases. This
start is 1.00-1.43x GRAPPA alone, 0.99-1.05x with GRAPPA's prediction at the k-space edges
(`raki.methods.blind_spots`), and the default lost on one of the 19 (on none since
`linear_rate_scale`).
"""

from __future__ import annotations

import torch
from torch.nn import functional

from raki.model import RECEPTIVE_KX, RECEPTIVE_LATTICE_LINES

# Source lines of the starting kernel: the two lattice lines around the gap.
BRACKET_LINES = 2
# Learning-rate factor of the branch while it has more weights than the ACS gives equations.
UNDERDETERMINED_RATE_SCALE = 0.1


def complex_channels(channels: torch.Tensor) -> torch.Tensor:
    """Real/imaginary channels [2 Nc, ...] (`raki.model.to_channels`) as complex [Nc, ...]."""
    coils = channels.shape[0] // 2
    channels = channels.to(torch.float64)
    return torch.complex(channels[:coils], channels[coils:])


def bracket_system(
    acs: torch.Tensor, acceleration: int, width: int = RECEPTIVE_KX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Complex patches [Nc x width x 2, positions] and targets [Nc (R-1), positions] of the ACS.

    `acs` is complex [Nc, kx, L]; a position is a readout row with its `width`-point
    neighbourhood inside the block and a ky line y with y + R inside it; its targets are lines
    y + 1 .. y + R - 1.
    """
    coils, kx, lines = acs.shape
    positions = lines - acceleration
    window = acs[None, :, :, : positions + acceleration]
    shape, dilation = (width, BRACKET_LINES), (1, acceleration)
    patches = torch.complex(
        functional.unfold(window.real, shape, dilation=dilation)[0],
        functional.unfold(window.imag, shape, dilation=dilation)[0],
    )
    margin = width // 2
    rows = slice(margin, kx - margin)
    targets = torch.stack(
        [acs[:, rows, offset : offset + positions] for offset in range(1, acceleration)], dim=1
    )
    return patches, targets.reshape(coils * (acceleration - 1), -1)


def real_kernel(complex_kernel: torch.Tensor, acceleration: int) -> torch.Tensor:
    """Complex weights [Nc (R-1), Nc, 7, 3] as the real convolution [2 Nc (R-1), 2 Nc, 7, 3].

    A complex weight w acts on x as (Re w Re x - Im w Im x) + i (Im w Re x + Re w Im x).
    Output channel (part, coil, offset) and input channel (part, coil) follow
    `raki.model.to_channels`: real parts first, then imaginary.
    """
    outputs, coils, *taps = complex_kernel.shape
    weights = complex_kernel.reshape(coils, acceleration - 1, coils, *taps)
    real, imag = weights.real, weights.imag
    blocks = torch.stack([torch.stack([real, -imag]), torch.stack([imag, real])])
    # [out part, in part, coil, offset, coil', kx, lines]
    #   -> [(out part, coil, offset), (in part, coil'), kx, lines]
    return blocks.permute(0, 2, 3, 1, 4, 5, 6).reshape(2 * outputs, 2 * coils, *taps)


def tikhonov(patches: torch.Tensor, targets: torch.Tensor, regularization: float) -> torch.Tensor:
    """W minimising |targets - W patches|^2 + lambda s_max^2 |W|^2 (0: minimum-norm W)."""
    gram = patches @ patches.conj().T
    largest = float(torch.linalg.eigvalsh(gram)[-1])
    rhs = patches @ targets.conj().T  # gram W^H = rhs
    if regularization > 0 and largest > 0:
        gram = gram + regularization * largest * torch.eye(gram.shape[0], dtype=gram.dtype)
        adjoint = torch.linalg.solve(gram, rhs)
    else:
        adjoint = torch.linalg.pinv(gram, hermitian=True) @ rhs
    return adjoint.conj().T


def fit_bracket_kernel(
    inputs: torch.Tensor, acceleration: int, regularization: float, width: int = RECEPTIVE_KX
) -> torch.Tensor:
    """Complex GRAPPA-like weights [Nc (R-1), Nc, width, 2] over the two lines around the gap.

    `inputs` are the ACS channels [1, 2 Nc, kx, L]; `regularization` is lambda relative to
    s_max^2, as in `raki.grappa`. Solved in float64.
    """
    acs = complex_channels(inputs[0])
    coils = acs.shape[0]
    patches, targets = bracket_system(acs, acceleration, width)
    return tikhonov(patches, targets, regularization).reshape(
        coils * (acceleration - 1), coils, width, BRACKET_LINES
    )


def fit_linear_kernel(
    inputs: torch.Tensor, acceleration: int, regularization: float
) -> torch.Tensor:
    """The branch's start [2 Nc (R-1), 2 Nc, 7, 3] from the ACS channels [1, 2 Nc, kx, L]."""
    bracket = fit_bracket_kernel(inputs, acceleration, regularization)
    kernel = torch.zeros(
        *bracket.shape[:3], RECEPTIVE_LATTICE_LINES, dtype=bracket.dtype, device=bracket.device
    )
    kernel[..., :BRACKET_LINES] = bracket
    return real_kernel(kernel, acceleration).to(inputs.dtype)


def linear_rate_scale(in_channels: int, readout_positions: int, ky_positions: int) -> float:
    """Learning-rate factor of the linear branch: 1, or 0.1 where its fit is underdetermined.

    Each output of the branch has `in_channels` x 7 x 3 real weights and one equation per ACS
    training position ((kx - 6) x (ACS - 2R)). With fewer equations than weights, Adam, whose
    steps ignore how flat a direction is, walks the start's damped kernel along directions the
    ACS does not constrain: it fits noise. On the 16-coil 64x64 prescan (R = 5 and 6 with 20
    ACS lines, R = 3 with 12) that put the default 8-25% behind GRAPPA; a tenth of the rate
    gave 0.99-1.10x (docs/benchmarks.md, "The linear branch's rate").
    """
    unknowns = in_channels * RECEPTIVE_KX * RECEPTIVE_LATTICE_LINES
    equations = readout_positions * ky_positions
    return 1.0 if equations >= unknowns else UNDERDETERMINED_RATE_SCALE
