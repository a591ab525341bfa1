"""Circle variables in Euclidean flows: circular splines, angle-aware couplings and bases."""

from __future__ import annotations

import math

import pytest
import torch
from tests_helpers import perturb

from normflows_sci.distributions import NormalWithAngles
from normflows_sci.flows import NSF
from normflows_sci.transforms import CircularSplineMap, SplineCouplingTransform, wrap_angle


def angle_flow(**kwargs):
    torch.manual_seed(0)
    flow = NSF(
        2,
        coupling=True,
        circular=[True, False],
        transforms=3,
        hidden_features=(16,),
        bins=6,
        **kwargs,
    )
    return perturb(flow, scale=0.3).double()


@pytest.mark.parametrize("permutation", ["alternate", "random"])
def test_density_on_circle_times_line_integrates_to_one(permutation):
    flow = angle_flow(permutation=permutation, seed=1)
    points, bound = 400, 9.0
    angles = -math.pi + 2 * math.pi * (torch.arange(points, dtype=torch.float64) + 0.5) / points
    line = -bound + 2 * bound * (torch.arange(points, dtype=torch.float64) + 0.5) / points
    grid = torch.cartesian_prod(angles, line)
    with torch.no_grad():
        density = flow.log_prob(grid).exp()
    integral = float(density.sum()) * (2 * math.pi / points) * (2 * bound / points)
    assert integral == pytest.approx(1.0, abs=1e-3)


def test_angles_stay_on_the_circle_and_density_is_periodic():
    flow = angle_flow()
    with torch.no_grad():
        x, log_prob = flow.sample_and_log_prob(2000, generator=torch.Generator().manual_seed(0))
        assert float(x[:, 0].min()) >= -math.pi and float(x[:, 0].max()) < math.pi
        assert torch.allclose(flow.log_prob(x), log_prob, atol=1e-8)
        shifted = x + torch.tensor([2 * math.pi, 0.0], dtype=x.dtype)
        assert torch.allclose(flow.log_prob(shifted), log_prob, atol=1e-8)


def test_conditioner_is_periodic_in_angles():
    torch.manual_seed(0)
    layer = perturb(
        SplineCouplingTransform([False, True], circular=[True, False], hidden_features=(8,))
    ).double()
    x = torch.randn(32, 2, dtype=torch.float64)
    y, lad = layer(x)
    y2, lad2 = layer(x + torch.tensor([2 * math.pi, 0.0], dtype=x.dtype))
    assert torch.allclose(y[:, 1], y2[:, 1]) and torch.allclose(lad, lad2)


def test_circular_spline_is_identity_at_zero_and_smooth_across_pi():
    spline = CircularSplineMap(5)
    x = torch.linspace(-math.pi, math.pi - 1e-6, 101, dtype=torch.float64)
    y, lad = spline.forward(x, torch.zeros(101, spline.num_params, dtype=torch.float64))
    assert torch.allclose(y, x, atol=1e-12) and torch.allclose(
        lad, torch.zeros_like(lad), atol=1e-12
    )
    params = torch.randn(1, spline.num_params, dtype=torch.float64).expand(2, -1)
    ends = torch.tensor([-math.pi, math.pi - 1e-12], dtype=torch.float64)
    y, lad = spline.forward(ends, params)
    assert float(wrap_angle(y[1] - y[0]).abs()) < 1e-9
    assert float((lad[1] - lad[0]).abs()) < 1e-6


def test_normal_with_angles_base():
    base = NormalWithAngles([True, False, True])
    x = base.sample(20000, generator=torch.Generator().manual_seed(0))
    assert float(x[:, [0, 2]].abs().max()) <= math.pi
    assert abs(float(x[:, 1].std()) - 1) < 0.03
    assert float(base.log_prob(torch.tensor([[4.0, 0.0, 0.0]]))) == -math.inf


def test_circular_needs_coupling_and_matching_length():
    with pytest.raises(ValueError, match="coupling=True"):
        NSF(2, circular=[True, False])
    with pytest.raises(ValueError, match="one boolean per feature"):
        NSF(3, coupling=True, circular=[True, False])
    with pytest.raises(ValueError, match="one boolean per feature"):
        SplineCouplingTransform([True, False], circular=[True])
