"""Property tests run on every registered transform (see ``TRANSFORMS`` in conftest.py)."""

from __future__ import annotations

import io

import pytest
import torch

from conftest import TRANSFORMS
from normflows_sci.nn import MaskedLinear

DTYPES = [torch.float64, torch.float32]
TOLERANCE = {torch.float64: 1e-8, torch.float32: 2e-4}


def _setup(name, dtype, device, batch=16, seed=0):
    case = TRANSFORMS[name]
    torch.manual_seed(seed)
    transform = case.build().to(device=device, dtype=dtype).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    x = case.input_scale * torch.randn(batch, case.features, generator=generator, dtype=dtype)
    context = None
    if case.context_features:
        context = torch.randn(batch, case.context_features, generator=generator, dtype=dtype)
        context = context.to(device)
    return case, transform, x.to(device), context


@pytest.fixture(params=sorted(TRANSFORMS))
def name(request):
    return request.param


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_shapes_dtype_device_and_round_trip(name, dtype, device):
    _case, transform, x, context = _setup(name, dtype, device)
    z, logabsdet = transform(x, context)
    assert z.shape == x.shape and logabsdet.shape == (x.shape[0],)
    assert z.dtype == dtype and logabsdet.dtype == dtype and z.device == x.device
    assert torch.isfinite(z).all() and torch.isfinite(logabsdet).all()
    x_back, inverse_logabsdet = transform.inverse(z, context)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(x_back, x, atol=tol * 10, rtol=tol * 10)
    torch.testing.assert_close(inverse_logabsdet, -logabsdet, atol=tol * 10, rtol=tol * 10)


def test_transform_is_not_trivial(name, device):
    """Guards the other tests: a registered transform must actually move its inputs."""
    _case, transform, x, context = _setup(name, torch.float64, device)
    z, _ = transform(x, context)
    assert (z - x).abs().max() > 1e-3


def _jacobian_logabsdet(function, point):
    jacobian = torch.autograd.functional.jacobian(function, point)
    return torch.linalg.slogdet(jacobian)[1]


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_logabsdet_matches_autograd_jacobian(name, direction, device):
    _case, transform, x, context = _setup(name, torch.float64, device, batch=5)
    if direction == "inverse":
        x, _ = transform(x, context)
    step = transform if direction == "forward" else transform.inverse
    _, logabsdet = step(x, context)
    for i in range(x.shape[0]):
        row_context = None if context is None else context[i : i + 1]

        def single(row, row_context=row_context):
            return step(row[None], row_context)[0][0]

        expected = _jacobian_logabsdet(single, x[i])
        torch.testing.assert_close(logabsdet[i], expected, atol=1e-7, rtol=1e-7)


def test_batch_consistency(name, device):
    _case, transform, x, context = _setup(name, torch.float64, device, batch=6)
    z, logabsdet = transform(x, context)
    for i in range(len(x)):
        row_context = None if context is None else context[i : i + 1]
        z_i, logabsdet_i = transform(x[i : i + 1], row_context)
        torch.testing.assert_close(z_i[0], z[i], atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(logabsdet_i[0], logabsdet[i], atol=1e-10, rtol=1e-10)


def test_context_handling(name, device):
    case, transform, x, context = _setup(name, torch.float64, device)
    z, logabsdet = transform(x, context)
    if case.context_features:
        z_other, _logabsdet_other = transform(x, context + 1.0)
        assert (z_other - z).abs().max() > 1e-4, "context must change the output"
        if case.requires_context:
            with pytest.raises(ValueError, match="context"):
                transform(x, None)
    else:
        ignored = torch.randn(x.shape[0], 3, dtype=x.dtype, device=x.device)
        z_ctx, logabsdet_ctx = transform(x, ignored)
        torch.testing.assert_close(z_ctx, z)
        torch.testing.assert_close(logabsdet_ctx, logabsdet)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_gradients_reach_every_parameter(name, direction, device):
    _case, transform, x, context = _setup(name, torch.float64, device)
    x.requires_grad_(True)
    step = transform if direction == "forward" else transform.inverse
    z, logabsdet = step(x, context)
    (z.square().sum() + logabsdet.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # A MADE over one feature has hidden weights that see no input at all; they cannot learn.
    dead = {
        f"{module_name}.weight"
        for module_name, module in transform.named_modules()
        if isinstance(module, MaskedLinear) and not module.mask.any()
    }
    for parameter_name, parameter in transform.named_parameters():
        if parameter_name in dead:
            continue
        assert parameter.grad is not None, f"{parameter_name} received no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{parameter_name} has non-finite gradient"
        assert parameter.grad.abs().sum() > 0, f"{parameter_name} has an all-zero gradient"


def test_save_load_round_trip(name, device):
    case, transform, x, context = _setup(name, torch.float64, device)
    buffer = io.BytesIO()
    torch.save(transform.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    fresh = case.build().to(device=device, dtype=torch.float64).eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    z, logabsdet = transform(x, context)
    z_fresh, logabsdet_fresh = fresh(x, context)
    torch.testing.assert_close(z_fresh, z)
    torch.testing.assert_close(logabsdet_fresh, logabsdet)


def test_wrong_feature_count_is_a_clear_error(name, device):
    case, transform, x, context = _setup(name, torch.float64, device)
    wrong = torch.randn(x.shape[0], case.features + 1, dtype=x.dtype, device=device)
    with pytest.raises((ValueError, RuntimeError)):
        transform(wrong, context)
