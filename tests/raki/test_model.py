"""The RAKI networks have the paper's layers, and the fused module is 2 Nc networks side by side."""

import numpy as np
import pytest
import torch
from torch.nn import functional

from raki.model import (
    FIRST_KERNEL,
    HIDDEN_CHANNELS,
    RakiNetworks,
    ResidualRakiNetworks,
    build_networks,
    from_channels,
    to_channels,
)
from raki.network_start import carried_lines, embed_linear_start


def single_network_from(fused: RakiNetworks, index: int) -> RakiNetworks:
    """Network `index` of a fused module, as a module of its own with the same weights."""
    hidden1 = fused.layer2.weight.shape[1]
    hidden2 = fused.layer3.weight.shape[1]
    outputs = fused.outputs_per_network
    single = RakiNetworks(fused.in_channels, 1, outputs, (hidden1, hidden2))
    single = single.to(fused.layer1.weight.dtype)
    with torch.no_grad():
        single.layer1.weight.copy_(fused.layer1.weight[index * hidden1 : (index + 1) * hidden1])
        single.layer2.weight.copy_(fused.layer2.weight[index * hidden2 : (index + 1) * hidden2])
        single.layer3.weight.copy_(fused.layer3.weight[index * outputs : (index + 1) * outputs])
    return single


@pytest.mark.parametrize(("coils", "acceleration"), [(4, 2), (3, 4)])
def test_layers_are_the_papers(coils, acceleration):
    networks = build_networks("raki", coils, acceleration)
    channels = 2 * coils
    assert networks.layer1.weight.shape == (channels * 32, channels, 5, 2)
    assert networks.layer2.weight.shape == (channels * 8, 32, 1, 1)
    assert networks.layer2.groups == channels
    assert networks.layer3.weight.shape == (channels * (acceleration - 1), 8, 3, 2)
    assert networks.layer3.groups == channels
    assert all(layer.bias is None for layer in (networks.layer1, networks.layer2, networks.layer3))


def test_output_shape_on_full_grid_and_on_lattice():
    networks = build_networks("raki", 2, 3)
    full_grid = torch.zeros(1, 4, 20, 15)
    assert networks(full_grid, 3).shape == (1, 4 * 2, 14, 15 - 6)
    lattice = torch.zeros(1, 4, 20, 5)
    assert networks(lattice, 1).shape == (1, 4 * 2, 14, 5 - 2)


def test_fused_module_is_each_network_on_its_own():
    torch.manual_seed(0)
    fused = build_networks("raki", 3, 3)
    inputs = torch.randn(1, 6, 16, 12)
    together = fused(inputs, 3)
    for index in range(6):
        alone = single_network_from(fused, index)(inputs, 3)
        torch.testing.assert_close(together[:, 2 * index : 2 * index + 2], alone)


def test_networks_are_positively_homogeneous():
    """No biases and ReLU: scaling the k-space scales the prediction, so scale is free to pick."""
    networks = build_networks("rraki", 2, 2)
    with torch.no_grad():
        networks.linear.weight.normal_()
    inputs = torch.randn(1, 4, 12, 9, dtype=torch.float64)
    networks = networks.double()
    torch.testing.assert_close(networks(inputs * 1000.0, 2), networks(inputs, 2) * 1000.0)


def test_residual_networks_add_a_linear_kernel_over_the_same_field():
    networks = build_networks("rraki", 2, 4)
    assert isinstance(networks, ResidualRakiNetworks)
    assert networks.linear.weight.shape == (4 * 3, 4, 7, 3)
    inputs = torch.randn(1, 4, 16, 20)
    linear, total = networks.forward_parts(inputs, 4)
    assert linear.shape == total.shape == networks.cnn(inputs, 4).shape
    torch.testing.assert_close(total - linear, networks.cnn(inputs, 4))


def test_same_generator_seed_same_initial_weights():
    first = build_networks("raki", 2, 2, generator=torch.Generator().manual_seed(5))
    again = build_networks("raki", 2, 2, generator=torch.Generator().manual_seed(5))
    for a, b in zip(first.parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert float(first.layer1.weight.detach().abs().max()) <= 0.2


def test_channels_round_trip():
    rng = np.random.default_rng(0)
    kspace = (rng.standard_normal((2, 3, 5, 4)) + 1j * rng.standard_normal((2, 3, 5, 4))).astype(
        np.complex64
    )
    channels = to_channels(kspace)
    assert channels.shape == (2, 6, 5, 4) and channels.dtype == np.float32
    np.testing.assert_array_equal(channels[:, :3], kspace.real)
    np.testing.assert_array_equal(from_channels(channels), kspace)


@pytest.mark.parametrize("acceleration", [2, 4, 5, 7])
def test_the_grappa_start_computes_the_kernel_it_carries(acceleration):
    """relu(a) - relu(-a) = a: before training, each carried output is the linear kernel's
    prediction (outputs past the fourth, from R = 6, keep a random start)."""
    channels, outputs = 6, acceleration - 1
    networks = RakiNetworks(channels, channels, outputs, generator=torch.Generator().manual_seed(0))
    kernel = torch.randn(channels * outputs, channels, *FIRST_KERNEL, dtype=torch.float32)
    embed_linear_start(networks, kernel)
    lattice = torch.randn(1, channels, 20, 9)
    with torch.no_grad():
        predicted = networks(lattice)
        linear = functional.conv2d(lattice, kernel)[:, :, 1:-1, :-1]
    carried = carried_lines(acceleration, HIDDEN_CHANNELS)
    assert carried == min(outputs, 4)
    per_network = predicted.reshape(1, channels, outputs, 14, 7)
    expected = linear.reshape(1, channels, outputs, 14, 7)
    torch.testing.assert_close(per_network[:, :, :carried], expected[:, :, :carried])
    if carried < outputs:
        assert not torch.allclose(per_network[:, :, carried:], expected[:, :, carried:])
