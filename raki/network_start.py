"""Where RAKI's networks start: at random, as published, or as a GRAPPA kernel they carry.

The paper starts every weight at random (`raki.model`, truncated normal). The networks have no
biases, but ReLU pairs carry a linear map exactly: relu(a) - relu(-a) = a. So the GRAPPA start
puts a complex two-line kernel (the first layer's 5 kx x 2 lattice lines, fitted on the ACS by
Tikhonov least squares with our GRAPPA's automatic lambda, `raki.linear_branch`) into channels
2j and 2j + 1 of layer 1 as +w and -w, passes both through layer 2 unchanged, and subtracts
them in layer 3's centre tap: before training, output j of every network is that GRAPPA
kernel's prediction of skipped line j. Layer 2 has 8 channels, so 4 skipped lines are carried
(R <= 5 fully; from R = 6 the lines past the fourth start at random). The other channels
start at random, with layer 3 reading none of them, so training adds the nonlinear part.

Measured (docs/benchmarks.md, "RAKI started as GRAPPA"): on high-SNR data, where RAKI as
published ends 1.9-14x worse than GRAPPA, this start ends at 0.76-1.6x of GRAPPA and reaches
faithful RAKI's image after 10 iterations; on the noisy 8-coil brain it ends 1-9% worse than
the random start. Not the default: `raki` stays as published; `--network-start grappa` asks
for it.
"""

from __future__ import annotations

import torch

from raki.linear_branch import fit_bracket_kernel, real_kernel
from raki.model import FIRST_KERNEL, LAST_KERNEL, RakiNetworks

NETWORK_STARTS = ("random", "grappa")
# Layer 3's tap at its kx centre and its first lattice position: the one whose layer-1 input
# reads the two lines around the gap.
_CENTRE_TAP = (LAST_KERNEL[0] // 2, 0)


def carried_lines(acceleration: int, hidden: tuple[int, int]) -> int:
    """How many of the R - 1 skipped lines the ReLU pairs can carry (2 channels each)."""
    return min(acceleration - 1, hidden[0] // 2, hidden[1] // 2)


def grappa_kernel_for_layer1(
    inputs: torch.Tensor, acceleration: int, regularization: float
) -> torch.Tensor:
    """Real weights [2 Nc (R-1), 2 Nc, 5, 2]: a complex GRAPPA kernel on the first layer's field."""
    bracket = fit_bracket_kernel(inputs, acceleration, regularization, width=FIRST_KERNEL[0])
    return real_kernel(bracket, acceleration).to(inputs.dtype)


def embed_linear_start(networks: RakiNetworks, kernel: torch.Tensor) -> None:
    """Set `networks` (one slice's) so that they compute `kernel` [networks (R-1), in, 5, 2]
    on their carried outputs before training; the rest of their weights stay as drawn."""
    outputs = networks.outputs_per_network
    hidden = (
        networks.layer1.out_channels // networks.num_networks,
        networks.layer2.out_channels // networks.num_networks,
    )
    carried = carried_lines(outputs + 1, hidden)
    weights1, weights2, weights3 = (
        networks.layer1.weight,
        networks.layer2.weight,
        networks.layer3.weight,
    )
    with torch.no_grad():
        for network in range(networks.num_networks):
            first, second, last = network * hidden[0], network * hidden[1], network * outputs
            # Outputs past the carried ones keep their random weights but read no carried pair.
            weights3[last + carried : last + outputs, : 2 * carried] = 0
            for line in range(carried):
                linear = kernel[last + line]
                plus, minus = 2 * line, 2 * line + 1
                weights1[first + plus] = linear
                weights1[first + minus] = -linear
                weights2[second + plus] = 0
                weights2[second + minus] = 0
                weights2[second + plus, plus] = 1
                weights2[second + minus, minus] = 1
                weights3[last + line] = 0
                weights3[(last + line, plus, *_CENTRE_TAP)] = 1
                weights3[(last + line, minus, *_CENTRE_TAP)] = -1
