"""Manifold objects, base densities and quaternion helpers (flows: test_manifolds_flows.py)."""

from __future__ import annotations

import math

import pytest
import scipy.special
import torch

from normflows_sci.manifolds import (
    SO3,
    Euclidean,
    HaarSO3,
    Product,
    Sphere,
    Torus,
    UniformManifold,
    VonMises,
    VonMisesFisher,
    canonical_quaternion,
    householder_frame,
    matrix_to_quaternion,
    quaternion_conjugate,
    quaternion_multiply,
    quaternion_to_matrix,
    rotate_vectors,
)

MANIFOLDS = {
    "torus3": Torus(3),
    "circle": Sphere(1),
    "sphere2": Sphere(2),
    "sphere3": Sphere(3),
    "so3": SO3(),
    "product": Product(Torus(2), Sphere(2), SO3()),
}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", sorted(MANIFOLDS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_samples_lie_on_the_manifold(name, dtype):
    manifold = MANIFOLDS[name]
    x = manifold.sample_uniform(500, generator=_gen(), dtype=dtype)
    assert x.shape == (500, manifold.features) and x.dtype == dtype
    assert float(manifold.distance_to_manifold(x).max()) < 1e-5
    assert manifold.check(x) is x
    assert bool(manifold.contains(x).all())


def test_volumes():
    assert Torus(2).volume == pytest.approx(4 * math.pi**2)
    assert Sphere(1).volume == pytest.approx(2 * math.pi)
    assert Sphere(2).volume == pytest.approx(4 * math.pi)
    assert Sphere(3).volume == pytest.approx(2 * math.pi**2)
    assert SO3().volume == pytest.approx(math.pi**2)
    assert Product(Torus(1), Sphere(2)).volume == pytest.approx(8 * math.pi**2)
    assert Product(Euclidean(2), SO3()).volume == math.inf


@pytest.mark.parametrize(
    "manifold, bad",
    [
        (Torus(2), torch.tensor([[0.0, 3.5]])),
        (Sphere(2), torch.tensor([[0.0, 0.0, 1.1]])),
        (SO3(), torch.tensor([[0.5, 0.5, 0.5, 0.6]])),
        (Product(Euclidean(1), Sphere(2)), torch.tensor([[5.0, 0.0, 0.5, 0.5]])),
    ],
)
def test_points_off_the_manifold_are_clear_errors_and_proj_fixes_them(manifold, bad):
    with pytest.raises(ValueError, match=r"x must lie on .*atol"):
        manifold.check(bad, name="x")
    fixed = manifold.proj(bad)
    manifold.check(fixed)
    with pytest.raises(ValueError, match="shape"):
        manifold.check(torch.zeros(2, manifold.features + 1))
    with pytest.raises(ValueError, match="NaN"):
        manifold.check(torch.full((1, manifold.features), math.nan))


def test_torus_projection_wraps_and_sphere_projection_rejects_zero():
    wrapped = Torus(1).proj(torch.tensor([[3 * math.pi / 2], [-3 * math.pi / 2]]))
    torch.testing.assert_close(wrapped, torch.tensor([[-math.pi / 2], [math.pi / 2]]))
    with pytest.raises(ValueError, match="zero"):
        Sphere(2).proj(torch.zeros(1, 3))


@pytest.mark.parametrize("name", ["sphere2", "sphere3", "so3", "product"])
def test_tangent_bases_are_orthonormal_and_tangent(name):
    manifold = MANIFOLDS[name]
    x = manifold.sample_uniform(64, generator=_gen(1), dtype=torch.float64)
    basis = manifold.tangent_basis(x)
    assert basis.shape == (64, manifold.features, manifold.dim)
    gram = basis.transpose(-1, -2) @ basis
    torch.testing.assert_close(gram, torch.eye(manifold.dim, dtype=torch.float64).expand_as(gram))
    # Each tangent vector is orthogonal to the normal of every sphere factor.
    parts = manifold.split(x) if isinstance(manifold, Product) else [x]
    factors = manifold.factors if isinstance(manifold, Product) else [manifold]
    offset = 0
    for factor, part in zip(factors, parts):
        rows = basis[:, offset : offset + factor.features]
        if isinstance(factor, Sphere):
            normal = (part[:, :, None] * rows).sum(1)
            assert float(normal.abs().max()) < 1e-12
        offset += factor.features


def test_householder_frame_has_the_point_as_last_column_up_to_sign():
    x = Sphere(3).sample_uniform(32, generator=_gen(2), dtype=torch.float64)
    x = torch.cat([x, torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, -1.0]]).double()])
    frame = householder_frame(x)
    last = frame[..., -1]
    torch.testing.assert_close((last * x).sum(-1).abs(), torch.ones(len(x), dtype=torch.float64))
    assert torch.isfinite(frame).all()


@pytest.mark.parametrize("name", sorted(MANIFOLDS))
def test_chart_round_trip_and_volume_element(name):
    """``chart_log_volume`` is log sqrt(det J^T J) of the chart map (autograd, float64)."""
    manifold = MANIFOLDS[name]
    u = 0.7 * torch.randn(6, manifold.dim, generator=_gen(3), dtype=torch.float64)
    x = manifold.from_chart(u)
    manifold.check(x, atol=1e-12)
    torch.testing.assert_close(manifold.to_chart(x), u)
    for i in range(len(u)):
        jac = torch.autograd.functional.jacobian(lambda v: manifold.from_chart(v[None])[0], u[i])
        expected = 0.5 * torch.logdet(jac.T @ jac)
        torch.testing.assert_close(manifold.chart_log_volume(u[i : i + 1])[0], expected)


def test_so3_embedding_is_sign_invariant():
    so3 = SO3()
    q = so3.sample_uniform(16, generator=_gen(4), dtype=torch.float64)
    torch.testing.assert_close(so3.embed(q), so3.embed(-q))
    assert so3.embed(q).shape == (16, 9)


# Quaternion helpers.


def test_quaternion_matrices_are_rotations_and_round_trip():
    q = SO3().sample_uniform(256, generator=_gen(5), dtype=torch.float64)
    matrix = quaternion_to_matrix(q)
    eye = torch.eye(3, dtype=torch.float64).expand_as(matrix)
    torch.testing.assert_close(matrix.transpose(-1, -2) @ matrix, eye)
    torch.testing.assert_close(torch.linalg.det(matrix), torch.ones(256, dtype=torch.float64))
    torch.testing.assert_close(quaternion_to_matrix(-q), matrix)
    back = matrix_to_quaternion(matrix)
    assert bool((back[:, 0] >= 0).all())
    torch.testing.assert_close(back, canonical_quaternion(q))
    # Near-pi rotations (w ~ 0) use another pivot and stay accurate.
    flip = torch.tensor([[1e-9, 0.6, 0.0, 0.8]], dtype=torch.float64)
    torch.testing.assert_close(matrix_to_quaternion(quaternion_to_matrix(flip)), flip)


def test_quaternion_product_composes_rotations():
    p, q = SO3().sample_uniform(64, generator=_gen(6), dtype=torch.float64).chunk(2)
    lhs = quaternion_to_matrix(quaternion_multiply(p, q))
    torch.testing.assert_close(lhs, quaternion_to_matrix(p) @ quaternion_to_matrix(q))
    identity = quaternion_multiply(q, quaternion_conjugate(q))
    torch.testing.assert_close(identity, torch.tensor([1.0, 0, 0, 0]).double().expand_as(q))
    v = torch.randn(32, 3, generator=_gen(7), dtype=torch.float64)
    torch.testing.assert_close(rotate_vectors(q, v).norm(dim=-1), v.norm(dim=-1))
    with pytest.raises(ValueError, match=r"q must have shape \(\.\.\., 4\)"):
        quaternion_to_matrix(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="matrix"):
        matrix_to_quaternion(torch.zeros(2, 4))


# Base densities.


def test_von_mises_is_normalised_and_samples_match_its_moments():
    base = VonMises(2, loc=[0.5, -2.0], concentration=[0.5, 4.0]).double()
    grid = torch.linspace(-math.pi, math.pi, 2001, dtype=torch.float64)[:-1]
    points = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    cell = (2 * math.pi / 2000) ** 2
    assert float(base.log_prob(points).exp().sum() * cell) == pytest.approx(1.0, abs=1e-8)
    x = base.sample(100_000, generator=_gen(8))
    assert float(x.abs().max()) <= math.pi
    resultant = torch.cos(x - base.loc).mean(0)
    expected = [scipy.special.i1(k) / scipy.special.i0(k) for k in (0.5, 4.0)]
    torch.testing.assert_close(resultant, torch.tensor(expected).double(), atol=0.01, rtol=0)
    with pytest.raises(ValueError, match="concentration"):
        VonMises(1, concentration=-1.0)


@pytest.mark.parametrize("n, kappa", [(1, 3.0), (2, 2.0), (2, 40.0), (3, 5.0), (4, 1.0)])
def test_von_mises_fisher_is_normalised_and_samples_match_its_moments(n, kappa):
    mean = torch.randn(n + 1, generator=_gen(n))
    vmf = VonMisesFisher(n, mean_direction=mean, concentration=kappa).double()
    sphere = Sphere(n)
    u = sphere.sample_uniform(200_000, generator=_gen(9), dtype=torch.float64)
    ratio = vmf.log_prob(u).exp() * sphere.volume
    estimate, stderr = float(ratio.mean()), float(ratio.std() / math.sqrt(len(u)))
    if kappa < 10:  # at kappa = 40 uniform Monte Carlo is too noisy; checked by moments below
        assert stderr < 0.01 and estimate == pytest.approx(1.0, abs=max(4 * stderr, 0.005))
    x = vmf.sample(100_000, generator=_gen(10))
    assert float(sphere.distance_to_manifold(x).max()) < 1e-12
    p = n + 1
    expected = scipy.special.ive(p / 2, kappa) / scipy.special.ive(p / 2 - 1, kappa)
    assert float((x @ vmf.mean_direction).mean()) == pytest.approx(expected, abs=0.01)


def test_von_mises_fisher_sampling_is_reparameterised_in_the_mean():
    vmf = VonMisesFisher(2, concentration=3.0, learnable_mean=True)
    x = vmf.sample(64, generator=_gen(11))
    x[:, 0].sum().backward()
    assert vmf.raw_mean.grad is not None and float(vmf.raw_mean.grad.abs().sum()) > 0


def test_haar_base_is_uniform_on_rotations():
    base = HaarSO3().double()
    q = base.sample(100_000, generator=_gen(12))
    torch.testing.assert_close(
        q.square().mean(0), torch.full((4,), 0.25, dtype=torch.float64), atol=0.01, rtol=0
    )
    torch.testing.assert_close(
        base.log_prob(q), torch.full((100_000,), -2 * math.log(math.pi)).double()
    )
    # The rotation angle theta of a Haar rotation has density (1 - cos theta) / pi.
    angle = 2 * torch.acos(canonical_quaternion(q)[:, 0].clamp(max=1.0))
    assert float((1 - angle.cos()).mean()) == pytest.approx(1.5, abs=0.01)  # E[1 - cos] = 3/2
    with pytest.raises(ValueError, match="finite volume"):
        UniformManifold(Euclidean(2))


def test_bases_follow_dtype_and_seed():
    for base in (VonMises(2), VonMisesFisher(2), HaarSO3(), UniformManifold(Torus(2))):
        a = base.double().sample(5, generator=_gen(13))
        b = base.sample(5, generator=_gen(13))
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b)


def test_product_distribution_sums_factor_log_densities_and_concatenates_samples():
    from normflows_sci.distributions import StandardNormal
    from normflows_sci.manifolds import ProductDistribution

    parts = [StandardNormal(2), HaarSO3(), UniformManifold(Torus(1))]
    base = ProductDistribution(parts).double()
    x = base.sample(500, generator=_gen(1))
    assert x.shape == (500, 7)
    assert torch.allclose(x[:, 2:6].norm(dim=-1), torch.ones(500, dtype=x.dtype), atol=1e-10)
    expected = sum(p.double().log_prob(c) for p, c in zip(parts, x.split([2, 4, 1], dim=-1)))
    assert torch.allclose(base.log_prob(x), expected, atol=1e-12)
    with pytest.raises(ValueError, match="distributions"):
        ProductDistribution([])


# ------------------------------------------------- geometry owned by the manifolds (issue 19)

GEOMETRIES = {
    "euclidean": Euclidean(2),
    "torus": Torus(2),
    "sphere": Sphere(2),
    "so3": SO3(),
    "product": Product(Euclidean(1), Torus(1), Sphere(2)),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_interpolant_joins_the_endpoints_with_its_velocity_float64(name):
    manifold = GEOMETRIES[name]
    gen = torch.Generator().manual_seed(0)
    x0 = manifold.proj(0.5 * torch.randn(6, manifold.features, generator=gen, dtype=torch.float64))
    x1 = manifold.proj(0.5 * torch.randn(6, manifold.features, generator=gen, dtype=torch.float64))
    start, _ = manifold.interpolant(x0, x1, torch.zeros(6, 1, dtype=torch.float64))
    end, _ = manifold.interpolant(x0, x1, torch.ones(6, 1, dtype=torch.float64))
    torch.testing.assert_close(start, x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(end, x1, atol=1e-5, rtol=0)
    t = torch.full((6, 1), 0.4, dtype=torch.float64)
    xt, ut = manifold.interpolant(x0, x1, t)
    assert bool(manifold.contains(xt).all())
    # u_t is the time derivative of x_t (central differences).
    h = 1e-6
    ahead, _ = manifold.interpolant(x0, x1, t + h)
    behind, _ = manifold.interpolant(x0, x1, t - h)
    torch.testing.assert_close((ahead - behind) / (2 * h), ut, atol=1e-6, rtol=0)
    # The geodesic has constant speed equal to the distance between its ends.
    distance = manifold.squared_distance_matrix(x0, x1).diagonal().sqrt()
    torch.testing.assert_close(ut.norm(dim=1), distance, atol=1e-6, rtol=0)


def test_squared_distances_are_geodesic_across_the_seam_and_on_great_circles():
    torus = Torus(1)
    cost = torus.squared_distance_matrix(torch.tensor([[3.0]]), torch.tensor([[-3.0], [0.0]]))
    assert cost.shape == (1, 2)
    assert cost[0, 0].item() == pytest.approx((2 * math.pi - 6.0) ** 2, rel=1e-5)
    assert cost[0, 1].item() == pytest.approx(9.0)
    sphere = Sphere(2)
    x = torch.tensor([[0.0, 0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    expected = torch.tensor([[(math.pi / 2) ** 2, math.pi**2, 0.0]])
    torch.testing.assert_close(sphere.squared_distance_matrix(x, y), expected)
    product = Product(Torus(1), Sphere(2))
    joined = product.squared_distance_matrix(
        torch.tensor([[3.0, 0.0, 0.0, 1.0]]), torch.tensor([[-3.0, 1.0, 0.0, 0.0]])
    )
    assert joined.item() == pytest.approx((2 * math.pi - 6.0) ** 2 + (math.pi / 2) ** 2, rel=1e-5)


def test_sphere_interpolant_stays_finite_for_coincident_and_antipodal_pairs():
    x0 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    x1 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    xt, ut = Sphere(2).interpolant(x0, x1, torch.full((2, 1), 0.5))
    assert bool(torch.isfinite(xt).all() and torch.isfinite(ut).all())


def test_default_bases_and_flatness_come_from_the_manifold():
    from normflows_sci.distributions import StandardNormal

    assert isinstance(Euclidean(3).default_base(), StandardNormal)
    assert isinstance(SO3().default_base(), HaarSO3)
    assert isinstance(Sphere(2).default_base(), UniformManifold)
    base = Product(Euclidean(2), Torus(1), SO3()).default_base()
    x = torch.tensor([[0.5, -1.0, 2.0, 1.0, 0.0, 0.0, 0.0]])
    expected = -math.log(2 * math.pi) - 0.625 - math.log(2 * math.pi) - math.log(math.pi**2)
    assert base.log_prob(x).item() == pytest.approx(expected, rel=1e-6)
    assert Euclidean(2).flat and Torus(3).flat and Product(Euclidean(1), Torus(2)).flat
    assert not Sphere(2).flat and not Product(Torus(1), Sphere(2)).flat


def test_product_tangent_basis_is_block_diagonal_and_orthonormal():
    product = Product(Euclidean(2), Sphere(2), Torus(1))
    x = product.proj(torch.randn(4, product.features, generator=torch.Generator().manual_seed(1)))
    basis = product.tangent_basis(x)
    assert basis.shape == (4, product.features, product.dim)
    eye = torch.eye(product.dim).expand(4, -1, -1)
    torch.testing.assert_close(basis.transpose(1, 2) @ basis, eye, atol=1e-6, rtol=0)
    torch.testing.assert_close(basis[:, 2:5, 2:4], Sphere(2).tangent_basis(x[:, 2:5]))
    assert float(basis[:, :2, 2:].abs().max()) == 0.0


def test_as_manifold_maps_none_to_euclidean_and_rejects_other_objects():
    from normflows_sci.manifolds import as_manifold

    assert repr(as_manifold(None, 3)) == "Euclidean(3)"
    torus = Torus(2)
    assert as_manifold(torus, 2) is torus
    with pytest.raises(ValueError, match="features is required"):
        as_manifold(None)
    with pytest.raises(ValueError, match=r"Torus\(2\) has 2 coordinates, not features=3"):
        as_manifold(torus, 3)
    with pytest.raises(TypeError, match=r"manifold must be a normflows_sci\.manifolds Manifold"):
        as_manifold("torus", 2)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        as_manifold(None, 0)


def test_circular_manifold_keeps_positions_and_rejects_bad_masks():
    from normflows_sci.manifolds import circular_manifold

    mixed = circular_manifold([False, True, True, False])
    assert repr(mixed) == "Product(Euclidean(1), Torus(2), Euclidean(1))"
    assert repr(circular_manifold(torch.tensor([1, 1]))) == "Torus(2)"
    assert repr(circular_manifold([False, False, False])) == "Euclidean(3)"
    x = torch.tensor([[10.0, 4.0, -4.0, -10.0]])
    wrapped = mixed.proj(x)  # only the angles wrap
    torch.testing.assert_close(
        wrapped, torch.tensor([[10.0, 4.0 - 2 * math.pi, 2 * math.pi - 4.0, -10.0]])
    )
    with pytest.raises(ValueError, match="non-empty 1-D"):
        circular_manifold([])
    with pytest.raises(ValueError, match="booleans"):
        circular_manifold([0, 2])
