"""Internal-coordinate data of molecular systems: the alanine dipeptide Z-matrix.

The transform itself, :class:`~normflows_sci.transforms.InternalCoordinates`, is a building block
in :mod:`normflows_sci.transforms` (re-exported here for the older import path); the ready-made
flow over internal coordinates is :func:`normflows_sci.flows.internal_coordinate_flow`.
"""

from __future__ import annotations

import numpy as np

from normflows_sci.transforms.internal import InternalCoordinates as InternalCoordinates

__all__ = [
    "alanine_dipeptide_z_matrix",
    "ALANINE_DIPEPTIDE_PHI_ATOMS",
    "ALANINE_DIPEPTIDE_PSI_ATOMS",
    "ALANINE_DIPEPTIDE_PHI",
    "ALANINE_DIPEPTIDE_PSI",
]

ALANINE_DIPEPTIDE_PHI_ATOMS = (4, 6, 8, 14)
"""Backbone phi of alanine dipeptide: C(ACE)-N-CA-C (openmmtools atom order)."""
ALANINE_DIPEPTIDE_PSI_ATOMS = (6, 8, 14, 16)
"""Backbone psi of alanine dipeptide: N-CA-C-N(NME)."""

_ALANINE_DIPEPTIDE_ROWS = (
    # Backbone first, rooted at CA so that phi and psi are the first two torsions.
    (8, -1, -1, -1),  # CA
    (6, 8, -1, -1),  # N
    (14, 8, 6, -1),  # C
    (4, 6, 8, 14),  # C (ACE): torsion = phi
    (16, 14, 8, 6),  # N (NME): torsion = psi
    (1, 4, 6, 8),  # CH3 (ACE): omega of the ACE-ALA peptide bond
    # Every further atom that shares its bond reference with an atom placed before is placed by
    # the torsion about the same bond *relative to that sibling* (an improper torsion fixed by
    # the local geometry). With proper torsions (e.g. HA by HA-CA-N-C(ACE)), HA, CB and the
    # amide atoms would jump together with phi between basins, and every methyl hydrogen with
    # its rotor: the flow would have to learn a joint jump of ten circular coordinates.
    (5, 4, 6, 1),  # O (ACE), opposite CH3 about the C-N bond
    (7, 6, 8, 4),  # H (ALA), opposite C (ACE) about the N-CA bond
    (0, 1, 4, 6),  # H1 (ACE): the methyl rotor
    (2, 1, 4, 0),  # H2 (ACE), +120 degrees from H1
    (3, 1, 4, 0),  # H3 (ACE), -120 degrees from H1
    (9, 8, 6, 14),  # HA, fixed by the chirality of CA relative to C
    (10, 8, 6, 14),  # CB, likewise
    (11, 10, 8, 6),  # HB1: the methyl rotor
    (12, 10, 8, 11),  # HB2
    (13, 10, 8, 11),  # HB3
    (18, 16, 14, 8),  # C (NME): omega of the ALA-NME peptide bond
    (15, 14, 8, 16),  # O (ALA), opposite N (NME) about the C-CA bond
    (17, 16, 18, 14),  # H (NME), opposite C (ALA) about the N-C (NME) bond
    (19, 18, 16, 14),  # H1 (NME): the methyl rotor
    (20, 18, 16, 19),  # H2 (NME)
    (21, 18, 16, 19),  # H3 (NME)
)

ALANINE_DIPEPTIDE_PHI = (22 - 1) + (22 - 2) + 0
"""Output position of phi for ``InternalCoordinates(alanine_dipeptide_z_matrix())`` (rigid removed;
add 6 with ``rigid="keep"``, or use :meth:`InternalCoordinates.torsion_feature`)."""
ALANINE_DIPEPTIDE_PSI = (22 - 1) + (22 - 2) + 1
"""Output position of psi, as :data:`ALANINE_DIPEPTIDE_PHI`."""


def alanine_dipeptide_z_matrix() -> np.ndarray:
    """Z-matrix of alanine dipeptide in the atom order of openmmtools' ``AlanineDipeptideVacuum``.

    22 atoms (0 H1, 1 CH3, 2 H2, 3 H3, 4 C, 5 O of ACE; 6 N, 7 H, 8 CA, 9 HA, 10 CB, 11-13 HB1-3,
    14 C, 15 O of ALA; 16 N, 17 H, 18 C, 19-21 H1-3 of NME). The tree is rooted at CA so that
    the backbone torsions are features: phi (4-6-8-14) at :data:`ALANINE_DIPEPTIDE_PHI` and psi
    (6-8-14-16) at :data:`ALANINE_DIPEPTIDE_PSI` of the ``60`` outputs with rigid motion
    removed. The first atom on each bond is placed by a proper torsion (phi, psi, the two omegas,
    one hydrogen per methyl rotor); its siblings on the same bond by their torsion relative to it,
    a nearly constant angle. So only phi, psi and the three methyl rotors are
    multimodal: in a 300 K ensemble the other torsions have circular resultant length >= 0.98 in
    both the phi < 0 and phi > 0 basins, whereas with proper torsions throughout HA and CB
    rotate with phi and each methyl hydrogen with its rotor.

    Returns:
        ``(22, 4)`` int64 array of rows ``[atom, bond_ref, angle_ref, torsion_ref]``.

    Example:
        >>> alanine_dipeptide_z_matrix().shape
        (22, 4)
    """
    return np.array(_ALANINE_DIPEPTIDE_ROWS, dtype=np.int64)
