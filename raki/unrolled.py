"""An unrolled SENSE network: a small residual CNN and CG-SENSE data consistency, alternating.

The physics-guided network of SSDU and zero-shot SSDU (Yaman et al., MRM 84:3172-3191, 2020;
Yaman, Hosseini and Akcakaya, ICLR 2022), made small enough to train on one slice on a CPU.
With A the SENSE operator of the data-consistency set (`raki.sense.SenseOperator`: ESPIRiT
maps, FFT, a k-space mask), y the measured k-space and x_0 a start image, each of T unrolls
with shared weights does

    z_t = x_{t-1} + R(x_{t-1})                          (regulariser, a residual CNN)
    x_t = argmin ||A x - y||^2 + mu ||x - z_t||^2       (data consistency)
        = (A^H A + mu I)^-1 (A^H y + mu z_t),           by a fixed number of CG iterations,

with mu learned. R works on the real and imaginary parts of every map set as channels; its
last layer starts at zero, so the untrained network is the proximal-point iteration of
least-squares SENSE from x_0, and training learns only what improves on it.
"""

from __future__ import annotations

import torch
from torch import nn

from raki.sense_operator import SenseOperator

DEFAULT_UNROLLS = 4
DEFAULT_FEATURES = 16
DEFAULT_BLOCKS = 2
DEFAULT_CG_ITERATIONS = 6
# mu = 1 weighs the regulariser's image like the data at a fully sampled voxel (||A^H A|| <= 1
# with ESPIRiT maps), so the first steps neither discard the start nor ignore the data.
DEFAULT_MU = 1.0


def to_channels(image: torch.Tensor) -> torch.Tensor:
    """complex [set, x, y] -> real [1, 2 set, x, y] (real parts, then imaginary parts)."""
    return torch.cat([image.real, image.imag], dim=0)[None]


def from_channels(channels: torch.Tensor) -> torch.Tensor:
    """real [1, 2 set, x, y] -> complex [set, x, y]."""
    real, imag = channels[0].chunk(2, dim=0)
    return torch.complex(real, imag)


class ResidualBlock(nn.Module):
    """conv - ReLU - conv plus the input, scaled down (as in the ResNet of SSDU)."""

    def __init__(self, features: int, scale: float = 0.1) -> None:
        super().__init__()
        self.first = nn.Conv2d(features, features, 3, padding=1)
        self.second = nn.Conv2d(features, features, 3, padding=1)
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.scale * self.second(torch.relu(self.first(features)))


class ResidualRegularizer(nn.Module):
    """x -> x + R(x) on a complex image [set, x, y]; R starts at zero (its last layer)."""

    def __init__(self, sets: int, features: int = DEFAULT_FEATURES, blocks: int = DEFAULT_BLOCKS):
        super().__init__()
        channels = 2 * sets
        self.entry = nn.Conv2d(channels, features, 3, padding=1)
        self.blocks = nn.Sequential(*(ResidualBlock(features) for _ in range(blocks)))
        self.exit = nn.Conv2d(features, channels, 3, padding=1)
        nn.init.zeros_(self.exit.weight)
        nn.init.zeros_(self.exit.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        channels = to_channels(image)
        features = self.entry(channels)
        return image + from_channels(self.exit(self.blocks(features) + features))


def conjugate_gradient(
    operator: SenseOperator,
    rhs: torch.Tensor,
    mu: torch.Tensor,
    start: torch.Tensor,
    iterations: int,
) -> torch.Tensor:
    """(A^H A + mu I) x = rhs by exactly `iterations` CG steps from `start`, differentiable.

    A fixed count (no stopping test) keeps the graph and the result the same on every run.
    """
    x = start
    residual = rhs - (operator.normal(x) + mu * x)
    direction = residual
    power = torch.vdot(residual.flatten(), residual.flatten()).real
    for _ in range(iterations):
        applied = operator.normal(direction) + mu * direction
        step = power / torch.vdot(direction.flatten(), applied.flatten()).real.clamp_min(1e-30)
        x = x + step * direction
        residual = residual - step * applied
        new_power = torch.vdot(residual.flatten(), residual.flatten()).real
        direction = residual + (new_power / power.clamp_min(1e-30)) * direction
        power = new_power
    return x


class UnrolledSense(nn.Module):
    """T unrolls of (residual CNN, CG-SENSE data consistency), shared weights, a learned mu."""

    def __init__(
        self,
        sets: int,
        *,
        unrolls: int = DEFAULT_UNROLLS,
        features: int = DEFAULT_FEATURES,
        blocks: int = DEFAULT_BLOCKS,
        cg_iterations: int = DEFAULT_CG_ITERATIONS,
        mu: float = DEFAULT_MU,
    ) -> None:
        super().__init__()
        self.regularizer = ResidualRegularizer(sets, features, blocks)
        self.log_mu = nn.Parameter(torch.tensor(float(mu)).log())
        self.unrolls = unrolls
        self.cg_iterations = cg_iterations

    @property
    def mu(self) -> torch.Tensor:
        return self.log_mu.exp()

    def forward(
        self, operator: SenseOperator, measured: torch.Tensor, start: torch.Tensor
    ) -> torch.Tensor:
        """The image [set, x, y] from k-space `measured` on `operator`'s mask, from `start`."""
        mu = self.mu
        data_term = operator.adjoint(measured)
        image = start
        for _ in range(self.unrolls):
            prior = self.regularizer(image)
            image = conjugate_gradient(
                operator, data_term + mu * prior, mu, prior, self.cg_iterations
            )
        return image
