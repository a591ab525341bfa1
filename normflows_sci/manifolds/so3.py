"""Rotations SO(3) as unit quaternions ``(w, x, y, z)``, quaternion helpers and the Haar base.

``q`` and ``-q`` are the same rotation. A density on SO(3) is represented by an antipodally
symmetric density on ``S^3`` (``p(q) = p(-q)``); flows built from maps of ``S^3`` that commute with
``q -> -q`` (rotations of ``R^4``, odd radial splines, antipodal twists; see
:mod:`normflows_sci.manifolds.sphere`) keep that symmetry exactly.

Measure: SO(3) carries the volume of the quotient ``S^3 / {+-1}`` (the bi-invariant metric of unit
quaternions), ``vol(SO(3)) = pi^2``; densities integrate to 1 over SO(3), i.e. to 2 over ``S^3``.
The Euler-angle measure ``sin(beta) dalpha dbeta dgamma`` (total ``8 pi^2``) is 8 times this one,
so a density with respect to it is ``p / 8``.

References:
    Koehler, Invernizzi, de Haan, Noé (2023), "Rigid body flows for sampling molecular crystal
    structures".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import UniformManifold
from .sphere import Sphere

__all__ = [
    "SO3",
    "HaarSO3",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "quaternion_multiply",
    "quaternion_conjugate",
    "rotate_vectors",
    "canonical_quaternion",
]


def _check_last(name: str, value: Tensor, size: int) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.shape[-1:] != (size,):
        raise ValueError(f"{name} must have shape (..., {size}), got {tuple(value.shape)}")


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` of unit quaternions ``q: (..., 4)`` in ``(w, x, y, z)``.

    Quadratic in ``q``, so ``q`` and ``-q`` give the same matrix. ``R @ v`` rotates ``v``.

    Example:
        >>> q = torch.tensor([math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)])
        >>> quaternion_to_matrix(q).round(decimals=4).tolist()  # 90 degrees about z
        [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    _check_last("q", q, 4)
    w, x, y, z = q.unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, -1) for row in rows], -2)


def matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """Unit quaternions ``(..., 4)`` with ``w >= 0`` of rotation matrices ``(..., 3, 3)``.

    Each row uses the largest of ``(1 + trace, 1 + 2 R_ii - trace)`` for the square root
    (Shepperd's method), so it is accurate for every rotation.

    Example:
        >>> q = torch.tensor([[0.5, 0.5, -0.5, 0.5]])
        >>> torch.allclose(matrix_to_quaternion(quaternion_to_matrix(q)), q, atol=1e-6)
        True
    """
    if not isinstance(matrix, Tensor) or matrix.shape[-2:] != (3, 3):
        shape = tuple(getattr(matrix, "shape", ()))
        raise ValueError(f"matrix must have shape (..., 3, 3), got {shape}")
    m = matrix
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    # 4 q_i^2 for i = w, x, y, z.
    squares = torch.stack(
        [
            1.0 + trace,
            1.0 + 2.0 * m[..., 0, 0] - trace,
            1.0 + 2.0 * m[..., 1, 1] - trace,
            1.0 + 2.0 * m[..., 2, 2] - trace,
        ],
        -1,
    )
    # Off-diagonal combinations: 4 q_i q_j.
    wx = m[..., 2, 1] - m[..., 1, 2]
    wy = m[..., 0, 2] - m[..., 2, 0]
    wz = m[..., 1, 0] - m[..., 0, 1]
    xy = m[..., 0, 1] + m[..., 1, 0]
    xz = m[..., 0, 2] + m[..., 2, 0]
    yz = m[..., 1, 2] + m[..., 2, 1]
    candidates = torch.stack(
        [
            torch.stack([squares[..., 0], wx, wy, wz], -1),
            torch.stack([wx, squares[..., 1], xy, xz], -1),
            torch.stack([wy, xy, squares[..., 2], yz], -1),
            torch.stack([wz, xz, yz, squares[..., 3]], -1),
        ],
        -2,
    )  # row i is 4 q_i q
    best = squares.argmax(-1)
    row = candidates.gather(-2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = row / row.norm(dim=-1, keepdim=True)
    return canonical_quaternion(q)


def canonical_quaternion(q: Tensor) -> Tensor:
    """The representative with ``w >= 0`` of each rotation (``q`` or ``-q``)."""
    _check_last("q", q, 4)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_multiply(p: Tensor, q: Tensor) -> Tensor:
    """Hamilton product ``p q`` of ``(..., 4)`` quaternions (rotation ``q`` first, then ``p``).

    Example:
        >>> i = torch.tensor([0.0, 1.0, 0.0, 0.0]); j = torch.tensor([0.0, 0.0, 1.0, 0.0])
        >>> quaternion_multiply(i, j).tolist()  # i j = k
        [0.0, 0.0, 0.0, 1.0]
    """
    _check_last("p", p, 4)
    _check_last("q", q, 4)
    pw, px, py, pz = p.unbind(-1)
    qw, qx, qy, qz = q.unbind(-1)
    return torch.stack(
        [
            pw * qw - px * qx - py * qy - pz * qz,
            pw * qx + px * qw + py * qz - pz * qy,
            pw * qy - px * qz + py * qw + pz * qx,
            pw * qz + px * qy - py * qx + pz * qw,
        ],
        -1,
    )


def quaternion_conjugate(q: Tensor) -> Tensor:
    """``(w, -x, -y, -z)``: the inverse rotation of a unit quaternion."""
    _check_last("q", q, 4)
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def rotate_vectors(q: Tensor, vectors: Tensor) -> Tensor:
    """Rotate ``vectors: (..., 3)`` by unit quaternions ``q: (..., 4)`` (broadcasting)."""
    _check_last("vectors", vectors, 3)
    return (quaternion_to_matrix(q) @ vectors[..., None])[..., 0]


class SO3(Sphere):
    """The rotation group SO(3), represented by unit quaternions ``(w, x, y, z)`` on ``S^3``.

    ``q`` and ``-q`` are the same rotation; densities must satisfy ``p(q) = p(-q)``. Volume
    ``pi^2`` (the quotient ``S^3 / {+-1}``). Membership, projection (normalisation), uniform (Haar)
    sampling, tangent bases and the chart are those of ``S^3``. Conditioners see the rotation
    matrix (9 entries, quadratic in ``q``): continuous and the same for ``q`` and ``-q``.

    Example:
        >>> so3 = SO3()
        >>> round(so3.volume, 4)  # pi^2
        9.8696
        >>> so3.embed(torch.tensor([[1.0, 0.0, 0.0, 0.0]])).tolist()
        [[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]]
    """

    representation = "unit quaternions (w, x, y, z); q and -q are the same rotation"
    antipodal = True

    def __init__(self):
        super().__init__(3)
        self.conditioner_features = 9

    def __repr__(self) -> str:
        return "SO3()"

    @property
    def volume(self) -> float:
        return math.pi**2

    def embed(self, x: Tensor) -> Tensor:
        return quaternion_to_matrix(x).flatten(-2)

    def default_base(self) -> HaarSO3:
        """The Haar (uniform) distribution."""
        return HaarSO3()


class HaarSO3(UniformManifold):
    """The uniform (Haar) distribution on SO(3): ``log p = -log(pi^2)`` on unit quaternions.

    Example:
        >>> base = HaarSO3()
        >>> q = base.sample(1000, generator=torch.Generator().manual_seed(0))
        >>> bool(torch.allclose(q.norm(dim=-1), torch.ones(1000), atol=1e-5))
        True
    """

    def __init__(self):
        super().__init__(SO3())
