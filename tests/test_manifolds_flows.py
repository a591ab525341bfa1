"""Flows on manifolds: exact densities (tangent Jacobians, Monte Carlo normalisation), samples on
the manifold, round trips, the double cover of SO(3), product couplings and the factories."""

from __future__ import annotations

import math

import pytest
import torch

from normflows_sci.flows.manifold import ManifoldFlow, ProductFlow, SO3Flow, SphereFlow, TorusFlow
from normflows_sci.manifolds import (
    SO3,
    AxialTwistTransform,
    CylindricalSplineTransform,
    Euclidean,
    PartTransform,
    Product,
    RadialSplineTransform,
    Sphere,
    SphereRotation,
    Torus,
    VonMisesFisher,
)
from normflows_sci.samplers import importance_sample
from normflows_sci.transforms import CompositeTransform

SMALL = dict(hidden_features=(16,), bins=5)


def _perturb(module, scale=0.1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return module


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


FLOWS = {
    "torus2_coupling": lambda: TorusFlow(2, transforms=2, **SMALL),
    "torus3_autoregressive": lambda: TorusFlow(3, transforms=2, coupling=False, **SMALL),
    "torus1": lambda: TorusFlow(1, transforms=2, **SMALL),
    "torus2_von_mises": lambda: TorusFlow(
        2, transforms=2, base="von_mises", concentration=0.5, **SMALL
    ),
    "sphere2": lambda: SphereFlow(2, transforms=3, **SMALL),
    "sphere2_vmf": lambda: SphereFlow(2, transforms=2, base="vmf", concentration=1.0, **SMALL),
    "sphere1": lambda: SphereFlow(1, transforms=2, **SMALL),
    "sphere3": lambda: SphereFlow(3, transforms=2, **SMALL),
    "so3": lambda: SO3Flow(transforms=3, **SMALL),
    "product_compact": lambda: ProductFlow(
        Product(Torus(1), Sphere(2), SO3()), transforms=1, **SMALL
    ),
}


def _flow(name, dtype=torch.float64, scale=0.1):
    torch.manual_seed(0)
    return _perturb(FLOWS[name](), scale).to(dtype)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_density_integrates_to_one_by_monte_carlo(name):
    """``vol(M) * E_uniform[p(x)] = 1``: 100k uniform points, error bar < 0.5%, error < 2%."""
    flow = _flow(name)
    x = flow.manifold.sample_uniform(100_000, generator=_gen(1), dtype=torch.float64)
    with torch.no_grad():
        ratio = flow.log_prob(x).exp() * flow.manifold.volume
    estimate, stderr = float(ratio.mean()), float(ratio.std() / math.sqrt(len(x)))
    assert stderr < 0.005, f"Monte Carlo error bar too large ({stderr:.4f}); the test is too weak"
    assert abs(estimate - 1.0) < max(4 * stderr, 0.02) and abs(estimate - 1.0) < 0.02


@pytest.mark.parametrize("name", sorted(FLOWS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_samples_stay_on_the_manifold_and_round_trip(name, dtype):
    flow = _flow(name, dtype, scale=0.3)
    with torch.no_grad():
        x, log_prob = flow.sample_and_log_prob(2000, generator=_gen(2))
        assert x.dtype == dtype and log_prob.shape == (2000,)
        assert float(flow.manifold.distance_to_manifold(x).max()) < 1e-5
        z, logabsdet = flow.transform(x)
        assert float(flow.manifold.distance_to_manifold(z).max()) < 1e-5
        x_back, inverse_logabsdet = flow.transform.inverse(z)
        tol = 1e-9 if dtype == torch.float64 else 2e-3
        torch.testing.assert_close(x_back, x, atol=tol, rtol=0)
        torch.testing.assert_close(inverse_logabsdet, -logabsdet, atol=tol * 10, rtol=tol)
        torch.testing.assert_close(flow.log_prob(x), log_prob, atol=tol * 10, rtol=tol)


def _tangent_logabsdet(step, x, context, manifold):
    """log|det| of ``step`` at ``x`` in orthonormal tangent coordinates, by autograd."""
    values = []
    for i in range(len(x)):
        row_context = None if context is None else context[i : i + 1]
        jac = torch.autograd.functional.jacobian(
            lambda v, c=row_context: step(v[None], c)[0][0], x[i]
        )
        z = step(x[i : i + 1], row_context)[0]
        basis_in = manifold.tangent_basis(x[i : i + 1])[0]
        basis_out = manifold.tangent_basis(z)[0]
        values.append(torch.linalg.slogdet(basis_out.T @ jac @ basis_in)[1])
    return torch.stack(values)


LAYERS = {
    "cylindrical": (Sphere(2), 0, lambda: CylindricalSplineTransform(**SMALL)),
    "cylindrical_context": (
        Sphere(2),
        2,
        lambda: CylindricalSplineTransform(context_features=2, **SMALL),
    ),
    "rotation_context": (Sphere(2), 2, lambda: SphereRotation(2, context_features=2)),
    "rotation_s3": (Sphere(3), 0, lambda: SphereRotation(3)),
    "radial_s1": (Sphere(1), 0, lambda: RadialSplineTransform(1, bins=5)),
    "radial_s2": (Sphere(2), 0, lambda: RadialSplineTransform(2, bins=5)),
    "radial_s3": (Sphere(3), 0, lambda: RadialSplineTransform(3, bins=5)),
    "radial_s3_antipodal_context": (
        SO3(),
        2,
        lambda: RadialSplineTransform(3, antipodal=True, context_features=2, **SMALL),
    ),
    "radial_s4": (Sphere(4), 0, lambda: RadialSplineTransform(4, bins=5)),
    "twist_s2": (Sphere(2), 0, lambda: AxialTwistTransform(2, **SMALL)),
    "twist_s3_antipodal": (SO3(), 0, lambda: AxialTwistTransform(3, antipodal=True, **SMALL)),
    "twist_s4_context": (Sphere(4), 2, lambda: AxialTwistTransform(4, context_features=2, **SMALL)),
    "so3_flow_transform": (SO3(), 0, lambda: SO3Flow(transforms=2, **SMALL).transform),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_logabsdet_is_the_tangent_jacobian_determinant(name, direction):
    """Autograd Jacobian of the ambient map, projected on orthonormal tangent bases (float64)."""
    manifold, context_features, build = LAYERS[name]
    torch.manual_seed(0)
    layer = _perturb(build(), 0.3).double()
    x = manifold.sample_uniform(6, generator=_gen(3), dtype=torch.float64)
    context = None
    if context_features:
        context = torch.randn(6, context_features, generator=_gen(4), dtype=torch.float64)
    step = layer if direction == "forward" else layer.inverse
    z, logabsdet = step(x, context)
    assert float((z - x).detach().abs().max()) > 1e-3, "the layer must move its inputs"
    expected = _tangent_logabsdet(step, x, context, manifold)
    torch.testing.assert_close(logabsdet, expected, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize(
    "name", ["radial_s3_antipodal_context", "twist_s3_antipodal", "so3_flow_transform"]
)
def test_quaternion_layers_commute_with_the_antipodal_map(name):
    manifold, context_features, build = LAYERS[name]
    torch.manual_seed(0)
    layer = _perturb(build(), 0.3).double()
    q = manifold.sample_uniform(64, generator=_gen(5), dtype=torch.float64)
    context = None
    if context_features:
        context = torch.randn(64, context_features, generator=_gen(6), dtype=torch.float64)
    for step in (layer, layer.inverse):
        z, logabsdet = step(q, context)
        z_neg, logabsdet_neg = step(-q, context)
        torch.testing.assert_close(z_neg, -z, atol=1e-12, rtol=0)
        torch.testing.assert_close(logabsdet_neg, logabsdet, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_so3_flow_density_is_antipodally_symmetric(dtype):
    flow = _flow("so3", dtype, scale=0.3)
    with torch.no_grad():
        q = flow.sample(500, generator=_gen(7))
        tol = 1e-10 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(flow.log_prob(-q), flow.log_prob(q), atol=tol, rtol=tol)
        product = _flow("product_compact", dtype, scale=0.3)
        x = product.sample(200, generator=_gen(8))
        flipped = torch.cat([x[:, :4], -x[:, 4:]], dim=-1)  # negate the quaternion factor
        torch.testing.assert_close(
            product.log_prob(flipped), product.log_prob(x), atol=tol, rtol=tol
        )


def test_conditional_flows_are_normalised_for_each_context():
    torch.manual_seed(0)
    flows = [
        _perturb(TorusFlow(2, 3, transforms=2, **SMALL)).double(),
        _perturb(SphereFlow(2, 3, transforms=2, **SMALL)).double(),
        _perturb(SO3Flow(3, transforms=2, **SMALL)).double(),
    ]
    context = torch.randn(2, 3, generator=_gen(9), dtype=torch.float64)
    for flow in flows:
        x = flow.manifold.sample_uniform(50_000, generator=_gen(10), dtype=torch.float64)
        densities = []
        for row in context:
            with torch.no_grad():
                ratio = flow.log_prob(x, row.expand(len(x), -1)).exp() * flow.manifold.volume
            assert float(ratio.std() / math.sqrt(len(x))) < 0.005
            assert float(ratio.mean()) == pytest.approx(1.0, abs=0.02)
            densities.append(ratio[:100])
        assert float((densities[0] - densities[1]).abs().max()) > 1e-3, "context is ignored"
        samples = flow.sample(4, context, generator=_gen(11))
        assert samples.shape == (4, 2, flow.manifold.features)


def test_product_flow_with_positions_is_normalised():
    """With a Euclidean factor: importance sampling against the product base gives Z = 1."""
    torch.manual_seed(0)
    manifold = Product(Euclidean(2), SO3())
    flow = _perturb(ProductFlow(manifold, transforms=1, **SMALL)).double()
    base = flow.base
    with torch.no_grad():
        x = base.sample(100_000, generator=_gen(12))
        ratio = (flow.log_prob(x) - base.log_prob(x)).exp()
    stderr = float(ratio.std() / math.sqrt(len(x)))
    assert stderr < 0.005
    assert float(ratio.mean()) == pytest.approx(1.0, abs=max(4 * stderr, 0.01))


def test_product_layers_couple_the_factors():
    torch.manual_seed(0)
    manifold = Product(Euclidean(3), SO3())
    width = PartTransform.context_width(manifold, 1)
    layer = _perturb(PartTransform(manifold, 1, SphereRotation(3, context_features=width)), 0.3)
    x = manifold.proj(torch.randn(5, 7, generator=_gen(13)))
    y, _ = layer(x)
    torch.testing.assert_close(y[:, :3], x[:, :3])  # positions pass through
    moved = x.clone()
    moved[:, :3] += 1.0
    y_moved, _ = layer(moved)
    assert float((y_moved[:, 3:] - y[:, 3:]).detach().abs().max()) > 1e-3  # sees positions


def test_log_prob_rejects_points_off_the_manifold_unless_projecting():
    flow = SphereFlow(2, transforms=1, **SMALL)
    off = torch.tensor([[0.0, 0.0, 2.0]])
    with pytest.raises(ValueError, match=r"inputs must lie on Sphere\(2\)"):
        flow.log_prob(off)
    flow.project = True
    torch.testing.assert_close(flow.log_prob(off), flow.log_prob(torch.tensor([[0.0, 0.0, 1.0]])))
    with pytest.raises(ValueError, match="angles"):
        TorusFlow(2, transforms=1, **SMALL).log_prob(torch.tensor([[0.0, 7.0]]))
    with pytest.raises(ValueError, match="event_shape"):
        ManifoldFlow(CompositeTransform([]), VonMisesFisher(2), Sphere(3))
    with pytest.raises(ValueError, match="base"):
        TorusFlow(2, base="gaussian")
    with pytest.raises(TypeError, match="Product"):
        ProductFlow(Sphere(2))


def test_exact_proposal_gives_full_ess_and_gradients_reach_parameters():
    flow = _flow("so3", torch.float64, scale=0.3)
    with torch.no_grad():
        result = importance_sample(flow, flow, 2000, generator=_gen(14))
    assert result.ess_fraction == pytest.approx(1.0, abs=1e-8)
    # Reverse-KL style: reparameterised samples carry gradients to every parameter.
    x, log_prob = flow.sample_and_log_prob(64, generator=_gen(15))
    (log_prob.mean() + x[:, 0].mean()).backward()
    for parameter_name, parameter in flow.named_parameters():
        assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0, parameter_name


def test_flows_start_at_the_base_density():
    for flow in (TorusFlow(2, **SMALL), SphereFlow(2, **SMALL), SO3Flow(**SMALL)):
        x = flow.manifold.sample_uniform(8, generator=_gen(16))
        torch.testing.assert_close(
            flow.log_prob(x).detach(), flow.base.log_prob(x), atol=1e-5, rtol=0
        )


# ---------------------------------------------------- factors build their own layers (issue 19)


class _FrozenLine(Euclidean):
    """R^n whose product-flow layers are the identity: the flow must ask the factor."""

    def flow_block(self, context_features=0, **options):
        return CompositeTransform([])


def test_product_flow_asks_each_factor_for_its_layers_and_base():
    flow = ProductFlow(Product(_FrozenLine(2), Torus(2)), transforms=2, **SMALL)
    flow = _perturb(flow.double(), 0.3)
    with torch.no_grad():
        x, log_prob = flow.sample_and_log_prob(64, generator=_gen(20))
        z, _ = flow.transform(x)
    # The frozen factor passes through every round; the torus factor moves.
    torch.testing.assert_close(z[:, :2], x[:, :2])
    assert float((z[:, 2:] - x[:, 2:]).abs().max()) > 1e-3
    torch.testing.assert_close(flow.log_prob(x).detach(), log_prob, atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="nested products are not supported"):
        ProductFlow(Product(Product(Torus(1), Torus(1)), Sphere(2)))


def test_sphere_blocks_come_from_the_manifold_and_so3_blocks_are_antipodal():
    layers = Sphere(2).block_layers(0, bins=5, hidden_features=(16,))
    assert [type(t) for t in layers] == [SphereRotation, CylindricalSplineTransform]
    layers = SO3().block_layers(0, bins=5, hidden_features=(16,))
    assert [type(t) for t in layers] == [SphereRotation, RadialSplineTransform, AxialTwistTransform]
    flow = SO3Flow(transforms=2, **SMALL)
    assert [type(t) for t in flow.transform.children().__next__()] == 2 * [type(t) for t in layers]


def test_nsf_circular_is_a_density_on_its_circular_manifold():
    from normflows_sci.flows import NSF
    from normflows_sci.manifolds import circular_manifold

    mask = [False, True, False, True]
    manifold = circular_manifold(mask)
    flow = _perturb(NSF(4, coupling=True, circular=mask, transforms=2, **SMALL).double(), 0.2)
    x = manifold.proj(torch.randn(16, 4, generator=_gen(21), dtype=torch.float64))
    shifted = x + torch.tensor([0.0, 2 * math.pi, 0.0, -4 * math.pi], dtype=torch.float64)
    with torch.no_grad():
        # Periodic in exactly the coordinates the manifold marks as angles: the same point.
        torch.testing.assert_close(flow.log_prob(manifold.proj(shifted)), flow.log_prob(x))
        torch.testing.assert_close(flow.log_prob(shifted), flow.log_prob(x))
        z, _ = flow.transform(x)
    assert bool(manifold.contains(z).all())  # angles stay angles
