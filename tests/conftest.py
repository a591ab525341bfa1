"""Shared test fixtures and the property registries.

Every transform of the package is registered in ``TRANSFORMS`` (name -> case) and every base
distribution in ``DISTRIBUTIONS``; the property tests in ``test_transform_properties.py`` and
``test_distributions.py`` (and the fuzz tests in ``test_reliability_flows.py``) run on each entry. A
new transform or distribution is untested until registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from normflows_sci import transforms as T
from normflows_sci._tabular import TableBounds


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="torch device for the tests (cpu, cuda, ...)")


@pytest.fixture
def device(request) -> torch.device:
    device = torch.device(request.config.getoption("--device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return device


@dataclass(frozen=True)
class TransformCase:
    """A registered transform: ``build()`` returns a fresh instance (random parameters)."""

    build: Callable[[], T.Transform]
    features: int = 4
    context_features: int = 0
    # Scale of the inputs the property tests feed; keeps splines mostly inside their bound.
    input_scale: float = 1.0
    # Whether calling without the context it was built for raises (nflows' layers silently don't).
    requires_context: bool = True


TRANSFORMS: dict[str, TransformCase] = {}


def register(name: str, **options):
    """Decorator: register a builder under ``name`` with ``TransformCase`` options."""

    def decorate(build):
        if name in TRANSFORMS:
            raise KeyError(f"transform {name!r} registered twice")
        TRANSFORMS[name] = TransformCase(build, **options)
        return build

    return decorate


def perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Move every parameter away from its (often identity) initialisation, reproducibly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.add_(scale * noise.to(parameter.device))
    return module


SPLINE = dict(bins=5, tail_bound=4.0, hidden_features=(16, 16))
HIDDEN = dict(hidden_features=(16, 16))

register("permutation")(lambda: T.Permutation([2, 0, 3, 1]))
register("reverse_permutation")(lambda: T.ReversePermutation(4))
register("random_permutation")(lambda: T.RandomPermutation(4, seed=3))
register("lu_linear")(lambda: perturb(T.LULinear(4)))
register("elementwise_affine")(lambda: perturb(T.ElementwiseAffine(4, shift=0.5, scale=2.0)))
register("circular_shift", input_scale=0.8)(lambda: T.CircularShift(4, shift=[3.0, 0.0, -1.0, 0.0]))
register("actnorm")(lambda: perturb(T.ActNorm(4)))
register("affine_coupling")(
    lambda: perturb(T.AffineCouplingTransform(T.alternating_mask(4), **HIDDEN))
)
register("affine_coupling_context", context_features=3)(
    lambda: perturb(T.AffineCouplingTransform([0, 1, 1, 0], context_features=3, **HIDDEN))
)
register("spline_coupling")(
    lambda: perturb(T.SplineCouplingTransform(T.alternating_mask(4, even=False), **SPLINE))
)
register("spline_coupling_mask_context", context_features=3)(
    lambda: perturb(T.SplineCouplingTransform([1, 1, 0, 1], context_features=3, **SPLINE))
)
register("maf")(lambda: perturb(T.MaskedAffineAutoregressiveTransform(4, **HIDDEN)))
register("maf_context_order", context_features=3)(
    lambda: perturb(
        T.MaskedAffineAutoregressiveTransform(4, context_features=3, order=[2, 0, 3, 1], **HIDDEN)
    )
)
register("masked_autoregressive_generic_map", context_features=3)(
    lambda: perturb(
        T.MaskedAutoregressiveTransform(
            4, T.RQSplineMap(bins=3, tail_bound=3.0), context_features=3, hidden_features=(16,)
        )
    )
)
register("nsf_autoregressive")(lambda: perturb(T.MaskedSplineAutoregressiveTransform(4, **SPLINE)))
register("nsf_autoregressive_context_order", context_features=3)(
    lambda: perturb(
        T.MaskedSplineAutoregressiveTransform(4, context_features=3, order=[3, 2, 1, 0], **SPLINE)
    )
)
register("nsf_autoregressive_1d", features=1, context_features=2)(
    lambda: perturb(T.MaskedSplineAutoregressiveTransform(1, context_features=2, **SPLINE))
)
register("composite", context_features=3)(
    lambda: perturb(
        T.CompositeTransform(
            [
                T.LULinear(4),
                T.SplineCouplingTransform(T.alternating_mask(4), context_features=3, **SPLINE),
                T.ReversePermutation(4),
                T.MaskedAffineAutoregressiveTransform(4, context_features=3, **HIDDEN),
                T.ActNorm(4),
            ]
        )
    )
)
register("boundary_transform")(
    # R -> each column's domain, then the forward map of wider bounds back to R: exercises the
    # logit, softplus, mirrored softplus and identity columns in both directions.
    lambda: T.CompositeTransform(
        [
            T.InverseTransform(
                T.BoundaryTransform([-1.0, 0.0, None, None], [2.0, None, 3.0, None])
            ),
            T.BoundaryTransform([-2.0, -0.5, None, None], [2.5, None, 3.5, None]),
        ]
    )
)
register("table_bounds")(
    # The estimator's boundary map (a value on a bound maps as the nearest float inside): away
    # from the bounds it is the BoundaryTransform's, in both directions.
    lambda: T.CompositeTransform(
        [
            T.InverseTransform(TableBounds([-1.0, 0.0, None, None], [2.0, None, 3.0, None])),
            TableBounds([-2.0, -0.5, None, None], [2.5, None, 3.5, None]),
        ]
    )
)
register("inverse_transform")(
    lambda: T.InverseTransform(perturb(T.MaskedSplineAutoregressiveTransform(4, **SPLINE)))
)


def _nflows_maf():
    from nflows.transforms import MaskedAffineAutoregressiveTransform

    from normflows_sci.interop.nflows import NflowsTransform

    nflows_maf = MaskedAffineAutoregressiveTransform(4, 16, context_features=3)
    return perturb(NflowsTransform(nflows_maf), scale=0.1)


register("nflows_adapter", context_features=3, requires_context=False)(_nflows_maf)
# Angles (features 0 and 2): one transformed by a circular spline, one feeding the conditioner as
# (cos, sin). Inputs of scale 0.8 stay inside [-pi, pi), where the round trip is exact.
register("spline_coupling_circular", context_features=3, input_scale=0.8)(
    lambda: perturb(
        T.SplineCouplingTransform(
            [True, True, False, False],
            circular=[True, False, True, False],
            context_features=3,
            **SPLINE,
        )
    )
)


def _internal_coordinates_keep():
    from normflows_sci.transforms import InternalCoordinates

    # 6 atoms, branched (two NeRF generations); i.i.d. Gaussian positions are generic geometries.
    z_matrix = [
        [0, -1, -1, -1],
        [1, 0, -1, -1],
        [2, 1, 0, -1],
        [3, 2, 1, 0],
        [4, 1, 0, 2],
        [5, 0, 1, 3],
    ]
    return InternalCoordinates(z_matrix, rigid="keep")


register("internal_coordinates_keep", features=18)(_internal_coordinates_keep)


# TarFlow (Transformer autoregressive blocks): small Transformers so the property tests stay fast.
# Layer norms make the Transformer's features O(1), so the zero-initialised head gets a gentler
# perturbation than the MADE layers (at 0.3, spline stacks get near-flat bins, ill-conditioned in
# float32).
def _tarflow_blocks(count, *, context_features=0, **options):
    from normflows_sci.transforms.tarflow import TarFlowBlock, TarFlowTransform

    small = dict(width=16, layers=1, heads=2, context_features=context_features)
    blocks = [TarFlowBlock(reverse=i % 2 == 1, **small, **options) for i in range(count)]
    return TarFlowTransform(blocks)


def _tarflow_block(**options):
    from normflows_sci.transforms.tarflow import TarFlowBlock

    return TarFlowBlock(width=16, layers=1, heads=2, **options)


register("tarflow_block_affine")(lambda: perturb(_tarflow_block(features=4)))
register("tarflow_block_reverse_naive_spline", context_features=3)(
    lambda: perturb(
        _tarflow_block(
            features=4,
            reverse=True,
            transform="spline",
            bins=5,
            tail_bound=4.0,
            context_features=3,
            inversion="naive",
        ),
        scale=0.1,
    )
)
register("tarflow_spline_context", context_features=3)(
    lambda: perturb(
        _tarflow_blocks(
            2, features=4, transform="spline", bins=5, tail_bound=4.0, context_features=3
        ),
        scale=0.1,
    )
)
register("tarflow_jacobi_chunks", context_features=3)(
    lambda: perturb(
        _tarflow_blocks(
            2, features=4, context_features=3, inversion="jacobi", tol=0.0, chunk_size=3
        ),
        scale=0.2,
    )
)
# Particles: 3 coordinates per token, 3 particles.
register("tarflow_particles", features=9)(
    lambda: perturb(_tarflow_blocks(2, features=9, token_size=3), scale=0.2)
)


# Manifold transforms (normflows_sci.manifolds). Torus layers act on angles directly (inputs of
# scale 0.8 stay inside [-pi, pi)); sphere, SO(3) and product layers are seen through the
# manifold's chart (stereographic on spheres) by ChartTransform, whose log-determinant adds the
# chart's volume elements, so the autograd-Jacobian test checks the density on the manifold.
def _manifold_chart(build_transform, build_manifold):
    from normflows_sci.manifolds import ChartTransform

    return ChartTransform(build_transform(), build_manifold())


def _so3_block(context_features=0):
    from normflows_sci.manifolds import AxialTwistTransform, RadialSplineTransform, SphereRotation

    options = dict(antipodal=True, context_features=context_features, bins=5, hidden_features=(16,))
    return T.CompositeTransform(
        [
            SphereRotation(3, context_features=context_features, hidden_features=(16,)),
            RadialSplineTransform(3, **options),
            AxialTwistTransform(3, **options),
        ]
    )


def _sphere2_block(context_features=0):
    from normflows_sci.manifolds import CylindricalSplineTransform, SphereRotation

    return T.CompositeTransform(
        [
            SphereRotation(2, context_features=context_features, hidden_features=(16,)),
            CylindricalSplineTransform(
                context_features=context_features, bins=5, hidden_features=(16,)
            ),
        ]
    )


def _sphere3_block():
    from normflows_sci.manifolds import AxialTwistTransform, RadialSplineTransform, SphereRotation

    return T.CompositeTransform(
        [
            SphereRotation(3),
            RadialSplineTransform(3, bins=5),
            AxialTwistTransform(3, bins=5, hidden_features=(16,)),
        ]
    )


def _product_flow_transform():
    from normflows_sci.flows.manifold import ProductFlow
    from normflows_sci.manifolds import SO3, Euclidean, Product, Torus

    manifold = Product(Euclidean(2), Torus(1), SO3())
    flow = ProductFlow(manifold, context_features=3, transforms=1, bins=5, hidden_features=(16,))
    return _manifold_chart(lambda: flow.transform, lambda: manifold)


def _manifold_registry():
    from normflows_sci import manifolds as M

    register("manifold_torus_circular_spline", features=3, input_scale=0.8)(
        lambda: perturb(M.CircularSplineTransform(3, bins=5))
    )
    register("manifold_torus_coupling_context", context_features=3, input_scale=0.8)(
        lambda: perturb(
            M.TorusCouplingTransform(
                [True, False, True, False], bins=5, context_features=3, hidden_features=(16,)
            )
        )
    )
    register("manifold_torus_autoregressive_context", context_features=3, input_scale=0.8)(
        lambda: perturb(
            M.TorusAutoregressiveTransform(
                4, bins=5, context_features=3, order=[2, 0, 3, 1], hidden_features=(16,)
            )
        )
    )
    register("manifold_circle_spline", features=1)(
        lambda: perturb(
            _manifold_chart(lambda: M.CircleSplineTransform(bins=5), lambda: M.Sphere(1))
        )
    )
    register("manifold_sphere2_context", features=2, context_features=3)(
        lambda: perturb(_manifold_chart(lambda: _sphere2_block(3), lambda: M.Sphere(2)))
    )
    register("manifold_sphere3", features=3)(
        lambda: perturb(_manifold_chart(_sphere3_block, lambda: M.Sphere(3)))
    )
    register("manifold_so3_context", features=3, context_features=3)(
        lambda: perturb(_manifold_chart(lambda: _so3_block(3), M.SO3))
    )
    register("manifold_product_flow_context", features=6, context_features=3, input_scale=0.8)(
        lambda: perturb(_product_flow_transform(), scale=0.1)
    )


_manifold_registry()


# Particle flows: the EGNN field's ODE on the zero-centre-of-mass space of 3 particles in 2-D, seen
# through the space's chart (R^4 <-> the subspace), so the autograd-Jacobian test checks the
# Riemannian divergence. Two fixed RK4 steps of a gentle field (small perturbation): the round trip
# and the Jacobian of the discretised map agree with the integrated divergence to ~1e-8, and the
# double-backward Jacobian test stays fast.
def _particle_ode_chart():
    from normflows_sci.flows.cnf import ODETransform
    from normflows_sci.manifolds import ChartTransform, MeanFree
    from normflows_sci.nn import EGNNVelocity

    space = MeanFree(3, 2)
    field = perturb(EGNNVelocity(3, 2, hidden_features=8, layers=2), scale=0.02)
    ode = ODETransform(field, 6, solver="rk4", steps=2, manifold=space)
    return ChartTransform(ode, space)


register("particle_ode_chart", features=4)(_particle_ode_chart)


# Base distributions (normflows_sci.distributions, the manifold bases and the nflows adapter):
# name -> builder of a fresh instance (parameters moved off their initialisation).
DISTRIBUTIONS: dict[str, Callable[[], torch.nn.Module]] = {}


def register_distribution(name: str):
    """Decorator: register a distribution builder under ``name``."""

    def decorate(build):
        if name in DISTRIBUTIONS:
            raise KeyError(f"distribution {name!r} registered twice")
        DISTRIBUTIONS[name] = build
        return build

    return decorate


def _distribution_registry():
    from normflows_sci import distributions as D
    from normflows_sci import manifolds as M

    register_distribution("standard_normal")(lambda: D.StandardNormal(3))
    register_distribution("standard_normal_2d_event")(lambda: D.StandardNormal((2, 3)))
    register_distribution("diag_normal")(lambda: perturb(D.DiagNormal(3), scale=0.5))
    register_distribution("diag_normal_fixed_2d_event")(
        lambda: D.DiagNormal((2, 2), learnable=False)
    )
    register_distribution("gaussian_mixture")(
        lambda: perturb(D.GaussianMixture(3, components=4, seed=0), scale=0.5)
    )
    register_distribution("student_t")(lambda: perturb(D.StudentT(3, df=[1.5, 4.0, 30.0])))
    register_distribution("tail_adaptive")(lambda: perturb(D.TailAdaptiveBase([None, 2.0, 5.0])))
    register_distribution("normal_with_angles")(lambda: D.NormalWithAngles([True, False, True]))
    register_distribution("uniform_torus")(lambda: M.UniformManifold(M.Torus(3)))
    register_distribution("von_mises")(
        lambda: perturb(M.VonMises(2, concentration=[0.5, 3.0], learnable_loc=True))
    )
    register_distribution("uniform_sphere")(lambda: M.UniformManifold(M.Sphere(2)))
    register_distribution("von_mises_fisher")(lambda: M.VonMisesFisher(2, concentration=4.0))
    register_distribution("haar_so3")(M.HaarSO3)
    register_distribution("mean_free_normal")(lambda: M.MeanFreeNormal(3, 2))
    register_distribution("product")(
        lambda: M.ProductDistribution([D.StandardNormal(2), M.HaarSO3(), M.VonMises(1)])
    )


def _nflows_distribution():
    import nflows.distributions

    from normflows_sci.interop.nflows import NflowsDistribution

    return NflowsDistribution(nflows.distributions.StandardNormal([3]))


_distribution_registry()
register_distribution("nflows_adapter")(_nflows_distribution)
