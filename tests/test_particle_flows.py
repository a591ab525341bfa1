"""Equivariant continuous flows for particle systems: the zero-centre-of-mass space and its base,
the EGNN velocity, particle_flow, equivariant OT flow matching and the energy (reverse-KL) path."""

from __future__ import annotations

import math

import pytest
import torch
from tests_helpers import WithoutDivergenceHook, grid_integral

from normflows_sci.energies import DW4
from normflows_sci.flows import CNF, particle_flow
from normflows_sci.flows.cnf import divergence_estimator
from normflows_sci.manifolds import MeanFree, MeanFreeNormal, kabsch_rotation
from normflows_sci.nn import EGNNVelocity
from normflows_sci.samplers import importance_sample
from normflows_sci.training import (
    EquivariantOT,
    FlowMatchingLoss,
    fit_boltzmann,
    fit_flow_matching,
    flow_matching_loss,
    ot_pairing,
)

F64 = torch.float64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthogonal(d: int, seed: int, *, reflect: bool) -> torch.Tensor:
    """A random orthogonal matrix with determinant -1 (``reflect``) or +1."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=_generator(seed), dtype=F64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.linalg.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


def _act(x: torch.Tensor, n: int, d: int, rotation=None, perm=None, shift=None) -> torch.Tensor:
    """Rotate, permute and translate flat configurations ``(batch, n d)``."""
    points = x.unflatten(1, (n, d))
    if rotation is not None:
        points = points @ rotation.T
    if perm is not None:
        points = points[:, perm]
    if shift is not None:
        points = points + shift
    return points.flatten(1)


def _sorted_distances(x: torch.Tensor, n: int, d: int) -> torch.Tensor:
    points = x.unflatten(1, (n, d))
    return torch.cdist(points, points).flatten(1).sort(dim=1).values


def _perturb(module: torch.nn.Module, scale: float = 0.3) -> None:
    """Move every parameter off its initialisation (one generator: independent noise each)."""
    generator = _generator(9)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=F64))


def _dw4_like(count: int, seed: int) -> torch.Tensor:
    """DW4-sized configurations: noisy squares of side 4 (DW4's length scale d0), randomly
    rotated and with their particles shuffled, centre of mass removed."""
    generator = _generator(seed)
    square = torch.tensor([[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]], dtype=F64)
    angles = 2 * math.pi * torch.rand(count, generator=generator, dtype=F64)
    cos, sin = angles.cos(), angles.sin()
    rotations = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    points = square @ rotations.mT + 0.3 * torch.randn(count, 4, 2, generator=generator, dtype=F64)
    order = torch.argsort(torch.rand(count, 4, generator=generator), dim=1)
    points = torch.take_along_dim(points, order[..., None], dim=1)
    return MeanFree(4, 2).proj(points.flatten(1))


# ---------------------------------------------------------------- the mean-free space and base


def test_mean_free_normal_integrates_to_one_on_its_subspace():
    """Two particles in 2-D: the subspace is 2-dimensional. A standard normal of R^(n d) restricted
    to it (normalising constant of n d = 4 dimensions) integrates to 1 / (2 pi), not 1."""
    space, base = MeanFree(2, 2), MeanFreeNormal(2, 2).double()

    def density(u):
        return base.log_prob(space.from_chart(u)).exp()

    assert abs(grid_integral(density, bound=9.0, points=400) - 1.0) < 1e-6
    x = space.from_chart(torch.tensor([[1.0, -2.0]], dtype=F64))
    expected = -math.log(2 * math.pi) - 0.5 * 5.0  # -(n-1)d/2 log(2 pi) - |x|^2 / 2
    torch.testing.assert_close(base.log_prob(x), torch.tensor([expected], dtype=F64))
    # The centre of mass is ignored (evaluated at the projection), like the energies do.
    moved = x + torch.tensor([3.0, -1.0, 3.0, -1.0], dtype=F64)
    torch.testing.assert_close(base.log_prob(moved), base.log_prob(x))


def test_mean_free_space_basis_chart_and_samples():
    space = MeanFree(4, 3)
    basis = space.basis(torch.zeros((), dtype=F64))
    assert basis.shape == (12, 9) and space.dim == 9
    torch.testing.assert_close(basis.T @ basis, torch.eye(9, dtype=F64))
    # Every basis vector has zero centre of mass: the tangent space is the subspace.
    assert space.center_of_mass(basis.T).abs().max() < 1e-12
    x = MeanFreeNormal(4, 3).double().sample(500, generator=_generator(0))
    assert space.center_of_mass(x).abs().max() < 1e-12
    torch.testing.assert_close(space.from_chart(space.to_chart(x)), x)
    # The subspace's standard normal: E|x|^2 = (n - 1) d = 9.
    assert abs(x.square().sum(1).mean().item() - 9.0) < 0.6
    assert space.contains(x).all() and not space.contains(x + 1.0).any()
    with pytest.raises(ValueError, match="n_particles must be an integer >= 2, got 1"):
        MeanFree(1, 3)


# ---------------------------------------------------------------- the EGNN velocity


def test_egnn_velocity_is_rotation_reflection_translation_and_permutation_equivariant():
    torch.manual_seed(0)
    field = EGNNVelocity(5, 3, hidden_features=16, layers=3).double()
    x = torch.randn(6, 15, generator=_generator(1), dtype=F64)
    t = torch.rand(6, 1, generator=_generator(2), dtype=F64)
    v = field(x, t)
    assert v.abs().max() > 1e-4  # guards the comparisons below
    assert MeanFree(5, 3).center_of_mass(v).abs().max() < 1e-12
    for reflect in (False, True):
        rotation = _orthogonal(3, seed=3, reflect=reflect)
        perm = torch.tensor([3, 0, 4, 1, 2])
        shift = torch.tensor([1.5, -2.0, 0.5], dtype=F64)
        moved = field(_act(x, 5, 3, rotation, perm, shift), t)
        torch.testing.assert_close(moved, _act(v, 5, 3, rotation, perm), atol=1e-12, rtol=1e-10)


def test_egnn_velocity_is_smooth_for_coincident_particles():
    """Two particles at the same place: the distance's sqrt has an infinite slope at 0, and the
    diagonal pairs i = i always sit there; gradients must stay finite."""
    torch.manual_seed(0)
    field = EGNNVelocity(3, 2, hidden_features=8, layers=2).double()
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 1.0]], dtype=F64, requires_grad=True)
    v = field(x, torch.full((1, 1), 0.3, dtype=F64))
    v.square().sum().backward()
    assert torch.isfinite(v).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in field.parameters())


def _reference_divergence(field, x: torch.Tensor, t: torch.Tensor, basis) -> torch.Tensor:
    """``tr(B^T J B)`` of ``field`` from the full autograd Jacobian (``basis=None``: ``tr J``)."""
    jacobian = torch.autograd.functional.jacobian(lambda y: field(y, t).sum(0), x)
    jacobian = jacobian.permute(1, 0, 2)  # (batch, out, in)
    if basis is None:
        return jacobian.diagonal(dim1=1, dim2=2).sum(-1)
    return torch.einsum("dk,bde,ek->b", basis, jacobian, basis)


@pytest.mark.parametrize(
    "n, d, layers, context",
    [(4, 2, 2, 0), (13, 3, 3, 0), (3, 2, 1, 2), (5, 3, 4, 1)],
    ids=["dw4", "lj13", "one_layer_context", "four_layers_context"],
)
def test_egnn_exact_divergence_matches_the_autograd_jacobian(n, d, layers, context):
    """The field's own divergence (forward-mode tangents, ambient trace) against the trace of
    the autograd Jacobian in the subspace's orthonormal basis and in R^(n d): float64, away
    from the near-zero initialisation, on spread-out and on nearly coincident particles."""
    torch.manual_seed(0)
    field = EGNNVelocity(n, d, hidden_features=12, layers=layers, context_features=context)
    field = field.double()
    _perturb(field)
    space = MeanFree(n, d)
    x = space.proj(2.0 * torch.randn(6, n * d, generator=_generator(1), dtype=F64))
    x[0, d : 2 * d] = x[0, :d] + 1e-9  # two particles almost on top of each other
    t = torch.rand(6, 1, generator=_generator(2), dtype=F64)
    c = torch.randn(6, context, generator=_generator(3), dtype=F64) if context else None

    def call(y, times):
        return field(y, times, c)

    with torch.no_grad():
        v, divergence = field.value_and_divergence(x, t, c, space)
        _, ambient = field.value_and_divergence(x, t, c, None)
    torch.testing.assert_close(v, field(x, t, c), atol=1e-12, rtol=0)
    reference = _reference_divergence(call, x, t, space.basis(x))
    assert reference.abs().max() > 1e-2  # a field with a real divergence
    torch.testing.assert_close(divergence, reference, atol=1e-6, rtol=0)
    # In R^(n d) (the trace of the centred field's Jacobian): the same number.
    torch.testing.assert_close(ambient, _reference_divergence(call, x, t, None), atol=1e-6, rtol=0)
    torch.testing.assert_close(ambient, reference, atol=1e-6, rtol=0)


def test_particle_flow_log_prob_and_its_gradients_equal_the_autograd_divergence():
    """log_prob through the field's divergence, its gradient in the parameters (training) and in
    the points, against the same flow with the autograd divergence through the basis."""
    flow = _flow(4, 2, steps=3)
    _perturb(flow)
    plain = _flow(4, 2, steps=3)
    plain.load_state_dict(flow.state_dict())
    plain.transform.velocity = WithoutDivergenceHook(plain.transform.velocity)
    x = _dw4_like(5, seed=4).requires_grad_(True)
    results = []
    for model in (flow, plain):
        log_prob = model.log_prob(x)
        grads = torch.autograd.grad(log_prob.sum(), [x, *model.parameters()])
        results.append((log_prob.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-10, rtol=0)
    for mine, theirs in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(mine, theirs, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize(
    "n, d, layers, context",
    [(4, 2, 2, 0), (13, 3, 3, 0), (3, 2, 1, 2)],
    ids=["dw4", "lj13", "one_layer_context"],
)
def test_egnn_probed_divergence_is_the_quadratic_form_of_the_autograd_jacobian(
    n, d, layers, context
):
    """One forward-mode tangent per row gives ``e^T J e`` of the centred field's Jacobian: for
    probes in the subspace (MeanFree) and off it (R^(n d)), where ``J e`` alone would differ."""
    field = EGNNVelocity(n, d, hidden_features=12, layers=layers, context_features=context)
    field = field.double()
    _perturb(field)
    space = MeanFree(n, d)
    x = space.proj(2.0 * torch.randn(5, n * d, generator=_generator(1), dtype=F64))
    t = torch.rand(5, 1, generator=_generator(2), dtype=F64)
    c = torch.randn(5, context, generator=_generator(3), dtype=F64) if context else None
    jacobian = torch.autograd.functional.jacobian(lambda y: field(y, t, c).sum(0), x)
    jacobian = jacobian.permute(1, 0, 2)  # (batch, out, in) of the centred field
    signs = torch.randint(0, 2, (5, n * d), generator=_generator(4)).to(F64) * 2 - 1
    for manifold, probe in ((space, signs[:, : (n - 1) * d] @ space.basis(x).T), (None, signs)):
        with torch.no_grad():
            v, estimate = field.value_and_probed_divergence(x, t, c, manifold, probe)
        torch.testing.assert_close(v, field(x, t, c), atol=1e-12, rtol=0)
        expected = torch.einsum("bd,bde,be->b", probe, jacobian, probe)
        assert expected.abs().max() > 1e-2
        torch.testing.assert_close(estimate, expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="probe must have the shape of x"):
        field.value_and_probed_divergence(x, t, c, space, signs[:, :2])


def test_particle_flow_hutchinson_uses_the_field_and_equals_the_autograd_estimate():
    """Same probes (seeded), the field's one-tangent estimate against the autograd
    vector-Jacobian product: the same log-density and the same gradients (training)."""
    flow = _flow(4, 2, steps=3, divergence="hutchinson")
    _perturb(flow)
    plain = _flow(4, 2, steps=3, divergence="hutchinson")
    plain.load_state_dict(flow.state_dict())
    plain.transform.velocity = WithoutDivergenceHook(plain.transform.velocity)
    calls = []
    flow.transform.velocity.register_forward_hook(lambda *args: calls.append(1))
    x = _dw4_like(5, seed=4).requires_grad_(True)
    results = []
    for model in (flow, plain):
        model.transform.probe_generator = _generator(11)
        log_prob = model.log_prob(x)
        grads = torch.autograd.grad(log_prob.sum(), [x, *model.parameters()])
        results.append((log_prob.detach(), grads))
    assert not calls  # the field's hook, never its plain forward (autograd)
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-10, rtol=0)
    for mine, theirs in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(mine, theirs, atol=1e-9, rtol=1e-9)


def test_hutchinson_gradient_in_the_point_is_unbiased_for_path_gradients():
    """``E[grad_x log q_hat(x)] = grad_x log q(x)`` (the probe does not depend on x) for the
    field's one-tangent estimate with seeded probes: what keeps the path-gradient estimator of
    ``fit_boltzmann(path_gradient=True, divergence="hutchinson")`` unbiased."""
    flow = _flow(3, 2, steps=3)
    _perturb(flow)
    x = MeanFree(3, 2).proj(torch.randn(1, 6, generator=_generator(1), dtype=F64))
    point = x.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(flow.log_prob(point).sum(), point)
    rows = x.expand(2000, 6).clone().requires_grad_(True)
    with divergence_estimator(flow, "hutchinson", generator=_generator(0)):  # as fit_boltzmann
        (draws,) = torch.autograd.grad(flow.log_prob(rows).sum(), rows)  # rows are independent
    assert bool((draws.std(0) > 1e-3).all())  # the probes matter
    stderr = draws.std(0) / math.sqrt(len(draws))
    assert bool(((draws.mean(0) - exact[0]).abs() < 4 * stderr).all()), (draws.mean(0), exact)


def test_egnn_divergence_declines_what_it_cannot_do_exactly():
    """Another manifold, a non-elementwise activation or a clamped coordinate (where the field
    is no longer translation invariant): ``None``, so the solver uses autograd."""
    field = EGNNVelocity(3, 2, hidden_features=8, layers=2).double()
    x = MeanFree(3, 2).proj(torch.randn(2, 6, generator=_generator(0), dtype=F64))
    t = torch.full((2, 1), 0.5, dtype=F64)
    assert field.value_and_divergence(x, t, None, MeanFree(3, 2)) is not None
    assert field.value_and_divergence(x, t, None, MeanFree(2, 3)) is None
    far = x.clone()
    far[0, 0] = 1e80  # beyond float64's input clamp
    assert field.value_and_divergence(far, t, None, MeanFree(3, 2)) is None
    softmax = EGNNVelocity(
        3, 2, hidden_features=8, layers=2, activation=lambda: torch.nn.Softmax(-1)
    )
    assert softmax.double().value_and_divergence(x, t, None, None) is None


# ---------------------------------------------------------------- particle_flow


def _flow(n: int, d: int, **options):
    options = {**dict(hidden_features=8, layers=2, solver="rk4", steps=6, seed=0), **options}
    return particle_flow(n, d, **options).double()


@pytest.mark.parametrize("n, d", [(4, 2), (3, 3)], ids=["dw4", "3d"])
def test_particle_flow_log_prob_is_invariant(n, d):
    flow = _flow(n, d)
    _perturb(flow)  # away from the near-zero initial field
    x = MeanFree(n, d).proj(1.5 * torch.randn(5, n * d, generator=_generator(1), dtype=F64))
    with torch.no_grad():
        log_prob = flow.log_prob(x)
        # A non-invariant flow (plain CNF on R^(n d)) would fail these checks.
        z, _ = flow.transform(x)
        assert (z - x).abs().max() > 1e-2
        perm = torch.randperm(n, generator=_generator(4))
        shift = torch.arange(1.0, d + 1.0, dtype=F64)
        for reflect in (False, True):
            rotation = _orthogonal(d, seed=5, reflect=reflect)
            moved = _act(x, n, d, rotation, perm, shift)
            torch.testing.assert_close(flow.log_prob(moved), log_prob, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n, d", [(2, 2), (3, 1)])
def test_particle_flow_density_integrates_to_one_on_the_subspace(n, d):
    """A flow far from the identity keeps its density normalised on the subspace: the divergence
    in the subspace's frame and the (n - 1) d-dimensional base (one normalised in R^(n d) would
    integrate to (2 pi)^(-d / 2))."""
    flow = _flow(n, d, steps=4, layers=1)
    _perturb(flow)
    with torch.no_grad():
        last = flow.transform.velocity.layers[-1].coordinate[-1]  # a stronger field
        last.weight.mul_(10.0)
        last.bias.mul_(10.0)
        x = MeanFree(n, d).from_chart(torch.randn(3, 2, generator=_generator(1), dtype=F64))
        assert (flow.transform(x)[0] - x).abs().max() > 0.2  # far from the identity
    space = MeanFree(n, d)

    def density(chart_points):
        return flow.log_prob(space.from_chart(chart_points)).exp()

    # The residual is RK4's: the integrated divergence vs the Jacobian of four discrete steps.
    assert abs(grid_integral(density, bound=7.0, points=70) - 1.0) < 3e-3


def test_particle_flow_sample_and_log_prob_agree_and_samples_are_mean_free():
    flow = _flow(4, 2)
    with torch.no_grad():
        samples, log_prob = flow.sample_and_log_prob(16, generator=_generator(0))
        torch.testing.assert_close(flow.log_prob(samples), log_prob, atol=1e-6, rtol=1e-6)
        plain = flow.sample(16, generator=_generator(0))
    torch.testing.assert_close(plain, samples, atol=1e-10, rtol=0)
    assert MeanFree(4, 2).center_of_mass(samples).abs().max() < 1e-12
    assert isinstance(flow.base, MeanFreeNormal)


def test_hutchinson_divergence_is_unbiased_for_the_log_density():
    """One probe per row: the average over many rows at the same point is the exact value."""
    exact = _flow(3, 2)
    hutchinson = _flow(3, 2, divergence="hutchinson")
    with torch.no_grad():
        _perturb(exact)
        hutchinson.load_state_dict(exact.state_dict())
        x = MeanFree(3, 2).proj(torch.randn(1, 6, generator=_generator(1), dtype=F64))
        reference = exact.log_prob(x)
        torch.manual_seed(0)
        estimates = hutchinson.log_prob(x.expand(2000, 6))
    assert estimates.std() > 1e-4  # the probes matter
    error = (estimates.mean() - reference[0]).abs()
    assert error < 4 * estimates.std() / math.sqrt(2000)


def test_conditional_particle_flow_depends_on_the_context_and_stays_invariant():
    flow = _flow(3, 2, context_features=2)
    with torch.no_grad():
        _perturb(flow)
        x = MeanFree(3, 2).proj(torch.randn(4, 6, generator=_generator(1), dtype=F64))
        context = torch.randn(4, 2, generator=_generator(2), dtype=F64)
        log_prob = flow.log_prob(x, context)
        assert (flow.log_prob(x, context + 1.0) - log_prob).abs().max() > 1e-3
        moved = _act(x, 3, 2, _orthogonal(2, seed=5, reflect=True), torch.tensor([2, 0, 1]))
        torch.testing.assert_close(flow.log_prob(moved, context), log_prob, atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="context"):
            flow.log_prob(x)


def test_particle_flow_rejects_bad_sizes():
    with pytest.raises(ValueError, match="spatial_dim must be a positive integer, got 0"):
        particle_flow(4, 0)
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        particle_flow(4, 2, hidden=3)


# ---------------------------------------------------------------- equivariant OT


def test_alignment_recovers_a_turned_permuted_copy_exactly():
    """A copy of the reference with its particles relabelled and turned by 20 degrees: the
    alignment undoes both (a local method: for large turns the first assignment can be wrong)."""
    space = MeanFree(6, 3)
    reference = space.proj(torch.randn(4, 18, generator=_generator(0), dtype=F64))
    angle = torch.tensor(math.radians(20.0), dtype=F64)
    rotation = torch.eye(3, dtype=F64)
    rotation[:2, :2] = torch.stack(
        [torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])]
    )
    copy = _act(reference, 6, 3, rotation, torch.tensor([5, 2, 0, 4, 1, 3]))
    assert (copy - reference).square().sum(1).min() > 1.0
    aligned, cost = space.align(copy, reference, iterations=2)
    torch.testing.assert_close(aligned, reference, atol=1e-10, rtol=0)
    assert cost.max() < 1e-18


def test_alignment_never_increases_the_cost_and_keeps_the_configuration():
    space = MeanFree(5, 3)
    x = space.proj(torch.randn(64, 15, generator=_generator(0), dtype=F64))
    reference = space.proj(2.0 * torch.randn(64, 15, generator=_generator(1), dtype=F64))
    before = (x - reference).square().sum(1)
    aligned, cost = space.align(x, reference)
    assert (cost <= before + 1e-12).all() and (cost < before).float().mean() > 0.9
    torch.testing.assert_close(cost, (aligned - reference).square().sum(1))
    # Equivalent configurations: the same pairwise distances, centre of mass zero, det +1 only.
    torch.testing.assert_close(_sorted_distances(aligned, 5, 3), _sorted_distances(x, 5, 3))
    assert space.center_of_mass(aligned).abs().max() < 1e-12
    _, more = space.align(x, reference, iterations=3)
    assert (more <= cost + 1e-12).all()


@pytest.mark.parametrize("n", [5, 7], ids=["every_permutation", "hungarian"])
def test_alignment_permutation_is_the_optimal_assignment(n):
    """In 1-D the only proper rotation is the identity, so the alignment is the particle
    assignment alone: its cost is scipy's optimum (up to 5 particles every permutation is tried
    in one batched operation instead of a scipy call per pair)."""
    from scipy.optimize import linear_sum_assignment

    space = MeanFree(n, 1)
    x = space.proj(torch.randn(40, n, generator=_generator(0), dtype=F64))
    reference = space.proj(torch.randn(40, n, generator=_generator(1), dtype=F64))
    _, cost = space.align(x, reference)
    for row in range(40):
        matrix = (reference[row][:, None] - x[row][None, :]).square().numpy()
        rows, columns = linear_sum_assignment(matrix)
        assert abs(cost[row].item() - matrix[rows, columns].sum()) < 1e-10


@pytest.mark.parametrize("d", [2, 3])
def test_kabsch_excludes_reflections_and_finds_the_optimal_rotation(d):
    """A mirrored copy cannot be matched by a proper rotation; the uncorrected Kabsch solution
    would be the reflection (det -1) with zero residual. A turned copy is matched exactly (2-D has
    its own closed form)."""
    points = torch.randn(2, 5, d, generator=_generator(0), dtype=F64)
    points = points - points.mean(1, keepdim=True)
    mirror = torch.ones(d, dtype=F64)
    mirror[-1] = -1.0
    rotation = kabsch_rotation(points, points * mirror)
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(2, dtype=F64))
    torch.testing.assert_close(rotation @ rotation.mT, torch.eye(d, dtype=F64).expand(2, d, d))
    assert ((points @ rotation.mT - points * mirror).square().sum((1, 2)) > 1e-3).all()
    turn = _orthogonal(d, seed=3, reflect=False)
    torch.testing.assert_close(kabsch_rotation(points, points @ turn.T), turn.expand(2, d, d))


def test_equivariant_ot_pairs_equivalent_noise_at_no_more_cost_than_plain_ot():
    space = MeanFree(4, 2)
    x0 = MeanFreeNormal(4, 2).double().sample(24, generator=_generator(0))
    x1 = _dw4_like(24, seed=1)
    paired = EquivariantOT(space)(x0, x1)
    plain = x0[ot_pairing(x0, x1)]
    assert (paired - x1).square().sum() < (plain - x1).square().sum()
    # Each paired row is an equivalent configuration of a distinct noise sample.
    distances = torch.cdist(_sorted_distances(paired, 4, 2), _sorted_distances(x0, 4, 2))
    match = distances.argmin(1)
    assert distances.min(1).values.max() < 1e-10 and len(set(match.tolist())) == 24
    # None of them is worse off than its unaligned partner.
    assert ((paired - x1).square().sum(1) <= (x0[match] - x1).square().sum(1) + 1e-12).all()


def test_ot_values_are_checked():
    flow = CNF(8, hidden_features=(8,))
    data = _dw4_like(32, seed=0).float()
    with pytest.raises(ValueError, match=r"ot must be False, True, 'equivariant' .* 'exact'"):
        FlowMatchingLoss(data, ot="exact")
    with pytest.raises(TypeError, match=r"ot must be .* got int"):
        flow_matching_loss(flow, data, ot=3)
    with pytest.raises(ValueError, match="ot='equivariant' needs a particle space"):
        fit_flow_matching(flow, data, steps=1, ot="equivariant", progress=False)
    with pytest.raises(ValueError, match="not valid for a conditional flow"):
        FlowMatchingLoss(data, torch.zeros(32, 1), ot="equivariant")
    # An explicit space makes it usable with any continuous flow on flat coordinates.
    loss = flow_matching_loss(flow, data, ot=EquivariantOT(MeanFree(4, 2)), generator=_generator(0))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("ot", [False, True, "equivariant"])
def test_flow_matching_on_dw4_configurations_reduces_the_loss(ot):
    data = _dw4_like(256, seed=0).float()
    flow = particle_flow(4, 2, hidden_features=16, layers=2, seed=0)
    options = dict(batch_size=32, learning_rate=5e-3, seed=0, progress=False)
    history = fit_flow_matching(flow, data, steps=200, ot=ot, **options)
    losses = torch.tensor(history["loss"])
    assert torch.isfinite(losses).all()
    assert losses[-40:].mean() < 0.8 * losses[:20].mean()


# ---------------------------------------------------------------- the energy path


def test_reverse_kl_training_and_importance_sampling_on_dw4():
    flow = particle_flow(4, 2, hidden_features=8, layers=1, solver="rk4", steps=3, seed=0)
    target = DW4()
    history = fit_boltzmann(flow, target, steps=3, batch_size=16, seed=0, progress=False)
    assert history["loss"] and all(math.isfinite(v) for v in history["loss"])
    with pytest.warns(RuntimeWarning):  # an untrained proposal: the weights are unreliable
        result = importance_sample(flow, target, 256, generator=_generator(0))
    assert torch.isfinite(result.log_weights).all() and 1.0 <= result.ess <= 256
    assert math.isfinite(result.pareto_k)
    assert MeanFree(4, 2).center_of_mass(result.samples).abs().max() < 1e-5


# ---------------------------------------------------------------- the LJ13 tutorial


def _load_tutorial(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "tutorials" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tutorial_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lj13_tutorial_says_an_undertrained_flows_weights_are_unreliable(
    tmp_path, monkeypatch, capsys
):
    """Two training steps leave the weights useless: the tutorial must say so in words next to
    k-hat (not present the reweighted energy as an answer), keep the flow's density invariant and
    write its figure only to ``out``, never to the working directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    result = _load_tutorial("particles_lj13").main(
        mcmc_steps=20,
        chains=8,
        steps=2,
        batch_size=16,
        num_samples=8,
        hidden=8,
        layers=1,
        ode_steps=2,
        out=tmp_path / "out",
        progress=False,
    )
    printed = capsys.readouterr().out
    assert not result["reliable"]
    assert "NOT reliable" in printed and "k-hat" in printed
    assert result["invariance_error"] < 1e-4
    assert result["figure"] == tmp_path / "out" / "lj13_histograms.png"
    assert result["figure"].stat().st_size > 0
    assert list(cwd.iterdir()) == []
