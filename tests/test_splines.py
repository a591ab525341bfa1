"""Rational-quadratic spline functions: agreement with nflows, tails, stability, identity."""

from __future__ import annotations

import math

import pytest
import torch

from normflows_sci.transforms.elementwise import RQSplineMap
from normflows_sci.transforms.splines import (
    rational_quadratic_spline,
    unconstrained_rational_quadratic_spline,
)

nflows_rq = pytest.importorskip("nflows.transforms.splines.rational_quadratic")


def _params(batch, features, bins, scale=1.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    w = scale * torch.randn(batch, features, bins, generator=g, dtype=dtype)
    h = scale * torch.randn(batch, features, bins, generator=g, dtype=dtype)
    d = scale * torch.randn(batch, features, bins - 1, generator=g, dtype=dtype)
    return w, h, d


@pytest.mark.parametrize("bins", [2, 8, 16])
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_unconstrained_spline_matches_nflows(bins, scale):
    w, h, d = _params(500, 3, bins, scale)
    x = 4.0 * torch.randn(500, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = unconstrained_rational_quadratic_spline(x, w, h, d, tail_bound=3.0)
    theirs = nflows_rq.unconstrained_rational_quadratic_spline(x, w, h, d, tail_bound=3.0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    y = ours[0]
    ours_inv = unconstrained_rational_quadratic_spline(y, w, h, d, tail_bound=3.0, inverse=True)
    theirs_inv = nflows_rq.unconstrained_rational_quadratic_spline(
        y, w, h, d, tail_bound=3.0, inverse=True
    )
    for a, b in zip(ours_inv, theirs_inv):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours_inv[0], x, atol=1e-9, rtol=0)


@pytest.mark.parametrize("inverse", [False, True])
def test_gradients_match_nflows(inverse):
    w, h, d = _params(400, 3, 8, scale=2.0, seed=7)
    x = 3.0 * torch.randn(400, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    grads = []
    for spline in (
        unconstrained_rational_quadratic_spline,
        nflows_rq.unconstrained_rational_quadratic_spline,
    ):
        leaves = [t.clone().requires_grad_(True) for t in (x, w, h, d)]
        y, logabsdet = spline(*leaves, tail_bound=2.5, inverse=inverse)
        (0.3 * y.sum() + logabsdet.sum()).backward()
        grads.append([leaf.grad for leaf in leaves])
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("inverse", [False, True])
def test_second_derivatives_are_exact(inverse):
    """Double backward (e.g. gradients of a flow's score, as in SNF training) is exact."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(5, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    params = torch.randn(5, 2, 11, generator=generator, dtype=torch.float64, requires_grad=True)
    spline = RQSplineMap(bins=4, tail_bound=1.5)
    function = spline.inverse if inverse else spline.forward
    assert torch.autograd.gradcheck(function, (x, params))
    assert torch.autograd.gradgradcheck(function, (x, params))


def test_bounded_spline_matches_nflows_on_asymmetric_interval():
    w, h, _ = _params(300, 2, 6)
    d = torch.randn(300, 2, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x = torch.rand(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    box = dict(left=0.0, right=1.0, bottom=-2.0, top=3.0)
    ours = rational_quadratic_spline(x, w, h, d, **box)
    theirs = nflows_rq.rational_quadratic_spline(x, w, h, d, **box)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert ours[0].min() >= -2.0 and ours[0].max() <= 3.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_far_outside_the_bound_is_identity_with_finite_gradients(dtype):
    w, h, d = _params(6, 1, 8, dtype=dtype)
    for params in (w, h, d):
        params.requires_grad_(True)
    x = torch.tensor([-1e30, -1e6, -5.0001, 5.0001, 1e6, 1e30], dtype=dtype)[:, None]
    x.requires_grad_(True)
    for inverse in (False, True):
        y, logabsdet = unconstrained_rational_quadratic_spline(
            x, w, h, d, tail_bound=5.0, inverse=inverse
        )
        assert torch.equal(y, x.detach()) and torch.equal(logabsdet, torch.zeros_like(logabsdet))
        (y.sum() + logabsdet.sum()).backward()
        for tensor in (x, w, h, d):
            assert torch.isfinite(tensor.grad).all()


def test_zero_parameters_give_exact_identity():
    spline = RQSplineMap(bins=8, tail_bound=3.0)
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    params = torch.zeros(101, spline.num_params, dtype=torch.float64)
    y, logabsdet = spline.forward(x, params)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(logabsdet, torch.zeros_like(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_parameters_stay_finite_monotone_and_invertible(dtype):
    w, h, d = _params(2000, 1, 8, scale=8.0, seed=3, dtype=dtype)
    x = torch.linspace(-3.2, 3.2, 2000, dtype=dtype)[:, None]
    # Same parameters along the grid so monotonicity can be checked.
    w, h, d = w[:1].expand_as(w), h[:1].expand_as(h), d[:1].expand_as(d)
    y, logabsdet = unconstrained_rational_quadratic_spline(x, w, h, d, tail_bound=3.0)
    assert torch.isfinite(y).all() and torch.isfinite(logabsdet).all()
    assert (y[1:] >= y[:-1]).all()
    x_back, inverse_logabsdet = unconstrained_rational_quadratic_spline(
        y, w, h, d, tail_bound=3.0, inverse=True
    )
    assert torch.isfinite(x_back).all() and torch.isfinite(inverse_logabsdet).all()
    atol = 1e-3 if dtype == torch.float32 else 1e-8
    torch.testing.assert_close(x_back, x, atol=atol, rtol=0)


def test_logabsdet_is_the_log_derivative():
    w, h, d = _params(1, 1, 8, scale=1.5)
    x = torch.linspace(-2.9, 2.9, 200, dtype=torch.float64)[:, None].requires_grad_(True)
    shape = (200, 1, 8)
    y, logabsdet = unconstrained_rational_quadratic_spline(
        x, w.expand(shape), h.expand(shape), d.expand(200, 1, 7), tail_bound=3.0
    )
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(logabsdet, grad.log(), atol=1e-10, rtol=0)


def test_periodic_derivatives_give_a_circle_map():
    """The same function serves circular splines: equal end derivatives on [-pi, pi]."""
    w, h, _ = _params(50, 1, 6)
    raw = torch.randn(50, 1, 6, dtype=torch.float64)
    d = torch.cat([raw, raw[..., :1]], dim=-1)
    box = dict(left=-math.pi, right=math.pi, bottom=-math.pi, top=math.pi)
    ends = torch.tensor([-math.pi, math.pi], dtype=torch.float64)[None, :].expand(50, 2)
    y, logabsdet = rational_quadratic_spline(
        ends, w.expand(50, 2, 6), h.expand(50, 2, 6), d.expand(50, 2, 7), **box
    )
    torch.testing.assert_close(y, ends)
    torch.testing.assert_close(logabsdet[:, 0], logabsdet[:, 1])


def test_bad_arguments_are_clear_errors():
    w, h, d = _params(2, 1, 4)
    with pytest.raises(ValueError, match="min"):
        rational_quadratic_spline(
            torch.zeros(2, 1), w, h, torch.zeros(2, 1, 5, dtype=torch.float64), min_bin_width=0.5
        )
    with pytest.raises(ValueError, match="unnormalized_derivatives"):
        unconstrained_rational_quadratic_spline(torch.zeros(2, 1), w, h, w)
    with pytest.raises(ValueError, match="tail_bound"):
        unconstrained_rational_quadratic_spline(torch.zeros(2, 1), w, h, d, tail_bound=0.0)
    with pytest.raises(ValueError, match="bins"):
        RQSplineMap(bins=1)
    with pytest.raises(ValueError, match=r"unnormalized_heights.*broadcastable"):
        rational_quadratic_spline(torch.zeros(2, 1), w, h[:, :, None], torch.zeros(2, 1, 5))
