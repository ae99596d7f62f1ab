"""Where residual RAKI's linear branch starts: GRAPPA over the networks' receptive field.

The linear branch is a real convolution on the 2 Nc real/imaginary channels, but k-space
relations between coils are complex-linear: a complex weight w acts on a sample x as
(Re w Re x - Im w Im x) + i (Im w Re x + Re w Im x). A real kernel has twice the freedom, which
the few ACS positions cannot pin down: started from a real least-squares fit, the default
method lost to GRAPPA alone by 2-117% on five of the quality grid's 19 cases. Started from the
complex fit below, damped with GRAPPA's own automatic lambda (relative to s_max^2), it lost on
two (docs/benchmarks.md). Training then moves the branch freely: this is only its start.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from raki.model import RECEPTIVE_KX, RECEPTIVE_LATTICE_LINES


def lattice_patches(inputs: torch.Tensor, acceleration: int) -> torch.Tensor:
    """Complex patches [coil x 7 x 3, positions] of the real ACS channels [1, 2 Nc, kx, L]."""
    coils = inputs.shape[1] // 2
    channels = inputs[0].to(torch.float64)
    shape, dilation = (RECEPTIVE_KX, RECEPTIVE_LATTICE_LINES), (1, acceleration)
    real = functional.unfold(channels[None, :coils], shape, dilation=dilation)[0]
    imag = functional.unfold(channels[None, coils:], shape, dilation=dilation)[0]
    return torch.complex(real, imag)


def complex_targets(targets: torch.Tensor) -> torch.Tensor:
    """Targets [1, 2 Nc (R-1), kx', P] (channel-major) as complex [Nc (R-1), positions]."""
    _, outputs, *_ = targets.shape
    channels = targets[0].to(torch.float64).reshape(2, outputs // 2, -1)
    return torch.complex(channels[0], channels[1])


def real_kernel(complex_kernel: torch.Tensor, coils: int, acceleration: int) -> torch.Tensor:
    """Complex weights [Nc (R-1), Nc x 7 x 3] as the real convolution [2 Nc (R-1), 2 Nc, 7, 3].

    Output channel (part, coil, offset) and input channel (part, coil) follow
    `raki.model.to_channels`: real parts first, then imaginary.
    """
    weights = complex_kernel.reshape(
        coils, acceleration - 1, coils, RECEPTIVE_KX, RECEPTIVE_LATTICE_LINES
    )
    real, imag = weights.real, weights.imag
    blocks = torch.stack([torch.stack([real, -imag]), torch.stack([imag, real])])
    # [out part, in part, coil, offset, coil', kx, lines]
    #   -> [(out part, coil, offset), (in part, coil'), kx, lines]
    blocks = blocks.permute(0, 2, 3, 1, 4, 5, 6)
    return blocks.reshape(
        2 * coils * (acceleration - 1), 2 * coils, RECEPTIVE_KX, RECEPTIVE_LATTICE_LINES
    )


def fit_linear_kernel(
    inputs: torch.Tensor, targets: torch.Tensor, acceleration: int, regularization: float
) -> torch.Tensor:
    """Complex Tikhonov least squares over the receptive field, as a real kernel [out, in, 7, 3].

    `regularization` is lambda relative to the largest eigenvalue of P P^H (as in
    `raki.grappa`); 0 gives the minimum-norm solution. Solved in float64.
    """
    patches = lattice_patches(inputs, acceleration)
    wanted = complex_targets(targets)
    gram = patches @ patches.conj().T
    largest = float(torch.linalg.eigvalsh(gram)[-1])
    rhs = patches @ wanted.conj().T  # the fit is wanted = W patches, i.e. gram W^H = rhs
    if regularization > 0 and largest > 0:
        gram = gram + regularization * largest * torch.eye(gram.shape[0], dtype=gram.dtype)
        adjoint = torch.linalg.solve(gram, rhs)
    else:
        adjoint = torch.linalg.pinv(gram, hermitian=True) @ rhs
    coils = inputs.shape[1] // 2
    return real_kernel(adjoint.conj().T, coils, acceleration).to(inputs.dtype)
