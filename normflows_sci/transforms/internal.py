"""Internal coordinates (Z-matrix): Cartesian positions <-> bonds, angles, torsions, exactly.

A Z-matrix places atoms one after the other: the first (root) atom anywhere, the second at a bond
length from it, the third at a bond length and an angle, and every later atom at a bond length, an
angle and a torsion relative to three atoms placed earlier (the Natural Extension Reference Frame,
NeRF). Written as a :class:`~normflows_sci.transforms.Transform`, the map Cartesian -> internal is
the first layer of a Boltzmann generator over molecules: torsions live on circles, bonds and angles
on intervals, and the Jacobian is a product of spherical-coordinate factors ``b^2 sin(a)``.

References:
    Noe, Olsson, Koehler, Wu, "Boltzmann generators: Sampling equilibrium states of many-body
    systems with deep learning", Science 365 (2019).
    Parsons, Holmes, Rojas, Tsai, Strauss, "Practical conversion from torsion space to Cartesian
    space for in silico protein synthesis", J. Comput. Chem. 26 (2005) (NeRF placement).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from normflows_sci.checks import check_features
from normflows_sci.transforms.base import Transform

__all__ = ["InternalCoordinates"]

_RIGID_MODES = ("remove", "keep")


def _norm(vectors: Tensor) -> Tensor:
    """Euclidean norm over the last axis without squaring the raw entries: each vector is
    divided by its largest entry first (a constant for autograd, so the gradient is exact), so
    coordinates of ``1e30`` do not overflow float32 (and the zero vector has norm 0, gradient 0).
    """
    tiny = torch.finfo(vectors.dtype).tiny
    scale = vectors.detach().abs().amax(-1, keepdim=True).clamp_min(tiny)
    return torch.linalg.vector_norm(vectors / scale, dim=-1) * scale[..., 0]


def _unit(vectors: Tensor, norms: Tensor) -> Tensor:
    """``vectors / norms``, the zero vector (of a degenerate geometry) staying zero."""
    return vectors / norms.clamp_min(torch.finfo(vectors.dtype).tiny)[..., None]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


def _atan2(y: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(atan2(y, x), undefined)``: ``undefined`` marks ``x = y = 0`` (a degenerate geometry),
    where the angle is 0 and, unlike torch's ``0 / 0``, the gradient finite."""
    undefined = (x == 0) & (y == 0)
    return torch.atan2(y, x.masked_fill(undefined, 1.0)), undefined


def _wrap_atan2(angles: Tensor) -> Tensor:
    # atan2 returns values in [-pi, pi]; only +pi itself must move to keep [-pi, pi). No remainder:
    # it would round every other angle by one ulp.
    return torch.where(angles >= math.pi, angles - 2 * math.pi, angles)


def _angle(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Angle between the unit vectors ``u`` and ``v`` (in [0, pi]) by atan2, and its sine."""
    sine = _norm(torch.linalg.cross(u, v, dim=-1))  # scaled: sines of 1e-30 do not underflow
    return _atan2(sine, _dot(u, v))[0], sine


def _dihedral(b1: Tensor, b2: Tensor, b3: Tensor) -> tuple[Tensor, Tensor]:
    """IUPAC dihedral angle p0-p1-p2-p3 (the convention of OpenMM and MDTraj), in [-pi, pi), of
    the unit bond directions ``b1 = p1 - p0``, ``b2 = p2 - p1``, ``b3 = p3 - p2`` (the angle does
    not depend on their lengths, so their products cannot overflow), and where it is undefined
    (``p1, p2, p3`` or ``p0, p1, p2`` collinear, or a zero bond)."""
    c1 = torch.linalg.cross(b2, b3, dim=-1)
    c2 = torch.linalg.cross(b1, b2, dim=-1)
    angle, undefined = _atan2(_dot(b1, c1), _dot(c1, c2))
    return _wrap_atan2(angle), undefined


def _as_z_matrix(z_matrix) -> np.ndarray:
    if isinstance(z_matrix, Tensor):
        array = z_matrix.detach().cpu().numpy()
    else:
        try:
            array = np.asarray(z_matrix)
        except ValueError as error:  # ragged lists
            raise ValueError(
                f"z_matrix must be rows [atom, bond_ref, angle_ref, torsion_ref], got {error}"
            ) from None
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise TypeError(f"z_matrix must hold integers, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(
            "z_matrix must have shape (num_atoms, 4): rows [atom, bond_ref, angle_ref, "
            f"torsion_ref] with -1 for unused references, got shape {array.shape}"
        )
    if array.shape[0] < 3:
        raise ValueError(f"z_matrix needs at least 3 atoms (rows), got {array.shape[0]}")
    return array.astype(np.int64)


def _validate_z_matrix(rows: np.ndarray) -> None:
    num_atoms = len(rows)
    atoms = rows[:, 0]
    if sorted(atoms.tolist()) != list(range(num_atoms)):
        missing = sorted(set(range(num_atoms)) - set(atoms.tolist()))
        repeated = sorted({a for a in atoms.tolist() if (atoms == a).sum() > 1})
        raise ValueError(
            f"z_matrix must list every atom 0..{num_atoms - 1} exactly once in its first column; "
            f"missing {missing}, repeated {repeated}, out of range "
            f"{sorted(a for a in atoms.tolist() if not 0 <= a < num_atoms)}"
        )
    placed: set[int] = set()
    for index, row in enumerate(rows.tolist()):
        atom, refs = row[0], row[1:]
        used = min(index, 3)
        if any(ref != -1 for ref in refs[used:]):
            raise ValueError(
                f"z_matrix row {index} ({row}) places atom {atom} with {used} reference(s); "
                f"the unused reference columns must be -1"
            )
        refs = refs[:used]
        if len(set(refs)) != len(refs):
            raise ValueError(f"z_matrix row {index} ({row}): references must be distinct")
        unplaced = [ref for ref in refs if ref not in placed]
        if unplaced:
            raise ValueError(
                f"z_matrix row {index} ({row}): references {unplaced} of atom {atom} are not "
                f"placed by an earlier row"
            )
        placed.add(atom)


class InternalCoordinates(Transform):
    """Cartesian coordinates <-> internal coordinates (bonds, angles, torsions) of a Z-matrix.

    Forward maps flattened Cartesian positions ``x: (batch, 3 N)`` (nm for molecules) to internal
    coordinates with ``logabsdet = log|det d(ic)/dx|``; the inverse rebuilds the positions by NeRF
    placement with ``logabsdet = log|det dx/d(ic)|``, exactly the negative at corresponding points.

    **Z-matrix.** ``z_matrix`` has one row ``[atom, bond_ref, angle_ref, torsion_ref]`` per atom
    (``-1`` for unused references), in placement order: row 0 is the root atom, row 1 an atom bonded
    to it, row 2 an atom given by a bond to one of the first two and the angle to the other, and
    every later row an atom at bond ``|x_atom - x_bond_ref|``, angle ``atom-bond_ref-angle_ref`` and
    torsion ``atom-bond_ref-angle_ref-torsion_ref`` relative to three distinct earlier atoms. The
    torsion follows the IUPAC sign convention of OpenMM and MDTraj (and equals the dihedral
    ``torsion_ref-angle_ref-bond_ref-atom``).

    **Output layout** (``N`` atoms, rows numbered in placement order)::

        rigid="remove":  [bonds (N-1) | angles (N-2) | torsions (N-3)]                     3N-6
        rigid="keep":    [t (3) | theta1, phi1, psi2 | bonds | angles | torsions]          3N

    Bond ``r - 1`` belongs to row ``r >= 1``, angle ``r - 2`` to row ``r >= 2`` and torsion
    ``r - 3`` to row ``r >= 3``; ``bond_indices``, ``angle_indices``, ``torsion_indices``,
    ``translation_indices`` and ``orientation_indices`` hold their positions in the output vector,
    and :meth:`bond_feature`, :meth:`angle_feature`, :meth:`torsion_feature` find one by its atoms.
    Bonds are positive, angles in ``(0, pi)``, torsions in ``[-pi, pi)``.

    **Rigid motion** (``rigid="keep"``). The root atom's position is the translation ``t``; the
    second atom sits at ``t + b1 (sin th1 cos ph1, sin th1 sin ph1, cos th1)`` (spherical
    coordinates: polar ``theta1`` in ``(0, pi)``, azimuth ``phi1`` in ``[-pi, pi)``); the third atom
    has bond ``b2``, angle ``a2`` and an azimuth ``psi2`` about the axis of the first two atoms,
    measured from the spherical unit vector ``e_theta(theta1, phi1)`` towards ``e_phi``. The
    Jacobian is block triangular with spherical-coordinate blocks::

        log|det dx/d(t, theta1, phi1, psi2, ic)| = log(b1^2 sin theta1) + log(b2^2 sin a2)
                                                    + sum_{rows r >= 3} log(b_r^2 sin a_r)

    **Rigid motion removed** (``rigid="remove"``, the default, for energies invariant under
    translations and rotations). Forward drops ``t, theta1, phi1, psi2`` (so it is invariant to
    rigid motions of the input); the inverse builds the molecule in the canonical frame: root atom
    at the origin, the second atom on the ``+x`` axis, the third atom in the ``xy`` plane on the
    ``+y`` side of its bond reference (``theta1 = pi/2, phi1 = 0, psi2 = pi/2``), and reports::

        logabsdet = log(b1^2) + log(b2^2 sin a2) + sum_{rows r >= 3} log(b_r^2 sin a_r)

    Meaning: for a Cartesian density ``p(x)`` invariant under rigid motions, the induced density
    of the ``3N - 6`` internal coordinates is ``p_ic(ic) = p(x(ic)) exp(logabsdet) 8 pi^2 V`` (the
    ``sin theta1`` factor integrates with ``phi1, psi2`` to the rotation-group volume ``8 pi^2``
    and the translation to the box volume ``V``). A flow ``q_ic`` over internal coordinates used
    through this transform therefore has ``log q(x) = log q_ic(ic(x)) - logabsdet``, and importance
    weights ``-u(x) - log q(x)`` of a Boltzmann generator are correct up to the constant
    ``log(8 pi^2 V)``, which self-normalisation removes. Only for rotation/translation-invariant
    energies.

    **Numerics.** Angles and torsions use ``atan2`` (no ``acos`` near 0 or pi) of unit vectors,
    and lengths are taken of rescaled vectors, so coordinates up to the dtype's largest number
    neither overflow nor underflow (``1e30`` in float32 gives bonds of ``1e30`` and finite
    angles). Forward is fully vectorised over atoms (one gather of all the vectors it reads).
    **Degenerate geometries** (a bond of length zero, three atoms of an angle collinear, an
    undefined torsion or, with ``rigid="keep"``, the first bond along the ``z`` axis) have no
    internal coordinates and the map has no Jacobian there: forward reports ``logabsdet = -inf``
    and outputs that carry no gradient for those rows, so a flow gives them ``log p = -inf``
    (outside its support; the flow never samples them) with a zero, not NaN, gradient. The
    inverse is sequential only over *generations*: the first
    three atoms, then every group of atoms whose three references are already placed, each group
    placed at once by vectorised NeRF (alanine dipeptide: 4 groups after the first three atoms).
    Dtype and device follow the inputs. The inverse accepts any finite values; bonds ``<= 0`` or
    angles outside ``(0, pi)`` produce a geometry whose forward coordinates differ from the inputs
    (the formulas use ``log|b|`` and ``log|sin a|``).

    Args:
        z_matrix: ``(N, 4)`` integers (array, tensor or list of rows), as above.
        rigid: ``"remove"`` (``3N -> 3N - 6``) or ``"keep"`` (square ``3N -> 3N``).

    Attributes:
        num_atoms, features_in (``3N``), features_out, rigid, z_matrix (``(N, 4)`` long buffer),
        bond_indices, angle_indices, torsion_indices, translation_indices, orientation_indices
        (long tensors of output positions; the last two are empty when ``rigid="remove"``), and
        circular_mask: ``(features_out,)`` bool, True for the periodic outputs in ``[-pi, pi)``:
        the torsions and, with ``rigid="keep"``, the azimuths ``phi1`` and ``psi2``;
        context_features: 0 (the map takes no context; a :class:`~normflows_sci.flows.Flow`
        containing it checks the context width of its other layers).

    Example:
        >>> ic = InternalCoordinates([[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1], [3, 2, 1, 0]])
        >>> x = torch.tensor([[0.0, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 1]], dtype=torch.float64)
        >>> z, logabsdet = ic(x)
        >>> [round(v, 4) for v in z[0].tolist()]  # bonds, angles, torsion
        [1.0, 1.0, 1.0, 1.5708, 1.5708, 1.5708]
        >>> x_canonical, inverse_logabsdet = ic.inverse(z)
        >>> torch.allclose(ic(x_canonical)[0], z), torch.allclose(inverse_logabsdet, -logabsdet)
        (True, True)
    """

    def __init__(self, z_matrix, *, rigid: str = "remove"):
        super().__init__()
        if rigid not in _RIGID_MODES:
            raise ValueError(f"rigid must be one of {_RIGID_MODES}, got {rigid!r}")
        rows = _as_z_matrix(z_matrix)
        _validate_z_matrix(rows)
        num_atoms = len(rows)
        self.rigid = rigid
        self.num_atoms = num_atoms
        self.context_features = 0
        self.features_in = 3 * num_atoms
        offset = 6 if rigid == "keep" else 0
        self.features_out = 3 * num_atoms - 6 + offset
        num_bonds, num_angles = num_atoms - 1, num_atoms - 2

        def buffer(name, values, dtype=torch.long):
            # Non-persistent: the Z-matrix is a constructor argument, not learnt state.
            self.register_buffer(name, torch.as_tensor(values, dtype=dtype), persistent=False)

        buffer("z_matrix", rows)
        buffer("translation_indices", list(range(3)) if rigid == "keep" else [])
        buffer("orientation_indices", list(range(3, 6)) if rigid == "keep" else [])
        buffer("bond_indices", offset + np.arange(num_bonds))
        buffer("angle_indices", offset + num_bonds + np.arange(num_angles))
        buffer("torsion_indices", offset + num_bonds + num_angles + np.arange(num_atoms - 3))
        circular = np.zeros(self.features_out, dtype=bool)
        circular[offset + num_bonds + num_angles :] = True
        if rigid == "keep":
            circular[[4, 5]] = True
        buffer("circular_mask", circular, dtype=torch.bool)
        # The forward reads every vector it needs as one gather: the bonds (atom - bond_ref), the
        # angles' second legs (angle_ref - bond_ref, rows >= 2) and the torsions' third bonds
        # (torsion_ref - angle_ref, rows >= 3).
        atom, bond_ref, angle_ref, torsion_ref = rows.T
        buffer("_heads", np.concatenate([atom[1:], angle_ref[2:], torsion_ref[3:]]))
        buffer("_tails", np.concatenate([bond_ref[1:], bond_ref[2:], angle_ref[3:]]))

        # Generations for the inverse: rows >= 3 grouped so that each group only references
        # atoms placed by the first three rows or by earlier groups.
        generation = {int(atom): 0 for atom in rows[:3, 0]}
        groups: dict[int, list[int]] = {}
        for index in range(3, num_atoms):
            level = 1 + max(generation[int(ref)] for ref in rows[index, 1:])
            generation[int(rows[index, 0])] = level
            groups.setdefault(level, []).append(index)
        self._num_generations = len(groups)
        for level in sorted(groups):
            buffer(f"_generation_{level - 1}", groups[level])
        # The third atom's bond axis is +u (bond_ref is the root) or -u (bond_ref is atom 1).
        self._third_axis_sign = 1.0 if rows[2, 1] == rows[0, 0] else -1.0

    def extra_repr(self) -> str:
        return f"num_atoms={self.num_atoms}, rigid={self.rigid!r}"

    # ----------------------------------------------------------------------------------- lookup
    def _feature(self, kind: str, atoms: tuple[int, ...], indices: Tensor, start: int) -> int:
        rows = self.z_matrix.tolist()
        width = len(atoms)
        for row_index in range(start, len(rows)):
            key = tuple(rows[row_index][:width])
            if key == tuple(atoms) or key == tuple(reversed(atoms)):
                return int(indices[row_index - start])
        raise ValueError(
            f"no {kind} over atoms {tuple(atoms)} (in either order) in the Z-matrix; a {kind} "
            f"feature exists only for rows [atom, bond_ref, ...] listing exactly these atoms"
        )

    def bond_feature(self, i: int, j: int) -> int:
        """Output position of the bond ``i-j`` (a Z-matrix row ``[i, j, ...]`` or ``[j, i, ...]``).

        Raises:
            ValueError: no row defines this bond.
        """
        return self._feature("bond", (i, j), self.bond_indices, 1)

    def angle_feature(self, i: int, j: int, k: int) -> int:
        """Output position of the angle ``i-j-k`` (``j`` the vertex); see :meth:`bond_feature`."""
        return self._feature("angle", (i, j, k), self.angle_indices, 2)

    def torsion_feature(self, i: int, j: int, k: int, l: int) -> int:  # noqa: E741
        """Output position of the torsion (IUPAC dihedral) ``i-j-k-l``, in either atom order.

        Example:
            >>> ic = InternalCoordinates([[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1], [3, 2, 1, 0]])
            >>> ic.torsion_feature(3, 2, 1, 0), ic.torsion_feature(0, 1, 2, 3)
            (5, 5)
        """
        return self._feature("torsion", (i, j, k, l), self.torsion_indices, 3)

    # ---------------------------------------------------------------------------------- forward
    def _check_inputs(self, inputs: Tensor, features: int) -> None:
        if not isinstance(inputs, Tensor):
            raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
        if inputs.ndim != 2:
            raise ValueError(
                f"inputs must have shape (batch, {features}), got {tuple(inputs.shape)}"
            )
        check_features(inputs, features)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Cartesian ``(batch, 3N)`` -> internal ``(batch, features_out)``, ``log|det d(ic)/dx|``."""
        self._check_inputs(inputs, self.features_in)
        positions = inputs.reshape(inputs.shape[0], self.num_atoms, 3)
        vectors = positions[:, self._heads] - positions[:, self._tails]
        norms = _norm(vectors)
        n = self.num_atoms
        bonds = norms[:, : n - 1]
        units, legs, thirds = _unit(vectors, norms).split([n - 1, n - 2, n - 3], dim=1)
        angles, sin_angles = _angle(units[:, 1:], legs)
        torsions, undefined = _dihedral(-units[:, 2:], legs[:, 1:], thirds)
        parts = [bonds, angles, torsions]
        volume_factors = [bonds, bonds, sin_angles]
        if self.rigid == "keep":
            translation = positions[:, self.z_matrix[0, 0]]
            axis = units[:, 0]
            phi1, undefined_phi1 = _atan2(axis[:, 1], axis[:, 0])
            phi1 = _wrap_atan2(phi1)
            # sin theta1 = 0 exactly where phi1 is undefined (a degenerate row); hypot's gradient
            # is 0 / 0 there, so it is evaluated at (1, 0) instead.
            sin_theta1 = torch.hypot(axis[:, 0].masked_fill(undefined_phi1, 1.0), axis[:, 1])
            theta1 = _atan2(sin_theta1.masked_fill(undefined_phi1, 0.0), axis[:, 2])[0]
            e_theta, e_phi = self._spherical_frame(theta1, phi1)
            third = units[:, 1]
            psi2 = _wrap_atan2(_atan2(_dot(third, e_phi), _dot(third, e_theta))[0])
            parts = [translation, torch.stack([theta1, phi1, psi2], -1), *parts]
            volume_factors.append(sin_theta1[:, None])  # log(b1^2 sin theta1)
            undefined = torch.cat([undefined, undefined_phi1[:, None]], -1)
        return self._degenerate_to_minus_inf(torch.cat(parts, -1), volume_factors, undefined)

    @staticmethod
    def _degenerate_to_minus_inf(
        outputs: Tensor, volume_factors: list[Tensor], undefined: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(outputs, log|det d(ic)/dx|)`` with degenerate geometries (a zero bond, a zero
        angle sine, an undefined torsion or azimuth) reported as ``logabsdet = -inf`` and
        ``outputs`` detached there, so a flow gives them ``log p = -inf`` with zero gradient."""
        tiny = torch.finfo(outputs.dtype).tiny
        factors = torch.cat(volume_factors, -1)
        degenerate = (factors < tiny).any(-1) | undefined.any(-1)
        log_volume = factors.clamp_min(tiny).log().sum(-1)
        outputs = torch.where(degenerate[:, None], outputs.detach(), outputs)
        return outputs, (-log_volume).masked_fill(degenerate, -math.inf)

    # ---------------------------------------------------------------------------------- inverse
    @staticmethod
    def _spherical_frame(theta: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
        cos_theta, sin_theta = theta.cos(), theta.sin()
        cos_phi, sin_phi = phi.cos(), phi.sin()
        e_theta = torch.stack([cos_theta * cos_phi, cos_theta * sin_phi, -sin_theta], -1)
        e_phi = torch.stack([-sin_phi, cos_phi, torch.zeros_like(phi)], -1)
        return e_theta, e_phi

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Internal ``(batch, features_out)`` -> Cartesian ``(batch, 3N)``, ``log|det dx/d(ic)|``."""
        self._check_inputs(inputs, self.features_out)
        batch, n = inputs.shape[0], self.num_atoms
        offset = 6 if self.rigid == "keep" else 0
        bonds = inputs[:, offset : offset + n - 1]
        angles = inputs[:, offset + n - 1 : offset + 2 * n - 3]
        torsions = inputs[:, offset + 2 * n - 3 :]
        log_volume = 2 * bonds.abs().log().sum(-1) + angles.sin().abs().log().sum(-1)
        atom, bond_ref, angle_ref, torsion_ref = self.z_matrix.unbind(-1)

        if self.rigid == "keep":
            translation = inputs[:, :3]
            theta1, phi1, psi2 = inputs[:, 3], inputs[:, 4], inputs[:, 5]
            sin_theta1 = theta1.sin()
            axis = torch.stack([sin_theta1 * phi1.cos(), sin_theta1 * phi1.sin(), theta1.cos()], -1)
            e_theta, e_phi = self._spherical_frame(theta1, phi1)
            perpendicular = psi2.cos()[:, None] * e_theta + psi2.sin()[:, None] * e_phi
            log_volume = log_volume + sin_theta1.abs().log()
        else:
            # Canonical frame, built from exact unit vectors (theta1 = pi/2, phi1 = 0, psi2 = pi/2).
            translation = inputs.new_zeros(batch, 3)
            axis = inputs.new_tensor([1.0, 0.0, 0.0]).expand(batch, 3)
            perpendicular = inputs.new_tensor([0.0, 1.0, 0.0]).expand(batch, 3)

        root = translation
        second = root + bonds[:, :1] * axis
        placed = {int(atom[0]): root, int(atom[1]): second}
        third_origin = placed[int(bond_ref[2])]
        third = third_origin + bonds[:, 1:2] * (
            angles[:, :1].cos() * (self._third_axis_sign * axis)
            + angles[:, :1].sin() * perpendicular
        )
        positions = inputs.new_zeros(batch, n, 3).index_copy(
            1, atom[:3], torch.stack([root, second, third], 1)
        )
        for level in range(self._num_generations):
            rows = getattr(self, f"_generation_{level}")
            new = self._nerf(
                positions[:, bond_ref[rows]],
                positions[:, angle_ref[rows]],
                positions[:, torsion_ref[rows]],
                bonds[:, rows - 1],
                angles[:, rows - 2],
                torsions[:, rows - 3],
            )
            positions = positions.index_copy(1, atom[rows], new)
        return positions.reshape(batch, 3 * n), log_volume

    @staticmethod
    def _nerf(
        bond_atom: Tensor,
        angle_atom: Tensor,
        torsion_atom: Tensor,
        bond: Tensor,
        angle: Tensor,
        torsion: Tensor,
    ) -> Tensor:
        """Positions at ``bond`` from ``bond_atom``, ``angle`` at it and IUPAC ``torsion``.

        ``*_atom: (batch, m, 3)``, ``bond, angle, torsion: (batch, m)`` -> ``(batch, m, 3)``.
        """
        axis = bond_atom - angle_atom
        axis = axis / torch.linalg.vector_norm(axis, dim=-1, keepdim=True)
        normal = torch.linalg.cross(angle_atom - torsion_atom, axis, dim=-1)
        normal = normal / torch.linalg.vector_norm(normal, dim=-1, keepdim=True)
        in_plane = torch.linalg.cross(normal, axis, dim=-1)
        sin_angle = angle.sin()
        local = (
            -angle.cos()[..., None] * axis
            + (sin_angle * torsion.cos())[..., None] * in_plane
            + (sin_angle * torsion.sin())[..., None] * normal
        )
        return bond_atom + bond[..., None] * local
