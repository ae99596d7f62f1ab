"""The RAKI networks (Akcakaya et al., MRM 2019) and residual RAKI (Zhang et al., NeuroImage 2022).

RAKI fills the lines that R-fold equispaced sampling skips with one small CNN per coil and per
real/imaginary part. Each network reads the real and imaginary parts of all Nc coils (2 Nc
channels) on the acquired lattice and predicts the R - 1 skipped lines of its own channel:

    conv 5 (kx) x 2 (ky), 2 Nc -> 32, ReLU
    conv 1 x 1,           32   -> 8,  ReLU
    conv 3 (kx) x 2 (ky), 8    -> R - 1

with no biases. Along ky the kernels step over acquired lines only: dilation R on the full grid,
dilation 1 on the lattice of acquired lines. The output at lattice line k therefore sees lines
k, k + 1, k + 2 (ky offsets 0, R, 2R) and 7 points along kx, and predicts the R - 1 lines that
follow line k (offsets 1 .. R - 1).

The 2 Nc networks are fused into one module: a dense first layer (every input to 2 Nc x 32
channels) and grouped later layers (groups = 2 Nc), so network n is exactly channels
[32 n, 32 (n + 1)) of layer 1, [8 n, 8 (n + 1)) of layer 2 and [(R-1) n, (R-1)(n + 1)) of the
output. A loss that sums per-network losses keeps their gradients independent, so training the
fused module is training the 2 Nc networks side by side, in one pass.

Every layer is linear without bias and ReLU is positively homogeneous, so f(a x) = a f(x) for
a > 0: the networks do not care about the k-space scale once trained.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional

FIRST_KERNEL = (5, 2)
MIDDLE_KERNEL = (1, 1)
LAST_KERNEL = (3, 2)
HIDDEN_CHANNELS = (32, 8)
INIT_STD = 0.1
# Both CNN kernels span 2 lattice lines, so together 3 lattice lines and 5 + 3 - 1 kx points.
RECEPTIVE_KX = FIRST_KERNEL[0] + LAST_KERNEL[0] - 1
RECEPTIVE_LATTICE_LINES = FIRST_KERNEL[1] + LAST_KERNEL[1] - 1
KX_MARGIN = RECEPTIVE_KX // 2


def _init_truncated_normal(weight: torch.Tensor, generator: torch.Generator | None) -> None:
    """Normal(0, 0.1) truncated at two standard deviations, the initialisation RAKI was tuned on."""
    with torch.no_grad():
        values = torch.randn(weight.shape, generator=generator, dtype=weight.dtype)
        while True:
            outside = values.abs() > 2.0
            if not outside.any():
                break
            values[outside] = torch.randn(
                int(outside.sum()), generator=generator, dtype=weight.dtype
            )
        weight.copy_(values * INIT_STD)


class RakiNetworks(nn.Module):
    """`num_networks` RAKI CNNs side by side, each reading all `in_channels` inputs.

    `RakiNetworks(2 * coils, 2 * coils, R - 1)` is the paper's full set for one slice;
    `RakiNetworks(2 * coils, 1, R - 1)` is one of them on its own. With `input_groups` = S the
    inputs and networks are S slices' side by side (`merge_slices`): each slice's networks read
    only that slice's channels.
    """

    def __init__(
        self,
        in_channels: int,
        num_networks: int,
        outputs_per_network: int,
        hidden: tuple[int, int] = HIDDEN_CHANNELS,
        generator: torch.Generator | None = None,
        input_groups: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_networks = num_networks
        self.outputs_per_network = outputs_per_network
        self.input_groups = input_groups
        self.layer1 = nn.Conv2d(
            in_channels, num_networks * hidden[0], FIRST_KERNEL, groups=input_groups, bias=False
        )
        self.layer2 = nn.Conv2d(
            num_networks * hidden[0],
            num_networks * hidden[1],
            MIDDLE_KERNEL,
            groups=num_networks,
            bias=False,
        )
        self.layer3 = nn.Conv2d(
            num_networks * hidden[1],
            num_networks * outputs_per_network,
            LAST_KERNEL,
            groups=num_networks,
            bias=False,
        )
        for layer in (self.layer1, self.layer2, self.layer3):
            _init_truncated_normal(layer.weight, generator)

    def forward(self, lattice: torch.Tensor, ky_dilation: int = 1) -> torch.Tensor:
        """[batch, in, kx, ky] -> [batch, networks x outputs, kx - 6, ky - 2 ky_dilation].

        `ky_dilation` is R on the full grid (training on the ACS) and 1 on the acquired lattice.
        """
        dilation = (1, ky_dilation)
        hidden = functional.relu(
            functional.conv2d(
                lattice, self.layer1.weight, dilation=dilation, groups=self.input_groups
            )
        )
        hidden = functional.relu(self.layer2(hidden))
        return functional.conv2d(
            hidden, self.layer3.weight, dilation=dilation, groups=self.num_networks
        )


class ResidualRakiNetworks(nn.Module):
    """Residual RAKI: a linear convolution (a GRAPPA kernel) plus the RAKI CNNs on its residual.

    The linear kernel covers the CNN's receptive field (7 kx points x 3 lattice lines), so the
    two branches see the same data; `forward_parts` returns both, the training loss weighs the
    linear branch's own error (Zhang et al., NeuroImage 2022) so that it stays a GRAPPA-like
    estimate and the CNN learns what a linear kernel cannot.
    """

    def __init__(
        self,
        in_channels: int,
        num_networks: int,
        outputs_per_network: int,
        hidden: tuple[int, int] = HIDDEN_CHANNELS,
        generator: torch.Generator | None = None,
        input_groups: int = 1,
    ) -> None:
        super().__init__()
        self.input_groups = input_groups
        self.linear = nn.Conv2d(
            in_channels,
            num_networks * outputs_per_network,
            (RECEPTIVE_KX, RECEPTIVE_LATTICE_LINES),
            groups=input_groups,
            bias=False,
        )
        nn.init.zeros_(self.linear.weight)
        self.cnn = RakiNetworks(
            in_channels, num_networks, outputs_per_network, hidden, generator, input_groups
        )

    def forward_parts(
        self, lattice: torch.Tensor, ky_dilation: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(linear estimate, linear + CNN estimate), both shaped as `RakiNetworks.forward`."""
        linear = functional.conv2d(
            lattice, self.linear.weight, dilation=(1, ky_dilation), groups=self.input_groups
        )
        return linear, linear + self.cnn(lattice, ky_dilation)

    def forward(self, lattice: torch.Tensor, ky_dilation: int = 1) -> torch.Tensor:
        return self.forward_parts(lattice, ky_dilation)[1]


def build_networks(
    method: str,
    num_coils: int,
    acceleration: int,
    hidden: tuple[int, int] = HIDDEN_CHANNELS,
    generator: torch.Generator | None = None,
) -> RakiNetworks | ResidualRakiNetworks:
    """The fused networks of one slice for `method` ("raki" or "rraki")."""
    channels = 2 * num_coils
    if method == "raki":
        return RakiNetworks(channels, channels, acceleration - 1, hidden, generator)
    if method == "rraki":
        return ResidualRakiNetworks(channels, channels, acceleration - 1, hidden, generator)
    raise ValueError(f"no networks for method {method!r}")


def merge_slices(
    networks: list[RakiNetworks] | list[ResidualRakiNetworks],
) -> RakiNetworks | ResidualRakiNetworks:
    """One module holding several slices' networks side by side, to train them in one pass.

    Every weight is the slices' weights stacked along the output channels; the first layer (and
    rRAKI's linear kernel) becomes grouped by slice, so slice s reads only its own inputs
    (channels [s 2Nc, (s + 1) 2Nc)). Adam is elementwise and the loss a sum over networks, so
    training the merged module is training each slice alone: on a GPU, one launch instead of S.
    """
    first = networks[0]
    cnn = first.cnn if isinstance(first, ResidualRakiNetworks) else first
    count = len(networks)
    hidden = (
        cnn.layer1.out_channels // cnn.num_networks,
        cnn.layer2.out_channels // cnn.num_networks,
    )
    kind = type(first)
    merged = kind(
        count * cnn.in_channels,
        count * cnn.num_networks,
        cnn.outputs_per_network,
        hidden,
        input_groups=count,
    )
    with torch.no_grad():
        for name, weight in merged.state_dict().items():
            weight.copy_(torch.cat([part.state_dict()[name] for part in networks]))
    return merged


def split_slices(merged: RakiNetworks | ResidualRakiNetworks) -> list[dict[str, torch.Tensor]]:
    """The per-slice state dicts of a `merge_slices` module (inverse of the merge)."""
    count = merged.input_groups
    return [
        {
            name: weight.detach().chunk(count)[index].clone()
            for name, weight in merged.state_dict().items()
        }
        for index in range(count)
    ]


def to_channels(kspace: np.ndarray) -> np.ndarray:
    """Complex [..., coil, kx, ky] -> float32 [..., 2 coil, kx, ky]: real parts, then imaginary."""
    return np.concatenate([kspace.real, kspace.imag], axis=-3).astype(np.float32)


def from_channels(channels: np.ndarray) -> np.ndarray:
    """Inverse of `to_channels`: float [..., 2 coil, kx, ky] -> complex64 [..., coil, kx, ky]."""
    coils = channels.shape[-3] // 2
    real, imag = channels[..., :coils, :, :], channels[..., coils:, :, :]
    return (real + 1j * imag).astype(np.complex64)
