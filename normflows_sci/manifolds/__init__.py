"""Manifolds (torus, sphere, SO(3) as unit quaternions, products), their base densities and flow
layers with exact densities with respect to the Riemannian volume measure.

Each manifold owns its geometry (geodesic interpolant, squared distances, default base, the
layers of a flow on it); ``R^n`` is :class:`Euclidean` and :func:`as_manifold` maps ``None`` to it.
Ready-made flows: :func:`normflows_sci.flows.TorusFlow`, ``SphereFlow``, ``SO3Flow`` and
``ProductFlow``; angles (alone or with Euclidean coordinates) are modelled on ``Torus`` /
``Product(Euclidean(k), Torus(m))``; particle systems on :class:`MeanFree` (zero centre of mass)
with :func:`normflows_sci.flows.particle_flow`.
"""

from normflows_sci.manifolds.base import (
    ChartTransform,
    Euclidean,
    Manifold,
    UniformManifold,
    as_manifold,
)
from normflows_sci.manifolds.meanfree import MeanFree, MeanFreeNormal, kabsch_rotation
from normflows_sci.manifolds.product import (
    PartTransform,
    Product,
    ProductDistribution,
    circular_manifold,
)
from normflows_sci.manifolds.so3 import (
    SO3,
    HaarSO3,
    canonical_quaternion,
    matrix_to_quaternion,
    quaternion_conjugate,
    quaternion_multiply,
    quaternion_to_matrix,
    rotate_vectors,
)
from normflows_sci.manifolds.sphere import (
    AxialTwistTransform,
    CircleSplineTransform,
    CylindricalSplineTransform,
    RadialSplineTransform,
    Sphere,
    SphereRotation,
    VonMisesFisher,
    householder_frame,
)
from normflows_sci.manifolds.torus import (
    CircularSplineTransform,
    Torus,
    TorusAutoregressiveTransform,
    TorusCouplingTransform,
    VonMises,
)

__all__ = [
    "Manifold",
    "Euclidean",
    "Torus",
    "Sphere",
    "SO3",
    "Product",
    "MeanFree",
    "UniformManifold",
    "MeanFreeNormal",
    "VonMises",
    "VonMisesFisher",
    "HaarSO3",
    "ProductDistribution",
    "ChartTransform",
    "CircularSplineTransform",
    "TorusCouplingTransform",
    "TorusAutoregressiveTransform",
    "SphereRotation",
    "CylindricalSplineTransform",
    "RadialSplineTransform",
    "AxialTwistTransform",
    "CircleSplineTransform",
    "PartTransform",
    "householder_frame",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "quaternion_multiply",
    "quaternion_conjugate",
    "rotate_vectors",
    "canonical_quaternion",
    "as_manifold",
    "circular_manifold",
    "kabsch_rotation",
]
