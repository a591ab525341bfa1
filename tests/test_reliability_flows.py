"""Reliability attacks on flows, transforms, distributions and energies: argument validation,
extreme inputs and a deterministic fuzz over the property registries (see conftest.py)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from conftest import DISTRIBUTIONS, TRANSFORMS, perturb
from normflows_sci.distributions import (
    DiagNormal,
    GaussianMixture,
    NormalWithAngles,
    StandardNormal,
    StudentT,
    TailAdaptiveBase,
)
from normflows_sci.energies import DoubleWell, Energy, TemperedEnergy
from normflows_sci.flows import CNF, MAF, NSF, Flow, RealNVP, TarFlow, sample_tarflow
from normflows_sci.manifolds import RadialSplineTransform, Sphere, Torus
from normflows_sci.nn import bounded_inputs
from normflows_sci.transforms import InternalCoordinates, ReversePermutation, Transform

SMALL = dict(transforms=2, hidden_features=(16,))
TAR = dict(blocks=2, layers_per_block=1, width=16, heads=2)

# Every flow factory: name -> (build(context_features), features). Small, perturbed away from
# the identity initialisation by _flow.
FLOWS = {
    "nsf_autoregressive": (lambda c: NSF(3, c, **SMALL), 3),
    "nsf_coupling": (lambda c: NSF(3, c, coupling=True, **SMALL), 3),
    "nsf_lu_random": (
        lambda c: NSF(3, c, lu_linear=True, permutation="random", seed=0, **SMALL),
        3,
    ),
    "maf": (lambda c: MAF(3, c, **SMALL), 3),
    "realnvp": (lambda c: RealNVP(3, c, **SMALL), 3),
    "tarflow_affine": (lambda c: TarFlow(3, c, **TAR), 3),
    "tarflow_spline": (lambda c: TarFlow(3, c, transform="spline", **TAR), 3),
    "tarflow_particles": (lambda c: TarFlow(6, c, token_size=3, **TAR), 6),
    "cnf_dopri5": (lambda c: CNF(3, c, hidden_features=(16,)), 3),
}
CONTEXT = 2


def _flow(name: str, context_features: int = 0, *, dtype=torch.float32, seed: int = 0) -> Flow:
    build, _features = FLOWS[name]
    torch.manual_seed(seed)
    return perturb(build(context_features), scale=0.2, seed=seed).to(dtype)


def _data(features: int, batch: int = 4, *, dtype=torch.float32, seed: int = 1):
    return torch.randn(batch, features, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- item 2: flow arguments


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_inputs_of_another_dtype_name_the_conversion(name):
    flow = _flow(name)
    features = FLOWS[name][1]
    message = (
        r"inputs has dtype torch\.float64 but the flow's parameters are torch\.float32: "
        r"call flow\.double\(\)"
    )
    with pytest.raises(TypeError, match=message):
        flow.log_prob(_data(features, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"call flow\.float\(\)"):
        flow.double().log_prob(_data(features, dtype=torch.float32))
    with pytest.raises(TypeError, match=r"inputs must be a floating-point tensor .*torch\.int64"):
        flow.log_prob(torch.zeros(4, features, dtype=torch.int64))


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_context_of_the_wrong_width_names_both_widths(name):
    flow = _flow(name, CONTEXT)
    x = _data(FLOWS[name][1])
    message = r"context has 5 features \(shape \(4, 5\)\) but the flow expects 2"
    with pytest.raises(ValueError, match=message):
        flow.log_prob(x, torch.zeros(4, 5))
    with pytest.raises(ValueError, match=message):
        flow.sample(3, torch.zeros(4, 5))
    with pytest.raises(ValueError, match="context is required: the flow was built with"):
        flow.log_prob(x)
    with pytest.raises(TypeError, match=r"context has dtype torch\.float64"):
        flow.log_prob(x, torch.zeros(4, CONTEXT, dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_context_given_to_an_unconditional_flow_is_an_error(name):
    """It used to be ignored without a word: densities of the wrong (unconditional) model."""
    flow = _flow(name)
    x, context = _data(FLOWS[name][1]), torch.zeros(4, CONTEXT)
    message = r"this flow is unconditional; context must be None \(got Tensor of shape \(4, 2\)\)"
    with pytest.raises(ValueError, match=message):
        flow.log_prob(x, context)
    with pytest.raises(ValueError, match="this flow is unconditional"):
        flow.sample(3, context)
    with pytest.raises(ValueError, match="this flow is unconditional"):
        flow.sample_and_log_prob(3, context)


def test_sample_tarflow_checks_the_context_like_the_flow():
    with pytest.raises(ValueError, match="this flow is unconditional"):
        sample_tarflow(_flow("tarflow_affine"), 2, torch.zeros(3, CONTEXT))
    with pytest.raises(ValueError, match="context has 3 features"):
        sample_tarflow(_flow("tarflow_affine", CONTEXT), 2, torch.zeros(2, 3))


def test_shape_and_dtype_are_checked_even_without_validate_args():
    """With validate_args=False a permutation flow of 2 features read (4, 3) inputs as 2 columns
    and returned densities; shape and dtype checks are metadata-only, so they always run."""
    flow = Flow(ReversePermutation(2), StandardNormal(2), validate_args=False)
    with pytest.raises(ValueError, match=r"inputs must have shape \(batch, 2\), got \(4, 3\)"):
        flow.log_prob(torch.zeros(4, 3))
    nsf = NSF(2, **SMALL)
    nsf.validate_args = False
    with pytest.raises(TypeError, match=r"inputs has dtype torch\.float64"):
        nsf.log_prob(torch.zeros(4, 2, dtype=torch.float64))
    # Values are not read without validate_args: NaN propagates instead of raising.
    assert torch.isnan(nsf.log_prob(torch.tensor([[float("nan"), 0.0]]))).all()


def test_inputs_on_another_device_name_both_devices():
    flow = NSF(2, **SMALL)
    with pytest.raises(ValueError, match=r"inputs is on device meta but the flow's parameters"):
        flow.log_prob(torch.zeros(4, 2, device="meta"))


def test_context_width_is_inferred_through_the_embedding_or_given():
    embedding = nn.Sequential(nn.Linear(5, 4), nn.Tanh())
    flow = NSF(2, 4, embedding=embedding, **SMALL)
    assert flow.context_features == 5
    with pytest.raises(ValueError, match=r"context has 4 features .* but the flow expects 5"):
        flow.log_prob(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="embedding was given but no layer of the transform"):
        NSF(2, embedding=embedding, **SMALL)

    class AddContext(Transform):  # declares no context_features: the flow cannot infer it
        def forward(self, inputs, context=None):
            return inputs + context.sum(-1, keepdim=True), inputs.new_zeros(len(inputs))

    unknown = Flow(AddContext(), StandardNormal(2))
    assert unknown.context_features is None
    assert unknown.log_prob(torch.zeros(3, 2), torch.ones(3, 7)).shape == (3,)
    declared = Flow(AddContext(), StandardNormal(2), context_features=3)
    with pytest.raises(ValueError, match=r"context has 7 features .* but the flow expects 3"):
        declared.log_prob(torch.zeros(3, 2), torch.ones(3, 7))


# ---------------------------------------------------------------- item 3: extreme inputs


def _far_out(features: int, dtype=torch.float32) -> torch.Tensor:
    """Rows: all +1e30, all -1e30, one entry +1e30, one entry -1e30, two ordinary rows."""
    x = _data(features, batch=6, dtype=dtype, seed=2)
    x[0], x[1] = 1e30, -1e30
    x[2, 0], x[3, -1] = 1e30, -1e30
    return x


def _assert_minus_inf_with_finite_gradients(module, log_prob, x, far_rows=4):
    assert not torch.isnan(log_prob).any(), log_prob
    assert (log_prob[:far_rows] == -math.inf).all(), log_prob
    assert torch.isfinite(log_prob[far_rows:]).all(), log_prob
    log_prob.sum().backward()
    assert torch.isfinite(x.grad).all(), x.grad
    for parameter_name, parameter in module.named_parameters():
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), f"{parameter_name}: {parameter.grad}"


@pytest.mark.parametrize("context_features", [0, CONTEXT], ids=["plain", "context"])
@pytest.mark.parametrize("name", sorted(FLOWS))
def test_far_out_inputs_give_minus_inf_and_finite_gradients(name, context_features):
    """At +-1e30 MAF and RealNVP gave -inf with NaN gradients, TarFlow NaN densities and the
    adaptive CNF a ZeroDivisionError."""
    flow = _flow(name, context_features)
    x = _far_out(FLOWS[name][1]).requires_grad_(True)
    context = _data(context_features, batch=6, seed=3) if context_features else None
    _assert_minus_inf_with_finite_gradients(flow, flow.log_prob(x, context), x)


def _transform_flow(name: str) -> tuple[Flow, int, int]:
    """The registered transform in a flow, whose context width the flow reads from the layers."""
    case = TRANSFORMS[name]
    torch.manual_seed(0)
    flow = Flow(case.build(), StandardNormal(case.features))
    assert flow.context_features == case.context_features
    return flow, case.features, case.context_features


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_registered_transforms_in_a_flow_stay_finite_far_out(name):
    """Internal coordinates squared distances of 1e30 (NaN), the stereographic chart of the
    sphere, SO(3) and product flows squared chart points of 1e30 (NaN), and a product's
    Euclidean factor fed 1e30 to the other factors' conditioners."""
    flow, features, context_features = _transform_flow(name)
    x = _far_out(features).requires_grad_(True)
    context = _data(context_features, batch=6, seed=3) if context_features else None
    log_prob = flow.log_prob(x, context)
    assert not torch.isnan(log_prob).any() and not (log_prob == math.inf).any(), log_prob
    log_prob.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in flow.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "build",
    [
        lambda: StandardNormal(3),
        lambda: perturb(DiagNormal(3)),
        lambda: perturb(GaussianMixture(3, components=3, seed=0)),
        lambda: perturb(TailAdaptiveBase([None, None, None])),
        lambda: NormalWithAngles([False, False, False]),
    ],
    ids=["standard", "diag", "mixture", "tail_adaptive_light", "with_angles"],
)
def test_gaussian_bases_overflow_to_minus_inf_with_zero_gradient(build):
    """0.5 x^2 overflows float32 at |x| ~ 1.8e19; its gradient met zeros upstream as inf * 0 =
    NaN (the mixture's logsumexp of all -inf terms had a NaN gradient by itself)."""
    base = build()
    x = _far_out(3).requires_grad_(True)
    log_prob = base.log_prob(x)
    _assert_minus_inf_with_finite_gradients(base, log_prob, x)
    assert (x.grad[:4][x[:4].abs() > 1e29] == 0).all()


def test_student_t_density_stays_finite_where_the_square_overflows():
    base = perturb(StudentT(3, df=[1.5, 4.0, 30.0]))
    x = _far_out(3).requires_grad_(True)
    log_prob = base.log_prob(x)
    expected = base.double().log_prob(x.detach().double())  # 1e60 fits float64
    base.float()
    assert torch.isfinite(log_prob).all()
    torch.testing.assert_close(log_prob.double(), expected, rtol=1e-5, atol=1e-4)
    log_prob.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in base.parameters())


def _z_matrix_ic(rigid: str = "keep") -> InternalCoordinates:
    """6 atoms, branched (as the registered internal-coordinate transform)."""
    rows = [[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1], [3, 2, 1, 0], [4, 1, 0, 2]]
    return InternalCoordinates([*rows, [5, 0, 1, 3]], rigid=rigid)


@pytest.mark.parametrize("rigid", ["keep", "remove"])
def test_internal_coordinates_of_far_atoms_match_float64(rigid):
    """A molecule scaled by 1e30 or one coordinate at +-1e30 gave float32 bonds of inf and NaN
    angles (squared distances); their internal coordinates are well conditioned."""
    ic = _z_matrix_ic(rigid)
    x = _data(18, batch=4, seed=4)
    x[0] *= 1e30
    x[1, 0], x[2, 17] = 1e30, -1e30  # the root atom, and atom 5 bonded to it
    x.requires_grad_(True)
    z, logabsdet = ic(x)
    z64, logabsdet64 = ic(x.detach().double())  # squares of 1e30 fit float64
    torch.testing.assert_close(z.double(), z64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logabsdet.double(), logabsdet64, rtol=1e-5, atol=1e-4)
    (z[:, ic.circular_mask].sum() + logabsdet.sum()).backward()
    assert torch.isfinite(x.grad).all()


def test_degenerate_geometries_are_outside_the_support():
    """Coincident or collinear atoms have no internal coordinates: the forward log-determinant
    was +inf (log 0 of a volume factor) or NaN (0 / 0), so a flow reported log p = +inf or NaN
    with NaN gradients. They now get log p = -inf with a zero gradient."""
    x = _data(18, batch=5, seed=5)
    x[0] = 0.0  # every atom at one point
    x[1, 3:6] = x[1, 0:3]  # atom 1 on atom 0: a zero bond
    x[2, :9] = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 2.0, 0.0, 0.0])  # atoms 0-1-2 collinear
    x[3, :6] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.5])  # first bond along z: theta1 = 0
    for rigid, degenerate in (("keep", 4), ("remove", 3)):
        ic = _z_matrix_ic(rigid)
        flow = Flow(ic, StandardNormal(ic.features_out), event_shape=18)
        inputs = x.clone().requires_grad_(True)
        log_prob = flow.log_prob(inputs)
        assert (log_prob[:degenerate] == -math.inf).all(), (rigid, log_prob)
        assert torch.isfinite(log_prob[degenerate:]).all(), (rigid, log_prob)
        log_prob.sum().backward()
        assert (inputs.grad[:degenerate] == 0).all() and torch.isfinite(inputs.grad).all()


def test_layers_without_context_or_with_nflows_networks_declare_their_context_width():
    """InternalCoordinates and NflowsTransform declared no context width, so a flow containing
    them checked no context: a context given to a flow of internal coordinates was ignored, and
    a wrong-width context reached nflows' MADE."""
    import nflows.transforms as nt
    from nflows.nn.nets import ResidualNet

    from normflows_sci.interop.nflows import NflowsTransform

    flow = Flow(_z_matrix_ic(), StandardNormal(18))
    assert flow.context_features == 0
    with pytest.raises(ValueError, match="this flow is unconditional"):
        flow.log_prob(_data(18), torch.zeros(4, 2))
    maf = Flow(
        NflowsTransform(nt.MaskedAffineAutoregressiveTransform(4, 8, context_features=3)),
        StandardNormal(4),
    )
    assert maf.context_features == 3
    with pytest.raises(ValueError, match=r"context has 5 features .* but the flow expects 3"):
        maf.log_prob(_data(4), torch.zeros(4, 5))

    mask = torch.tensor([1, 0, 1, 0])

    def coupling(net):
        return nt.CompositeTransform(
            [nt.ReversePermutation(4), nt.AffineCouplingTransform(mask, net)]
        )

    residual = NflowsTransform(coupling(lambda i, o: ResidualNet(i, o, 8, context_features=2)))
    assert residual.context_features == 2
    assert NflowsTransform(nt.ReversePermutation(4)).context_features == 0

    class OwnNet(nn.Module):  # a user's network: whether it reads the context is unknown
        def __init__(self, in_features, out_features):
            super().__init__()
            self.linear = nn.Linear(in_features, out_features)

        def forward(self, inputs, context=None):
            return self.linear(inputs)

    assert NflowsTransform(coupling(OwnNet)).context_features is None


@pytest.mark.parametrize("transforms, value", [(5, 1e12), (3, 1e15)])
def test_maf_gradients_match_float64_far_outside_the_data(transforms, value):
    """At 1e10-1e14 a 5-layer MAF had NaN gradients in float32 although float64 gives finite
    ones that fit float32: the gradient of a masked-out MADE weight (zero) was computed as an
    overflowing product times the mask's 0, inf * 0. The MADE reads inputs clamped at 2**16 in
    every dtype, so float64 is the same model. At 1e15 (3 layers) the affine map's sigmoid soft
    clamp saturated to exactly 1, and its backward multiplied an overflowing gradient by
    1 * (1 - 1) = 0; the raw scale is now clamped before the sigmoid (gradient 0 beyond)."""
    torch.manual_seed(1)
    flow = perturb(MAF(4, transforms=transforms, hidden_features=(32, 32)), scale=0.1, seed=1)
    x = torch.full((3, 4), value)
    x[1], x[2, :2] = -value, 0.5
    flow.log_prob(x).sum().backward()
    grads = {name: p.grad.clone() for name, p in flow.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values())
    with torch.no_grad():  # the sampling direction reads the inputs as the density does
        z = flow.transform(x)[0]  # (shifts of order 2**16: float32 cancellation ~1e-4 at 0.5)
        torch.testing.assert_close(flow.transform.inverse(z)[0], x, rtol=1e-5, atol=1e-3)
    flow.zero_grad()
    flow.double().log_prob(x.double()).sum().backward()
    for name, p in flow.named_parameters():
        scale = float(p.grad.abs().max())
        assert scale < 1e36, name  # the reference fits float32
        torch.testing.assert_close(grads[name].double(), p.grad, rtol=1e-2, atol=1e-3 * scale)


def test_bounded_inputs_accepts_half_precision():
    """The default bound 2**32 does not fit float16: the clamp raised a RuntimeError."""
    half = torch.tensor([1.0, math.inf, -math.inf], dtype=torch.float16)
    assert bounded_inputs(half).tolist() == [1.0, 65504.0, -65504.0]
    assert bounded_inputs(half, 2.0**16).tolist() == [1.0, 65504.0, -65504.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_stereographic_chart_is_exact_far_out(dtype):
    """|u|^2 overflowed float32 at |u| ~ 1.8e19 (NaN points), and where 1 - x_last rounds to 0
    (|u| > 4e3 in float32, 7e7 in float64) the inverse chart divided by zero."""
    sphere = Sphere(2)
    rows = [[3e3, -4e3], [1e10, 1e10], [1e30, -3e29], [-1e37, 1e37], [0.5, 0.25]]
    u = torch.tensor(rows, dtype=dtype, requires_grad=True)
    x = sphere.from_chart(u)
    assert sphere.contains(x).all()
    torch.testing.assert_close(sphere.to_chart(x), u.detach())
    expected = [2 * (math.log(2) - math.log1p(math.hypot(*row) ** 2)) for row in rows]
    log_volume = sphere.chart_log_volume(u)
    torch.testing.assert_close(log_volume, torch.tensor(expected, dtype=dtype))
    (x.sum() + log_volume.sum()).backward()
    assert torch.isfinite(u.grad).all()
    # The last basis vector is the chart's point at infinity: the largest finite number.
    pole = sphere.to_chart(torch.tensor([[0.0, 0.0, 1.0]], dtype=dtype))
    assert pole.tolist() == [[torch.finfo(dtype).max, 0.0]]


# ---------------------------------------------------------------- item 4: fuzz


_DTYPES = [torch.float32, torch.float64, torch.float16, torch.int64, torch.bool]
_VALUES = [math.nan, math.inf, -math.inf, 1e30, -1e30, None]
# The first len(_VALUES) cases inject each value into well-formed inputs; the rest draw shape,
# dtype, value and context at random.
_FUZZ_SEEDS = range(len(_VALUES) + 12)


def _fuzz_case(seed: int, event_shape: tuple[int, ...], context_features: int):
    """A deterministic (inputs, context) pair: shape, dtype, injected value and context."""
    rng = torch.Generator().manual_seed(1000 + seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=rng))]

    batch = pick([0, 1, 2, 5])
    last = event_shape[-1]
    shape = pick(
        [(batch, *event_shape)] * 4
        + [
            (batch, *event_shape[:-1], last + 1),
            (batch, *event_shape[:-1], last - 1 if last > 1 else 2),
            tuple(event_shape),
            (batch, 1, *event_shape),
        ]
    )
    dtype = pick([torch.float32] * 4 + _DTYPES)
    value = pick(_VALUES)
    width = pick([context_features, context_features, 0, context_features + 1])
    if seed < len(_VALUES):
        shape, dtype, value, width = (
            (3, *event_shape),
            torch.float32,
            _VALUES[seed],
            context_features,
        )
    x = torch.randn(shape, generator=rng).to(dtype)
    if value is not None and x.numel() and x.is_floating_point():
        flat = x.view(-1)
        flat[int(torch.randint(flat.numel(), (1,), generator=rng))] = value
    context = torch.randn(shape[0] if shape else 1, width, generator=rng) if width else None
    return x, context


def _assert_clean_outcome(call, module, x):
    """Either a ValueError/TypeError naming inputs or context, or a log-density that is finite
    or -inf with finite gradients."""
    if x.is_floating_point():
        x.requires_grad_(True)
    try:
        log_prob = call(x)
    except (ValueError, TypeError) as error:
        assert re.search(r"\b(inputs|context)\b", str(error)), str(error)
        return
    assert log_prob.shape == (x.shape[0],)
    assert not torch.isnan(log_prob).any() and not (log_prob == math.inf).any(), (x, log_prob)
    if log_prob.requires_grad and log_prob.numel():
        log_prob.sum().backward()
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert all(torch.isfinite(g).all() for g in grads)
        assert x.grad is None or torch.isfinite(x.grad).all()


def _fuzz_flow(flow: Flow, features: int, context_features: int) -> None:
    for seed in _FUZZ_SEEDS:
        flow.zero_grad()
        x, context = _fuzz_case(seed, (features,), context_features)
        _assert_clean_outcome(lambda v, context=context: flow.log_prob(v, context), flow, x)


@pytest.mark.parametrize("context_features", [0, CONTEXT], ids=["plain", "context"])
@pytest.mark.parametrize("name", sorted(FLOWS))
def test_fuzz_flow_factories(name, context_features):
    _fuzz_flow(_flow(name, context_features), FLOWS[name][1], context_features)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_fuzz_registered_transforms_in_a_flow(name):
    flow, features, context_features = _transform_flow(name)
    _fuzz_flow(flow, features, context_features)


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_fuzz_distributions(name):
    """Distributions check shape and dtype only (no device sync), so the fuzz feeds them finite
    values (+-1e30 included); NaN/inf are the Flow's check."""
    distribution = DISTRIBUTIONS[name]()
    for seed in _FUZZ_SEEDS:
        distribution.zero_grad()
        x, _context = _fuzz_case(seed, tuple(distribution.event_shape), 0)
        if x.is_floating_point():
            big = min(1e30, torch.finfo(x.dtype).max)
            x = torch.where(torch.isfinite(x), x, torch.full_like(x, big))
        _assert_clean_outcome(distribution.log_prob, distribution, x)


# ---------------------------------------------------------------- item 5: extending Energy


def test_energy_subclasses_overriding_energy():
    """The obvious subclass (energy overridden, super().__init__() without arguments) used to fail
    with a missing-argument error (and then 'abstract method _energy')."""

    class Harmonic(Energy):
        def __init__(self):
            super().__init__()

        def energy(self, x):
            return 0.5 * x.square().sum(-1)

    target = Harmonic()
    assert target.event_shape is None
    with pytest.raises(ValueError, match="has no event_shape yet"):
        _ = target.dim
    x = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    torch.testing.assert_close(target.log_prob(x), torch.tensor([-2.5, -0.125]))
    torch.testing.assert_close(target.force(x), -x)
    u, force = target.energy_and_force(x)
    torch.testing.assert_close(u, torch.tensor([2.5, 0.125]))
    torch.testing.assert_close(force, -x)
    assert target.event_shape == (2,) and target.dim == 2
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2\), got \(2, 3\)"):
        target.energy(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        target.log_prob(torch.tensor([[math.nan, 0.0]]))
    torch.testing.assert_close(
        TemperedEnergy(target, temperature=2.0).energy(x), torch.tensor([1.25, 0.0625])
    )

    # Overriding energy on top of a concrete energy through super() does not recurse.
    class Lifted(DoubleWell):
        def energy(self, x):
            return super().energy(x) + 1.0

    lifted, x = Lifted(), torch.tensor([[0.3, -0.4]])
    torch.testing.assert_close(lifted.energy(x), DoubleWell().energy(x) + 1.0)
    torch.testing.assert_close(lifted.force(x), DoubleWell().force(x))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2\)"):
        lifted.energy(torch.zeros(1, 3))


# ---------------------------------------------------------------- found on the way


@pytest.mark.parametrize("antipodal", [False, True], ids=["plain", "antipodal"])
def test_radial_spline_at_the_poles_of_s3_is_the_limit(antipodal):
    """Where the height rounds to +-1 (|rest| < ~3e-4 in float32), 1 - G(h)^2 floored at the
    smallest number replaced the radius: at the pole itself an identity layer reported
    log|det| = 43.7, and rest was scaled by 1e-19 / |rest|. float64 resolves those points."""
    torch.manual_seed(0)
    layer = perturb(RadialSplineTransform(3, bins=4, antipodal=antipodal))
    x = torch.zeros(4, 4, dtype=torch.float64)
    x[:, -1] = torch.tensor([1.0, -1.0, 1.0, -1.0])
    x[2:, :3] = torch.tensor([[6e-6, -8e-6, 0.0], [0.0, 3e-6, 4e-6]], dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True)
    results = {}
    for dtype in (torch.float32, torch.float64):
        layer.to(dtype)
        with torch.no_grad():
            results[dtype] = [*layer(x.to(dtype)), *layer.inverse(x.to(dtype))]
    for value, expected in zip(results[torch.float32], results[torch.float64]):
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-5)
        assert torch.isfinite(value).all()
    y, y64 = results[torch.float32][0], results[torch.float64][0]
    torch.testing.assert_close(y[2:, :3].double(), y64[2:, :3], rtol=1e-4, atol=0)


def test_cnf_on_a_torus_without_a_seed_reads_the_angle_embedding():
    """Without a seed the velocity MLP was built for the angles, not their (cos, sin) embedding:
    a shape error on the first call."""
    flow = CNF(manifold=Torus(2), hidden_features=(8,), solver="rk4", steps=2)
    x = torch.tensor([[0.1, -2.0], [3.0, 1.0]])
    assert torch.isfinite(flow.log_prob(x)).all()
