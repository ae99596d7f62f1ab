"""rRAKI's linear branch start: a complex-linear kernel as a real convolution, fitted exactly."""

import numpy as np
import torch
from torch.nn import functional

from raki.linear_branch import complex_targets, fit_linear_kernel, lattice_patches, real_kernel
from raki.model import RECEPTIVE_KX, RECEPTIVE_LATTICE_LINES, to_channels
from raki.train import training_pair


def random_acs(coils: int, kx: int, lines: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((coils, kx, lines)) + 1j * rng.standard_normal((coils, kx, lines))


def random_complex_kernel(coils: int, acceleration: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (coils * (acceleration - 1), coils * RECEPTIVE_KX * RECEPTIVE_LATTICE_LINES)
    parts = torch.randn(2, *shape, generator=generator, dtype=torch.float64)
    return torch.complex(parts[0], parts[1])


def test_the_real_convolution_computes_the_complex_product():
    """conv2d with `real_kernel(W)` on real/imaginary channels is W times the complex patches."""
    coils, acceleration = 3, 3
    acs = random_acs(coils, 12, 9, seed=1)
    inputs = torch.from_numpy(to_channels(acs)).double()[None]
    kernel = random_complex_kernel(coils, acceleration, seed=2)
    convolved = functional.conv2d(
        inputs, real_kernel(kernel, coils, acceleration), dilation=(1, acceleration)
    )
    expected = kernel @ lattice_patches(inputs, acceleration)
    torch.testing.assert_close(complex_targets(convolved), expected)


def test_an_exact_complex_relation_is_recovered():
    """Targets that a complex 7 x 3 lattice kernel explains exactly give back that kernel."""
    coils, acceleration = 2, 2
    acs = random_acs(coils, 20, 16, seed=3)
    inputs, _ = training_pair(torch.from_numpy(to_channels(acs)).double(), acceleration)
    kernel = real_kernel(random_complex_kernel(coils, acceleration, seed=4), coils, acceleration)
    targets = functional.conv2d(inputs, kernel, dilation=(1, acceleration))
    fitted = fit_linear_kernel(inputs, targets, acceleration, regularization=0.0)
    torch.testing.assert_close(fitted, kernel)


def test_damping_shrinks_the_kernel_towards_zero():
    coils, acceleration = 2, 3
    acs = random_acs(coils, 16, 12, seed=5)
    inputs, targets = training_pair(torch.from_numpy(to_channels(acs)).double(), acceleration)
    norms = [
        float(fit_linear_kernel(inputs, targets, acceleration, lam).norm())
        for lam in (0.0, 1e-3, 1e-1, 10.0)
    ]
    assert norms == sorted(norms, reverse=True) and norms[-1] < 0.1 * norms[0]
